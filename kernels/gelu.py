"""GELU, the exact erf form that BERT and DistilBERT use, and bias + GELU fused.

Forward (elementwise):
    y = gelu(x) = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))
Derivative:
    dy/dx = Phi(x) + x * phi(x) = 0.5 * (1 + erf(x / sqrt(2))) + x * exp(-x^2 / 2) / sqrt(2 pi)
Bias + GELU (x (..., F), b (F,)):
    y = gelu(x + b);   dx = dy * gelu'(x + b);   db = sum over all leading axes of dx

The tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) is NOT what BERT uses; it is here only as a
reference (`gelu_tanh_ref`) for the tutorial that plots the two side by side.

Versions:
    gelu_forward_ref / gelu_backward_ref             NumPy + scipy.special.erf, float32 or float64
    gelu_forward_cpu / gelu_backward_cpu             Numba, parallel over rows (no `i % width` per element),
                                                     float32 throughout; erf and exp by _f32math.erf_f32 / exp_f32:
                                                     the correctly rounded float32 values (computed in float64,
                                                     off by 1 ulp only within ~1e-14 of a rounding tie), written
                                                     so that the row loop vectorises (libm's erff/expf do not in
                                                     Numba >= 0.62): the exact default, no accuracy traded
    (fast=True on the CPU versions)                  opt-in fast math: the same loops with _f32math.erf_fast and
                                                     exp_fast in float32 (fewer operations than the exact float64
                                                     ones). Max error: |erf_fast - erf| <=
                                                     ERF_FAST_MAX_ABS_ERR (4e-7), so |dy| <= 0.5 |x| 4e-7 + rounding
                                                     for y; chosen by fast=True or MINIDISTIL_FAST_MATH=1
    bias_gelu_forward_cpu / bias_gelu_backward_cpu   Numba, bias add fused into the GELU pass (one read, one write)
    gelu_forward_cuda / gelu_backward_cuda           numba.cuda, one thread per element
    bias_gelu_forward_cuda / bias_gelu_backward_cuda numba.cuda; db reduced per column through shared memory
Caches: GeluCache(x), BiasGeluCache(x, b): the input is kept, gelu'(x) is recomputed in backward (cheaper in memory).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda, _f32math
from ._f32math import erf_f32, erf_fast, exp_f32, exp_fast


def _erf(x):
    """scipy's erf, imported on first use (scipy costs ~0.3 s of start-up and only the references need it)."""
    from scipy.special import erf
    return erf(x)

HALF = np.float32(0.5)
ONE = np.float32(1.0)
INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))
INV_SQRT_2PI = np.float32(1.0 / math.sqrt(2.0 * math.pi))


class GeluCache(NamedTuple):
    x: np.ndarray  # the input of gelu


class BiasGeluCache(NamedTuple):
    x: np.ndarray  # (..., F) the input before the bias
    b: np.ndarray  # (F,) the bias


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def gelu_forward_ref(x):
    # y = 0.5 * x * (1 + erf(x / sqrt(2)))
    y = 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))
    return y.astype(x.dtype, copy=False), GeluCache(x)


def gelu_backward_ref(dy, cache):
    x = cache.x
    # d/dx [x * Phi(x)] = Phi(x) + x * phi(x)
    cdf = 0.5 * (1.0 + _erf(x / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi)
    return (dy * (cdf + x * pdf)).astype(x.dtype, copy=False)


def bias_gelu_forward_ref(x, b):
    y, _ = gelu_forward_ref(x + b)
    return y, BiasGeluCache(x, b)


def bias_gelu_backward_ref(dy, cache):
    dx = gelu_backward_ref(dy, GeluCache(cache.x + cache.b))
    db = dx.reshape(-1, dx.shape[-1]).sum(axis=0)
    return dx, db


def gelu_tanh_ref(x):
    """The tanh approximation (GPT-2's 'gelu_new'); for comparison only."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, inline="always")
def _erf32(z, fast):
    # fast: the opt-in float32 approximation, else the exact erf_f32. `fast` is the same for a whole loop, so LLVM
    # moves the choice out of it and both versions vectorise (measured: as fast as two separate kernels)
    return erf_fast(z) if fast else erf_f32(z)


@njit(cache=True, inline="always")
def _exp32(z, fast):
    return exp_fast(z) if fast else exp_f32(z)


@njit(cache=True, parallel=True)
def _gelu_fwd(x, b, y, fast):
    # x, y (N, width), b (width,) or (0,) for no bias; row by row (a flat loop's `i % width` cost as much as the erf)
    N, width = x.shape
    has_bias = b.size > 0
    for i in prange(N):
        for j in range(width):
            h = x[i, j] + b[j] if has_bias else x[i, j]
            y[i, j] = HALF * h * (ONE + _erf32(h * INV_SQRT2, fast))       # y = 0.5 h (1 + erf(h / sqrt 2))


@njit(cache=True, parallel=True)
def _gelu_bwd(dy, x, b, dx, fast):
    N, width = x.shape
    has_bias = b.size > 0
    for i in prange(N):
        for j in range(width):
            h = x[i, j] + b[j] if has_bias else x[i, j]
            cdf = HALF * (ONE + _erf32(h * INV_SQRT2, fast))               # Phi(h)
            pdf = _exp32(-HALF * h * h, fast) * INV_SQRT_2PI               # phi(h)
            dx[i, j] = dy[i, j] * (cdf + h * pdf)                          # dy * gelu'(h)


def _fast(fast):
    return _f32math.fast_math_default() if fast is None else bool(fast)


def _rows(a):
    """a viewed as (N, width): the last axis is the width (a 0-d array is one row of one)."""
    width = max(1, tuple(a.shape)[-1]) if a.ndim else 1
    return a.reshape(-1, width)


_NO_BIAS = np.zeros(0, dtype=np.float32)


def gelu_forward_cpu(x, fast=None):
    _checks.check_array("x", x)
    y = np.empty_like(x)
    _gelu_fwd(_rows(x), _NO_BIAS, _rows(y), _fast(fast))
    return y, GeluCache(x)


def gelu_backward_cpu(dy, cache, fast=None):
    x = cache.x
    _checks.check_array("dy", dy, shape=x.shape)
    dx = np.empty_like(x)
    _gelu_bwd(_rows(dy), _rows(x), _NO_BIAS, _rows(dx), _fast(fast))
    return dx


def _check_bias(x, b):
    _checks.check_array("x", x, ndim=tuple(range(1, 8)))
    _checks.check_array("b", b, ndim=1, shape=(tuple(x.shape)[-1],))


def bias_gelu_forward_cpu(x, b, fast=None):
    _check_bias(x, b)
    y = np.empty_like(x)
    _gelu_fwd(_rows(x), b, _rows(y), _fast(fast))
    return y, BiasGeluCache(x, b)


def bias_gelu_backward_cpu(dy, cache, fast=None):
    x, b = cache
    _checks.check_array("dy", dy, shape=x.shape)
    dx = np.empty_like(x)
    _gelu_bwd(_rows(dy), _rows(x), b, _rows(dx), _fast(fast))
    F = tuple(x.shape)[-1]
    db = dx.reshape(dx.size // max(F, 1), F).sum(axis=0)  # numpy's pairwise float32 sum: error ~ eps * log(N)
    return dx, db


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()

    @cuda.jit
    def fwd(x, b, y, width, has_bias):
        i = cuda.grid(1)
        if i < x.size:
            h = x[i] + b[i % width] if has_bias else x[i]
            y[i] = HALF * h * (ONE + math.erf(h * INV_SQRT2))

    @cuda.jit
    def bwd(dy, x, b, dx, width, has_bias):
        i = cuda.grid(1)
        if i < x.size:
            h = x[i] + b[i % width] if has_bias else x[i]
            cdf = HALF * (ONE + math.erf(h * INV_SQRT2))
            pdf = math.exp(-HALF * h * h) * INV_SQRT_2PI
            dx[i] = dy[i] * (cdf + h * pdf)

    return fwd, bwd


def _launch(kernel, n, *args):
    kernel[_cuda.blocks_for(n), _cuda.THREADS](*args)


def gelu_forward_cuda(x):
    _checks.check_array("x", x)
    fwd, _ = _cuda_kernels()
    y = _cuda.device_empty(x.shape)
    _launch(fwd, x.size, x.reshape(-1), _cuda.to_device(_NO_BIAS), y.reshape(-1), 1, False)
    return y, GeluCache(x)


def gelu_backward_cuda(dy, cache):
    x = cache.x
    _checks.check_array("dy", dy, shape=x.shape)
    _, bwd = _cuda_kernels()
    dx = _cuda.device_empty(x.shape)
    _launch(bwd, x.size, dy.reshape(-1), x.reshape(-1), _cuda.to_device(_NO_BIAS), dx.reshape(-1), 1, False)
    return dx


def bias_gelu_forward_cuda(x, b):
    _check_bias(x, b)
    fwd, _ = _cuda_kernels()
    y = _cuda.device_empty(x.shape)
    _launch(fwd, x.size, x.reshape(-1), b, y.reshape(-1), tuple(x.shape)[-1], True)
    return y, BiasGeluCache(x, b)


def bias_gelu_backward_cuda(dy, cache):
    x, b = cache
    _checks.check_array("dy", dy, shape=x.shape)
    _, bwd = _cuda_kernels()
    width = tuple(x.shape)[-1]
    dx = _cuda.device_empty(x.shape)
    _launch(bwd, x.size, dy.reshape(-1), x.reshape(-1), b, dx.reshape(-1), width, True)
    db = _cuda.column_sum(dx.reshape(x.size // width, width))  # db = sum over rows of dx
    return dx, db


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


# fast=None follows MINIDISTIL_FAST_MATH (default off); the CUDA versions use the GPU's own erf/exp either way.


def gelu_forward(x, fast=None):
    return gelu_forward_cuda(x) if _cuda.is_device_array(x) else gelu_forward_cpu(x, fast)


def gelu_backward(dy, cache, fast=None):
    return gelu_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else gelu_backward_cpu(dy, cache, fast)


def bias_gelu_forward(x, b, fast=None):
    return bias_gelu_forward_cuda(x, b) if _cuda.is_device_array(x) else bias_gelu_forward_cpu(x, b, fast)


def bias_gelu_backward(dy, cache, fast=None):
    if _cuda.is_device_array(dy):
        return bias_gelu_backward_cuda(dy, cache)
    return bias_gelu_backward_cpu(dy, cache, fast)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("gelu", argv)
    rep = _checks.Report("gelu")
    r = _checks.rng(0)
    # validation: every version against the float64 reference, tolerance from float32 epsilon (no reduction for
    # the elementwise outputs, a reduction over N rows for db)
    N, F = (8 * 128, 3072) if args.size == "base" else (7, 13)
    x = r.standard_normal((N, F)).astype(np.float32) * 3
    b = r.standard_normal(F).astype(np.float32)
    dy = r.standard_normal((N, F)).astype(np.float32)
    y64, _ = bias_gelu_forward_ref(x.astype(np.float64), b.astype(np.float64))
    dx64, db64 = bias_gelu_backward_ref(dy.astype(np.float64),
                                        BiasGeluCache(x.astype(np.float64), b.astype(np.float64)))
    tol = _checks.f32_tol(1, scale=8)
    y, c = bias_gelu_forward_cpu(x, b)
    rep.check("cpu", "y", y, y64, atol=tol, rtol=tol)
    dx, db = bias_gelu_backward_cpu(dy, c)
    rep.check("cpu", "dx", dx, dx64, atol=tol, rtol=tol)
    rep.check("cpu", "db", db, db64, atol=_checks.f32_tol(N, scale=4), rtol=tol)

    # the opt-in fast version: its own tolerance from the stated erf/exp errors (|h| <= 3 max|x| + max|b| here)
    hmax = float(np.abs(x).max() + np.abs(b).max())
    t_fast_y = 0.5 * hmax * _f32math.ERF_FAST_MAX_ABS_ERR + tol * (1 + hmax)
    # |h| phi(h) <= phi(1) = 0.242 at its maximum |h| = 1
    t_fast_dx = float(np.abs(dy).max()) * (0.5 * _f32math.ERF_FAST_MAX_ABS_ERR + 0.242 * _f32math.EXP_FAST_MAX_REL_ERR
                                           + tol * (1 + hmax))
    yf, cf = bias_gelu_forward_cpu(x, b, fast=True)
    rep.check("cpu fast", "y", yf, y64, atol=t_fast_y)
    dxf, dbf = bias_gelu_backward_cpu(dy, cf, fast=True)
    rep.check("cpu fast", "dx", dxf, dx64, atol=t_fast_dx)
    rep.check("cpu fast", "db", dbf, db64, atol=N * t_fast_dx + _checks.f32_tol(N, scale=4))

    if _cuda.available():
        n_small = 64 if _cuda.SIMULATOR else N
        xs, dys = x[:n_small], dy[:n_small]
        dx64s, db64s = bias_gelu_backward_ref(dys.astype(np.float64),
                                              BiasGeluCache(xs.astype(np.float64), b.astype(np.float64)))
        xd, bd, dyd = (_cuda.to_device(a) for a in (xs, b, dys))
        yd, cd = bias_gelu_forward_cuda(xd, bd)
        rep.check("cuda", "y", _cuda.to_host(yd), y64[:n_small], atol=tol, rtol=tol)
        dxd, dbd = bias_gelu_backward_cuda(dyd, cd)
        rep.check("cuda", "dx", _cuda.to_host(dxd), dx64s, atol=tol, rtol=tol)
        rep.check("cuda", "db", _cuda.to_host(dbd), db64s, atol=_checks.f32_tol(n_small, scale=4), rtol=tol)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark at DistilBERT-base FFN size: (B*T, F) = (1024, 3072); bytes = read x + write y (+ read b)
    nbytes_f = 2 * x.nbytes
    nbytes_b = 3 * x.nbytes
    rep.bench("ref(numpy)", lambda: bias_gelu_forward_ref(x, b), nbytes=nbytes_f)
    rep.bench("cpu", lambda: bias_gelu_forward_cpu(x, b), nbytes=nbytes_f)
    rep.bench("ref bwd", lambda: bias_gelu_backward_ref(dy, BiasGeluCache(x, b)), nbytes=nbytes_b)
    rep.bench("cpu bwd", lambda: bias_gelu_backward_cpu(dy, c), nbytes=nbytes_b)
    rep.bench("cpu fast", lambda: bias_gelu_forward_cpu(x, b, fast=True), nbytes=nbytes_f)
    rep.bench("cpu fast bwd", lambda: bias_gelu_backward_cpu(dy, c, fast=True), nbytes=nbytes_b)
    if _cuda.available() and not _cuda.SIMULATOR:
        cuda = _cuda.get_cuda()
        xd, bd = _cuda.to_device(x), _cuda.to_device(b)
        rep.bench("cuda", lambda: bias_gelu_forward_cuda(xd, bd), nbytes=nbytes_f, sync=cuda.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
