"""The distillation loss: KL(teacher || student) between temperature-softened distributions (DistilBERT's L_ce).

Forward, for student logits s (N, V), teacher logits z (N, V), temperature T > 0 and a row selection (N,):
    log p_s[i, v] = s[i, v] / T - lse(s_i / T)          lse(y) = max(y) + log(sum_v exp(y_v - max(y)))
    log p_t[i, v] = z[i, v] / T - lse(z_i / T)
    loss = T^2 * (1 / n) * sum_{selected i} sum_v p_t[i, v] * (log p_t[i, v] - log p_s[i, v]),   n = #selected
(0 * log 0 = 0: log p_t is computed from the logits, never as log(p_t), so an underflowed p_t gives 0 * finite.)
This is torch's  F.kl_div(F.log_softmax(s[sel] / T, -1), F.softmax(z[sel] / T, -1), reduction="batchmean") * T**2,
the line in DistilBERT's training code. The T^2 keeps the gradient's size independent of T (Hinton et al. 2015).
Derivative (the teacher gets none):
    dloss/ds[i, v] = T^2 / n * (1/T) * (p_s[i, v] - p_t[i, v]) = T * (p_s - p_t) / n    on selected rows, else 0
    (from -sum_u p_t[u] d log p_s[u]/ds[v] = -(p_t[v] - p_s[v] * sum_u p_t[u]) / T and sum_u p_t[u] = 1)
When no row is selected, loss = 0.0 and the gradient is zero (torch returns NaN there: 0 / 0).

Versions:
    distill_kl_forward_ref / _backward_ref     NumPy, float32 or float64, written for reading
    distill_kl_forward_cpu / _backward_cpu     Numba, prange over rows, unselected rows skipped, float32 sums;
                                               exp by _f32math.exp_f32 (the correctly rounded float32 exp, <= 1 ulp
                                               and only within ~1e-14 of a tie), written to a row buffer in loops
                                               that vectorise, then summed (_f32math.row_sum, vectorised)
    (fast=True on the CPU versions)            opt-in fast math (MINIDISTIL_FAST_MATH=1 or fast=True): exp by
                                               _f32math.exp_fast (relative error E <= 2.5e-7, float32, fewer
                                               operations than exp_f32), the same kernels and row buffers. Error
                                               bounds: each lse within E, p within 2E relative, so the row KL
                                               within 2E (sum_v p_t |log p_t - log p_s| + 1) and ds within
                                               |scale| 2E (p_s + p_t)
    distill_kl_forward_cuda / _backward_cuda   numba.cuda, one block per row, shared-memory reductions for the two
                                               row maxima, the two sums of exp and the KL sum; the N row losses
                                               are copied back and summed on the host in float64
Cache: DistillKLCache(student, teacher, temperature, selected, lse_s, lse_t, n_selected): the logits are kept by
reference and only two floats per row are added; p_s and p_t are recomputed in backward.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda, _f32math
from ._f32math import exp_f32, exp_fast, row_max, row_sum

ZERO = np.float32(0.0)
NEG_INF = np.float32(-np.inf)


class DistillKLCache(NamedTuple):
    student: np.ndarray   # (N, V) student logits (a reference)
    teacher: np.ndarray   # (N, V) teacher logits (a reference)
    temperature: float    # T
    selected: np.ndarray  # (N,) bool (on the device: uint8, or the caller's device mask): rows that count
    lse_s: np.ndarray     # (N,) float32 lse(s_i / T) (0 on unselected rows in the fast versions)
    lse_t: np.ndarray     # (N,) float32 lse(z_i / T)
    n_selected: int       # the divisor of the mean; CUDA: a (1,) float64 device array


def _check(student, teacher, temperature, mask):
    _checks.check_array("student", student, ndim=2)
    _checks.check_array("teacher", teacher, ndim=2)
    _checks.check_same_shape("student", student, "teacher", teacher)
    N, V = tuple(student.shape)
    if V < 1:
        raise ValueError(f"student: expected at least one class (V >= 1), got shape {(N, V)}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    sel = _checks.check_row_mask("mask", mask, N)
    return sel, int(np.count_nonzero(sel))


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def _log_softmax_ref(y):
    m = y.max(axis=-1, keepdims=True)                          # (N, 1)
    lse = m[:, 0] + np.log(np.exp(y - m).sum(axis=-1))         # (N,)
    return y - lse[:, None], lse


def distill_kl_forward_ref(student, teacher, temperature, mask=None):
    T = temperature
    sel = np.ones(student.shape[0], bool) if mask is None else np.asarray(mask) != 0   # (N,)
    logp_s, lse_s = _log_softmax_ref(student / T)               # (N, V), (N,)
    logp_t, lse_t = _log_softmax_ref(teacher / T)
    kl_rows = (np.exp(logp_t) * (logp_t - logp_s)).sum(axis=-1)  # (N,)
    n = int(sel.sum())
    loss = float(T * T * kl_rows[sel].sum() / n) if n else 0.0
    return loss, DistillKLCache(student, teacher, T, sel, lse_s, lse_t, n)


def distill_kl_backward_ref(dloss, cache):
    s, z, T, sel, lse_s, lse_t, n = cache
    if n == 0:
        return np.zeros_like(s)
    # loss = T^2 / n * sum p_t (log p_t - log p_s)  ->  dloss/ds = T / n * (p_s - p_t)
    p_s = np.exp(s / T - lse_s[:, None])
    p_t = np.exp(z / T - lse_t[:, None])
    ds = (dloss * T / n) * (p_s - p_t)
    ds[~sel] = 0.0
    return ds.astype(s.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, inline="always")
def _row_lse(x, i, inv_t, buf, fast):
    # lse(x_i / T) with the max taken first: m / T + log(sum exp((x - m) / T)); the exps go to buf (V,) first
    # (that loop vectorises), then are summed (vectorised). fast: exp_fast instead of the exact exp_f32
    V = x.shape[1]
    m = row_max(x[i])
    if fast:
        for v in range(V):
            buf[v] = exp_fast((x[i, v] - m) * inv_t)
    else:
        for v in range(V):
            buf[v] = exp_f32((x[i, v] - m) * inv_t)
    return m * inv_t + math.log(row_sum(buf))


@njit(cache=True, parallel=True)
def _fwd_cpu(s, z, inv_t, sel, lse_s, lse_t, row_kl, fast):
    # row_kl[i] = sum_v p_t (log p_t - log p_s), without the T^2 / n (applied on the host)
    N, V = s.shape
    for i in prange(N):
        if not sel[i]:
            lse_s[i] = ZERO
            lse_t[i] = ZERO
            row_kl[i] = ZERO
            continue
        buf = np.empty(V, np.float32)
        ls = _row_lse(s, i, inv_t, buf, fast)
        lt = _row_lse(z, i, inv_t, buf, fast)
        if fast:
            for v in range(V):
                log_pt = z[i, v] * inv_t - lt
                buf[v] = exp_fast(log_pt) * (log_pt - (s[i, v] * inv_t - ls))   # p_t (log p_t - log p_s)
        else:
            for v in range(V):
                log_pt = z[i, v] * inv_t - lt
                buf[v] = exp_f32(log_pt) * (log_pt - (s[i, v] * inv_t - ls))    # p_t (log p_t - log p_s)
        lse_s[i] = ls
        lse_t[i] = lt
        row_kl[i] = row_sum(buf)


@njit(cache=True, parallel=True)
def _bwd_cpu(s, z, inv_t, sel, lse_s, lse_t, scale, ds, fast):
    # scale = dloss * T / n;  ds = scale * (p_s - p_t) on selected rows, else 0
    N, V = s.shape
    for i in prange(N):
        if not sel[i]:
            for v in range(V):
                ds[i, v] = ZERO
            continue
        ls = lse_s[i]
        lt = lse_t[i]
        if fast:
            for v in range(V):
                ds[i, v] = scale * (exp_fast(s[i, v] * inv_t - ls) - exp_fast(z[i, v] * inv_t - lt))
        else:
            for v in range(V):
                ds[i, v] = scale * (exp_f32(s[i, v] * inv_t - ls) - exp_f32(z[i, v] * inv_t - lt))  # scale (p_s - p_t)


def _fast(fast):
    return _f32math.fast_math_default() if fast is None else bool(fast)


def _finish(row_kl_host, T, n):
    return float(T * T * row_kl_host.sum(dtype=np.float64) / n) if n else 0.0  # unselected rows hold 0


def distill_kl_forward_cpu(student, teacher, temperature, mask=None, fast=None):
    sel, n = _check(student, teacher, temperature, mask)
    N = student.shape[0]
    lse_s, lse_t, row_kl = (np.empty(N, np.float32) for _ in range(3))
    _fwd_cpu(student, teacher, np.float32(1.0 / temperature), sel, lse_s, lse_t, row_kl, _fast(fast))
    T = float(temperature)
    return _finish(row_kl, T, n), DistillKLCache(student, teacher, T, sel, lse_s, lse_t, n)


def distill_kl_backward_cpu(dloss, cache, fast=None):
    s, z, T, sel, lse_s, lse_t, n = cache
    ds = np.empty_like(s)
    scale = np.float32(float(dloss) * T / n) if n else ZERO
    _bwd_cpu(s, z, np.float32(1.0 / T), sel, lse_s, lse_t, scale, ds, _fast(fast))
    return ds


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

    @cuda.jit(device=True)
    def row_lse(buf, x, i, inv_t):
        tid = cuda.threadIdx.x
        V = x.shape[1]
        m = NEG_INF
        v = tid
        while v < V:
            m = max(m, x[i, v])
            v += THREADS
        m = block_max(buf, m)
        acc = float32(0.0)
        v = tid
        while v < V:
            acc += math.exp((x[i, v] - m) * inv_t)
            v += THREADS
        acc = block_sum(buf, acc)
        return m * inv_t + math.log(acc)

    @cuda.jit
    def fwd(s, z, inv_t, sel, lse_s, lse_t, row_kl):
        # one block per row i; threads stride over the V columns
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = s.shape[1]
        if sel[i] == 0:  # the same for the whole block: no thread is left waiting at a barrier
            if tid == 0:
                lse_s[i] = float32(0.0)
                lse_t[i] = float32(0.0)
                row_kl[i] = float32(0.0)
            return
        buf = cuda.shared.array(THREADS, float32)
        ls = row_lse(buf, s, i, inv_t)
        lt = row_lse(buf, z, i, inv_t)
        acc = float32(0.0)
        v = tid
        while v < V:
            log_pt = z[i, v] * inv_t - lt
            log_ps = s[i, v] * inv_t - ls
            acc += math.exp(log_pt) * (log_pt - log_ps)
            v += THREADS
        acc = block_sum(buf, acc)
        if tid == 0:
            lse_s[i] = ls
            lse_t[i] = lt
            row_kl[i] = acc

    @cuda.jit
    def bwd(s, z, inv_t, sel, lse_s, lse_t, scale_d, ds):
        i = cuda.blockIdx.x
        V = s.shape[1]
        scale = scale_d[0]  # dloss T / n, computed on the device (_cuda.loss_scale)
        ls = lse_s[i]
        lt = lse_t[i]
        v = cuda.threadIdx.x
        while v < V:
            if sel[i] == 0:
                ds[i, v] = float32(0.0)
            else:
                ds[i, v] = scale * (math.exp(s[i, v] * inv_t - ls) - math.exp(z[i, v] * inv_t - lt))
            v += THREADS

    return fwd, bwd


def distill_kl_forward_cuda(student, teacher, temperature, mask=None):
    sel_d = _check_cuda(student, teacher, temperature, mask)
    fwd, _ = _cuda_kernels()
    N = student.shape[0]
    lse_s, lse_t, row_kl = (_cuda.device_empty((N,)) for _ in range(3))
    if N:
        fwd[N, _cuda.THREADS](student, teacher, np.float32(1.0 / temperature), sel_d, lse_s, lse_t, row_kl)
    T = float(temperature)
    # T^2 times the mean over the selected rows, on the device: a 0-d device array (unselected rows hold 0)
    loss, count = _cuda.mean_loss(row_kl, T * T, sel=sel_d)
    return loss, DistillKLCache(student, teacher, T, sel_d, lse_s, lse_t, count)


def _check_cuda(student, teacher, temperature, mask):
    """The checks of _check, and the row selection as a device array: a device mask is used in place (no copy
    back), a host one copied over once, None filled with ones on the device."""
    if mask is None or not _cuda.is_device_array(mask):
        sel, _ = _check(student, teacher, temperature, mask)
        return _cuda.ones_mask(sel.size) if mask is None else _cuda.to_device(sel.astype(np.uint8))
    _check(student, teacher, temperature, None)
    return _checks.check_device_row_mask("mask", mask, tuple(student.shape)[0])


def distill_kl_backward_cuda(dloss, cache):
    s, z, T, sel_d, lse_s, lse_t, count = cache
    _, bwd = _cuda_kernels()
    N = s.shape[0]
    ds = _cuda.device_empty(tuple(s.shape))
    scale = _cuda.loss_scale(dloss, count, T)  # dloss may be a device scalar: it is not read back
    if N:
        bwd[N, _cuda.THREADS](s, z, np.float32(1.0 / T), sel_d, lse_s, lse_t, scale, ds)
    return ds


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def distill_kl_forward(student, teacher, temperature, mask=None, fast=None):
    """fast: opt-in fast exp on the CPU (None: follow MINIDISTIL_FAST_MATH); the CUDA version ignores it."""
    if _cuda.is_device_array(student):
        return distill_kl_forward_cuda(student, teacher, temperature, mask)
    return distill_kl_forward_cpu(student, teacher, temperature, mask, fast)


def distill_kl_backward(dloss, cache, fast=None):
    if _cuda.is_device_array(cache.student):
        return distill_kl_backward_cuda(dloss, cache)
    return distill_kl_backward_cpu(dloss, cache, fast)


# ---------------------------------------------------------------------------------------------------------------


def tolerances(student, teacher, temperature, dloss, n):
    """(loss atol, dstudent atol) for float32 versions vs a float64 reference.

    Each lse(x / T) is good to f32_tol(V) (the float32 sum of V terms in (0, 1], then log) plus f32_tol(1,
    scale=max|x| / T) (roundings of quantities of that size: x * (1/T), m / T + log). d = log p_t - log p_s carries
    the errors of both lse; the row KL is a p_t-weighted sum of d (sum p_t = 1), so it carries 2 lse errors, plus
    p_t's relative error (the same figure) times W = max_i sum_v p_t |d|, plus the float32 sum of V terms whose
    absolute values add up to W: f32_tol(V, scale=W). W is measured on the float64 reference. The loss is the mean
    times T^2. Each p_s, p_t <= 1 has a relative error of its exponent's error, so the gradient is good to
    T |dloss| / n times twice the lse figure.
    """
    V = int(student.shape[-1])
    T = float(temperature)
    big = max(1.0, float(max(np.abs(student).max(initial=0.0), np.abs(teacher).max(initial=0.0))) / T)
    lse_tol = _checks.f32_tol(V) + _checks.f32_tol(1, scale=big)
    logp_s, _ = _log_softmax_ref(student.astype(np.float64) / T)
    logp_t, _ = _log_softmax_ref(teacher.astype(np.float64) / T)
    W = float((np.exp(logp_t) * np.abs(logp_t - logp_s)).sum(axis=-1).max(initial=0.0))
    loss_tol = T * T * (lse_tol * (2 + W) + _checks.f32_tol(V, scale=W))
    grad_tol = 2 * lse_tol * T * abs(dloss) / max(n, 1)
    return loss_tol, grad_tol


def main(argv=None):
    args = _checks.lab_options("distill_kl", argv)
    rep = _checks.Report("distill_kl")
    r = _checks.rng(0)
    N, V = (8 * 128, 30522) if args.size == "base" else (16, 301)
    T = 2.0
    s = (r.standard_normal((N, V)) * 3).astype(np.float32)
    z = (s + r.standard_normal((N, V)) * 2).astype(np.float32)  # a teacher that roughly agrees with the student
    mask = r.random(N) < 0.9  # padding rows do not count
    loss64, c64 = distill_kl_forward_ref(s.astype(np.float64), z.astype(np.float64), T, mask)
    ds64 = distill_kl_backward_ref(1.0, c64)
    tol_l, tol_g = tolerances(s, z, T, 1.0, c64.n_selected)
    loss, c = distill_kl_forward_cpu(s, z, T, mask)
    rep.check("cpu", "loss", loss, loss64, atol=tol_l)
    rep.check("cpu", "dstudent", distill_kl_backward_cpu(1.0, c), ds64, atol=tol_g)

    if _cuda.available():
        n_small = 16 if _cuda.SIMULATOR else N
        Vs = 1000 if _cuda.SIMULATOR else V
        ss, zs, ms = np.ascontiguousarray(s[:n_small, :Vs]), np.ascontiguousarray(z[:n_small, :Vs]), mask[:n_small]
        ls64, cs64 = distill_kl_forward_ref(ss.astype(np.float64), zs.astype(np.float64), T, ms)
        tol_l, tol_g = tolerances(ss, zs, T, 1.0, cs64.n_selected)
        ld, cd = distill_kl_forward_cuda(_cuda.to_device(ss), _cuda.to_device(zs), T, ms)
        rep.check("cuda", "loss", float(_cuda.to_host(ld)), ls64, atol=tol_l)  # a 0-d device array
        rep.check("cuda", "dstudent", _cuda.to_host(distill_kl_backward_cuda(1.0, cd)),
                  distill_kl_backward_ref(1.0, cs64), atol=tol_g)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark at (B*T, V) = (1024, 30522), every row selected. forward reads s and z; backward reads s, z, writes ds
    c_ref = distill_kl_forward_ref(s, z, T)[1]
    c_cpu = distill_kl_forward_cpu(s, z, T)[1]
    rep.bench("ref(numpy)", lambda: distill_kl_forward_ref(s, z, T), nbytes=2 * s.nbytes)
    rep.bench("cpu", lambda: distill_kl_forward_cpu(s, z, T), nbytes=2 * s.nbytes)
    rep.bench("ref bwd", lambda: distill_kl_backward_ref(1.0, c_ref), nbytes=3 * s.nbytes)
    rep.bench("cpu bwd", lambda: distill_kl_backward_cpu(1.0, c_cpu), nbytes=3 * s.nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cuda_ = _cuda.get_cuda()
        sd, zd = _cuda.to_device(s), _cuda.to_device(z)
        cd = distill_kl_forward_cuda(sd, zd, T)[1]
        rep.bench("cuda", lambda: distill_kl_forward_cuda(sd, zd, T), nbytes=2 * s.nbytes, sync=cuda_.synchronize)
        rep.bench("cuda bwd", lambda: distill_kl_backward_cuda(1.0, cd), nbytes=3 * s.nbytes,
                  sync=cuda_.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
