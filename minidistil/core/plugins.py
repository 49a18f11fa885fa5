"""Plug-ins: where a lower layer finds code of a higher one without importing it.

Two kinds, registered by module name (imported on first use, so registering costs nothing) in the package's
__init__, the one place that wires the layers together:
    register_checkpoint_io("minidistil.io.loading")                  Module.from_pretrained / save_pretrained call it
    register_format("minidistil_int8", "minidistil.io.quantization")  a checkpoint format beyond float32, named by
                                                                   config.json's quantization_config.quant_method
A format module provides load_checkpoint(folder, config_dict, cls, device, output_loading_info) and
save_checkpoint(model, folder, tokenizer); the generic loader knows nothing else about it.
"""
from __future__ import annotations

import importlib

_CHECKPOINT_IO: list[str] = []
_FORMATS: dict[str, str] = {}


def register_checkpoint_io(module: str) -> None:
    """The module whose from_pretrained / save_pretrained the models' methods of the same names call."""
    _CHECKPOINT_IO[:] = [module]


def checkpoint_io():
    if not _CHECKPOINT_IO:
        raise RuntimeError("no checkpoint reader is registered (minidistil.core.plugins.register_checkpoint_io)")
    return importlib.import_module(_CHECKPOINT_IO[0])


def register_format(method: str, module: str) -> None:
    """A checkpoint format: config.json's quantization_config.quant_method -> the module that reads and writes it."""
    _FORMATS[method] = module


def checkpoint_format(method):
    """The module registered for `method`, or None (an unknown format)."""
    module = _FORMATS.get(method) if isinstance(method, str) else None
    return None if module is None else importlib.import_module(module)


def formats() -> list[str]:
    return sorted(_FORMATS)
