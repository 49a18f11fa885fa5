"""Dropout (inverted dropout, as in BERT training) with a counter-based mask: nothing is stored.

Forward (elementwise over the flattened x, index i = 0 .. N-1):
    u_i   = uniform(seed, i) in [0, 1)                     a hash of (seed, i), see below
    keep_i = [u_i >= p]
    y_i   = x_i * keep_i / (1 - p)                         (p = 1: y = 0)
so E[y_i] = x_i. Derivative (y is linear in x):
    dx_i = dy_i * keep_i / (1 - p)
The backward regenerates keep_i from (seed, i) instead of reading a stored mask: it costs a few integer operations
per element and saves an N-byte mask per dropout layer. The same seed always gives the same mask, so the caller
must pass a fresh seed for every forward call (e.g. derived from the step and the layer).

The uniform: a 32-bit counter-based hash (no state, so every element, thread and device computes it alone):
    k1 = fmix32(seed_lo ^ 0x9E3779B9),  k2 = fmix32(seed_hi ^ k1 ^ 0x85EBCA77)      (host, once per call)
    h  = fmix32(fmix32(i ^ k1) ^ k2)                                                  (per element)
    u  = (h >> 8) / 2^24                                                              (24 bits: exact in float32)
where fmix32 is MurmurHash3's finaliser (xor-shift, multiply, xor-shift, multiply, xor-shift), a bijection of
32-bit integers with full avalanche. Two rounds with two keys keep the masks of different seeds unrelated (one
round of fmix32(i ^ k) would give seeds whose keys differ only in low bits the same multiset of u's). The test
keep iff u >= p is done exactly in integers: keep iff (h >> 8) >= ceil(p * 2^24), so the reference, the Numba CPU
and the CUDA versions give bit-identical masks. All arithmetic is in 64-bit unsigned integers with an explicit
`& 0xFFFFFFFF` after every multiply (a 32 x 32-bit product fits in 64 bits), because Numba and NumPy promote
uint32 products differently. The counter is 32 bits: at most 2^32 elements per call (a ValueError beyond).

Versions:
    dropout_forward_ref / dropout_backward_ref   NumPy, vectorised hash over np.arange(N) (float32 or float64)
    dropout_forward_cpu / dropout_backward_cpu   Numba, prange over elements; forward and backward are the same
                                                 kernel (y = x * keep * scale and dx = dy * keep * scale)
    dropout_forward_cuda / dropout_backward_cuda numba.cuda, one thread per element, the hash as a device function
Cache: DropoutCache(p, seed, shape): the two scalars and the shape; no mask.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _checks, _cuda

_MASK32 = 0xFFFFFFFF
_U24 = 1 << 24  # the uniform has 24 bits
# numba/numpy constants, all uint64 so that no operation mixes signed and unsigned (Numba would go to float64)
M32 = np.uint64(_MASK32)
MIX1 = np.uint64(0x85EBCA6B)
MIX2 = np.uint64(0xC2B2AE35)
S16 = np.uint64(16)
S13 = np.uint64(13)
S8 = np.uint64(8)
ZERO = np.float32(0.0)


class DropoutCache(NamedTuple):
    p: float            # drop probability in [0, 1]
    seed: int           # the mask's seed, in [0, 2^64)
    shape: tuple        # shape of x (and of dy)
    offset: int = 0     # the counter of x's first element (a slice of a larger array: its flat start)


# ---------------------------------------------------------------------------------------------------------------
# host-side scalars: keys, threshold, scale (shared by every version)


def _fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finaliser on a Python int (the host computes the keys with it)."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    h ^= h >> 16
    return h


def _check_p_seed(p, seed):
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (0.0 <= float(p) <= 1.0):
        raise ValueError(f"p: expected a drop probability in [0, 1], got {p!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not (0 <= int(seed) < 2 ** 64):
        raise ValueError(f"seed: expected an integer in [0, 2^64), got {seed!r}")
    return float(p), int(seed)


def _scalars(p: float, seed: int):
    """(k1, k2, threshold, scale): the two hash keys, keep iff (h >> 8) >= threshold, and 1 / (1 - p)."""
    k1 = _fmix32((seed & _MASK32) ^ 0x9E3779B9)
    k2 = _fmix32(((seed >> 32) & _MASK32) ^ k1 ^ 0x85EBCA77)
    threshold = math.ceil(p * _U24)          # u >= p  <=>  m / 2^24 >= p  <=>  m >= ceil(p * 2^24)   (m integer)
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return k1, k2, threshold, scale


def _check_x(name, x):
    _checks.check_array(name, x)
    if x.size >= 2 ** 32:
        raise ValueError(f"{name}: the dropout counter is 32 bits, so at most 2^32 elements per call, got {x.size}")


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def dropout_keep_ref(shape, p, seed, offset=0):
    """The keep mask (bool, `shape`) for (p, seed), counters offset, offset + 1, ...: the hash on whole arrays."""
    p, seed = _check_p_seed(p, seed)
    k1, k2, threshold, _ = _scalars(p, seed)
    i = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64) + np.uint64(offset)

    def fmix32(h):  # the same finaliser, elementwise on uint64 arrays holding 32-bit values
        h = h ^ (h >> S16)
        h = (h * MIX1) & M32
        h = h ^ (h >> S13)
        h = (h * MIX2) & M32
        return h ^ (h >> S16)

    h = fmix32(fmix32(i ^ np.uint64(k1)) ^ np.uint64(k2))
    return ((h >> S8) >= np.uint64(threshold)).reshape(shape)     # keep iff u = (h >> 8) / 2^24 >= p


def dropout_forward_ref(x, p, seed, offset=0):
    p, seed = _check_p_seed(p, seed)
    keep = dropout_keep_ref(x.shape, p, seed, offset)
    scale = x.dtype.type(_scalars(p, seed)[3])
    # y = x * keep / (1 - p)
    return np.where(keep, x * scale, x.dtype.type(0)), DropoutCache(p, seed, tuple(x.shape), int(offset))


def dropout_backward_ref(dy, cache):
    # y = x * keep / (1 - p)  ->  dx = dy * keep / (1 - p)
    keep = dropout_keep_ref(cache.shape, cache.p, cache.seed, cache.offset)
    scale = dy.dtype.type(_scalars(cache.p, cache.seed)[3])
    return np.where(keep, dy * scale, dy.dtype.type(0))


# ---------------------------------------------------------------------------------------------------------------
# Numba CPU


@njit(cache=True, inline="always")
def _fmix32_nb(h):
    h = h ^ (h >> S16)
    h = (h * MIX1) & M32
    h = h ^ (h >> S13)
    h = (h * MIX2) & M32
    return h ^ (h >> S16)


@njit(cache=True, parallel=True)
def _dropout_cpu(x, y, k1, k2, threshold, scale, off):
    # x, y flat (N,); k1, k2, threshold, off uint64; scale float32. y = x * keep * scale (also dx = dy * keep * scale)
    for i in prange(x.size):
        m = _fmix32_nb(_fmix32_nb((np.uint64(i) + off) ^ k1) ^ k2) >> S8
        y[i] = x[i] * scale if m >= threshold else ZERO


def _run_cpu(x, p, seed, offset=0):
    k1, k2, threshold, scale = _scalars(p, seed)
    y = np.empty_like(x)
    _dropout_cpu(x.reshape(-1), y.reshape(-1), np.uint64(k1), np.uint64(k2), np.uint64(threshold),
                 np.float32(scale), np.uint64(offset))
    return y


def dropout_forward_cpu(x, p, seed, offset=0):
    p, seed = _check_p_seed(p, seed)
    _check_x("x", x)
    return _run_cpu(x, p, seed, offset), DropoutCache(p, seed, tuple(x.shape), int(offset))


def dropout_backward_cpu(dy, cache):
    _check_x("dy", dy)
    _checks.check_array("dy", dy, shape=cache.shape)
    return _run_cpu(dy, cache.p, cache.seed, cache.offset)


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()

    @cuda.jit(device=True)
    def fmix32(h):
        h = h ^ (h >> S16)
        h = (h * MIX1) & M32
        h = h ^ (h >> S13)
        h = (h * MIX2) & M32
        return h ^ (h >> S16)

    @cuda.jit
    def dropout(x, y, k1, k2, threshold, scale):
        # one thread per element: y = x * keep * scale (also dx = dy * keep * scale)
        i = cuda.grid(1)
        if i < x.size:
            m = fmix32(fmix32(np.uint64(i) ^ k1) ^ k2) >> S8
            y[i] = x[i] * scale if m >= threshold else ZERO

    return dropout


def _run_cuda(x, p, seed):
    k1, k2, threshold, scale = _scalars(p, seed)
    y = _cuda.device_empty(tuple(x.shape))
    n = x.size
    if n:
        kernel = _cuda_kernels()
        kernel[_cuda.blocks_for(n), _cuda.THREADS](x.reshape(n), y.reshape(n), np.uint64(k1), np.uint64(k2),
                                                   np.uint64(threshold), np.float32(scale))
    return y


def dropout_forward_cuda(x, p, seed):
    p, seed = _check_p_seed(p, seed)
    _check_x("x", x)
    return _run_cuda(x, p, seed), DropoutCache(p, seed, tuple(x.shape))


def dropout_backward_cuda(dy, cache):
    _check_x("dy", dy)
    _checks.check_array("dy", dy, shape=cache.shape)
    return _run_cuda(dy, cache.p, cache.seed)


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the Numba CPU kernels


def dropout_forward(x, p, seed, offset=0):
    """offset: the counter of x's first element, so that a slice of a larger array (from flat index offset) gets
    that array's mask (the CPU versions only)."""
    if _cuda.is_device_array(x):
        if offset:
            raise ValueError("offset: the CUDA dropout draws its mask from counter 0 only")
        return dropout_forward_cuda(x, p, seed)
    return dropout_forward_cpu(x, p, seed, offset)


def dropout_backward(dy, cache):
    return dropout_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else dropout_backward_cpu(dy, cache)


# ---------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = _checks.lab_options("dropout", argv)
    rep = _checks.Report("dropout")
    r = _checks.rng(0)
    # DistilBERT-base FFN activations (B*T, F) = (1024, 3072), p = 0.1 as in BERT's hidden dropout. The float32
    # versions compute the same mask and the same single float32 product x * scale as the float32 reference, so
    # they must agree exactly (atol 0); against float64 two roundings (1/(1-p) to float32, then the product),
    # each within a factor (1 + eps/2).
    N, F = (1024, 3072) if args.size == "base" else (7, 13)
    p, seed = 0.1, 1234
    x = r.standard_normal((N, F)).astype(np.float32)
    dy = r.standard_normal((N, F)).astype(np.float32)
    y32, _ = dropout_forward_ref(x, p, seed)
    y64, c64 = dropout_forward_ref(x.astype(np.float64), p, seed)
    dx64 = dropout_backward_ref(dy.astype(np.float64), c64)
    y, c = dropout_forward_cpu(x, p, seed)
    rep.check("cpu", "y (f32)", y, y32, atol=0.0)
    two_roundings = (1 + _checks.EPS32 / 2) ** 2 - 1
    rep.check("cpu", "y", y, y64, atol=0.0, rtol=two_roundings)
    rep.check("cpu", "dx", dropout_backward_cpu(dy, c), dx64, atol=0.0, rtol=two_roundings)
    print(f"  dropped fraction {1 - np.count_nonzero(y) / y.size:.5f} (p = {p}, binomial std "
          f"{math.sqrt(p * (1 - p) / y.size):.5f})")

    if _cuda.available():
        n_small = 2 if _cuda.SIMULATOR else N
        xd, dyd = _cuda.to_device(x[:n_small]), _cuda.to_device(dy[:n_small])
        yd, cd = dropout_forward_cuda(xd, p, seed)
        y_small, _ = dropout_forward_ref(x[:n_small], p, seed)   # the flat index restarts at 0 in the slice
        rep.check("cuda", "y (f32)", _cuda.to_host(yd), y_small, atol=0.0)
        rep.check("cuda", "dx (f32)", _cuda.to_host(dropout_backward_cuda(dyd, cd)),
                  dropout_backward_ref(dy[:n_small], cd), atol=0.0)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    nbytes = 2 * x.nbytes  # read x, write y
    rep.bench("ref(numpy)", lambda: dropout_forward_ref(x, p, seed), nbytes=nbytes, repeat=5)
    rep.bench("cpu", lambda: dropout_forward_cpu(x, p, seed), nbytes=nbytes)
    rep.bench("cpu bwd", lambda: dropout_backward_cpu(dy, c), nbytes=nbytes)
    if _cuda.available() and not _cuda.SIMULATOR:
        cu = _cuda.get_cuda()
        xd = _cuda.to_device(x)
        rep.bench("cuda", lambda: dropout_forward_cuda(xd, p, seed), nbytes=nbytes, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
