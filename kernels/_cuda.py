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

import os
import sys

import numpy as np

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"

# Threads per block for 1-D block launches (shared-memory reductions use arrays of this size, a compile-time constant).
THREADS = 32 if SIMULATOR else 256
# Tile width of the shared-memory GEMM (TILE x TILE threads per block).
TILE = 8 if SIMULATOR else 16


def get_cuda():
    """Return the numba.cuda module, or raise a clear error when it cannot be used."""
    try:
        from numba import cuda  # noqa: PLC0415  (the one CUDA import)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "numba.cuda is not installed: `pip install minidistil[gpu]` (numba-cuda), "
            "or set NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels on the simulator"
        ) from e
    return cuda


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
    from numba.cuda.cudadrv import devicearray  # noqa: PLC0415 (already imported: numba.cuda is in sys.modules)
    return bool(devicearray.is_cuda_ndarray(a))


def to_device(a):
    """Host array -> device array (device arrays pass through)."""
    if is_device_array(a):
        return a
    return require_cuda().to_device(np.ascontiguousarray(a))


def to_host(a) -> np.ndarray:
    """Device array -> numpy array (numpy arrays pass through)."""
    if is_device_array(a):
        return a.copy_to_host()
    return np.asarray(a)


def device_empty(shape, dtype=np.float32):
    return require_cuda().device_array(shape, dtype=dtype)


def device_zeros(shape, dtype=np.float32):
    cuda = require_cuda()
    return cuda.to_device(np.zeros(shape, dtype=dtype))


def blocks_for(n: int, threads: int = THREADS) -> int:
    """Number of blocks so that blocks * threads >= n (at least one)."""
    return max(1, (n + threads - 1) // threads)
