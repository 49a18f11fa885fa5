"""Training checkpoints: everything a run needs to continue as if it had never stopped, written atomically.

A checkpoint is one .npz file (no pickle) holding
    model/<name>        the student's parameters
    optim/m/<name>, optim/v/<name>   AdamW's moments
    meta                a JSON document: step, optimizer scalars, the states of the random generators (numpy
                        PCG64 states are plain integers), the data position (`Batches.state()`), and anything the
                        caller adds (the run's settings, the loss history so far, ...).

Atomic (minidistil.core.files.atomic_write): the file is written to a temporary name in the same folder,
flushed and fsync'ed, then renamed over the old checkpoint with os.replace (atomic on POSIX and Windows), and the
folder is fsync'ed so the rename itself is durable. A crash (even SIGKILL, even a power cut) at any moment leaves
either the old checkpoint or the new one, never a half-written file. A file damaged some other way (copied in
part, a disk fault) is refused on loading with a ValueError naming it.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from minidistil.core.files import atomic_write
from minidistil.kernels import gemm as _gemm

FORMAT = "minidistil-checkpoint-1"


class Checkpoint(NamedTuple):
    step: int                          # optimizer updates done
    model: dict[str, np.ndarray]       # parameter name -> array
    optimizer: dict | None             # AdamW.state_dict() or None
    rng: dict[str, dict]               # generator name -> bit_generator.state
    data: dict | None                  # Batches.state()
    extra: dict                        # anything else the caller saved (JSON-serialisable)


def save_checkpoint(path: str | os.PathLike, *, step: int, model: dict[str, np.ndarray], optimizer: dict | None = None,
                    rng: dict[str, np.random.Generator] | None = None, data: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a checkpoint atomically. `model` maps names to arrays (or Tensors), `optimizer` is
    AdamW.state_dict(), `rng` maps names to numpy Generators (their states are saved)."""
    arrays: dict[str, np.ndarray] = {f"model/{n}": np.asarray(a) for n, a in model.items()}
    opt_meta = None
    if optimizer is not None:
        arrays.update({f"optim/m/{n}": a for n, a in optimizer["m"].items()})
        arrays.update({f"optim/v/{n}": a for n, a in optimizer["v"].items()})
        opt_meta = {k: v for k, v in optimizer.items() if k not in ("m", "v")}
    meta = {"format": FORMAT, "step": int(step), "optimizer": opt_meta,
            "rng": {k: g.bit_generator.state for k, g in (rng or {}).items()},
            "data": data, "extra": extra or {}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint back; a missing, truncated or otherwise damaged file raises a ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint: {path} does not exist")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise ValueError(f"checkpoint: {path} is not a minidistil checkpoint (no meta entry)")
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            _check_meta(meta, path)
            if meta.get("format") != FORMAT:
                raise ValueError(f"checkpoint: {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
            model = {k[len("model/"):]: z[k] for k in z.files if k.startswith("model/")}
            optimizer = None
            if meta["optimizer"] is not None:
                optimizer = dict(meta["optimizer"])
                optimizer["m"] = {k[len("optim/m/"):]: z[k] for k in z.files if k.startswith("optim/m/")}
                optimizer["v"] = {k[len("optim/v/"):]: z[k] for k in z.files if k.startswith("optim/v/")}
        return Checkpoint(step=meta["step"], model=model, optimizer=optimizer, rng=meta["rng"], data=meta["data"],
                          extra=meta["extra"])
    except (zipfile.BadZipFile, EOFError, zlib.error, KeyError, TypeError, UnicodeDecodeError,
            json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint: {path} is damaged ({type(e).__name__}: {e})") from None
    except ValueError as e:
        if str(e).startswith("checkpoint: "):
            raise
        raise ValueError(f"checkpoint: {path} is damaged ({e})") from None


def _check_meta(meta, path: Path):
    """A ValueError naming the file when the metadata is not an object of the fields save_checkpoint writes."""
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint: {path} is damaged (its metadata is a JSON {type(meta).__name__}, not an object)")
    step = meta.get("step")
    if type(step) is not int or step < 0:
        raise ValueError(f"checkpoint: {path} is damaged (its step is {json.dumps(step)[:40]}, not a count)")
    for key, kinds in (("optimizer", (dict, type(None))), ("rng", (dict,)), ("data", (dict, type(None))),
                       ("extra", (dict,))):
        if not isinstance(meta.get(key), kinds):
            raise ValueError(f"checkpoint: {path} is damaged (its {key} is a {type(meta.get(key)).__name__})")


def restore_rng(generator: np.random.Generator, state: dict[str, Any]) -> np.random.Generator:
    """Put a saved bit-generator state back into `generator` (in place) and return it."""
    if state["bit_generator"] != type(generator.bit_generator).__name__:
        raise ValueError(f"rng: saved from a {state['bit_generator']} generator, this one is "
                         f"{type(generator.bit_generator).__name__}")
    generator.bit_generator.state = state
    return generator


def load_model_arrays(params: dict, arrays: dict[str, np.ndarray]):
    """Copy saved arrays into a model's parameters (name -> Tensor), checking names and shapes."""
    missing, unexpected = set(params) - set(arrays), set(arrays) - set(params)
    if missing or unexpected:
        raise ValueError(f"checkpoint: parameters do not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    for n, p in params.items():
        if tuple(arrays[n].shape) != tuple(p.data.shape):
            raise ValueError(f"checkpoint: {n} has shape {tuple(arrays[n].shape)}, the model {tuple(p.data.shape)}")
        p.data[...] = arrays[n]
        _gemm.weights_changed()  # written in place: packed copies are stale
