"""Cross-entropy over a vocabulary, fused with log-softmax (the masked-language-model loss).

Forward, for logits x (N, V) and integer targets t (N,), rows whose target is `ignore_index` do not count:
    lse_i  = m_i + log(sum_v exp(x[i, v] - m_i)),   m_i = max_v x[i, v]     (log-sum-exp, shifted so exp <= 1)
    loss_i = lse_i - x[i, t_i]                                               (= -log softmax(x_i)[t_i])
    loss   = (1 / n) * sum_{i counted} loss_i,       n = #{i : t_i != ignore_index}
Derivative:
    dloss/dx[i, v] = (softmax(x_i)[v] - [v == t_i]) / n  on counted rows,  0 on ignored rows
    with softmax(x_i)[v] = exp(x[i, v] - lse_i), recomputed in backward from the cached lse.
When no row counts, loss = 0.0 and the gradient is zero (torch's F.cross_entropy returns NaN there: 0 / 0).

Memory: the cache keeps a reference to the logits, the targets and one float per row (lse). It never holds an
(N, V) probability array: at B=8, T=128, V=30522 that would be 125 MB.

Versions:
    cross_entropy_forward_ref / _backward_ref     NumPy, float32 or float64, written for reading
    cross_entropy_forward_cpu / _backward_cpu     Numba, prange over rows; ignored rows are skipped (in masked-LM
                                                  training ~85% of rows are ignored); float32 sums; exp by
                                                  _f32math.exp_f32 (the correctly rounded float32 exp, <= 1 ulp and
                                                  only within ~1e-14 of a tie) in loops that vectorise: the
                                                  forward writes exp(x - m) to a row buffer, then sums it in order
    cross_entropy_forward_cuda / _backward_cuda   numba.cuda, one block per row, shared-memory reductions for the
                                                  row max and sum(exp); the N row losses are copied back and summed
                                                  on the host in float64
Cache: CrossEntropyCache(logits, targets, lse, ignore_index, n_counted).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda
from ._f32math import exp_f32, row_max, row_sum

ZERO = np.float32(0.0)
NEG_INF = np.float32(-np.inf)


class CrossEntropyCache(NamedTuple):
    logits: np.ndarray   # (N, V) the input (a reference, not a copy)
    targets: np.ndarray  # (N,) int64 target ids
    lse: np.ndarray      # (N,) float32 log-sum-exp of each row (0 on ignored rows in the fast versions)
    ignore_index: int    # target value of rows that do not count
    n_counted: int       # number of rows that count (the divisor of the mean); CUDA: a (1,) float64 device array


# ---------------------------------------------------------------------------------------------------------------
# argument checks


def _check(logits, targets, ignore_index):
    _checks.check_array("logits", logits, ndim=2)
    N, V = tuple(logits.shape)
    if V < 1:
        raise ValueError(f"logits: expected at least one class (V >= 1), got shape {(N, V)}")
    if not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    t = _cuda.to_host(targets) if _cuda.is_device_array(targets) else targets
    _checks.check_array("targets", t, dtype=(np.int32, np.int64), ndim=1, shape=(N,), contiguous=False)
    _checks.check_ids("targets", t, V, ignore=int(ignore_index))
    t = np.ascontiguousarray(t, dtype=np.int64)
    return t, int(np.count_nonzero(t != ignore_index))


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def cross_entropy_forward_ref(logits, targets, ignore_index=-100):
    x = logits                                                         # (N, V)
    targets = np.asarray(targets, dtype=np.int64)                      # (N,)
    counted = targets != ignore_index                                  # (N,) bool
    m = x.max(axis=-1, keepdims=True)                                  # (N, 1)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))                 # (N,)
    safe_t = np.where(counted, targets, 0)                             # (N,) any valid id on ignored rows
    loss_rows = lse - x[np.arange(x.shape[0]), safe_t]                 # (N,) -log p(target)
    n = int(counted.sum())
    loss = float(loss_rows[counted].sum() / n) if n else 0.0
    return loss, CrossEntropyCache(x, targets, lse, ignore_index, n)


def cross_entropy_backward_ref(dloss, cache):
    x, targets, lse, ignore_index, n = cache
    if n == 0:
        return np.zeros_like(x)
    counted = targets != ignore_index
    # loss_i = lse_i - x[i, t_i]  ->  dloss_i/dx[i, v] = softmax(x_i)[v] - [v == t_i]
    dx = np.exp(x - lse[:, None])                                      # (N, V) softmax
    rows = np.nonzero(counted)[0]
    dx[rows, targets[rows]] -= 1.0
    dx[~counted] = 0.0
    return (dx * (dloss / n)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True)
def _fwd_cpu(x, targets, ignore_index, lse, row_loss):
    # x (N, V) float32, targets (N,) int64 -> lse (N,), row_loss (N,) float32
    N, V = x.shape
    for i in prange(N):
        t = targets[i]
        if t == ignore_index:
            lse[i] = ZERO
            row_loss[i] = ZERO
            continue
        m = row_max(x[i])
        buf = np.empty(V, np.float32)      # exp(x - m) first (this loop vectorises), then summed (vectorised)
        for v in range(V):
            buf[v] = exp_f32(x[i, v] - m)
        s = row_sum(buf)
        lse[i] = m + math.log(s)
        row_loss[i] = lse[i] - x[i, t]


@njit(cache=True, parallel=True)
def _bwd_cpu(x, targets, ignore_index, lse, scale, dx):
    # scale = dloss / n;  dx[i, v] = (exp(x[i, v] - lse_i) - [v == t_i]) * scale on counted rows, else 0
    N, V = x.shape
    for i in prange(N):
        t = targets[i]
        if t == ignore_index:
            for v in range(V):
                dx[i, v] = ZERO
            continue
        l = lse[i]
        for v in range(V):
            dx[i, v] = exp_f32(x[i, v] - l) * scale                      # softmax(x_i)[v] / n * dloss
        dx[i, t] -= scale


def cross_entropy_forward_cpu(logits, targets, ignore_index=-100):
    t, n = _check(logits, targets, ignore_index)
    N = logits.shape[0]
    lse = np.empty(N, np.float32)
    row_loss = np.empty(N, np.float32)
    _fwd_cpu(logits, t, np.int64(ignore_index), lse, row_loss)
    loss = float(row_loss.sum(dtype=np.float64) / n) if n else 0.0  # ignored rows hold 0
    return loss, CrossEntropyCache(logits, t, lse, int(ignore_index), n)


def cross_entropy_backward_cpu(dloss, cache):
    x, t, lse, ignore_index, n = cache
    dx = np.empty_like(x)
    scale = np.float32(float(dloss) / n) if n else ZERO
    _bwd_cpu(x, t, np.int64(ignore_index), lse, scale, dx)
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
    block_sum, block_max = _cuda.block_reductions()  # shared-memory tree reductions

    @cuda.jit
    def fwd(x, targets, ignore_index, lse, row_loss):
        # one block per row i; threads stride over the V columns
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = x.shape[1]
        target = targets[i]
        if target == ignore_index:  # the same for the whole block: no thread is left waiting at a barrier
            if tid == 0:
                lse[i] = float32(0.0)
                row_loss[i] = float32(0.0)
            return
        buf = cuda.shared.array(THREADS, float32)
        m = NEG_INF
        v = tid
        while v < V:
            m = max(m, x[i, v])
            v += THREADS
        m = block_max(buf, m)
        s = float32(0.0)
        v = tid
        while v < V:
            s += math.exp(x[i, v] - m)
            v += THREADS
        s = block_sum(buf, s)
        if tid == 0:
            l = m + math.log(s)
            lse[i] = l
            row_loss[i] = l - x[i, target]

    @cuda.jit
    def bwd(x, targets, ignore_index, lse, scale_d, dx):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = x.shape[1]
        scale = scale_d[0]  # dloss / n, computed on the device (_cuda.loss_scale)
        target = targets[i]
        ignored = target == ignore_index
        l = lse[i]
        v = tid
        while v < V:
            if ignored:
                dx[i, v] = float32(0.0)
            else:
                g = math.exp(x[i, v] - l)
                if v == target:
                    g -= float32(1.0)
                dx[i, v] = g * scale
            v += THREADS

    return fwd, bwd


def cross_entropy_forward_cuda(logits, targets, ignore_index=-100):
    t, n = _check(logits, targets, ignore_index)
    fwd, _ = _cuda_kernels()
    N = logits.shape[0]
    # host targets are copied over once (and kept in the cache for backward); device int64 ones are used in place
    td = targets if _cuda.is_device_array(targets) and np.dtype(targets.dtype) == np.int64 else _cuda.to_device(t)
    lse = _cuda.device_empty((N,))
    row_loss = _cuda.device_empty((N,))
    if N:
        fwd[N, _cuda.THREADS](logits, td, np.int64(ignore_index), lse, row_loss)
    # the mean over the n counted rows, on the device: a 0-d device array (ignored rows hold 0)
    loss, count = _cuda.mean_loss(row_loss, 1.0, n=n)
    return loss, CrossEntropyCache(logits, td, lse, int(ignore_index), count)


def cross_entropy_backward_cuda(dloss, cache):
    x, td, lse, ignore_index, count = cache
    _, bwd = _cuda_kernels()
    N = x.shape[0]
    dx = _cuda.device_empty(tuple(x.shape))
    scale = _cuda.loss_scale(dloss, count, 1.0)  # dloss may be a device scalar: it is not read back
    if N:
        bwd[N, _cuda.THREADS](x, td, np.int64(ignore_index), lse, scale, dx)
    return dx


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def cross_entropy_forward(logits, targets, ignore_index=-100):
    if _cuda.is_device_array(logits):
        return cross_entropy_forward_cuda(logits, targets, ignore_index)
    return cross_entropy_forward_cpu(logits, targets, ignore_index)


def cross_entropy_backward(dloss, cache):
    if _cuda.is_device_array(cache.logits):
        return cross_entropy_backward_cuda(dloss, cache)
    return cross_entropy_backward_cpu(dloss, cache)


# ---------------------------------------------------------------------------------------------------------------


def tolerances(logits, dloss, n):
    """(loss atol, dlogits atol) for float32 versions vs a float64 reference.

    lse = m + log(s): m is exact, s sums V terms exp(x - m) in (0, 1] in float32 (relative error ~ eps sqrt(V)),
    which log turns into an absolute error f32_tol(V); the additions m + log(s) and lse - x[i, t] round quantities
    of size max|x|, f32_tol(1, scale=max|x|). A row loss, and so the mean, is good to the sum of the two. Each
    softmax entry p = exp(x - lse) <= 1 inherits that error in its exponent (a relative error of p), so the
    gradient is good to the same figure times |dloss| / n.
    """
    V = int(logits.shape[-1])
    big = max(1.0, float(np.abs(logits).max(initial=0.0)))
    tol = _checks.f32_tol(V) + _checks.f32_tol(1, scale=big)
    return tol, tol * abs(dloss) / max(n, 1)


def main(argv=None):
    args = _checks.lab_options("cross_entropy", argv)
    rep = _checks.Report("cross_entropy")
    r = _checks.rng(0)
    N, V = (8 * 128, 30522) if args.size == "base" else (32, 301)
    x = (r.standard_normal((N, V)) * 3).astype(np.float32)
    t = r.integers(0, V, N).astype(np.int64)
    t[r.random(N) < 0.85] = -100  # masked LM: 15% of the positions count
    x64 = x.astype(np.float64)
    loss64, c64 = cross_entropy_forward_ref(x64, t)
    dx64 = cross_entropy_backward_ref(1.0, c64)
    tol_l, tol_g = tolerances(x, 1.0, c64.n_counted)
    loss, c = cross_entropy_forward_cpu(x, t)
    rep.check("cpu", "loss", loss, loss64, atol=tol_l)
    rep.check("cpu", "dlogits", cross_entropy_backward_cpu(1.0, c), dx64, atol=tol_g)

    if _cuda.available():
        n_small = 16 if _cuda.SIMULATOR else N
        Vs = 1000 if _cuda.SIMULATOR else V
        xs, ts = np.ascontiguousarray(x[:n_small, :Vs]), np.where(t[:n_small] < Vs, t[:n_small], 1)
        ls64, cs64 = cross_entropy_forward_ref(xs.astype(np.float64), ts)
        tol_l, tol_g = tolerances(xs, 1.0, cs64.n_counted)
        ld, cd = cross_entropy_forward_cuda(_cuda.to_device(xs), ts)
        rep.check("cuda", "loss", float(_cuda.to_host(ld)), ls64, atol=tol_l)  # a 0-d device array
        rep.check("cuda", "dlogits", _cuda.to_host(cross_entropy_backward_cuda(1.0, cd)),
                  cross_entropy_backward_ref(1.0, cs64), atol=tol_g)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark at (B*T, V) = (1024, 30522). forward reads x (only the counted rows in cpu); backward reads x and
    # writes dx. The GB/s figures count the full (N, V) traffic for both, so cpu's skipping shows as a higher rate.
    t_all = r.integers(0, V, N).astype(np.int64)
    c_all = cross_entropy_forward_cpu(x, t_all)[1]
    rep.bench("ref(numpy)", lambda: cross_entropy_forward_ref(x, t), nbytes=x.nbytes)
    rep.bench("cpu 15%", lambda: cross_entropy_forward_cpu(x, t), nbytes=x.nbytes)
    rep.bench("cpu 100%", lambda: cross_entropy_forward_cpu(x, t_all), nbytes=x.nbytes)
    c_ref = cross_entropy_forward_ref(x, t_all)[1]
    rep.bench("ref bwd", lambda: cross_entropy_backward_ref(1.0, c_ref), nbytes=2 * x.nbytes)
    rep.bench("cpu bwd 100%", lambda: cross_entropy_backward_cpu(1.0, c_all), nbytes=2 * x.nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cuda_ = _cuda.get_cuda()
        xd, td = _cuda.to_device(x), _cuda.to_device(t_all)
        cd = cross_entropy_forward_cuda(xd, td)[1]
        rep.bench("cuda", lambda: cross_entropy_forward_cuda(xd, td), nbytes=x.nbytes, sync=cuda_.synchronize)
        rep.bench("cuda bwd", lambda: cross_entropy_backward_cuda(1.0, cd), nbytes=2 * x.nbytes,
                  sync=cuda_.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
