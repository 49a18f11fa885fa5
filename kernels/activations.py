"""tanh and ReLU, elementwise: BERT's pooler (tanh) and DistilBERT's classification head (ReLU).

Forward and derivative:
    tanh:  y = tanh(x);      dx = dy * (1 - y^2)      (the cache keeps y: the derivative needs only the output)
    relu:  y = max(x, 0);    dx = dy * (x > 0)        (the cache keeps x; at x = 0 the gradient is 0, as in torch)

Precision: float32 tanh is within a few ulp; 1 - y^2 loses relative accuracy only where |y| -> 1, where the
derivative itself is small (its absolute error stays ~ eps). ReLU is exact in both directions.
Speed: the CPU tanh calls libm's scalar tanh (~50 ns an element on our CI machine), far slower than NumPy's SIMD
tanh at (1024, 768); the pooler applies it to (B, C) only, where both take microseconds. main() measures both sizes.

Versions:
    tanh_forward_ref / tanh_backward_ref, relu_forward_ref / relu_backward_ref   NumPy, float32 or float64
    tanh_forward_cpu / ..., relu_forward_cpu / ...                              Numba, prange over elements
    tanh_forward_cuda / ..., relu_forward_cuda / ...                            numba.cuda, one thread per element
Caches: TanhCache(y), ReluCache(x).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda

ZERO = np.float32(0.0)
ONE = np.float32(1.0)


class TanhCache(NamedTuple):
    y: np.ndarray  # tanh(x)


class ReluCache(NamedTuple):
    x: np.ndarray  # the input of relu


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def tanh_forward_ref(x):
    y = np.tanh(x)
    return y, TanhCache(y)


def tanh_backward_ref(dy, cache):
    y = cache.y
    # forward: y = tanh(x);  d tanh(x)/dx = 1 - tanh(x)^2
    return (dy * (1.0 - y * y)).astype(y.dtype, copy=False)


def relu_forward_ref(x):
    return np.maximum(x, 0.0).astype(x.dtype, copy=False), ReluCache(x)


def relu_backward_ref(dy, cache):
    x = cache.x
    # forward: y = max(x, 0)
    return (dy * (x > 0)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True)
def _tanh_fwd(x, y):
    for i in prange(x.size):
        y[i] = math.tanh(x[i])


@njit(cache=True, parallel=True)
def _tanh_bwd(dy, y, dx):
    for i in prange(y.size):
        dx[i] = dy[i] * (ONE - y[i] * y[i])      # forward: y = tanh(x)


@njit(cache=True, parallel=True)
def _relu_fwd(x, y):
    for i in prange(x.size):
        y[i] = x[i] if x[i] > ZERO else ZERO


@njit(cache=True, parallel=True)
def _relu_bwd(dy, x, dx):
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > ZERO else ZERO   # forward: y = max(x, 0)


def _elementwise_cpu(kernel, *arrays):
    out = np.empty_like(arrays[0])
    kernel(*(a.reshape(-1) for a in arrays), out.reshape(-1))
    return out


def tanh_forward_cpu(x):
    _checks.check_array("x", x)
    y = _elementwise_cpu(_tanh_fwd, x)
    return y, TanhCache(y)


def tanh_backward_cpu(dy, cache):
    _checks.check_array("dy", dy, shape=tuple(cache.y.shape))
    return _elementwise_cpu(_tanh_bwd, dy, cache.y)


def relu_forward_cpu(x):
    _checks.check_array("x", x)
    return _elementwise_cpu(_relu_fwd, x), ReluCache(x)


def relu_backward_cpu(dy, cache):
    _checks.check_array("dy", dy, shape=tuple(cache.x.shape))
    return _elementwise_cpu(_relu_bwd, dy, cache.x)


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()

    @cuda.jit
    def tanh_fwd(x, y):
        i = cuda.grid(1)
        if i < x.size:
            y[i] = math.tanh(x[i])

    @cuda.jit
    def tanh_bwd(dy, y, dx):
        i = cuda.grid(1)
        if i < y.size:
            dx[i] = dy[i] * (ONE - y[i] * y[i])

    @cuda.jit
    def relu_fwd(x, y):
        i = cuda.grid(1)
        if i < x.size:
            y[i] = x[i] if x[i] > ZERO else ZERO

    @cuda.jit
    def relu_bwd(dy, x, dx):
        i = cuda.grid(1)
        if i < x.size:
            dx[i] = dy[i] if x[i] > ZERO else ZERO

    return {"tanh_fwd": tanh_fwd, "tanh_bwd": tanh_bwd, "relu_fwd": relu_fwd, "relu_bwd": relu_bwd}


def _elementwise_cuda(name, *arrays):
    kernel = _cuda_kernels()[name]
    out = _cuda.device_empty(arrays[0].shape)
    n = arrays[0].size
    kernel[_cuda.blocks_for(n), _cuda.THREADS](*(a.reshape(-1) for a in arrays), out.reshape(-1))
    return out


def tanh_forward_cuda(x):
    _checks.check_array("x", x)
    y = _elementwise_cuda("tanh_fwd", x)
    return y, TanhCache(y)


def tanh_backward_cuda(dy, cache):
    _checks.check_array("dy", dy, shape=tuple(cache.y.shape))
    return _elementwise_cuda("tanh_bwd", dy, cache.y)


def relu_forward_cuda(x):
    _checks.check_array("x", x)
    return _elementwise_cuda("relu_fwd", x), ReluCache(x)


def relu_backward_cuda(dy, cache):
    _checks.check_array("dy", dy, shape=tuple(cache.x.shape))
    return _elementwise_cuda("relu_bwd", dy, cache.x)


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def tanh_forward(x):
    return tanh_forward_cuda(x) if _cuda.is_device_array(x) else tanh_forward_cpu(x)


def tanh_backward(dy, cache):
    return tanh_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else tanh_backward_cpu(dy, cache)


def relu_forward(x):
    return relu_forward_cuda(x) if _cuda.is_device_array(x) else relu_forward_cpu(x)


def relu_backward(dy, cache):
    return relu_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else relu_backward_cpu(dy, cache)


# tolerances: tanh is one float32 libm call (a few ulp of |y| <= 1); its backward one product and one 1 - y^2,
# whose y carries the forward's error: |d(1 - y^2)| = 2|y| * err(y) <= 2 * TANH_TOL, times |dy|. ReLU is exact.
TANH_TOL = _checks.f32_tol(1)


def tanh_backward_tol(dymax):
    return 3 * _checks.f32_tol(1, scale=dymax)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("activations", argv)
    rep = _checks.Report("activations")
    r = _checks.rng(0)
    N, C = (8 * 128, 768) if args.size == "base" else (7, 13)  # the pooler / classifier input, (B*T, C)
    x = (r.standard_normal((N, C)) * 2).astype(np.float32)
    x[0, :5] = 0.0  # ReLU's kink
    dy = r.standard_normal((N, C)).astype(np.float32)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    dymax = float(np.abs(dy).max())
    versions = [("cpu", tanh_forward_cpu, tanh_backward_cpu, relu_forward_cpu, relu_backward_cpu,
                 lambda a: a, lambda a: a)]
    if _cuda.available():
        versions.append(("cuda", tanh_forward_cuda, tanh_backward_cuda, relu_forward_cuda, relu_backward_cuda,
                         _cuda.to_device, _cuda.to_host))
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")
    for name, tf, tb, rf, rb, dev, host in versions:
        n = 16 if name == "cuda" and _cuda.SIMULATOR else N
        xd, dyd = dev(x[:n]), dev(dy[:n])
        y, c = tf(xd)
        y64, c64 = tanh_forward_ref(x64[:n])
        rep.check(name, "tanh y", host(y), y64, atol=TANH_TOL)
        rep.check(name, "tanh dx", host(tb(dyd, c)), tanh_backward_ref(dy64[:n], c64), atol=tanh_backward_tol(dymax))
        y, c = rf(xd)
        rep.check(name, "relu y", host(y), relu_forward_ref(x[:n])[0], atol=0.0)
        rep.check(name, "relu dx", host(rb(dyd, c)), relu_backward_ref(dy[:n], relu_forward_ref(x[:n])[1]), atol=0.0)

    if args.no_bench:
        return rep.finish()

    # benchmark: bytes = read x + write y (forward), read dy + cache, write dx (backward)
    _, tc = tanh_forward_cpu(x)
    _, rc = relu_forward_cpu(x)
    xp = x[:8]  # the pooler's input: the [CLS] rows, (B, C)
    rep.bench("ref tanh (B,C)", lambda: tanh_forward_ref(xp), nbytes=2 * xp.nbytes)
    rep.bench("cpu tanh (B,C)", lambda: tanh_forward_cpu(xp), nbytes=2 * xp.nbytes)
    rep.bench("ref tanh", lambda: tanh_forward_ref(x), nbytes=2 * x.nbytes)
    rep.bench("cpu tanh", lambda: tanh_forward_cpu(x), nbytes=2 * x.nbytes)
    rep.bench("ref tanh bwd", lambda: tanh_backward_ref(dy, tc), nbytes=3 * x.nbytes)
    rep.bench("cpu tanh bwd", lambda: tanh_backward_cpu(dy, tc), nbytes=3 * x.nbytes)
    rep.bench("ref relu", lambda: relu_forward_ref(x), nbytes=2 * x.nbytes)
    rep.bench("cpu relu", lambda: relu_forward_cpu(x), nbytes=2 * x.nbytes)
    rep.bench("ref relu bwd", lambda: relu_backward_ref(dy, rc), nbytes=3 * x.nbytes)
    rep.bench("cpu relu bwd", lambda: relu_backward_cpu(dy, rc), nbytes=3 * x.nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        xd = _cuda.to_device(x)
        rep.bench("cuda tanh", lambda: tanh_forward_cuda(xd), nbytes=2 * x.nbytes, sync=cu.synchronize)
        rep.bench("cuda relu", lambda: relu_forward_cuda(xd), nbytes=2 * x.nbytes, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
