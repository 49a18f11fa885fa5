"""Linear layer (fully connected), in Hugging Face's weight layout: w is (out, in).

Forward (x (..., Cin), w (Cout, Cin), b (Cout,) or None; every leading axis is flattened into N rows):
    y = x W^T + b                                   y (..., Cout)
Backward (dy (..., Cout)):
    dx = dy W                                       dx (..., Cin)
    dW = dy^T x       (sum over the N rows)         dW (Cout, Cin)
    db = sum over the N rows of dy                  db (Cout,)   (None when the forward had no bias)

Versions:
    linear_forward_ref / linear_backward_ref    NumPy, float32 or float64, written for reading
    linear_forward_cpu                          where kernels/gemm.py's rule `use_own_gemm` says so (the model's
                                                shapes on an AVX-512 CPU), y = x W^T + b by our own GEMM: W^T packed
                                                once and kept until the weight changes, the bias added in its store;
                                                elsewhere (and with MINIDISTIL_GEMM=openblas) as below
    linear_backward_cpu                         where `use_own_gemm(..., "dx" / "dw")` says so (the model's
                                                shapes on an AVX-512 CPU), dx = dy W and dW = dy^T x by our own
                                                GEMM (`gemm.gemm`: dy, W, x and dy^T read in place, nothing
                                                packed beforehand: they change at every step);
                                                elsewhere as below
    linear_forward_cpu / linear_backward_cpu    the three products through numpy's BLAS (float32 sgemm: no
                                                hand-written loop beats a tuned GEMM), bias added in place by numpy
                                                (measured: a Numba prange bias add was ~30% slower overall, its
                                                threads competing with OpenBLAS's still-spinning ones), db a column
                                                sum accumulated in float64 (numpy adds rows one by one: a float32
                                                accumulator's error would grow ~N)
    linear_backward_cpu (default)               the same, but rows of dy that are entirely zero (an MLM loss's
                                                unmasked positions) are left out of the two products when at most
                                                half the rows are nonzero (a Numba scan that stops at a row's first
                                                nonzero element decides); linear_backward_cpu_dense never skips
    linear_forward_cuda / linear_backward_cuda  numba.cuda: `matmul_cuda`, a tiled shared-memory GEMM (TILE x TILE
                                                threads per block, any M, N, K, optional transposes of either
                                                operand, reusable by other GPU code), plus a bias-add kernel; db is
                                                _cuda.column_sum (coalesced reads, shared-memory reduction). The
                                                GEMM's loads are coalesced for both transposes and each thread
                                                computes ROWS_PER_THREAD outputs
Cache: LinearCache(x, w, b): the input, the weight and the bias (or None); nothing is recomputed in backward.
Backward returns fresh arrays (it never adds into existing gradients).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from . import _blas, _checks, _cuda
from . import gemm as _gemm

ZERO = np.float32(0.0)


class LinearCache(NamedTuple):
    x: np.ndarray          # (..., Cin) the input
    w: np.ndarray          # (Cout, Cin) the weight
    b: np.ndarray | None   # (Cout,) the bias, or None


# ---------------------------------------------------------------------------------------------------------------
# NumPy reference


def linear_forward_ref(x, w, b=None):
    # y = x W^T + b
    y = x @ w.T                                    # (..., Cout)
    if b is not None:
        y = y + b
    return y.astype(x.dtype, copy=False), LinearCache(x, w, b)


def linear_backward_ref(dy, cache):
    x, w, b = cache
    x2 = x.reshape(-1, x.shape[-1])                # (N, Cin)
    dy2 = dy.reshape(-1, dy.shape[-1])             # (N, Cout)
    dx = dy @ w                                    # dx = dy W      (..., Cin)
    dw = dy2.T @ x2                                # dW = dy^T x    (Cout, Cin)
    db = dy2.sum(axis=0) if b is not None else None  # db = sum_n dy  (Cout,)
    return dx.astype(x.dtype, copy=False), dw.astype(x.dtype, copy=False), db


# ---------------------------------------------------------------------------------------------------------------
# CPU: BLAS for the products, Numba for the bias


def _check_forward(x, w, b):
    _checks.check_array("x", x)
    if len(x.shape) < 1:
        raise ValueError(f"x: expected an array (..., Cin) with at least one axis, got shape {tuple(x.shape)}")
    _checks.check_array("w", w, ndim=2)
    if tuple(w.shape)[1] != tuple(x.shape)[-1]:
        raise ValueError(f"w: expected shape (Cout, {tuple(x.shape)[-1]}) to match the last axis of x "
                         f"{tuple(x.shape)}, got {tuple(w.shape)}")
    if b is not None:
        _checks.check_array("b", b, ndim=1, shape=(tuple(w.shape)[0],))


def _check_backward(dy, cache):
    x, w, _ = cache
    _checks.check_array("dy", dy, shape=tuple(x.shape)[:-1] + (tuple(w.shape)[0],))


def linear_forward_cpu(x, w, b=None):
    _check_forward(x, w, b)
    cin, cout = w.shape[1], w.shape[0]
    x2 = x.reshape(-1, cin)                        # (N, Cin)
    if _gemm.use_own_gemm(x2.shape[0], cin, cout):
        # y = x W^T + b with W^T packed once (kept until the weight changes) and the bias added in the store
        bp = _gemm.PACKS.get(w, transpose=True)
        x2 = np.ascontiguousarray(x2)
        y2 = _blas.tallied(lambda: _gemm.gemm_packed(x2, bp, cout, b), x2.shape[0], cin, cout)  # (N, Cout)
        return y2.reshape(tuple(x.shape)[:-1] + (cout,)), LinearCache(x, w, b)
    y2 = _blas.matmul(x2, w.T, np.empty((x2.shape[0], cout), np.float32))  # (N, Cout)  y = x W^T   (sgemm)
    if b is not None:
        y2 += b                                    #            y += b   (in place, broadcast over rows)
    return y2.reshape(tuple(x.shape)[:-1] + (cout,)), LinearCache(x, w, b)


def _dx_product(dy2, w):
    """dx = dy W: dy2 (N, Cout), w (Cout, Cin) -> (N, Cin); our GEMM where its rule says, else OpenBLAS."""
    n, cout = dy2.shape
    cin = w.shape[1]
    if _gemm.use_own_gemm(n, cout, cin, "dx"):
        return _blas.tallied(lambda: _gemm.gemm(dy2, w), n, cout, cin)
    return _blas.matmul(dy2, w, np.empty((n, cin), np.float32))


def _dw_product(dy2, x2):
    """dW = dy^T x: dy2 (N, Cout), x2 (N, Cin) -> (Cout, Cin); our GEMM where its rule says, else OpenBLAS."""
    n, cout = dy2.shape
    cin = x2.shape[1]
    if _gemm.use_own_gemm(cout, n, cin, "dw"):
        return _blas.tallied(lambda: _gemm.gemm(dy2.T, x2), cout, n, cin)
    return _blas.matmul(dy2.T, x2, np.empty((cout, cin), np.float32))


@njit(cache=True, parallel=True)
def _nonzero_rows(a, out):
    # out[i] = any(a[i, :] != 0); a dense row stops at its first nonzero element, so this costs about one read of
    # the rows that are zero (the ignored positions of an MLM loss) and almost nothing for a dense gradient
    N, M = a.shape
    for i in prange(N):
        nz = False
        for j in range(M):
            if a[i, j] != ZERO:
                nz = True
                break
        out[i] = nz


SPARSE_ROWS_MAX = 0.5  # use the row-skipping backward when at most this fraction of dy's rows is nonzero


def linear_backward_cpu(dy, cache):
    """As linear_backward_cpu_dense, but rows of dy that are entirely zero are left out of the products: they add
    nothing to dW and db and give zero rows of dx. An MLM loss sets the gradient of ~85% of the vocabulary
    projection's rows to zero (the unmasked positions), so this skips ~85% of its two backward GEMMs (~80 of the
    ~410 GFLOP of a DistilBERT-base training step). Only the order of the sums over rows changes (float32 rounding)."""
    _check_backward(dy, cache)
    x, w, b = cache
    cin, cout = w.shape[1], w.shape[0]
    n = dy.size // cout if cout else 0
    if n < 2 or cout == 0:
        return linear_backward_cpu_dense(dy, cache)
    dy2 = dy.reshape(n, cout)
    nz = np.empty(n, np.bool_)
    _nonzero_rows(dy2, nz)
    keep = np.flatnonzero(nz)
    if keep.size > SPARSE_ROWS_MAX * n:
        return linear_backward_cpu_dense(dy, cache)
    x2 = x.reshape(n, cin)
    dyk = dy2[keep]                                # (K, Cout) the nonzero rows
    dx2 = np.zeros((n, cin), np.float32)
    dx2[keep] = _dx_product(dyk, w)                # from y = x W^T: dx = dy W (0 elsewhere)
    dw = _dw_product(dyk, x2[keep])                # dW = dy^T x (zero rows add nothing)
    db = dyk.sum(axis=0, dtype=np.float64).astype(np.float32) if b is not None else None
    return dx2.reshape(x.shape), np.ascontiguousarray(dw), db


def linear_backward_cpu_dense(dy, cache):
    _check_backward(dy, cache)
    x, w, b = cache
    cin, cout = w.shape[1], w.shape[0]
    x2 = x.reshape(-1, cin)                        # (N, Cin)
    dy2 = dy.reshape(-1, cout)                     # (N, Cout)
    dx = _dx_product(dy2, w).reshape(x.shape)     # from y = x W^T: dx = dy W   (..., Cin)
    dw = _dw_product(dy2, x2)                      # dW = dy^T x  (Cout, Cin)
    # from y = ... + b: db = sum over rows of dy. numpy sums along axis 0 row by row (not pairwise), so a float32
    # accumulator's error grows like N eps; we accumulate in float64 and round once (N*Cout adds, negligible time)
    db = dy2.sum(axis=0, dtype=np.float64).astype(np.float32) if b is not None else None
    return dx, np.ascontiguousarray(dw), db


# ---------------------------------------------------------------------------------------------------------------
# numba.cuda


cuda = None  # numba.cuda, bound on first use: the simulator swaps this module global for its fake module

ROWS_PER_THREAD = 2 if _cuda.SIMULATOR else 4  # outputs of c per thread of the tiled GEMM (one column, R rows)


@functools.cache
def _cuda_kernels():
    global cuda
    cuda = _cuda.get_cuda()
    from numba import float32
    TILE = _cuda.TILE

    R = ROWS_PER_THREAD
    # shared-array shapes must be plain integer constants on a GPU (Numba's CUDA typing rejects a shape computed in
    # the kernel; the simulator does not): op(a)'s tile has R TILE rows, both tiles' rows are padded by one float
    SA_ROWS = R * TILE
    TILE_PAD = TILE + 1

    @cuda.jit
    def matmul(a, b, c, M, N, K, trans_a, trans_b):
        # c (M, N) = op(a) (M, K) @ op(b) (K, N), op = transpose when the flag is set:
        #   op(a)[i, k] = a[k, i] if trans_a else a[i, k];  op(b)[k, j] = b[j, k] if trans_b else b[k, j]
        # Each block (TILE x TILE threads) computes an (R TILE) x TILE tile of c; each thread R elements of one
        # column, R rows TILE apart (each value of op(b) read from shared memory serves R products). The K axis is
        # walked tile by tile: the block loads an (R TILE) x TILE tile of op(a) and a TILE x TILE tile of op(b)
        # into shared memory, then every thread does R TILE multiply-adds from it. Out-of-range loads read 0, so
        # any M, N, K works; every element still sums its K products in order k = 0, 1, ...
        # Coalesced loads for both layouts: adjacent threads (tx) always read adjacent addresses of the stored
        # array, so a transposed operand is written to shared memory transposed (sa[tx, ty] instead of sa[ty, tx]);
        # the tiles are TILE + 1 wide so that such a column write does not hit one shared-memory bank.
        sa = cuda.shared.array((SA_ROWS, TILE_PAD), float32)    # sa[r, kk] = op(a)[i0 + r, k0 + kk]
        sb = cuda.shared.array((TILE, TILE_PAD), float32)       # sb[kk, c] = op(b)[k0 + kk, j0 + c]
        acc = cuda.local.array(R, float32)
        tx = cuda.threadIdx.x                      # column inside the tile
        ty = cuda.threadIdx.y                      # row inside the tile (and + TILE, + 2 TILE, ...)
        i0 = cuda.blockIdx.y * (R * TILE)
        j0 = cuda.blockIdx.x * TILE
        j = j0 + tx                                # column of c
        for rr in range(R):
            acc[rr] = float32(0.0)
        for k0 in range(0, K, TILE):
            for rr in range(R):
                if trans_a:                        # a stored (K, M): read a[k0 + ty, i0 + rr TILE + tx]
                    r = i0 + rr * TILE + tx
                    kk = k0 + ty
                    sa[rr * TILE + tx, ty] = a[kk, r] if r < M and kk < K else float32(0.0)
                else:                              # a stored (M, K): read a[i0 + rr TILE + ty, k0 + tx]
                    r = i0 + rr * TILE + ty
                    kk = k0 + tx
                    sa[rr * TILE + ty, tx] = a[r, kk] if r < M and kk < K else float32(0.0)
            if trans_b:                            # b stored (N, K): read b[j0 + ty, k0 + tx]
                c_ = j0 + ty
                kk = k0 + tx
                sb[tx, ty] = b[c_, kk] if c_ < N and kk < K else float32(0.0)
            else:                                  # b stored (K, N): read b[k0 + ty, j0 + tx]
                kk = k0 + ty
                sb[ty, tx] = b[kk, j] if kk < K and j < N else float32(0.0)
            cuda.syncthreads()
            for kk in range(TILE):
                bv = sb[kk, tx]
                for rr in range(R):
                    acc[rr] += sa[rr * TILE + ty, kk] * bv
            cuda.syncthreads()
        if j < N:
            for rr in range(R):
                i = i0 + rr * TILE + ty            # row of c
                if i < M:
                    c[i, j] = acc[rr]

    @cuda.jit
    def add_bias(y, b, width):
        # y flat (N*width,) += b[column], one thread per element
        e = cuda.grid(1)
        if e < y.size:
            y[e] += b[e % width]

    return matmul, add_bias


def matmul_cuda(a, b, trans_a=False, trans_b=False):
    """c = op(a) @ op(b) for 2-d float32 device arrays, op(x) = x.T when the flag is set; returns a new device
    array (M, N). Transposes are read in place (no transposed copies)."""
    _checks.check_array("a", a, ndim=2)
    _checks.check_array("b", b, ndim=2)
    M, Ka = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
    Kb, N = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
    if Ka != Kb:
        raise ValueError(f"b: op(b) must have {Ka} rows to match op(a) {(M, Ka)}, got op(b) {(Kb, N)} "
                         f"(trans_a={trans_a}, trans_b={trans_b})")
    matmul, _ = _cuda_kernels()
    c = _cuda.device_empty((M, N))
    T = _cuda.TILE
    if M and N:
        grid = ((N + T - 1) // T, (M + ROWS_PER_THREAD * T - 1) // (ROWS_PER_THREAD * T))
        matmul[grid, (T, T)](a, b, c, M, N, Ka, bool(trans_a), bool(trans_b))
    return c


def gemm_cuda(a, b, trans_a=False, trans_b=False):
    """matmul_cuda's product by the fastest GEMM here: cuBLAS when CuPy is installed, else the tiled kernel above
    (`_cuda.gemm_backend()` names the one in use)."""
    if _cuda.gemm_backend() == "cublas (cupy)":
        return _cuda.cublas_matmul(a, b, trans_a, trans_b)
    return matmul_cuda(a, b, trans_a, trans_b)


def linear_forward_cuda(x, w, b=None):
    _check_forward(x, w, b)
    _, add_bias = _cuda_kernels()
    cin, cout = w.shape[1], w.shape[0]
    x2 = x.reshape(x.size // cin if cin else 0, cin)   # (N, Cin)
    y2 = gemm_cuda(x2, w, trans_b=True)                # (N, Cout)  y = x W^T
    if b is not None and y2.size:
        add_bias[_cuda.blocks_for(y2.size), _cuda.THREADS](y2.reshape(-1), b, cout)  # y += b
    return y2.reshape(tuple(x.shape)[:-1] + (cout,)), LinearCache(x, w, b)


def linear_backward_cuda(dy, cache):
    _check_backward(dy, cache)
    x, w, b = cache
    cin, cout = w.shape[1], w.shape[0]
    n = dy.size // cout if cout else 0
    x2 = x.reshape(n, cin)                             # (N, Cin)
    dy2 = dy.reshape(n, cout)                          # (N, Cout)
    dx = gemm_cuda(dy2, w).reshape(x.shape)            # from y = x W^T:  dx = dy W     (N, Cin)
    dw = gemm_cuda(dy2, x2, trans_a=True)              # from y = x W^T:  dW = dy^T x   (Cout, Cin)
    db = _cuda.column_sum(dy2) if b is not None else None  # from y = ... + b: db = sum_n dy
    return dx, dw, db


# ---------------------------------------------------------------------------------------------------------------
# public entry points: device arrays go to CUDA, numpy arrays to the CPU version


def linear_forward(x, w, b=None):
    return linear_forward_cuda(x, w, b) if _cuda.is_device_array(x) else linear_forward_cpu(x, w, b)


def linear_backward(dy, cache):
    return linear_backward_cuda(dy, cache) if _cuda.is_device_array(dy) else linear_backward_cpu(dy, cache)


# ---------------------------------------------------------------------------------------------------------------


def tolerances(x, w, dy):
    """Absolute tolerances (y, dx, dw, db) for float32 results against a float64 reference.
    Each output is a dot product: y sums Cin terms |x||w|, dx sums Cout terms |dy||w|, dW and db sum N rows of
    |dy||x| and |dy|. f32_tol(n, scale) = 16 eps sqrt(n) * scale (see _checks.f32_tol)."""
    cin, cout = w.shape[1], w.shape[0]
    n = x.size // cin if cin else 0
    xm, wm, gm = (float(np.abs(a).max(initial=0.0)) for a in (x, w, dy))
    return (_checks.f32_tol(cin, scale=xm * wm) + _checks.f32_tol(1, scale=xm * wm),  # + 1 rounding for the bias add
            _checks.f32_tol(cout, scale=gm * wm),
            _checks.f32_tol(n, scale=gm * xm),
            _checks.f32_tol(n, scale=gm))


def main(argv=None):
    args = _checks.lab_options("linear", argv)
    rep = _checks.Report("linear")
    r = _checks.rng(0)

    def data(n, cin, cout):
        x = r.standard_normal((n, cin)).astype(np.float32)
        w = (r.standard_normal((cout, cin)) * 0.02).astype(np.float32)   # BERT's init scale
        b = (r.standard_normal(cout) * 0.02).astype(np.float32)
        dy = r.standard_normal((n, cout)).astype(np.float32)
        return x, w, b, dy

    def validate(version, fwd, bwd, x, w, b, dy, to_dev=lambda a: a, to_host=lambda a: a):
        y64, c64 = linear_forward_ref(*(a.astype(np.float64) for a in (x, w, b)))
        dx64, dw64, db64 = linear_backward_ref(dy.astype(np.float64), c64)
        ty, tdx, tdw, tdb = tolerances(x, w, dy)
        y, c = fwd(*(to_dev(a) for a in (x, w, b)))
        rep.check(version, "y", to_host(y), y64, atol=ty)
        dx, dw, db = bwd(to_dev(dy), c)
        rep.check(version, "dx", to_host(dx), dx64, atol=tdx)
        rep.check(version, "dw", to_host(dw), dw64, atol=tdw)
        rep.check(version, "db", to_host(db), db64, atol=tdb)

    # validation at both DistilBERT FFN sizes (N = B*T = 1024)
    sizes = [(1024, 768, 3072), (1024, 3072, 768)]
    if args.size == "tiny":
        sizes = [(7, 13, 17), (7, 17, 13)]
    for n, cin, cout in sizes:
        validate(f"cpu {cin}->{cout}", linear_forward_cpu, linear_backward_cpu, *data(n, cin, cout))
    if _cuda.available():
        # awkward sizes: not multiples of TILE
        small = (37, 29, 21) if _cuda.SIMULATOR or args.size == "tiny" else sizes[0]
        validate("cuda", linear_forward_cuda, linear_backward_cuda, *data(*small),
                 to_dev=_cuda.to_device, to_host=_cuda.to_host)
    else:
        rep.skip("cuda", "no GPU and NUMBA_ENABLE_CUDASIM is not set")

    if args.no_bench:
        return rep.finish()

    # benchmark: forward is one GEMM (2 N Cin Cout flops), backward two (dx, dW) plus the column sum
    for n, cin, cout in sizes:
        x, w, b, dy = data(n, cin, cout)
        flops = 2.0 * n * cin * cout
        _, c = linear_forward_cpu(x, w, b)
        rep.bench(f"ref {cin}->{cout}", lambda: linear_forward_ref(x, w, b), flops=flops)
        rep.bench(f"cpu {cin}->{cout}", lambda: linear_forward_cpu(x, w, b), flops=flops)
        rep.bench("cpu bwd", lambda: linear_backward_cpu(dy, c), flops=2 * flops)
        if _cuda.available() and not _cuda.SIMULATOR:
            cu = _cuda.get_cuda()
            xd, wd, bd, dyd = (_cuda.to_device(a) for a in (x, w, b, dy))
            _, cd = linear_forward_cuda(xd, wd, bd)
            rep.bench("cuda", lambda: linear_forward_cuda(xd, wd, bd), flops=flops, sync=cu.synchronize)
            rep.bench("cuda bwd", lambda: linear_backward_cuda(dyd, cd), flops=2 * flops, sync=cu.synchronize)
    return rep.finish()


if __name__ == "__main__":
    raise SystemExit(main())
