"""A caching pool for numba.cuda's device memory, installed as numba's External Memory Management (EMM) plugin.

Without it numba allocates every device array with cuMemAlloc and queues its free; the queue is flushed (cuMemFree,
which waits for the device) every few frees. A training step allocates the same shapes every step (activations,
their gradients, scratch buffers), so a pool that keeps freed blocks and hands them out again turns every
allocation after the first step into a list operation, and no step calls cuMemFree.

Two backends, chosen when numba's context makes its first allocation:
    cupy    when CuPy does the GEMMs (_cuda._cupy()): numba's arrays come from CuPy's default memory pool, so the
            two libraries share one pool (a block freed by either is reused by both); CuPy rounds sizes and keeps
            free blocks itself, and on running out of memory frees its cached blocks and retries
    driver  otherwise: cuMemAlloc, with freed blocks kept in size classes (SizeClassPool, size_class) and reused;
            cuMemFree only when an allocation fails for lack of memory (the cached blocks are freed and the
            allocation retried once) and on release() / numba's context reset
A block is reused as soon as its array is freed: every kernel, copy and cuBLAS call of minidistil is queued on the
legacy default stream, so work that uses the new owner runs after all work queued for the old one (CuPy's pool
relies on the same ordering). Code that hands minidistil's device arrays to other streams must synchronise first.

Installed at most once, by install() from _cuda.get_cuda() (every path to numba.cuda goes through it, and numba
reads its memory manager when it creates its CUDA context, which comes later); not installed on the simulator (it
has no memory managers), with MINIDISTIL_CUDA_POOL=0, when the user set NUMBA_CUDA_MEMORY_MANAGER or a manager of
their own (cuda.set_memory_manager), or when numba's context already exists. stats() says which, and what the pool
holds. numba.cuda itself is passed in by _cuda (the one module that imports it).
"""
from __future__ import annotations

import collections
import ctypes
import os
import threading
import weakref

GRANULE = 512      # bytes: every block is a multiple of it (the alignment CuPy uses; cuMemAlloc's is 256)
SMALL = 1 << 20    # blocks up to 1 MiB are rounded to GRANULE
STEPS = 8          # larger ones to one of 8 sizes per doubling: a block is at most 1/8 larger than asked for


def size_class(nbytes: int) -> int:
    """The block size that serves a request of nbytes (> 0): requests of one class share freed blocks."""
    if nbytes <= SMALL:
        return max(1, -(-nbytes // GRANULE)) * GRANULE
    step = (1 << ((nbytes - 1).bit_length() - 1)) // STEPS  # power of two below nbytes, / STEPS
    return -(-nbytes // step) * step


class SizeClassPool:
    """Freed blocks kept per size class and handed out again; `alloc(nbytes) -> address` and `free(address)` are
    the device's (cuMemAlloc / cuMemFree), `is_oom(exception)` says whether an allocation failed for lack of
    memory. malloc returns (address, token); the token goes back with free (here: the block's class)."""

    backend = "driver"

    def __init__(self, alloc, free, is_oom):
        self._alloc, self._free, self._is_oom = alloc, free, is_oom
        self._cached = collections.defaultdict(list)  # class size -> addresses of free blocks
        self._lock = threading.RLock()  # re-entrant: a finalizer may return a block while malloc runs
        self.counts = collections.Counter()  # requests, reused, device_allocs, device_frees
        self.in_use_bytes = self.cached_bytes = self.peak_held_bytes = 0

    def malloc(self, nbytes: int):
        cls = size_class(nbytes)
        with self._lock:
            self.counts["requests"] += 1
            blocks = self._cached.get(cls)
            if blocks:
                ptr = blocks.pop()
                self.cached_bytes -= cls
                self.counts["reused"] += 1
            else:
                try:
                    ptr = self._alloc(cls)
                except Exception as e:
                    if not (self._is_oom(e) and self.cached_bytes):
                        raise
                    self.release()  # give the cached blocks back to the device, then try once more
                    ptr = self._alloc(cls)
                self.counts["device_allocs"] += 1
            self.in_use_bytes += cls
            self.peak_held_bytes = max(self.peak_held_bytes, self.in_use_bytes + self.cached_bytes)
            return ptr, cls

    def free(self, ptr: int, cls: int):
        with self._lock:
            self.in_use_bytes -= cls
            self.cached_bytes += cls
            self._cached[cls].append(ptr)

    def release(self):
        """Free every cached block on the device (blocks in use stay)."""
        with self._lock:
            for cls, blocks in self._cached.items():
                while blocks:
                    self._free(blocks.pop())
                    self.cached_bytes -= cls
                    self.counts["device_frees"] += 1

    def stats(self) -> dict:
        with self._lock:
            return dict(backend=self.backend, in_use_bytes=self.in_use_bytes,
                        held_bytes=self.in_use_bytes + self.cached_bytes, cached_bytes=self.cached_bytes,
                        peak_held_bytes=self.peak_held_bytes, **{k: self.counts[k] for k in
                                                                 ("requests", "reused", "device_allocs",
                                                                  "device_frees")})


class CupyPool:
    """numba's allocations served by a CuPy memory pool (cupy.get_default_memory_pool()): the token is CuPy's
    MemoryPointer, and dropping it (free) returns the block to CuPy's pool."""

    backend = "cupy"

    def __init__(self, pool):
        self._pool = pool
        self._lock = threading.RLock()
        self.counts = collections.Counter()
        self.in_use_bytes = 0  # numba's arrays only (CuPy's pool also holds CuPy's own)

    def malloc(self, nbytes: int):
        mem = self._pool.malloc(nbytes)
        with self._lock:
            self.counts["requests"] += 1
            self.in_use_bytes += nbytes
        return int(mem.ptr), (mem, nbytes)

    def free(self, ptr: int, token):
        with self._lock:
            self.in_use_bytes -= token[1]
        # the caller drops the token, and with it CuPy's MemoryPointer: the block goes back to CuPy's pool

    def release(self):
        self._pool.free_all_blocks()

    def stats(self) -> dict:
        used, total = self._pool.used_bytes(), self._pool.total_bytes()
        with self._lock:
            return dict(backend=self.backend, in_use_bytes=self.in_use_bytes, held_bytes=total,
                        cached_bytes=total - used, cupy_used_bytes=used, requests=self.counts["requests"])


def driver_pool(cuda) -> SizeClassPool:
    """A SizeClassPool over numba's driver (cuMemAlloc / cuMemFree through numba's checked wrappers)."""
    drv = cuda.cudadrv.driver
    oom = drv.binding.CUresult.CUDA_ERROR_OUT_OF_MEMORY

    def alloc(nbytes):
        return int(drv.driver.cuMemAlloc(nbytes))

    def free(ptr):
        drv.driver.cuMemFree(drv.binding.CUdeviceptr(ptr))

    return SizeClassPool(alloc, free, lambda e: isinstance(e, drv.CudaAPIError) and e.code == oom)


_POOLS = []        # the pool of each numba context (minidistil uses one GPU: one context)
_STATUS = None     # None until install() ran; then "installed" or why not


def memory_manager_class(cuda, make_pool):
    """numba's EMM plugin class over the pool `make_pool()` returns (one per context, made on its first use).
    Device memory comes from the pool; pinned host memory stays numba's (HostOnlyCUDAMemoryManager)."""
    drv = cuda.cudadrv.driver

    class PoolMemoryManager(cuda.GetIpcHandleMixin, cuda.HostOnlyCUDAMemoryManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)  # numba also builds one with context=None, to read its version
            self._pool = None
            self._live = {}  # address -> numba's pointer object, alive while any array or view uses the block

        @property
        def pool(self):
            if self._pool is None:
                self._pool = make_pool()
                _POOLS.append(self._pool)
            return self._pool

        def initialize(self):  # numba calls it whenever the context is made current
            _ = self.pool

        def memalloc(self, size):
            ctx = weakref.proxy(self.context)
            if size == 0:
                return drv.MemoryPointer(ctx, drv.binding.CUdeviceptr(0), 0)  # as numba makes empty arrays
            pool, live = self.pool, self._live
            ptr, token = pool.malloc(size)

            def give_back():  # when the last array or view of the block is gone
                live.pop(ptr, None)
                pool.free(ptr, token)

            # reference-counted as numba's own allocations are: views (OwnedPointer) keep the block in use
            mem = drv.AutoFreePointer(ctx, ctypes.c_void_p(ptr), size, finalizer=give_back)
            live[ptr] = mem
            return mem.own()

        def get_memory_info(self):
            free, total = drv.driver.cuMemGetInfo()
            return cuda.MemoryInfo(free=free, total=total)

        def reset(self):
            super().reset()
            self._live.clear()
            if self._pool is not None:
                self._pool.release()

        @property
        def interface_version(self):
            return 1

    return PoolMemoryManager


def _refusal(cuda) -> str | None:
    """Why the pool must not be installed, or None."""
    switch = os.environ.get("MINIDISTIL_CUDA_POOL", "1")
    if switch not in ("0", "1"):
        raise RuntimeError(f"MINIDISTIL_CUDA_POOL: expected 0 (off) or 1 (on), got {switch!r}")
    if switch == "0":
        return "off (MINIDISTIL_CUDA_POOL=0): numba's own allocator"
    if not hasattr(cuda, "set_memory_manager"):
        return "not used on the simulator (it has no memory managers)"
    drv = cuda.cudadrv.driver
    user = os.environ.get("NUMBA_CUDA_MEMORY_MANAGER", "default")
    if user != "default" or getattr(drv.config, "CUDA_MEMORY_MANAGER", "default") != "default":
        return f"not installed: NUMBA_CUDA_MEMORY_MANAGER={user} is in use"
    if drv._memory_manager is not None:  # set by the user, or numba's default once its context exists
        return f"not installed: numba already uses {drv._memory_manager.__name__}"
    return None


def install(cuda, make_pool):
    """Make the pool numba's memory manager, once (later calls return at once); see the module docstring."""
    global _STATUS
    if _STATUS is not None:
        return
    reason = _refusal(cuda)
    if reason is None:
        cuda.set_memory_manager(memory_manager_class(cuda, make_pool))
        reason = "installed"
    _STATUS = reason


def stats() -> dict:
    """{"status": "installed" or why not, and once numba's context allocated: backend ("driver" or "cupy"),
    in_use_bytes (numba's arrays alive), held_bytes (what the pool holds on the device, in use or cached),
    cached_bytes, request and device call counts}; the pool of the most recent context."""
    out = {"status": _STATUS if _STATUS is not None else "not installed yet (numba.cuda not used)"}
    if _POOLS:
        out.update(_POOLS[-1].stats())
    return out
