"""Multi-head scaled dot-product attention with a key padding mask (BERT / DistilBERT self-attention core).

Layout: q, k, v, out are (B, T, C) with C = H * D; head h is the contiguous column block [h*D, (h+1)*D), exactly
the layout of `x @ W_q^T` reshaped to (B, T, H, D) as Hugging Face does. mask (B, T): nonzero = real token,
0 = padding; it masks KEYS (every query of a sequence ignores that sequence's padding tokens).

Forward, for each (batch b, head h), with Q, K, V the (T, D) blocks of that head:
    S = Q K^T / sqrt(D)                                       (T, T) scores
    S[:, j] = finfo(dtype).min  where mask[b, j] == 0         masked keys FILLED with the most negative finite value
    P = softmax(S) over keys (row max subtracted first)       (T, T) probs, kept in the cache as (B, H, T, T)
    O = P V                                                   (T, D), merged back into out (B, T, C)
A fully padded sequence has every score equal to finfo.min: its rows come out uniform (1/T) and the output finite,
never NaN (a -inf fill would give 0/0). This is what transformers' masked_fill(torch.finfo.min) does.

Backward (dO the (T, D) block of dout):
    dP = dO V^T                         from O = P V
    dV = P^T dO                         from O = P V
    dS = P * (dP - rowsum(dP * P))      from P = softmax(S)
    dS[:, j] = 0  where mask[b, j] == 0 from the fill: a filled score is a constant, it passes no gradient (for a
                                        partly padded row P is exactly 0 there anyway; for a fully padded row not)
    dQ = dS K / sqrt(D)                 from S = Q K^T / sqrt(D)
    dK = dS^T Q / sqrt(D)               from S = Q K^T / sqrt(D)

Versions:
    attention_forward_ref / attention_backward_ref    NumPy, unfused: transposes to (B, H, T, D) and batched matmuls
    attention_forward_cpu / attention_backward_cpu    Numba, prange over the B*H (batch, head) pairs, read and write
                                                      the (B, T, C) layout directly: each thread gathers its head's
                                                      blocks into small contiguous buffers and multiplies them with
                                                      plain i-k-j loops (vectorised axpy rows); softmax fused in
                                                      between. Measured: np.dot (scipy's OpenBLAS) called from the
                                                      prange threads was 5-20x slower here, its own thread pool
                                                      oversubscribing the cores the prange threads already use
    attention_forward_cuda / attention_backward_cuda  numba.cuda, one block per (b, h, row): threads over keys,
                                                      the row of scores in shared memory (T <= MAX_T_CUDA = 512),
                                                      max and sum reduced through shared memory; the backward is two
                                                      kernels (per query row: dS and dQ; per key row: dK and dV)
Cache: AttentionCache(q, k, v, mask, probs, n_heads). Backward returns fresh arrays.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _common, _cuda

ZERO = np.float32(0.0)
ONE = np.float32(1.0)
FILL32 = np.float32(np.finfo(np.float32).min)   # the masked-score fill: -3.4028235e38, finite
MAX_T_CUDA = 512                                # compile-time length of the CUDA kernels' shared score row


class AttentionCache(NamedTuple):
    q: np.ndarray       # (B, T, C) queries
    k: np.ndarray       # (B, T, C) keys
    v: np.ndarray       # (B, T, C) values
    mask: np.ndarray    # (B, T) key padding mask as given (nonzero = real token)
    probs: np.ndarray   # (B, H, T, T) softmax probabilities P
    n_heads: int        # H


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def _split_heads(x, H):
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)   # (B, T, C) -> (B, H, T, D)


def _merge_heads(x):
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)       # (B, H, T, D) -> (B, T, C)


def attention_forward_ref(q, k, v, mask, n_heads):
    B, T, C = q.shape
    D = C // n_heads
    Q, K, V = (_split_heads(a, n_heads) for a in (q, k, v))   # (B, H, T, D)
    S = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(D)               # S = Q K^T / sqrt(D)      (B, H, T, T)
    pad = (np.asarray(mask) == 0)[:, None, None, :]             # (B, 1, 1, T) masked keys
    S = np.where(pad, np.finfo(S.dtype).min, S)                 # fill masked keys with finfo.min
    E = np.exp(S - S.max(axis=-1, keepdims=True))
    P = E / E.sum(axis=-1, keepdims=True)                       # P = softmax(S)           (B, H, T, T)
    O = P @ V                                                   # O = P V                  (B, H, T, D)
    out = _merge_heads(O).astype(q.dtype, copy=False)
    return np.ascontiguousarray(out), AttentionCache(q, k, v, mask, P.astype(q.dtype, copy=False), n_heads)


def attention_backward_ref(dout, cache):
    q, k, v, mask, P, H = cache
    B, T, C = q.shape
    D = C // H
    Q, K, V, dO = (_split_heads(a, H) for a in (q, k, v, dout))  # (B, H, T, D)
    dP = dO @ V.transpose(0, 1, 3, 2)                            # dP = dO V^T                       (B, H, T, T)
    dV = P.transpose(0, 1, 3, 2) @ dO                            # dV = P^T dO                       (B, H, T, D)
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


@njit(cache=True, parallel=True)
def _attn_fwd(q, k, v, keep, H, scale, out, probs):
    # q, k, v, out (B, T, C); keep (B, T) bool; probs (B, H, T, T); scale = 1/sqrt(D)
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
            tot = ZERO
            for j in range(T):
                e = math.exp(S[i, j] - m)                       # softmax: subtract the row max
                P[i, j] = e
                tot += e
            inv = ONE / tot
            for j in range(T):
                P[i, j] *= inv
        O = np.zeros((T, D), np.float32)
        _matmul_acc(P, Vh, O)                                   # O = P V            (T, D)
        out[b, :, c0:c0 + D] = O


@njit(cache=True, parallel=True)
def _attn_bwd(dout, q, k, v, keep, probs, H, scale, dq, dk, dv):
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
        Pt = np.ascontiguousarray(P.T)                          # (T, T)
        dP = np.zeros((T, T), np.float32)
        _matmul_acc(dO, Vt, dP)                                 # from O = P V:  dP = dO V^T   (T, T)
        dVh = np.zeros((T, D), np.float32)
        _matmul_acc(Pt, dO, dVh)                                # from O = P V:  dV = P^T dO   (T, D)
        dv[b, :, c0:c0 + D] = dVh
        for i in range(T):                                      # from P = softmax(S):
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


def _check(q, k, v, mask, n_heads):
    _common.check_array("q", q, ndim=3)
    _common.check_array("k", k, ndim=3)
    _common.check_same_shape("q", q, "k", k)
    _common.check_array("v", v, ndim=3)
    _common.check_same_shape("q", q, "v", v)
    B, T, C = tuple(q.shape)
    if not hasattr(mask, "dtype") or not (np.issubdtype(np.dtype(mask.dtype), np.integer)
                                          or np.dtype(mask.dtype) == np.bool_):
        raise ValueError(f"mask: expected an integer or bool array (nonzero = real token), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}")
    _common.check_array("mask", mask, dtype=None, shape=(B, T), contiguous=False)
    if not isinstance(n_heads, (int, np.integer)) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"n_heads: expected a positive int, got {n_heads!r}")
    if C % n_heads:
        raise ValueError(f"n_heads: the width C = {C} of q must be divisible by n_heads = {n_heads}")
    return B, T, C, C // n_heads


def _keep(mask):
    return np.ascontiguousarray(_cuda.to_host(mask) != 0)  # (B, T) bool


def attention_forward_cpu(q, k, v, mask, n_heads):
    B, T, C, D = _check(q, k, v, mask, n_heads)
    out = np.empty_like(q)
    probs = np.empty((B, n_heads, T, T), np.float32)
    if q.size:
        _attn_fwd(q, k, v, _keep(mask), int(n_heads), np.float32(1.0 / math.sqrt(D)), out, probs)
    return out, AttentionCache(q, k, v, mask, probs, int(n_heads))


def attention_backward_cpu(dout, cache):
    q, k, v, mask, probs, H = cache
    _common.check_array("dout", dout, shape=q.shape)
    dq, dk, dv = np.empty_like(q), np.empty_like(q), np.empty_like(q)
    if q.size:
        D = q.shape[2] // H
        _attn_bwd(dout, q, k, v, _keep(mask), probs, H, np.float32(1.0 / math.sqrt(D)), dq, dk, dv)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32  # noqa: PLC0415
    THREADS = _cuda.THREADS
    MAXT = MAX_T_CUDA

    @cuda.jit(device=True)
    def block_reduce(buf, t, is_max):
        # tree reduction of buf[0:THREADS] into buf[0] (max or sum); every thread must call it
        s = THREADS // 2
        while s > 0:
            if t < s:
                if is_max:
                    buf[t] = max(buf[t], buf[t + s])
                else:
                    buf[t] += buf[t + s]
            cuda.syncthreads()
            s //= 2

    @cuda.jit
    def fwd(q, k, v, keep, H, scale, out, probs):
        # one block per (b, h, query row i); threads stride over keys j, then over output columns d
        B, T, C = q.shape
        D = C // H
        blk = cuda.blockIdx.x
        i = blk % T
        h = (blk // T) % H
        b = blk // (T * H)
        c0 = h * D
        t = cuda.threadIdx.x
        row = cuda.shared.array(MAXT, float32)
        buf = cuda.shared.array(THREADS, float32)
        m = FILL32
        for j in range(t, T, THREADS):
            if keep[b, j]:
                s = float32(0.0)
                for d in range(D):
                    s += q[b, i, c0 + d] * k[b, j, c0 + d]      # S = Q K^T
                s *= scale                                      #     / sqrt(D)
            else:
                s = FILL32                                      # masked key filled with finfo.min
            row[j] = s
            m = max(m, s)
        buf[t] = m
        cuda.syncthreads()
        block_reduce(buf, t, True)
        m = buf[0]                                              # row max
        cuda.syncthreads()
        tot = float32(0.0)
        for j in range(t, T, THREADS):
            e = math.exp(row[j] - m)
            row[j] = e
            tot += e
        buf[t] = tot
        cuda.syncthreads()
        block_reduce(buf, t, False)
        inv = float32(1.0) / buf[0]
        for j in range(t, T, THREADS):
            p = row[j] * inv                                    # P = softmax(S)
            row[j] = p
            probs[b, h, i, j] = p
        cuda.syncthreads()
        for d in range(t, D, THREADS):
            acc = float32(0.0)
            for j in range(T):
                acc += row[j] * v[b, j, c0 + d]                 # O = P V
            out[b, i, c0 + d] = acc

    @cuda.jit
    def bwd_rows(dout, k, v, keep, probs, H, scale, ds, dq):
        # one block per (b, h, query row i): dS row (kept in ds for the key-row kernel) and the dQ row
        B, T, C = k.shape
        D = C // H
        blk = cuda.blockIdx.x
        i = blk % T
        h = (blk // T) % H
        b = blk // (T * H)
        c0 = h * D
        t = cuda.threadIdx.x
        row = cuda.shared.array(MAXT, float32)
        buf = cuda.shared.array(THREADS, float32)
        r = float32(0.0)
        for j in range(t, T, THREADS):
            dp = float32(0.0)
            for d in range(D):
                dp += dout[b, i, c0 + d] * v[b, j, c0 + d]      # dP = dO V^T
            row[j] = dp
            r += dp * probs[b, h, i, j]
        buf[t] = r
        cuda.syncthreads()
        block_reduce(buf, t, False)
        r = buf[0]                                              # rowsum(dP * P)
        for j in range(t, T, THREADS):
            if keep[b, j]:
                g = probs[b, h, i, j] * (row[j] - r) * scale    # dS = P * (dP - rowsum), times 1/sqrt(D)
            else:
                g = float32(0.0)                                # filled scores pass no gradient
            row[j] = g
            ds[b, h, i, j] = g
        cuda.syncthreads()
        for d in range(t, D, THREADS):
            acc = float32(0.0)
            for j in range(T):
                acc += row[j] * k[b, j, c0 + d]                 # dQ = dS K / sqrt(D)
            dq[b, i, c0 + d] = acc

    @cuda.jit
    def bwd_cols(dout, q, probs, ds, H, dk, dv):
        # one block per (b, h, key row j); threads over columns d
        B, T, C = q.shape
        D = C // H
        blk = cuda.blockIdx.x
        j = blk % T
        h = (blk // T) % H
        b = blk // (T * H)
        c0 = h * D
        for d in range(cuda.threadIdx.x, D, THREADS):
            ak = float32(0.0)
            av = float32(0.0)
            for i in range(T):
                ak += ds[b, h, i, j] * q[b, i, c0 + d]          # dK = dS^T Q / sqrt(D)
                av += probs[b, h, i, j] * dout[b, i, c0 + d]    # dV = P^T dO
            dk[b, j, c0 + d] = ak
            dv[b, j, c0 + d] = av

    return fwd, bwd_rows, bwd_cols


def _check_cuda_T(T):
    if T > MAX_T_CUDA:
        raise ValueError(f"q: the CUDA attention kernels hold one row of scores in shared memory and support "
                         f"T <= {MAX_T_CUDA} tokens, got T = {T}")


def attention_forward_cuda(q, k, v, mask, n_heads):
    B, T, C, D = _check(q, k, v, mask, n_heads)
    _check_cuda_T(T)
    fwd, _, _ = _cuda_kernels()
    H = int(n_heads)
    out = _cuda.device_empty((B, T, C))
    probs = _cuda.device_empty((B, H, T, T))
    if B * T:
        keep = _cuda.to_device(_keep(mask))
        fwd[B * H * T, _cuda.THREADS](q, k, v, keep, H, np.float32(1.0 / math.sqrt(D)), out, probs)
    return out, AttentionCache(q, k, v, mask, probs, H)


def attention_backward_cuda(dout, cache):
    q, k, v, mask, probs, H = cache
    _common.check_array("dout", dout, shape=tuple(q.shape))
    _, bwd_rows, bwd_cols = _cuda_kernels()
    B, T, C = tuple(q.shape)
    dq, dk, dv = (_cuda.device_empty((B, T, C)) for _ in range(3))
    if B * T:
        keep = _cuda.to_device(_keep(mask))
        ds = _cuda.device_empty((B, H, T, T))
        bwd_rows[B * H * T, _cuda.THREADS](dout, k, v, keep, probs, H, np.float32(1.0 / math.sqrt(C // H)), ds, dq)
        bwd_cols[B * H * T, _cuda.THREADS](dout, q, probs, ds, H, dk, dv)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def attention_forward(q, k, v, mask, n_heads):
    if _cuda.is_device_array(q):
        return attention_forward_cuda(q, k, v, mask, n_heads)
    return attention_forward_cpu(q, k, v, mask, n_heads)


def attention_backward(dout, cache):
    if _cuda.is_device_array(dout):
        return attention_backward_cuda(dout, cache)
    return attention_backward_cpu(dout, cache)


# ---------------------------------------------------------------------------------------------------------------


def tolerances(q, k, v, dout, probs64, dP64):
    """Absolute tolerances (out, probs, dq, dk, dv) of a float32 version against the float64 reference, derived
    from f32_tol(n, scale) = 16 eps sqrt(n) scale (see _common.f32_tol), with the magnitudes of this data (the
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
    f = _common.f32_tol

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


def main():
    rep = _common.Report("attention")
    r = _common.rng(0)

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
    B, T, C, H = 8, 128, 768, 12
    q, k, v, dout, mask = make_data(r, B, T, C, n_pad_rows=1)
    validate("cpu", attention_forward_cpu, attention_backward_cpu, q, k, v, dout, mask, H)
    if _cuda.available():
        small = (2, 7, 12, 3) if _cuda.SIMULATOR else (B, T, C, H)
        qs, ks, vs, dos, ms = make_data(r, *small[:3], n_pad_rows=1)
        validate("cuda", attention_forward_cuda, attention_backward_cuda, qs, ks, vs, dos, ms, small[3],
                 to_dev=_cuda.to_device, to_host=_cuda.to_host)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    # benchmark: B=8, T=128, H=12, D=64. Flops: forward two products of 2 B H T^2 D, backward four
    flops = 2 * 2.0 * B * H * T * T * (C // H)
    _, c = attention_forward_cpu(q, k, v, mask, H)
    _, c_ref = attention_forward_ref(q, k, v, mask, H)
    rep.bench("ref(numpy)", lambda: attention_forward_ref(q, k, v, mask, H), flops=flops)
    rep.bench("cpu", lambda: attention_forward_cpu(q, k, v, mask, H), flops=flops)
    rep.bench("ref bwd", lambda: attention_backward_ref(dout, c_ref), flops=2 * flops)
    rep.bench("cpu bwd", lambda: attention_backward_cpu(dout, c), flops=2 * flops)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
        _, cd = attention_forward_cuda(qd, kd, vd, mask, H)
        rep.bench("cuda", lambda: attention_forward_cuda(qd, kd, vd, mask, H), flops=flops, sync=cu.synchronize)
        rep.bench("cuda bwd", lambda: attention_backward_cuda(dod, cd), flops=2 * flops, sync=cu.synchronize)
    rep.finish()


if __name__ == "__main__":
    main()
