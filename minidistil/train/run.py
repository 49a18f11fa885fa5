"""What the two training loops (minidistil.train.distill and minidistil.train.finetune) share: the output folders, the
lock, the
metrics log, checkpoints that keep the last good state, the stop on a diverging step, the schedule under a time
budget, and the curves.

Two folders per run:

    OUT/             the model a user copies or uploads: config.json, model.safetensors, the tokenizer files, and
                     small logs (metrics.jsonl, report.json, the curve PNG)
    OUT.training/    what only a resumed run needs: checkpoint-<step>.npz (parameters, AdamW's moments, the data
                     position and the run state; the last two are kept) and, while a run is going, `lock`

    with Run(out, resume=False, overwrite=False) as run:
        c = run.resume(params)               # the newest sound checkpoint (None: a new run)
        ...
        run.check_step(step, loss, grad_norm)
        run.log({"step": step, "loss": loss})
        run.save(step, model=params, optimizer=opt.state_dict(), data=..., state=state)

- The lock: one run per folder. A second run is refused with the PID of the first; the lock of a run that died
  (even by SIGKILL) is released by the kernel and taken over, with a message.
- A folder that already holds a run (a checkpoint, metrics.jsonl, report.json) or a model is refused unless the
  caller resumes it (`resume=True`) or starts again (`overwrite=True`, which deletes the old checkpoints and logs;
  the model files are replaced when the new run saves its model).
- Saving refuses a diverged state: every step's loss and gradient norm must be finite, and before each checkpoint
  every parameter must be finite and within PARAM_GROWTH times the largest magnitude at the start of the run.
  A diverged run stops with `Diverged`, naming the step, and the previous checkpoints are untouched.
- Under MPI (minidistil.train.parallel) rank 0 alone writes: the other ranks open their Run with writer=False, which
  takes no lock and writes nothing but still checks every step and the parameters; rank 0 reads the checkpoint on
  resume and hands it to the others.
- Resuming loads the newest checkpoint that reads back whole and holds sound parameters; a damaged one (a
  truncated file, a torn zip) or one with exploded parameters is named and the one before it is used. metrics.jsonl
  is cut back to the lines written when that checkpoint was saved (a torn last line is named and dropped).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import statistics
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from minidistil.io import checkpoint as ckpt
from minidistil.core.files import atomic_write, named_os_error
from minidistil.core.autograd import Tensor
from minidistil.core.optim import clip_grad_norm
from minidistil.kernels import _cuda

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to an exclusively created file
    fcntl = None

STATE_SUFFIX = ".training"   # OUT's training state lives in the sibling folder OUT.training
KEEP = 2                     # checkpoints kept: the newest and the one before it
READ_EVERY = 20              # on the GPU: steps between reads of the logged loss, terms and gradient norm (StepRows)
PARAM_GROWTH = 100.0         # a parameter beyond 100x the largest magnitude at the start (or 100) has exploded
LOGS = ("metrics.jsonl", "report.json", "loss_curve.png", "training_curve.png", "skipped.txt")
MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


class RunError(ValueError):
    """A run cannot start or go on: the folder is in use or holds another run, or the training diverged."""


class Diverged(RunError):
    """A step's loss or gradient norm is not finite, or the parameters exploded: the run stops, saves nothing,
    and keeps its last good checkpoint. The message names the step and that checkpoint."""


def jsonable(obj) -> Any:
    """A JSON-serialisable copy (dataclasses as dicts, paths and other objects as strings)."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def state_dir(out: str | os.PathLike) -> Path:
    """The training-state folder of the model folder `out`: its sibling OUT.training, beside the real folder (a
    symbolic link to OUT names the same state folder, so the same lock)."""
    out = Path(os.path.realpath(out))
    return out.parent / (out.name + STATE_SUFFIX)


@dataclass
class RunState:
    """Where a run stands; saved in every checkpoint, so a resumed run continues from it."""
    step: int = 0                      # optimizer updates done
    total_steps: int = 0               # updates planned (0: not known yet)
    seconds: float = 0.0               # training time spent before this process
    tokens: int = 0                    # real (non-padding) tokens seen
    epoch: int = 0                     # epochs done (fine-tuning)
    batch: int = 0                     # batches done in the current epoch (fine-tuning)
    best: float | None = None          # best validation score so far, at epoch best_epoch (fine-tuning)
    best_epoch: int | None = None
    bad_epochs: int = 0                # epochs since the best one (early stopping)
    history: list = field(default_factory=list)   # one entry per evaluation


# ----------------------------------------------------------------------------------------------------------------
# the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class FolderLock:
    """An exclusive lock on a folder: the file `lock` in it holds "PID HOST" of the run that has it.

    On POSIX the lock is a flock(2) on that file, which the kernel releases when the process ends in any way, so
    a lock left by a killed run is free and is taken over. Where fcntl is missing the file is created exclusively,
    and the lock of a run that died must be deleted by hand (the message says which file)."""

    def __init__(self, folder: Path, say=print, guard: Path | None = None):
        self.path = Path(folder) / "lock"
        self.say = say
        self.fd: int | None = None
        self.guard = guard              # a folder also flock()ed: its identity (st_dev, st_ino), not its name
        self.guard_fd: int | None = None

    def _lock_guard(self):
        """flock the guard folder itself: two names of one folder (a bind mount, a link) are one lock."""
        if self.guard is None or fcntl is None:
            return
        try:
            fd = os.open(self.guard, os.O_RDONLY)
        except OSError as e:
            raise named_os_error(e, self.guard) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._refuse(self._holder())
        self.guard_fd = fd

    def _holder(self, fd: int | None = None) -> str:
        try:
            if fd is not None:
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 200).decode("utf-8", "replace")
            else:
                text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text.strip()

    def _refuse(self, holder: str):
        pid, _, host = holder.partition(" ")
        who = f"PID {pid}" + (f" on {host}" if host and host != socket.gethostname() else "") if pid else \
            "another process"
        raise RunError(f"{self.path.parent} is in use by another run ({who}): wait for it to end or stop it"
                       + ("" if fcntl else f" (if it is gone, delete {self.path})"))

    def acquire(self) -> FolderLock:
        self._lock_guard()
        try:
            return self._acquire()
        except BaseException:
            self._release_guard()
            raise

    def _release_guard(self):
        if self.guard_fd is not None:
            os.close(self.guard_fd)
            self.guard_fd = None

    def _acquire(self) -> FolderLock:
        me = f"{os.getpid()} {socket.gethostname()}\n".encode()
        if fcntl is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._refuse(self._holder())
            os.write(fd, me)
            self.fd = fd
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise named_os_error(e, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._holder(fd)
                os.close(fd)
                self._refuse(holder)
            try:  # the file may have been released and deleted between our open and our flock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = self._holder(fd)
        pid = old.partition(" ")[0]
        if pid.isdigit() and int(pid) != os.getpid():
            host = old.partition(" ")[2]
            alive = host and host != socket.gethostname() or _pid_alive(int(pid))
            self.say(f"{self.path.parent}: taking over the lock left by PID {pid}, which "
                     + ("no longer holds it" if alive else "is no longer running"))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, me)
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            self._release_guard()
            return
        try:
            self.path.unlink(missing_ok=True)  # first, while locked: a waiting run then locks a fresh file
        finally:
            os.close(self.fd)
            self.fd = None
            self._release_guard()


def remove_stale_temporaries(folder: Path):
    """Delete the temporary files (.NAME.XXXX.tmp) of atomic writes cut short by a crash. Called under the lock,
    so no other run is writing there."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# what a run is: recorded in each checkpoint, compared on resume


def digest(arrays) -> str:
    """A short hash of arrays ({name: array} or a sequence of arrays): their names, dtypes, shapes and bytes. Two
    teachers, two corpora or two base models that differ anywhere give different digests."""
    h = hashlib.blake2b(digest_size=12)
    items = sorted(arrays.items()) if isinstance(arrays, dict) else enumerate(arrays)
    for name, a in items:
        a = np.ascontiguousarray(_host(a))
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(repr(a.tolist()).encode() if a.dtype.hasobject else a.data)
    return h.hexdigest()


def _same(a, b) -> bool:
    """Two recorded values agree: an input ({"name", "digest"}) by its digest alone, so a moved file still
    matches; anything else as it is."""
    if isinstance(a, dict) and isinstance(b, dict) and "digest" in a and "digest" in b:
        return a["digest"] == b["digest"]
    return a == b


def _shown(v) -> str:
    if isinstance(v, dict) and "digest" in v:
        return f"{v.get('name')} (digest {v['digest'][:8]})"
    r = json.dumps(v)
    return r if len(r) <= 60 else r[:57] + "..."


def identity_differences(recorded: dict, now: dict) -> list[str]:
    """Each entry of `now` that `recorded` (a checkpoint's) holds with another value, as "KEY: RECORDED, now NOW"."""
    return [f"{k}: {_shown(recorded[k])}, now {_shown(now[k])}" for k in now
            if k in recorded and not _same(recorded[k], now[k])]


# ----------------------------------------------------------------------------------------------------------------
# the run


def _host(a) -> np.ndarray:
    """A parameter (a Tensor, on the host or a GPU) or an array, as a host numpy array."""
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


def _max_abs(arrays: dict[str, np.ndarray]) -> tuple[float, str]:
    """(largest |value| over all arrays, the array holding it); NaN when any value is NaN."""
    worst, where = 0.0, ""
    for name, a in arrays.items():
        a = np.asarray(a)
        if not a.size:
            continue
        m = float(np.max(np.abs(a)))
        if not m <= worst:  # also true for NaN
            worst, where = m, name
            if math.isnan(m):
                break
    return worst, where


def _state_problem(c: ckpt.Checkpoint) -> str | None:
    """What is wrong with a checkpoint's run state and data position (None: they can be used)."""
    run = c.extra.get("run")
    if not isinstance(run, dict):
        return "no run state"
    fields = RunState.__dataclass_fields__
    unknown = sorted(set(run) - set(fields))
    if unknown:
        return f"unknown run state fields {unknown[:3]}"
    for name in ("step", "total_steps", "tokens", "epoch", "batch", "bad_epochs"):
        if name in run and type(run[name]) is not int:
            return f"run state {name} is {json.dumps(run[name])[:40]}, not a count"
    if not isinstance(run.get("history", []), list) or type(c.extra.get("metrics_lines", 0)) is not int:
        return "its history or log length is malformed"
    if c.data is not None and not all(type(v) is int for v in c.data.values()):
        return "its data position is not a set of counts"
    return None


class Run:
    """One training run's folders, lock, metrics log and checkpoints (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False, say=print,
                 writer: bool = True):
        if resume and overwrite:
            raise RunError("resume and overwrite: choose one (--resume continues the run, --overwrite starts again)")
        self.out = Path(out_dir)
        self.state_dir = state_dir(self.out)
        self.metrics = self.out / "metrics.jsonl"
        self.resuming, self.overwrite, self.say = resume, overwrite, say
        self.lock = FolderLock(self.state_dir, say, guard=self.out)
        self.lines = 0                      # lines in metrics.jsonl
        self.saved: tuple[int, Path] | None = None   # (step, path) of the newest good checkpoint
        self.limit = math.inf               # largest sound parameter magnitude (set by resume())
        self.writer = writer                # False: an MPI rank other than 0, which checks but writes nothing
        self.identity: dict = {}            # what this run is (see expect): recorded in each checkpoint

    # -- opening ---------------------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        if not self.writer:
            return self
        self.made_out = not self.out.exists()   # a run that fails before writing leaves no empty folder behind
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.state_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise named_os_error(e, e.filename or self.out) from None
        self.lock.acquire()
        try:
            remove_stale_temporaries(self.out)
            remove_stale_temporaries(self.state_dir)
            if not self.resuming:
                held = self._holds()
                if held and not self.overwrite:
                    raise RunError(f"{self.out} already holds {held}: continue it with --resume (resume=True), or "
                                   "start again with --overwrite (overwrite=True)")
                if self.overwrite:
                    for _, p in self.checkpoints():
                        p.unlink()
                    for name in LOGS:
                        (self.out / name).unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if not self.writer:
            return
        self.lock.release()
        for folder in [self.state_dir] + ([self.out] if getattr(self, "made_out", False) else []):
            try:
                folder.rmdir()      # only when empty: a run that never saved leaves no folder behind
            except OSError:
                pass

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of the checkpoints in the state folder, newest first."""
        found = []
        for p in self.state_dir.glob("checkpoint-*.npz"):
            digits = p.stem[len("checkpoint-"):]
            if digits.isdigit():
                found.append((int(digits), p))
        return sorted(found, reverse=True)

    def _holds(self) -> str | None:
        c = self.checkpoints()
        if c:
            return f"a run (checkpoint of step {c[0][0]} in {self.state_dir})"
        logs = [n for n in ("metrics.jsonl", "report.json") if (self.out / n).exists()]
        if logs:
            return f"a run ({' and '.join(logs)})"
        model = [n for n in MODEL_FILES if (self.out / n).exists()]
        if model:
            return f"a model ({model[0]}) that this run would replace"
        return None

    def expect(self, **identity):
        """Say what this run is (its teacher or base model and its data as {"name", "digest"}, the student's shape,
        the settings that change the updates): each checkpoint records it, and resume() refuses a checkpoint that
        recorded something else, naming each difference. Call it before resume()."""
        self.identity = jsonable(identity)

    def _check_identity(self, path: Path, c: ckpt.Checkpoint):
        recorded = c.extra.get("identity")
        if not isinstance(recorded, dict) or not self.identity:
            return                          # a checkpoint written before identities were recorded
        diffs = identity_differences(recorded, self.identity)
        if diffs:
            raise RunError(f"--resume: {path.name} was made by another run than this one ({'; '.join(diffs)}); "
                           "resume with the same inputs and settings, or start again with --overwrite")

    def resume(self, params: dict) -> ckpt.Checkpoint | None:
        """Fix the parameter limit from `params` (the model before training), then, when resuming, return the
        newest sound checkpoint (None for a new run) and cut metrics.jsonl back to its lines."""
        top, _ = _max_abs({n: _host(p) for n, p in params.items()})
        self.limit = PARAM_GROWTH * max(1.0, top)
        if not self.writer:
            return None                     # rank 0 reads the checkpoint and hands it on
        if not self.resuming:
            self._cut_metrics(0)
            return None
        found = self.checkpoints()
        for i, (_, path) in enumerate(found):
            older = (f"falling back to the one before it, {found[i + 1][1].name}" if i + 1 < len(found)
                     else "no older checkpoint is left")
            try:
                c = ckpt.load_checkpoint(path)
            except ValueError as e:
                self.say(f"{e}: {older}")
                continue
            problem = _state_problem(c)
            if problem:
                self.say(f"checkpoint: {path} is damaged ({problem}): {older}")
                continue
            worst, where = _max_abs(c.model)
            if not worst <= self.limit:
                self.say(f"checkpoint: {path} holds diverged parameters ({where}: |w| up to {worst:.3g}, the limit "
                         f"is {self.limit:.3g}): {older}")
                continue
            self._check_identity(path, c)
            self.saved = (c.step, path)
            self._cut_metrics(int(c.extra.get("metrics_lines", 0)))
            self.say(f"resumed from {path} at step {c.step}")
            return c
        if found:
            raise RunError(f"{self.state_dir}: no checkpoint can be resumed (each is named above); start again with "
                           "--overwrite (overwrite=True)")
        if any((self.out / n).exists() for n in MODEL_FILES) and not self.metrics.exists():
            raise RunError(f"{self.out} holds a model but no run to resume; give another --out, or --overwrite")
        self.say(f"nothing to resume in {self.state_dir}: starting a new run")
        self._cut_metrics(0)
        return None

    def _cut_metrics(self, n: int):
        """Keep the first n lines of metrics.jsonl (those written before the checkpoint). A line that does not
        parse (a write torn by a crash, a damaged file) is named, and only the complete lines before it are kept."""
        if n == 0 or not self.metrics.exists():
            self.metrics.unlink(missing_ok=True)
            self.lines = 0
            return
        raw = self.metrics.read_bytes().split(b"\n")
        if raw[-1] == b"":
            raw.pop()                                   # the newline that ends the last line
        good = 0
        for line in raw:
            try:
                json.loads(line)
            except ValueError:
                what = "is cut short (a torn write)" if good == len(raw) - 1 else "is damaged"
                self.say(f"{self.metrics}: line {good + 1} {what}; keeping the {min(good, n)} complete lines "
                         "before it that the checkpoint counts")
                break
            good += 1
        if good < n:
            self.say(f"{self.metrics}: holds {good} of the {n} lines written before the checkpoint; the log "
                     "continues after them")
        kept = raw[:min(good, n)]
        atomic_write(self.metrics, b"".join(x + b"\n" for x in kept))
        self.lines = len(kept)

    # -- during the run ----------------------------------------------------------------------------------------

    def log(self, row: dict):
        """Append one JSON line to metrics.jsonl."""
        if not self.writer:
            self.lines += 1
            return
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise named_os_error(e, self.metrics) from None
        self.lines += 1

    def kept(self) -> str:
        if self.saved:
            return (f"The last good checkpoint (step {self.saved[0]}) is kept at {self.saved[1]}; fix the cause "
                    "(e.g. a lower --lr) and continue with --resume.")
        return "No checkpoint had been written yet."

    def check_step(self, step: int, loss: float | None = None, grad_norm: float | None = None, detail: str = ""):
        """Stop with Diverged when the loss or the gradient norm of `step` (1-based) is not finite."""
        for what, value in (("loss", loss), ("gradient norm", grad_norm)):
            if value is not None and not math.isfinite(value):
                raise Diverged(f"step {step}: the {what} is {value}{detail}; stopping. " + self.kept())

    def check_parameters(self, step: int, arrays: dict):
        """Stop with Diverged when a parameter is not finite or beyond the limit (see the module docstring)."""
        worst, where = _max_abs({n: _host(a) for n, a in arrays.items()})
        if not worst <= self.limit:
            raise Diverged(f"step {step}: the parameters have diverged ({where}: |w| up to {worst:.3g}, more than "
                           f"{PARAM_GROWTH:g}x the largest at the start); not saved, stopping. " + self.kept())

    def save(self, step: int, *, model: dict, optimizer: dict | None, state: RunState, data: dict | None = None,
             config: Any = None) -> Path:
        """Check the parameters, write checkpoint-<step>.npz atomically, then delete all but it and the newest
        older one (a write that fails leaves the previous checkpoints as they were)."""
        arrays = {n: _host(a) for n, a in model.items()}               # device arrays come to the host here
        self.check_parameters(step, arrays)
        path = self.state_dir / f"checkpoint-{step:08d}.npz"
        if not self.writer:
            self.saved = (step, path)
            return path
        ckpt.save_checkpoint(path, step=step, model=arrays, optimizer=optimizer, data=data,
                             extra={"run": jsonable(state), "config": jsonable(config), "metrics_lines": self.lines,
                                    "identity": self.identity})
        self.saved = (step, path)
        older = [p for s, p in self.checkpoints() if s < step]
        for p in [p for s, p in self.checkpoints() if s > step] + older[KEEP - 1:]:
            p.unlink(missing_ok=True)   # newer ones belong to an abandoned continuation (a fallback on resume)
        return path

    def write_report(self, report: dict):
        if not self.writer:
            return
        atomic_write(self.out / "report.json", json.dumps(report, indent=2) + "\n")


@contextlib.contextmanager
def quiet_overflow():
    """Silence numpy's overflow / invalid-value warnings (also those of the kernels' worker threads) while a run
    trains: a diverging step is caught by Run.check_step and named, and the warnings would only come before it."""
    with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"(overflow|invalid value) encountered", RuntimeWarning)
        yield


# ----------------------------------------------------------------------------------------------------------------
# the schedule under a time budget


class BudgetPlan:
    """How many updates fit in a time budget, re-estimated after every update: the updates done plus the time
    left divided by the mean duration of the last `window` updates. The first update of each process (which
    includes Numba's compilation) is not counted."""

    def __init__(self, budget_s: float, window: int = 50):
        self.budget = float(budget_s)
        self.durations: deque[float] = deque(maxlen=window)
        self.first = True

    def record(self, seconds: float):
        if self.first:
            self.first = False
            return
        self.durations.append(seconds)

    def steps_left(self, elapsed: float) -> int | None:
        """Updates that still fit after `elapsed` seconds; None before any update has been timed."""
        if not self.durations:
            return 0 if elapsed >= self.budget else None
        return max(0, int((self.budget - elapsed) / statistics.fmean(self.durations)))


def schedule_complete(steps: int, planned: int) -> bool:
    """Whether a run took its schedule to the end: its last update was within 1% (at least one update) of the
    plan's end, so the learning rate had decayed to its last steps. A time budget is planned from estimated
    speeds, so the last plan may have held one update more than the time allowed."""
    return planned > 0 and planned - steps <= max(1, planned // 100)


def schedule_summary(steps: int, planned: int, last_lr: float | None, peak_lr: float, why: str = "") -> dict:
    """The report's account of the learning-rate schedule: complete, or cut (ended before its planned end)."""
    complete = schedule_complete(steps, planned)
    return {"steps": steps, "planned_steps": planned, "complete": complete, "ended_early": "" if complete else why,
            "last_lr": last_lr, "last_lr_share_of_peak": (last_lr / peak_lr) if last_lr is not None and peak_lr
            else None}


def schedule_text(s: dict) -> str:
    share = s.get("last_lr_share_of_peak")
    lr = f"the last update's learning rate was {100 * share:.1f}% of the peak" if share is not None else ""
    if s["complete"]:
        return f"schedule complete: {s['steps']} updates" + (f"; {lr}" if lr else "")
    why = f" ({s['ended_early']})" if s.get("ended_early") else ""
    return (f"schedule CUT: the run ended after {s['steps']} of the {s['planned_steps']} planned updates{why}"
            + (f"; {lr}" if lr else ""))


# ----------------------------------------------------------------------------------------------------------------
# curves


def plot_curves(metrics_path: Path, png: Path, terms: tuple[str, ...] = ("loss",), title: str = "training loss",
                say=print) -> str | None:
    """Draw the per-update values `terms` of metrics.jsonl (log scale when every value is positive) and, on a
    second axis, the validation score of each evaluation row; return the PNG's path (None without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say(f"matplotlib is not installed: no curves drawn to {png} (pip install matplotlib)")
        return None
    rows = [json.loads(x) for x in Path(metrics_path).read_text(encoding="utf-8").splitlines() if x.strip()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval" in r and isinstance(r["eval"].get(r["eval"].get("main")), float)]
    fig, ax = plt.subplots(figsize=(7, 4))
    positive = True
    for key in terms:
        pts = [(r["step"], r[key]) for r in steps if key in r]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], label=key, lw=1)
            positive &= all(v > 0 for _, v in pts)
    ax.set_xlabel("update")
    ax.set_ylabel("loss")
    if steps and positive:
        ax.set_yscale("log")
    if evals:
        main = evals[0]["eval"]["main"]
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in evals], [r["eval"][main] for r in evals], "o-", color="C1",
                 label=f"validation {main}")
        ax2.set_ylabel(main)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(png, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return str(png)


# ----------------------------------------------------------------------------------------------------------------
# the training loop's shared body: distill and finetune drive it (they differ in the data and the loss)


def _silent(*_args, **_kwargs):
    return None


@contextlib.contextmanager
def open_run(cfg, say, notice=None, mpi_refusal: str | None = None):
    """The run's world and folder: the MPI world (one process without MPI), then the Run on cfg.out_dir (its lock,
    resume or overwrite) with numpy's overflow warnings quiet. Yields (world, run, say): on the ranks that do not
    write, `say` and the run's notices are silent and cfg.progress is False. mpi_refusal: the error to raise when
    this run cannot be data-parallel (None: it can)."""
    from minidistil.train import parallel
    notice = say if notice is None else notice
    with parallel.abort_on_error() as world:
        if world.size > 1:
            if mpi_refusal:
                raise ValueError(mpi_refusal)
            if world.writer:
                say(world.describe())
            else:  # rank 0 prints, logs and saves
                say = notice = _silent
                cfg.progress = False
        with Run(cfg.out_dir, resume=cfg.resume, overwrite=cfg.overwrite, say=notice, writer=world.writer) as run, \
                quiet_overflow():
            yield world, run, say


def step_seed(*parts) -> int:
    """A 32-bit seed drawn from the integers `parts` (seed, step, micro-batch, ...): each step's masks and dropout
    are a function of the step alone, so a resumed run draws what the uninterrupted one drew."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def resume(run: Run, world, params: dict, opt, batches=None) -> RunState | None:
    """Continue from the run's newest sound checkpoint (rank 0 reads it; any rank count resumes any other's):
    the parameters, the optimiser and (when given) the data position are restored; returns its RunState, or None
    when the run starts fresh."""
    c = world.bcast(run.resume(params))
    if c is None:
        return None
    ckpt.load_model_arrays(params, c.model)
    opt.load_state_dict(c.optimizer)
    if batches is not None:
        batches.load_state(c.data)
    return RunState(**c.extra["run"])


def models_to(device: str, say, *models) -> None:
    """Move the models (None skipped) to `device` after any resume (checkpoints load on the host); AdamW moves its
    moments on its first step."""
    if device == "cpu":
        return
    from minidistil.core.device import describe
    for m in models:
        if m is not None:
            m.to(device)
    say(describe(device))


def update(run: Run, world, opt, step: int, max_grad_norm: float, lr: float):
    """One optimiser update from the gradients backward() accumulated: summed over the ranks (the global batch's
    gradient on every rank), clipped to max_grad_norm, checked for divergence, applied at `lr`, then zeroed.
    Returns the gradient norm before clipping: a float on the CPU (checked here: a non-finite one stops the run
    before the update); on the GPU a (1,) device array, not read: clipping runs on the device, an update whose norm
    is not finite is skipped there (parameters and moments untouched), and the check waits for StepRows' next
    read."""
    world.allreduce_grads(opt.parameters())
    norm = clip_grad_norm(opt.parameters(), max_grad_norm, sync=False)
    if not _cuda.is_device_array(norm):
        run.check_step(step + 1, grad_norm=norm)
    opt.step(lr=lr, norm=norm)
    opt.zero_grad()
    return norm


def read_value(v):
    """A logged value as a host number: a device scalar (a Tensor's or a bare 1-element device array) is copied
    back; a list (one value per micro-batch) becomes their mean, summed in order as the CPU loops sum it."""
    if isinstance(v, list):
        total = 0.0
        for x in v:
            total += read_value(x) / len(v)
        return total
    a = _device_scalar(v)
    return v if a is None else float(_cuda.to_host(a).reshape(-1)[0])


def _device_scalar(v):
    """The device array of a logged value (a device array, or a Tensor holding one); None for a host value."""
    a = v.data if isinstance(v, Tensor) else v
    return a if _cuda.is_device_array(a) else None


class StepRows:
    """The rows of metrics.jsonl, read when the loop logs. A row's values may be floats or device scalars (the
    loss, its terms and the gradient norm of a step on the GPU, left there so that the step never waits for the
    GPU). A row of host values is written at once; rows holding device values wait until `every` of them are
    pending, or flush() (before a checkpoint and at the end), and are then read (the copies and the one wait of
    the step are here), checked for divergence in order (the first non-finite loss or gradient norm stops the run
    with Diverged naming its step; an update whose gradient norm was not finite had been skipped on the device, so
    no parameter took its inf or NaN) and written. `show(row)`: called with each written row (a progress bar)."""

    def __init__(self, run: Run, every: int = 1, show=None, detail=None):
        self.run, self.every, self.show, self.detail = run, max(1, int(every)), show, detail
        self.pending: list[dict] = []

    def add(self, row: dict):
        self.pending.append(row)
        values = [x for v in row.values() for x in (v if isinstance(v, list) else [v])]
        on_device = any(_device_scalar(x) is not None for x in values)
        if not on_device or len(self.pending) >= self.every:
            self.flush()

    def flush(self):
        rows, self.pending = self.pending, []
        for row in rows:
            row = {k: read_value(v) for k, v in row.items()}
            detail = self.detail(row) if self.detail else ""
            self.run.check_step(row["step"], loss=row.get("loss"), grad_norm=row.get("grad_norm"), detail=detail)
            self.run.log(row)
            if self.show:
                self.show(row)
