"""Model outputs: dataclasses holding Tensors, with the field names of Hugging Face's ModelOutput classes.

Shapes: B batch, T tokens, C width, H heads, V vocabulary, K labels / choices. `hidden_states` is a tuple of
n_layers + 1 Tensors (B, T, C) (the embeddings first) and `attentions` one (B, H, T, T) per layer, present only when
asked for. `out[0]` / `out["logits"]` index the fields that are set, as in HF.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minidistil.autograd import Tensor


class _Output:
    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def __getitem__(self, key):
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]


@dataclass
class BaseModelOutput(_Output):
    last_hidden_state: Tensor = None            # (B, T, C)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class BaseModelOutputWithPooling(_Output):
    last_hidden_state: Tensor = None            # (B, T, C)
    pooler_output: Tensor | None = None         # (B, C) tanh(dense(h[:, 0]))
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class MaskedLMOutput(_Output):
    loss: Tensor | None = None
    logits: Tensor = None                       # (B, T, V)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class SequenceClassifierOutput(_Output):
    loss: Tensor | None = None
    logits: Tensor = None                       # (B, K)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class TokenClassifierOutput(_Output):
    loss: Tensor | None = None
    logits: Tensor = None                       # (B, T, K)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class QuestionAnsweringModelOutput(_Output):
    loss: Tensor | None = None
    start_logits: Tensor = None                 # (B, T)
    end_logits: Tensor = None                   # (B, T)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class MultipleChoiceModelOutput(_Output):
    loss: Tensor | None = None
    logits: Tensor = None                       # (B, K choices)
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
