"""The exercise grader: `minidistil grade EXERCISE path/to/answer.py`.

A student fills in one stub of `tutorials/exercises/` (NumPy, float32 in and float32 out) and runs the grader on
it. The grader imports the file by its path (a fresh, private module each time), calls the student's functions on
random and awkward inputs (T=1, C=13, a fully padded row, repeated ids, ignored rows, large logits), and compares
every output with the NumPy reference of the matching kernel in `minidistil.kernels` run in float64, which is the
ground truth. Backward exercises are also checked against central finite differences in float64 (the maths itself,
independent of any reference). Each failed check prints what a student can act on:

    FAIL  random (2, 3, 13)
          dx: largest error 2.1e-01 at index (0, 1, 4): got 0.51, expected 0.72 (tolerance 3.5e-06)
          HINT: your dx equals dy * Phi(x): d/dx [x Phi(x)] also has the term x * phi(x) (product rule)

Hints come from comparing a wrong answer with known-wrong VARIANTS of the formula (the layer-norm backward without
its mean(dxhat * xhat) term, the softmax backward without the sum, a transposed matrix in attention, the KL loss
without T^2, AdamW with L2 instead of decoupled decay, ...): when the student's output matches a variant within the
tolerance, the grader names that mistake. A stub that still raises NotImplementedError is reported as "not
implemented yet". `grade()` returns a GradeReport; the command exits 0 only when every check passes, so a classroom
CI can run it.

Tolerances are the kernels' own derived bounds (each kernel file's `tolerances()`, built from `_checks.f32_tol`
with the reduction lengths and the data's magnitudes): a float32 answer that rounds like a careful float32 kernel
passes, anything further off fails. Finite differences use h = 1e-6 in float64 (truncation ~ h^2, rounding
~ eps64 |L| / h ~ 1e-10): they are compared with atol = rtol = 1e-6, a 1000x margin over that error.

API: `grade(exercise, path) -> GradeReport`, `EXERCISES` (name -> Exercise), `list_exercises()`.
CLI: `add_command(subparsers, name, help)` (the registry hook of minidistil/cli.py), `add_cli(subparsers)`,
`run_cli(args) -> int`, and `python -m minidistil.grading EXERCISE FILE` / `--list`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import math
import os
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

import numpy as np

from minidistil.kernels import _checks

EXERCISES_DIR = Path(__file__).resolve().parents[1] / "tutorials" / "exercises"
FD_TOL = 1e-6  # finite differences in float64: see the module docstring
FLOAT64_HINT = ("float64 leaked out: the inputs are float32, so the output must be float32. Look for np.zeros / "
                "np.ones / np.full without dtype= (they default to float64), NumPy float64 scalars such as "
                "np.sqrt(2.0) or np.pi used as constants (wrap them: np.float32(...)), or end with "
                ".astype(x.dtype)")


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass
class Check:
    """One graded case: its name, whether it passed, the detail lines and the hints for a failure."""
    name: str
    passed: bool = True
    lines: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    def fail(self, line: str, hint: str | None = None):
        self.passed = False
        self.lines.append(line)
        if hint and hint not in self.hints:
            self.hints.append(hint)


@dataclass
class GradeReport:
    exercise: str
    path: str
    checks: list[Check] = field(default_factory=list)
    not_implemented: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def hints(self) -> list[str]:
        return [h for c in self.checks for h in c.hints]

    def text(self) -> str:
        out = [f"grading {self.exercise}: {self.path}"]
        for c in self.checks:
            out.append(f"  {'ok  ' if c.passed else 'FAIL'}  {c.name}")
            out += [f"        {line}" for line in c.lines]
            out += [f"        HINT: {h}" for h in c.hints]
        n_ok = sum(c.passed for c in self.checks)
        verdict = "PASSED" if self.passed else "FAILED"
        out.append(f"{self.exercise}: {n_ok} of {len(self.checks)} checks passed: {verdict}")
        return "\n".join(out)


class _NotImplemented(Exception):
    """The student's function still raises NotImplementedError: grading stops with one helpful check."""


class _CaseOver(Exception):
    """A failure that makes the rest of this case meaningless (an exception, a wrong shape)."""


# ----------------------------------------------------------------------------------------------------------------
# loading the student's file


def load_answer(path) -> object:
    """Import a Python file by its path as a fresh private module (never added to sys.modules for good)."""
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


def _student_frame(tb, path: str) -> str:
    """'line N: code' of the deepest traceback frame inside the student's file, or ''."""
    found = ""
    for frame in traceback.extract_tb(tb):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            found = f" (your file, line {frame.lineno}: {frame.line})"
    return found


# ----------------------------------------------------------------------------------------------------------------
# the grading session: calls into the student's module and comparisons with hints


class _Session:
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
        except _CaseOver:
            pass

    def call(self, fname: str, *args, **kwargs):
        """Call the student's function; exceptions become a failed check (with a hint when one is known)."""
        fn = getattr(self.module, fname, None)
        if not callable(fn):
            self.check.fail(f"your file has no function `{fname}`",
                            f"keep the stub's name and signature: def {fname}(...)")
            raise _CaseOver
        try:
            # a student's debug prints and NumPy's overflow warnings do not drown the report (the checks say it)
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                return fn(*args, **kwargs)
        except NotImplementedError:
            raise _NotImplemented(fname) from None
        except Exception as e:  # any error of the student's code is a failed check
            where = _student_frame(e.__traceback__, self.report.path)
            msg = f"{fname} raised {type(e).__name__}: {e}{where}"
            self.check.fail(msg, self.exercise.hint_for_exception(e))
            raise _CaseOver from None

    def unpack(self, got, names: tuple[str, ...]):
        """A function that must return a tuple of len(names) values."""
        if not isinstance(got, (tuple, list)) or len(got) != len(names):
            desc = f"a {type(got).__name__}" + (f" of length {len(got)}" if isinstance(got, (tuple, list)) else "")
            self.check.fail(f"expected a tuple ({', '.join(names)}), got {desc}",
                            f"return all {len(names)} values: return {', '.join(names)}")
            raise _CaseOver
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
                   f"the function returned None: did you forget `return {what}`?")
            return False
        if got.shape != expected.shape:
            hint = None
            if got.ndim == expected.ndim and sorted(got.shape) == sorted(expected.shape):
                hint = (f"{what} has the right dimensions in the wrong order: a transposed matrix or swapped axes "
                        "somewhere (check each matmul's operands against the shape comments)")
            elif got.size == expected.size:
                hint = f"{what} has the right number of elements: reshape it to {expected.shape}"
            elif got.ndim < expected.ndim or got.size < expected.size:
                hint = "a sum over the wrong axis (or a missing keepdims=True) collapses a dimension"
            c.fail(f"{what}: shape {got.shape}, expected {expected.shape}", hint)
            return False
        ok = True
        if dtype is not None and got.dtype != np.dtype(dtype):
            ok = False
            if got.dtype == np.float64 and np.dtype(dtype) == np.float32:
                c.fail(f"{what}: dtype float64, expected float32 (float64 leaking out)", FLOAT64_HINT)
            else:
                c.fail(f"{what}: dtype {got.dtype}, expected {np.dtype(dtype).name}",
                       f"return {np.dtype(dtype).name} arrays (.astype(np.{np.dtype(dtype).name}))")
        g = got.astype(np.float64)
        e = np.asarray(expected, dtype=np.float64)
        bad_nan = ~np.isfinite(g) & np.isfinite(e)
        if bad_nan.any():
            idx = tuple(int(i) for i in np.argwhere(bad_nan)[0])
            c.fail(f"{what}: non-finite value {g[idx]} at index {idx}, expected {e[idx]:.6g} "
                   f"({int(bad_nan.sum())} non-finite entries)", nonfinite or self.exercise.nonfinite_hint)
            return False
        err, idx = _worst(g, e, atol, rtol)
        if err is None:
            return ok
        tol = atol + rtol * abs(e[idx])
        c.fail(f"{what}: largest error {abs(g[idx] - e[idx]):.3e} at index {idx}: got {g[idx]:.8g}, expected "
               f"{e[idx]:.8g} (tolerance {tol:.2e}; {int(_over(g, e, atol, rtol).sum())} of {g.size} entries "
               "are off)")
        matched = False
        for hint, variant in (variants or {}).items():
            try:
                wrong = np.asarray(variant(), dtype=np.float64)
            except Exception:  # a variant that does not apply to this input
                continue
            # a match: within 4x the tolerance of the variant, and 10x closer to it than to the truth
            if wrong.shape == g.shape and _worst(g, wrong, 4 * atol, 4 * rtol)[0] is None \
                    and np.abs(g - wrong).max() < 0.1 * np.abs(g - e).max():
                c.hints.append(hint)
                matched = True
        if not matched and otherwise:
            c.hints.append(otherwise)
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
                   "a loss is one number: the MEAN over the counted rows, returned as float(...)")
            return False
        g = float(got)
        if not math.isfinite(g) and math.isfinite(expected):
            c.fail(f"{what}: got {g}, expected {expected:.8g}", nonfinite or self.exercise.nonfinite_hint)
            return False
        if abs(g - expected) <= atol:
            return True
        c.fail(f"{what}: got {g:.8g}, expected {expected:.8g}: error {abs(g - expected):.3e} "
               f"(tolerance {atol:.2e})")
        matched = False
        for hint, variant in (variants or {}).items():
            try:
                wrong = float(variant())
            except Exception:
                continue
            if abs(g - wrong) <= 4 * atol + 1e-6 * abs(wrong) and abs(g - wrong) < 0.1 * abs(g - expected):
                c.hints.append(hint)
                matched = True
        if not matched and otherwise:
            c.hints.append(otherwise)
        return False

    def expect_unchanged(self, name: str, before: np.ndarray, after: np.ndarray):
        if not np.array_equal(before, after, equal_nan=True):
            self.check.fail(f"your function changed its input `{name}` in place",
                            f"work on new arrays (e.g. {name} = {name} - ... instead of {name} -= ...): "
                            "the caller still needs its input")

    def finite_difference(self, what: str, analytic, f64: Callable[[], float], x64: np.ndarray):
        """Compare the student's gradient (computed on float64 inputs) with central differences of the scalar
        f64() with respect to x64 (the reference forward in float64, so the truth is the maths)."""
        c = self.check
        if not isinstance(analytic, np.ndarray) or analytic.shape != x64.shape:
            c.fail(f"{what}: with float64 inputs your function returned "
                   f"{type(analytic).__name__} {getattr(analytic, 'shape', '')}, expected shape {x64.shape}")
            return
        numeric = _checks.numerical_gradient(f64, x64)
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
                   f"{atol + rtol * abs(numeric[idx]):.1e})")


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
# exercises


@dataclass
class Exercise:
    name: str
    title: str
    functions: tuple[str, ...]
    run: Callable[[_Session], None]
    nonfinite_hint: str | None = None
    exception_hints: tuple[tuple[str, str], ...] = ()   # (text in the exception message, hint)

    def hint_for_exception(self, e: Exception) -> str | None:
        text = f"{type(e).__name__}: {e}"
        for needle, hint in self.exception_hints + _GENERIC_EXCEPTION_HINTS:
            if needle in text:
                return hint
        return None

    @property
    def stub(self) -> Path:
        return EXERCISES_DIR / f"{self.name}.py"


_GENERIC_EXCEPTION_HINTS = (
    ("operands could not be broadcast", "two arrays of incompatible shapes meet: a row statistic needs "
     "keepdims=True (or [:, None]) to broadcast against the (N, C) rows"),
    ("matmul: Input operand", "matrix shapes do not chain: check which operand needs a transpose "
     "(.transpose(...) or .swapaxes(-1, -2))"),
    ("NameError", "a name is undefined: did you import numpy as np (and scipy.special's erf) at the top?"),
)


def _f32(*arrays):
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)


def _f64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


# -- GELU backward -----------------------------------------------------------------------------------------------


def _run_gelu_backward(s: _Session):
    from minidistil.kernels import gelu as K
    from scipy.special import erf
    r = np.random.default_rng(0)
    cases = [
        ("random (2, 3, 13)", r.standard_normal((2, 3, 13)) * 2),
        ("T=1 (1, 1, 13)", r.standard_normal((1, 1, 13))),
        ("large |x| and zero: x in {-10, -3, 0, 3, 10}", np.array([[-10.0, -3.0, 0.0, 3.0, 10.0]])),
        ("1-d input (7,)", r.standard_normal(7) * 3),
    ]
    for label, x in cases:
        x32, = _f32(x)
        dy32, = _f32(r.standard_normal(x.shape))
        x64, dy64 = _f64(x32, dy32)
        expect = K.gelu_backward_ref(dy64, K.GeluCache(x64))
        # elementwise: erf, exp and ~6 roundings per element, |dx| <= 1.13 |dy|: f32_tol(1) relative and absolute
        atol = _checks.f32_tol(1, scale=float(np.abs(dy64).max()) * 1.2)
        cdf = 0.5 * (1 + erf(x64 / np.sqrt(2)))
        pdf = np.exp(-0.5 * x64 ** 2) / np.sqrt(2 * np.pi)
        with s.case(label):
            before = x32.copy()
            dx = s.call("gelu_backward", dy32, x32)
            s.expect_unchanged("x", before, x32)
            s.expect_array("dx", dx, expect, atol, _checks.f32_tol(1), variants={
                "your dx equals dy * Phi(x): GELU is x * Phi(x), so by the product rule its derivative also has the "
                "term x * phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi)": lambda: dy64 * cdf,
                "your dx is gelu'(x) without the factor dy: the chain rule multiplies by the incoming gradient":
                    lambda: cdf + x64 * pdf,
                "your dx is dy * gelu(x), the forward: the backward multiplies dy by the DERIVATIVE gelu'(x)":
                    lambda: dy64 * x64 * cdf,
                "your phi(x) is missing 1/sqrt(2 pi) (the normal density is exp(-x^2/2) / sqrt(2 pi))":
                    lambda: dy64 * (cdf + x64 * np.exp(-0.5 * x64 ** 2)),
                "your phi uses exp(-x^2) instead of exp(-x^2 / 2)":
                    lambda: dy64 * (cdf + x64 * np.exp(-x64 ** 2) / np.sqrt(2 * np.pi)),
                "you differentiated the tanh approximation of GELU; BERT uses the exact erf form":
                    lambda: dy64 * _gelu_tanh_grad(x64),
            })
    x64 = np.random.default_rng(1).standard_normal((2, 5))
    dy64 = np.random.default_rng(2).standard_normal((2, 5))
    with s.case("finite differences in float64 (2, 5)"):
        dx = s.call("gelu_backward", dy64, x64.copy())
        s.finite_difference("dx", dx, lambda: float((K.gelu_forward_ref(x64)[0] * dy64).sum()), x64)


def _gelu_tanh_grad(x):
    a = np.sqrt(2 / np.pi)
    u = a * (x + 0.044715 * x ** 3)
    t = np.tanh(u)
    return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * a * (1 + 3 * 0.044715 * x ** 2)


# -- layer norm forward and backward -----------------------------------------------------------------------------


def _ln_inputs(r):
    """(label, x, w, b, eps) with the awkward cases: T=1, C=13, a padding row of zeros, a row far from mean 0."""
    C = 13
    far = r.standard_normal((1, 2, C)) + 1000.0
    pad = r.standard_normal((2, 3, C)) * 2
    pad[1, 2] = 0.0
    return [
        ("random (2, 3, 13)", r.standard_normal((2, 3, C)) * 2 + 0.5, 1e-12),
        ("T=1 (1, 1, 13)", r.standard_normal((1, 1, C)), 1e-12),
        ("a padding row of zeros, eps=1e-5", pad, 1e-5),
        ("rows with mean 1000 and std 1", far, 1e-12),
        ("C=64 (4, 64), eps=0.1", r.standard_normal((4, 64)) * 0.3, 0.1),
    ]


def _run_layernorm_forward(s: _Session):
    from minidistil.kernels import layernorm as K
    r = np.random.default_rng(0)
    for label, x, eps in _ln_inputs(r):
        C = x.shape[-1]
        x32, w32, b32 = _f32(x, 1 + 0.5 * r.standard_normal(C), 0.5 * r.standard_normal(C))
        x64, w64, b64 = _f64(x32, w32, b32)
        y64, c64 = K.layernorm_forward_ref(x64, w64, b64, eps)
        tol_y, _, _, _ = K.tolerances(x64, w64, b64, np.ones_like(x64), eps)  # derived in layernorm.tolerances
        x2 = x64.reshape(-1, C)
        mu = x2.mean(axis=1, keepdims=True)

        def y_with(var, rstd_of=lambda v: 1 / np.sqrt(v + eps), x2=x2, mu=mu, w64=w64, b64=b64, shape=x.shape):
            return (((x2 - mu) * rstd_of(var)) * w64 + b64).reshape(shape)

        var = ((x2 - mu) ** 2).mean(axis=1, keepdims=True)
        with s.case(label):
            got = s.unpack(s.call("layernorm_forward", x32, w32, b32, eps), ("y", "mean", "rstd"))
            s.expect_array("y", got[0], y64, tol_y, variants={
                "you used the unbiased variance (divide by C - 1, or ddof=1); layer norm divides by C":
                    lambda: y_with(((x2 - mu) ** 2).sum(axis=1, keepdims=True) / (C - 1)),
                "eps belongs inside the square root: rstd = 1 / sqrt(var + eps)":
                    lambda: y_with(var, lambda v: 1 / (np.sqrt(v) + eps)),
                "you multiplied by the standard deviation: rstd is 1 / sqrt(var + eps)":
                    lambda: y_with(var, lambda v: np.sqrt(v + eps)),
                "you divided by the variance, not its square root": lambda: y_with(var, lambda v: 1 / (v + eps)),
                "w and b are swapped: y = xhat * w + b":
                    lambda: ((x2 - mu) / np.sqrt(var + eps) * b64 + w64).reshape(x.shape),
            }, otherwise=("the rows far from zero mean lose precision with the one-pass variance E[x^2] - E[x]^2 "
                          "(catastrophic cancellation in float32): compute the mean first, then mean((x - mean)^2)"
                          if "1000" in label else None))
            N = x2.shape[0]
            s.expect_array("mean", got[1], c64.mean, _checks.f32_tol(C, scale=float(np.abs(x64).max())),
                           otherwise=f"mean and rstd have one value per row: shape ({N},) = x.reshape(-1, C) rows")
            s.expect_array("rstd", got[2], c64.rstd, 0.0, _checks.f32_tol(C, scale=2 + float(
                (np.abs(c64.mean) * c64.rstd).max())), variants={
                "rstd is 1 / sqrt(var + eps), not sqrt(var + eps)": lambda: np.sqrt(var[:, 0] + eps),
            })


def _run_layernorm_backward(s: _Session):
    from minidistil.kernels import layernorm as K
    r = np.random.default_rng(1)
    for label, x, eps in _ln_inputs(r):
        C = x.shape[-1]
        x32, w32, b32, dy32 = _f32(x, 1 + 0.5 * r.standard_normal(C), 0.5 * r.standard_normal(C),
                                   r.standard_normal(x.shape))
        _, c32 = K.layernorm_forward_ref(x32, w32, b32, eps)       # the student gets float32 mean and rstd
        x64, w64, b64, dy64 = _f64(x32, w32, b32, dy32)
        _, c64 = K.layernorm_forward_ref(x64, w64, b64, eps)
        dx64, dw64, db64 = K.layernorm_backward_ref(dy64, c64)
        _, tol_dx, tol_dw, tol_db = K.tolerances(x64, w64, b64, dy64, eps)  # derived in layernorm.tolerances
        x2, dy2 = x64.reshape(-1, C), dy64.reshape(-1, C)
        rstd = c64.rstd[:, None]
        xhat = (x2 - c64.mean[:, None]) * rstd
        dxhat = dy2 * w64

        def dx_with(dxh, mean_term=True, proj_term=True, scale=rstd, shape=x.shape, xhat=xhat):
            out = dxh.copy()
            if mean_term:
                out -= dxh.mean(axis=1, keepdims=True)
            if proj_term:
                out -= xhat * (dxh * xhat).mean(axis=1, keepdims=True)
            return (scale * out).reshape(shape)

        with s.case(label):
            before = [a.copy() for a in (x32, w32, c32.mean, c32.rstd)]
            got = s.unpack(s.call("layernorm_backward", dy32, x32, w32, c32.mean, c32.rstd), ("dx", "dw", "db"))
            for name, b, a in zip(("x", "w", "mean", "rstd"), before, (x32, w32, c32.mean, c32.rstd)):
                s.expect_unchanged(name, b, a)
            s.expect_array("dx", got[0], dx64, tol_dx, variants={
                "your dx is missing the term - xhat * mean(dxhat * xhat): rstd depends on x too (the variance "
                "term of the derivative)": lambda: dx_with(dxhat, proj_term=False),
                "your dx is missing the term - mean(dxhat): the mean depends on x too":
                    lambda: dx_with(dxhat, mean_term=False),
                "your dx treats mean and rstd as constants (dx = dxhat * rstd): both depend on x, which adds "
                "- mean(dxhat) and - xhat * mean(dxhat * xhat)": lambda: dx_with(dxhat, False, False),
                "you used dy where dxhat = dy * w belongs (the scale w sits between xhat and y)":
                    lambda: dx_with(dy2),
                "the bracket is multiplied by rstd once: dx = rstd * (dxhat - mean(dxhat) - xhat * "
                "mean(dxhat * xhat))": lambda: dx_with(dxhat, scale=rstd ** 2),
                "you summed over C where the formula has a MEAN (divide by C)":
                    lambda: (rstd * (dxhat - dxhat.sum(1, keepdims=True)
                                     - xhat * (dxhat * xhat).sum(1, keepdims=True))).reshape(x.shape),
            })
            s.expect_array("dw", got[1], dw64, tol_dw, variants={
                "dw = sum over rows of dy * xhat (not dy * x: the scale multiplies the NORMALISED input)":
                    lambda: (dy2 * x2).sum(axis=0),
                "dw is missing xhat: y = xhat * w + b, so dy/dw = xhat": lambda: dy2.sum(axis=0),
                "dw and db are sums over the rows (axis 0), not means": lambda: (dy2 * xhat).mean(axis=0),
            })
            s.expect_array("db", got[2], db64, tol_db, variants={
                "db is the sum of dy over the rows, not the mean": lambda: dy2.mean(axis=0),
            })
    with s.case("finite differences in float64 (3, 5), dx and dw"):
        rr = np.random.default_rng(5)
        x64, dy64 = rr.standard_normal((2, 3, 5)), rr.standard_normal((2, 3, 5))
        w64, b64 = 1 + 0.3 * np.arange(5.0), 0.1 * np.arange(5.0)
        _, c = K.layernorm_forward_ref(x64, w64, b64, 1e-5)
        got = s.unpack(s.call("layernorm_backward", dy64, x64.copy(), w64.copy(), c.mean.copy(), c.rstd.copy()),
                       ("dx", "dw", "db"))
        loss = lambda: float((K.layernorm_forward_ref(x64, w64, b64, 1e-5)[0] * dy64).sum())  # noqa: E731
        s.finite_difference("dx", got[0], loss, x64)
        s.finite_difference("dw", got[1], loss, w64)


# -- softmax backward --------------------------------------------------------------------------------------------


def _run_softmax_backward(s: _Session):
    from minidistil.kernels import softmax as K
    r = np.random.default_rng(2)
    fmin = np.finfo(np.float32).min
    masked = r.standard_normal((3, 13)) * 2
    masked[0, 5:] = fmin                                      # a partly masked row: y = 0 exactly there
    masked[1, :] = fmin                                       # a fully padded row: uniform
    cases = [
        ("random (2, 3, 13)", r.standard_normal((2, 3, 13)) * 2),
        ("T=1: rows of length 1 (4, 1)", r.standard_normal((4, 1))),
        ("masked entries and a fully padded row (3, 13)", masked),
        ("large logits (one-hot rows) (2, 13)", r.standard_normal((2, 13)) * 60),
    ]
    for label, x in cases:
        x32, dy32 = _f32(x, r.standard_normal(x.shape))
        y32, _ = K.softmax_forward_ref(x32)                       # the student gets the float32 forward's y
        x64, dy64 = _f64(x32, dy32)
        y64, c64 = K.softmax_forward_ref(x64)
        expect = K.softmax_backward_ref(dy64, c64)
        _, tol, _, _ = K.tolerances(x64, dy64)                    # derived in softmax.tolerances
        with s.case(label):
            before = y32.copy()
            dx = s.call("softmax_backward", dy32, y32)
            s.expect_unchanged("y", before, y32)
            s.expect_array("dx", dx, expect, tol, variants={
                "your dx is y * dy: the softmax Jacobian is diag(y) - y y^T, so dx = y * (dy - sum(dy * y)) "
                "(the sum over the row is missing)": lambda: y64 * dy64,
                "the row sum must weight dy by y: dx = y * (dy - sum(dy * y))":
                    lambda: y64 * (dy64 - dy64.sum(axis=-1, keepdims=True)),
                "the sum runs over the LAST axis (each row's own entries): sum(dy * y, axis=-1, keepdims=True)":
                    lambda: y64 * (dy64 - (dy64 * y64).sum(axis=0, keepdims=True)),
                "that is the log-softmax backward (dy - y * sum(dy)); softmax's is y * (dy - sum(dy * y))":
                    lambda: dy64 - y64 * dy64.sum(axis=-1, keepdims=True),
                "your dx is the Jacobian's diagonal times dy, y * (1 - y) * dy: the off-diagonal terms - y_i y_j "
                "are missing": lambda: y64 * (1 - y64) * dy64,
            })
    with s.case("finite differences in float64 (3, 6)"):
        rr = np.random.default_rng(7)
        x64, dy64 = rr.standard_normal((3, 6)), rr.standard_normal((3, 6))
        y64, _ = K.softmax_forward_ref(x64)
        dx = s.call("softmax_backward", dy64, y64.copy())
        s.finite_difference("dx", dx, lambda: float((K.softmax_forward_ref(x64)[0] * dy64).sum()), x64)


# -- attention backward ------------------------------------------------------------------------------------------


def _run_attention_backward(s: _Session):
    from minidistil.kernels import attention as K
    r = np.random.default_rng(3)
    cases = [  # (label, B, T, C, H, mask)
        ("random B=2 T=5 C=12 H=3, one padded sequence", 2, 5, 12, 3, np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])),
        ("T=1 (B=2, C=8, H=2)", 2, 1, 8, 2, np.ones((2, 1), np.int64)),
        ("C=13 H=1, a fully padded sequence", 2, 4, 13, 1, np.array([[1, 1, 0, 1], [0, 0, 0, 0]])),
        ("D=16 (B=1 T=6 C=32 H=2)", 1, 6, 32, 2, np.ones((1, 6), np.int64)),
    ]
    for label, B, T, C, H, mask in cases:
        q32, k32, v32, do32 = _f32(*(r.standard_normal((B, T, C)) for _ in range(4)))
        _, c32 = K.attention_forward_ref(q32, k32, v32, mask, H)     # the student gets float32 probs
        q64, k64, v64, do64 = _f64(q32, k32, v32, do32)
        _, c64 = K.attention_forward_ref(q64, k64, v64, mask, H)
        dq64, dk64, dv64 = K.attention_backward_ref(do64, c64)
        sp = K._split_heads
        P = c64.probs
        Q, Kh, V, dO = (sp(a, H) for a in (q64, k64, v64, do64))
        dP64 = dO @ V.transpose(0, 1, 3, 2)
        _, _, tol_dq, tol_dk, tol_dv = K.tolerances(q64, k64, v64, do64, P, dP64)  # attention.tolerances
        D = C // H
        pad = (mask == 0)[:, None, None, :]
        mg = K._merge_heads

        def grads(dP=None, sum_term=True, scale=1 / np.sqrt(D), zero_pad=True, dk_T=True, dv_T=True):
            dP = dO @ V.transpose(0, 1, 3, 2) if dP is None else dP
            dS = P * (dP - (dP * P).sum(-1, keepdims=True)) if sum_term else P * dP
            if zero_pad:
                dS = np.where(pad, 0.0, dS)
            dq = dS @ Kh * scale
            dk = (dS.transpose(0, 1, 3, 2) if dk_T else dS) @ Q * scale
            dv = (P.transpose(0, 1, 3, 2) if dv_T else P) @ dO
            return mg(dq), mg(dk), mg(dv)

        common = {
            "your dS is P * dP: the softmax backward needs the row-sum term, dS = P * (dP - rowsum(dP * P))":
                lambda i: grads(sum_term=False)[i],
            "the 1/sqrt(D) of S = Q K^T / sqrt(D) is missing from dq and dk": lambda i: grads(scale=1.0)[i],
            "you multiplied by sqrt(D) where the forward divides: dq and dk carry 1/sqrt(D)":
                lambda i: grads(scale=np.sqrt(D))[i],
            "masked keys pass no gradient: set dS[..., j] = 0 where mask[b, j] == 0 (their scores were filled "
            "with a constant)": lambda i: grads(zero_pad=False)[i],
        }
        with s.case(label):
            got = s.unpack(s.call("attention_backward", do32, q32, k32, v32, mask.copy(), c32.probs.copy(), H),
                           ("dq", "dk", "dv"))
            s.expect_array("dq", got[0], dq64, tol_dq, variants={h: _bind(f, 0)
                                                                 for h, f in common.items()})
            s.expect_array("dk", got[1], dk64, tol_dk, variants={
                **{h: _bind(f, 1) for h, f in common.items()},
                "dk needs the TRANSPOSE of dS: S = Q K^T, so dK = dS^T Q / sqrt(D)":
                    lambda: grads(dk_T=False)[1]})
            s.expect_array("dv", got[2], dv64, tol_dv, variants={
                "dv needs the TRANSPOSE of P: O = P V, so dV = P^T dO": lambda: grads(dv_T=False)[2]})
    with s.case("finite differences in float64 (B=1, T=3, C=4, H=2, last key padded)"):
        rr = np.random.default_rng(9)
        q, k, v, do = (rr.standard_normal((1, 3, 4)) for _ in range(4))
        mask = np.array([[1, 1, 0]])
        _, c = K.attention_forward_ref(q, k, v, mask, 2)
        got = s.unpack(s.call("attention_backward", do, q.copy(), k.copy(), v.copy(), mask, c.probs.copy(), 2),
                       ("dq", "dk", "dv"))
        loss = lambda: float((K.attention_forward_ref(q, k, v, mask, 2)[0] * do).sum())  # noqa: E731
        for name, g, a in zip(("dq", "dk", "dv"), got, (q, k, v)):
            s.finite_difference(name, g, loss, a)


def _bind(f, i):
    return lambda: f(i)


# -- cross-entropy with ignore_index -----------------------------------------------------------------------------


def _ce_cases(r):
    V = 11
    x = r.standard_normal((6, V)) * 2
    t = r.integers(0, V, 6)
    t_rep = np.array([3, 3, 3, 3, 3, 3])
    t_ign = t.copy()
    t_ign[[1, 4]] = -100
    return [
        ("random (6, 11), every row counts", x, t),
        ("ignore_index: rows 1 and 4 have target -100", x, t_ign),
        ("repeated target ids", x, t_rep),
        ("large logits (|x| ~ 200) with an ignored row", r.standard_normal((4, V)) * 200, np.array([2, -100, 0, 9])),
        ("every row ignored: loss 0.0, gradient 0", x[:3], np.full(3, -100)),
        ("a single row, V=1 (1, 1)", r.standard_normal((1, 1)), np.array([0])),
    ]


def _run_cross_entropy(s: _Session):
    from minidistil.kernels import cross_entropy as K
    r = np.random.default_rng(4)
    for label, x, t in _ce_cases(r):
        x32, = _f32(x)
        x64, = _f64(x32)
        t = t.astype(np.int64)
        loss64, c64 = K.cross_entropy_forward_ref(x64, t)
        g64 = K.cross_entropy_backward_ref(1.0, c64)
        N = x.shape[0]
        n = c64.n_counted
        tol_l, tol_g = K.tolerances(x32, 1.0, n)          # derived in cross_entropy.tolerances
        keep = t != -100
        lse = c64.lse
        rows = lse - x64[np.arange(N), np.where(keep, t, 0)]
        nonfinite = _N0_HINT if n == 0 else None
        with s.case(label):
            loss = s.call("cross_entropy_loss", x32, t.copy(), -100)
            s.expect_scalar("loss", loss, loss64, tol_l, nonfinite=nonfinite, variants={
                f"you divided by all N = {N} rows: the mean is over the COUNTED rows (target != ignore_index)":
                    lambda: rows[keep].sum() / N,
                "rows whose target is ignore_index (-100) must not count: skip them in the sum and the divisor":
                    lambda: rows.mean(),
                "the loss is the MEAN over the counted rows, not the sum": lambda: rows[keep].sum(),
            })
            grad = s.call("cross_entropy_grad", x32, t.copy(), -100)
            p = np.exp(x64 - lse[:, None])
            onehot = np.zeros_like(p)
            onehot[np.arange(N)[keep], t[keep]] = 1
            s.expect_array("dlogits", grad, g64, tol_g, nonfinite=nonfinite, variants={
                "rows with target -100 get a zero gradient": lambda: (p - onehot) / max(n, 1),
                f"divide by the number of counted rows n = {n}, not by all N = {N} rows":
                    lambda: np.where(keep[:, None], p - onehot, 0) / N,
                "the gradient of the MEAN has the factor 1/n (you returned the gradient of the sum)":
                    lambda: np.where(keep[:, None], p - onehot, 0),
                "dlogits = (softmax(x) - onehot(target)) / n: the - 1 at the target column is missing":
                    lambda: np.where(keep[:, None], p, 0) / max(n, 1),
                "the sign is flipped: dlogits = (softmax - onehot) / n": lambda: -g64,
            })
    with s.case("finite differences in float64 (4, 5), one ignored row"):
        rr = np.random.default_rng(10)
        x64 = rr.standard_normal((4, 5))
        t = np.array([1, -100, 4, 1])
        grad = s.call("cross_entropy_grad", x64.copy(), t, -100)
        s.finite_difference("dlogits", grad, lambda: K.cross_entropy_forward_ref(x64, t)[0], x64)


# -- the temperature-scaled KL loss ------------------------------------------------------------------------------


def _run_distill_kl(s: _Session):
    from minidistil.kernels import distill_kl as K
    r = np.random.default_rng(5)
    cases = [
        ("random (4, 9), T=2", r.standard_normal((4, 9)) * 2, r.standard_normal((4, 9)) * 2, 2.0),
        ("T=1", r.standard_normal((3, 9)), r.standard_normal((3, 9)), 1.0),
        ("T=0.5, a single row of width 13", r.standard_normal((1, 13)), r.standard_normal((1, 13)), 0.5),
        ("large logits (|x| ~ 100), T=1", r.standard_normal((3, 9)) * 100, r.standard_normal((3, 9)) * 100, 1.0),
        ("student equals teacher: loss 0", *(2 * [r.standard_normal((2, 9))]), 3.0),
    ]
    for label, st, te, T in cases:
        s32, t32 = _f32(st, te)
        s64, t64 = _f64(s32, t32)
        loss64, c64 = K.distill_kl_forward_ref(s64, t64, T)
        g64 = K.distill_kl_backward_ref(1.0, c64)
        N, V = st.shape
        tol_l, tol_g = K.tolerances(s32, t32, T, 1.0, N)        # derived in distill_kl.tolerances
        lps, _ = K._log_softmax_ref(s64 / T)
        lpt, _ = K._log_softmax_ref(t64 / T)
        ps, pt = np.exp(lps), np.exp(lpt)
        kl = (pt * (lpt - lps)).sum()                           # summed over rows, no T factor
        with s.case(label):
            loss = s.call("distill_kl_loss", s32, t32, T)
            s.expect_scalar("loss", loss, loss64, tol_l, variants={
                "the loss is multiplied by T^2 (Hinton et al.): it keeps the gradient's size independent of T":
                    lambda: kl / N,
                "multiply by T^2, not T: the softened gradients shrink like 1/T^2": lambda: T * kl / N,
                "KL(teacher || student) = sum p_t (log p_t - log p_s): you computed KL(student || teacher)":
                    lambda: T * T * (ps * (lps - lpt)).sum() / N,
                "the mean is over ROWS (batchmean): divide by N, not by N * V": lambda: T * T * kl / (N * V),
                "the loss is the mean over rows, not the sum": lambda: T * T * kl,
                "divide the logits by T before the softmax (both student and teacher)":
                    lambda: _kl_rows(s64, t64).sum() / N * T * T,
            })
            grad = s.call("distill_kl_grad", s32, t32, T)
            s.expect_array("dstudent", grad, g64, tol_g, variants={
                "with the T^2 of the loss and the 1/T of s / T the gradient is T * (p_s - p_t) / N: yours has no "
                "factor T": lambda: (ps - pt) / N,
                "chain rule through s / T: the gradient is T^2 * (1/T) * (p_s - p_t) / N = T (p_s - p_t) / N; "
                "yours has T^2": lambda: T * T * (ps - pt) / N,
                "your gradient is (p_s - p_t) / (N T), the gradient of the loss WITHOUT its T^2 factor":
                    lambda: (ps - pt) / (N * T),
                "the gradient of the mean has the factor 1/N": lambda: T * (ps - pt),
                "the sign is flipped: d loss / d s = T (p_s - p_t) / N": lambda: -g64,
            })
    with s.case("finite differences in float64 (3, 5), T=2"):
        rr = np.random.default_rng(11)
        s64, t64 = rr.standard_normal((3, 5)), rr.standard_normal((3, 5))
        grad = s.call("distill_kl_grad", s64.copy(), t64.copy(), 2.0)
        s.finite_difference("dstudent", grad, lambda: K.distill_kl_forward_ref(s64, t64, 2.0)[0], s64)


def _kl_rows(s, t):
    m_s, m_t = s.max(-1, keepdims=True), t.max(-1, keepdims=True)
    lps = s - m_s - np.log(np.exp(s - m_s).sum(-1, keepdims=True))
    lpt = t - m_t - np.log(np.exp(t - m_t).sum(-1, keepdims=True))
    return (np.exp(lpt) * (lpt - lps)).sum(-1)


# -- AdamW -------------------------------------------------------------------------------------------------------


HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


def _adamw_variant(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, bias_correction=True, l2=False,
                   decay_after=False):
    """A float64 AdamW step with one deliberate difference (for the hints)."""
    p, g, m, v = (a.astype(np.float64).copy() for a in (p, g, m, v))
    if l2:
        g = g + weight_decay * p
    elif not decay_after:
        p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = (1 - beta1 ** step, 1 - beta2 ** step) if bias_correction else (1.0, 1.0)
    p = p - lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
    if decay_after and not l2:
        p = p * (1 - lr * weight_decay)
    return p, m, v


def _run_adamw(s: _Session):
    from minidistil.kernels import adamw as K
    r = np.random.default_rng(6)
    cases = [  # (label, shape, weight_decay, step, start from zero moments)
        ("first step from zero moments (3, 13), wd=0.1", (3, 13), 0.1, 1, True),
        ("step 10 from a mid-training state (7,), wd=0.1", (7,), 0.1, 10, False),
        ("step 1000, wd=0 (2, 2, 3)", (2, 2, 3), 0.0, 1000, False),
        ("step 3, strong decay wd=1.0 (5, 4)", (5, 4), 1.0, 3, False),
    ]
    for label, shape, wd, step, zero in cases:
        p0 = r.standard_normal(shape) * 2
        g = r.standard_normal(shape) * 0.05  # gradients of the size of wd * param, so L2 and decoupled differ
        m0 = np.zeros(shape) if zero else r.standard_normal(shape) * 0.05
        v0 = np.zeros(shape) if zero else r.uniform(1e-4, 1e-2, shape)
        p32, g32, m32, v32 = _f32(p0, g, m0, v0)
        state = [a.astype(np.float64) for a in (p32, m32, v32)]
        K.adamw_step_ref(state[0], g32.astype(np.float64), state[1], state[2], weight_decay=wd, step=step, **HP)
        # as in tests/test_kernel_adamw.py: ~10 roundings of the parameter and of the update
        upd = float(np.abs(state[0] - p32 * (1 - HP["lr"] * wd)).max())
        tol_p = _checks.f32_tol(1, scale=float(np.abs(state[0]).max()) + upd)
        tol_m = _checks.f32_tol(1, scale=float(np.abs(state[1]).max()))
        tol_v = _checks.f32_tol(1, scale=float(np.abs(state[2]).max()))
        kw = dict(weight_decay=wd, step=step, **HP)
        args = (p32, g32, m32, v32)
        with s.case(label):
            sp, sg, sm, sv = (a.copy() for a in args)
            s.call("adamw_step", sp, sg, sm, sv, **kw)
            s.expect_unchanged("grad", g32, sg)
            if np.array_equal(sp, p32):
                s.check.fail("param did not change: the update must happen IN PLACE",
                             "`param = param - ...` only rebinds the local name; write param -= ... or "
                             "param[...] = ... (the same for m and v)")
                raise _CaseOver
            s.expect_array("param", sp, state[0], tol_p, variants={
                "no bias correction: divide m by (1 - beta1^step) and v by (1 - beta2^step)":
                    lambda: _adamw_variant(*args, **kw, bias_correction=False)[0],
                "that is Adam with L2 regularisation (wd * param added to the gradient); AdamW DECOUPLES the decay: "
                "param *= (1 - lr * weight_decay), outside the moments":
                    lambda: _adamw_variant(*args, **kw, l2=True)[0],
                "decay the parameter BEFORE the Adam update (torch: param *= 1 - lr * wd, then the step)":
                    lambda: _adamw_variant(*args, **kw, decay_after=True)[0],
                "the step counter is 1-based: bias corrections use 1 - beta^step with step >= 1 as given":
                    lambda: _adamw_variant(*args, **{**kw, "step": step + 1})[0],
            })
            s.expect_array("m", sm, state[1], tol_m, variants={
                "m = beta1 * m + (1 - beta1) * grad (the weights are swapped)":
                    lambda: (1 - HP["beta1"]) * m32 + HP["beta1"] * g32,
                "m holds the raw first moment; the bias correction only enters the update, never m itself":
                    lambda: state[1] / (1 - HP["beta1"] ** step)})
            s.expect_array("v", sv, state[2], tol_v, variants={
                "v = beta2 * v + (1 - beta2) * grad**2 (the square of the gradient)":
                    lambda: HP["beta2"] * v32.astype(np.float64) + (1 - HP["beta2"]) * g32,
                "v holds the raw second moment; the bias correction only enters the update":
                    lambda: state[2] / (1 - HP["beta2"] ** step)})


# -- one autograd op ---------------------------------------------------------------------------------------------


def _run_autograd(s: _Session):
    mod = s.module
    r = np.random.default_rng(7)
    a0, b0 = r.standard_normal((2, 3)), r.standard_normal((2, 3))

    def graph(build):
        """Build a graph from fresh leaves, run backward, return (a.grad, b.grad) and the forward value."""
        a, b = mod.Tensor(a0.copy()), mod.Tensor(b0.copy())
        out = build(a, b)
        out.backward()
        return a.grad, b.grad, float(np.sum(out.data))

    def fd(f):
        """Finite differences of the numpy function f(a, b) -> scalar, wrt a and b."""
        a, b = a0.copy(), b0.copy()
        return (_checks.numerical_gradient(lambda: f(a, b), a), _checks.numerical_gradient(lambda: f(a, b), b))

    for label, build, f, extra in [
        ("mul: sum(a * b)", lambda a, b: mod.sum_(mod.mul(a, b)), lambda a, b: np.sum(a * b),
         {"mul's backward is swapped: d(a*b)/da = b, so a.grad += out.grad * b.data (and b.grad gets a.data)":
          lambda: (a0, b0)}),
        ("tanh: sum(tanh(a)) + sum(b)", lambda a, b: mod.add(mod.sum_(mod.tanh(a)), mod.sum_(b)),
         lambda a, b: np.sum(np.tanh(a)) + np.sum(b),
         {"tanh' = 1 - tanh(x)^2 = 1 - out.data**2, not 1 - x**2": lambda: (1 - a0 ** 2, np.ones_like(b0)),
          "tanh' = 1 - tanh(x)^2: the square is missing": lambda: (1 - np.tanh(a0), np.ones_like(b0)),
          "multiply by out.grad (the chain rule): a.grad += (1 - out.data**2) * out.grad":
              lambda: (1 - np.tanh(a0) ** 2, np.ones_like(b0))}),
        ("a node used twice: sum(a * a) + sum(tanh(a * b))",
         lambda a, b: mod.add(mod.sum_(mod.mul(a, a)), mod.sum_(mod.tanh(mod.mul(a, b)))),
         lambda a, b: np.sum(a * a) + np.sum(np.tanh(a * b)),
         {}),
    ]:
        with s.case(label):
            for name in ("Tensor", "mul", "tanh", "add", "sum_"):
                if not hasattr(mod, name):
                    s.check.fail(f"your file has no `{name}`", "keep the stub's Tensor class and functions")
                    raise _CaseOver
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    ga, gb, value = graph(build)
            except NotImplementedError:
                raise _NotImplemented("the _backward of mul or tanh") from None
            except Exception as e:
                s.check.fail(f"building the graph or backward() raised {type(e).__name__}: {e}"
                             f"{_student_frame(e.__traceback__, s.report.path)}", s.exercise.hint_for_exception(e))
                raise _CaseOver from None
            expect_value = float(f(a0, b0))
            if abs(value - expect_value) > FD_TOL * (1 + abs(expect_value)):
                s.check.fail(f"forward value {value:.8g}, expected {expect_value:.8g}",
                             "the forward lines of the stub compute the values: keep them as given")
            na, nb = fd(f)
            va = {h: (lambda v=v: v()[0]) for h, v in extra.items()}
            vb = {h: (lambda v=v: v()[1]) for h, v in extra.items()}
            # the graph with a reused node is the only one where overwriting .grad shows: when the simple graphs
            # passed and this one fails, that is the mistake
            otherwise = None
            if "twice" in label and all(c.passed for c in s.report.checks[:-1]):
                otherwise = ("a tensor used twice must ACCUMULATE its gradients: write a.grad += ..., never "
                             "a.grad = ... (the simple graphs pass, the one reusing `a` fails)")
            # finite differences in float64 (see FD_TOL): the truth for both leaves
            s.expect_array("a.grad", ga, na, FD_TOL, FD_TOL, dtype=np.float64, variants=va, otherwise=otherwise)
            s.expect_array("b.grad", gb, nb, FD_TOL, FD_TOL, dtype=np.float64, variants=vb, otherwise=otherwise)


# ----------------------------------------------------------------------------------------------------------------
# the registry

_N0_HINT = ("when every row is ignored n = 0: return a loss of 0.0 and a zero gradient instead of dividing "
            "by n")
_NONFINITE_SOFTMAX = ("subtract each row's max before exp (exp(x - max(x))): exp of a large logit overflows to inf "
                      "and inf / inf is NaN")

EXERCISES: dict[str, Exercise] = {e.name: e for e in [
    Exercise("gelu_backward", "GELU backward: dx = dy * (Phi(x) + x phi(x))", ("gelu_backward",),
             _run_gelu_backward, exception_hints=(
                 ("module 'numpy' has no attribute 'erf'", "NumPy has no erf: from scipy.special import erf"),)),
    Exercise("layernorm_forward", "layer norm forward, returning (y, mean, rstd)", ("layernorm_forward",),
             _run_layernorm_forward, nonfinite_hint="a row of zeros has var = 0: eps inside the sqrt keeps "
             "1 / sqrt(var + eps) finite"),
    Exercise("layernorm_backward", "layer norm backward: (dx, dw, db)", ("layernorm_backward",),
             _run_layernorm_backward),
    Exercise("softmax_backward", "softmax backward: dx = y * (dy - sum(dy * y))", ("softmax_backward",),
             _run_softmax_backward),
    Exercise("attention_backward", "masked multi-head attention backward: (dq, dk, dv)", ("attention_backward",),
             _run_attention_backward, nonfinite_hint="a fully padded sequence has uniform probabilities: keep "
             "every value finite (no -inf, no division by a zero sum)"),
    Exercise("cross_entropy", "cross-entropy with ignore_index: the loss and its gradient",
             ("cross_entropy_loss", "cross_entropy_grad"), _run_cross_entropy,
             nonfinite_hint=_NONFINITE_SOFTMAX,
             exception_hints=(("-100 is out of bounds", "rows whose target is ignore_index (-100) must be skipped: "
                                                        "x[i, -100] is not a class"),
                              ("division by zero", "when every row is ignored n = 0: return 0.0 (and a zero "
                                                   "gradient) instead of dividing"))),
    Exercise("distill_kl", "temperature-scaled KL distillation loss and its gradient",
             ("distill_kl_loss", "distill_kl_grad"), _run_distill_kl, nonfinite_hint=_NONFINITE_SOFTMAX
             + " (log p = y - logsumexp(y), never log(softmax(y)), which gives log(0) = -inf)"),
    Exercise("adamw", "one AdamW step in place (decoupled weight decay, bias correction)", ("adamw_step",),
             _run_adamw, nonfinite_hint="bias correction divides by 1 - beta^step: step starts at 1, never 0"),
    Exercise("autograd_ops", "autograd: the backward closures of mul and tanh in a tiny Tensor class",
             ("mul", "tanh"), _run_autograd),
]}


def list_exercises() -> list[tuple[str, str]]:
    return [(e.name, e.title) for e in EXERCISES.values()]


def grade(exercise: str, path) -> GradeReport:
    """Grade the answer file at `path` for `exercise`; never raises for a student's mistake."""
    if exercise not in EXERCISES:
        close = [n for n in EXERCISES if exercise.replace("-", "_") in n or n in exercise]
        raise ValueError(f"exercise: unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}"
                         + (f" (did you mean {close[0]}?)" if close else ""))
    ex = EXERCISES[exercise]
    report = GradeReport(exercise, str(path))
    try:
        module = load_answer(path)
    except FileNotFoundError:
        raise
    except NotImplementedError:  # raised at import time: nothing to grade yet
        report.not_implemented = True
        report.checks = [Check("import your file", passed=False, lines=[
            f"not implemented yet: importing {path} raises NotImplementedError"])]
        return report
    except Exception as e:  # a syntax error or an import error in the student's file
        c = Check("import your file")
        detail = f"{type(e).__name__}: {e}"
        if isinstance(e, SyntaxError):
            detail = f"SyntaxError on line {e.lineno}: {e.msg}"
        c.fail(f"could not import {path}: {detail}{_student_frame(e.__traceback__, str(path))}",
               "run `python " + str(path) + "` to see the full error")
        report.checks.append(c)
        return report
    session = _Session(report, module, ex)
    try:
        ex.run(session)
    except _NotImplemented as e:
        report.not_implemented = True
        report.checks = [Check(f"{e.args[0]}", passed=False, lines=[
            f"not implemented yet: `{e.args[0]}` still raises NotImplementedError"],
            hints=[f"open {path}, read the docstring (the maths, the shapes, the dtype rule) and replace "
                   f"`raise NotImplementedError` with your NumPy code; then run `minidistil grade {exercise} "
                   f"{path}` again"])]
    return report


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_command(sub, name: str = "grade", help: str = "grade an exercise answer (tutorials/exercises)"):
    """The hook of minidistil/cli.py's COMMANDS registry: adds the `grade` sub-parser."""
    p = sub.add_parser(name, help=help, description="Grade your answer to an exercise of tutorials/exercises: "
                       "checks shapes, dtypes, values against the kernels' references and finite differences, and "
                       "prints hints. Exit status 0 only when every check passes.")
    p.add_argument("exercise", nargs="?", help="exercise name (see --list), or the answer file if it is named "
                   "after its exercise")
    p.add_argument("path", nargs="?", help="your answer file (default: tutorials/exercises/EXERCISE.py)")
    p.add_argument("--list", action="store_true", help="list the exercises and exit")
    p.set_defaults(run=run_cli)
    return p


def add_cli(subparsers):
    return add_command(subparsers)


def run_cli(args) -> int:
    if args.list or not args.exercise:
        width = max(len(n) for n in EXERCISES)
        for name, title in list_exercises():
            print(f"{name:<{width}}  {title}")
        if not args.list:
            print("usage: minidistil grade EXERCISE [path/to/answer.py]")
            return 2
        return 0
    exercise, path = args.exercise, args.path
    if path is None and exercise.endswith(".py"):
        exercise, path = Path(exercise).stem, exercise
    if path is None:
        path = EXERCISES[exercise].stub if exercise in EXERCISES else exercise
    report = grade(exercise, path)
    print(report.text())
    return 0 if report.passed else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidistil.grading")
    sub = parser.add_subparsers(dest="command")
    add_command(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["grade", *argv])
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"minidistil grade: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
