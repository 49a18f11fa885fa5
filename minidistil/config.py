"""Model configurations: frozen dataclasses with Hugging Face's field names and defaults.

A `config.json` written by `transformers` reads straight into these (`from_json_file`), and `to_dict()` gives it
back: fields we do not use (`transformers_version`, `dtype`, `use_cache`, ...) are kept in `extra` so that a round
trip loses nothing. The defaults are those of bert-base-uncased and distilbert-base-uncased.

Only what minidistil implements is accepted: the exact-erf "gelu" activation, absolute position embeddings, an
encoder (no decoder, no cross-attention). Anything else raises a ValueError that says so, rather than silently
computing a different model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu",)  # HF's "gelu" is x * Phi(x) with the exact erf; "gelu_new" etc. are other maths


def _labels(num_labels, id2label, label2id):
    """HF's rule: id2label decides the number of labels; else num_labels makes LABEL_0..LABEL_{n-1}."""
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(int(num_labels))}
    else:
        id2label = {int(k): v for k, v in id2label.items()}  # JSON object keys are strings
    if label2id is None:
        label2id = {v: k for k, v in id2label.items()}
    else:
        label2id = {k: int(v) for k, v in label2id.items()}
    return len(id2label), id2label, label2id


class _ConfigBase:
    """from_dict / to_dict / JSON for the two config dataclasses below."""

    model_type: str = ""

    def __post_init__(self):
        n, id2label, label2id = _labels(self.num_labels, self.id2label, self.label2id)
        object.__setattr__(self, "num_labels", n)
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "label2id", label2id)
        if self.problem_type not in (None, "regression", "single_label_classification",
                                     "multi_label_classification"):
            raise ValueError(f"problem_type: expected None, 'regression', 'single_label_classification' or "
                             f"'multi_label_classification', got {self.problem_type!r}")
        self._validate()

    def _validate(self):  # pragma: no cover - overridden
        pass

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        """Build from a config.json dictionary. Unknown keys are kept in `extra` (returned again by to_dict)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "extra"}
        extra.update(d.get("extra", {}) or {})
        if known.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"model_type: {cls.__name__} expects {cls.model_type!r}, got {known['model_type']!r}")
        known.pop("model_type", None)
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                d[f.name] = getattr(self, f.name)
        d["model_type"] = self.model_type
        d["id2label"] = dict(self.id2label)
        d["label2id"] = dict(self.label2id)
        if self.architectures is not None:
            d["architectures"] = list(self.architectures)
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    def replace(self, **changes):
        """A copy with some fields changed (the dataclass is frozen). Changing num_labels resets the label maps."""
        if "num_labels" in changes and "id2label" not in changes:
            changes.setdefault("id2label", None)
            changes.setdefault("label2id", None)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BertConfig(_ConfigBase):
    model_type = "bert"  # class attribute, not a field (to_dict writes it)

    vocab_size: int = 30522                 # V
    hidden_size: int = 768                  # C
    num_hidden_layers: int = 12
    num_attention_heads: int = 12           # H (head width D = C / H)
    intermediate_size: int = 3072           # F
    hidden_act: str = "gelu"                # exact erf GELU, the only one supported
    hidden_dropout_prob: float = 0.1        # after embeddings, attention output, FFN output
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512      # longest T
    type_vocab_size: int = 2                # segment A / B
    initializer_range: float = 0.02         # std of the normal init
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None  # None: use hidden_dropout_prob
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # shared by every HF config
    architectures: list[str] | None = None
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def _validate(self):
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"hidden_act: only the exact-erf 'gelu' is supported, got {self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"num_attention_heads: {self.num_attention_heads} must divide hidden_size "
                             f"{self.hidden_size}")
        if self.position_embedding_type != "absolute":
            raise ValueError(f"position_embedding_type: only 'absolute' is supported, got "
                             f"{self.position_embedding_type!r}")
        if self.is_decoder or self.add_cross_attention:
            raise ValueError("is_decoder / add_cross_attention: minidistil implements the bidirectional encoder only")


@dataclass(frozen=True)
class DistilBertConfig(_ConfigBase):
    model_type = "distilbert"

    vocab_size: int = 30522                 # V
    max_position_embeddings: int = 512      # longest T
    sinusoidal_pos_embds: bool = False      # fixed sin/cos position table instead of a learned one
    n_layers: int = 6
    n_heads: int = 12                       # H
    dim: int = 768                          # C
    hidden_dim: int = 4 * 768               # F
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    architectures: list[str] | None = None
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # DistilBERT hard-codes its layer norm epsilon (HF: nn.LayerNorm(dim, eps=1e-12)); not a config.json field
    layer_norm_eps = 1e-12

    def _validate(self):
        if self.activation not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"activation: only the exact-erf 'gelu' is supported, got {self.activation!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads: {self.n_heads} must divide dim {self.dim}")

    # HF's attribute_map: the BERT names work on a DistilBERT config too
    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def intermediate_size(self) -> int:
        return self.hidden_dim


CONFIG_CLASSES = {"bert": BertConfig, "distilbert": DistilBertConfig}


def config_from_dict(d: dict[str, Any]):
    """Pick BertConfig or DistilBertConfig from d["model_type"] (or, failing that, from d["architectures"])."""
    model_type = d.get("model_type")
    if model_type is None:
        for arch in d.get("architectures") or []:
            if arch.startswith("DistilBert"):
                model_type = "distilbert"
            elif arch.startswith("Bert"):
                model_type = "bert"
    if model_type not in CONFIG_CLASSES:
        raise ValueError(f"model_type: expected one of {sorted(CONFIG_CLASSES)}, got {model_type!r}")
    return CONFIG_CLASSES[model_type].from_dict(d)


def config_from_json_file(path):
    with open(path, encoding="utf-8") as f:
        return config_from_dict(json.load(f))
