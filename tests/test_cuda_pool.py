"""The device memory pool (kernels/_cuda_pool.py), tested without a GPU.

The simulator has no memory managers, so the pool is tested in two ways here, and on a real GPU only by
tests/gpu_run.sh's `pool` step:
- its bookkeeping (size classes, reuse, release, the out-of-memory retry, statistics, the CuPy backend) with fake
  allocators, in this process;
- numba's side in a child process that imports the real numba.cuda (NUMBA_ENABLE_CUDASIM=0; no GPU needed): the
  hook in _cuda.get_cuda() installs the pool as numba's memory manager, or leaves numba alone (MINIDISTIL_CUDA_POOL=0,
  NUMBA_CUDA_MEMORY_MANAGER, a manager or a context the user made first); and a real numba Context allocates through
  it, numba's reference counting (arrays and their views) returning blocks to the pool, with cuMemAlloc and cuMemFree
  replaced by fakes that count their calls.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from minidistil.kernels import _cuda_pool as P


# ---- size classes and the driver backend's free lists ------------------------------------------------------------

def test_size_classes_round_up_by_at_most_an_eighth_above_a_mebibyte():
    sizes = [1, 511, 512, 513, 4000, P.SMALL - 1, P.SMALL, P.SMALL + 1, 3 * P.SMALL + 7, 10 ** 9 + 3]
    for n in sizes:
        c = P.size_class(n)
        assert c >= n and c % P.GRANULE == 0, (n, c)
        assert c - n < (P.GRANULE if n <= P.SMALL else n / P.STEPS), (n, c)
        assert P.size_class(c) == c, "a class size is its own class (a reused block serves its class again)"
    assert P.size_class(1) == P.size_class(P.GRANULE) == P.GRANULE
    assert P.size_class(P.SMALL + 1) == P.SMALL + P.SMALL // P.STEPS
    classes = [P.size_class(n) for n in range(1, 5 * P.SMALL, 4093)]
    assert classes == sorted(classes), "classes grow with the request"


class FakeDevice:
    """cuMemAlloc / cuMemFree stand-ins: distinct addresses, a capacity (then an out-of-memory error), call counts."""

    class OOM(Exception):
        pass

    def __init__(self, capacity=1 << 40):
        self.capacity, self.used, self.next = capacity, 0, 1 << 20
        self.sizes, self.allocs, self.frees = {}, 0, 0

    def alloc(self, n):
        if self.used + n > self.capacity:
            raise FakeDevice.OOM()
        self.allocs += 1
        self.used += n
        ptr, self.next = self.next, self.next + n
        self.sizes[ptr] = n
        return ptr

    def free(self, ptr):
        self.frees += 1
        self.used -= self.sizes.pop(ptr)

    def pool(self):
        return P.SizeClassPool(self.alloc, self.free, lambda e: isinstance(e, FakeDevice.OOM))


def test_freed_blocks_are_reused_by_their_class_and_never_freed_on_the_device():
    dev = FakeDevice()
    pool = dev.pool()
    a, ca = pool.malloc(1000)
    b, cb = pool.malloc(1000)
    c, cc = pool.malloc(3 * P.SMALL)
    assert len({a, b, c}) == 3 and ca == cb == 1024 and cc == P.size_class(3 * P.SMALL)
    s = pool.stats()
    assert s["in_use_bytes"] == s["held_bytes"] == 2048 + cc and s["cached_bytes"] == 0
    pool.free(a, ca)
    pool.free(c, cc)
    s = pool.stats()
    assert (s["in_use_bytes"], s["cached_bytes"], s["held_bytes"]) == (1024, 1024 + cc, 2048 + cc)
    assert dev.frees == 0, "a freed block stays in the pool"
    a2, _ = pool.malloc(700)                      # another size of the same class: the same block
    c2, _ = pool.malloc(3 * P.SMALL - 5)
    assert (a2, c2) == (a, c) and dev.allocs == 3
    d, cd = pool.malloc(5000)                     # a new class: a new device allocation
    assert d not in (a, b, c) and dev.allocs == 4
    s = pool.stats()
    assert (s["requests"], s["reused"], s["device_allocs"], s["device_frees"]) == (6, 2, 4, 0)
    assert s["peak_held_bytes"] == 2048 + cc + cd and s["backend"] == "driver"
    for ptr, cls in ((a2, ca), (b, cb), (c2, cc), (d, cd)):
        pool.free(ptr, cls)
    pool.release()                                # every cached block back to the device
    assert dev.frees == 4 and dev.used == 0
    s = pool.stats()
    assert s["held_bytes"] == s["cached_bytes"] == s["in_use_bytes"] == 0 and s["device_frees"] == 4


def test_out_of_memory_releases_the_cached_blocks_and_retries_once():
    dev = FakeDevice(capacity=4096)
    pool = dev.pool()
    a, ca = pool.malloc(2048)
    b, cb = pool.malloc(1024)
    pool.free(a, ca)                              # 2048 cached, 1024 in use, 1024 left on the device
    c, cc = pool.malloc(3000)                     # class 3072: only fits once the cached block is freed
    assert dev.frees == 1 and pool.stats()["cached_bytes"] == 0 and pool.stats()["in_use_bytes"] == cb + cc
    with pytest.raises(FakeDevice.OOM):           # nothing cached left to free: the error goes to the caller
        pool.malloc(4096)
    assert pool.stats()["in_use_bytes"] == cb + cc, "a failed request leaves the books as they were"


# ---- the CuPy backend ---------------------------------------------------------------------------------------------

class FakeCupyPool:
    """cupy.get_default_memory_pool()'s interface: malloc returns a MemoryPointer-like object whose block goes back
    to the pool when the last reference to it is dropped (as CuPy's does)."""

    def __init__(self):
        self.used = self.total = 0
        self.freed_all = 0
        pool = self

        class Mem:
            def __init__(self, ptr, n):
                self.ptr, self.n = ptr, n

            def __del__(self):
                pool.used -= self.n

        self.Mem, self.next = Mem, 1 << 20

    def malloc(self, n):
        self.used += n
        self.total = max(self.total, self.used)
        self.next += n
        return self.Mem(self.next - n, n)

    def used_bytes(self):
        return self.used

    def total_bytes(self):
        return self.total

    def free_all_blocks(self):
        self.freed_all += 1


def test_cupy_backend_returns_blocks_to_cupys_pool_when_numba_drops_them():
    cp_pool = FakeCupyPool()
    pool = P.CupyPool(cp_pool)
    ptr, token = pool.malloc(1000)
    assert ptr == token[0].ptr and cp_pool.used == 1000
    s = pool.stats()
    assert s["backend"] == "cupy" and s["in_use_bytes"] == 1000 and s["held_bytes"] == 1000
    pool.free(ptr, token)
    del token                                     # the EMM plugin drops its reference after free()
    assert cp_pool.used == 0 and pool.stats()["in_use_bytes"] == 0 and pool.stats()["cached_bytes"] == 1000
    pool.release()
    assert cp_pool.freed_all == 1


# ---- installing: once, and never over the user's choice ------------------------------------------------------------

def _fake_cuda(memory_manager=None, config_manager="default"):
    calls = []
    drv = types.SimpleNamespace(_memory_manager=memory_manager,
                                config=types.SimpleNamespace(CUDA_MEMORY_MANAGER=config_manager))
    cuda = types.SimpleNamespace(set_memory_manager=calls.append, cudadrv=types.SimpleNamespace(driver=drv),
                                 GetIpcHandleMixin=type("Mixin", (), {}), HostOnlyCUDAMemoryManager=object)
    return cuda, calls


@pytest.fixture
def fresh_install_state(monkeypatch):
    monkeypatch.setattr(P, "_STATUS", None)
    monkeypatch.setattr(P, "_POOLS", [])
    for name in ("MINIDISTIL_CUDA_POOL", "NUMBA_CUDA_MEMORY_MANAGER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_install_sets_the_manager_once(fresh_install_state):
    cuda, calls = _fake_cuda()
    P.install(cuda, make_pool=None)
    P.install(cuda, make_pool=None)
    assert len(calls) == 1 and calls[0].__name__ == "PoolMemoryManager"
    assert P.stats() == {"status": "installed"}


@pytest.mark.parametrize("case,expect", [
    ("off", "off (MINIDISTIL_CUDA_POOL=0)"),
    ("env", "NUMBA_CUDA_MEMORY_MANAGER=rmm"),
    ("config", "NUMBA_CUDA_MEMORY_MANAGER"),
    ("user", "numba already uses TheirManager"),
    ("simulator", "simulator"),
])
def test_install_leaves_numba_alone(fresh_install_state, case, expect):
    class TheirManager:
        pass

    cuda, calls = _fake_cuda(memory_manager=TheirManager if case == "user" else None,
                             config_manager="rmm" if case == "config" else "default")
    if case == "off":
        fresh_install_state.setenv("MINIDISTIL_CUDA_POOL", "0")
    if case == "env":
        fresh_install_state.setenv("NUMBA_CUDA_MEMORY_MANAGER", "rmm")
    if case == "simulator":
        del cuda.set_memory_manager
    P.install(cuda, make_pool=None)
    assert calls == [] and expect in P.stats()["status"]


def test_a_bad_switch_value_is_a_one_line_error(fresh_install_state):
    fresh_install_state.setenv("MINIDISTIL_CUDA_POOL", "yes")
    cuda, calls = _fake_cuda()
    with pytest.raises(RuntimeError, match=r"MINIDISTIL_CUDA_POOL: expected 0 \(off\) or 1 \(on\), got 'yes'"):
        P.install(cuda, make_pool=None)
    assert calls == [] and P._STATUS is None


# ---- numba's side: the real numba.cuda in a child process (no GPU: a Context object over fake driver calls) ----------

_CHILD = r'''
import gc, json, sys, types
case = sys.argv[1]
out = {}
if case == "cupy":   # a stand-in for CuPy, found by _cuda._cupy() as the real one would be
    class Mem:
        def __init__(self, ptr, n): self.ptr, self.n = ptr, n
        def __del__(self): fake_pool.used -= self.n
    class FakePool:
        used, next = 0, 1 << 30
        def malloc(self, n):
            self.used += n; self.next += 4096; return Mem(self.next, n)
        def used_bytes(self): return self.used
        def total_bytes(self): return 1 << 20
        def free_all_blocks(self): pass
    fake_pool = FakePool()
    sys.modules["cupy"] = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)),
        get_default_memory_pool=lambda: fake_pool)
try:
    from numba import cuda as user_cuda
    drv = user_cuda.cudadrv.driver
    drv.HostOnlyCUDAMemoryManager
except Exception as e:  # numba-cuda (the gpu extra) or its CUDA bindings are not installed
    print(json.dumps({"skip": f"{type(e).__name__}: {e}"}))
    sys.exit(0)
calls = {"cuMemAlloc": 0, "cuMemFree": 0}
def fake_alloc(n, _next=[1 << 20]):
    calls["cuMemAlloc"] += 1
    _next[0] += n
    return drv.binding.CUdeviceptr(_next[0] - n)
def fake_free(ptr):
    calls["cuMemFree"] += 1
drv.driver.cuMemAlloc, drv.driver.cuMemFree = fake_alloc, fake_free
if case == "user_manager":
    class TheirManager(drv.NumbaCUDAMemoryManager):
        pass
    user_cuda.set_memory_manager(TheirManager)
if case == "user_context":   # the user made numba's context before minidistil asked for CUDA
    drv.Context(device=None, handle=None)
from minidistil.kernels import _cuda
cuda = _cuda.get_cuda()
out["status"] = _cuda.pool_stats()["status"]
out["manager"] = drv._memory_manager.__name__ if drv._memory_manager else None
if case in ("driver", "cupy"):
    ctx = drv.Context(device=None, handle=None)     # reads the memory manager, as at numba's first CUDA use
    ctx.prepare_for_use()
    a = ctx.memalloc(1000)
    addr = int(a.device_pointer)
    view = a.view(512, 1000)                        # a slice of an array holds the block too
    del a
    gc.collect()
    out["in_use_with_view"] = _cuda.pool_stats()["in_use_bytes"]
    del view
    gc.collect()
    out["after_free"] = _cuda.pool_stats()
    if case == "cupy":
        out["cupy_used_after_free"] = fake_pool.used
    b = ctx.memalloc(900)                           # the same class: the same block again
    out["reused_same_block"] = int(b.device_pointer) == addr
    out["empty_size"] = ctx.memalloc(0).size
    del b
    gc.collect()
    out["calls_before_reset"] = dict(calls)
    ctx.memory_manager.reset()
    out["calls_after_reset"] = dict(calls)
    out["stats"] = _cuda.pool_stats()
print(json.dumps(out))
'''


def _child(case, **env):
    e = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", **env)
    for name in ("MINIDISTIL_CUDA_POOL", "NUMBA_CUDA_MEMORY_MANAGER", "MINIDISTIL_NO_CUBLAS"):
        if name not in env:
            e.pop(name, None)
    r = subprocess.run([sys.executable, "-c", _CHILD, case], capture_output=True, text=True, env=e, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"the real numba.cuda cannot be imported here: {out['skip']}")
    return out


def test_numba_allocates_through_the_driver_pool_and_never_calls_cumemfree():
    out = _child("driver")
    assert out["status"] == "installed" and out["manager"] == "PoolMemoryManager"
    assert out["in_use_with_view"] == 1024, "the view keeps its block in use"
    s = out["after_free"]
    assert s["backend"] == "driver" and s["in_use_bytes"] == 0 and s["cached_bytes"] == s["held_bytes"] == 1024
    assert out["reused_same_block"] and out["empty_size"] == 0
    assert out["calls_before_reset"] == {"cuMemAlloc": 1, "cuMemFree": 0}
    assert out["calls_after_reset"] == {"cuMemAlloc": 1, "cuMemFree": 1}, "numba's context reset frees the cache"
    assert out["stats"]["requests"] == 2 and out["stats"]["reused"] == 1 and out["stats"]["held_bytes"] == 0


def test_with_cupy_numba_allocates_from_cupys_pool():
    out = _child("cupy")
    assert out["status"] == "installed"
    s = out["after_free"]
    assert s["backend"] == "cupy" and s["in_use_bytes"] == 0 and out["cupy_used_after_free"] == 0
    assert out["calls_before_reset"] == {"cuMemAlloc": 0, "cuMemFree": 0}, "CuPy's pool, not numba's driver calls"


@pytest.mark.parametrize("case,env,status", [
    ("plain", {"MINIDISTIL_CUDA_POOL": "0"}, "off (MINIDISTIL_CUDA_POOL=0)"),
    ("plain", {"NUMBA_CUDA_MEMORY_MANAGER": "their_emm_module"}, "NUMBA_CUDA_MEMORY_MANAGER=their_emm_module"),
    ("user_manager", {}, "numba already uses TheirManager"),
    ("user_context", {}, "numba already uses NumbaCUDAMemoryManager"),
])
def test_the_hook_leaves_numbas_manager_alone(case, env, status):
    out = _child(case, **env)
    assert status in out["status"]
    assert out["manager"] != "PoolMemoryManager"
