"""The one module that imports numba.cuda.

Every CUDA kernel in minidistil.kernels gets `cuda` from here, and only lazily (inside a function that builds
the kernels on first use), so that CPU-only code never pays for importing numba.cuda and a machine without the
`gpu` extra still imports every kernel file. numba-cuda is in maintenance mode; if a successor replaces it, this
is the file to change.

Simulator: with NUMBA_ENABLE_CUDASIM=1 set before the first import, numba.cuda runs kernels in Python threads
on the CPU (tests/conftest.py sets it when no GPU is present). The simulator has no warp shuffles, so our kernels
reduce through shared memory. It is slow: launchers use THREADS threads per block, 32 on the simulator, 256 on a GPU.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys

import numpy as np

from . import _cuda_pool

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

# Threads per block for 1-D block launches (shared-memory reductions use arrays of this size, a compile-time constant).
# MINIDISTIL_SIM_THREADS (a power of two) sets it on the simulator, where a smaller block runs much faster (every
# thread is a Python thread, and a tree reduction's cost is per thread, busy or not).
THREADS = int(os.environ.get("MINIDISTIL_SIM_THREADS", "32")) if SIMULATOR else 256
# Tile width of the shared-memory GEMM (TILE x TILE threads per block).
TILE = 8 if SIMULATOR else 16


def get_cuda():
    """Return the numba.cuda module, or raise a clear error when it cannot be used."""
    try:
        from numba import cuda  # the one CUDA import
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "numba.cuda is not installed: `pip install minidistil[gpu]` (numba-cuda), "
            "or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the simulator"
        ) from e
    if _cuda_pool._STATUS is None:  # once, before numba creates its context (it reads its memory manager then)
        _cuda_pool.install(cuda, _make_pool)
    return cuda


def _make_pool():
    """The device memory pool of numba's context: CuPy's when CuPy does the GEMMs (the two share it), else
    cuMemAlloc with size-class free lists (kernels/_cuda_pool.py)."""
    cp = _cupy()
    return _cuda_pool.CupyPool(cp.get_default_memory_pool()) if cp else _cuda_pool.driver_pool(get_cuda())


def pool_stats() -> dict:
    """What the device memory pool holds (bytes in use, held, cached; requests, reuses, device calls) and whether
    it is installed (not on the simulator, nor with MINIDISTIL_CUDA_POOL=0): kernels/_cuda_pool.stats()."""
    return _cuda_pool.stats()


def available() -> bool:
    """True when CUDA kernels can run here: a real GPU, or the simulator."""
    try:
        cuda = get_cuda()
    except RuntimeError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a driver error means no GPU
        return False


def require_cuda():
    """The numba.cuda module, after checking that a device (or the simulator) is there."""
    cuda = get_cuda()
    if not available():
        raise RuntimeError(
            "no CUDA GPU is available (device='cuda' was asked for). Run on a machine with an NVIDIA GPU and "
            "`pip install minidistil[gpu]`, or set NUMBA_ENABLE_CUDASIM=1 to use the (slow) CUDA simulator"
        )
    return cuda


def is_device_array(a) -> bool:
    """True for a numba.cuda device array (real or simulated). Never imports numba.cuda itself."""
    if isinstance(a, np.ndarray) or "numba.cuda" not in sys.modules:
        return False
    from numba.cuda.cudadrv import devicearray  # already imported: numba.cuda is in sys.modules
    return bool(devicearray.is_cuda_ndarray(a))


def to_device(a):
    """Host array -> device array (device arrays pass through)."""
    if is_device_array(a):
        return a
    a = np.asarray(a)
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return require_cuda().to_device(a if a.flags.c_contiguous else np.ascontiguousarray(a))


def to_host(a) -> np.ndarray:
    """Device array -> numpy array (numpy arrays pass through)."""
    if is_device_array(a):
        return a.copy_to_host()
    return np.asarray(a)


def device_empty(shape, dtype=np.float32):
    return require_cuda().device_array(shape, dtype=dtype)


def device_zeros(shape, dtype=np.float32):
    """A device array of zeros, filled on the device (no host array is copied over)."""
    return fill_(device_empty(shape, dtype), 0)


def fill_(a, value):
    """a[...] = value in place for a C-contiguous device array (a row of a gradient, a fresh buffer); returns a.
    A kernel writes the value: numba's `a[i] = value` on a device array would copy a host array over instead."""
    n = int(np.prod(tuple(a.shape), dtype=np.int64))
    if n:
        if not a.is_c_contiguous():
            raise ValueError(f"a: expected a C-contiguous device array, got shape {tuple(a.shape)}")
        _fill_kernel()[blocks_for(n), THREADS](a.reshape(n), np.dtype(a.dtype).type(value))
    return a


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Number of blocks so that blocks * threads >= n (at least one)."""
    return max(1, (n + threads - 1) // threads)


@contextlib.contextmanager
def count_traffic():
    """Count what stalls or slows a GPU step, while inside: yields a Counter with
        "sync"   waits of the host for the GPU: cuda.synchronize(), and every device->host copy (it waits for the
                 queued kernels before it copies)
        "d2h"    device->host copies (copy_to_host, whoever calls it)
        "h2d"    host->device copies (cuda.to_device of a host array; from pageable host memory on the default
                 stream such a copy is also ordered after the queued kernels, so one made mid-step may wait too)
        "alloc"  device allocations (cuda.device_array, and the destination of each to_device)
    It wraps numba.cuda's own entry points (this module is the one that imports numba.cuda), so a copy counts
    wherever it is made; on the simulator and on a GPU alike. Not re-entrant; restores everything on exit."""
    cuda = require_cuda()
    counts = collections.Counter()
    cls = type(cuda.device_array(1, dtype=np.float32))  # the device array class (real or simulated)
    originals = {name: getattr(cuda, name) for name in ("device_array", "to_device", "synchronize")}
    own_copy = cls.__dict__.get("copy_to_host")
    copy_to_host = cls.copy_to_host

    def device_array(*args, **kwargs):
        counts["alloc"] += 1
        return originals["device_array"](*args, **kwargs)

    def to_device(a, *args, **kwargs):
        if not is_device_array(a):
            counts["h2d"] += 1
            counts["alloc"] += 1
        return originals["to_device"](a, *args, **kwargs)

    def synchronize(*args, **kwargs):
        counts["sync"] += 1
        return originals["synchronize"](*args, **kwargs)

    def counted_copy_to_host(self, *args, **kwargs):
        counts["d2h"] += 1
        counts["sync"] += 1
        return copy_to_host(self, *args, **kwargs)

    for name, fn in (("device_array", device_array), ("to_device", to_device), ("synchronize", synchronize)):
        setattr(cuda, name, fn)
    cls.copy_to_host = counted_copy_to_host
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(cuda, name, fn)
        if own_copy is None:
            del cls.copy_to_host
        else:
            cls.copy_to_host = own_copy


# ---------------------------------------------------------------------------------------------------------------
# matrix products: cuBLAS through CuPy when it is installed (the fast path), else the tiled shared-memory GEMM of
# kernels/linear.py (the teaching version). CuPy is imported here only, and only when a GPU product is asked for.

_CUPY = None  # the cupy module once found, False when it is absent (or the simulator runs)


def _cupy():
    global _CUPY
    if _CUPY is None:
        _CUPY = False
        if not SIMULATOR and os.environ.get("MINIDISTIL_NO_CUBLAS") != "1":
            try:
                import cupy  # optional: `pip install cupy-cuda12x`
                cupy.cuda.runtime.getDeviceCount()
                _CUPY = cupy
            except Exception:  # not installed, or no driver it can use
                _CUPY = False
    return _CUPY


def gemm_backend() -> str:
    """The name of the GPU matrix product in use: "cublas (cupy)" or "numba tiled GEMM".
    MINIDISTIL_NO_CUBLAS=1 forces the tiled GEMM (to compare the two)."""
    return "cublas (cupy)" if _cupy() else "numba tiled GEMM"


def describe() -> str:
    """One line naming the CUDA device (or the simulator), the GEMM in use and the block size."""
    cuda = require_cuda()
    if SIMULATOR:
        where = "the numba.cuda simulator (NUMBA_ENABLE_CUDASIM=1: every GPU thread is a Python thread, slow)"
    else:
        try:
            d = cuda.get_current_device()
            name = d.name.decode() if isinstance(d.name, bytes) else str(d.name)
            where = f"{name} (compute capability {d.compute_capability[0]}.{d.compute_capability[1]})"
        except Exception as e:  # pragma: no cover - depends on the driver
            where = f"a GPU ({type(e).__name__} reading its name)"
    return f"device: cuda on {where}; GEMM: {gemm_backend()}; {THREADS} threads per block"


def cublas_matmul(a, b, trans_a: bool = False, trans_b: bool = False):
    """c = op(a) @ op(b) by cuBLAS (CuPy), for 2-d float32 numba device arrays; returns a numba device array.

    Zero-copy both ways through __cuda_array_interface__: cupy.asarray wraps the numba arrays, the transposes are
    views (cuBLAS reads them with its transpose flags), and cuda.as_cuda_array wraps the CuPy result (which it keeps
    alive). Both libraries use the legacy default stream, so the product is ordered with our kernels. CuPy does not
    use TF32 unless CUPY_TF32=1, so this is a float32 product like the tiled GEMM (only the summation order differs).
    """
    cp = _cupy()
    if not cp:
        raise RuntimeError("cublas_matmul: CuPy is not available (pip install cupy-cuda12x); use the tiled GEMM")
    A, B = cp.asarray(a), cp.asarray(b)
    C = cp.matmul(A.T if trans_a else A, B.T if trans_b else B)
    # sync=False: the product is queued on the stream our kernels use, so nothing needs to wait for it here
    # (as_cuda_array's default would synchronise the stream after every product)
    return get_cuda().as_cuda_array(cp.ascontiguousarray(C), sync=False)


# ----------------------------------------------------------------------------------------------------------------
# shared device functions

cuda = None  # numba.cuda, bound by block_reductions(): the simulator swaps this module global for its fake module


@functools.cache
def block_reductions():
    """(block_sum, block_max): device functions reducing one value per thread over a block of THREADS threads.

    `buf` is a `cuda.shared.array(THREADS, float32)`; every thread passes its partial value and every thread gets
    the block's result. A tree reduction through shared memory (the simulator has no warp shuffles); the buffer can
    be reused right after the call (a final syncthreads makes every thread read buf[0] first).
    """
    global cuda
    cuda = get_cuda()

    @cuda.jit(device=True)
    def block_sum(buf, val):
        t = cuda.threadIdx.x
        buf[t] = val
        cuda.syncthreads()
        k = THREADS // 2
        while k > 0:
            if t < k:
                buf[t] += buf[t + k]
            cuda.syncthreads()
            k //= 2
        out = buf[0]
        cuda.syncthreads()
        return out

    @cuda.jit(device=True)
    def block_max(buf, val):
        t = cuda.threadIdx.x
        buf[t] = val
        cuda.syncthreads()
        k = THREADS // 2
        while k > 0:
            if t < k:
                buf[t] = max(buf[t], buf[t + k])
            cuda.syncthreads()
            k //= 2
        out = buf[0]
        cuda.syncthreads()
        return out

    return block_sum, block_max


# Column sums: a block covers COL_TILE adjacent columns with THREADS // COL_TILE row lanes, so the threads of a warp
# read adjacent addresses of one row (coalesced); long columns are split over blocks (grid y) whose partial sums a
# second launch adds, so a (B*T, C) gradient keeps the GPU busy with C far below the number of threads.
COL_TILE = max(1, min(32, THREADS // 2))
COL_CHUNK_ROWS = 8 * (THREADS // COL_TILE) if SIMULATOR else 1024  # rows per block before the partial sums split
COL_MAX_CHUNKS = 4 if SIMULATOR else 256


@functools.cache
def _column_sum_kernel(dtype=np.float32):
    global cuda
    cuda = get_cuda()
    from numba import float32, float64
    acc_type = float64 if np.dtype(dtype) == np.float64 else float32  # a float64 array is summed in float64
    lanes = THREADS // COL_TILE

    @cuda.jit
    def colsum(a, outer, rows, width, chunk_rows, out):
        # a flat, viewed as (outer, rows, width); out[chunk, o, col] = sum of a[o, row, col] over the rows of chunk
        # blockIdx.y. Block x covers COL_TILE columns of one o (blockIdx.x = o * tiles + tile); thread t reads column
        # t % COL_TILE of rows t // COL_TILE, + lanes, ... so adjacent threads read adjacent addresses
        t = cuda.threadIdx.x
        tx = t % COL_TILE
        ty = t // COL_TILE
        tiles = (width + COL_TILE - 1) // COL_TILE
        o = cuda.blockIdx.x // tiles
        col = (cuda.blockIdx.x % tiles) * COL_TILE + tx
        r0 = cuda.blockIdx.y * chunk_rows
        r1 = min(rows, r0 + chunk_rows)
        buf = cuda.shared.array(THREADS, acc_type)
        acc = acc_type(0.0)
        if col < width:
            r = r0 + ty
            while r < r1:
                acc += a[(o * rows + r) * width + col]
                r += lanes
        buf[t] = acc
        cuda.syncthreads()
        k = lanes // 2
        while k > 0:  # tree over the row lanes of each column
            if ty < k:
                buf[t] += buf[t + k * COL_TILE]
            cuda.syncthreads()
            k //= 2
        if ty == 0 and col < width:
            out[(cuda.blockIdx.y * outer + o) * width + col] = buf[tx]

    return colsum


def column_sum(a):
    """The column sums of a C-contiguous float32 or float64 device array: (rows, width) -> (width,), or
    (outer, rows, width) -> (outer, width) (the sum over the middle axis), in a's dtype and accumulated in it, per
    thread and then by trees: the bias gradients of linear and of bias + GELU, and elementwise.sum_to. Coalesced
    reads (see COL_TILE); more than COL_CHUNK_ROWS rows are summed in chunks, and the chunks' partial sums by a
    second launch."""
    if len(a.shape) == 2:
        return column_sum(a.reshape(1, *a.shape)).reshape(a.shape[1])
    outer, rows, width = a.shape
    dtype = np.float64 if np.dtype(a.dtype) == np.float64 else np.float32
    out = device_empty((outer, width), dtype)
    if not outer * width:
        return out
    colsum = _column_sum_kernel(dtype)
    gx = outer * ((width + COL_TILE - 1) // COL_TILE)
    chunks = min(COL_MAX_CHUNKS, max(1, (rows + COL_CHUNK_ROWS - 1) // COL_CHUNK_ROWS))
    if chunks == 1:
        colsum[(gx, 1), THREADS](a.reshape(-1), outer, rows, width, max(rows, 1), out.reshape(-1))
        return out
    chunk_rows = (rows + chunks - 1) // chunks
    partial = device_empty((chunks, outer * width), dtype)  # (chunks, outer, width) flat
    colsum[(gx, chunks), THREADS](a.reshape(-1), outer, rows, width, chunk_rows, partial.reshape(-1))
    colsum[((outer * width + COL_TILE - 1) // COL_TILE, 1), THREADS](partial.reshape(-1), 1, chunks, outer * width,
                                                                   chunks, out.reshape(-1))
    return out


@functools.cache
def _fill_kernel():
    global cuda
    cuda = get_cuda()

    @cuda.jit
    def fill(a, value):
        # one thread per element of the flat array a
        i = cuda.grid(1)
        if i < a.shape[0]:
            a[i] = value

    return fill


# ----------------------------------------------------------------------------------------------------------------
# losses stay on the device: a loss is a 0-d device array and its gradient's scale is computed on the device, so a
# training step never waits for the GPU to read a loss back (reading one, to log it, is the caller's choice)


@functools.cache
def _loss_kernels():
    global cuda
    cuda = get_cuda()
    from numba import float32, float64
    block_sum, _ = block_reductions()

    @cuda.jit
    def finish(row_loss, sel, use_sel, n, factor, out, count):
        # one block: out[0] = factor * sum(row_loss) / count, count = #(sel != 0) (use_sel) or n; 0 when count is 0.
        # Rows that do not count hold 0 in row_loss. Summed in float64, as the host versions sum.
        t = cuda.threadIdx.x
        buf = cuda.shared.array(THREADS, float64)
        acc = float64(0.0)
        cnt = float64(0.0)
        i = t
        while i < row_loss.size:
            acc += float64(row_loss[i])
            if use_sel and sel[i] != 0:
                cnt += float64(1.0)
            i += THREADS
        total = block_sum(buf, acc)
        cnt = block_sum(buf, cnt) if use_sel else float64(n)
        if t == 0:
            count[0] = cnt
            out[0] = float32(factor * total / cnt) if cnt > float64(0.0) else float32(0.0)

    @cuda.jit
    def scale(dloss, count, factor, out):
        # out[0] = dloss * factor / count (0 when count is 0): the gradient's scale, from the device's dloss
        if cuda.threadIdx.x == 0 and cuda.blockIdx.x == 0:
            c = count[0]
            out[0] = float32(float64(dloss[0]) * factor / c) if c > float64(0.0) else float32(0.0)

    return finish, scale


def mean_loss(row_loss, factor: float, sel=None, n: int = 0):
    """(loss, count): the 0-d float32 device array factor * sum(row_loss) / count, and the (1,) float64 device
    count, where count = the number of nonzero entries of the device array `sel` (when given) or `n`. A loss over
    no counted row is 0. Nothing is copied to the host."""
    finish, _ = _loss_kernels()
    out = device_empty((1,))
    count = device_empty((1,), np.float64)
    sel_arg = sel if sel is not None else row_loss
    finish[1, THREADS](row_loss.reshape(row_loss.size), sel_arg, sel is not None, np.float64(n), np.float64(factor),
                       out, count)
    return out.reshape(()), count


def loss_scale(dloss, count, factor: float):
    """(1,) float32 device array dloss * factor / count (0 when count is 0): the scale a loss's backward kernel
    reads. dloss: a host number (it travels as a kernel argument) or a one-element device array (the upstream
    gradient of a device loss: read on the device, not copied back)."""
    _, scale = _loss_kernels()
    d = dloss.reshape(1) if is_device_array(dloss) else fill_(device_empty((1,)), float(dloss))
    out = device_empty((1,))
    scale[1, 1](d, count, np.float64(factor), out)
    return out


def ones_mask(n: int):
    """(n,) uint8 device array of ones (every row counts), filled on the device."""
    return fill_(device_empty((n,), np.uint8), 1)


def device_scalar(value, dtype=np.float32):
    """A 0-d device array holding `value` (filled by a kernel: no host copy)."""
    return fill_(device_empty((1,), dtype), value).reshape(())
