"""The float32 maths of kernels/_f32math.py.

The exact vectorisable exp and erf (exp_f32, erf_f32), the default in the CPU kernels, against the correctly rounded
float32 value: np.float32 of the float64 result (numpy's exp, math.exp, math.erf and scipy's erf are accurate to
about 1 float64 ulp, 1e-16 relative).

What "exact" means here, and the bounds asserted (derived in the comment block of _f32math.py):
- every output is within 1 float32 ulp of the correctly rounded value;
- it differs from it only where the true value lies within ~1e-14 relative of a midpoint between two float32
  numbers: a fraction of inputs of order 1e-14 / 2^-24 ~ 2e-7 at most, asserted <= EXACT_MATH_MAX_MISMATCH_FRACTION
  (1e-6). Measured on the grids below (~1.7e7 exp inputs, ~1.4e7 erf inputs): 0 mismatches, so the fraction is
  below 1e-7. (The reference itself is a float64 result rounded once more, so near a tie either side may be the
  one that is off by 1 ulp; the bound covers both.)
- the edges are exact: 0, -0, denormals, +-inf, NaN, the overflow and underflow thresholds, the branch boundaries.

Also: the opt-in fast exp and erf against their stated maximum errors, and the vectorised row reductions.
"""
import math
import re

import numpy as np
import pytest
from numba import njit, prange

from minidistil.kernels import _f32math
from minidistil.kernels import gelu as KG

EPS32 = float(np.finfo(np.float32).eps)


@njit(cache=True, parallel=True)
def _exp_all(x, y):
    for i in prange(x.size):
        y[i] = _f32math.exp_f32(x[i])


@njit(cache=True, parallel=True)
def _erf_all(x, y):
    for i in prange(x.size):
        y[i] = _f32math.erf_f32(x[i])


@njit(cache=False)
def _exp_serial(x, y):      # a plain loop, for reading its LLVM IR (not cached: inspect_llvm needs the module)
    for i in range(x.size):
        y[i] = _f32math.exp_f32(x[i])


@njit(cache=False)
def _erf_serial(x, y):
    for i in range(x.size):
        y[i] = _f32math.erf_f32(x[i])


def _run(kernel, x):
    y = np.empty_like(x)
    kernel(x, y)
    assert y.dtype == np.float32
    return y


def _ordered(a):
    """float32 -> int64 on a line where adjacent floats differ by 1 (+0 and -0 both map to 0)."""
    i = a.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _compare(got, want, what):
    """Assert <= 1 ulp everywhere and return the number of inputs that differ from the correctly rounded value."""
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN where the reference has none (or not)"
    fin = ~np.isnan(want)
    ulps = np.abs(_ordered(got[fin]) - _ordered(want[fin]))
    worst = int(np.argmax(ulps)) if ulps.size else 0
    assert ulps.max(initial=0) <= 1, (f"{what}: {int(ulps.max())} ulp at x index {worst} "
                                      f"(got {got[fin][worst]!r}, want {want[fin][worst]!r})")
    return int(np.count_nonzero(ulps))


def _bit_patterns(rng, lo_bits, hi_bits, n):
    """n float32s drawn uniformly over the BIT PATTERNS in [lo_bits, hi_bits): every binade gets its share, so tiny
    numbers and denormals are as well represented as large ones."""
    return rng.integers(lo_bits, hi_bits, n, dtype=np.int64).astype(np.uint32).view(np.float32)


# ---- exp ---------------------------------------------------------------------------------------------------------

EXP_OVERFLOW = np.float32(88.72284)   # the largest float32 whose exp is finite in float32 is 88.72283...
EXP_EDGES = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1e-8, -1e-8, 1.0, -1.0,
                      0.34657359, -0.34657359,                       # +-ln2/2, the reduction's edge
                      88.72283, 88.72284, 88.7229, 89.0, 100.0, 709.0, 710.0, 3.4028235e38,
                      -87.33654, -87.3366, -100.0, -103.27893, -103.97208, -103.9721, -104.0, -110.0, -708.0,
                      -746.0, -3.4028235e38, np.inf, -np.inf, np.nan], np.float32)


def _edges_and_neighbours(edges):
    with np.errstate(over="ignore"):                                    # nextafter(max, inf) = inf is intended
        return [np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(-np.inf)), edges]


def _exp_reference(x):
    with np.errstate(over="ignore"):
        return np.exp(x.astype(np.float64)).astype(np.float32)     # overflow to inf is the right float32 answer


def test_exp_f32_is_correctly_rounded_on_dense_grids(rng):
    x = np.concatenate([
        np.linspace(-104.5, 89.5, 1 << 22, dtype=np.float32),          # the whole range where exp is neither 0 nor inf
        np.linspace(-1.0, 1.0, 1 << 22, dtype=np.float32),             # where softmax's exps live, densely
        (np.uint32(0x3F800000) + np.arange(1 << 22, dtype=np.uint32)).view(np.float32),  # every float in [1, 1.5)
        _bit_patterns(rng, 0, 0x42D00000, 1 << 21),                    # positive bit patterns up to 104
        -_bit_patterns(rng, 0, 0x42D00000, 1 << 21),                   # and their negatives
        *_edges_and_neighbours(EXP_EDGES),
    ]).astype(np.float32)
    got = _run(_exp_all, x)
    mismatches = _compare(got, _exp_reference(x), "exp_f32")
    assert mismatches <= _f32math.EXACT_MATH_MAX_MISMATCH_FRACTION * x.size, f"{mismatches} of {x.size} differ"


def test_exp_f32_edges_are_exact():
    got = _run(_exp_all, EXP_EDGES)
    want = _exp_reference(EXP_EDGES)
    np.testing.assert_array_equal(got, want)                            # NaN compares equal here
    # the float32 boundaries themselves: overflow starts above 88.72284, the smallest denormal 1e-45 = exp(-103.28)
    assert np.isinf(_run(_exp_all, np.array([EXP_OVERFLOW], np.float32))[0])
    assert np.isfinite(_run(_exp_all, np.array([np.nextafter(EXP_OVERFLOW, np.float32(0))], np.float32))[0])
    tiny = _run(_exp_all, np.array([-103.0, -104.0, -np.inf], np.float32))
    assert tiny[0] > 0 and tiny[1] == 0 and tiny[2] == 0
    # against math.exp directly on a spread of points (the same reference through another library)
    x = np.linspace(-103.9, 88.7, 10_001).astype(np.float32)
    np.testing.assert_array_equal(_run(_exp_all, x), np.array([math.exp(v) for v in x.astype(float)], np.float32))


# ---- erf ---------------------------------------------------------------------------------------------------------

ERF_EDGES = np.array([0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1e-20, -1e-20, 0.5, -0.5,
                      1.0, -1.0,
                      3.9, 3.92, 3.925, -3.925, 3.93, -3.92, 4.0, -4.0,  # erf rounds to 1 from ~3.92; the +-1 clamp
                      10.0, -10.0, 3.4028235e38, -3.4028235e38, np.inf, -np.inf, np.nan], np.float32)


def _erf_reference(x):
    from scipy.special import erf
    return erf(x.astype(np.float64)).astype(np.float32)


def test_erf_f32_is_correctly_rounded_on_dense_grids(rng):
    x = np.concatenate([
        np.linspace(-4.5, 4.5, 1 << 22, dtype=np.float32),
        np.linspace(0.9, 1.1, 1 << 20, dtype=np.float32),              # around the split, densely
        (np.uint32(0x3F800000) + np.arange(1 << 22, dtype=np.uint32)).view(np.float32),  # every float in [1, 1.5)
        _bit_patterns(rng, 0, 0x40900000, 1 << 21),                    # positive bit patterns up to 4.5
        -_bit_patterns(rng, 0, 0x40900000, 1 << 21),
        *_edges_and_neighbours(ERF_EDGES),
    ]).astype(np.float32)
    got = _run(_erf_all, x)
    mismatches = _compare(got, _erf_reference(x), "erf_f32")
    assert mismatches <= _f32math.EXACT_MATH_MAX_MISMATCH_FRACTION * x.size, f"{mismatches} of {x.size} differ"
    np.testing.assert_array_equal(_run(_erf_all, -x), -got)           # odd, exactly


def test_erf_f32_edges_are_exact():
    got = _run(_erf_all, ERF_EDGES)
    np.testing.assert_array_equal(got, _erf_reference(ERF_EDGES))
    assert np.signbit(got[1]) and not np.signbit(got[0])               # erf(-0) = -0
    x = np.linspace(-4.2, 4.2, 10_001).astype(np.float32)
    np.testing.assert_array_equal(_run(_erf_all, x), np.array([math.erf(v) for v in x.astype(float)], np.float32))


def test_erf_rational_coefficients_meet_their_error_bound():
    # The stored literals come from erf_rational_coefficients(), an iterated least-squares fit whose last bits (and,
    # through its conditioning, whole digits of individual coefficients) depend on the LAPACK/BLAS kernel that runs
    # it. What erf_f32 relies on is the property, not the bits: x P(t) / Q(t) approximates erf(x) on [0, 3.925]
    # within relative error ERF_RATIONAL_MAX_REL_ERR (5e-15, against 1.2e-7 for float32's eps), and Q has no zero
    # there (the division never meets one). Both the stored coefficients and a fresh fit on this machine must meet
    # it, on a grid ~25 times denser than the fit's nodes and reaching the ends of the range.
    x = np.concatenate([np.linspace(1e-8, _f32math._ERF_CLAMP, 200_001), [1e-300, 1e-20, 1e-4]])
    t = x * x * _f32math._ERF_T_SCALE - 1.0
    exact = np.array([math.erf(v) for v in x])
    fresh = _f32math.erf_rational_coefficients()
    for p, q in ((_f32math._ERF_P, _f32math._ERF_Q), fresh):
        assert (len(p), len(q)) == (15, 14)
        qt = np.polynomial.polynomial.polyval(t, q)
        assert qt.min() > 0.1
        y = x * np.polynomial.polynomial.polyval(t, p) / qt
        assert np.abs(y / exact - 1).max() < _f32math.ERF_RATIONAL_MAX_REL_ERR


# ---- they vectorise ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [_exp_serial, _erf_serial], ids=["exp_f32", "erf_f32"])
def test_loops_over_them_vectorise_and_call_no_libm(kernel):
    # the point of these functions: LLVM turns the loop into vector instructions (<N x double> in its IR, on any
    # architecture with SIMD) and nothing calls expf/erff/exp/erf
    x = np.linspace(-3, 3, 64).astype(np.float32)
    kernel(x, np.empty_like(x))
    ir = kernel.inspect_llvm(kernel.signatures[0])
    assert re.search(r"<\d+ x double>", ir), "the loop did not vectorise"
    assert not re.search(r"call [^\n]*@(expf|erff|exp|erf|llvm\.exp\.)", ir), "a libm call is left in the loop"


# ---- the kernels use them: GELU is the correctly rounded float32 formula -----------------------------------------


def test_gelu_cpu_default_is_the_float32_formula_with_correctly_rounded_erf(rng):
    # y = 0.5 h (1 + erf(h / sqrt 2)) evaluated in float32, in the kernel's order, with the correctly rounded erf:
    # the default CPU kernel must reproduce it bit for bit, up to the tie fraction above
    x = (rng.standard_normal((64, 3072)) * 3).astype(np.float32)
    u = x * KG.INV_SQRT2
    want = KG.HALF * x * (KG.ONE + _erf_reference(u))
    got, _ = KG.gelu_forward_cpu(x, fast=False)
    diff = np.count_nonzero(got != want)
    assert diff <= _f32math.EXACT_MATH_MAX_MISMATCH_FRACTION * x.size, f"{diff} of {x.size} differ"


# ---- opt-in fast math: the stated maximum errors, measured on dense grids ---------------------------------------

@njit(cache=True, parallel=True)
def _exp_fast_all(x, y):
    for i in prange(x.size):
        y[i] = _f32math.exp_fast(x[i])


@njit(cache=True, parallel=True)
def _erf_fast_all(x, y):
    for i in prange(x.size):
        y[i] = _f32math.erf_fast(x[i])


def test_exp_fast_relative_error_is_within_the_stated_bound():
    # every float32 spacing matters near 0 and at the ends: 4M points over the whole range plus [-1, 1] densely
    x = np.concatenate([np.linspace(-87.3, 88.3, 4_000_001), np.linspace(-1, 1, 1_000_001)]).astype(np.float32)
    y = np.empty_like(x)
    _exp_fast_all(x, y)
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(y - exact) / exact
    assert y.dtype == np.float32
    assert rel.max() <= _f32math.EXP_FAST_MAX_REL_ERR, f"max relative error {rel.max():.3e}"
    # below the smallest normal it returns exactly 0 (softmax's filled scores), and exp(0) is 1
    lo = np.array([-3.4e38, -1000.0, -87.5, 0.0], np.float32)
    out = np.empty_like(lo)
    _exp_fast_all(lo, out)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_erf_fast_absolute_error_is_within_the_stated_bound():
    from scipy.special import erf
    x = np.concatenate([np.linspace(-10, 10, 4_000_001), np.linspace(-0.6, 0.6, 1_000_001)]).astype(np.float32)
    y = np.empty_like(x)
    _erf_fast_all(x, y)
    err = np.abs(y - erf(x.astype(np.float64)))
    assert err.max() <= _f32math.ERF_FAST_MAX_ABS_ERR, f"max absolute error {err.max():.3e}"
    neg = np.empty_like(x)
    _erf_fast_all(-x, neg)
    np.testing.assert_array_equal(neg, -y)      # odd
    # near 0 the Maclaurin branch keeps the RELATIVE error small too (|x| < 0.5)
    small = (np.abs(x) > 1e-30) & (np.abs(x) < 0.5)
    rel = err[small] / np.abs(erf(x[small].astype(np.float64)))
    assert rel.max() <= 8 * EPS32, f"max relative error near 0: {rel.max():.3e}"


# ---- vectorised row reductions (row_sum, row_dot, row_max) --------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 31, 128, 30522])
def test_row_reductions(rng, n):
    a = (rng.standard_normal(n) * 10).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    # reassociated float32 sums: any order of n adds errs by at most (n - 1) eps sum|terms| (first-order bound)
    eps = float(np.finfo(np.float32).eps)
    s = _f32math.row_sum(a)
    assert float(np.float32(s)) == s                           # a float32 result (numba returns a Python float)
    assert abs(float(_f32math.row_sum(a)) - a64.sum()) <= max(n - 1, 0) * eps * np.abs(a64).sum() + 1e-30
    assert abs(float(_f32math.row_dot(a, b)) - a64 @ b64) <= n * eps * np.abs(a64 * b64).sum() + 1e-30
    # the maximum is exact whatever the order; -inf for an empty row
    assert _f32math.row_max(a) == (a.max() if n else -np.inf)
    if n >= 9:
        for pos in (0, n // 2, n - 1):                           # the maximum anywhere, in any lane or the tail
            c = a.copy()
            c[pos] = 1e30
            assert _f32math.row_max(c) == np.float32(1e30)
        c = a.copy()
        c[n // 3] = np.nan                                       # NaN is skipped by the compares ...
        assert _f32math.row_max(c) == np.nanmax(c)
        assert np.isnan(_f32math.row_sum(c))                      # ... and propagates through a sum
        c = np.full(n, -np.inf, np.float32)
        assert _f32math.row_max(c) == -np.inf
        c[5] = np.inf
        assert _f32math.row_max(c) == np.inf and np.isnan(_f32math.row_sum(c))   # inf + -inf
        c[c == -np.inf] = 0.0
        assert _f32math.row_sum(c) == np.inf
