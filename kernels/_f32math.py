"""float32 maths shared by the Numba CPU kernels: exp and erf written so that loops over them vectorise, and row
reductions (sum, dot, max) that vectorise.

Numba >= 0.62 compiles math.exp / math.erf into calls to libm's scalar expf/erff, and an IEEE-ordered float32 sum
into a chain of dependent adds: a loop over either runs one element at a time. The functions here compute with
+, *, compare/select and bit casts only, so a prange loop over them runs 16 float32 lanes per AVX-512 instruction.

    exp_f32, erf_f32        the DEFAULT: evaluated in float64 and rounded once, so the correctly rounded float32
                            value except within ~1e-14 of a rounding tie (then 1 ulp off); tests/test_f32math.py
    exp_fast, erf_fast      opt-in fast math (fast=True or MINIDISTIL_FAST_MATH=1, read at every call): float32
                            throughout, fewer operations, with stated maximum errors EXP_FAST_MAX_REL_ERR and
                            ERF_FAST_MAX_ABS_ERR (measured over dense grids in tests/test_f32math.py)
    row_sum, row_dot        float32 sums in a reassociated (vectorised) order
    row_max                 exact maximum, eight running maxima instead of one chain

Caution when editing: Numba's on-disk cache (cache=True) of a kernel that inlines these functions is keyed on the
kernel's own file, not on this one, so delete kernels/__pycache__/*.nbi and *.nbc after a change here.
"""
from __future__ import annotations

import math
import os

import numpy as np
from numba import njit
from numba import types
from numba.extending import intrinsic


def fast_math_default() -> bool:
    """True when MINIDISTIL_FAST_MATH=1 asks the kernels for their fast-math versions (read at every call)."""
    return os.environ.get("MINIDISTIL_FAST_MATH", "0") == "1"


# ----------------------------------------------------------------------------------------------------------------
# opt-in fast math: float32 exp and erf (see gelu.py and attention.py for the kernel versions that use them)
#     exp_fast: relative error <= EXP_FAST_MAX_REL_ERR over [-87.3, 88.3]; exactly 0 below EXP_FAST_LO
#     erf_fast: absolute error <= ERF_FAST_MAX_ABS_ERR over the whole real line

EXP_FAST_MAX_REL_ERR = 2.5e-7   # about 2 ulp: Taylor truncation 5e-9 plus the float32 roundings of Horner's rule
ERF_FAST_MAX_ABS_ERR = 4.0e-7   # Abramowitz & Stegun 7.1.26's 1.5e-7 plus float32 roundings (measured 3.5e-7)
EXP_FAST_LO = np.float32(-87.33)   # exp(x) below this is under float32's smallest normal: return 0
_EXP_HI = np.float32(88.37)        # clamp so that 2^n stays finite (n <= 127)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)          # 355/512: n * _LN2_HI is exact for |n| < 2^15 (Cody & Waite)
_LN2_LO = np.float32(-2.12194440e-4)       # ln 2 - _LN2_HI
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FHALF = np.float32(0.5)
# 1/k! for k = 2..7 (Taylor series of exp; on |r| <= ln(2)/2 the first dropped term r^8/8! is < 5e-9)
_INV_FACT = tuple(np.float32(1.0 / math.factorial(k)) for k in range(2, 8))
_C2, _C3, _C4, _C5, _C6, _C7 = _INV_FACT
# Abramowitz & Stegun (1964) formula 7.1.26: erf(x) = 1 - t (a1 + t (a2 + ...)) exp(-x^2), t = 1 / (1 + p x), x >= 0
_AS_P = np.float32(0.3275911)
_AS_A1 = np.float32(0.254829592)
_AS_A2 = np.float32(-0.284496736)
_AS_A3 = np.float32(1.421413741)
_AS_A4 = np.float32(-1.453152027)
_AS_A5 = np.float32(1.061405429)
# 2/sqrt(pi) (-1)^k / (k! (2k + 1)), k = 0..6: the Maclaurin coefficients of erf for x^1, x^3, ..., x^13
_T1, _T3, _T5, _T7, _T9, _T11, _T13 = (
    np.float32(2.0 / math.sqrt(math.pi) * (-1) ** k / (math.factorial(k) * (2 * k + 1))) for k in range(7))


@intrinsic
def _int32_bits_as_float32(typingctx, i):
    """Reinterpret the low 32 bits of an integer as a float32 (LLVM trunc + bitcast: free, and it vectorises).
    Numba widens int32 arithmetic to int64, so any integer type is accepted and truncated to its low 32 bits."""
    from llvmlite import ir

    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if i.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(i), codegen


@njit(cache=True, inline="always")
def exp_fast(x):
    """float32 exp(x), written to vectorise: x = n ln2 + r with |r| <= ln2/2, exp(r) by its Taylor series to r^7,
    2^n built from its bits. Relative error <= EXP_FAST_MAX_REL_ERR; 0 for x < EXP_FAST_LO (and NaN stays NaN
    only through the compare, so do not feed it NaN)."""
    xc = min(max(x, EXP_FAST_LO), _EXP_HI)
    n = np.floor(xc * _LOG2E + _FHALF)                      # nearest integer to x / ln 2
    r = (xc - n * _LN2_HI) - n * _LN2_LO                    # x - n ln 2 in two steps (the first is exact)
    p = _F1 + r * (_F1 + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
    scale = _int32_bits_as_float32((np.int32(n) + 127) << 23)  # 2^n: biased exponent bits
    return p * scale if x >= EXP_FAST_LO else _F0


@njit(cache=True, inline="always")
def erf_fast(x):
    """float32 erf(x) by Abramowitz & Stegun 7.1.26 with exp_fast: absolute error <= ERF_FAST_MAX_ABS_ERR."""
    a = abs(x)
    t = _F1 / (_F1 + _AS_P * a)
    poly = t * (_AS_A1 + t * (_AS_A2 + t * (_AS_A3 + t * (_AS_A4 + t * _AS_A5))))
    y = _F1 - poly * exp_fast(-a * a)
    # near 0 the formula is 1 - (a number near 1): its absolute error is fine but its relative error is not, so
    # |x| < 0.5 uses the Maclaurin series 2/sqrt(pi) sum_k (-1)^k x^(2k+1) / (k! (2k+1)) to x^13 (next term < 5e-10)
    z = a * a
    small = a * (_T1 + z * (_T3 + z * (_T5 + z * (_T7 + z * (_T9 + z * (_T11 + z * _T13))))))
    y = small if a < _FHALF else y
    return y if x >= _F0 else -y



# ----------------------------------------------------------------------------------------------------------------
# exact float32 exp and erf that vectorise: the DEFAULT in the Numba CPU kernels
#
# exp_f32 and erf_f32 widen the float32 argument to float64, compute with +, *, compare/select and bit casts only
# (and erf one division; no call, no branch that LLVM cannot turn into a select), and round the float64 value to
# float32 once.
#
# Why that is exact: the float64 value has relative error below ~1e-14 (exp: the truncation bound given beside its
# polynomial; erf: its rational function's fitted bound, ~3e-15; Horner's rule in float64 adds a few 1e-16). Its
# float32 rounding is therefore the correctly rounded float32 of the true value unless the true value lies within
# ~1e-14 relative of a midpoint between two float32 numbers (whose spacing is 2^-23 relative): a fraction
# ~1e-14 / 2^-24 ~ 2e-7 of the inputs at most,
# and then the result is the other neighbour, 1 ulp away. tests/test_f32math.py measures this against
# float32(math.exp / math.erf of the float64 input) over dense grids: max error <= 1 ulp, and the fraction of
# inputs that differ from the correctly rounded value (see EXACT_MATH_MAX_MISMATCH_FRACTION).
# The float64 range also makes the edges free: float32's overflow (x > 88.72...) and its denormals and underflow
# to 0 (x < -87.3 ... -103.97) come from the one final rounding, exactly as float32(exp(x)) would give them.

EXACT_MATH_MAX_MISMATCH_FRACTION = 1e-6  # bound asserted by the tests; measured fractions are stated there

_LOG2E_64 = 1.4426950408889634            # 1 / ln 2
_LN2_HI_64 = 6.93147180369123816490e-01   # ln 2 with its low 32 mantissa bits zero: n * _LN2_HI_64 is exact
_LN2_LO_64 = 1.90821492927058770002e-10   # ln 2 - _LN2_HI_64 (Cody & Waite's split, as in fdlibm)
_SHIFTER_64 = 6755399441055744.0          # 1.5 * 2^52: adding it rounds |v| < 2^51 to an integer held in the low bits
_EXP64_LO = -708.0                         # clamp: 2^n stays a normal float64 (n >= -1022) and
_EXP64_HI = 709.0                          # finite (n <= 1023); both are far beyond float32's range
# 1/k! for k = 0..12: the Taylor series of exp(r). On |r| <= ln(2)/2 = 0.347 the first dropped term
# r^13 / 13! <= 1.7e-16, relative to exp(r) >= 0.707: truncation < 2.5e-16
_EXP_TAYLOR = tuple(1.0 / math.factorial(k) for k in range(13))
(_E0, _E1, _E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12) = _EXP_TAYLOR

# erf(x) = x P(t) / Q(t), t = x^2 * (2 / 3.925^2) - 1, for |x| < 3.925: one rational function of x^2 (degrees 14
# and 13), fitted for the smallest largest relative error, 2.9e-15 (erf_rational_coefficients). One branch, so a
# loop evaluates only it: 28 multiply-adds and a division per element, where a series below |x| = 1 and
# exp(-x^2) erfcx(|x|) above would evaluate both branches and an exp for every element (about twice the work).
_ERF_CLAMP = 3.925     # erfc(3.925) = 2.84e-8 < 2^-25 = 2.98e-8: erf rounds to +-1.0 in float32 from |x| ~ 3.92
                       # on; the fit covers [0, 3.925] and |x| >= 3.925 returns +-1
_ERF_T_SCALE = 2.0 / (_ERF_CLAMP * _ERF_CLAMP)  # t = x^2 * _ERF_T_SCALE - 1 maps |x| in [0, 3.925] onto [-1, 1]
ERF_RATIONAL_MAX_REL_ERR = 5e-15  # bound on |x P(t) / Q(t) - erf(x)| / erf(x) asserted by tests/test_f32math.py


def erf_rational_coefficients(p_degree: int = 14, q_degree: int = 13, nodes: int = 8000, rounds: int = 60):
    """Regenerate _ERF_P and _ERF_Q: erf(x) ~ x P(t) / Q(t) with t = x^2 * _ERF_T_SCALE - 1, |x| <= _ERF_CLAMP
    (monomial coefficients in t, lowest power first). The fit minimises the largest RELATIVE error over `nodes`
    Chebyshev points in t: each round solves the linearised least-squares problem (x P - erf Q) / erf = 0 in the
    Chebyshev basis (Loeb), weighted by 1 / |Q| of the previous round and by Lawson's factor, which grows where the
    error is largest; the best round is kept. erf comes from math.erf in float64 (relative error ~1e-16).
    An odd function of x as x times a function of x^2, so erf(-x) = -erf(x) and erf(0) = 0 hold exactly.
    Measured on 200001 points of [0, 3.925] against math.erf: degrees (14, 13) reach a largest relative error of
    2.9e-15 (mean 9e-16); (11, 10) 2.2e-13, (12, 11) 9.8e-14, (13, 12) 3.2e-14."""
    from numpy.polynomial import chebyshev as cheb

    t = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    x = np.sqrt((t + 1.0) / _ERF_T_SCALE)
    keep = x > 1e-3                                        # below, erf(x) / x is flat: the nodes near 0 add nothing
    t, x = t[keep], x[keep]
    f = np.array([math.erf(v) for v in x])
    vp = cheb.chebvander(t, p_degree)                      # P = sum p_k T_k(t)
    vq = cheb.chebvander(t, q_degree)[:, 1:]               # Q = T_0 + sum_{k >= 1} q_k T_k(t)
    w = np.ones_like(t)
    best = None
    for r in range(rounds):
        a = np.hstack([x[:, None] * vp, -f[:, None] * vq]) * (w / f)[:, None]
        c = np.linalg.lstsq(a, w, rcond=None)[0]
        p, q = c[:p_degree + 1], np.concatenate([[1.0], c[p_degree + 1:]])
        qt = cheb.chebval(t, q)
        err = np.abs(x * cheb.chebval(t, p) / qt - f) / f
        if best is None or err.max() < best[0]:
            best = (err.max(), p, q)
        w = (1.0 + 20.0 * err / err.max()) ** (1.0 + r / 10.0) / np.abs(qt)
        w /= w.max()
    _, p, q = best
    return tuple(float(v) for v in cheb.cheb2poly(p)), tuple(float(v) for v in cheb.cheb2poly(q))


# the output of erf_rational_coefficients() (stored as literals so that importing never refits and the compiled
# kernels' constants cannot drift with a numpy or LAPACK version)
_ERF_P = (
    0.3876871254471784,
    -0.18453321608294945,
    0.22999643146392157,
    0.05345608263890009,
    -0.4420754282531474,
    -0.27476011612713613,
    0.4170313200571672,
    0.379555097879446,
    0.022257789649094986,
    -0.15893944748873365,
    -0.10531873783420743,
    -0.03325828922632701,
    -0.004947609401204549,
    -0.0002016044478112864,
    4.011715077144179e-06,
)
_ERF_Q = (
    1.0760778948298397,
    0.025081197061738975,
    0.2508810893915343,
    0.5901457283579101,
    -1.288666552352339,
    -1.3345539197202807,
    0.9168750201803995,
    1.6464766901360046,
    0.4550879542472303,
    -0.48441032848592536,
    -0.4873363435694678,
    -0.19844215973053414,
    -0.04122424691934988,
    -0.0036248573005107994,
)
(_P0, _P1, _P2, _P3, _P4, _P5, _P6, _P7, _P8, _P9, _P10, _P11, _P12, _P13, _P14) = _ERF_P
(_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9, _Q10, _Q11, _Q12, _Q13) = _ERF_Q


@intrinsic
def _float64_bits_as_int64(typingctx, x):
    """Reinterpret a float64's 64 bits as an int64 (LLVM bitcast: free, and it vectorises)."""
    if not isinstance(x, types.Float) or x.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(x), codegen


@intrinsic
def _int64_bits_as_float64(typingctx, i):
    """Reinterpret an int64's 64 bits as a float64 (LLVM bitcast)."""
    if not isinstance(i, types.Integer) or i.bitwidth != 64:
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(i), codegen


@intrinsic
def _muladd(typingctx, a, b, c):
    """a * b + c on float64 by LLVM's llvm.fmuladd: one fused multiply-add where the CPU has one (then rounded
    once, more accurate than two roundings), a multiply and an add otherwise. Both fit the error bounds above;
    the choice is the compiler's, per machine, never a libm call."""
    if not all(isinstance(v, types.Float) and v.bitwidth == 64 for v in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [f64], ir.FunctionType(f64, [f64, f64, f64]))
        return builder.call(fn, list(args))

    return types.float64(a, b, c), codegen


@intrinsic
def _div(typingctx, a, b):
    """a / b on float64 as LLVM's fdiv: IEEE division (b = 0 gives +-inf or NaN). Numba's `/` follows Python and
    tests for a zero divisor to raise ZeroDivisionError, a branch that keeps the loop around it from vectorising."""
    if not all(isinstance(v, types.Float) and v.bitwidth == 64 for v in (a, b)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fdiv(args[0], args[1])

    return types.float64(a, b), codegen


@njit(cache=True, inline="always")
def _exp_f64(x):
    """exp(x) for a float64 x with relative error < ~5e-16 on [-708, 709] (x is clamped to that range; a NaN
    becomes -708: callers test for NaN themselves). Cody-Waite: x = n ln2 + r, |r| <= ln2/2, exp(x) = 2^n exp(r)."""
    xc = x if x > _EXP64_LO else _EXP64_LO                 # NaN fails the compare: it becomes _EXP64_LO
    xc = xc if xc < _EXP64_HI else _EXP64_HI
    k = xc * _LOG2E_64 + _SHIFTER_64                       # round(x / ln 2) lands in the low mantissa bits of k
    n = k - _SHIFTER_64                                    # the same integer as a float64 (exact)
    r = (xc - n * _LN2_HI_64) - n * _LN2_LO_64             # x - n ln 2; n * _LN2_HI_64 is exact
    p = _E12                                               # exp(r) by its Taylor series to r^12, Horner
    p = _muladd(p, r, _E11); p = _muladd(p, r, _E10); p = _muladd(p, r, _E9)
    p = _muladd(p, r, _E8); p = _muladd(p, r, _E7); p = _muladd(p, r, _E6)
    p = _muladd(p, r, _E5); p = _muladd(p, r, _E4); p = _muladd(p, r, _E3)
    p = _muladd(p, r, _E2); p = _muladd(p, r, _E1); p = _muladd(p, r, _E0)
    ni = _float64_bits_as_int64(k) - _float64_bits_as_int64(_SHIFTER_64)   # n as an int64
    return p * _int64_bits_as_float64((ni + 1023) << 52)   # times 2^n, built from its biased exponent bits


@njit(cache=True, inline="always")
def exp_f32(x):
    """float32 exp(x), correctly rounded except within ~1e-14 of a rounding tie (then 1 ulp off), and vectorisable.
    Overflow gives inf (x > 88.7228), underflow float32 denormals then 0, exp(-inf) = 0, exp(nan) = nan."""
    xd = np.float64(x)
    y = np.float32(_exp_f64(xd))
    return y if xd == xd else x


@njit(cache=True, inline="always")
def erf_f32(x):
    """float32 erf(x), correctly rounded except within ~3e-15 of a rounding tie (then 1 ulp off), and vectorisable.
    One rational function and a division, no branch LLVM cannot turn into a select; erf(-0) = -0, erf(nan) = nan."""
    xd = np.float64(x)
    a = abs(xd)
    s = xd if a < _ERF_CLAMP else _ERF_CLAMP              # keeps the sign of x (and of -0) below the clamp
    t = _muladd(s * s, _ERF_T_SCALE, -1.0)                 # s * s is exact: a float32 squared fits in float64
    p = _P14
    p = _muladd(p, t, _P13); p = _muladd(p, t, _P12); p = _muladd(p, t, _P11)
    p = _muladd(p, t, _P10); p = _muladd(p, t, _P9); p = _muladd(p, t, _P8)
    p = _muladd(p, t, _P7); p = _muladd(p, t, _P6); p = _muladd(p, t, _P5)
    p = _muladd(p, t, _P4); p = _muladd(p, t, _P3); p = _muladd(p, t, _P2)
    p = _muladd(p, t, _P1); p = _muladd(p, t, _P0)
    q = _Q13
    q = _muladd(q, t, _Q12); q = _muladd(q, t, _Q11); q = _muladd(q, t, _Q10)
    q = _muladd(q, t, _Q9); q = _muladd(q, t, _Q8); q = _muladd(q, t, _Q7)
    q = _muladd(q, t, _Q6); q = _muladd(q, t, _Q5); q = _muladd(q, t, _Q4)
    q = _muladd(q, t, _Q3); q = _muladd(q, t, _Q2); q = _muladd(q, t, _Q1)
    q = _muladd(q, t, _Q0)
    y = _div(s * p, q)                                     # erf(x) for |x| < 3.925, relative error <= ~3e-15
    y = y if a < _ERF_CLAMP else (1.0 if xd > 0.0 else -1.0)   # |x| >= 3.925 (and inf): erf = +-1 in float32
    return np.float32(y) if xd == xd else x


# ----------------------------------------------------------------------------------------------------------------
# row reductions that vectorise (used by the CPU kernels of softmax, attention, cross-entropy and the distillation
# KL)
#
# An IEEE-ordered float32 sum `s += a[j]` is a chain of dependent adds (4 cycles each): LLVM may not reorder it,
# so it runs one element at a time. `row_sum` lets LLVM reassociate (fastmath flag "reassoc" only: no finite-math
# assumption, NaN and inf propagate as without it): it keeps 16-lane partial sums in AVX-512 registers and adds
# them at the end. The summation ORDER therefore differs from left to right; the error bound is the same kind
# (n eps sum|a| at worst, usually smaller), which the kernels' derived tolerances already allow.
# `row_max` is exact in any order: it keeps 8 independent running maxima by compare-and-select (a plain
# `m = max(m, a[j])` loop is one dependent chain). NaN elements are skipped by the compares (a row holding NaN still
# gives NaN in the softmax through its exp and sum). These are separate, non-inlined functions ON PURPOSE: fastmath
# flags apply to every instruction of the function they are set on, and must never reach exp_f32's Cody-Waite
# reduction, whose (x - n ln2_hi) - n ln2_lo reassociation would lose its precision.
# Measured per row of 30522 float32, 1 core: sum 17.2 -> 1.7 us, max 36.7 -> 8.6 us.

@njit(cache=True, fastmath={"reassoc"})
def row_sum(a):
    """sum(a) of a 1-d float32 array, in float32 with a vectorised (reassociated) order."""
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j]
    return s


@njit(cache=True, fastmath={"reassoc", "contract"})
def row_dot(a, b):
    """sum(a * b) of two 1-d float32 arrays of the same length, vectorised as row_sum (and with FMAs)."""
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


@njit(cache=True)
def row_max(a):
    """max(a) of a 1-d float32 array (-inf when empty or all NaN); exact (any order gives the same maximum).
    Eight independent running maxima (compare and select) instead of one chain, merged at the end."""
    n = a.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = np.float32(-np.inf)
    j = 0
    while j + 8 <= n:
        v = a[j]
        m0 = v if v > m0 else m0
        v = a[j + 1]
        m1 = v if v > m1 else m1
        v = a[j + 2]
        m2 = v if v > m2 else m2
        v = a[j + 3]
        m3 = v if v > m3 else m3
        v = a[j + 4]
        m4 = v if v > m4 else m4
        v = a[j + 5]
        m5 = v if v > m5 else m5
        v = a[j + 6]
        m6 = v if v > m6 else m6
        v = a[j + 7]
        m7 = v if v > m7 else m7
        j += 8
    for k in range(j, n):
        v = a[k]
        m0 = v if v > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    m4 = m5 if m5 > m4 else m4
    m6 = m7 if m7 > m6 else m6
    m0 = m2 if m2 > m0 else m0
    m4 = m6 if m6 > m4 else m4
    return m4 if m4 > m0 else m0
