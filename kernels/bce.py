"""Binary cross-entropy on logits (multi-label classification), in the overflow-free form.

Forward, for logits x (N, K) and targets y (N, K) in [0, 1]:
    l[i, k] = -(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))
            = max(x, 0) - x y + log1p(exp(-|x|))            (never exponentiates a positive number)
    loss = (1 / (N K)) * sum_{i, k} l[i, k]                 (= F.binary_cross_entropy_with_logits, mean)
Derivative:
    dl/dx = sigmoid(x) - y,   dloss/dx = (sigmoid(x) - y) / (N K)
    sigmoid(x) = 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) for x < 0 (again no overflow)
When N K = 0, loss = 0.0 and the gradient is empty (torch returns NaN for the mean of an empty tensor).

Versions:
    bce_with_logits_forward_ref / _backward_ref     NumPy, float32 or float64
    bce_with_logits_forward_cpu / _backward_cpu     Numba, prange over rows, float32 row sums
    bce_with_logits_forward_cuda / _backward_cuda   numba.cuda, one block per row with a shared-memory sum for the
                                                    forward (the N row sums are copied back and summed in float64),
                                                    one thread per element for the backward
Cache: BCECache(logits, targets): the inputs; sigmoid(x) is recomputed in backward.
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


class BCECache(NamedTuple):
    logits: np.ndarray   # (N, K) (a reference)
    targets: np.ndarray  # (N, K) float32 in [0, 1]
    count: object = None  # CUDA: the divisor N K as a (1,) float64 device array (the backward reads it there)


def _check(logits, targets):
    _checks.check_array("logits", logits, ndim=2)
    _checks.check_array("targets", targets, ndim=2)
    _checks.check_same_shape("logits", logits, "targets", targets)


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def bce_with_logits_forward_ref(logits, targets):
    x, y = logits, targets                                                 # (N, K)
    l = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))            # (N, K)
    loss = float(l.mean()) if l.size else 0.0
    return loss, BCECache(x, y)


def bce_with_logits_backward_ref(dloss, cache):
    x, y = cache.logits, cache.targets
    # l = max(x, 0) - x y + log1p(exp(-|x|))  ->  dl/dx = sigmoid(x) - y
    e = np.exp(-np.abs(x))
    sig = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return ((sig - y) * (dloss / max(x.size, 1))).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True)
def _elem_loss(x, y):
    return max(x, ZERO) - x * y + math.log1p(math.exp(-abs(x)))


@njit(cache=True)
def _sigmoid(x):
    e = math.exp(-abs(x))
    return ONE / (ONE + e) if x >= ZERO else e / (ONE + e)


@njit(cache=True, parallel=True)
def _fwd_cpu(x, y, row_loss):
    N, K = x.shape
    for i in prange(N):
        acc = ZERO
        for k in range(K):
            acc += _elem_loss(x[i, k], y[i, k])
        row_loss[i] = acc


@njit(cache=True, parallel=True)
def _bwd_cpu(x, y, scale, dx):
    # scale = dloss / (N K);  dx = (sigmoid(x) - y) * scale
    N, K = x.shape
    for i in prange(N):
        for k in range(K):
            dx[i, k] = (_sigmoid(x[i, k]) - y[i, k]) * scale


def _scale(dloss, size):
    return np.float32(float(dloss) / size) if size else ZERO


def bce_with_logits_forward_cpu(logits, targets):
    _check(logits, targets)
    row_loss = np.empty(logits.shape[0], np.float32)
    _fwd_cpu(logits, targets, row_loss)
    loss = float(row_loss.sum(dtype=np.float64) / logits.size) if logits.size else 0.0
    return loss, BCECache(logits, targets)


def bce_with_logits_backward_cpu(dloss, cache):
    x, y = cache.logits, cache.targets
    dx = np.empty_like(x)
    _bwd_cpu(x, y, _scale(dloss, x.size), dx)
    return dx


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32
    THREADS = _cuda.THREADS

    @cuda.jit
    def fwd(x, y, row_loss):
        # one block per row i: threads stride over the K columns, then a shared-memory tree reduction
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        K = x.shape[1]
        buf = cuda.shared.array(THREADS, float32)
        acc = float32(0.0)
        k = tid
        while k < K:
            v = x[i, k]
            acc += max(v, float32(0.0)) - v * y[i, k] + math.log1p(math.exp(-abs(v)))
            k += THREADS
        buf[tid] = acc
        cuda.syncthreads()
        s = THREADS // 2
        while s > 0:
            if tid < s:
                buf[tid] += buf[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            row_loss[i] = buf[0]

    @cuda.jit
    def bwd(x, y, scale_d, dx):
        # one thread per element of the flat (N * K,) arrays
        j = cuda.grid(1)
        if j < x.size:
            scale = scale_d[0]  # dloss / (N K), computed on the device (_cuda.loss_scale)
            v = x[j]
            e = math.exp(-abs(v))
            sig = float32(1.0) / (float32(1.0) + e) if v >= float32(0.0) else e / (float32(1.0) + e)
            dx[j] = (sig - y[j]) * scale

    return fwd, bwd


def bce_with_logits_forward_cuda(logits, targets):
    _check(logits, targets)
    targets = _cuda.to_device(targets)  # host labels (a fine-tuning batch's) copied over once, as cross_entropy does
    fwd, _ = _cuda_kernels()
    N = logits.shape[0]
    row_loss = _cuda.device_empty((N,))
    if logits.size:
        fwd[N, _cuda.THREADS](logits, targets, row_loss)
    loss, count = _cuda.mean_loss(row_loss, 1.0, n=logits.size)  # the mean over N K entries, on the device
    return loss, BCECache(logits, targets, count)


def bce_with_logits_backward_cuda(dloss, cache):
    x, y, count = cache
    _, bwd = _cuda_kernels()
    dx = _cuda.device_empty(tuple(x.shape))
    if x.size:
        scale = _cuda.loss_scale(dloss, count, 1.0)  # dloss may be a device scalar: it is not read back
        bwd[_cuda.blocks_for(x.size), _cuda.THREADS](x.reshape(-1), y.reshape(-1), scale, dx.reshape(-1))
    return dx


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def bce_with_logits_forward(logits, targets):
    if _cuda.is_device_array(logits):
        return bce_with_logits_forward_cuda(logits, targets)
    return bce_with_logits_forward_cpu(logits, targets)


def bce_with_logits_backward(dloss, cache):
    if _cuda.is_device_array(cache.logits):
        return bce_with_logits_backward_cuda(dloss, cache)
    return bce_with_logits_backward_cpu(dloss, cache)


# ---------------------------------------------------------------------------------------------------------------


def tolerances(logits, dloss):
    """(loss atol, dlogits atol) for float32 versions vs a float64 reference.

    Each l[i, k] rounds quantities of size max|x| (x y, max(x, 0) - x y; log1p(exp) <= log 2): f32_tol(1,
    scale=max(1, max|x|)); a row sums K of them in float32, adding f32_tol(K, scale=max l). The mean inherits the
    same figure. sigmoid - y is a few roundings of numbers <= 1: f32_tol(1) times |dloss| / (N K).
    """
    K = int(logits.shape[-1])
    big = max(1.0, float(np.abs(logits).max(initial=0.0)))
    loss_tol = _checks.f32_tol(1, scale=big) + _checks.f32_tol(K, scale=2 * big + 1)
    return loss_tol, _checks.f32_tol(1) * abs(dloss) / max(logits.size, 1)


def main(argv=None):
    args = _checks.lab_options("bce", argv)
    rep = _checks.Report("bce_with_logits")
    r = _checks.rng(0)
    N, K = (8 * 128, 64) if args.size == "base" else (7, 5)  # a multi-label head: one row per example, K labels
    x = (r.standard_normal((N, K)) * 4).astype(np.float32)
    y = (r.random((N, K)) < 0.3).astype(np.float32)
    loss64, c64 = bce_with_logits_forward_ref(x.astype(np.float64), y.astype(np.float64))
    dx64 = bce_with_logits_backward_ref(1.0, c64)
    tol_l, tol_g = tolerances(x, 1.0)
    loss, c = bce_with_logits_forward_cpu(x, y)
    rep.check("cpu", "loss", loss, loss64, atol=tol_l)
    rep.check("cpu", "dlogits", bce_with_logits_backward_cpu(1.0, c), dx64, atol=tol_g)

    if _cuda.available():
        n_small = 16 if _cuda.SIMULATOR else N
        xs, ys = np.ascontiguousarray(x[:n_small]), np.ascontiguousarray(y[:n_small])
        ls64, cs64 = bce_with_logits_forward_ref(xs.astype(np.float64), ys.astype(np.float64))
        tol_l, tol_g = tolerances(xs, 1.0)
        ld, cd = bce_with_logits_forward_cuda(_cuda.to_device(xs), _cuda.to_device(ys))
        rep.check("cuda", "loss", float(_cuda.to_host(ld)), ls64, atol=tol_l)  # a 0-d device array
        rep.check("cuda", "dlogits", _cuda.to_host(bce_with_logits_backward_cuda(1.0, cd)),
                  bce_with_logits_backward_ref(1.0, cs64), atol=tol_g)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark: forward reads x and y; backward reads x, y and writes dx
    rep.bench("ref(numpy)", lambda: bce_with_logits_forward_ref(x, y), nbytes=2 * x.nbytes)
    rep.bench("cpu", lambda: bce_with_logits_forward_cpu(x, y), nbytes=2 * x.nbytes)
    rep.bench("ref bwd", lambda: bce_with_logits_backward_ref(1.0, c), nbytes=3 * x.nbytes)
    rep.bench("cpu bwd", lambda: bce_with_logits_backward_cpu(1.0, c), nbytes=3 * x.nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cuda_ = _cuda.get_cuda()
        xd, yd = _cuda.to_device(x), _cuda.to_device(y)
        rep.bench("cuda", lambda: bce_with_logits_forward_cuda(xd, yd), nbytes=2 * x.nbytes, sync=cuda_.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
