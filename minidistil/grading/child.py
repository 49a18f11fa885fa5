"""The process a student's answer runs in, and the wire format between it and the grader.

The grader (`remote.py`, in the parent process) starts this file as a script, once per submission (and afresh after
a time-out or a crash): `python child.py ANSWER.py MEMORY_MB`. It imports the answer and then serves requests: get
an attribute of the module or of an object it returned, call a function. Every value crossing the pipe is data,
never code: JSON for the structure (None, bools, numbers, strings, tagged tuples and lists, object handles) and
NumPy's .npy format for arrays (read back with allow_pickle=False). Objects that are not plain data (a student's
Tensor, a function) stay here and travel as numbered handles.

The answer's prints (and anything a program it starts writes) go to this process's stderr, which the grader reads
and bounds; the requests and replies travel on copies of the original stdin/stdout, so printing cannot corrupt them.
The memory limit is RLIMIT_AS where the OS supports it. This is isolation, not a sandbox: the answer can still
read and write the user's files, use the network and start programs; see the exercises README.

This file imports only the standard library and NumPy, so it starts fast and runs by its path alone.
"""
from __future__ import annotations

import io
import json
import os
import struct
import sys

MAX_HEADER = 1 << 22          # 4 MiB of JSON per message
MAX_BLOBS = 1 << 26           # 64 MiB of arrays per message
MAX_DEPTH = 16                # nesting of tuples and lists in a value
MAX_ITEMS = 4096              # items of one tuple or list
MAX_STR = 4000                # characters of a string (longer ones are cut)
ARRAY_KINDS = "biufc"         # bool, ints, floats, complex: what np.save writes without pickle


class WireError(Exception):
    """A message that breaks the format or its bounds."""


def read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_message(fd: int, header: dict, blobs: list[bytes]):
    """One message: 4-byte length, JSON header (listing the blob sizes), then the blobs."""
    header = dict(header, blobs=[len(b) for b in blobs])
    data = json.dumps(header).encode()
    payload = struct.pack(">I", len(data)) + data + b"".join(blobs)
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def read_message(fd: int) -> tuple[dict, list[bytes]]:
    (n,) = struct.unpack(">I", read_exact(fd, 4))
    if n > MAX_HEADER:
        raise WireError(f"a message header of {n} bytes (limit {MAX_HEADER})")
    try:
        header = json.loads(read_exact(fd, n))
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"a message that is not JSON ({e})") from None
    sizes = header.get("blobs") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(type(s) is int and s >= 0 for s in sizes) \
            or sum(sizes) > MAX_BLOBS:
        raise WireError(f"arrays of more than {MAX_BLOBS >> 20} MiB in one message, or a malformed list of sizes")
    return header, [read_exact(fd, s) for s in sizes]


def array_bytes(a) -> bytes:
    import numpy as np
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def load_array(blob: bytes):
    """An array from .npy bytes, refusing pickled objects and anything but plain numbers."""
    import numpy as np
    try:
        a = np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 (any malformed payload)
        raise WireError(f"an array that does not load ({type(e).__name__}: {e})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in ARRAY_KINDS or a.dtype.fields is not None:
        raise WireError("an array of a type other than bool, int, float or complex")
    return a


# ----------------------------------------------------------------------------------------------------------------
# the child's side: encode what the answer returns, serve requests


PLAIN_KEYS = (str, int, float, bool)   # the keys a dict may have on the wire (JSON keeps them apart as [key, value])


def encode(v, blobs: list, objects: dict, depth: int = 0):
    """A JSON-ready value: plain data as itself, arrays and NumPy scalars as blob numbers, other objects as handles
    (kept alive in `objects`)."""
    import numpy as np
    if v is None or isinstance(v, bool) or (type(v) in (int, float)):
        return v
    if type(v) is str:
        return v[:MAX_STR]
    if isinstance(v, (np.ndarray, np.generic)) and np.asarray(v).dtype.kind in ARRAY_KINDS \
            and np.asarray(v).dtype.fields is None:
        blobs.append(array_bytes(np.asarray(v)))
        return {"nd" if isinstance(v, np.ndarray) else "sc": len(blobs) - 1}
    if isinstance(v, (tuple, list)) and type(v) in (tuple, list) and depth < MAX_DEPTH and len(v) <= MAX_ITEMS:
        return {type(v).__name__: [encode(x, blobs, objects, depth + 1) for x in v]}
    if type(v) is dict and depth < MAX_DEPTH and len(v) <= MAX_ITEMS and all(type(k) in PLAIN_KEYS for k in v):
        return {"dict": [[k, encode(x, blobs, objects, depth + 1)] for k, x in v.items()]}
    key = id(v)
    objects[key] = v
    return {"obj": key, "type": type(v).__name__[:100], "callable": callable(v)}


def decode_arg(v, blobs: list, objects: dict):
    """The grader's arguments (it sends only plain data, arrays and handles of this process's objects)."""
    if isinstance(v, dict):
        if "nd" in v:
            return load_array(blobs[v["nd"]]).copy()
        if "sc" in v:
            return load_array(blobs[v["sc"]])[()]
        if "obj" in v:
            return objects[v["obj"]]
        if "tuple" in v:
            return tuple(decode_arg(x, blobs, objects) for x in v["tuple"])
        if "list" in v:
            return [decode_arg(x, blobs, objects) for x in v["list"]]
        if "dict" in v:
            return {k: decode_arg(x, blobs, objects) for k, x in v["dict"]}
        raise WireError(f"unknown value {sorted(v)}")
    return v


def exception_info(e: BaseException, path: str) -> dict:
    import traceback
    frames = [[f.filename, f.lineno, (f.line or "")[:200]] for f in traceback.extract_tb(e.__traceback__)]
    info = {"type": type(e).__name__[:100], "msg": str(e)[:MAX_STR], "frames": frames[-50:],
            "base": isinstance(e, Exception)}
    if isinstance(e, SyntaxError):
        info["syntax"] = [e.lineno, str(e.msg)[:MAX_STR]]
    return info


def param_names(fn, n_args: int) -> list[str]:
    """The names of the first n_args parameters of fn (for "you changed `dy` in place"), or argument numbers."""
    import inspect
    names = [f"argument {i + 1}" for i in range(n_args)]
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return names
    for i, p in enumerate(params[:n_args]):
        names[i] = p.name[:100]
    return names


def cuda_simulator_setting(environ=None) -> str:
    """NUMBA_ENABLE_CUDASIM for the answer's process: the user's own setting when there is one, else "1" (the CUDA
    simulator) where there is no NVIDIA GPU (no /dev/nvidiactl, the test that tests/conftest.py makes) and "0" where
    there is one. numba reads it once, at its first import, which is the answer's."""
    environ = os.environ if environ is None else environ
    if "NUMBA_ENABLE_CUDASIM" in environ:
        return environ["NUMBA_ENABLE_CUDASIM"]
    return "0" if os.path.exists("/dev/nvidiactl") else "1"


def serve(path: str, memory_mb: int):
    # the requests and replies use copies of stdin/stdout; the answer's stdout goes to stderr, its stdin is empty
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    if memory_mb > 0:
        try:
            import resource
            limit = memory_mb << 20
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard == resource.RLIM_INFINITY or hard > limit:
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit if hard == resource.RLIM_INFINITY else hard))
        except (ImportError, ValueError, OSError):
            pass  # no RLIMIT_AS here (Windows, some macOS versions): the time limit still ends a runaway answer
    import importlib.util
    import warnings

    import numpy as np
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    os.environ["NUMBA_ENABLE_CUDASIM"] = cuda_simulator_setting()   # before the answer imports numba
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    objects: dict = {}

    def reply(header, blobs=()):
        write_message(proto_out, header, list(blobs))

    try:
        spec = importlib.util.spec_from_file_location("_minidistil_answer", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["_minidistil_answer"] = module  # dataclasses look the module up while it executes
        spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 (SystemExit and all: the grader reports it)
        reply({"ok": False, "exc": exception_info(e, path)})
        return
    objects[0] = module
    reply({"ok": True})
    while True:
        try:
            req, blobs = read_message(proto_in)
        except EOFError:
            return
        out_blobs: list = []
        try:
            target = objects[req["obj"]]
            if req["op"] == "getattr":
                value = getattr(target, req["name"])
                reply({"ok": True, "value": encode(value, out_blobs, objects)}, out_blobs)
                continue
            args = [decode_arg(a, blobs, objects) for a in req["args"]]
            kwargs = {k: decode_arg(a, blobs, objects) for k, a in req["kwargs"].items()}
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = target(*args, **kwargs)
            after_blobs: list = []
            after = [encode(a, after_blobs, {}) if isinstance(a, np.ndarray) else None for a in args]
            after_kw = {k: encode(a, after_blobs, {}) for k, a in kwargs.items() if isinstance(a, np.ndarray)}
            head = {"ok": True, "value": encode(value, out_blobs, objects),
                    "params": param_names(target, len(args))}
            n = len(out_blobs)
            shift = lambda d: {k: ({"nd": v["nd"] + n} if v else None) for k, v in d.items()}  # noqa: E731
            head["after"] = [shift({"x": a})["x"] for a in after]
            head["after_kw"] = shift(after_kw)
            reply(head, out_blobs + after_blobs)
        except BaseException as e:  # noqa: BLE001 (SystemExit, MemoryError, KeyboardInterrupt: all reported)
            out = {"ok": False, "exc": exception_info(e, path)}
            try:
                reply(out)
            except MemoryError:
                os._exit(3)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
    os._exit(0)
