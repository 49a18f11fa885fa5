"""The grading engine: runs a student's answer file in a child process (remote.py), calls its functions inside named
cases, compares each output here with the float64 truth and turns every difference into a located error and, where
a known-wrong variant of the formula matches, a hint. The exercises themselves (their inputs, truths and variants)
live one per module beside this one; `minidistil.grading` collects them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.remote import (DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, PRINT_LIMIT, ChildFailure, StudentProcess,
                                       mirror)
from minidistil.grading.stubs import exercises_dir

FD_TOL = 1e-6  # finite differences in float64: see minidistil.grading's docstring
FLOAT64_HINT = ("float64 leaked out: the inputs are float32, so the output must be float32. Look for np.zeros / "
                "np.ones / np.full without dtype= (they default to float64), NumPy float64 scalars such as "
                "np.sqrt(2.0) or np.pi used as constants (wrap them: np.float32(...)), or end with "
                ".astype(x.dtype)")
NONFINITE_SOFTMAX_HINT = ("subtract each row's max before exp (exp(x - max(x))): exp of a large logit overflows to "
                          "inf and inf / inf is NaN")


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass
class Check:
    """One graded case: its name, whether it passed, the detail lines, the hints for a failure and where the first
    failure is (an output element such as `dx[0, 1, 4]`, or `file:line` in the student's file)."""
    name: str
    passed: bool = True
    lines: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    where: str | None = None

    def fail(self, line: str, hint: str | None = None, where: str | None = None):
        self.passed = False
        if line not in self.lines:
            self.lines.append(line)
        if hint and hint not in self.hints:
            self.hints.append(hint)
        if self.where is None:
            self.where = where

    def record(self) -> dict:
        """The check as one JSON-ready object (`minidistil grade --json` prints one per line)."""
        return {"name": self.name, "passed": self.passed, "error": None if self.passed else "; ".join(self.lines),
                "where": self.where, "hint": "; ".join(self.hints) or None}


@dataclass
class GradeReport:
    """The checks of one answer file. Points: the exercise's `points` shared equally by its checks (a file that
    does not import, or is not implemented yet, has one check worth them all), so every submission of an exercise
    has the same maximum."""
    exercise: str
    path: str
    checks: list[Check] = field(default_factory=list)
    not_implemented: bool = False
    max_points: float = 10.0
    printed: int = 0                # bytes the answer printed (discarded: they never reach the grader's output)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def check_points(self) -> float:
        """What one check is worth."""
        return self.max_points / max(len(self.checks), 1)

    @property
    def points(self) -> float:
        return round(self.check_points() * sum(c.passed for c in self.checks), 4)

    @property
    def hints(self) -> list[str]:
        return [h for c in self.checks for h in c.hints]

    def text(self) -> str:
        out = [f"grading {self.exercise}: {self.path}"]
        for c in self.checks:
            out.append(f"  {'ok  ' if c.passed else 'FAIL'}  {c.name}")
            out += [f"        {line}" for line in c.lines]
            out += [f"        HINT: {h}" for h in c.hints]
        if self.printed:
            out.append(f"  (your code printed {self.printed} bytes; the grader does not show them)")
        n_ok = sum(c.passed for c in self.checks)
        verdict = "PASSED" if self.passed else "FAILED"
        out.append(f"{self.exercise}: {n_ok} of {len(self.checks)} checks passed, {self.points:g} of "
                   f"{self.max_points:g} points: {verdict}")
        return "\n".join(out)


class NotImplementedYet(Exception):
    """The student's function still raises NotImplementedError: grading stops with one helpful check."""


class CaseOver(Exception):
    """A failure that makes the rest of this case meaningless (an exception, a wrong shape)."""


# ----------------------------------------------------------------------------------------------------------------
# loading the student's file


def load_answer(path) -> object:
    """Import a Python file by its path as a fresh private module (never added to sys.modules for good), in THIS
    process: for reading an answer interactively; grading never uses it (grade_file runs the answer in a child)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (give the path of your answer, e.g. "
                                f"tutorials/exercises/gelu_backward.py)")
    name = f"_minidistil_answer_{abs(hash((str(path.resolve()), os.getpid(), id(path))))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def student_frame(tb, path: str) -> tuple[str, str | None]:
    """(' (your file, line N: code)', 'path:N') for the deepest traceback frame inside the student's file, or
    ('', None) when the error happened elsewhere. An exception raised in the student's process carries its frames
    in remote.raise_remote's local `remote_frames`, found here by walking the traceback."""
    frames = []
    for summary, (frame, _) in zip(traceback.extract_tb(tb), traceback.walk_tb(tb)):
        frames.append((summary.filename, summary.lineno, summary.line))
        if frame.f_code.co_name == "raise_remote":
            frames += frame.f_locals.get("remote_frames") or []
    found = "", None
    for filename, lineno, line in frames:
        if os.path.abspath(filename) == os.path.abspath(path):
            found = f" (your file, line {lineno}: {line})", f"{path}:{lineno}"
    return found


def _at(what: str, idx) -> str:
    """`dx[0, 1, 4]`: an element of an output, for Check.where."""
    return f"{what}[{', '.join(str(i) for i in idx)}]"


# ----------------------------------------------------------------------------------------------------------------
# the grading session: calls into the student's module and comparisons with hints


class Session:
    def __init__(self, report: GradeReport, module, exercise: Exercise):
        self.report = report
        self.module = module
        self.exercise = exercise
        self.check: Check | None = None

    @contextlib.contextmanager
    def case(self, name: str):
        self.check = Check(name)
        self.report.checks.append(self.check)
        try:
            yield self.check
        except CaseOver:
            pass
        except ChildFailure as e:   # the student's process timed out or ended while the case read from it
            self.check.fail(e.line, e.hint, where=self.report.path)

    def call(self, fname: str, *args, raises: dict[str, Callable[[], object]] | None = None, **kwargs):
        """Call the student's function in its process (self.module is the proxy of remote.py); exceptions, time-outs
        and exits become a failed check (with a hint when one is known), and so does a change of an input in place
        (unless the exercise's `in_place` names it; with in_place None, a function returning None may change its
        inputs: they are its outputs). `raises`: known-wrong variants (hint -> function computing that wrong
        answer on these inputs); an exception of the student's that one of them raises too (same class, same
        message, such as a matmul whose shapes do not chain) gets that variant's hint, not a generic one."""
        try:
            fn = getattr(self.module, fname, None)
        except Exception as e:  # noqa: BLE001 (ChildFailure, or an exception of a module-level __getattr__)
            self.raised(f"reading {fname}", e)
        if not callable(fn):
            self.check.fail(f"your file has no function `{fname}`",
                            f"keep the stub's name and signature: def {fname}(...)", where=self.report.path)
            raise CaseOver
        process = getattr(self.module, "_process", None)
        try:
            if process is not None:
                process.mirror = False
            got = fn(*args, **kwargs)
        except NotImplementedError as e:
            raise NotImplementedYet(fname, student_frame(e.__traceback__, self.report.path)[1]) from None
        except Exception as e:  # noqa: BLE001 (any error of the student's code is a failed check)
            self.raised(f"{fname} raised", e, raises)
        finally:
            if process is not None:
                process.mirror = True
        allowed = self.exercise.in_place
        for name, sent, now in getattr(process, "last_changed", []):
            if (allowed is None and got is None) or (allowed is not None and name in allowed):
                mirror(sent, now)   # an update in place the exercise asks for: the grader's array shows it
                continue
            self.check.fail(f"your function changed its input `{name}` in place", _in_place_hint(name), where=name)
        return got

    def raised(self, what: str, e: Exception, variants: dict[str, Callable[[], object]] | None = None):
        """Fail the case for an exception of the student's code, pointing at its line in their file. The hint: the
        one of the known-wrong variant that raises the same exception (only when exactly one does: two variants
        raising the same error cannot be told apart), else the exercise's hint for the exception's text."""
        if isinstance(e, ChildFailure):
            self.check.fail(e.line, e.hint, where=self.report.path)
            raise CaseOver from None
        text, where = student_frame(e.__traceback__, self.report.path)
        same = []
        for hint, variant in (variants or {}).items():
            try:
                variant()
            except Exception as v:  # noqa: BLE001 (the variant's own error, compared with the student's)
                if type(v).__name__ == type(e).__name__ and str(v) == str(e):
                    same.append(hint)
        hint = same[0] if len(same) == 1 else None if same else self.exercise.hint_for_exception(e)
        self.check.fail(f"{what} {type(e).__name__}: {e}{text}", hint, where=where)
        raise CaseOver from None

    def unpack(self, got, names: tuple[str, ...]):
        """A function that must return a tuple of len(names) values."""
        if not isinstance(got, (tuple, list)) or len(got) != len(names):
            desc = f"a {type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            self.check.fail(f"expected a tuple ({', '.join(names)}), got {desc}",
                            f"return all {len(names)} values: return {', '.join(names)}", where="return value")
            raise CaseOver
        return tuple(got)

    def expect_array(self, what: str, got, expected, atol: float, rtol: float = 0.0, *,
                     dtype=np.float32, variants: dict[str, Callable[[], np.ndarray]] | None = None,
                     otherwise: str | None = None, nonfinite: str | None = None) -> bool:
        """Compare one output array with the float64 truth; on failure name the worst element and try the
        known-wrong variants (hint text -> function computing that wrong answer)."""
        c = self.check
        if not isinstance(got, np.ndarray):
            kind = type(got).__name__
            c.fail(f"{what}: expected a numpy array of shape {expected.shape}, got {kind}",
                   "return NumPy arrays (np.asarray(...) if you built a list)" if kind != "NoneType" else
                   f"the function returned None: did you forget `return {what}`?", where=what)
            return False
        if got.shape != expected.shape:
            # a known-wrong variant of the student's shape (x^T dy for dy^T x) that the values match names the slip
            matched = [] if np.ndim(atol) else _variant_matches(got, variants, atol, rtol)
            if matched:
                c.fail(f"{what}: shape {got.shape}, expected {expected.shape}", where=what)
                _add_closest(c, matched, None)
                return False
            hint = None
            if got.ndim == expected.ndim and sorted(got.shape) == sorted(expected.shape):
                hint = (f"{what} has the right dimensions in the wrong order: a transposed matrix or swapped axes "
                        "somewhere (check each matmul's operands against the shape comments)")
            elif got.size == expected.size:
                hint = f"{what} has the right number of elements: reshape it to {expected.shape}"
            elif got.ndim < expected.ndim or got.size < expected.size:
                hint = "a sum over the wrong axis (or a missing keepdims=True) collapses a dimension"
            c.fail(f"{what}: shape {got.shape}, expected {expected.shape}", hint, where=what)
            return False
        ok = True
        if dtype is not None and got.dtype != np.dtype(dtype):
            ok = False
            if got.dtype == np.float64 and np.dtype(dtype) == np.float32:
                c.fail(f"{what}: dtype float64, expected float32 (float64 leaking out)", FLOAT64_HINT, where=what)
            else:
                c.fail(f"{what}: dtype {got.dtype}, expected {np.dtype(dtype).name}",
                       f"return {np.dtype(dtype).name} arrays (.astype(np.{np.dtype(dtype).name}))", where=what)
        g = got.astype(np.float64)
        e = np.asarray(expected, dtype=np.float64)
        atol = np.broadcast_to(np.asarray(atol, dtype=np.float64), g.shape)   # a number, or one per element
        bad_nan = ~np.isfinite(g) & np.isfinite(e)
        if bad_nan.any():
            idx = tuple(int(i) for i in np.argwhere(bad_nan)[0])
            c.fail(f"{what}: non-finite value {g[idx]} at index {idx}, expected {e[idx]:.6g} "
                   f"({int(bad_nan.sum())} non-finite entries)", nonfinite or self.exercise.nonfinite_hint,
                   where=_at(what, idx))
            return False
        err, idx = _worst(g, e, atol, rtol)
        if err is None:
            return ok
        tol = atol[idx] + rtol * abs(e[idx])
        c.fail(f"{what}: largest error {abs(g[idx] - e[idx]):.3e} at index {idx}: got {g[idx]:.8g}, expected "
               f"{e[idx]:.8g} (tolerance {tol:.2e}; {int(_over(g, e, atol, rtol).sum())} of {g.size} entries "
               "are off)", where=_at(what, idx))
        matched = []
        for hint, variant in (variants or {}).items():
            try:
                wrong = np.asarray(variant(), dtype=np.float64)
            except Exception:  # noqa: BLE001 (a variant that does not apply to this input)
                continue
            # a match: within 4x the tolerance of the variant, and 10x closer to it than to the truth
            if wrong.shape == g.shape and _worst(g, wrong, 4 * atol, 4 * rtol)[0] is None \
                    and np.abs(g - wrong).max() < 0.1 * np.abs(g - e).max():
                matched.append((float(np.abs(g - wrong).max()), hint))
        _add_closest(c, matched, otherwise)
        return False

    def expect_scalar(self, what: str, got, expected: float, atol: float, *,
                      variants: dict[str, Callable[[], float]] | None = None, otherwise: str | None = None,
                      nonfinite: str | None = None) -> bool:
        c = self.check
        if isinstance(got, np.ndarray) and got.size == 1:
            got = got.reshape(())[()]
        if not isinstance(got, (int, float, np.floating, np.integer)) or isinstance(got, bool):
            c.fail(f"{what}: expected a number (a Python float), got {type(got).__name__}"
                   + (f" with shape {got.shape}" if isinstance(got, np.ndarray) else ""),
                   "a loss is one number: the MEAN over the counted rows, returned as float(...)", where=what)
            return False
        g = float(got)
        if not math.isfinite(g) and math.isfinite(expected):
            c.fail(f"{what}: got {g}, expected {expected:.8g}", nonfinite or self.exercise.nonfinite_hint,
                   where=what)
            return False
        if abs(g - expected) <= atol:
            return True
        c.fail(f"{what}: got {g:.8g}, expected {expected:.8g}: error {abs(g - expected):.3e} "
               f"(tolerance {atol:.2e})", where=what)
        matched = []
        for hint, variant in (variants or {}).items():
            try:
                wrong = float(variant())
            except Exception:  # noqa: BLE001
                continue
            if abs(g - wrong) <= 4 * atol + 1e-6 * abs(wrong) and abs(g - wrong) < 0.1 * abs(g - expected):
                matched.append((abs(g - wrong), hint))
        _add_closest(c, matched, otherwise)
        return False

    def expect_unchanged(self, name: str, before: np.ndarray, after: np.ndarray):
        if not np.array_equal(before, after, equal_nan=True):
            self.check.fail(f"your function changed its input `{name}` in place", _in_place_hint(name), where=name)

    def finite_difference(self, what: str, analytic, loss: Callable[[], float], x64: np.ndarray):
        """Compare the student's gradient (computed on float64 inputs) with central differences of the scalar
        loss() with respect to x64 (the reference forward in float64, so the truth is the maths)."""
        c = self.check
        if not isinstance(analytic, np.ndarray) or analytic.shape != x64.shape:
            c.fail(f"{what}: with float64 inputs your function returned "
                   f"{type(analytic).__name__} {getattr(analytic, 'shape', '')}, expected shape {x64.shape}",
                   where=what)
            return
        numeric = _checks.numerical_gradient(loss, x64)
        atol = rtol = FD_TOL
        if analytic.dtype != np.float64:
            # float32 output from float64 inputs: only float32 accuracy can be asked of it
            atol = rtol = _checks.f32_tol(x64.shape[-1], scale=1 + float(np.abs(numeric).max()))
            c.lines.append(f"note: {what} came back {analytic.dtype} for float64 inputs; follow the input's dtype "
                           "(x.dtype) to get the full float64 finite-difference check")
        err, idx = _worst(analytic.astype(np.float64), numeric, atol, rtol)
        if err is not None:
            c.fail(f"{what}: differs from finite differences of the forward by {err:.3e} at index {idx}: got "
                   f"{float(analytic[idx]):.8g}, finite differences give {numeric[idx]:.8g} (tolerance "
                   f"{atol + rtol * abs(numeric[idx]):.1e})", where=_at(what, idx))


def _add_closest(c: Check, matched: list[tuple[float, str]], otherwise: str | None):
    """Add the hints of the known-wrong variants the answer matched, keeping only the closest (and any within 10x
    of it): on an input where two variants nearly coincide (a padding row where xhat = 0), the farther one is
    another mistake, not this one. With no match, the `otherwise` hint."""
    if not matched:
        if otherwise:
            c.hints.append(otherwise)
        return
    best = min(d for d, _ in matched)
    for d, hint in matched:
        if d <= 10 * best + 1e-300 and hint not in c.hints:
            c.hints.append(hint)


def _variant_matches(got: np.ndarray, variants, atol: float, rtol: float) -> list[tuple[float, str]]:
    """(distance, hint) of the known-wrong variants with the shape of `got` that it matches within 4x the
    tolerance: for an output of the wrong shape, where there is no truth of that shape to be closer than."""
    g = got.astype(np.float64)
    matched = []
    for hint, variant in (variants or {}).items():
        try:
            wrong = np.asarray(variant(), dtype=np.float64)
        except Exception:  # noqa: BLE001 (a variant that does not apply to this input)
            continue
        if wrong.shape == g.shape and _worst(g, wrong, 4 * atol, 4 * rtol)[0] is None:
            matched.append((float(np.abs(g - wrong).max(initial=0.0)), hint))
    return matched


def _in_place_hint(name: str) -> str:
    return (f"work on new arrays (e.g. {name} = {name} * ... instead of {name} *= ..., or {name}.copy() first): "
            f"the caller still needs its input `{name}`")


def _over(g, e, atol, rtol):
    return np.abs(g - e) > atol + rtol * np.abs(e)


def _worst(g, e, atol, rtol):
    """(error, index) of the element exceeding atol + rtol*|e| by the most, or (None, None) if none does."""
    g = np.asarray(g, dtype=np.float64)
    e = np.asarray(e, dtype=np.float64)
    both_inf = np.isinf(g) & np.isinf(e) & (np.sign(g) == np.sign(e))
    d = np.where(both_inf, 0.0, np.abs(g - e))
    d = np.where(np.isnan(d), np.inf, d)
    excess = d - (atol + rtol * np.where(np.isfinite(e), np.abs(e), 0.0))
    if g.size == 0 or not (excess > 0).any():
        return None, None
    idx = np.unravel_index(int(np.argmax(excess)), g.shape)
    return float(d[idx]), tuple(int(i) for i in idx)


# ----------------------------------------------------------------------------------------------------------------
# an exercise: its name, the functions the student writes, and the run that grades them


@dataclass
class Exercise:
    name: str
    title: str
    functions: tuple[str, ...]
    run: Callable[[Session], None]
    nonfinite_hint: str | None = None
    exception_hints: tuple[tuple[str, str], ...] = ()   # (text in the exception message, hint)
    in_place: tuple[str, ...] | None = None     # inputs the functions update in place (None: those returning None)
    points: float = 10.0                        # the exercise's total, shared equally by its checks

    def hint_for_exception(self, e: Exception) -> str | None:
        text = f"{type(e).__name__}: {e}"
        for needle, hint in self.exception_hints + GENERIC_EXCEPTION_HINTS:
            if needle in text:
                return hint
        return None

    @property
    def stub(self) -> Path:
        """The untouched stub of this exercise (inside the installed package)."""
        return exercises_dir() / f"{self.name}.py"


GENERIC_EXCEPTION_HINTS = (
    ("operands could not be broadcast", "two arrays of incompatible shapes meet: a row statistic needs "
     "keepdims=True (or [:, None]) to broadcast against the (N, C) rows"),
    ("matmul: Input operand", "matrix shapes do not chain: check which operand needs a transpose "
     "(.transpose(...) or .swapaxes(-1, -2))"),
    ("NameError", "a name is undefined: did you import numpy as np (and scipy.special's erf) at the top?"),
    ("SystemExit", "your code raised SystemExit (sys.exit(), exit() or quit()): a function returns its result, it "
     "never ends the program"),
    ("MemoryError", "your code ran out of memory (the grader's limit): look for an array or list that grows in a "
     "loop, or a broadcast that builds a huge array"),
    ("KeyboardInterrupt", "your code raised KeyboardInterrupt: remove it, a function returns its result"),
)


def f32(*arrays):
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)


def f64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)



# ----------------------------------------------------------------------------------------------------------------
# grading one file


def grade_file(ex: Exercise, path, *, timeout: float = DEFAULT_TIMEOUT,
               memory_mb: int = DEFAULT_MEMORY_MB) -> GradeReport:
    """Grade the answer file at `path` for the exercise `ex`: the answer runs in a child process (remote.py), with
    `timeout` seconds per call and `memory_mb` of address space; the checks run here. Never raises for a student's
    mistake (only a missing file raises FileNotFoundError)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (give the path of your answer, e.g. "
                                f"my_exercises/{ex.name}.py)")
    report = GradeReport(ex.name, str(path), max_points=ex.points)
    with StudentProcess(path, timeout=timeout, memory_mb=memory_mb) as proc:
        _grade(ex, report, proc)
    report.printed = proc.printed          # counted to the end: close() waits for the reader of the child's output
    if report.printed > PRINT_LIMIT and not report.not_implemented:
        c = Check("printing stays small")
        c.fail(f"your code printed {report.printed} bytes (limit {PRINT_LIMIT}); the grader drops them",
               "remove the debug prints (a print inside a loop, or of a whole array) before you hand in",
               where=str(path))
        report.checks.append(c)
    return report


def _grade(ex: Exercise, report: GradeReport, proc: StudentProcess):
    path = report.path
    c = Check("import your file")
    try:
        first = proc.start()
    except ChildFailure as e:
        c.fail(e.line, e.hint, where=path)
        report.checks.append(c)
        return
    if not first["ok"]:
        exc = first.get("exc") if isinstance(first.get("exc"), dict) else {}
        try:
            from minidistil.grading.remote import raise_remote
            raise_remote(exc)
        except NotImplementedError:  # raised at import time: nothing to grade yet
            report.not_implemented = True
            report.checks = [Check("import your file", passed=False, where=path, lines=[
                f"not implemented yet: importing {path} raises NotImplementedError"])]
            return
        except Exception as e:  # noqa: BLE001 (a syntax error, an import error, an exit in the student's file)
            detail = f"{type(e).__name__}: {e}"
            text, where = student_frame(e.__traceback__, path)
            syntax = getattr(e, "remote_syntax", None)
            if syntax:
                detail, where = f"SyntaxError on line {syntax[0]}: {syntax[1]}", f"{path}:{syntax[0]}"
            hint = ex.hint_for_exception(e) if type(e).__name__ in ("SystemExit", "MemoryError") else None
            c.fail(f"could not import {path}: {detail}{text}", hint or "run `python " + path + "` to see the full "
                   "error", where=where or path)
            report.checks.append(c)
            return
    session = Session(report, proc.module, ex)
    try:
        ex.run(session)
    except NotImplementedYet as e:
        report.not_implemented = True
        where = e.args[1] if len(e.args) > 1 and e.args[1] else path
        report.checks = [Check(f"{e.args[0]}", passed=False, where=where, lines=[
            f"not implemented yet: `{e.args[0]}` still raises NotImplementedError"],
            hints=[f"open {path}, read the docstring (the maths, the shapes, the dtype rule) and replace "
                   f"`raise NotImplementedError` with your NumPy code; then run `minidistil grade {ex.name} "
                   f"{path}` again"])]
    except ChildFailure as e:   # outside any case: one more failed check, and the grading stops
        c = Check("running your code")
        c.fail(e.line, e.hint, where=path)
        report.checks.append(c)
