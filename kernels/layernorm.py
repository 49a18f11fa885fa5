"""Layer normalisation over the last axis, and the post-LN residual block of BERT fused with it.

Forward, for one row x of width C (every leading axis is a row: x (..., C) is viewed as (N, C)):
    mean = sum(x) / C
    var  = sum((x - mean)^2) / C                    biased variance, as torch and BERT use
    rstd = 1 / sqrt(var + eps)                      eps inside the sqrt (1e-12 in BERT / DistilBERT configs)
    xhat = (x - mean) * rstd
    y    = xhat * w + b
Derivative (dxhat = dy * w; the means are over the C entries of the row):
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dw = sum over rows of dy * xhat;   db = sum over rows of dy
Residual + LayerNorm (BERT's `LayerNorm(h + sublayer(h))`):
    y = LN(x + r);  both x and r receive the same gradient dh = the dx above.

Precision of the row statistics (float32, two passes: the mean first, then the centred squares): with u = eps32/2,
the computed mean has a relative error of at most C*u (sqrt(C)*u typically, errors of random sign), and the
two-pass variance a relative error of at most C*u + (C*u)^2 * kappa^2, kappa = |mean| / std (Chan, Golub & LeVeque
1983), so for activations with |mean| <~ std it is ~ C*u worst case, ~ sqrt(C)*u in practice: about 1e-6 at C=768.
A one-pass E[x^2] - E[x]^2 would instead lose kappa^2 * u relative, catastrophic for rows far from zero mean.
Constant rows: var = 0 exactly only if the float32 mean is exact (it is for a row of zeros, e.g. padding); a
constant non-zero row leaves var ~ (u*|x|)^2, which eps = 1e-12 does not hide (torch behaves the same).

Versions:
    layernorm_forward_ref / layernorm_backward_ref           NumPy, float32 or float64, reads like the maths above
    residual_layernorm_forward_ref / ..._backward_ref        NumPy, unfused: h = x + r, then the reference LN
    layernorm_forward_cpu / layernorm_backward_cpu           Numba, prange over rows; backward fused with dw/db:
                                                             rows split into a fixed number of chunks, each
                                                             chunk sums its own dw/db partial (no races, and the
                                                             result does not depend on the thread count)
    residual_layernorm_forward_cpu / ..._backward_cpu        Numba, x + r added inside the first (mean) pass:
                                                             x and r read once, h written once for the backward
    layernorm_forward_cuda / layernorm_backward_cuda         numba.cuda, one block per row, shared-memory reductions;
                                                             dw/db by a second kernel, one block per column
    residual_layernorm_forward_cuda / ..._backward_cuda      numba.cuda, the same kernels with the residual fused
Caches: LayerNormCache(x, w, mean (N,), rstd (N,)), N = number of rows. For the residual version the cache's x is
h = x + r (the input of the normalisation), which is all the backward needs.
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
# LLVM may reassociate the row sums (s += v), i.e. keep 16 partial sums in an AVX-512 register and add them at the
# end, so the sums vectorise; without this an IEEE-ordered float32 sum is a chain of dependent adds (4 cycles each).
# Only reassociation and FMA contraction: no finite-math assumption (NaN and inf pass through as without the flags).
# Measured for one (1024, 768) residual layer norm (2 cores): forward 0.95 -> 0.46 ms, backward 0.77 -> 0.45 ms.
REDUCE = {"reassoc", "contract"}
N_CHUNKS = 64  # row chunks of the CPU backward: each owns a (C,) partial of dw and db


class LayerNormCache(NamedTuple):
    x: np.ndarray     # (..., C) the normalised input (for residual_layernorm: h = x + r)
    w: np.ndarray     # (C,) the scale
    mean: np.ndarray  # (N,) row means, N = prod of the leading axes
    rstd: np.ndarray  # (N,) 1 / sqrt(var + eps) per row


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def layernorm_forward_ref(x, w, b, eps):
    C = x.shape[-1]
    x2 = x.reshape(-1, C)                                     # (N, C)
    mean = x2.mean(axis=1)                                    # (N,)
    var = ((x2 - mean[:, None]) ** 2).mean(axis=1)            # (N,) biased
    rstd = 1.0 / np.sqrt(var + eps)                           # (N,)
    xhat = (x2 - mean[:, None]) * rstd[:, None]               # (N, C)
    y = xhat * w + b                                          # (N, C)
    return (y.reshape(x.shape).astype(x.dtype, copy=False),
            LayerNormCache(x, w, mean.astype(x.dtype, copy=False), rstd.astype(x.dtype, copy=False)))


def layernorm_backward_ref(dy, cache):
    x, w, mean, rstd = cache
    C = x.shape[-1]
    x2, dy2 = x.reshape(-1, C), dy.reshape(-1, C)             # (N, C)
    xhat = (x2 - mean[:, None]) * rstd[:, None]               # forward: xhat = (x - mean) * rstd
    # forward: y = xhat * w + b
    dw = (dy2 * xhat).sum(axis=0)                             # (C,)
    db = dy2.sum(axis=0)                                      # (C,)
    dxhat = dy2 * w                                           # (N, C)
    # forward: mean and rstd depend on x too; the two row means below are their contributions
    dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    dt = x.dtype
    return dx.reshape(x.shape).astype(dt, copy=False), dw.astype(dt, copy=False), db.astype(dt, copy=False)


def residual_layernorm_forward_ref(x, r, w, b, eps):
    # forward: h = x + r;  y = LN(h)   (unfused: h is a full temporary, then LN reads it twice)
    return layernorm_forward_ref(x + r, w, b, eps)


def residual_layernorm_backward_ref(dy, cache):
    # forward: h = x + r, so dx = dr = dh
    return layernorm_backward_ref(dy, cache)


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True, fastmath=REDUCE)
def _ln_fwd(x, r, has_r, w, b, eps, h, y, mean, rstd):
    # x, r, h, y (N, C); w, b (C,); mean, rstd (N,). With has_r, h = x + r is formed in the first pass and kept.
    N, C = x.shape
    inv_c = ONE / np.float32(C)
    for i in prange(N):
        # pass 1: mean (and h = x + r, reading x and r once)
        s = ZERO
        if has_r:
            for j in range(C):
                v = x[i, j] + r[i, j]
                h[i, j] = v
                s += v
            src = h
        else:
            for j in range(C):
                s += x[i, j]
            src = x
        m = s * inv_c
        # pass 2: centred squares (two-pass variance, see the module docstring)
        ss = ZERO
        for j in range(C):
            d = src[i, j] - m
            ss += d * d
        rs = ONE / math.sqrt(ss * inv_c + eps)
        # pass 3: y = (x - mean) * rstd * w + b
        for j in range(C):
            y[i, j] = (src[i, j] - m) * rs * w[j] + b[j]
        mean[i] = m
        rstd[i] = rs


@njit(cache=True, parallel=True, fastmath=REDUCE)
def _ln_bwd(dy, x, w, mean, rstd, dx, dw_part, db_part):
    # dy, x, dx (N, C); w (C,); mean, rstd (N,); dw_part, db_part (K, C): chunk k owns row k of the partials
    N, C = x.shape
    K = dw_part.shape[0]
    inv_c = ONE / np.float32(C)
    for k in prange(K):
        for i in range(k * N // K, (k + 1) * N // K):
            m, rs = mean[i], rstd[i]
            # pass 1: the two row means of the backward
            s1 = ZERO   # sum(dxhat)
            s2 = ZERO   # sum(dxhat * xhat)
            for j in range(C):
                xhat = (x[i, j] - m) * rs             # forward: xhat = (x - mean) * rstd
                dxhat = dy[i, j] * w[j]               # forward: y = xhat * w + b
                s1 += dxhat
                s2 += dxhat * xhat
            s1 *= inv_c
            s2 *= inv_c
            # pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), and this chunk's dw, db
            for j in range(C):
                xhat = (x[i, j] - m) * rs
                g = dy[i, j]
                dx[i, j] = rs * (g * w[j] - s1 - xhat * s2)
                dw_part[k, j] += g * xhat
                db_part[k, j] += g


def _check_ln(x, w, b, eps, r=None):
    _checks.check_array("x", x, ndim=tuple(range(1, 8)))
    C = tuple(x.shape)[-1]
    if C < 1:
        raise ValueError(f"x: expected a last axis of at least 1 element, got shape {tuple(x.shape)}")
    if r is not None:
        _checks.check_array("r", r)
        _checks.check_same_shape("x", x, "r", r)
    _checks.check_array("w", w, ndim=1, shape=(C,))
    _checks.check_array("b", b, ndim=1, shape=(C,))
    if not (isinstance(eps, (float, int, np.floating)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive finite float, got {eps!r}")


def _ln_forward_cpu(x, r, w, b, eps):
    C = x.shape[-1]
    N = x.size // C
    x2 = x.reshape(N, C)
    y = np.empty_like(x)
    mean = np.empty(N, np.float32)
    rstd = np.empty(N, np.float32)
    if r is None:
        h = x
        _ln_fwd(x2, x2, False, w, b, np.float32(eps), x2, y.reshape(N, C), mean, rstd)
    else:
        h = np.empty_like(x)
        _ln_fwd(x2, r.reshape(N, C), True, w, b, np.float32(eps), h.reshape(N, C), y.reshape(N, C), mean, rstd)
    return y, LayerNormCache(h, w, mean, rstd)


def layernorm_forward_cpu(x, w, b, eps):
    _check_ln(x, w, b, eps)
    return _ln_forward_cpu(x, None, w, b, eps)


def residual_layernorm_forward_cpu(x, r, w, b, eps):
    _check_ln(x, w, b, eps, r)
    return _ln_forward_cpu(x, r, w, b, eps)


def layernorm_backward_cpu(dy, cache):
    x, w, mean, rstd = cache
    _checks.check_array("dy", dy, shape=tuple(x.shape))
    C = x.shape[-1]
    N = x.size // C
    K = max(1, min(N, N_CHUNKS))
    dx = np.empty_like(x)
    dw_part = np.zeros((K, C), np.float32)
    db_part = np.zeros((K, C), np.float32)
    _ln_bwd(dy.reshape(N, C), x.reshape(N, C), w, mean, rstd, dx.reshape(N, C), dw_part, db_part)
    # K partials of ~N/K rows each: numpy's pairwise float32 sum over K adds ~eps*log2(K) on top
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)


residual_layernorm_backward_cpu = layernorm_backward_cpu  # forward: h = x + r, so dx = dr = dh


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32
    THREADS = _cuda.THREADS

    block_sum, _ = _cuda.block_reductions()  # shared-memory tree reduction; every thread gets the total

    @cuda.jit
    def fwd(x, r, has_r, w, b, eps, h, y, mean, rstd, C):
        # one block per row; x, r, h, y flat (N*C,)
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float32)
        base = i * C
        s = float32(0.0)
        j = t
        while j < C:
            if has_r:
                v = x[base + j] + r[base + j]
                h[base + j] = v  # each thread reads back only what it wrote itself: no sync needed
            else:
                v = x[base + j]
            s += v
            j += THREADS
        m = block_sum(buf, s) / float32(C)
        ss = float32(0.0)
        j = t
        while j < C:
            d = (h[base + j] if has_r else x[base + j]) - m
            ss += d * d
            j += THREADS
        rs = float32(1.0) / math.sqrt(block_sum(buf, ss) / float32(C) + eps)
        j = t
        while j < C:
            v = h[base + j] if has_r else x[base + j]
            y[base + j] = (v - m) * rs * w[j] + b[j]
            j += THREADS
        if t == 0:
            mean[i] = m
            rstd[i] = rs

    @cuda.jit
    def bwd_dx(dy, x, w, mean, rstd, dx, C):
        # one block per row: the two row means through shared memory, then dx
        i = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float32)
        base = i * C
        m = mean[i]
        rs = rstd[i]
        s1 = float32(0.0)
        s2 = float32(0.0)
        j = t
        while j < C:
            xhat = (x[base + j] - m) * rs
            dxhat = dy[base + j] * w[j]
            s1 += dxhat
            s2 += dxhat * xhat
            j += THREADS
        s1 = block_sum(buf, s1) / float32(C)
        s2 = block_sum(buf, s2) / float32(C)
        j = t
        while j < C:
            xhat = (x[base + j] - m) * rs
            dx[base + j] = rs * (dy[base + j] * w[j] - s1 - xhat * s2)
            j += THREADS

    COL_TILE = _cuda.COL_TILE
    lanes = THREADS // COL_TILE

    @cuda.jit
    def bwd_dwdb(dy, x, mean, rstd, pw, pb, N, C, chunk_rows):
        # partial column sums, coalesced: a block covers COL_TILE adjacent columns (adjacent threads read adjacent
        # addresses of a row) and the rows of chunk blockIdx.y, `lanes` rows at a time; pw[chunk, col] and
        # pb[chunk, col] receive its sums of dy xhat and dy (_cuda.column_sum then adds the chunks)
        t = cuda.threadIdx.x
        tx = t % COL_TILE
        ty = t // COL_TILE
        col = cuda.blockIdx.x * COL_TILE + tx
        r0 = cuda.blockIdx.y * chunk_rows
        r1 = min(N, r0 + chunk_rows)
        bw = cuda.shared.array(THREADS, float32)
        bb = cuda.shared.array(THREADS, float32)
        aw = float32(0.0)
        ab = float32(0.0)
        if col < C:
            i = r0 + ty
            while i < r1:
                g = dy[i * C + col]
                aw += g * (x[i * C + col] - mean[i]) * rstd[i]
                ab += g
                i += lanes
        bw[t] = aw
        bb[t] = ab
        cuda.syncthreads()
        k = lanes // 2
        while k > 0:  # tree over the row lanes of each column
            if ty < k:
                bw[t] += bw[t + k * COL_TILE]
                bb[t] += bb[t + k * COL_TILE]
            cuda.syncthreads()
            k //= 2
        if ty == 0 and col < C:
            pw[cuda.blockIdx.y * C + col] = bw[tx]
            pb[cuda.blockIdx.y * C + col] = bb[tx]

    return fwd, bwd_dx, bwd_dwdb


def _ln_forward_cuda(x, r, w, b, eps):
    fwd, _, _ = _cuda_kernels()
    C = tuple(x.shape)[-1]
    N = x.size // C
    y = _cuda.device_empty(x.shape)
    mean = _cuda.device_empty((N,))
    rstd = _cuda.device_empty((N,))
    if r is None:
        h = x
        if N:  # an empty batch: no launch (a GPU rejects a grid of 0 blocks)
            fwd[N, _cuda.THREADS](x.reshape(-1), x.reshape(-1), False, w, b, np.float32(eps), x.reshape(-1),
                                  y.reshape(-1), mean, rstd, C)
    else:
        h = _cuda.device_empty(x.shape)
        if N:
            fwd[N, _cuda.THREADS](x.reshape(-1), r.reshape(-1), True, w, b, np.float32(eps), h.reshape(-1),
                                  y.reshape(-1), mean, rstd, C)
    return y, LayerNormCache(h, w, mean, rstd)


def layernorm_forward_cuda(x, w, b, eps):
    _check_ln(x, w, b, eps)
    return _ln_forward_cuda(x, None, w, b, eps)


def residual_layernorm_forward_cuda(x, r, w, b, eps):
    _check_ln(x, w, b, eps, r)
    return _ln_forward_cuda(x, r, w, b, eps)


def layernorm_backward_cuda(dy, cache):
    x, w, mean, rstd = cache
    _checks.check_array("dy", dy, shape=tuple(x.shape))
    _, bwd_dx, bwd_dwdb = _cuda_kernels()
    C = tuple(x.shape)[-1]
    N = x.size // C
    dx = _cuda.device_empty(x.shape)
    if N:
        bwd_dx[N, _cuda.THREADS](dy.reshape(-1), x.reshape(-1), w, mean, rstd, dx.reshape(-1), C)
    if not C:
        return dx, _cuda.device_empty((0,)), _cuda.device_empty((0,))
    # dw, db: per-chunk column sums (coalesced), then the chunks added by _cuda.column_sum; with N = 0 one chunk
    # of no rows gives 0
    chunks = min(_cuda.COL_MAX_CHUNKS, max(1, (N + _cuda.COL_CHUNK_ROWS - 1) // _cuda.COL_CHUNK_ROWS))
    chunk_rows = max(1, (N + chunks - 1) // chunks)
    pw = _cuda.device_empty((chunks, C))
    pb = _cuda.device_empty((chunks, C))
    gx = (C + _cuda.COL_TILE - 1) // _cuda.COL_TILE
    bwd_dwdb[(gx, chunks), _cuda.THREADS](dy.reshape(-1), x.reshape(-1), mean, rstd, pw.reshape(-1),
                                          pb.reshape(-1), N, C, chunk_rows)
    return dx, _cuda.column_sum(pw), _cuda.column_sum(pb)


residual_layernorm_backward_cuda = layernorm_backward_cuda  # forward: h = x + r, so dx = dr = dh


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def layernorm_forward(x, w, b, eps):
    if _cuda.is_device_array(x):
        return layernorm_forward_cuda(x, w, b, eps)
    return layernorm_forward_cpu(x, w, b, eps)


def layernorm_backward(dy, cache):
    return layernorm_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else layernorm_backward_cpu(dy, cache)


def residual_layernorm_forward(x, r, w, b, eps):
    if _cuda.is_device_array(x):
        return residual_layernorm_forward_cuda(x, r, w, b, eps)
    return residual_layernorm_forward_cpu(x, r, w, b, eps)


def residual_layernorm_backward(dy, cache):
    if _cuda.is_device_array(dy):
        return residual_layernorm_backward_cuda(dy, cache)
    return residual_layernorm_backward_cpu(dy, cache)


# ---------------------------------------------------------------------------------------------------------------
# tolerances (used by main() and the tests; derived from f32_tol, see the comments)


def tolerances(x64, w64, b64, dy64, eps):
    """Tolerances for float32 results against the float64 reference, from the data's magnitudes.

    y = xhat * w + b: mean and rstd come from sums of C terms (relative error ~ sqrt(C)*eps, see the docstring),
      and xhat = (x - mean) * rstd has an absolute error ~ sqrt(C)*eps * (|x - mean| + |mean|) * rstd; times |w|,
      plus the rounding of |b|.
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat*xhat)): the row means are sums of C terms of size
      |dy*w| * (1 + |xhat|); the bracket holds terms up to |dy*w| * (2 + |xhat|^2); times rstd.
    dw: a sum over N rows of dy * xhat, each xhat carrying the per-row error above (random sign across rows):
      rounding f32_tol(N) plus sqrt(N) * max|dy| * f32_tol(C)-sized xhat errors, together f32_tol(N*C).
    db: a plain sum of N rows of dy, exact inputs: f32_tol(N, scale=max|dy|).
    Returns (tol_y, tol_dx, tol_dw, tol_db).
    """
    C = x64.shape[-1]
    N = x64.size // C
    _, c = layernorm_forward_ref(x64, w64, b64, eps)
    x2 = x64.reshape(N, C)
    xhat = np.abs((x2 - c.mean[:, None]) * c.rstd[:, None]).max()
    mean_over_std = (np.abs(c.mean) * c.rstd).max()
    wmax, bmax, dymax, rsmax = np.abs(w64).max(), np.abs(b64).max(), np.abs(dy64).max(), c.rstd.max()
    tol_y = _checks.f32_tol(C, scale=(xhat + mean_over_std + 1) * wmax + bmax)
    tol_dx = _checks.f32_tol(C, scale=rsmax * dymax * wmax * (2 + xhat + mean_over_std) ** 2)
    tol_dw = _checks.f32_tol(N * C, scale=dymax * (1 + xhat + mean_over_std))
    tol_db = _checks.f32_tol(N, scale=dymax)
    return tol_y, tol_dx, tol_dw, tol_db


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("layernorm", argv)
    rep = _checks.Report("layernorm")
    r = _checks.rng(0)
    N, C = (8 * 128, 768) if args.size == "base" else (7, 13)  # (B*T, C)
    x = (r.standard_normal((N, C)) * 2 + 0.5).astype(np.float32)
    res = r.standard_normal((N, C)).astype(np.float32)
    w = (1 + 0.1 * r.standard_normal(C)).astype(np.float32)
    b = (0.1 * r.standard_normal(C)).astype(np.float32)
    dy = r.standard_normal((N, C)).astype(np.float32)
    f64 = lambda *a: tuple(v.astype(np.float64) for v in a)  # noqa: E731
    x64, r64, w64, b64, dy64 = f64(x, res, w, b, dy)

    for eps in (1e-12, 1e-5):
        tol_y, tol_dx, tol_dw, tol_db = tolerances(x64 + r64, w64, b64, dy64, eps)
        y64, c64 = residual_layernorm_forward_ref(x64, r64, w64, b64, eps)
        dh64, dw64, db64 = residual_layernorm_backward_ref(dy64, c64)
        yl64, cl64 = layernorm_forward_ref(x64, w64, b64, eps)
        dxl64, dwl64, dbl64 = layernorm_backward_ref(dy64, cl64)
        tl_y, tl_dx, tl_dw, tl_db = tolerances(x64, w64, b64, dy64, eps)
        tag = f"eps={eps:g}"
        y, c = layernorm_forward_cpu(x, w, b, eps)
        rep.check("cpu " + tag, "y", y, yl64, atol=tl_y)
        dx, dw, db = layernorm_backward_cpu(dy, c)
        rep.check("cpu " + tag, "dx", dx, dxl64, atol=tl_dx)
        rep.check("cpu " + tag, "dw", dw, dwl64, atol=tl_dw)
        rep.check("cpu " + tag, "db", db, dbl64, atol=tl_db)
        y, c = residual_layernorm_forward_cpu(x, res, w, b, eps)
        rep.check("cpu res " + tag, "y", y, y64, atol=tol_y)
        dh, dw, db = residual_layernorm_backward_cpu(dy, c)
        rep.check("cpu res " + tag, "dh", dh, dh64, atol=tol_dx)
        rep.check("cpu res " + tag, "dw", dw, dw64, atol=tol_dw)
        rep.check("cpu res " + tag, "db", db, db64, atol=tol_db)

    if _cuda.available():
        n = 16 if _cuda.SIMULATOR else N
        eps = 1e-12
        xs, rss, dys = x[:n], res[:n], dy[:n]
        tol_y, tol_dx, tol_dw, tol_db = tolerances(*f64(xs + rss, w, b, dys), eps)
        y64, c64 = residual_layernorm_forward_ref(*f64(xs, rss, w, b), eps)
        dh64, dw64, db64 = residual_layernorm_backward_ref(dys.astype(np.float64), c64)
        xd, rd, wd, bd, dyd = (_cuda.to_device(a) for a in (xs, rss, w, b, dys))
        yd, cd = residual_layernorm_forward_cuda(xd, rd, wd, bd, eps)
        rep.check("cuda res", "y", _cuda.to_host(yd), y64, atol=tol_y)
        dhd, dwd, dbd = residual_layernorm_backward_cuda(dyd, cd)
        rep.check("cuda res", "dh", _cuda.to_host(dhd), dh64, atol=tol_dx)
        rep.check("cuda res", "dw", _cuda.to_host(dwd), dw64, atol=tol_dw)
        rep.check("cuda res", "db", _cuda.to_host(dbd), db64, atol=tol_db)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark at (B*T, C) = (1024, 768). Bytes: LN fwd reads x, writes y (+ w, b negligible); residual LN reads
    # x and r, writes h and y; backward reads dy and x, writes dx.
    eps = 1e-12
    _, c = layernorm_forward_cpu(x, w, b, eps)
    rep.bench("ref(numpy)", lambda: layernorm_forward_ref(x, w, b, eps), nbytes=2 * x.nbytes)
    rep.bench("cpu", lambda: layernorm_forward_cpu(x, w, b, eps), nbytes=2 * x.nbytes)
    rep.bench("ref res", lambda: residual_layernorm_forward_ref(x, res, w, b, eps), nbytes=4 * x.nbytes)
    rep.bench("cpu unfused", lambda: layernorm_forward_cpu(x + res, w, b, eps), nbytes=4 * x.nbytes)
    rep.bench("cpu res fused", lambda: residual_layernorm_forward_cpu(x, res, w, b, eps), nbytes=4 * x.nbytes)
    rep.bench("ref bwd", lambda: layernorm_backward_ref(dy, c), nbytes=3 * x.nbytes)
    rep.bench("cpu bwd", lambda: layernorm_backward_cpu(dy, c), nbytes=3 * x.nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        xd, rd, wd, bd, dyd = (_cuda.to_device(a) for a in (x, res, w, b, dy))
        _, cd = layernorm_forward_cuda(xd, wd, bd, eps)
        rep.bench("cuda", lambda: layernorm_forward_cuda(xd, wd, bd, eps), nbytes=2 * x.nbytes, sync=cu.synchronize)
        rep.bench("cuda res", lambda: residual_layernorm_forward_cuda(xd, rd, wd, bd, eps), nbytes=4 * x.nbytes,
                  sync=cu.synchronize)
        rep.bench("cuda bwd", lambda: layernorm_backward_cuda(dyd, cd), nbytes=3 * x.nbytes, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
