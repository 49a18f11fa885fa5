"""Hidden-state alignment losses: the cosine-embedding loss (DistilBERT's L_cos) and the mean-squared error.

Cosine loss, for a, b (N, C) and a row selection (N,):
    A_i = |a_i|^2 + 1e-12,   B_i = |b_i|^2 + 1e-12,   cos_i = (a_i . b_i) / sqrt(A_i B_i)     (torch's formula)
    loss = (1 / n) * sum_{selected i} (1 - cos_i),   n = #selected
  = F.cosine_embedding_loss(a[sel], b[sel], torch.ones(n)). Derivative, on selected rows (0 elsewhere):
    dcos_i/da_i = b_i / sqrt(A_i B_i) - cos_i * a_i / A_i,     dcos_i/db_i = a_i / sqrt(A_i B_i) - cos_i * b_i / B_i
    dloss/da_i = -(1/n) dcos_i/da_i,   dloss/db_i = -(1/n) dcos_i/db_i
MSE, over all C elements of the selected rows:
    loss = (1 / (n C)) * sum_{selected i} sum_c (a[i, c] - b[i, c])^2          (= F.mse_loss(a[sel], b[sel]))
    dloss/da = 2 (a - b) / (n C),   dloss/db = -dloss/da   on selected rows, 0 elsewhere
When no row is selected, both losses are 0.0 with zero gradients (torch returns NaN there: a mean over nothing).

Versions:
    cosine_loss_forward_ref / _backward_ref, mse_forward_ref / _backward_ref     NumPy, float32 or float64
    cosine_loss_forward_cpu / _backward_cpu, mse_forward_cpu / _backward_cpu     Numba, prange over rows, float32 sums
    cosine_loss_forward_cuda / _backward_cuda, mse_forward_cuda / _backward_cuda numba.cuda, one block per row,
        shared-memory reductions of a.b, |a|^2, |b|^2 (or of (a - b)^2); the N row losses are copied back and
        summed on the host in float64
Caches: CosineCache(a, b, selected, cos, A, B, n_selected) (three floats per row; 1/sqrt(A B) is recomputed in
backward); MSECache(a, b, selected, n_selected).
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
TWO = np.float32(2.0)
NORM_EPS = np.float32(1e-12)  # added to |a|^2 and |b|^2, as torch's cosine_embedding_loss does (EPSILON = 1e-12)


class CosineCache(NamedTuple):
    a: np.ndarray         # (N, C) (a reference)
    b: np.ndarray         # (N, C)
    selected: np.ndarray  # (N,) bool (on the device: uint8, or the caller's device mask): rows that count
    cos: np.ndarray       # (N,) float32 cos_i (0 on unselected rows in the fast versions)
    A: np.ndarray         # (N,) float32 |a_i|^2 + 1e-12
    B: np.ndarray         # (N,) float32 |b_i|^2 + 1e-12
    n_selected: int       # CUDA: a (1,) float64 device array


class MSECache(NamedTuple):
    a: np.ndarray         # (N, C)
    b: np.ndarray         # (N, C)
    selected: np.ndarray  # (N,) bool (on the device: uint8, or the caller's device mask)
    n_selected: int       # CUDA: a (1,) float64 device array


def _check(a, b, mask):
    _checks.check_array("a", a, ndim=2)
    _checks.check_array("b", b, ndim=2)
    _checks.check_same_shape("a", a, "b", b)
    sel = _checks.check_row_mask("mask", mask, tuple(a.shape)[0])
    return sel, int(np.count_nonzero(sel))


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def cosine_loss_forward_ref(a, b, mask=None):
    sel = np.ones(a.shape[0], bool) if mask is None else np.asarray(mask) != 0   # (N,)
    dot = (a * b).sum(axis=-1)                                                     # (N,)
    A = (a * a).sum(axis=-1) + 1e-12                                               # (N,)
    B = (b * b).sum(axis=-1) + 1e-12
    cos = dot / np.sqrt(A * B)
    n = int(sel.sum())
    loss = float((1.0 - cos[sel]).sum() / n) if n else 0.0
    return loss, CosineCache(a, b, sel, cos, A, B, n)


def cosine_loss_backward_ref(dloss, cache):
    a, b, sel, cos, A, B, n = cache
    if n == 0:
        return np.zeros_like(a), np.zeros_like(b)
    # cos = dot / sqrt(A B)  ->  dcos/da = b / sqrt(A B) - cos a / A,  dcos/db = a / sqrt(A B) - cos b / B
    inv_den = 1.0 / np.sqrt(A * B)[:, None]
    g = -dloss / n * sel[:, None]                                                  # (N, 1) d loss / d cos_i
    da = g * (b * inv_den - cos[:, None] * a / A[:, None])
    db = g * (a * inv_den - cos[:, None] * b / B[:, None])
    return da.astype(a.dtype, copy=False), db.astype(b.dtype, copy=False)


def mse_forward_ref(a, b, mask=None):
    sel = np.ones(a.shape[0], bool) if mask is None else np.asarray(mask) != 0
    d = a[sel] - b[sel]                                                            # (n, C)
    loss = float((d * d).mean()) if d.size else 0.0
    return loss, MSECache(a, b, sel, int(sel.sum()))


def mse_backward_ref(dloss, cache):
    a, b, sel, n = cache
    if n * a.shape[1] == 0:
        return np.zeros_like(a), np.zeros_like(b)
    # loss = mean((a - b)^2)  ->  dloss/da = 2 (a - b) / (n C)
    da = (2.0 * dloss / (n * a.shape[1])) * (a - b) * sel[:, None]
    return da.astype(a.dtype, copy=False), (-da).astype(b.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True)
def _cos_fwd_cpu(a, b, sel, cos, A, B, row_loss):
    N, C = a.shape
    for i in prange(N):
        if not sel[i]:
            cos[i] = ZERO
            A[i] = ONE
            B[i] = ONE
            row_loss[i] = ZERO
            continue
        dot = ZERO
        aa = ZERO
        bb = ZERO
        for c in range(C):
            dot += a[i, c] * b[i, c]
            aa += a[i, c] * a[i, c]
            bb += b[i, c] * b[i, c]
        A[i] = aa + NORM_EPS
        B[i] = bb + NORM_EPS
        cos[i] = dot / math.sqrt(A[i] * B[i])
        row_loss[i] = ONE - cos[i]


@njit(cache=True, parallel=True)
def _cos_bwd_cpu(a, b, sel, cos, A, B, g, da, db):
    # g = -dloss / n;  da = g (b / sqrt(A B) - cos a / A),  db = g (a / sqrt(A B) - cos b / B)
    N, C = a.shape
    for i in prange(N):
        if not sel[i]:
            for c in range(C):
                da[i, c] = ZERO
                db[i, c] = ZERO
            continue
        inv_den = ONE / math.sqrt(A[i] * B[i])
        ca = cos[i] / A[i]
        cb = cos[i] / B[i]
        for c in range(C):
            da[i, c] = g * (b[i, c] * inv_den - ca * a[i, c])
            db[i, c] = g * (a[i, c] * inv_den - cb * b[i, c])


@njit(cache=True, parallel=True)
def _mse_fwd_cpu(a, b, sel, row_loss):
    N, C = a.shape
    for i in prange(N):
        acc = ZERO
        if sel[i]:
            for c in range(C):
                d = a[i, c] - b[i, c]
                acc += d * d
        row_loss[i] = acc


@njit(cache=True, parallel=True)
def _mse_bwd_cpu(a, b, sel, scale, da, db):
    # scale = 2 dloss / (n C);  da = scale (a - b), db = -da on selected rows
    N, C = a.shape
    for i in prange(N):
        for c in range(C):
            g = scale * (a[i, c] - b[i, c]) if sel[i] else ZERO
            da[i, c] = g
            db[i, c] = -g


def cosine_loss_forward_cpu(a, b, mask=None):
    sel, n = _check(a, b, mask)
    N = a.shape[0]
    cos, A, B, row_loss = (np.empty(N, np.float32) for _ in range(4))
    _cos_fwd_cpu(a, b, sel, cos, A, B, row_loss)
    loss = float(row_loss.sum(dtype=np.float64) / n) if n else 0.0
    return loss, CosineCache(a, b, sel, cos, A, B, n)


def cosine_loss_backward_cpu(dloss, cache):
    a, b, sel, cos, A, B, n = cache
    da, db = np.empty_like(a), np.empty_like(b)
    g = np.float32(-float(dloss) / n) if n else ZERO
    _cos_bwd_cpu(a, b, sel, cos, A, B, g, da, db)
    return da, db


def _mse_mean(row_loss_host, n, C):
    return float(row_loss_host.sum(dtype=np.float64) / (n * C)) if n * C else 0.0


def _mse_scale(dloss, n, C):
    return np.float32(2.0 * float(dloss) / (n * C)) if n * C else ZERO


def mse_forward_cpu(a, b, mask=None):
    sel, n = _check(a, b, mask)
    row_loss = np.empty(a.shape[0], np.float32)
    _mse_fwd_cpu(a, b, sel, row_loss)
    return _mse_mean(row_loss, n, a.shape[1]), MSECache(a, b, sel, n)


def mse_backward_cpu(dloss, cache):
    a, b, sel, n = cache
    da, db = np.empty_like(a), np.empty_like(b)
    _mse_bwd_cpu(a, b, sel, _mse_scale(dloss, n, a.shape[1]), da, db)
    return da, db


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
    def cos_fwd(a, b, sel, cos, A, B, row_loss):
        # one block per row i; threads stride over the C columns; three reductions through one shared buffer
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        C = a.shape[1]
        if sel[i] == 0:  # the same for the whole block: no thread is left waiting at a barrier
            if tid == 0:
                cos[i] = float32(0.0)
                A[i] = float32(1.0)
                B[i] = float32(1.0)
                row_loss[i] = float32(0.0)
            return
        buf = cuda.shared.array(THREADS, float32)
        dot = float32(0.0)
        aa = float32(0.0)
        bb = float32(0.0)
        c = tid
        while c < C:
            dot += a[i, c] * b[i, c]
            aa += a[i, c] * a[i, c]
            bb += b[i, c] * b[i, c]
            c += THREADS
        dot = block_sum(buf, dot)
        aa = block_sum(buf, aa) + NORM_EPS
        bb = block_sum(buf, bb) + NORM_EPS
        if tid == 0:
            ci = dot / math.sqrt(aa * bb)
            A[i] = aa
            B[i] = bb
            cos[i] = ci
            row_loss[i] = float32(1.0) - ci

    @cuda.jit
    def cos_bwd(a, b, sel, cos, A, B, g_d, da, db):
        i = cuda.blockIdx.x
        C = a.shape[1]
        g = g_d[0]  # -dloss / n, computed on the device (_cuda.loss_scale)
        keep = sel[i] != 0
        inv_den = float32(1.0) / math.sqrt(A[i] * B[i])
        ca = cos[i] / A[i]
        cb = cos[i] / B[i]
        c = cuda.threadIdx.x
        while c < C:
            if keep:
                da[i, c] = g * (b[i, c] * inv_den - ca * a[i, c])
                db[i, c] = g * (a[i, c] * inv_den - cb * b[i, c])
            else:
                da[i, c] = float32(0.0)
                db[i, c] = float32(0.0)
            c += THREADS

    @cuda.jit
    def mse_fwd(a, b, sel, row_loss):
        i = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        C = a.shape[1]
        if sel[i] == 0:
            if tid == 0:
                row_loss[i] = float32(0.0)
            return
        buf = cuda.shared.array(THREADS, float32)
        acc = float32(0.0)
        c = tid
        while c < C:
            d = a[i, c] - b[i, c]
            acc += d * d
            c += THREADS
        acc = block_sum(buf, acc)
        if tid == 0:
            row_loss[i] = acc

    @cuda.jit
    def mse_bwd(a, b, sel, scale_d, da, db):
        i = cuda.blockIdx.x
        C = a.shape[1]
        scale = scale_d[0]  # 2 dloss / (n C), computed on the device (_cuda.loss_scale)
        keep = sel[i] != 0
        c = cuda.threadIdx.x
        while c < C:
            g = scale * (a[i, c] - b[i, c]) if keep else float32(0.0)
            da[i, c] = g
            db[i, c] = -g
            c += THREADS

    return cos_fwd, cos_bwd, mse_fwd, mse_bwd


def cosine_loss_forward_cuda(a, b, mask=None):
    sel_d = _check_cuda(a, b, mask)
    cos_fwd = _cuda_kernels()[0]
    N = a.shape[0]
    cos, A, B, row_loss = (_cuda.device_empty((N,)) for _ in range(4))
    if N:
        cos_fwd[N, _cuda.THREADS](a, b, sel_d, cos, A, B, row_loss)
    loss, count = _cuda.mean_loss(row_loss, 1.0, sel=sel_d)  # on the device (unselected rows hold 0)
    return loss, CosineCache(a, b, sel_d, cos, A, B, count)


def _check_cuda(a, b, mask):
    """The checks of _check, and the row selection as a device array: a device mask is used in place (no copy
    back), a host one copied over once, None filled with ones on the device."""
    if mask is None or not _cuda.is_device_array(mask):
        sel, _ = _check(a, b, mask)
        return _cuda.ones_mask(sel.size) if mask is None else _cuda.to_device(sel.astype(np.uint8))
    _check(a, b, None)
    return _checks.check_device_row_mask("mask", mask, tuple(a.shape)[0])


def cosine_loss_backward_cuda(dloss, cache):
    a, b, sel_d, cos, A, B, count = cache
    cos_bwd = _cuda_kernels()[1]
    N = a.shape[0]
    da, db = _cuda.device_empty(tuple(a.shape)), _cuda.device_empty(tuple(b.shape))
    g = _cuda.loss_scale(dloss, count, -1.0)  # dloss may be a device scalar: it is not read back
    if N:
        cos_bwd[N, _cuda.THREADS](a, b, sel_d, cos, A, B, g, da, db)
    return da, db


def mse_forward_cuda(a, b, mask=None):
    sel_d = _check_cuda(a, b, mask)
    b = _cuda.to_device(b)  # host targets (regression labels) copied over once; a device b passes through
    mse_fwd = _cuda_kernels()[2]
    N, C = tuple(a.shape)
    row_loss = _cuda.device_empty((N,))
    if N:
        mse_fwd[N, _cuda.THREADS](a, b, sel_d, row_loss)
    # sum / (n C) on the device; with C = 0 there is nothing to average: 0, as _mse_mean
    loss, count = _cuda.mean_loss(row_loss, 1.0 / C if C else 0.0, sel=sel_d)
    return loss, MSECache(a, b, sel_d, count)


def mse_backward_cuda(dloss, cache):
    a, b, sel_d, count = cache
    mse_bwd = _cuda_kernels()[3]
    N, C = tuple(a.shape)
    da, db = _cuda.device_empty(tuple(a.shape)), _cuda.device_empty(tuple(b.shape))
    if N:
        scale = _cuda.loss_scale(dloss, count, 2.0 / C if C else 0.0)  # 2 dloss / (n C), as _mse_scale
        mse_bwd[N, _cuda.THREADS](a, b, sel_d, scale, da, db)
    return da, db


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def cosine_loss_forward(a, b, mask=None):
    return cosine_loss_forward_cuda(a, b, mask) if _cuda.is_device_array(a) else cosine_loss_forward_cpu(a, b, mask)


def cosine_loss_backward(dloss, cache):
    if _cuda.is_device_array(cache.a):
        return cosine_loss_backward_cuda(dloss, cache)
    return cosine_loss_backward_cpu(dloss, cache)


def mse_forward(a, b, mask=None):
    return mse_forward_cuda(a, b, mask) if _cuda.is_device_array(a) else mse_forward_cpu(a, b, mask)


def mse_backward(dloss, cache):
    return mse_backward_cuda(dloss, cache) if _cuda.is_device_array(cache.a) else mse_backward_cpu(dloss, cache)


# ---------------------------------------------------------------------------------------------------------------


def cosine_tolerances(a, b, dloss, n):
    """(loss atol, gradient atol) for the float32 cosine loss vs a float64 reference.

    a.b, |a|^2, |b|^2 are float32 sums of C products; by Cauchy-Schwarz the terms of a.b add up (in absolute
    value) to at most |a| |b|, so cos = a.b / sqrt(A B) is good to f32_tol(C) (the sqrt and division add a few eps,
    covered by the safety factor). Both gradients are bounded elementwise by |dloss| / n * 2 / min(|a_i|, |b_i|)
    (|b_c| / (|a| |b|) <= 1 / |a| and |cos a_c / A| <= 1 / |a|), and each is good to f32_tol(C) relative to that.
    """
    C = int(a.shape[-1])
    tol = _checks.f32_tol(C)
    na = np.sqrt((a.astype(np.float64) ** 2).sum(axis=-1) + 1e-12)
    nb = np.sqrt((b.astype(np.float64) ** 2).sum(axis=-1) + 1e-12)
    bound = abs(dloss) / max(n, 1) * 2.0 / min(na.min(initial=np.inf), nb.min(initial=np.inf)) if a.size else 0.0
    return tol, tol * bound


def mse_tolerances(a, b, dloss, n):
    """(loss rtol, gradient atol) for the float32 MSE vs a float64 reference.

    Each row sums C non-negative squares (a - b)^2 in float32, so its relative error is f32_tol(C), and so is the
    mean's (a float64 sum of non-negative row sums): a relative tolerance. The gradient 2 (a - b) dloss / (n C) is
    one subtraction and two products: f32_tol(1) relative to its size bound 2 max|a - b| |dloss| / (n C).
    """
    C = int(a.shape[-1])
    d = float(np.abs(a.astype(np.float64) - b).max(initial=0.0))
    return _checks.f32_tol(C), _checks.f32_tol(1, scale=2 * d * abs(dloss) / max(n * C, 1))


def main(argv=None):
    args = _checks.lab_options("cosine", argv)
    rep = _checks.Report("cosine + mse")
    r = _checks.rng(0)
    N, C = (8 * 128, 768) if args.size == "base" else (7, 13)
    a = r.standard_normal((N, C)).astype(np.float32)
    b = (a + r.standard_normal((N, C))).astype(np.float32)  # student hidden states near the teacher's
    mask = r.random(N) < 0.9

    def validate(version, a_, b_, m_, to_dev=lambda x: x, to_host=lambda x: x):
        l64, c64 = cosine_loss_forward_ref(a_.astype(np.float64), b_.astype(np.float64), m_)
        da64, db64 = cosine_loss_backward_ref(1.0, c64)
        tl, tg = cosine_tolerances(a_, b_, 1.0, c64.n_selected)
        fwd, bwd = (cosine_loss_forward_cuda, cosine_loss_backward_cuda) if version == "cuda" else \
            (cosine_loss_forward_cpu, cosine_loss_backward_cpu)
        loss, c = fwd(to_dev(a_), to_dev(b_), m_)
        da, db = bwd(1.0, c)
        rep.check(version, "cos loss", float(to_host(loss)), l64, atol=tl)  # CUDA: a 0-d device array
        rep.check(version, "cos da", to_host(da), da64, atol=tg)
        rep.check(version, "cos db", to_host(db), db64, atol=tg)
        l64, c64 = mse_forward_ref(a_.astype(np.float64), b_.astype(np.float64), m_)
        da64, db64 = mse_backward_ref(1.0, c64)
        tl, tg = mse_tolerances(a_, b_, 1.0, c64.n_selected)
        fwd, bwd = (mse_forward_cuda, mse_backward_cuda) if version == "cuda" else (mse_forward_cpu, mse_backward_cpu)
        loss, c = fwd(to_dev(a_), to_dev(b_), m_)
        da, db = bwd(1.0, c)
        rep.check(version, "mse loss", float(to_host(loss)), l64, atol=0.0, rtol=tl)
        rep.check(version, "mse da", to_host(da), da64, atol=tg)
        rep.check(version, "mse db", to_host(db), db64, atol=tg)

    validate("cpu", a, b, mask)
    if _cuda.available():
        n_small = 16 if _cuda.SIMULATOR else N
        validate("cuda", np.ascontiguousarray(a[:n_small]), np.ascontiguousarray(b[:n_small]), mask[:n_small],
                 _cuda.to_device, _cuda.to_host)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark at (B*T, C) = (1024, 768): forward reads a and b; backward reads a, b and writes da, db
    cc = cosine_loss_forward_cpu(a, b)[1]
    cr = cosine_loss_forward_ref(a, b)[1]
    mc = mse_forward_cpu(a, b)[1]
    rep.bench("cos ref", lambda: cosine_loss_forward_ref(a, b), nbytes=2 * a.nbytes)
    rep.bench("cos cpu", lambda: cosine_loss_forward_cpu(a, b), nbytes=2 * a.nbytes)
    rep.bench("cos ref bwd", lambda: cosine_loss_backward_ref(1.0, cr), nbytes=4 * a.nbytes)
    rep.bench("cos cpu bwd", lambda: cosine_loss_backward_cpu(1.0, cc), nbytes=4 * a.nbytes)
    rep.bench("mse ref", lambda: mse_forward_ref(a, b), nbytes=2 * a.nbytes)
    rep.bench("mse cpu", lambda: mse_forward_cpu(a, b), nbytes=2 * a.nbytes)
    rep.bench("mse cpu bwd", lambda: mse_backward_cpu(1.0, mc), nbytes=4 * a.nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cuda_ = _cuda.get_cuda()
        ad, bd = _cuda.to_device(a), _cuda.to_device(b)
        cd = cosine_loss_forward_cuda(ad, bd)[1]
        rep.bench("cos cuda", lambda: cosine_loss_forward_cuda(ad, bd), nbytes=2 * a.nbytes, sync=cuda_.synchronize)
        rep.bench("cos cuda bwd", lambda: cosine_loss_backward_cuda(1.0, cd), nbytes=4 * a.nbytes,
                  sync=cuda_.synchronize)
        rep.bench("mse cuda", lambda: mse_forward_cuda(ad, bd), nbytes=2 * a.nbytes, sync=cuda_.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
