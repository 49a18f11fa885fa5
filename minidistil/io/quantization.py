"""Int8 inference: a trained model's Linear layers and word embeddings quantised to 8 bits.

    qmodel = minidistil.quantize(model)                 # a new model; `model` is left as it was
    minidistil.save_pretrained(qmodel, "out")            # int8 tensors + float32 scales; config.json says so
    qmodel = minidistil.from_pretrained("out")           # the same quantised model back
    minidistil quantize all-MiniLM-L6-v2 minilm-int8     # the same on the command line; the pipelines and
    minidistil embed --model minilm-int8 "..."           # --model take the folder as any other

What changes (the maths, the error bound and the kernels: kernels/int8.py):
    Linear  y = x W^T + b          ->  W int8, symmetric per output channel (scale s_w[o] = max|W[o]| / 127);
                                       x quantised per row at run time to uint8 with its own scale and zero point;
                                       int32 sums (AVX-512 VNNI where the CPU has it); float32 bias and output
    Embedding (word)  out = E[ids] ->  E int8 per row with per-row scales, dequantised when looked up; a tied MLM
                                       projection uses the same int8 rows (its per-output-channel scales are the
                                       rows' scales), so the tie survives
    LayerNorm, softmax, GELU, attention's products, position and token-type embeddings: unchanged, float32.
The weights take a quarter of the bytes (MiniLM-L6: ~0.26x the float32 file: its word table is half the model).

Inference only: the int8 weights are leaves that "require" a gradient so that every op on them is recorded, and
their backward raises QuantizedModelError (rounding has a zero derivative almost everywhere; train the float32
model, then quantise it).

A saved quantised checkpoint holds, per quantised module `m`, `m.weight` (int8) and `m.weight_scale` (float32, one
per row), every other tensor as float32 under its usual name, and in config.json a `quantization_config`
({"quant_method": "minidistil_int8", "model_type": "bert", ...}) under the model_type "minidistil_int8", which
transformers' AutoModel refuses ("does not recognize this architecture") instead of reading the int8 values as
float weights. Folders written before (model_type "bert" or "distilbert") load as they did.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np

from minidistil.core import functional as F
from minidistil.core.autograd import Tensor, make_result
from minidistil.kernels import _cuda
from minidistil.kernels import gemm as _gemm
from minidistil.kernels import int8 as _int8
from minidistil.core.nn import Embedding, Linear, Module, Parameter

QUANT_METHOD = "minidistil_int8"
FORMAT_VERSION = 1
SCALE_SUFFIX = ".weight_scale"


class QuantizedModelError(RuntimeError, ValueError):
    """A quantised model was asked for something only a float32 model can do (a gradient, training). Also a
    ValueError, so that the command line reports it in one line."""


class QuantizedWeight(Tensor):
    """An int8 weight (Cout, Cin) with its per-row float32 scales: `.data` is the int8 array, `.int8` the kernels'
    Int8Weight (row sums and the VNNI-packed layout). Not a Parameter: optimisers and state_dict() never see it.
    requires_grad is True only so that ops on it are recorded and a backward reaches their refusal."""

    __slots__ = ("int8", "_on_device")

    def __init__(self, w: _int8.Int8Weight):
        super().__init__(w.q, requires_grad=True)
        self.int8 = w
        self._on_device = None

    @property
    def scale(self) -> np.ndarray:
        return self.int8.scale

    def for_array(self, a) -> _int8.Int8Weight:
        """The Int8Weight on the device of `a`: copied to the GPU once, the first time a device array comes."""
        if not _cuda.is_device_array(a):
            return self.int8
        if self._on_device is None:
            self._on_device = _int8.weight_to_device(self.int8)
        return self._on_device

    def linear(self, x: Tensor, b: Tensor | None = None) -> Tensor:
        """F.linear's hook for a weight with its own product: the int8 kernel."""
        return int8_linear(x, self, b)

    def dequantize(self) -> np.ndarray:
        """W^ = s_w q (Cout, Cin) float32."""
        return _int8.dequantize(self.int8.q, self.int8.scale)


def _refuse(op):
    def backward(_):
        raise QuantizedModelError(
            f"backward(): {op} is int8 and inference-only (an int8 weight has no gradient, and rounding the "
            "activations has a zero derivative almost everywhere). Train the float32 model, then quantise it "
            "with minidistil.quantize.")
    return backward


def int8_linear(x: Tensor, w: QuantizedWeight, b: Tensor | None = None) -> Tensor:
    """y = quantise(x) W^T + b;  x (..., Cin) float32, w int8 (Cout, Cin), b (Cout,) -> y (..., Cout) float32."""
    y = _int8.int8_linear_forward(x.data, w.for_array(x.data), None if b is None else b.data)
    # y is piecewise constant in x (rounding) and W is fixed: no backward
    return make_result(y, (x, w, b), _refuse("int8_linear"), "int8_linear")


class QuantizedLinear(Module):
    """y = quantise(x) @ weight^T + bias with an int8 weight (F.linear dispatches on the QuantizedWeight, so the
    models' `F.linear(x, module.weight)` calls run it too); the bias stays a float32 Parameter."""

    def __init__(self, weight: QuantizedWeight, bias: Parameter | None):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class QuantizedEmbedding(Module):
    """out = s[ids] * q[ids]: the int8 table (V, C) with per-row scales, dequantised row by row when looked up."""

    def __init__(self, weight: QuantizedWeight, padding_idx: int | None = None):
        super().__init__()
        self.weight = weight
        self.padding_idx = padding_idx

    def forward(self, ids, name: str = "ids", checked: bool = False) -> Tensor:
        """ids: a host array, or a device array when the model is on the device; checked as Embedding.forward."""
        from minidistil.kernels import _checks
        w = self.weight
        if not checked:
            _checks.check_ids(name, _cuda.to_host(ids), w.shape[0])
        table = w.for_array(ids)
        out = _int8.int8_embedding_forward(ids, table.q, table.scale, checked=True)   # (*ids.shape, C)
        return make_result(out, (w,), _refuse("int8_embedding"), "int8_embedding")


# ----------------------------------------------------------------------------------------------------------------
# quantising a model


def is_quantized(model) -> bool:
    return getattr(model, "quantization_config", None) is not None


def _set_module(model: Module, name: str, new: Module):
    owner_name, _, attr = name.rpartition(".")
    owner = model
    for part in filter(None, owner_name.split(".")):
        owner = owner._modules[part]
    setattr(owner, attr, new)


def _word_embeddings(model) -> list[str]:
    """The names of the (float32) word-embedding modules: "embeddings.word_embeddings" with any prefix."""
    return [n for n, m in model.named_modules()
            if isinstance(m, Embedding) and n.rpartition(".")[2] == "word_embeddings"]


def _config_entry(modules: dict[str, str]) -> dict:
    return {"quant_method": QUANT_METHOD, "version": FORMAT_VERSION,
            "weights": "int8, symmetric, one float32 scale per output channel (row): <module>.weight_scale",
            "activations": "uint8, asymmetric, one scale and zero point per row, computed at run time",
            "embeddings": "word embeddings: int8 rows with per-row scales",
            "modules": modules}


def quantize(model, embeddings: bool = True):
    """A copy of `model` whose Linear layers (attention, FFN, heads) run int8 and whose word-embedding table is int8
    with per-row scales (embeddings=False keeps the table float32; a tied MLM projection then stays float32 too).
    The model must be on the CPU; the copy can be moved to the GPU afterwards. Returns the copy, in eval mode."""
    if not isinstance(model, Module):
        raise ValueError(f"model: expected a minidistil model, got {type(model).__name__}")
    if is_quantized(model):
        raise ValueError("model: it is quantised already")
    from minidistil.core.device import device_of
    if device_of(model) != "cpu":
        raise ValueError("model: its parameters are on the GPU; quantise on the CPU (model.to('cpu')), then move the "
                         "quantised model with .to('cuda')")
    q = copy.deepcopy(model)
    tied = dict(getattr(q, "tied_weights", {}) or {})              # tied parameter name -> source name
    done: dict[str, QuantizedWeight] = {}                          # source parameter name -> its int8 weight
    modules: dict[str, str] = {}
    if embeddings:
        for name in _word_embeddings(q):
            emb = q.get_submodule(name)
            w = QuantizedWeight(_int8.quantize_weight(emb.weight.numpy()))
            _set_module(q, name, QuantizedEmbedding(w, emb.padding_idx))
            done[f"{name}.weight"] = w
            modules[name] = "embedding"
    for name, m in list(q.named_modules()):
        if isinstance(m, Linear):
            source = tied.get(f"{name}.weight")
            if source is not None and source not in done:
                continue                                           # tied to a float32 table: stays float32
            w = done.get(source) if source is not None else None
            w = w or QuantizedWeight(_int8.quantize_weight(m.weight.numpy()))
            _set_module(q, name, QuantizedLinear(w, m.bias))
            modules[name] = "linear" if source is None else f"linear, tied to {source}"
    object.__setattr__(q, "quantization_config", _config_entry(modules))
    return q.eval()


# ----------------------------------------------------------------------------------------------------------------
# saving and loading


def quantized_state_dict(model) -> dict[str, np.ndarray]:
    """Every tensor of the saved checkpoint: `m.weight` int8 and `m.weight_scale` float32 for each quantised module
    (a tied one once, under the first module that holds it), and the float32 parameters by name."""
    state, seen = {}, set()
    for name, m in model.named_modules():
        if isinstance(m, (QuantizedLinear, QuantizedEmbedding)) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            state[f"{name}.weight"] = m.weight.int8.q
            state[f"{name}{SCALE_SUFFIX}"] = m.weight.int8.scale
    for name, p in model.named_parameters():
        state[name] = np.ascontiguousarray(_cuda.to_host(p.data), dtype=np.float32)
    return state


def save_quantized(model, folder, tokenizer=None) -> Path:
    """Write config.json (with `architectures` and `quantization_config`), model.safetensors and the tokenizer,
    each atomically (loading.save_pretrained calls this for a quantised model)."""
    from minidistil.io.loading import CONFIG_NAME, WEIGHTS_NAME
    from minidistil.core.files import atomic_write
    from minidistil.io.safetensors_io import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    # transformers loads an unknown quant_method as plain float weights (the int8 values as floats); under a
    # model_type of its own, transformers' AutoModel refuses the folder instead ("does not recognize this
    # architecture"); minidistil's config reader takes the model type back from quantization_config
    config["quantization_config"] = {**model.quantization_config, "model_type": config["model_type"]}
    config["model_type"] = QUANT_METHOD
    save_file(quantized_state_dict(model), folder / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder


def _file_key(name: str, keys, prefix: str) -> str | None:
    """The checkpoint's key for the model's tensor `name`: the base-model prefix ("bert." / "distilbert.") may be
    present or absent on either side, as loading.map_state_dict allows for float32 checkpoints."""
    candidates = [name]
    if prefix:
        candidates += [f"{prefix}.{name}", name[len(prefix) + 1:] if name.startswith(prefix + ".") else None]
    return next((c for c in candidates if c and c in keys), None)


def load_quantized(folder, config_dict: dict, cls=None, device: str | None = None,
                   output_loading_info: bool = False):
    """The quantised model saved in `folder` (loading.from_pretrained calls this when config.json has a
    `quantization_config`). Every tensor the model needs must be in the file: a quantised checkpoint cannot
    grow a new head (load the float32 model, add and train the head, then quantise)."""
    from minidistil.core.config import config_from_dict
    from minidistil.io.loading import CheckpointError, pick_class, read_state_dict, to_device
    folder = Path(folder)
    qc = config_dict.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        method = qc.get("quant_method") if isinstance(qc, dict) else qc
        raise CheckpointError(f"{folder / 'config.json'}: quantization_config.quant_method {method!r} is not "
                              f"minidistil's ({QUANT_METHOD!r}); minidistil reads only its own int8 checkpoints")
    if qc.get("version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(f"{folder / 'config.json'}: quantization format version {qc['version']} is newer "
                              f"than this minidistil reads ({FORMAT_VERSION}); upgrade minidistil")
    try:
        config = config_from_dict(config_dict)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    model = pick_class(config, cls, folder)(config)              # zero weights: every tensor comes from the file
    state = read_state_dict(folder)
    keys = set(state)
    prefix = getattr(model, "base_model_prefix", "") or ""
    tied = dict(getattr(model, "tied_weights", {}) or {})
    used, missing, built = set(), [], {}

    def int8_weight(name: str, cout_cin: tuple) -> QuantizedWeight | None:
        kq, ks = _file_key(f"{name}.weight", keys, prefix), _file_key(f"{name}{SCALE_SUFFIX}", keys, prefix)
        if kq is None or ks is None:
            missing.append(f"{name}.weight" if kq is None else f"{name}{SCALE_SUFFIX}")
            return None
        q, s = state[kq], state[ks]
        if q.dtype != np.int8:
            raise CheckpointError(f"{folder}: tensor {kq!r} has dtype {q.dtype}, a quantised checkpoint stores "
                                  "int8 weights")
        if tuple(q.shape) != cout_cin or tuple(s.shape) != cout_cin[:1]:
            raise CheckpointError(f"{folder}: tensors {kq!r} {tuple(q.shape)} and {ks!r} {tuple(s.shape)} do not "
                                  f"fit {type(model).__name__}'s {name} (weight {cout_cin}, scale {cout_cin[:1]})")
        if not (np.isfinite(s).all() and (s > 0).all()):
            raise CheckpointError(f"{folder}: tensor {ks!r} holds a scale that is not a positive finite number")
        try:
            w = _int8.prepare_weight(np.ascontiguousarray(q), np.ascontiguousarray(s, dtype=np.float32))
        except ValueError as e:
            raise CheckpointError(f"{folder}: tensor {kq!r}: {e}") from None
        used.update((kq, ks))
        return QuantizedWeight(w)

    for name in _word_embeddings(model):
        emb = model.get_submodule(name)
        k = _file_key(f"{name}.weight", keys, prefix)
        if k is not None and state[k].dtype.kind != "f" and state[k].dtype != np.int8:
            raise CheckpointError(f"{folder}: tensor {k!r} has dtype {state[k].dtype}, a quantised checkpoint "
                                  "stores int8 or float32 word embeddings")
        if k is None or state[k].dtype != np.int8:
            continue                                               # a float32 table (embeddings=False)
        w = int8_weight(name, emb.weight.shape)
        if w is not None:
            _set_module(model, name, QuantizedEmbedding(w, emb.padding_idx))
            built[f"{name}.weight"] = w
    for name, m in list(model.named_modules()):
        if isinstance(m, Linear):
            source = tied.get(f"{name}.weight")
            if source is not None:
                if source in built:                                # the tied int8 table
                    _set_module(model, name, QuantizedLinear(built[source], m.bias))
                continue                                           # else tied to a float32 table
            w = int8_weight(name, m.weight.shape)
            if w is not None:
                _set_module(model, name, QuantizedLinear(w, m.bias))
    for name, p in model.named_parameters():
        k = _file_key(name, keys, prefix)
        if k is None:
            missing.append(name)
            continue
        if state[k].dtype.kind != "f":
            raise CheckpointError(f"{folder}: tensor {k!r} has dtype {state[k].dtype}, {name!r} is a float32 "
                                  "parameter")
        if tuple(state[k].shape) != p.shape:
            raise CheckpointError(f"{folder}: tensor {k!r} has shape {tuple(state[k].shape)} but "
                                  f"{type(model).__name__} expects {p.shape} for {name!r}")
        p.data[...] = state[k]
        _gemm.weights_changed()  # written in place: packed copies are stale
        used.add(k)
    if missing:
        raise CheckpointError(f"{folder}: the quantised checkpoint lacks {missing} for {type(model).__name__}. A "
                              "quantised model cannot start a new head: load the float32 model, train the head, "
                              "then quantise")
    unexpected = sorted(k for k in keys - used if not k.endswith((".position_ids", ".token_type_ids")))
    if unexpected:
        warnings.warn(f"Some tensors of the quantised checkpoint at {folder} were not used by "
                      f"{type(model).__name__}: {unexpected}", stacklevel=3)
    modules = {n: ("embedding" if isinstance(m, QuantizedEmbedding) else "linear")
               for n, m in model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))}
    object.__setattr__(model, "quantization_config", _config_entry(modules))
    object.__setattr__(model, "name_or_path", str(folder))
    model = to_device(model.eval(), device)
    if output_loading_info:
        return model, {"missing_keys": [], "unexpected_keys": unexpected}
    return model


# the plug-in format's hooks (minidistil/core/plugins.py): loading.from_pretrained / save_pretrained call them
load_checkpoint = load_quantized
save_checkpoint = save_quantized


# ----------------------------------------------------------------------------------------------------------------
# `minidistil quantize SRC OUT`

# files of a checkpoint folder that describe the model's use, not its weights: copied as they are
_COPIED = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "modules.json",
           "sentence_bert_config.json", "config_sentence_transformers.json")


def file_size(folder) -> int:
    """Bytes of the weights in a checkpoint folder (model.safetensors, or its shards)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def quantize_folder(src, out, overwrite: bool = False) -> dict:
    """Load the checkpoint `src`, quantise it, write it to `out` with the tokenizer and sentence-transformers files
    (pooling, normalisation) copied over. Returns sizes and what was quantised. `out` must not be, hold or lie in
    the source folder; a folder that already holds files is refused unless overwrite=True (whose files of the same
    names are then replaced)."""
    from minidistil.core.files import atomic_write, check_apart, read_json_object
    from minidistil.io.loading import CheckpointError, from_pretrained, resolve, save_pretrained
    folder = resolve(src)
    out = Path(out)
    check_apart(out, {"source checkpoint": folder}, flag="OUT")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = sorted(f.name for f in out.iterdir())
        raise ValueError(f"OUT: {out} is not empty (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''})"
                         "; give a new folder, or --overwrite to replace the model files in it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT: {out} is a file, not a folder")
    if (folder / "config.json").is_file() and "quantization_config" in read_json_object(folder / "config.json"):
        raise CheckpointError(f"{folder}: the checkpoint is quantised already")
    model = from_pretrained(folder)
    qmodel = quantize(model)
    save_pretrained(qmodel, out)
    for f in folder.rglob("*"):
        rel = f.relative_to(folder)
        if f.is_file() and (rel.name in _COPIED and len(rel.parts) == 1 or rel.parts[0][:1].isdigit()):
            atomic_write(out / rel, f.read_bytes())                # e.g. 1_Pooling/config.json, 2_Normalize/
    counts = {}
    for kind in qmodel.quantization_config["modules"].values():
        counts[kind.split(",")[0]] = counts.get(kind.split(",")[0], 0) + 1
    return {"src": str(folder), "out": str(out), "architecture": type(model).__name__,
            "float32_bytes": file_size(folder), "int8_bytes": file_size(out), "quantized": counts}
