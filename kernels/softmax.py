"""Softmax and log-softmax over the last axis.

Forward, for one row x of length N (every leading axis is a row: x (..., N) is viewed as (R, N)):
    m = max(x)                                   subtracted first, so exp never overflows
    softmax:      y = exp(x - m) / sum(exp(x - m))
    log_softmax:  y = (x - m) - log(sum(exp(x - m)))
Derivative (the Jacobian of softmax is diag(y) - y y^T):
    softmax:      dx = y * (dy - sum(dy * y))
    log_softmax:  dx = dy - softmax(x) * sum(dy) = dy - exp(y) * sum(dy)

Masking: attention masks add np.finfo(np.float32).min (never -inf, never a magic -10000). With the max subtracted,
a masked entry gives exp(min - m) = 0 exactly, and a row whose entries are all equal (even all equal to the float32
minimum, a fully padded row) gives x - m = 0 everywhere, a uniform row, no NaN. Inputs must be finite: a row of
-inf would give -inf - -inf = NaN, as in torch.

Precision (float32): the sum of N terms in (0, 1], at least one of them 1, has relative error <= N*u (sqrt(N)*u
typically, u = eps32/2); each exp adds a relative error ~ u * (1 + |x - m|) because x - m is rounded first.

Versions:
    softmax_forward_ref / softmax_backward_ref, log_softmax_*_ref      NumPy, float32 or float64
    softmax_forward_cpu / ..._backward_cpu, log_softmax_*_cpu          Numba, prange over rows; both write
                                                                       exp(x - m) into y, sum it, then scale it
                                                                       (or overwrite it) in place; exp by
                                                                       _f32math.exp_f32: the correctly rounded
                                                                       float32 exp (<= 1 ulp, and only within
                                                                       ~1e-14 of a tie), in a loop that vectorises
    softmax_forward_cuda / ..._backward_cuda, log_softmax_*_cuda       numba.cuda, one block per row, max and sums
                                                                       through shared memory
Caches: SoftmaxCache(y), LogSoftmaxCache(y): the output is all either backward needs.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda
from ._f32math import exp_f32, row_dot, row_max, row_sum

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
F32_MIN = np.float32(np.finfo(np.float32).min)  # the masking value, and the start of every running max


class SoftmaxCache(NamedTuple):
    y: np.ndarray  # (..., N) softmax(x)


class LogSoftmaxCache(NamedTuple):
    y: np.ndarray  # (..., N) log_softmax(x); softmax(x) = exp(y)


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def softmax_forward_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))           # (..., N), the max entry gives exp(0) = 1
    y = e / e.sum(axis=-1, keepdims=True)
    return y.astype(x.dtype, copy=False), SoftmaxCache(y.astype(x.dtype, copy=False))


def softmax_backward_ref(dy, cache):
    y = cache.y
    # forward: y = exp(x - m) / sum(exp(x - m))
    return (y * (dy - (dy * y).sum(axis=-1, keepdims=True))).astype(y.dtype, copy=False)


def log_softmax_forward_ref(x):
    z = x - x.max(axis=-1, keepdims=True)
    y = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return y.astype(x.dtype, copy=False), LogSoftmaxCache(y.astype(x.dtype, copy=False))


def log_softmax_backward_ref(dy, cache):
    y = cache.y
    # forward: y = (x - m) - log(sum(exp(x - m)))
    return (dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)).astype(y.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True)
def _softmax_fwd(x, y, log):
    # x, y (R, N): softmax or (log) log_softmax of every row
    R, N = x.shape
    for i in prange(R):
        m = max(F32_MIN, row_max(x[i]))
        # exp(x - m) into y first (a loop without a running sum vectorises), then summed (vectorised order)
        for j in range(N):
            y[i, j] = exp_f32(x[i, j] - m)
        s = row_sum(y[i])
        if log:
            ls = math.log(s)
            for j in range(N):
                y[i, j] = (x[i, j] - m) - ls                 # y = (x - m) - log(sum(exp(x - m)))
        else:
            inv = ONE / s
            for j in range(N):
                y[i, j] *= inv                               # y = exp(x - m) / sum(exp(x - m))


@njit(cache=True, parallel=True)
def _softmax_bwd(dy, y, dx, log):
    R, N = y.shape
    for i in prange(R):
        if log:
            s = row_sum(dy[i])
            for j in range(N):
                dx[i, j] = dy[i, j] - exp_f32(y[i, j]) * s   # dx = dy - softmax(x) * sum(dy)
        else:
            s = row_dot(dy[i], y[i])
            for j in range(N):
                dx[i, j] = y[i, j] * (dy[i, j] - s)          # dx = y * (dy - sum(dy * y))


def _check_x(x):
    _checks.check_array("x", x, ndim=tuple(range(1, 8)))
    if tuple(x.shape)[-1] < 1:
        raise ValueError(f"x: expected a last axis of at least 1 element, got shape {tuple(x.shape)}")


def _rows(a):
    n = tuple(a.shape)[-1]
    return a.reshape(a.size // n, n)


def _forward_cpu(x, log):
    _check_x(x)
    y = np.empty_like(x)
    _softmax_fwd(_rows(x), _rows(y), log)
    return y


def _backward_cpu(dy, y, log):
    _checks.check_array("dy", dy, shape=tuple(y.shape))
    dx = np.empty_like(y)
    _softmax_bwd(_rows(dy), _rows(y), _rows(dx), log)
    return dx


def softmax_forward_cpu(x):
    y = _forward_cpu(x, False)
    return y, SoftmaxCache(y)


def softmax_backward_cpu(dy, cache):
    return _backward_cpu(dy, cache.y, False)


def log_softmax_forward_cpu(x):
    y = _forward_cpu(x, True)
    return y, LogSoftmaxCache(y)


def log_softmax_backward_cpu(dy, cache):
    return _backward_cpu(dy, cache.y, True)


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32
    THREADS = _cuda.THREADS

    @cuda.jit(device=True)
    def block_reduce(buf, t, v, is_max):
        # every thread calls this with its partial v; all get the block's max (is_max) or sum back
        buf[t] = v
        cuda.syncthreads()
        s = THREADS // 2
        while s > 0:
            if t < s:
                buf[t] = max(buf[t], buf[t + s]) if is_max else buf[t] + buf[t + s]
            cuda.syncthreads()
            s //= 2
        total = buf[0]
        cuda.syncthreads()  # every thread has read buf[0] before buf is written again
        return total

    @cuda.jit
    def fwd(x, y, N, log):
        # one block per row; x, y flat (R*N,)
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float32)
        base = i * N
        m = F32_MIN
        j = t
        while j < N:
            m = max(m, x[base + j])
            j += THREADS
        m = block_reduce(buf, t, m, True)
        s = float32(0.0)
        j = t
        while j < N:
            s += math.exp(x[base + j] - m)
            j += THREADS
        s = block_reduce(buf, t, s, False)
        ls = math.log(s)
        inv = float32(1.0) / s
        j = t
        while j < N:
            if log:
                y[base + j] = (x[base + j] - m) - ls
            else:
                y[base + j] = math.exp(x[base + j] - m) * inv
            j += THREADS

    @cuda.jit
    def bwd(dy, y, dx, N, log):
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float32)
        base = i * N
        s = float32(0.0)
        j = t
        while j < N:
            s += dy[base + j] if log else dy[base + j] * y[base + j]
            j += THREADS
        s = block_reduce(buf, t, s, False)
        j = t
        while j < N:
            if log:
                dx[base + j] = dy[base + j] - math.exp(y[base + j]) * s
            else:
                dx[base + j] = y[base + j] * (dy[base + j] - s)
            j += THREADS

    return fwd, bwd


def _forward_cuda(x, log):
    _check_x(x)
    fwd, _ = _cuda_kernels()
    N = tuple(x.shape)[-1]
    y = _cuda.device_empty(x.shape)
    rows = x.size // N if N else 0
    if rows:  # an empty batch: no launch (a GPU rejects a grid of 0 blocks)
        fwd[rows, _cuda.THREADS](x.reshape(-1), y.reshape(-1), N, log)
    return y


def _backward_cuda(dy, y, log):
    _checks.check_array("dy", dy, shape=tuple(y.shape))
    _, bwd = _cuda_kernels()
    N = tuple(y.shape)[-1]
    dx = _cuda.device_empty(y.shape)
    rows = y.size // N if N else 0
    if rows:
        bwd[rows, _cuda.THREADS](dy.reshape(-1), y.reshape(-1), dx.reshape(-1), N, log)
    return dx


def softmax_forward_cuda(x):
    y = _forward_cuda(x, False)
    return y, SoftmaxCache(y)


def softmax_backward_cuda(dy, cache):
    return _backward_cuda(dy, cache.y, False)


def log_softmax_forward_cuda(x):
    y = _forward_cuda(x, True)
    return y, LogSoftmaxCache(y)


def log_softmax_backward_cuda(dy, cache):
    return _backward_cuda(dy, cache.y, True)


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def softmax_forward(x):
    return softmax_forward_cuda(x) if _cuda.is_device_array(x) else softmax_forward_cpu(x)


def softmax_backward(dy, cache):
    return softmax_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else softmax_backward_cpu(dy, cache)


def log_softmax_forward(x):
    return log_softmax_forward_cuda(x) if _cuda.is_device_array(x) else log_softmax_forward_cpu(x)


def log_softmax_backward(dy, cache):
    if _cuda.is_device_array(dy):
        return log_softmax_backward_cuda(dy, cache)
    return log_softmax_backward_cpu(dy, cache)


# ---------------------------------------------------------------------------------------------------------------
# tolerances (used by main() and the tests)


def tolerances(x64, dy64):
    """Absolute tolerances (softmax y, softmax dx, log_softmax y, log_softmax dx) for float32 results against the
    float64 reference, each float32 backward run on its own float32 forward's cache.

    z = x - m is rounded once (error u*|z|), so exp(z) is off by a relative ~ eps*(1 + |z|); what matters for
    softmax is y * (1 + |z|), which is <= 1 + 1/e whatever the spread of the row, so we use its maximum `yz`.
    softmax y = exp(z) / s: the row sum s (N terms in (0, 1]) adds sqrt(N)*eps relative -> f32_tol(N, scale=yz).
    softmax dx = y * (dy - D), D = sum(dy * y): the forward error of y times |dy - D| <= 2 max|dy|, plus y times
      the error of D (N terms |dy|*y, and the forward's relative error of y): 2*max|dy|*tol_y + ymax*f32_tol(N,
      scale=max|dy|*(yz + ymax)).
    log_softmax y = z - log(s): the rounding of z and of the result (u*(|z| + |y|) <= eps*spread, spread = the
      largest |z| of the entries that do not underflow), and log(s) off by the relative error of s: f32_tol(N) +
      f32_tol(1, scale=spread). Masked entries (y ~ float32 min) carry only their final rounding: the callers
      also pass rtol = f32_tol(1).
    log_softmax dx = dy - exp(y) * S, S = sum(dy): exp(y) <= ymax is off relatively by the log_softmax y error,
      times |S|; S itself sums N terms (f32_tol(N, scale=max|dy|)), times exp(y) <= ymax; plus the final rounding.
    """
    N = x64.shape[-1]
    z = x64 - x64.max(axis=-1, keepdims=True)
    y64, _ = softmax_forward_ref(x64)
    live = y64 > np.finfo(np.float32).tiny
    spread = float(np.abs(z[live]).max(initial=0.0))
    yz = float((y64 * (1 + np.abs(z)))[live].max(initial=0.0))
    ymax = float(y64.max())
    dymax = float(np.abs(dy64).max(initial=0.0))
    smax = float(np.abs(dy64.sum(axis=-1)).max(initial=0.0))
    tol_sm = _checks.f32_tol(N, scale=yz)
    tol_sm_dx = 2 * dymax * tol_sm + ymax * _checks.f32_tol(N, scale=dymax * (yz + ymax))
    tol_ls = _checks.f32_tol(N) + _checks.f32_tol(1, scale=spread)
    tol_ls_dx = ymax * (tol_ls * smax + _checks.f32_tol(N, scale=dymax)) + _checks.f32_tol(1, scale=dymax + smax)
    return tol_sm, tol_sm_dx, tol_ls, tol_ls_dx


# ---------------------------------------------------------------------------------------------------------------


def _validate(rep, version, fwd, bwd, lfwd, lbwd, x, dy, to_dev=lambda a: a, to_host=lambda a: a):
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    tol_sm, tol_sm_dx, tol_ls, tol_ls_dx = tolerances(x64, dy64)
    y64, c64 = softmax_forward_ref(x64)
    l64, lc64 = log_softmax_forward_ref(x64)
    xd, dyd = to_dev(x), to_dev(dy)
    y, c = fwd(xd)
    rep.check(version, "softmax y", to_host(y), y64, atol=tol_sm)
    rep.check(version, "softmax dx", to_host(bwd(dyd, c)), softmax_backward_ref(dy64, c64), atol=tol_sm_dx)
    y, c = lfwd(xd)
    rep.check(version, "logsm y", to_host(y), l64, atol=tol_ls, rtol=_checks.f32_tol(1))
    rep.check(version, "logsm dx", to_host(lbwd(dyd, c)), log_softmax_backward_ref(dy64, lc64), atol=tol_ls_dx)


def main(argv=None):
    args = _checks.lab_options("softmax", argv)
    rep = _checks.Report("softmax")
    r = _checks.rng(0)
    cpu = (softmax_forward_cpu, softmax_backward_cpu, log_softmax_forward_cpu, log_softmax_backward_cpu)
    T, V = (128, 30522) if args.size == "base" else (13, 301)
    att = (r.standard_normal((8 * 12 * T, T)) * 3).astype(np.float32)      # attention scores (B*H*T, T)
    att[:, T * 100 // 128:] = F32_MIN                                       # the last 28 of 128 keys are padding
    dat = r.standard_normal(att.shape).astype(np.float32)
    logits = (r.standard_normal((1024 if T == 128 else 7, V)) * 3).astype(np.float32)  # MLM logits (B*T, V)
    dlog = r.standard_normal(logits.shape).astype(np.float32)
    _validate(rep, "cpu att", *cpu, att, dat)
    _validate(rep, "cpu vocab", *cpu, logits[:64], dlog[:64])  # 64 rows: the float64 reference is 16 MB a row block

    if _cuda.available():
        n = 4 if _cuda.SIMULATOR else None
        cu = (softmax_forward_cuda, softmax_backward_cuda, log_softmax_forward_cuda, log_softmax_backward_cuda)
        _validate(rep, "cuda att", *cu, att[:n], dat[:n], _cuda.to_device, _cuda.to_host)
        vocab = (logits[:n, :1000], dlog[:n, :1000]) if n else (logits[:64], dlog[:64])
        _validate(rep, "cuda vocab", *cu, *vocab, _cuda.to_device, _cuda.to_host)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark: bytes = read x + write y (forward), read dy + y, write dx (backward)
    for name, x, dy in (("att", att, dat), ("vocab", logits, dlog)):
        _, c = softmax_forward_cpu(x)
        rep.bench(f"ref {name}", lambda: softmax_forward_ref(x), nbytes=2 * x.nbytes)
        rep.bench(f"cpu {name}", lambda: softmax_forward_cpu(x), nbytes=2 * x.nbytes)
        rep.bench(f"cpu logsm {name}", lambda: log_softmax_forward_cpu(x), nbytes=2 * x.nbytes)
        rep.bench(f"ref bwd {name}", lambda: softmax_backward_ref(dy, c), nbytes=3 * x.nbytes)
        rep.bench(f"cpu bwd {name}", lambda: softmax_backward_cpu(dy, c), nbytes=3 * x.nbytes)
        if _cuda.available() and not _cuda.SIMULATOR:
            cuda_mod = _cuda.get_cuda()
            xd = _cuda.to_device(x)
            rep.bench(f"cuda {name}", lambda: softmax_forward_cuda(xd), nbytes=2 * x.nbytes,
                      sync=cuda_mod.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
