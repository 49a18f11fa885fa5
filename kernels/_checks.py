"""Shared checks for the kernel files: input checks, tolerances, finite differences, validation and benchmarks.

Nothing here computes an op (the float32 maths the kernels share is in _f32math.py). Every kernel file uses these so
that
- bad input raises a ValueError naming the argument and what was expected (never a Numba typing dump);
- tolerances are derived from float32's epsilon and the length of the reduction, in one place;
- `python -m minidistil.kernels.<op>` prints the same validation and benchmark lines for every op and exits
  non-zero when any version disagrees with the NumPy reference.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from . import _cuda  # (never imports numba.cuda itself)

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-07, the spacing of float32 numbers near 1.0


# ----------------------------------------------------------------------------------------------------------------
# input checks


def _describe(a) -> str:
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    return f"{type(a).__name__} with shape {shape} and dtype {dtype}"


def check_array(name: str, a, *, dtype=np.float32, ndim: int | Sequence[int] | None = None,
                shape: Sequence[int | None] | None = None, contiguous: bool = True):
    """Check one kernel argument and return it unchanged.

    dtype:  required dtype (np.float32 by default; a tuple allows several; None skips the check)
    ndim:   required rank (an int or a tuple of allowed ranks)
    shape:  required shape, None entries are free (checked only when given)
    Works on numpy arrays and on numba.cuda device arrays (which have .shape, .dtype and .flags).
    """
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ValueError(f"{name}: expected an array, got {type(a).__name__}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if np.dtype(a.dtype) not in [np.dtype(d) for d in allowed]:
            want = " or ".join(np.dtype(d).name for d in allowed)
            raise ValueError(f"{name}: expected dtype {want}, got {np.dtype(a.dtype).name} (shape {tuple(a.shape)})")
    if ndim is not None:
        allowed_nd = ndim if isinstance(ndim, tuple) else (ndim,)
        if len(a.shape) not in allowed_nd:
            want = " or ".join(str(n) for n in allowed_nd)
            raise ValueError(f"{name}: expected a {want}-d array, got shape {tuple(a.shape)}")
    if shape is not None:
        if len(a.shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(a.shape)}")
    if contiguous:
        flags = getattr(a, "flags", None)
        if flags is not None and not flags["C_CONTIGUOUS"]:
            raise ValueError(f"{name}: expected a C-contiguous array (use np.ascontiguousarray), got strides "
                             f"{getattr(a, 'strides', '?')} for shape {tuple(a.shape)}")
    return a


def check_same_shape(name_a: str, a, name_b: str, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}")


def check_ids(name: str, ids, upper: int, *, ignore: int | None = None):
    """Integer ids must lie in [0, upper) (or equal `ignore`). Names the first bad id and where it is."""
    if not np.issubdtype(np.dtype(ids.dtype), np.integer):
        raise ValueError(f"{name}: expected an integer array, got dtype {np.dtype(ids.dtype).name}")
    a = np.asarray(ids)
    bad = (a < 0) | (a >= upper)
    if ignore is not None:
        bad &= a != ignore
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        extra = f" or {ignore}" if ignore is not None else ""
        raise ValueError(f"{name}: id {int(a[pos])} at position {pos} is out of range [0, {upper}){extra}")
    return ids


def check_row_mask(name: str, mask, n_rows: int) -> np.ndarray:
    """A loss's row selection: None (every row counts) or an (n_rows,) bool or integer array (nonzero = counts).

    Returns a host bool array of shape (n_rows,); a numba.cuda device array is copied back (n_rows values).
    """
    if mask is None:
        return np.ones(n_rows, dtype=np.bool_)
    m = _cuda.to_host(mask) if _cuda.is_device_array(mask) else mask
    if not hasattr(m, "dtype") or not (np.dtype(m.dtype) == np.bool_ or np.issubdtype(np.dtype(m.dtype), np.integer)):
        raise ValueError(f"{name}: expected None or a bool/integer array of shape ({n_rows},), got {_describe(m)}")
    check_array(name, m, dtype=None, ndim=1, shape=(n_rows,), contiguous=False)
    return np.asarray(m) != 0


def check_device_row_mask(name: str, mask, n_rows: int):
    """check_row_mask for a numba.cuda device array: its dtype and shape are checked, and it is returned as it is
    (the kernels read nonzero = counts); its values are not copied back."""
    dtype = np.dtype(mask.dtype)
    if not (dtype == np.bool_ or np.issubdtype(dtype, np.integer)) or tuple(mask.shape) != (n_rows,):
        raise ValueError(f"{name}: expected None or a bool/integer array of shape ({n_rows},), got a device array "
                         f"of dtype {dtype} and shape {tuple(mask.shape)}")
    return mask


# ----------------------------------------------------------------------------------------------------------------
# tolerances


def f32_tol(reduction_length: int = 1, scale: float = 1.0, safety: float = 16.0) -> float:
    """Tolerance for comparing a float32 result with a float64-accurate reference.

    Each float32 operation rounds with relative error at most eps/2. A sum of n terms accumulated in float32 has a
    worst-case error of about n*eps*sum|terms|, but rounding errors of random sign grow like sqrt(n) in practice.
    We use  safety * eps * sqrt(n) * scale,  with `scale` the magnitude of the terms being summed (for example
    max|x| * max|w| * ... ) and safety = 16 to cover the few extra roundings per element (exp, division, erf) and
    the difference between the order of summation of BLAS and of our loops.
    """
    return safety * EPS32 * math.sqrt(max(1, reduction_length)) * scale


# ----------------------------------------------------------------------------------------------------------------
# finite differences (float64)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar function f() with respect to every element of x (changed in place
    and restored). Use float64 arrays: the truncation error is O(h^2) and the rounding error O(eps64 / h)."""
    g = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def relative_error(a, b) -> float:
    """max|a - b| / max(max|a|, max|b|, tiny): one number for a whole array."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-30)
    return float(np.abs(a - b).max(initial=0.0) / denom)


# ----------------------------------------------------------------------------------------------------------------
# comparison with a message that points at the worst element


def max_error(actual, expected):
    """(max abs error, index of it) between two arrays of the same shape."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape {a.shape} != expected {e.shape}")
    if a.size == 0:
        return 0.0, ()
    d = np.abs(a - e)
    d = np.where(np.isnan(a) != np.isnan(e), np.inf, np.nan_to_num(d, nan=0.0))
    idx = np.unravel_index(int(np.argmax(d)), d.shape)
    return float(d[idx]), tuple(int(i) for i in idx)


def assert_close(actual, expected, atol: float, rtol: float = 0.0, name: str = "output"):
    """Assert |actual - expected| <= atol + rtol*|expected| everywhere; the message names the worst element."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{name}: shape {a.shape} != expected {e.shape}")
    if not np.all(np.isfinite(a) == np.isfinite(e)):
        bad = tuple(int(i) for i in np.argwhere(np.isfinite(a) != np.isfinite(e))[0])
        raise AssertionError(f"{name}: non-finite mismatch at {bad}: got {a[bad]}, expected {e[bad]}")
    fin = np.isfinite(e)
    excess = np.where(fin, np.abs(a - e) - (atol + rtol * np.abs(e)), 0.0)
    if a.size and excess.max() > 0:
        idx = np.unravel_index(int(np.argmax(excess)), a.shape)
        raise AssertionError(
            f"{name}: max error {abs(a[idx] - e[idx]):.3e} at {tuple(int(i) for i in idx)} "
            f"(got {a[idx]:.8g}, expected {e[idx]:.8g}) exceeds atol {atol:.3e} + rtol {rtol:.3e}*|expected|")


# ----------------------------------------------------------------------------------------------------------------
# validation and benchmark lines for `python -m minidistil.kernels.<op>`


def lab_options(op: str, argv=None) -> argparse.Namespace:
    """The command line of `python -m minidistil.kernels.<op>`: --size base (DistilBERT-base sizes, the default) or
    tiny (a few rows of awkward widths: every validation in seconds, as tests/test_kernel_labs.py runs it), and
    --no-bench (validate only)."""
    ap = argparse.ArgumentParser(prog=f"python -m minidistil.kernels.{op}",
                                 description=f"Validate every version of {op} against its NumPy reference, then "
                                             "benchmark them. Exit status 1 when a validation fails.")
    ap.add_argument("--size", choices=("base", "tiny"), default="base",
                    help="base: DistilBERT-base sizes (B=8, T=128, C=768, F=3072, V=30522); tiny: a few rows")
    ap.add_argument("--no-bench", action="store_true", help="validate only")
    return ap.parse_args(argv)


class Report:
    """Collects validation results; `finish()` returns the exit status: 1 if any failed, else 0."""

    def __init__(self, op: str):
        self.op = op
        self.failures = 0
        print(f"== {op}")

    def check(self, version: str, what: str, actual, expected, atol: float, rtol: float = 0.0) -> bool:
        err, where = max_error(actual, expected)
        try:
            assert_close(actual, expected, atol, rtol, name=what)
            ok = True
        except AssertionError:
            ok = False
        self.failures += not ok
        print(f"  validate {version:<14} {what:<10} max abs err {err:.2e} at {where} "
              f"(atol {atol:.1e}, rtol {rtol:.1e})  {'ok' if ok else 'FAIL'}")
        return ok

    def bench(self, version: str, fn: Callable[[], object], *, nbytes: float = 0.0, flops: float = 0.0,
              warmup: int = 2, repeat: int = 10, sync: Callable[[], None] | None = None) -> float:
        ms = bench(fn, warmup=warmup, repeat=repeat, sync=sync)
        rate = []
        if nbytes:
            rate.append(f"{nbytes / ms / 1e6:8.2f} GB/s")
        if flops:
            rate.append(f"{flops / ms / 1e6:8.2f} GFLOP/s")
        print(f"  bench    {version:<14} {ms:9.3f} ms  " + "  ".join(rate))
        return ms

    def skip(self, version: str, why: str):
        print(f"  skip     {version:<14} {why}")

    def finish(self) -> int:
        if self.failures:
            print(f"{self.op}: {self.failures} validation(s) FAILED")
            return 1
        print(f"{self.op}: all validations passed")
        return 0


def bench(fn: Callable[[], object], warmup: int = 2, repeat: int = 10,
          sync: Callable[[], None] | None = None) -> float:
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls (JIT compilation happens there)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
