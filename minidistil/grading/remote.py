"""The grader's side of a submission's child process: start it, talk to it, end it, and a proxy of the student's
module that grading code calls as if the module were imported here.

`StudentProcess(path)` runs `child.py` on the answer file in a new process (its own session, so a time-out ends the
programs it started too), with a time limit per request and a memory limit. `proc.module` is a `RemoteModule`:
`proc.module.gelu_backward(dy, x)` sends the arguments (JSON and .npy, never pickle), the child calls the function
and sends back its result and the arrays it was given, as they are after the call. The proxy copies those back into
the grader's arrays (so a function that works in place, like an optimizer step, looks the same as when called
directly) and records which inputs changed, for the in-place check. Objects that are not data (a Tensor of the
student's) stay in the child as handles, `RemoteObject`s whose attributes and methods are fetched the same way.

A time-out, an exit of any kind, a crash or an unreadable reply raises `ChildFailure` (a line and a hint for the
report); the next request starts a fresh child. A function that ran past the time limit once is not called again
in that submission (each further call fails at once), so an endless loop costs one time limit, not one per check.
Exceptions of the student's code come back as exceptions of the same builtin class (any class that is not an
Exception subclass, such as SystemExit, becomes an Exception subclass of that name), with their frames kept in the
raising function's local `remote_frames` for `engine.student_frame`.
"""
from __future__ import annotations

import builtins
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from minidistil.grading import child as wire

CHILD = Path(wire.__file__).resolve()
DEFAULT_TIMEOUT = 10.0        # seconds per call: the reference answers take milliseconds
DEFAULT_MEMORY_MB = 2048      # address space of the child: NumPy and SciPy need ~200 MB, the exercises a few MB
PRINT_LIMIT = 1 << 20         # more printing than this is a failed check (debug prints left in a loop)
MAX_RESTARTS = 8
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

TIMEOUT_HINT = ("your code ran past the time limit: an endless loop? Check that every while loop's condition "
                "changes, and that nothing waits for input (the grader gives your code no keyboard)")
EXIT_HINT = ("your code ended its own process: a function returns its result, it never calls sys.exit(), exit(), "
             "quit() or os._exit(), or raises SystemExit")
CRASH_HINT = ("the process running your code was killed: usually memory (an array that grows in a loop, or a "
              "broadcast that builds a huge array); look for a loop that allocates without end")
NATIVE_CRASH_HINT = ("your code crashed the Python process (a segmentation fault or an abort): native code reading "
                     "out of bounds, through ctypes, a C extension or a Numba function indexing past an array's end")


class ChildFailure(Exception):
    """The child timed out, ended or sent something unreadable: one report line and its hint."""

    def __init__(self, line: str, hint: str | None = None):
        super().__init__(line)
        self.line, self.hint = line, hint


class StudentProcess:
    def __init__(self, path, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB,
                 import_timeout: float | None = None):
        self.path = str(path)
        self.timeout = float(timeout)
        self.import_timeout = float(import_timeout if import_timeout is not None else max(20.0, 5 * timeout))
        self.memory_mb = int(memory_mb)
        self.proc: subprocess.Popen | None = None
        self.generation = 0
        self.starts = 0
        self.timed_out: set[str] = set()
        self.last_changed: list[tuple] = []        # (name, array sent, array after the call) changed in place
        self.mirror = True                           # copy in-place changes back into the grader's arrays
        self.printed = 0                             # bytes the answer printed, over all its processes
        self.module = RemoteModule(self)

    # -- the process ------------------------------------------------------------------------------------------

    def start(self) -> dict:
        """Start a child and import the answer: the child's first reply ({"ok": True} or {"ok": False, "exc"})."""
        self.close()
        self.starts += 1
        self.generation += 1
        env = dict(os.environ, **{v: "1" for v in THREAD_VARS}, PYTHONDONTWRITEBYTECODE="1")
        # glibc reserves 64 MiB of address space for each thread's malloc arena, which the memory limit (RLIMIT_AS)
        # counts: the CUDA simulator's block of Python threads would exhaust it without using the memory
        env.setdefault("MALLOC_ARENA_MAX", "2")
        kw = {"start_new_session": True} if os.name == "posix" else {}
        self.proc = subprocess.Popen([sys.executable, str(CHILD), self.path, str(self.memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, **kw)
        self.replies: queue.Queue = queue.Queue()
        self.drain = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        self.drain.start()
        threading.Thread(target=self._read, args=(self.proc.stdout.fileno(), self.replies), daemon=True).start()
        return self._wait("importing your file", self.import_timeout)

    def _drain(self, pipe):
        """Read the answer's printing to the end, counting it and keeping none of it (the grader's output is
        the report alone)."""
        while chunk := pipe.read1(1 << 16):
            self.printed += len(chunk)

    @staticmethod
    def _read(fd, replies):
        while True:
            try:
                replies.put(wire.read_message(fd))
            except EOFError:
                replies.put(None)
                return
            except (wire.WireError, OSError) as e:
                replies.put(e)
                return

    def _wait(self, what: str, limit: float) -> dict:
        try:
            got = self.replies.get(timeout=limit)
        except queue.Empty:
            self.close()
            raise ChildFailure(f"{what}: no answer within the time limit of {limit:g} s (stopped)",
                               TIMEOUT_HINT) from None
        if isinstance(got, Exception):
            self.close()
            raise ChildFailure(f"{what}: your code's process sent an unreadable reply ({got})",
                               "return plain NumPy arrays and numbers") from None
        if got is None:
            try:
                rc = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:       # it closed its end of the pipe but lives on
                rc = None
            self.close()
            if rc is None:
                raise ChildFailure(f"{what}: your code closed the process's connection to the grader", EXIT_HINT)
            if rc < 0:
                try:
                    name = signal.Signals(-rc).name
                except ValueError:
                    name = f"signal {-rc}"
                hint = CRASH_HINT if name in ("SIGKILL", "SIGTERM") else NATIVE_CRASH_HINT
                raise ChildFailure(f"{what}: the process running your code was killed by {name}", hint)
            raise ChildFailure(f"{what}: your code ended the process running it (exit status {rc})", EXIT_HINT)
        header, blobs = got
        if not isinstance(header, dict) or not isinstance(header.get("ok"), bool):
            self.close()
            raise ChildFailure(f"{what}: your code's process sent an unreadable reply")
        header["_blobs"] = blobs
        return header

    def close(self):
        """End the child and every program it started (its process group)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        self.drain.join(timeout=5)   # the pipe ends with the process group (a program that left it keeps it open)
        for pipe in (proc.stdin, proc.stdout) + ((proc.stderr,) if not self.drain.is_alive() else ()):
            pipe.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- requests ---------------------------------------------------------------------------------------------

    def request(self, what: str, header: dict, blobs: list[bytes], generation: int) -> dict:
        if self.proc is None:
            if self.starts > MAX_RESTARTS:
                raise ChildFailure(f"{what}: not run (your code's process ended {MAX_RESTARTS} times already)")
            first = self.start()
            if not first["ok"]:
                raise ChildFailure(f"{what}: your file no longer imports in a fresh process "
                                   f"({first['exc'].get('type')}: {first['exc'].get('msg')})")
        if generation not in (0, self.generation):
            raise ChildFailure(f"{what}: this object belonged to a process of your code that has ended")
        try:
            wire.write_message(self.proc.stdin.fileno(), header, blobs)
        except OSError:
            pass  # the child is gone: _wait reports how it ended
        reply = self._wait(what, self.timeout)
        if not reply["ok"]:
            raise_remote(reply.get("exc"))
        return reply

    def decode(self, v, blobs, depth=0):
        """A value of the child's reply, validated: plain data, arrays, NumPy scalars, tuples, lists, handles."""
        if v is None or type(v) in (bool, int, float, str):
            return v
        if depth > wire.MAX_DEPTH or not isinstance(v, dict) or len(v) not in (1, 3):
            raise ChildFailure("your code's process sent a value the grader cannot read")
        try:
            if "nd" in v:
                return wire.load_array(blobs[v["nd"]])
            if "sc" in v:
                return wire.load_array(blobs[v["sc"]])[()]
            if "tuple" in v or "list" in v:
                items = [self.decode(x, blobs, depth + 1) for x in next(iter(v.values()))]
                return tuple(items) if "tuple" in v else items
            if "dict" in v and type(v["dict"]) is list:
                return {_plain_key(k): self.decode(x, blobs, depth + 1) for k, x in v["dict"]}
            if "obj" in v and type(v["obj"]) is int and type(v.get("type")) is str:
                cls = RemoteCallable if v.get("callable") is True else RemoteObject
                return cls(self, v["obj"], v["type"], self.generation)
        except (wire.WireError, IndexError, TypeError) as e:
            raise ChildFailure(f"your code's process sent a value the grader cannot read ({e})") from None
        raise ChildFailure("your code's process sent a value the grader cannot read")


def _plain_key(k):
    if type(k) not in wire.PLAIN_KEYS:
        raise TypeError(f"a dict key of type {type(k).__name__}")
    return k


def encode_arg(v, blobs: list, depth=0):
    """An argument for the child: plain data, arrays, NumPy scalars, tuples, lists, or a handle of the child's."""
    if v is None or isinstance(v, bool) or type(v) in (int, float, str):
        return v
    if isinstance(v, RemoteObject):
        p = object.__getattribute__(v, "_process")
        if object.__getattribute__(v, "_generation") not in (0, p.generation):
            raise ChildFailure("an object of your code's was lost with the process that ended")
        return {"obj": object.__getattribute__(v, "_id")}
    if isinstance(v, (np.ndarray, np.generic)) and np.asarray(v).dtype.kind in wire.ARRAY_KINDS:
        blobs.append(wire.array_bytes(np.asarray(v)))
        return {"nd" if isinstance(v, np.ndarray) else "sc": len(blobs) - 1}
    if isinstance(v, (int, float)):
        return v.__int__() if isinstance(v, int) else float(v)
    if isinstance(v, (tuple, list)) and depth < wire.MAX_DEPTH:
        return {"tuple" if isinstance(v, tuple) else "list": [encode_arg(x, blobs, depth + 1) for x in v]}
    if isinstance(v, dict) and depth < wire.MAX_DEPTH and all(type(k) in wire.PLAIN_KEYS for k in v):
        return {"dict": [[k, encode_arg(x, blobs, depth + 1)] for k, x in v.items()]}
    raise TypeError(f"the grader cannot send a {type(v).__name__} to the student's process")


def raise_remote(exc):
    """Raise the student's exception here: the builtin class of its name when it is an Exception, else an
    Exception subclass of that name; the child's frames stay in this function's local `remote_frames`."""
    if not isinstance(exc, dict):
        raise ChildFailure("your code's process sent an unreadable error")
    name, msg = str(exc.get("type", "Exception"))[:100], str(exc.get("msg", ""))
    remote_frames = [tuple(f) for f in exc.get("frames", []) if isinstance(f, list) and len(f) == 3]  # noqa: F841
    cls = getattr(builtins, name, None)
    err = None
    if isinstance(cls, type) and issubclass(cls, Exception) and exc.get("base") is True:
        try:
            err = cls(msg)
        except Exception:  # noqa: BLE001 (a builtin exception with another signature)
            err = None
    if err is None:
        err = type(name if name.isidentifier() else "Exception", (Exception,), {})(msg)
    syntax = exc.get("syntax")
    if isinstance(syntax, list) and len(syntax) == 2:
        err.remote_syntax = syntax
    raise err


class RemoteObject:
    """A handle of an object that lives in the student's process: attribute reads are requests."""

    def __init__(self, process: StudentProcess, oid: int, type_name: str, generation: int):
        object.__setattr__(self, "_process", process)
        object.__setattr__(self, "_id", oid)
        object.__setattr__(self, "_type", type_name)
        object.__setattr__(self, "_generation", generation)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        p = object.__getattribute__(self, "_process")
        oid, gen = object.__getattribute__(self, "_id"), object.__getattribute__(self, "_generation")
        label = f"{object.__getattribute__(self, '_type')}.{name}" if oid else name
        reply = p.request(f"reading {label}", {"op": "getattr", "obj": oid, "name": name}, [], gen)
        value = p.decode(reply.get("value"), reply["_blobs"])
        if isinstance(value, RemoteObject):
            object.__setattr__(value, "_label", label)
        return value

    def __setattr__(self, name, value):
        raise AttributeError("the student's objects are read-only from the grader")

    def __repr__(self):
        return f"<{object.__getattribute__(self, '_type')} in the student's process>"


class RemoteCallable(RemoteObject):
    def __call__(self, *args, **kwargs):
        p = object.__getattribute__(self, "_process")
        label = getattr_safe(self, "_label") or object.__getattribute__(self, "_type")
        if label in p.timed_out:
            raise ChildFailure(f"{label} was not called again: it ran past the time limit in an earlier check")
        blobs: list = []
        header = {"op": "call", "obj": object.__getattribute__(self, "_id"),
                  "args": [encode_arg(a, blobs) for a in args],
                  "kwargs": {k: encode_arg(a, blobs) for k, a in kwargs.items()}}
        p.last_changed = []
        try:
            reply = p.request(f"calling {label}", header, blobs, object.__getattribute__(self, "_generation"))
        except ChildFailure as e:
            if e.hint is TIMEOUT_HINT:
                p.timed_out.add(label)
            raise
        value = p.decode(reply.get("value"), reply["_blobs"])
        params = reply.get("params")
        names = [str(n)[:100] for n in params] if isinstance(params, list) else []
        names += [f"argument {i + 1}" for i in range(len(names), len(args))]
        after = reply.get("after") if isinstance(reply.get("after"), list) else []
        after_kw = reply.get("after_kw") if isinstance(reply.get("after_kw"), dict) else {}
        pairs = [(names[i], a, after[i] if i < len(after) else None) for i, a in enumerate(args)]
        pairs += [(k, a, after_kw.get(k)) for k, a in kwargs.items()]
        for name, sent, back in pairs:
            if not isinstance(sent, np.ndarray):
                continue
            now = p.decode(back, reply["_blobs"]) if back is not None else None
            if not isinstance(now, np.ndarray) or now.shape != sent.shape or now.dtype != sent.dtype:
                p.last_changed.append((name, sent, None))
            elif not np.array_equal(now, sent, equal_nan=True):
                p.last_changed.append((name, sent, now))
                if p.mirror:
                    mirror(sent, now)
        return value


def mirror(sent: np.ndarray, now: np.ndarray | None):
    """Copy the change a function made to its input back into the grader's array, as if it had run here."""
    if now is not None and sent.flags.writeable:
        np.copyto(sent, now)


def getattr_safe(obj, name):
    try:
        return object.__getattribute__(obj, name)
    except AttributeError:
        return None


class RemoteModule(RemoteCallable):
    """The student's module (handle 0): `module.gelu_backward` is a RemoteCallable, `module.Tensor` too."""

    def __init__(self, process: StudentProcess):
        super().__init__(process, 0, "module", 0)

    def __call__(self, *args, **kwargs):
        raise TypeError("a module is not callable")
