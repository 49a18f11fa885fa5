"""Multi-head scaled dot-product attention with a key padding mask (BERT / DistilBERT self-attention core).

Layout: q, k, v, out are (B, T, C) with C = H * D; head h is the contiguous column block [h*D, (h+1)*D), exactly
the layout of `x @ W_q^T` reshaped to (B, T, H, D) as Hugging Face does. mask (B, T): nonzero = real token,
0 = padding; it masks KEYS (every query of a sequence ignores that sequence's padding tokens).

Forward, for each (batch b, head h), with Q, K, V the (T, D) blocks of that head:
    S = Q K^T / sqrt(D)                                       (T, T) scores
    S[:, j] = finfo(dtype).min  where mask[b, j] == 0         masked keys FILLED with the most negative finite value
    P = softmax(S) over keys (row max subtracted first)       (T, T) probs, kept in the cache as (B, H, T, T)
    P~ = dropout(P, p, seed)  (training only; p = 0: P~ = P)   attention-probability dropout, see below
    O = P~ V                                                  (T, D), merged back into out (B, T, C)
A fully padded sequence has every score equal to finfo.min: its rows come out uniform (1/T) and the output finite,
never NaN (a -inf fill would give 0/0). This is what transformers' masked_fill(torch.finfo.min) does.

Dropout on the probabilities (as BERT's attention_probs_dropout_prob): P~ = P * keep / (1 - p), with keep drawn by
the counter hash of kernels/dropout.py over the flat index of probs (B, H, T, T), so the mask equals
dropout_keep_ref((B, H, T, T), p, seed) on every version and is regenerated in backward, never stored. The cache
keeps P (before dropout), as output_attentions shows it.

Backward (dO the (T, D) block of dout):
    dP~ = dO V^T                        from O = P~ V
    dV = P~^T dO                        from O = P~ V
    dP = dP~ * keep / (1 - p)           from P~ = dropout(P)   (p = 0: dP = dP~)
    dS = P * (dP - rowsum(dP * P))      from P = softmax(S)
    dS[:, j] = 0  where mask[b, j] == 0 from the fill: a filled score is a constant, it passes no gradient (for a
                                        partly padded row P is exactly 0 there anyway; for a fully padded row not)
    dQ = dS K / sqrt(D)                 from S = Q K^T / sqrt(D)
    dK = dS^T Q / sqrt(D)               from S = Q K^T / sqrt(D)

Versions:
    attention_forward_ref / attention_backward_ref    NumPy, unfused: transposes to (B, H, T, D) and batched matmuls
    attention_forward_numba / attention_backward_numba  (a CPU version without BLAS, kept to compare)
                                                      Numba, prange over the B*H (batch, head) pairs, read and write
                                                      the (B, T, C) layout directly: each thread gathers its head's
                                                      blocks into small contiguous buffers and multiplies them with
                                                      plain i-k-j loops (vectorised axpy rows); softmax fused in
                                                      between. Measured: np.dot (scipy's OpenBLAS) called from the
                                                      prange threads was 5-20x slower here, its own thread pool
                                                      oversubscribing the cores the prange threads already use;
                                                      dropout fused in (the hash per element)
    attention_forward_cuda / attention_backward_cuda  numba.cuda, a block per (b, h, ROWS_CUDA rows), 8 rows x 32
                                                      lanes of 256 threads (blocks grid-stride): a row's lanes stride
                                                      over keys, then over head columns, so every thread works at any
                                                      D; the rows' scores in shared memory (T <= MAX_T_CUDA = 512),
                                                      max and sum reduced over each row's lanes; K, V, Q, dO read in
                                                      coalesced tiles staged through shared memory, each serving the
                                                      block's rows. The backward is two kernels (per query rows: dS
                                                      rows in shared memory, dQ and the row sums rowsum(dP * P); per
                                                      key rows: dS and P~ columns recomputed from P, the row sums and
                                                      dO V^T, then dK and dV): no (B, H, T, T) dS is stored. The
                                                      dropout hash as a device function, once per (i, j) per kernel
    attention_forward_blas / attention_backward_blas  the DEFAULT CPU version (attention_forward_cpu): the head
                                                      products on strided (B, H, T, D) views of q, k, v, out, by
                                                      kernels/gemm.py's `heads_gemm` where `own_heads()` says (the
                                                      AVX-512 micro-kernel, the (batch, head) pairs shared by
                                                      Numba's threads, each pair's operands packed, the product
                                                      turned round where that pads the 8 x 48 tile less), else by
                                                      numpy's BLAS (no copies; BLAS takes a leading dimension C),
                                                      one OpenBLAS thread per core (_blas.run_blas_tasks:
                                                      threaded OpenBLAS on 128 x 64 GEMMs was 4-30x slower);
                                                      scale, mask, softmax and dropout fused in one Numba
                                                      pass over the rows of the scores, written in place;
                                                      q, k, v may be strided (B, T, C) views, e.g. the column
                                                      blocks of one fused projection's (B, T, 3C) output (the
                                                      other versions want them C-contiguous)
    (both CPU versions)                               softmax's exp by _f32math.exp_f32: the correctly rounded
                                                      float32 exp (<= 1 ulp, only within ~1e-14 of a tie), computed
                                                      in float64 in a loop that vectorises (libm's expf does not)
    fast=True (the BLAS version)                      opt-in: exp by _f32math.exp_fast (relative error <= 2.5e-7,
                                                      float32, fewer operations); MINIDISTIL_FAST_MATH=1 chooses it
Cache: AttentionCache(q, k, v, mask, probs, n_heads, p, seed). Backward returns fresh arrays.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _blas, _checks, _cuda, _f32math
from . import dropout as _dropout
from . import gemm as _gemm
from ._f32math import exp_f32, exp_fast, row_dot, row_max, row_sum

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
FILL32 = np.float32(np.finfo(np.float32).min)   # the masked-score fill: -3.4028235e38, finite
MAX_T_CUDA = 512                                # compile-time length of the CUDA kernels' shared score row


class AttentionCache(NamedTuple):
    q: np.ndarray       # (B, T, C) queries
    k: np.ndarray       # (B, T, C) keys
    v: np.ndarray       # (B, T, C) values
    mask: np.ndarray    # (B, T) key padding mask as given (nonzero = real token); on the CUDA path, on the device
    probs: np.ndarray   # (B, H, T, T) softmax probabilities P (before dropout)
    n_heads: int        # H
    p: float = 0.0      # attention-probability dropout
    seed: int = 0       # its seed (the mask is regenerated from it in backward)
    offset: int = 0     # the mask's flat index of probs[0, 0, 0, 0] (a slice of a larger batch: its first element)


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def _split_heads(x, H):
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)   # (B, T, C) -> (B, H, T, D)


def _merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)       # (B, H, T, D) -> (B, T, C)


def _drop_ref(P, p, seed, offset=0):
    """P * keep / (1 - p) with kernels/dropout.py's mask over the flat index (plus offset) of P (B, H, T, T)."""
    if p == 0:
        return P
    keep = _dropout.dropout_keep_ref(P.shape, p, seed, offset)
    return np.where(keep, P / (1.0 - p), 0.0).astype(P.dtype, copy=False)


def attention_forward_ref(q, k, v, mask, n_heads, p=0.0, seed=0, offset=0):
    B, T, C = q.shape
    D = C // n_heads
    Q, K, V = (_split_heads(a, n_heads) for a in (q, k, v))   # (B, H, T, D)
    S = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(D)               # S = Q K^T / sqrt(D)      (B, H, T, T)
    pad = (np.asarray(mask) == 0)[:, None, None, :]             # (B, 1, 1, T) masked keys
    S = np.where(pad, np.finfo(S.dtype).min, S)                 # fill masked keys with finfo.min
    E = np.exp(S - S.max(axis=-1, keepdims=True))
    P = E / E.sum(axis=-1, keepdims=True)                       # P = softmax(S)           (B, H, T, T)
    O = _drop_ref(P, p, seed, offset) @ V                               # O = dropout(P) V         (B, H, T, D)
    out = _merge_heads(O).astype(q.dtype, copy=False)
    return np.ascontiguousarray(out), AttentionCache(q, k, v, mask, P.astype(q.dtype, copy=False), n_heads,
                                                     float(p), int(seed), int(offset))


def attention_backward_ref(dout, cache):
    q, k, v, mask, P, H, p, seed, offset = cache
    B, T, C = q.shape
    D = C // H
    Q, K, V, dO = (_split_heads(a, H) for a in (q, k, v, dout))  # (B, H, T, D)
    dP = _drop_ref(dO @ V.transpose(0, 1, 3, 2), p, seed, offset)       # dP = dropout'(dO V^T)             (B, H, T, T)
    dV = _drop_ref(P, p, seed, offset).transpose(0, 1, 3, 2) @ dO       # dV = dropout(P)^T dO              (B, H, T, D)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))         # dS = P * (dP - rowsum(dP * P))
    dS = np.where((np.asarray(mask) == 0)[:, None, None, :], 0.0, dS)  # filled scores pass no gradient
    dQ = dS @ K / np.sqrt(D)                                     # dQ = dS K / sqrt(D)
    dK = dS.transpose(0, 1, 3, 2) @ Q / np.sqrt(D)               # dK = dS^T Q / sqrt(D)
    return tuple(np.ascontiguousarray(_merge_heads(a)).astype(q.dtype, copy=False) for a in (dQ, dK, dV))


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True)
def _matmul_acc(a, b, c):
    # c (M, N) += a (M, K) @ b (K, N), all contiguous. Loop order i, k, j: the inner loop is an axpy over a row of
    # b and a row of c (contiguous, no reduction), which LLVM vectorises without fast-math.
    M, K = a.shape
    N = b.shape[1]
    for i in range(M):
        for kk in range(K):
            aik = a[i, kk]
            for j in range(N):
                c[i, j] += aik * b[kk, j]


@njit(cache=True, inline="always")
def _keep_scale(idx, k1, k2, threshold, pscale, off):
    # kernels/dropout.py's counter hash at flat index off + idx of probs: keep / (1 - p), or 0 where dropped
    m = _dropout._fmix32_nb(_dropout._fmix32_nb(np.uint64(idx + off) ^ k1) ^ k2) >> _dropout.S8
    return pscale if m >= threshold else ZERO


@njit(cache=True, parallel=True)
def _attn_fwd(q, k, v, keep, H, scale, out, probs, has_drop, k1, k2, threshold, pscale, off):
    # q, k, v, out (B, T, C); keep (B, T) bool; probs (B, H, T, T); scale = 1/sqrt(D); dropout keys k1, k2,
    # threshold (uint64) and pscale = 1/(1-p) used when has_drop
    B, T, C = q.shape
    D = C // H
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        c0 = h * D
        # gather this head's blocks into small contiguous per-thread buffers (K transposed)
        Qh = np.ascontiguousarray(q[b, :, c0:c0 + D])           # (T, D)
        Kt = np.ascontiguousarray(k[b, :, c0:c0 + D].T)         # (D, T)
        Vh = np.ascontiguousarray(v[b, :, c0:c0 + D])           # (T, D)
        S = np.zeros((T, T), np.float32)
        _matmul_acc(Qh, Kt, S)                                  # S = Q K^T          (T, T)
        P = probs[b, h]                                         # (T, T) view, written row by row
        for i in range(T):
            m = FILL32
            for j in range(T):
                s = S[i, j] * scale if keep[b, j] else FILL32  # / sqrt(D), masked keys filled
                S[i, j] = s
                m = max(m, s)
            for j in range(T):
                P[i, j] = exp_f32(S[i, j] - m)                  # softmax: subtract the row max (exact exp)
            tot = ZERO
            for j in range(T):
                tot += P[i, j]
            inv = ONE / tot
            for j in range(T):
                P[i, j] *= inv
                # P~ = dropout(P), kept in S (free now) for the product
                S[i, j] = P[i, j] * _keep_scale((bh * T + i) * T + j, k1, k2, threshold, pscale, off) if has_drop \
                    else P[i, j]
        O = np.zeros((T, D), np.float32)
        _matmul_acc(S, Vh, O)                                   # O = P~ V           (T, D)
        out[b, :, c0:c0 + D] = O


@njit(cache=True, parallel=True)
def _attn_bwd(dout, q, k, v, keep, probs, H, scale, dq, dk, dv, has_drop, k1, k2, threshold, pscale, off):
    B, T, C = q.shape
    D = C // H
    for bh in prange(B * H):
        b = bh // H
        h = bh % H
        c0 = h * D
        Qh = np.ascontiguousarray(q[b, :, c0:c0 + D])           # (T, D)
        Kh = np.ascontiguousarray(k[b, :, c0:c0 + D])           # (T, D)
        Vt = np.ascontiguousarray(v[b, :, c0:c0 + D].T)         # (D, T)
        dO = np.ascontiguousarray(dout[b, :, c0:c0 + D])        # (T, D)
        P = probs[b, h]                                         # (T, T) contiguous
        Pt = np.empty((T, T), np.float32)                       # P~^T, P~ = dropout(P) regenerated
        for i in range(T):
            for j in range(T):
                Pt[j, i] = P[i, j] * _keep_scale((bh * T + i) * T + j, k1, k2, threshold, pscale, off) if has_drop \
                    else P[i, j]
        dP = np.zeros((T, T), np.float32)
        _matmul_acc(dO, Vt, dP)                                 # from O = P~ V:  dP~ = dO V^T   (T, T)
        dVh = np.zeros((T, D), np.float32)
        _matmul_acc(Pt, dO, dVh)                                # from O = P~ V:  dV = P~^T dO   (T, D)
        dv[b, :, c0:c0 + D] = dVh
        for i in range(T):                                      # from P = softmax(S):
            if has_drop:                                        #   (from P~ = dropout(P): dP = dP~ keep / (1-p))
                for j in range(T):
                    dP[i, j] *= _keep_scale((bh * T + i) * T + j, k1, k2, threshold, pscale, off)
            r = ZERO
            for j in range(T):
                r += dP[i, j] * P[i, j]                         #   rowsum(dP * P)
            for j in range(T):                                  #   dS = P * (dP - rowsum), 0 at filled keys,
                dP[i, j] = P[i, j] * (dP[i, j] - r) * scale if keep[b, j] else ZERO  # times 1/sqrt(D) of S
        dQh = np.zeros((T, D), np.float32)
        _matmul_acc(dP, Kh, dQh)                                # from S = Q K^T / sqrt(D): dQ = dS K / sqrt(D)
        dq[b, :, c0:c0 + D] = dQh
        dSt = np.ascontiguousarray(dP.T)
        dKh = np.zeros((T, D), np.float32)
        _matmul_acc(dSt, Qh, dKh)                               #                          dK = dS^T Q / sqrt(D)
        dk[b, :, c0:c0 + D] = dKh


# ---- the BLAS version: numpy's GEMMs on strided head views, one fused Numba pass over the rows of the scores


@njit(cache=True, parallel=True)
def _softmax_rows(S, keep, scale, fast, Pd, has_drop, k1, k2, threshold, pscale, off):
    # S (B, H, T, T): the raw scores Q K^T on entry, P = softmax(S * scale, masked) on exit (in place);
    # Pd (B, H, T, T): P~ = dropout(P) when has_drop (else untouched). One row (b, h, i) per iteration.
    B, H, T, _ = S.shape
    for r in prange(B * H * T):
        b = r // (H * T)
        h = (r // T) % H
        i = r % T
        row = S[b, h, i]
        for j in range(T):
            row[j] = row[j] * scale if keep[b, j] else FILL32  # S / sqrt(D), masked keys filled with finfo.min
        m = max(FILL32, row_max(row))
        if fast:
            for j in range(T):
                row[j] = exp_fast(row[j] - m)                   # softmax: subtract the row max (fast exp)
        else:
            for j in range(T):
                row[j] = exp_f32(row[j] - m)                    # exact exp, vectorised (no running sum here)
        tot = row_sum(row)
        inv = ONE / tot
        for j in range(T):
            row[j] *= inv                                       # P = exp(S - max) / sum
        if has_drop:
            drow = Pd[b, h, i]
            for j in range(T):                                  # P~ = P * keep / (1 - p)
                drow[j] = row[j] * _keep_scale(r * T + j, k1, k2, threshold, pscale, off)


@njit(cache=True, parallel=True)
def _softmax_rows_bwd(dP, P, keep, scale, has_drop, k1, k2, threshold, pscale, off):
    # dP (B, H, T, T): dP~ = dO V^T on entry, dS (times 1/sqrt(D)) on exit (in place); P the forward's probs
    B, H, T, _ = P.shape
    for r in prange(B * H * T):
        b = r // (H * T)
        h = (r // T) % H
        i = r % T
        g = dP[b, h, i]
        p = P[b, h, i]
        if has_drop:                                            # from P~ = dropout(P): dP = dP~ keep / (1 - p)
            for j in range(T):
                g[j] *= _keep_scale(r * T + j, k1, k2, threshold, pscale, off)
        rs = row_dot(g, p)                                      # rowsum(dP * P)
        for j in range(T):                                      # dS = P (dP - rowsum), 0 at filled keys, / sqrt(D)
            g[j] = p[j] * (g[j] - rs) * scale if keep[b, j] else ZERO


@njit(cache=True, parallel=True)
def _apply_dropout_rows(P, Pd, k1, k2, threshold, pscale, off):
    # Pd = dropout(P) over the flat index of P (B, H, T, T): regenerates the forward's P~ in backward
    B, H, T, _ = P.shape
    for r in prange(B * H * T):
        b = r // (H * T)
        h = (r // T) % H
        i = r % T
        for j in range(T):
            Pd[b, h, i, j] = P[b, h, i, j] * _keep_scale(r * T + j, k1, k2, threshold, pscale, off)


def _check(q, k, v, mask, n_heads, p=0.0, seed=0, contiguous=True):
    # contiguous=False (the BLAS version): q, k, v may be strided views, e.g. the three column blocks of one
    # fused projection's output (B, T, 3C); numpy hands BLAS their (T, D) head blocks with the right leading dimension
    _checks.check_array("q", q, ndim=3, contiguous=contiguous)
    _checks.check_array("k", k, ndim=3, contiguous=contiguous)
    _checks.check_same_shape("q", q, "k", k)
    _checks.check_array("v", v, ndim=3, contiguous=contiguous)
    _checks.check_same_shape("q", q, "v", v)
    B, T, C = tuple(q.shape)
    if not hasattr(mask, "dtype") or not (np.issubdtype(np.dtype(mask.dtype), np.integer)
                                          or np.dtype(mask.dtype) == np.bool_):
        raise ValueError(f"mask: expected an integer or bool array (nonzero = real token), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}")
    _checks.check_array("mask", mask, dtype=None, shape=(B, T), contiguous=False)
    if not isinstance(n_heads, (int, np.integer)) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"n_heads: expected a positive int, got {n_heads!r}")
    if C % n_heads:
        raise ValueError(f"n_heads: the width C = {C} of q must be divisible by n_heads = {n_heads}")
    p, seed = _dropout._check_p_seed(p, seed)
    if p >= 1.0:
        raise ValueError(f"p: expected an attention dropout probability in [0, 1), got {p}")
    if B * n_heads * T * T >= 2 ** 32:
        raise ValueError(f"q: the dropout counter is 32 bits, so B*H*T*T must be < 2^32, got {B * n_heads * T * T}")
    return B, T, C, C // n_heads


def _keep(mask):
    return np.ascontiguousarray(_cuda.to_host(mask) != 0)  # (B, T) bool


def _drop_args(p, seed):
    """(has_drop, k1, k2, threshold, pscale) for the kernels: kernels/dropout.py's keys for (p, seed)."""
    k1, k2, threshold, pscale = _dropout._scalars(float(p), int(seed))
    return p > 0, np.uint64(k1), np.uint64(k2), np.uint64(threshold), np.float32(pscale)


def attention_forward_numba(q, k, v, mask, n_heads, p=0.0, seed=0, offset=0):
    B, T, C, D = _check(q, k, v, mask, n_heads, p, seed)
    out = np.empty_like(q)
    probs = np.empty((B, n_heads, T, T), np.float32)
    if q.size:
        _attn_fwd(q, k, v, _keep(mask), int(n_heads), np.float32(1.0 / math.sqrt(D)), out, probs,
                  *_drop_args(p, seed), np.uint64(offset))
    return out, AttentionCache(q, k, v, mask, probs, int(n_heads), float(p), int(seed), int(offset))


def attention_backward_numba(dout, cache):
    q, k, v, mask, probs, H, p, seed, offset = cache
    _checks.check_array("dout", dout, shape=q.shape)
    dq, dk, dv = np.empty_like(q), np.empty_like(q), np.empty_like(q)
    if q.size:
        D = q.shape[2] // H
        _attn_bwd(dout, q, k, v, _keep(mask), probs, H, np.float32(1.0 / math.sqrt(D)), dq, dk, dv,
                  *_drop_args(p, seed), np.uint64(offset))
    return dq, dk, dv


def _heads(a, H):
    """(B, T, C) -> a (B, H, T, D) VIEW (no copy): numpy hands each (T, D) block to BLAS with leading dimension C."""
    B, T, C = a.shape
    return a.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)


def _blas_by_blocks(B, H, *products):
    """Run the head products (a, b, out) as out = a @ b over (batch, head) blocks, in parallel; a, b, out are
    (B, H, ., .) arrays or views. By kernels/gemm.py's `heads_gemm` (Numba's threads) where `own_heads()` says,
    else by numpy's BLAS (see the module docstring: one OpenBLAS thread per core)."""
    if own_heads():
        for a, b, out in products:
            _gemm.heads_gemm(a, b, out)
        return
    def task(bs, hs):
        def run():
            for a, b, out in products:
                np.matmul(a[bs, hs], b[bs, hs], out=out[bs, hs])
        return run

    # several blocks per core, taken in turn by the pool's threads: one that the OS delays holds back only its own
    parts = _blas.GEMM_BLOCKS_PER_CORE * _blas.n_cores()
    _blas.run_blas_tasks(task(bs, hs) for bs, hs in _blas.split_pairs(B, H, parts))


def own_heads() -> bool:
    """Whether the head products run on kernels/gemm.py's micro-kernel: where the linear layers' forward does
    (the AVX-512 kernel, MINIDISTIL_GEMM not "openblas"), so that one thread pool runs every product of a step."""
    m = _gemm.mode()
    return m == "own" or (m == "auto" and _gemm.cpu_kernel() == "avx512")


def attention_forward_blas(q, k, v, mask, n_heads, p=0.0, seed=0, fast=None, offset=0):
    B, T, C, D = _check(q, k, v, mask, n_heads, p, seed, contiguous=False)
    H = int(n_heads)
    fast = _f32math.fast_math_default() if fast is None else bool(fast)
    out = np.empty((B, T, C), np.float32)
    probs = np.empty((B, H, T, T), np.float32)
    if q.size:
        has_drop, k1, k2, threshold, pscale = _drop_args(p, seed)
        Q, K, V, O = (_heads(a, H) for a in (q, k, v, out))     # (B, H, T, D) views
        _blas_by_blocks(B, H, (Q, K.transpose(0, 1, 3, 2), probs))  # S = Q K^T           (B, H, T, T)
        Pd = np.empty_like(probs) if has_drop else probs
        _softmax_rows(probs, _keep(mask), np.float32(1.0 / math.sqrt(D)), fast, Pd, has_drop, k1, k2, threshold,
                      pscale, np.uint64(offset))                # P = softmax(S / sqrt(D)), P~ = dropout(P)
        _blas_by_blocks(B, H, (Pd, V, O))                       # O = P~ V             (B, H, T, D) -> out
    return out, AttentionCache(q, k, v, mask, probs, H, float(p), int(seed), int(offset))


def attention_backward_blas(dout, cache):
    q, k, v, mask, probs, H, p, seed, offset = cache
    _checks.check_array("dout", dout, shape=q.shape)
    dq, dk, dv = (np.empty(q.shape, np.float32) for _ in range(3))
    if q.size:
        B, T, C = q.shape
        has_drop, k1, k2, threshold, pscale = _drop_args(p, seed)
        Q, K, V, dO, dQ, dK, dV = (_heads(a, H) for a in (q, k, v, dout, dq, dk, dv))
        Pd = probs
        if has_drop:
            Pd = np.empty_like(probs)
            # P~ regenerated from (p, seed, offset)
            _apply_dropout_rows(probs, Pd, k1, k2, threshold, pscale, np.uint64(offset))
        dP = np.empty_like(probs)
        _blas_by_blocks(B, H, (dO, V.transpose(0, 1, 3, 2), dP),       # from O = P~ V:  dP~ = dO V^T
                        (Pd.transpose(0, 1, 3, 2), dO, dV))             #                 dV = P~^T dO
        _softmax_rows_bwd(dP, probs, _keep(mask), np.float32(1.0 / math.sqrt(C // H)), has_drop, k1, k2,
                          threshold, pscale, np.uint64(offset))       # dS = P (dP - rowsum(dP P)) / sqrt(D)
        _blas_by_blocks(B, H, (dP, K, dQ),                              # from S = Q K^T / sqrt(D): dQ = dS K
                        (dP.transpose(0, 1, 3, 2), Q, dK))              #                           dK = dS^T Q
    return dq, dk, dv


# the default CPU version
def attention_forward_cpu(q, k, v, mask, n_heads, p=0.0, seed=0, fast=None, offset=0):
    return attention_forward_blas(q, k, v, mask, n_heads, p, seed, fast, offset)


def attention_backward_cpu(dout, cache):
    return attention_backward_blas(dout, cache)


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda
#
# Every kernel gives a block ROWS rows of one (b, h): query rows i0 .. i0 + ROWS - 1 (forward, bwd_rows) or key rows
# (bwd_cols); thread t is row r = t // LANES, lane l = t % LANES (8 rows x 32 lanes of 256 threads on a GPU). A row's
# LANES threads reduce over keys (lanes stride over j) and share its output columns (lanes stride over d), so every
# thread works for any head width D; blocks grid-stride over the (b, h, row tile)s. Both products read K, V, Q or dO
# as TILE x TILE tiles staged through shared memory, a warp reading TILE adjacent floats of one row (coalesced), and
# each staged element serves the block's ROWS rows.

cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module

# rows per block: 8 of 256 threads on a GPU (32 lanes, a warp, per row: D = 64 is two passes of every lane, D = 32
# one); on the simulator's small blocks at most half the threads (4 rows x 2 lanes of the tests' 8), so that the
# lane loops and the tree reductions still have several lanes
ROWS_CUDA = max(1, min(8, _cuda.THREADS // 2))
MAX_GRID_CUDA = 4 if _cuda.SIMULATOR else 65536     # blocks per launch; more (b, h, row tile)s are grid-strided


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32
    THREADS = _cuda.THREADS
    MAXT = MAX_T_CUDA
    ROWS = ROWS_CUDA
    LANES = THREADS // ROWS          # threads per row; the tiles are LANES x LANES (thread lane l owns column l)
    TILE = LANES
    # shared-array shapes must be plain constants: the tile rows padded by one float (a warp reading a tile's column
    # hits distinct banks); bwd_cols' column arrays by four (a warp's 4 queries x 8 keys hit distinct banks)
    TILE_PAD = TILE + 1
    MAXT_PAD = MAXT + 4
    if LANES & (LANES - 1) or ROWS * LANES != THREADS:
        raise ValueError(f"THREADS: expected a power of two, got {THREADS}")

    @cuda.jit(device=True)
    def row_reduce(buf, t, val, is_max):
        # max or sum of val over the LANES threads of thread t's row, returned to each of them (tree reduction through
        # buf[0:THREADS]); every thread of the block must call it
        buf[t] = val
        cuda.syncthreads()
        lane = t % LANES
        s = LANES // 2
        while s > 0:
            if lane < s:
                if is_max:
                    buf[t] = max(buf[t], buf[t + s])
                else:
                    buf[t] += buf[t + s]
            cuda.syncthreads()
            s //= 2
        res = buf[t - lane]
        cuda.syncthreads()                                      # buf is written again by the next call
        return res

    @cuda.jit(device=True)
    def stage_tile(y, b, c0, j0, d0, T, D, tile, t):
        # tile[jj, dd] = y[b, j0 + jj, c0 + d0 + dd] (zero outside T x D), read row by row by the block's threads:
        # adjacent threads read adjacent addresses. The caller's syncthreads makes it visible.
        for e in range(t, TILE * TILE, THREADS):
            ej = j0 + e // TILE
            ed = d0 + e % TILE
            tile[e // TILE, e % TILE] = y[b, ej, c0 + ed] if ej < T and ed < D else float32(0.0)

    @cuda.jit(device=True)
    def dot_rows(x, y, b, c0, i0, T, D, out, tile, xs, t):
        # out[r, j] = sum_d x[b, i0 + r, c0 + d] y[b, j, c0 + d] for the block's ROWS rows r and every j < T: y in
        # TILE x TILE tiles (TILE rows j by TILE columns d, read row by row: coalesced), x's rows in ROWS x TILE pieces;
        # thread (r, l) sums pair (r, j0 + l) over the head columns, ascending. Rows i0 + r >= T read as zeros.
        r = t // LANES
        jj = t % LANES
        for j0 in range(0, T, TILE):
            acc = float32(0.0)
            for d0 in range(0, D, TILE):
                stage_tile(y, b, c0, j0, d0, T, D, tile, t)
                xi = i0 + t // TILE
                xd = d0 + t % TILE
                xs[t // TILE, t % TILE] = x[b, xi, c0 + xd] if xi < T and xd < D else float32(0.0)
                cuda.syncthreads()
                for dd in range(min(TILE, D - d0)):
                    acc += xs[r, dd] * tile[jj, dd]             # tile row stride TILE + 1: lanes hit distinct banks
                cuda.syncthreads()
            if j0 + jj < T:
                out[r, j0 + jj] = acc
        cuda.syncthreads()                                      # out is read next by other threads

    @cuda.jit(device=True)
    def rows_times(a, y, b, c0, i0, T, D, out, tile, t):
        # out[b, i0 + r, c0 + d] = sum_j a[r, j] y[b, j, c0 + d] for the block's rows i0 + r < T and every d < D:
        # a (ROWS, >= T) in shared memory, y in TILE x TILE tiles (coalesced); thread (r, l) owns columns d0 + l, sums
        # over j ascending
        r = t // LANES
        lane = t % LANES
        for d0 in range(0, D, TILE):
            acc = float32(0.0)
            for j0 in range(0, T, TILE):
                stage_tile(y, b, c0, j0, d0, T, D, tile, t)
                cuda.syncthreads()
                for jj in range(min(TILE, T - j0)):
                    acc += a[r, j0 + jj] * tile[jj, lane]       # a: one address per row (broadcast)
                cuda.syncthreads()
            if i0 + r < T and d0 + lane < D:
                out[b, i0 + r, c0 + d0 + lane] = acc

    @cuda.jit(device=True)
    def fmix32(h):  # kernels/dropout.py's finaliser
        h = h ^ (h >> _dropout.S16)
        h = (h * _dropout.MIX1) & _dropout.M32
        h = h ^ (h >> _dropout.S13)
        h = (h * _dropout.MIX2) & _dropout.M32
        return h ^ (h >> _dropout.S16)

    @cuda.jit(device=True)
    def keep_scale(idx, k1, k2, threshold, pscale):
        # keep / (1 - p) at flat index idx of probs (B, H, T, T), or 0 where dropped
        m = fmix32(fmix32(np.uint64(idx) ^ k1) ^ k2) >> _dropout.S8
        return pscale if m >= threshold else float32(0.0)

    @cuda.jit
    def fwd(q, k, v, keep, H, scale, out, probs, has_drop, k1, k2, threshold, pscale):
        # a block per (b, h, ROWS query rows): the rows' scores in shared memory, softmax over each row's lanes,
        # dropout drawn once per (i, j), then O = P~ V
        B, T, C = q.shape
        D = C // H
        nrt = (T + ROWS - 1) // ROWS
        t = cuda.threadIdx.x
        r = t // LANES
        lane = t % LANES
        S = cuda.shared.array((ROWS, MAXT), float32)
        tile = cuda.shared.array((TILE, TILE_PAD), float32)
        xs = cuda.shared.array((ROWS, TILE), float32)
        buf = cuda.shared.array(THREADS, float32)
        for blk in range(cuda.blockIdx.x, B * H * nrt, cuda.gridDim.x):
            i0 = (blk % nrt) * ROWS
            h = (blk // nrt) % H
            b = blk // (nrt * H)
            c0 = h * D
            i = i0 + r
            dot_rows(q, k, b, c0, i0, T, D, S, tile, xs, t)     # S = Q K^T               (ROWS, T)
            m = FILL32
            for j in range(lane, T, LANES):
                s = S[r, j] * scale if keep[b, j] else FILL32  # / sqrt(D), masked keys filled with finfo.min
                S[r, j] = s
                m = max(m, s)
            m = row_reduce(buf, t, m, True)                     # row max
            tot = float32(0.0)
            for j in range(lane, T, LANES):
                e = math.exp(S[r, j] - m)
                S[r, j] = e
                tot += e
            inv = float32(1.0) / row_reduce(buf, t, tot, False)
            for j in range(lane, T, LANES):
                p = S[r, j] * inv                               # P = softmax(S)
                if i < T:
                    probs[b, h, i, j] = p
                    if has_drop:                                # P~ = dropout(P): the hash once per (i, j)
                        p *= keep_scale(((b * H + h) * T + i) * T + j, k1, k2, threshold, pscale)
                S[r, j] = p
            cuda.syncthreads()
            rows_times(S, v, b, c0, i0, T, D, out, tile, t)     # O = P~ V                (ROWS, D)

    @cuda.jit
    def bwd_rows(dout, k, v, keep, probs, H, scale, rsum, dq, has_drop, k1, k2, threshold, pscale):
        # a block per (b, h, ROWS query rows): the rows of dS in shared memory, their dQ rows, and the row sums
        # rsum (B, H, T) that bwd_cols needs to recompute dS
        B, T, C = k.shape
        D = C // H
        nrt = (T + ROWS - 1) // ROWS
        t = cuda.threadIdx.x
        r = t // LANES
        lane = t % LANES
        G = cuda.shared.array((ROWS, MAXT), float32)
        tile = cuda.shared.array((TILE, TILE_PAD), float32)
        xs = cuda.shared.array((ROWS, TILE), float32)
        buf = cuda.shared.array(THREADS, float32)
        for blk in range(cuda.blockIdx.x, B * H * nrt, cuda.gridDim.x):
            i0 = (blk % nrt) * ROWS
            h = (blk // nrt) % H
            b = blk // (nrt * H)
            c0 = h * D
            i = i0 + r
            dot_rows(dout, v, b, c0, i0, T, D, G, tile, xs, t)  # dP~ = dO V^T            (ROWS, T)
            rs = float32(0.0)
            for j in range(lane, T, LANES):
                if i < T:
                    dp = G[r, j]
                    if has_drop:                                # dP = dP~ keep / (1 - p), the hash once per (i, j)
                        dp *= keep_scale(((b * H + h) * T + i) * T + j, k1, k2, threshold, pscale)
                    G[r, j] = dp
                    rs += dp * probs[b, h, i, j]
            rs = row_reduce(buf, t, rs, False)                  # rowsum(dP * P)
            for j in range(lane, T, LANES):
                if i < T:                                       # dS = P * (dP - rowsum), times 1/sqrt(D);
                    G[r, j] = probs[b, h, i, j] * (G[r, j] - rs) * scale if keep[b, j] else float32(0.0)
                else:                                           # filled scores pass no gradient
                    G[r, j] = float32(0.0)
            if lane == 0 and i < T:
                rsum[b, h, i] = rs
            cuda.syncthreads()
            rows_times(G, k, b, c0, i0, T, D, dq, tile, t)      # dQ = dS K / sqrt(D)       (ROWS, D)

    @cuda.jit
    def bwd_cols(dout, q, v, keep, probs, rsum, H, scale, dk, dv, has_drop, k1, k2, threshold, pscale):
        # a block per (b, h, ROWS key rows j0 + r): the columns of dS and P~ for those keys, recomputed from P, rsum
        # and dP~ = dO V^T (never stored as (B, H, T, T)), then dK = dS^T Q / sqrt(D) and dV = P~^T dO
        B, T, C = q.shape
        D = C // H
        nrt = (T + ROWS - 1) // ROWS
        t = cuda.threadIdx.x
        G = cuda.shared.array((ROWS, MAXT_PAD), float32)     # G[r, i] = dS[i, j0 + r]
        Pt = cuda.shared.array((ROWS, MAXT_PAD), float32)    # Pt[r, i] = P~[i, j0 + r]
        tile = cuda.shared.array((TILE, TILE_PAD), float32)
        xs = cuda.shared.array((ROWS, TILE), float32)
        for blk in range(cuda.blockIdx.x, B * H * nrt, cuda.gridDim.x):
            j0 = (blk % nrt) * ROWS
            h = (blk // nrt) % H
            b = blk // (nrt * H)
            c0 = h * D
            dot_rows(v, dout, b, c0, j0, T, D, G, tile, xs, t)  # G[r, i] = V_j . dO_i = dP~[i, j]
            # P[i, j0 .. j0 + ROWS) read as ROWS adjacent floats per query row (coalesced), one (i, j) per thread
            for e in range(t, T * ROWS, THREADS):
                i = e // ROWS
                rr = e % ROWS
                j = j0 + rr
                if j < T:
                    pij = probs[b, h, i, j]
                    dp = G[rr, i]
                    if has_drop:                                # P~ and dP = dP~ keep / (1 - p): one hash per (i, j)
                        ks = keep_scale(((b * H + h) * T + i) * T + j, k1, k2, threshold, pscale)
                        dp *= ks
                        Pt[rr, i] = pij * ks
                    else:
                        Pt[rr, i] = pij
                    # dS = P * (dP - rowsum), times 1/sqrt(D); filled scores pass no gradient
                    G[rr, i] = pij * (dp - rsum[b, h, i]) * scale if keep[b, j] else float32(0.0)
                else:                                           # past the last key: zeros, never written out
                    G[rr, i] = float32(0.0)
                    Pt[rr, i] = float32(0.0)
            cuda.syncthreads()
            rows_times(G, q, b, c0, j0, T, D, dk, tile, t)      # dK = dS^T Q / sqrt(D)     (ROWS, D)
            rows_times(Pt, dout, b, c0, j0, T, D, dv, tile, t)  # dV = P~^T dO              (ROWS, D)

    return fwd, bwd_rows, bwd_cols


def _check_cuda_T(T):
    if T > MAX_T_CUDA:
        raise ValueError(f"q: the CUDA attention kernels hold one row of scores in shared memory and support "
                         f"T <= {MAX_T_CUDA} tokens, got T = {T}")


def attention_forward_cuda(q, k, v, mask, n_heads, p=0.0, seed=0):
    B, T, C, D = _check(q, k, v, mask, n_heads, p, seed)
    _check_cuda_T(T)
    fwd, _, _ = _cuda_kernels()
    H = int(n_heads)
    out = _cuda.device_empty((B, T, C))
    probs = _cuda.device_empty((B, H, T, T))
    keep = _keep_device(mask)  # (B, T): a device mask is used in place, a host one copied over once
    if B * T:
        fwd[_grid_cuda(B, H, T), _cuda.THREADS](q, k, v, keep, H, np.float32(1.0 / math.sqrt(D)), out, probs,
                                                *_drop_args(p, seed))
    return out, AttentionCache(q, k, v, keep, probs, H, float(p), int(seed))  # the device mask: no copy in backward


def _keep_device(mask):
    """The (B, T) mask as the CUDA kernels read it (nonzero = keep): a device array (int or bool) passes through,
    a host one is copied over (the model moves its mask once per forward, so every layer gets a device array)."""
    return mask if _cuda.is_device_array(mask) else _cuda.to_device(_keep(mask))


def attention_backward_cuda(dout, cache):
    q, k, v, mask, probs, H, p, seed, _ = cache
    _checks.check_array("dout", dout, shape=tuple(q.shape))
    _, bwd_rows, bwd_cols = _cuda_kernels()
    B, T, C = tuple(q.shape)
    dq, dk, dv = (_cuda.device_empty((B, T, C)) for _ in range(3))
    if B * T:
        keep = _keep_device(mask)
        # dS is never stored whole: bwd_rows keeps its rows in shared memory for dQ and saves only the row sums
        # rsum = rowsum(dP * P) (B, H, T); bwd_cols recomputes its columns from P, rsum and dP~ = dO V^T (one more
        # D-term dot product per (i, j)) for dK. Writing dS over probs instead would save that product but destroy
        # the cache's P, which output_attentions hands to the caller and a second backward would read again.
        rsum = _cuda.device_empty((B, H, T))
        drop = _drop_args(p, seed)
        scale = np.float32(1.0 / math.sqrt(C // H))
        grid = _grid_cuda(B, H, T)
        bwd_rows[grid, _cuda.THREADS](dout, k, v, keep, probs, H, scale, rsum, dq, *drop)
        bwd_cols[grid, _cuda.THREADS](dout, q, v, keep, probs, rsum, H, scale, dk, dv, *drop)
    return dq, dk, dv


def _grid_cuda(B, H, T):
    """Blocks for the attention kernels: one per (b, h, ROWS_CUDA rows), at most MAX_GRID_CUDA (the kernels
    grid-stride over the rest)."""
    return min(B * H * -(-T // ROWS_CUDA), MAX_GRID_CUDA)


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def attention_forward(q, k, v, mask, n_heads, p=0.0, seed=0, fast=None, offset=0):
    """p, seed: attention-probability dropout (p = 0: none); fast: opt-in fast exp on the CPU (None: follow
    MINIDISTIL_FAST_MATH); offset: the dropout mask's flat index of probs[0, 0, 0, 0], so that a slice of a larger
    batch gets that batch's mask (b0 * H * T * T for a slice from example b0; the CPU versions only)."""
    if _cuda.is_device_array(q):
        if offset:
            raise ValueError("offset: the CUDA attention draws its dropout mask from index 0 only")
        return attention_forward_cuda(q, k, v, mask, n_heads, p, seed)
    return attention_forward_cpu(q, k, v, mask, n_heads, p, seed, fast, offset)


def attention_backward(dout, cache):
    if _cuda.is_device_array(dout):
        return attention_backward_cuda(dout, cache)
    return attention_backward_cpu(dout, cache)


# ---------------------------------------------------------------------------------------------------------------


def tolerances(q, k, v, dout, probs64, dP64):
    """Absolute tolerances (out, probs, dq, dk, dv) of a float32 version against the float64 reference, derived
    from f32_tol(n, scale) = 16 eps sqrt(n) scale (see _checks.f32_tol), with the magnitudes of this data (the
    reference's P, dP and dS = P (dP - r) give the sizes of the terms each sum adds up):
      es: error of a score, a D-term dot product. By Cauchy-Schwarz the mean |q_d k_d| of a (query, key) pair is at
          most rms(q_i) rms(k_j), the per-(row, head) root-mean-squares; the 1/sqrt(D) <= 1 only shrinks it
      ep: relative error of a probability: exp(s - m) carries the errors of s and of the row max m (2 es), the
          T-term sum and the division add f32_tol(T); as P <= 1 it is also an absolute bound
      out_i = sum_j P_ij v_j: the P errors weigh sum_j P_ij |v_j| <= max|v|; plus the rounding of a T-term sum
          whose partial sums stay below max|v|
      dP = dO V^T: a D-term dot product (as es); r_i = sum_j P_ij dP_ij: error ep rp + e_dP + f32_tol(T, rp), with
          rp = max_i sum_j P_ij |dP_ij|
      dS_ij = P_ij (dP_ij - r_i): error <= ep |dS_ij| + P_ij E2, E2 = the errors of dP_ij and of r_i
      dq_i = sum_j dS_ij k_j / sqrt(D): error <= max|k| (ep sum_j |dS_ij| + E2 sum_j P_ij) + the rounding of a T-term
          sum bounded by max|k| sum_j |dS_ij|; sum_j P_ij = 1
      dk_j, dv_j sum over the queries i: the same with column sums (sum_i |dS_ij|, c = max_j sum_i P_ij <= T)"""
    B, T, C = q.shape
    H = probs64.shape[1]
    D = C // H
    f = _checks.f32_tol

    def row_rms(a):  # max over (b, t, h) of the root-mean-square of the D-wide head block
        return float(np.sqrt((a.astype(np.float64).reshape(B, T, H, D) ** 2).mean(axis=-1)).max(initial=0.0))

    def mx(a):
        return float(np.max(a, initial=0.0))

    qr, kr, vr, gr = (row_rms(a) for a in (q, k, v, dout))
    qm, km, gm = (float(np.abs(a).max(initial=0.0)) for a in (q, k, dout))
    vm = float(np.abs(v).max(initial=0.0))
    r64 = (dP64 * probs64).sum(axis=-1, keepdims=True)
    dS = np.abs(probs64 * (dP64 - r64))
    rp = mx((probs64 * np.abs(dP64)).sum(axis=-1))       # max_i sum_j P_ij |dP_ij|
    gq = mx(dS.sum(axis=-1))                              # max_i sum_j |dS_ij|
    gk = mx(dS.sum(axis=-2))                              # max_j sum_i |dS_ij|
    c = mx(probs64.sum(axis=-2))                          # max_j sum_i P_ij
    es = f(D, scale=qr * kr)
    ep = 2 * es + f(T)
    e_dp = f(D, scale=gr * vr)
    E2 = 2 * e_dp + ep * rp + f(T, scale=rp)
    inv = 1.0 / math.sqrt(D)
    t_out = vm * ep + f(T, scale=vm)
    t_dq = (km * (ep * gq + E2) + f(T, scale=km * gq)) * inv
    t_dk = (qm * (ep * gk + E2 * c) + f(T, scale=qm * gk)) * inv
    t_dv = gm * ep * c + f(T, scale=gm * c)
    return t_out, ep, t_dq, t_dk, t_dv


def make_data(rng, B, T, C, n_pad_rows=0):
    """q, k, v, dout (B, T, C) float32 and a mask (B, T) int64 with random padding at the end of each sequence;
    the last `n_pad_rows` sequences fully padded."""
    q, k, v, dout = (rng.standard_normal((B, T, C)).astype(np.float32) for _ in range(4))
    lengths = rng.integers(1, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    if n_pad_rows:
        mask[B - n_pad_rows:] = 0
    return q, k, v, dout, mask


def main(argv=None):
    args = _checks.lab_options("attention", argv)
    rep = _checks.Report("attention")
    r = _checks.rng(0)

    def validate(version, fwd, bwd, q, k, v, dout, mask, H, to_dev=lambda a: a, to_host=lambda a: a):
        out64, c64 = attention_forward_ref(*(a.astype(np.float64) for a in (q, k, v)), mask, H)
        d64 = attention_backward_ref(dout.astype(np.float64), c64)
        dP64 = _split_heads(dout.astype(np.float64), H) @ _split_heads(v.astype(np.float64), H).transpose(0, 1, 3, 2)
        t_out, t_p, t_dq, t_dk, t_dv = tolerances(q, k, v, dout, c64.probs, dP64)
        out, c = fwd(*(to_dev(a) for a in (q, k, v)), mask, H)
        rep.check(version, "out", to_host(out), out64, atol=t_out)
        rep.check(version, "probs", to_host(c.probs), c64.probs, atol=t_p)
        grads = bwd(to_dev(dout), c)
        for name, g, g64, tol in zip(("dq", "dk", "dv"), grads, d64, (t_dq, t_dk, t_dv)):
            rep.check(version, name, to_host(g), g64, atol=tol)

    # validation at DistilBERT-base size, one sequence fully padded
    B, T, C, H = (8, 128, 768, 12) if args.size == "base" else (2, 7, 12, 3)
    q, k, v, dout, mask = make_data(r, B, T, C, n_pad_rows=1)
    validate("cpu(blas)", attention_forward_cpu, attention_backward_cpu, q, k, v, dout, mask, H)
    validate("numba", attention_forward_numba, attention_backward_numba, q, k, v, dout, mask, H)
    if _cuda.available():
        small = (2, 7, 12, 3) if _cuda.SIMULATOR or args.size == "tiny" else (B, T, C, H)
        qs, ks, vs, dos, ms = make_data(r, *small[:3], n_pad_rows=1)
        validate("cuda", attention_forward_cuda, attention_backward_cuda, qs, ks, vs, dos, ms, small[3],
                 to_dev=_cuda.to_device, to_host=_cuda.to_host)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark: B=8, T=128, H=12, D=64. Flops: forward two products of 2 B H T^2 D, backward four
    flops = 2 * 2.0 * B * H * T * T * (C // H)
    _, c = attention_forward_cpu(q, k, v, mask, H)
    _, c_ref = attention_forward_ref(q, k, v, mask, H)
    rep.bench("ref(numpy)", lambda: attention_forward_ref(q, k, v, mask, H), flops=flops)
    rep.bench("cpu(blas)", lambda: attention_forward_cpu(q, k, v, mask, H), flops=flops)
    rep.bench("cpu(blas) fast", lambda: attention_forward_cpu(q, k, v, mask, H, fast=True), flops=flops)
    rep.bench("numba", lambda: attention_forward_numba(q, k, v, mask, H), flops=flops)
    rep.bench("ref bwd", lambda: attention_backward_ref(dout, c_ref), flops=2 * flops)
    rep.bench("cpu(blas) bwd", lambda: attention_backward_cpu(dout, c), flops=2 * flops)
    _, c_nb = attention_forward_numba(q, k, v, mask, H)
    rep.bench("numba bwd", lambda: attention_backward_numba(dout, c_nb), flops=2 * flops)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
        _, cd = attention_forward_cuda(qd, kd, vd, mask, H)
        rep.bench("cuda", lambda: attention_forward_cuda(qd, kd, vd, mask, H), flops=flops, sync=cu.synchronize)
        rep.bench("cuda bwd", lambda: attention_backward_cuda(dod, cd), flops=2 * flops, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
