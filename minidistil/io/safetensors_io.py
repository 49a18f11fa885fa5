"""A small safetensors reader and writer in plain NumPy (no torch, no bfloat16 package).

The format (https://github.com/huggingface/safetensors) is deliberately simple:

    [8 bytes]  N, the header length, an unsigned little-endian 64-bit integer
    [N bytes]  a UTF-8 JSON object:
                 {"__metadata__": {"format": "pt"},                       (optional, str -> str)
                  "<tensor name>": {"dtype": "F32", "shape": [V, C], "data_offsets": [begin, end]}, ...}
               padded with spaces so the data that follows starts 8-byte aligned
    [rest]     the raw little-endian bytes of every tensor, row-major; data_offsets count from the start of this
               region, and the tensors tile it with no gaps.

NumPy has no bfloat16. A bfloat16 number is the upper half of a float32 (1 sign bit, 8 exponent bits, 7 mantissa
bits), so widening is exact:  f32_bits = uint32(bf16_bits) << 16.  Narrowing (writing bf16) rounds to nearest even.

Every write is atomic: the bytes go to a temporary file in the destination folder, are fsync'ed, and replace the
destination with os.replace, so a crash never leaves half a checkpoint under the real name.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from collections.abc import Iterable

import numpy as np

# atomic_write and named_os_error live in minidistil/core/files.py; they stay importable from here
from minidistil.core.files import atomic_write as atomic_write, brief, named_os_error as named_os_error

# safetensors dtype tag -> little-endian NumPy dtype ("BF16" has none: stored as uint16 and widened by hand)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_TAGS = {np.dtype(v).newbyteorder("=") if v.byteorder != "|" else v: k for k, v in _DTYPES.items() if k != "BF16"}

_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation refuses headers above 100 MB too
_MAX_BYTES = 2**63 - 1           # NumPy's limit on an array's size in bytes, zero-sized dimensions left out


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read: truncated, corrupt, or not safetensors at all."""


# ----------------------------------------------------------------------------------------------------------------
# bfloat16 by hand


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bfloat16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))   # ties go to the even upper half
    out = ((u + rounding) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)  # keep a quiet NaN
    return out


# ----------------------------------------------------------------------------------------------------------------
# reading


def read_header(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """Parse and validate the header of a safetensors file.

    Returns (entries, metadata, data_start): entries maps each tensor name to {"dtype", "shape", "data_offsets"};
    data_start is the file offset of the data region. Raises SafetensorsError naming the file (and the tensor)
    on anything malformed, including a file cut short.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path}: not a safetensors file ({size} bytes, shorter than the 8-byte header "
                                   "length); the file is empty or truncated")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or n > size - 8:
            raise SafetensorsError(f"{path}: header length {n} is impossible for a file of {size} bytes; the file "
                                   "is truncated, corrupt, or not safetensors")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep, an int of 5000 digits
        raise SafetensorsError(f"{path}: the JSON header does not parse ({str(e)[:120]}); the file is "
                               "corrupt") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object; the file is corrupt")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError(f"{path}: __metadata__ must be a JSON object of strings, got {brief(metadata)}; "
                               "the file is corrupt")
    data_start = 8 + n
    data_size = size - data_start
    expected_end = 0
    for name, entry in sorted(header.items(), key=lambda kv: _offsets(path, kv[0], kv[1])[0]):
        begin, end = _offsets(path, name, entry)
        dtype = entry.get("dtype")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {brief(name)} has unknown dtype {brief(dtype)}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise SafetensorsError(f"{path}: tensor {brief(name)} has an invalid shape {brief(shape)}")
        nbytes = _DTYPES[dtype].itemsize          # in Python ints: no int64 overflow can wrap a size around
        for d in shape:
            nbytes *= d or 1                      # zero-sized dimensions left out, as NumPy's own size limit does
            if nbytes > _MAX_BYTES:
                raise SafetensorsError(f"{path}: tensor {brief(name)} of dtype {dtype} has shape {brief(shape)}, "
                                       "larger than any array can be (2**63 bytes); the file is corrupt")
        if 0 in shape:
            nbytes = 0
        if end - begin != nbytes:
            raise SafetensorsError(f"{path}: tensor {brief(name)} of dtype {dtype} and shape {brief(shape)} needs "
                                   f"{nbytes} bytes but its data_offsets {[begin, end]} span {end - begin}; the file "
                                   "is corrupt")
        if begin != expected_end:
            raise SafetensorsError(f"{path}: tensor {brief(name)} starts at byte {begin} of the data, expected "
                                   f"{expected_end} (tensors must tile the data region); the file is corrupt")
        if end > data_size:
            raise SafetensorsError(f"{path}: tensor {brief(name)} ends at byte {end} of the data but the file holds "
                                   f"only {data_size} data bytes; the file is truncated")
        expected_end = end
    if expected_end != data_size:
        raise SafetensorsError(f"{path}: {data_size - expected_end} bytes after the last tensor; the file is corrupt")
    return header, metadata, data_start


def _offsets(path, name, entry) -> tuple[int, int]:
    off = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not isinstance(off, list) or len(off) != 2 or not all(_is_uint(o) for o in off) or off[1] < off[0]:
        raise SafetensorsError(f"{path}: tensor {brief(name)} has invalid data_offsets {brief(off)}; the file is "
                               "corrupt")
    return off[0], off[1]


def _is_uint(x) -> bool:
    """A JSON non-negative integer (not a bool, not a float: the reference reader refuses `true` and `1.0`)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def load_file(path: str | os.PathLike, *, to_float32: bool = True,
              names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Read a safetensors file into {name: ndarray} (each array owns its memory).

    to_float32: float16 / bfloat16 / float64 tensors come back as float32 (integer tensors keep their dtype).
    names:      read only these tensors (all when None).
    """
    path = Path(path)
    header, _, data_start = read_header(path)
    wanted = header.keys() if names is None else names
    out = {}
    with open(path, "rb") as f:
        for name in wanted:
            if name not in header:
                raise SafetensorsError(f"{path}: no tensor named {name!r}")
            entry = header[name]
            begin, end = entry["data_offsets"]
            f.seek(data_start + begin)
            raw = f.read(end - begin)
            if len(raw) != end - begin:  # the file shrank under us
                raise SafetensorsError(f"{path}: tensor {name!r} is truncated")
            a = np.frombuffer(raw, dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])
            if entry["dtype"] == "BF16":
                a = bf16_to_f32(a) if to_float32 else a.copy()
            elif to_float32 and a.dtype.kind == "f":
                a = a.astype(np.float32)  # also turns '<f4' into the native float32 and copies
            else:
                a = a.astype(a.dtype.newbyteorder("="))
            out[name] = a
    return out


# ----------------------------------------------------------------------------------------------------------------
# writing


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None,
              *, dtype: str | None = None) -> Path:
    """Write {name: ndarray} as a safetensors file, atomically.

    dtype: None keeps each array's dtype; "F16" or "BF16" narrows every floating tensor (to make half-precision
    test checkpoints as Hugging Face stores them).
    """
    if dtype not in (None, "F16", "BF16", "F32"):
        raise ValueError(f"dtype: expected None, 'F32', 'F16' or 'BF16', got {dtype!r}")
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("metadata: expected a dict of str -> str")
        header["__metadata__"] = dict(metadata)
    blobs = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        if a.dtype.kind == "f" and dtype is not None:
            if dtype == "BF16":
                tag, data = "BF16", f32_to_bf16(a.astype(np.float32))
            else:
                tag = dtype
                data = a.astype(_DTYPES[dtype])
        else:
            native = a.dtype.newbyteorder("=") if a.dtype.byteorder not in "|" else a.dtype
            if native not in _TAGS:
                raise ValueError(f"tensors[{name!r}]: dtype {a.dtype} has no safetensors equivalent")
            tag = _TAGS[native]
            data = a.astype(_DTYPES[tag])
        b = np.ascontiguousarray(data).tobytes()
        header[name] = {"dtype": tag, "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)  # pad so the data region starts 8-byte aligned

    def write(f):
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)

    return atomic_write(path, write)
