"""Modules: a tiny version of torch.nn, enough to name parameters exactly as Hugging Face checkpoints do.

A Module registers its Parameters and sub-Modules by attribute name, so `named_parameters()` yields
"encoder.layer.0.attention.self.query.weight" just like PyTorch. `PreTrainedModel` adds what the model classes
share: tied weights, `state_dict` / `load_state_dict`, random init from a config, train / eval.

Gradients ACCUMULATE into `Parameter.grad` across backward() calls until `zero_grad()` clears them.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from minidistil.core import functional as F
from minidistil.core.autograd import Tensor
from minidistil.core.device import check_device, device_of, to_device
from minidistil.kernels import _cuda
from minidistil.kernels import gemm as _gemm


class Parameter(Tensor):
    """A leaf Tensor that requires a gradient (float32)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        if not _cuda.is_device_array(data):  # a device array is taken as it is (model.to("cuda") made it)
            data = np.ascontiguousarray(data, dtype=np.float32)
        super().__init__(data, requires_grad=requires_grad)


class Module:
    """Holds Parameters and sub-Modules, registered under their attribute names (in assignment order)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", False)

    def __setattr__(self, name, value):
        params, modules = self.__dict__.get("_parameters"), self.__dict__.get("_modules")
        if params is None:
            raise AttributeError("call Module.__init__() before assigning attributes")
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - every module defines it
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    # ---- traversal ------------------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        stack = [(prefix, self)]
        while stack:
            name, m = stack.pop()
            yield name, m
            children = [(f"{name}.{k}" if name else k, c) for k, c in m._modules.items()]
            stack.extend(reversed(children))

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a Parameter shared by two modules (tied) is listed once, under its
        first name, unless remove_duplicate=False."""
        seen = set()
        for mname, m in self.named_modules(prefix):
            for pname, p in m._parameters.items():
                if remove_duplicate:
                    if id(p) in seen:
                        continue
                    seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self):
        """Clear every parameter's .grad (gradients accumulate across backward() calls until this is called)."""
        for p in self.parameters():
            p.grad = None

    def train(self, mode: bool = True):
        """Training mode: dropout is active. Returns self."""
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        """Inference mode: dropout is the identity. Returns self."""
        return self.train(False)

    def to(self, device: str):
        """Move every parameter (and gradient) to "cpu" or "cuda", in place, bit for bit. Returns self.
        Without a GPU (or NUMBA_ENABLE_CUDASIM=1), "cuda" raises a RuntimeError saying what is missing."""
        device = check_device(device)
        for p in self.parameters():  # tied parameters are one object, listed (and moved) once
            to_device(p, device)
        return self

    @property
    def device(self) -> str:
        """"cuda" when the parameters live in GPU memory, else "cpu"."""
        params = self.parameters()
        return device_of(params[0]) if params else "cpu"


class ModuleList(Module):
    """Sub-modules named "0", "1", ... (HF's encoder.layer.{i})."""

    def __init__(self, modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]


class Linear(Module):
    """y = x @ weight^T + bias;  weight (Cout, Cin) as in PyTorch."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = Parameter(np.zeros((out_features, in_features), dtype=np.float32))
        self.bias = Parameter(np.zeros(out_features, dtype=np.float32)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def stack_linears(*layers: Linear):
    """Make the weights (and biases) of Linear layers of one input width consecutive row blocks of one array, so
    that F.projected_attention multiplies by all of them in one GEMM without copying them together. The
    parameters keep their names and shapes; loading and optimiser steps write into them in place."""
    W = np.concatenate([lin.weight.data for lin in layers])                    # (sum Cout, Cin)
    at = 0
    for lin in layers:
        n = lin.weight.shape[0]
        lin.weight.data = W[at:at + n]
        at += n
    if all(lin.bias is not None for lin in layers):
        b = np.concatenate([lin.bias.data for lin in layers])                 # (sum Cout,)
        at = 0
        for lin in layers:
            n = lin.bias.shape[0]
            lin.bias.data = b[at:at + n]
            at += n


class LayerNorm(Module):
    """y = LN(x) or, with a residual, y = LN(x + residual) in one fused kernel (the Post-LN step)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = float(eps)
        self.weight = Parameter(np.ones(dim, dtype=np.float32))
        self.bias = Parameter(np.zeros(dim, dtype=np.float32))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        if residual is None:
            return F.layer_norm(x, self.weight, self.bias, self.eps)
        return F.residual_layer_norm(x, residual, self.weight, self.bias, self.eps)


class Embedding(Module):
    """out = weight[ids];  weight (V, C). Bad ids raise a ValueError naming the argument."""

    def __init__(self, num_embeddings: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.padding_idx = padding_idx
        self.weight = Parameter(np.zeros((num_embeddings, dim), dtype=np.float32))

    def forward(self, ids: np.ndarray, name: str = "ids", checked: bool = False) -> Tensor:
        """ids: a host array, or a device array when the weight is on the device. checked=True: the caller has
        checked 0 <= ids < V already (a model checks its host ids before moving them over once per batch)."""
        from minidistil.kernels import _checks, _cuda
        if not checked:
            _checks.check_ids(name, _cuda.to_host(ids), self.weight.shape[0])
        return F.embedding(ids, self.weight, self.padding_idx, checked=True)


class Dropout(Module):
    """Zero with probability p and scale by 1/(1-p) in training mode; the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


# ---------------------------------------------------------------------------------------------------------------


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """DistilBERT's fixed position table: sin on even columns, cos on odd, angle pos / 10000^(2 (j // 2) / dim)."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    angle = pos / np.power(10000.0, 2 * (j // 2) / dim)
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return table.astype(np.float32)


class PreTrainedModel(Module):
    """What every model class shares: config, tied weights, state dicts, HF-like init.

    Subclasses set
        config_class       BertConfig or DistilBertConfig
        base_model_prefix  "bert" / "distilbert": the attribute holding the bare encoder in head models
        tied_weights       {tied name: source name}, e.g. {"cls.predictions.decoder.weight":
                           "bert.embeddings.word_embeddings.weight"}; the tied name is not a separate tensor, it is
                           not in named_parameters() / state_dict() nor (as HF saves it) in the checkpoint file.
    """

    config_class = None
    base_model_prefix = ""
    tied_weights: dict[str, str] = {}

    def __init__(self, config):
        super().__init__()
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise ValueError(f"config: {type(self).__name__} expects a {self.config_class.__name__}, "
                             f"got {type(config).__name__}")
        object.__setattr__(self, "config", config)

    def __call__(self, *args, return_dict: bool | None = None, **kwargs):
        """forward(...); return_dict=False gives the output's fields as a tuple (out.to_tuple()), as transformers."""
        out = self.forward(*args, **kwargs)
        return out.to_tuple() if return_dict is False else out

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, **kwargs):
        """BertForSequenceClassification.from_pretrained(path, num_labels=3): this class from a checkpoint (a
        folder, or a name as minidistil.from_pretrained resolves it). Keywords: output_loading_info,
        config_overrides, and any config field (num_labels, id2label, ...) to change."""
        from minidistil.core import plugins
        from_pretrained = plugins.checkpoint_io().from_pretrained
        return from_pretrained(name_or_path, cls=None if cls is PreTrainedModel else cls, device=device, **kwargs)

    def save_pretrained(self, folder, tokenizer=None):
        """Write config.json, model.safetensors (and the tokenizer's files when given) into `folder`, atomically;
        transformers loads the folder. Returns its path."""
        from minidistil.core import plugins
        save_pretrained = plugins.checkpoint_io().save_pretrained
        return save_pretrained(self, folder, tokenizer)

    @classmethod
    def from_config(cls, config, seed: int | None = None):
        """A model with HF-like random weights: Linear and Embedding weights ~ normal(0, initializer_range), the
        padding row of the word embeddings 0, biases 0, LayerNorm weight 1 and bias 0. Eval mode."""
        model = cls(config)
        model.init_weights(seed)
        return model.eval()

    def init_weights(self, seed: int | None = None):
        rng = np.random.default_rng(seed)
        std = float(self.config.initializer_range)
        done = set()  # a tied Parameter is initialised once, by the module that owns it first (the embedding)

        def fill(p, value):
            if p is not None and id(p) not in done:
                done.add(id(p))
                p.data[...] = value(p.shape) if callable(value) else value
                _gemm.weights_changed()  # written in place: packed copies are stale

        normal = lambda shape: rng.normal(0.0, std, shape)  # noqa: E731
        for _, m in self.named_modules():
            if isinstance(m, Linear):
                fill(m.weight, normal)
                fill(m.bias, 0.0)
            elif isinstance(m, Embedding):
                fill(m.weight, normal)
                if m.padding_idx is not None:
                    m.weight.data[m.padding_idx] = 0.0
            elif isinstance(m, LayerNorm):
                fill(m.weight, 1.0)
                fill(m.bias, 0.0)
        self._init_more(rng)
        self.tie_weights()

    def _init_more(self, rng):
        """Init beyond the generic rule (e.g. DistilBERT's sinusoidal position table); none by default."""

    def tie_weights(self):
        """Make every tied name refer to its source Parameter (the same object: one array, one gradient)."""
        for tied, source in self.tied_weights.items():
            owner_name, _, attr = tied.rpartition(".")
            owner = self.get_submodule(owner_name)
            setattr(owner, attr, self.get_parameter(source))

    def get_submodule(self, name: str) -> Module:
        m = self
        for part in filter(None, name.split(".")):
            m = m._modules[part]
        return m

    def get_parameter(self, name: str) -> Parameter:
        owner_name, _, attr = name.rpartition(".")
        return self.get_submodule(owner_name)._parameters[attr]

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True):
        """Every parameter once, under the name Hugging Face's named_parameters() uses (tied names left out)."""
        for name, p in super().named_parameters(prefix, remove_duplicate=False):
            if name in self.tied_weights and remove_duplicate:
                continue
            yield name, p

    def state_dict(self) -> dict[str, np.ndarray]:
        """{name: the parameter's array} for every named parameter (the arrays themselves, not copies): the tensors
        of a Hugging Face checkpoint file of this class."""
        return {name: p.numpy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays into the parameters (cast to float32), by name. Returns (missing, unexpected) names.

        A tied name in `state` (e.g. an old checkpoint's "cls.predictions.decoder.weight") is accepted for its
        source when the source itself is absent. A shape mismatch raises a ValueError naming the tensor and both
        shapes; with strict=True a missing or unexpected name raises a ValueError listing them.
        """
        own = dict(self.named_parameters())
        aliases = {tied: src for tied, src in self.tied_weights.items()}
        missing, used = [], set()
        for name, p in own.items():
            key = name if name in state else next((t for t, s in aliases.items() if s == name and t in state), None)
            if key is None:
                missing.append(name)
                continue
            arr = np.asarray(state[key])
            if tuple(arr.shape) != p.shape:
                raise ValueError(f"{key}: checkpoint tensor has shape {tuple(arr.shape)}, the model expects "
                                 f"{p.shape}")
            if _cuda.is_device_array(p.data):  # a model on the GPU: copy the values over, in place
                p.data.copy_to_device(np.ascontiguousarray(arr, dtype=np.float32))
            else:
                p.data[...] = arr.astype(np.float32, copy=False)
                _gemm.weights_changed()  # written in place: packed copies are stale
            used.add(key)
        unexpected = [k for k in state if k not in used and k not in aliases and not k.endswith(".position_ids")]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        self.tie_weights()
        return missing, unexpected


def extend_mask(attention_mask, shape: tuple[int, int]) -> np.ndarray:
    """attention_mask (B, T) with 1 = token, 0 = padding (all ones when None), checked; returned as int32."""
    from minidistil.kernels import _checks
    if attention_mask is None:
        return np.ones(shape, dtype=np.int32)
    m = np.asarray(attention_mask)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"attention_mask: expected shape {tuple(shape)} (that of input_ids), got {tuple(m.shape)}")
    _checks.check_ids("attention_mask", m.astype(np.int64) if m.dtype == bool else m, 2)
    return np.ascontiguousarray(m, dtype=np.int32)


def to_device_of(a: np.ndarray, model) -> np.ndarray:
    """The host array `a` (input ids, a mask) moved to the device of `model`'s parameters: copied to the GPU once
    per batch when the model is there (its kernels then use the device array in place), `a` itself otherwise."""
    from minidistil.kernels import _cuda
    params = model.parameters()
    return _cuda.to_device(a) if params and _cuda.is_device_array(params[0].data) else a


def take_logit_rows(hidden: Tensor, logits_rows, model) -> Tensor:
    """The hidden states (B, T, C) of an MLM model at `logits_rows`, as (M, C): its head then computes logits only
    at the rows a loss reads. logits_rows: (M,) integer flat indices b * T + t into the B*T positions. A host array
    is checked (1-d, in [0, B*T)) and copied to the model's device; a device array is used as it is (its maker
    checks it on the host before moving it: reading it back to check it would wait for the GPU)."""
    from minidistil.kernels import _checks
    B, T, C = hidden.shape
    if not _cuda.is_device_array(logits_rows):
        r = np.asarray(logits_rows)
        if r.ndim != 1 or not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"logits_rows: expected a 1-d integer array of flat indices into the {B}x{T} "
                             f"positions, got shape {r.shape} and dtype {r.dtype}")
        _checks.check_ids("logits_rows", r, B * T)
        logits_rows = to_device_of(np.ascontiguousarray(r, dtype=np.int64), model)
    return F.take_rows(hidden.reshape(B * T, C), logits_rows, checked=True)         # (M, C)


def labels_at(labels, logits_rows) -> np.ndarray:
    """labels (B, T) flattened and taken at logits_rows: (M,) int64 targets of the MLM loss on those rows (device
    rows are copied back to take them: pass host rows when the model computes its loss)."""
    return np.asarray(labels, dtype=np.int64).reshape(-1)[_cuda.to_host(logits_rows)]


def position_ids(batch: int, length: int, max_positions: int) -> np.ndarray:
    if length > max_positions:
        raise ValueError(f"input_ids: sequence length {length} exceeds max_position_embeddings {max_positions}")
    return np.ascontiguousarray(np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)))


def check_input_ids(input_ids, vocab_size: int, ndim: int = 2) -> np.ndarray:
    from minidistil.kernels import _checks
    if isinstance(input_ids, Tensor):
        input_ids = input_ids.numpy()
    ids = np.asarray(input_ids)
    if ids.ndim != ndim:
        raise ValueError(f"input_ids: expected a {ndim}-d integer array, got shape {tuple(ids.shape)}")
    if ids.shape[-1] == 0 and math.prod(ids.shape[:-1]) > 0:
        raise ValueError(f"input_ids: shape {tuple(ids.shape)} holds sequences of no tokens; each needs at least one "
                         "([CLS] ... [SEP] from the tokenizer)")
    _checks.check_ids("input_ids", ids, vocab_size)
    return np.ascontiguousarray(ids, dtype=np.int64)

