"""Model outputs: dataclasses holding Tensors, with the field names of Hugging Face's ModelOutput classes.

Shapes: B batch, T tokens, C width, H heads, V vocabulary, K labels / choices. `hidden_states` is a tuple of
n_layers + 1 Tensors (B, T, C) (the embeddings first) and `attentions` one (B, H, T, T) per layer, present only when
asked for. As in HF, `out[0]` / `out["logits"]` index the fields that are set, `out.keys()` names them and
`out.to_tuple()` (or calling the model with return_dict=False) gives them as a tuple.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from minidistil.core.autograd import Tensor


class _Output:
    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        """The names of the fields that are set, in order (dict(out) and out.keys() work as in transformers)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r}: not set in this {type(self).__name__} (set: {self.keys()})")
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
