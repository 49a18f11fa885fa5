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
import math
from dataclasses import dataclass, field
from typing import Any

from minidistil.core.files import brief, output_target, read_json_object

SUPPORTED_ACTIVATIONS = ("gelu",)  # HF's "gelu" is x * Phi(x) with the exact erf; "gelu_new" etc. are other maths


def _check_fields(config) -> None:
    """Every field's JSON type and range, from its annotation and the class's _POSITIVE / _PROBABILITIES lists.
    A ValueError names the field: "num_attention_heads: expected an integer >= 1, got 0"."""
    for f in dataclasses.fields(config):
        if f.name == "extra":
            continue
        v = getattr(config, f.name)
        kind = f.type.replace(" | None", "")                       # the annotation, as a string
        if v is None and "None" in f.type:
            continue
        if kind == "int" and f.name in config._POSITIVE:
            ok, want = _is_int(v) and v >= 1, "an integer >= 1"
        elif kind == "int":
            ok, want = _is_int(v) and v >= 0, "an integer >= 0"
        elif kind == "float" and f.name in config._PROBABILITIES:
            ok, want = _is_number(v) and 0 <= v < 1, "a probability in [0, 1)"
        elif kind == "float":
            ok, want = _is_number(v) and v >= 0, "a number >= 0"
        elif kind in ("bool", "str"):
            ok, want = isinstance(v, bool if kind == "bool" else str), "true or false" if kind == "bool" else "a string"
        elif kind == "list[str]":
            ok, want = isinstance(v, list) and all(isinstance(a, str) for a in v), "a list of strings"
        elif kind.startswith("dict["):
            ok, want = isinstance(v, dict), "a JSON object"
        else:  # pragma: no cover - a field whose annotation this function does not know
            raise TypeError(f"{f.name}: no check for the annotation {f.type!r}")
        if not ok:
            raise ValueError(f"{f.name}: expected {want}, got {brief(v)}")
    if config.pad_token_id is not None and config.pad_token_id >= config.vocab_size:
        raise ValueError(f"pad_token_id: {config.pad_token_id} is not a token id (vocab_size {config.vocab_size})")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _labels(num_labels, id2label, label2id):
    """HF's rule: id2label decides the number of labels; else num_labels makes LABEL_0..LABEL_{n-1}."""
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(int(num_labels))}
    elif all(_is_int(k) or (isinstance(k, str) and k.isdecimal()) for k in id2label):
        id2label = {int(k): v for k, v in id2label.items()}  # JSON object keys are strings
    else:
        raise ValueError(f"id2label: expected label ids as keys ({{\"0\": \"neg\", ...}}), got {brief(id2label)}")
    if label2id is None:
        label2id = {v: k for k, v in id2label.items()}
    elif all(_is_int(v) for v in label2id.values()):
        label2id = dict(label2id)
    else:
        raise ValueError(f"label2id: expected label ids as values ({{\"neg\": 0, ...}}), got {brief(label2id)}")
    return len(id2label), id2label, label2id


class _ConfigBase:
    """from_dict / to_dict / JSON for the two config dataclasses below."""

    model_type: str = ""

    _POSITIVE = ()        # integer fields that must be >= 1 (sizes, counts)
    _PROBABILITIES = ()   # float fields in [0, 1) (dropout rates)

    def __post_init__(self):
        _check_fields(self)
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
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object {{...}}, got a {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "extra"}
        if not isinstance(d.get("extra") or {}, dict):
            raise ValueError(f"extra: expected a JSON object, got {brief(d['extra'])}")
        extra.update(d.get("extra") or {})
        if known.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"model_type: {cls.__name__} expects {cls.model_type!r}, got {known['model_type']!r}")
        known.pop("model_type", None)
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path):
        return _from_file(cls.from_dict, path)

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
        with open(output_target(path)[0], "w", encoding="utf-8") as f:   # a folder or block device is refused
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

    _POSITIVE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")
    _PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")

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

    _POSITIVE = ("vocab_size", "max_position_embeddings", "n_layers", "n_heads", "dim", "hidden_dim")
    _PROBABILITIES = ("dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout")

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
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object {{...}}, got a {type(d).__name__}")
    qc = d.get("quantization_config")   # a quantised checkpoint keeps its model type here: its top-level one is a
    if isinstance(qc, dict) and isinstance(qc.get("model_type"), str):   # name transformers refuses to load
        d = {**d, "model_type": qc["model_type"]}
    model_type = d.get("model_type")
    if model_type is None:
        archs = d.get("architectures")
        for arch in archs if isinstance(archs, list) else []:
            if not isinstance(arch, str):
                continue
            if arch.startswith("DistilBert"):
                model_type = "distilbert"
            elif arch.startswith("Bert"):
                model_type = "bert"
    if not isinstance(model_type, str) or model_type not in CONFIG_CLASSES:
        raise ValueError(f"model_type: expected one of {sorted(CONFIG_CLASSES)}, got {brief(model_type)}")
    return CONFIG_CLASSES[model_type].from_dict(d)


def config_from_json_file(path, overrides: dict | None = None):
    """The config a config.json describes; any error is a ValueError naming the file and the field.
    overrides: fields to change in the file's values (changing num_labels drops the file's label maps)."""
    d = read_json_object(path)
    if overrides:
        d.update(overrides)
        if "num_labels" in overrides and "id2label" not in overrides:
            d.pop("id2label", None)
            d.pop("label2id", None)
        if "id2label" in overrides and "label2id" not in overrides:
            d.pop("label2id", None)                                     # derived from the new id2label
    return _from_file(config_from_dict, path, d)


def _from_file(build, path, d: dict | None = None):
    d = read_json_object(path) if d is None else d
    try:
        return build(d)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
