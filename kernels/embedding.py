"""Embedding lookup (token and position embeddings): a gather forward, a scatter-add backward. Any row gather is
one: with the (B*T, C) hidden states as the table and flat positions as the ids, it picks the rows an MLM head
computes logits for (minidistil's functional.take_rows).

Forward (ids of any shape, table (V, C)):
    out[n, :] = table[ids[n], :]                      for every position n of ids (flattened)
Derivative: out is linear in table, d out[n, c] / d table[v, c] = [ids[n] == v], so
    dtable[v, :] = sum over the positions n with ids[n] == v of dout[n, :]
A row whose id never occurs gets zero; an id that occurs k times gets the SUM of its k rows of dout.
There is no gradient for ids (they are integers).

Versions:
    embedding_forward_ref / embedding_backward_ref   NumPy fancy indexing and np.add.at (float32 or float64)
    embedding_forward_cpu                            Numba, prange over positions, one row copied per position
                                                     (8 x 128 x 768, one thread: 0.22 ms, numpy's table[ids]
                                                     0.20 ms; prange only pays where cores are free)
    embedding_backward_cpu                           Numba, serial over positions, whole rows added (race-free by
                                                     construction, positions in order)
    embedding_backward_cpu_colblocks                 Numba, race-free in parallel: prange over 64-column blocks,
                                                     each thread walks every position for its own columns. Measured
                                                     slower (1024 x 768, one thread: 0.95 ms vs 0.23 ms serial; it
                                                     re-reads ids and touches each dtable row C/64 times), so it is
                                                     not the default; main() benchmarks both.
    embedding_forward_cuda                           numba.cuda, one block per position, threads over C
    embedding_backward_cuda                          numba.cuda, one block per position, cuda.atomic.add into dtable
                                                     (zeroed on the device: no (V, C) host array copied over)
Cache: EmbeddingCache(ids, V): the ids (a device array on the CUDA path) and the vocabulary size; the backward
returns a fresh zero (V, C) array with the rows scatter-added (it never adds into an existing gradient).

Summation order: the reference and the CPU version add repeated ids in position order; the CUDA version adds them
in whatever order the atomics land, so it can differ in the last bits where an id repeats (tests allow for it).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda

_ID_DTYPES = (np.int32, np.int64)
_COL_BLOCK = 64  # columns per thread in the CPU backward: 256 bytes of float32, four cache lines


class EmbeddingCache(NamedTuple):
    ids: np.ndarray  # (*S) int32 or int64, the looked-up ids (a device array on the CUDA path)
    V: int           # rows of the table, the shape of dtable is (V, C)


def _check_forward(ids, table, checked=False):
    _checks.check_array("table", table, ndim=2)
    _checks.check_array("ids", ids, dtype=_ID_DTYPES)
    V = int(tuple(table.shape)[0])
    if not checked:  # checked=True: the caller has checked the ids against V already (on the host)
        _checks.check_ids("ids", _cuda.to_host(ids), V)  # device ids are copied to the host for the check (small)
    return V


def _check_backward(dout, cache):
    ids_shape = tuple(cache.ids.shape)
    _checks.check_array("dout", dout, ndim=len(ids_shape) + 1)
    _checks.check_array("dout", dout, shape=(*ids_shape, None))


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def embedding_forward_ref(ids, table):
    # out = table[ids]: (*S) ids, (V, C) table -> (*S, C)
    return table[ids], EmbeddingCache(ids, table.shape[0])


def embedding_backward_ref(dout, cache):
    # out[n, :] = table[ids[n], :]  ->  dtable[ids[n], :] += dout[n, :]   (np.add.at sums repeated ids)
    C = dout.shape[-1]
    dtable = np.zeros((cache.V, C), dtype=dout.dtype)
    np.add.at(dtable, cache.ids.reshape(-1), dout.reshape(-1, C))
    return dtable


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, parallel=True)
def _gather(ids, table, out):
    # ids (N,), table (V, C), out (N, C)
    for n in prange(ids.shape[0]):
        out[n, :] = table[ids[n], :]


@njit(cache=True, parallel=True)
def _scatter_add_colblocks(ids, dout, dtable, col_block):
    # ids (N,), dout (N, C), dtable (V, C) zeroed. Thread j owns columns [j*col_block, (j+1)*col_block) of every
    # row, so no two threads ever write the same element: race-free, and repeated ids are added in position order.
    N, C = dout.shape
    n_blocks = (C + col_block - 1) // col_block
    for j in prange(n_blocks):
        c0 = j * col_block
        c1 = min(C, c0 + col_block)
        for n in range(N):
            v = ids[n]
            for c in range(c0, c1):
                dtable[v, c] += dout[n, c]


@njit(cache=True)
def _scatter_add_serial(ids, dout, dtable):
    # ids (N,), dout (N, C), dtable (V, C) zeroed. One thread, positions in order, each row a contiguous
    # (vectorised) loop: race-free because nothing runs in parallel, and the fastest version measured
    N, C = dout.shape
    for n in range(N):
        v = ids[n]
        for c in range(C):
            dtable[v, c] += dout[n, c]


def embedding_forward_cpu(ids, table, checked=False):
    V = _check_forward(ids, table, checked)
    C = table.shape[1]
    out = np.empty((*ids.shape, C), dtype=np.float32)
    _gather(ids.reshape(-1), table, out.reshape(-1, C))
    return out, EmbeddingCache(ids, V)


def embedding_backward_cpu(dout, cache):
    _check_backward(dout, cache)
    C = dout.shape[-1]
    dtable = np.zeros((cache.V, C), dtype=np.float32)
    _scatter_add_serial(cache.ids.reshape(-1), dout.reshape(-1, C), dtable)
    return dtable


def embedding_backward_cpu_colblocks(dout, cache):
    _check_backward(dout, cache)
    C = dout.shape[-1]
    dtable = np.zeros((cache.V, C), dtype=np.float32)
    _scatter_add_colblocks(cache.ids.reshape(-1), dout.reshape(-1, C), dtable, _COL_BLOCK)
    return dtable


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    THREADS = _cuda.THREADS

    @cuda.jit
    def gather(ids, table, out, C):
        # block n copies row ids[n] of table (flat (V*C,)) into row n of out (flat (N*C,)); threads stride over C
        n = cuda.blockIdx.x
        src = ids[n] * C
        dst = n * C
        c = cuda.threadIdx.x
        while c < C:
            out[dst + c] = table[src + c]
            c += THREADS

    @cuda.jit
    def scatter_add(ids, dout, dtable, C):
        # out[n, :] = table[ids[n], :]  ->  dtable[ids[n], :] += dout[n, :]; atomics because two blocks may hold
        # the same id
        n = cuda.blockIdx.x
        dst = ids[n] * C
        src = n * C
        c = cuda.threadIdx.x
        while c < C:
            cuda.atomic.add(dtable, dst + c, dout[src + c])
            c += THREADS

    return gather, scatter_add


def embedding_forward_cuda(ids, table, checked=False):
    """ids: host or device int array (host ids are copied over once; device ids are used in place); table:
    device (V, C) float32. Returns a device array and a cache holding device ids."""
    V = _check_forward(ids, table, checked)
    C = tuple(table.shape)[1]
    ids_d = _cuda.to_device(ids)
    N = int(np.prod(tuple(ids.shape), dtype=np.int64))
    out = _cuda.device_empty((*tuple(ids.shape), C))
    if N and C:
        gather, _ = _cuda_kernels()
        gather[N, _cuda.THREADS](ids_d.reshape(N), table.reshape(V * C), out.reshape(N * C), C)
    return out, EmbeddingCache(ids_d, V)


def embedding_backward_cuda(dout, cache):
    _check_backward(dout, cache)
    C = tuple(dout.shape)[-1]
    N = int(np.prod(tuple(cache.ids.shape), dtype=np.int64))
    dtable = _cuda.device_zeros((cache.V, C))  # zeroed on the device
    if N and C:
        _, scatter_add = _cuda_kernels()
        scatter_add[N, _cuda.THREADS](cache.ids.reshape(N), dout.reshape(N * C), dtable.reshape(cache.V * C), C)
    return dtable


# ---------------------------------------------------------------------------------------------------------------
# public entry points: a device table goes to CUDA, a numpy table to the Numba CPU kernels


def embedding_forward(ids, table, checked=False):
    """checked=True: the caller has checked 0 <= ids < V itself (the model checks input_ids on the host before
    moving them to the device once per batch), so device ids are not copied back to the host to check them."""
    if _cuda.is_device_array(table):
        return embedding_forward_cuda(ids, table, checked)
    return embedding_forward_cpu(ids, table, checked)


def embedding_backward(dout, cache):
    if _cuda.is_device_array(dout):
        return embedding_backward_cuda(dout, cache)
    return embedding_backward_cpu(dout, cache)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("embedding", argv)
    rep = _checks.Report("embedding")
    r = _checks.rng(0)
    # DistilBERT-base word embeddings: ids (B, T) = (8, 128), table (V, C) = (30522, 768). Ids drawn from a small
    # range so that many repeat (the scatter-add must sum them, like [PAD] and [CLS] in a real batch).
    B, T, V, C = (8, 128, 30522, 768) if args.size == "base" else (2, 7, 50, 13)
    table = r.standard_normal((V, C)).astype(np.float32)
    ids = r.integers(0, min(1000, V), size=(B, T)).astype(np.int64)
    ids[:, 0] = 101 % V   # [CLS] in every row
    ids[:, -8:] = 0   # padded tails
    dout = r.standard_normal((B, T, C)).astype(np.float32)
    out64, _ = embedding_forward_ref(ids, table.astype(np.float64))
    dtab64 = embedding_backward_ref(dout.astype(np.float64), EmbeddingCache(ids, V))
    # forward is a copy: exact. backward sums at most k rows per id in float32: error <= k * eps * max|dout|
    k = int(np.bincount(ids.reshape(-1)).max())
    tol_b = _checks.f32_tol(k, scale=float(np.abs(dout).max()))
    out, c = embedding_forward_cpu(ids, table)
    rep.check("cpu", "out", out, out64, atol=0.0)
    rep.check("cpu", "dtable", embedding_backward_cpu(dout, c), dtab64, atol=tol_b)
    rep.check("cpu colblocks", "dtable", embedding_backward_cpu_colblocks(dout, c), dtab64, atol=tol_b)
    out32, c32 = embedding_forward_cpu(ids.astype(np.int32), table)
    rep.check("cpu int32", "out", out32, out64, atol=0.0)

    if _cuda.available():
        Vs, ns = (min(64, V), 2) if _cuda.SIMULATOR else (V, B)
        ids_s = ids[:ns] % Vs
        tab_s = table[:Vs]
        dout_s = dout[:ns]
        k_s = int(np.bincount(ids_s.reshape(-1)).max())
        outd, cd = embedding_forward_cuda(ids_s, _cuda.to_device(tab_s))
        rep.check("cuda", "out", _cuda.to_host(outd), tab_s.astype(np.float64)[ids_s], atol=0.0)
        dtd = embedding_backward_cuda(_cuda.to_device(dout_s), cd)
        rep.check("cuda", "dtable", _cuda.to_host(dtd),
                  embedding_backward_ref(dout_s.astype(np.float64), EmbeddingCache(ids_s, Vs)),
                  atol=_checks.f32_tol(k_s, scale=float(np.abs(dout_s).max())))
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # bytes: forward reads N rows and writes N rows; backward reads N rows of dout and reads + writes N rows of
    # dtable (np.zeros of the (V, C) table is a lazy calloc: only the pages of rows that are touched are filled)
    N = B * T
    nbytes_f = 2 * N * C * 4
    nbytes_b = 3 * N * C * 4
    rep.bench("ref(numpy)", lambda: embedding_forward_ref(ids, table), nbytes=nbytes_f)
    rep.bench("cpu", lambda: embedding_forward_cpu(ids, table), nbytes=nbytes_f)
    rep.bench("ref bwd", lambda: embedding_backward_ref(dout, c), nbytes=nbytes_b, repeat=5)
    rep.bench("cpu bwd", lambda: embedding_backward_cpu(dout, c), nbytes=nbytes_b)
    rep.bench("cpu bwd colblk", lambda: embedding_backward_cpu_colblocks(dout, c), nbytes=nbytes_b)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        tab_d, ids_d, dout_d = _cuda.to_device(table), _cuda.to_device(ids), _cuda.to_device(dout)
        _, cdd = embedding_forward_cuda(ids_d, tab_d)
        rep.bench("cuda", lambda: embedding_forward_cuda(ids_d, tab_d), nbytes=nbytes_f, sync=cu.synchronize)
        rep.bench("cuda bwd", lambda: embedding_backward_cuda(dout_d, cdd), nbytes=nbytes_b, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
