"""Process set-up that must happen BEFORE numpy is imported: which OpenBLAS kernels to use and how its threads wait.

This module imports nothing heavy (only os and sys): `minidistil/__init__.py` calls `configure()` first thing, so
that `import minidistil` (or `import minidistil.kernels.X`, which imports the package first) sets the environment
before numpy loads OpenBLAS. Once numpy is imported, OpenBLAS has read its environment and nothing here changes it.

1. OpenBLAS core type. numpy's wheel bundles OpenBLAS built with DYNAMIC_ARCH: at load time it picks the kernels
   for the CPU model it recognises. On some AVX-512 machines (new or virtualised CPU models) it falls back to its
   Haswell (AVX2) kernels: measured here, a (1024 x 768) @ (768 x 3072) float32 GEMM ran at ~240 GFLOP/s with the
   default choice and ~460 GFLOP/s with OPENBLAS_CORETYPE=SkylakeX. We set OPENBLAS_CORETYPE=SkylakeX when
       - numpy is not imported yet (otherwise it is too late, and changing it would be a lie),
       - the user has not set OPENBLAS_CORETYPE themselves,
       - /proc/cpuinfo lists avx512f, avx512bw, avx512dq and avx512vl (what OpenBLAS's SkylakeX kernels use), and
       - MINIDISTIL_OPENBLAS_CORETYPE is not "0".
   MINIDISTIL_OPENBLAS_CORETYPE=0 turns this off; MINIDISTIL_OPENBLAS_CORETYPE=<name> (e.g. Haswell) sets that core
   type instead (subject to the same first two conditions). The numbers change only by float32 rounding (another
   order of summation in the GEMM), within the parity tests' derived tolerances.

2. Spinning threads. After a GEMM, OpenBLAS's worker threads busy-wait for up to 2^28 cycles (~0.1 s) for more
   work, and the Numba kernel that runs next (layer norm, GELU, softmax) wants the same cores; Numba's OpenMP
   workers (GNU libgomp) likewise spin after each parallel loop. Measured on the 2-core machine shared with other
   jobs: a whole tiny-model forward (a dozen small Numba kernels) took 150 ms with the default OpenMP waiting and
   0.8 ms with OMP_WAIT_POLICY=PASSIVE; a layer norm right after a GEMM took 8-20x longer than alone. So, unless
   the user set them or MINIDISTIL_THREAD_ENV=0:
       OMP_WAIT_POLICY=PASSIVE          OpenMP workers sleep when idle (a wake-up costs microseconds)
       OPENBLAS_THREAD_TIMEOUT=4        OpenBLAS workers sleep after 2^4 cycles (only before numpy's import)
   Attention's many small GEMMs avoid OpenBLAS's threads altogether (`run_blas_tasks` below).

3. Fresh memory. glibc's malloc serves every allocation above 32 MB (its largest mmap threshold) with a fresh
   mmap and unmaps it on free, so each such array is new memory whose first touch faults every page in, zeroed by
   the kernel. A DistilBERT-base MLM training step allocates ~450 MB of them per step (the (B T, V) logits and
   their gradient, 125 MB each; the (V, C) gradients of the tied word embeddings, 94 MB each), and a T = 512
   forward 100 MB of attention scores per layer. Measured here: the first fill of a new 125 MB array took 62 ms,
   a second fill 17 ms. So, unless MINIDISTIL_MALLOC=0 or the user set MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_,
   configure() calls glibc's mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2^31 - 1): large arrays come from
   the heap, and freed memory stays in the process for the next step instead of going back to the kernel.
   Measured (minidistil bench, minidistil only, same machine, one run each): training step 1959 -> 1418 ms,
   forward at T = 512 1782 -> 1622 ms, peak resident memory unchanged (1849 -> 1843 MB, 809 -> 821 MB). The cost:
   memory once used is not returned to the system until the process ends (the peak stays resident). This is a
   process-wide setting, so in `minidistil bench` PyTorch and ONNX Runtime run under it too. Only on Linux with
   glibc; elsewhere nothing is done.

`report()` says what was decided (the bench command prints it).
"""
from __future__ import annotations

import os
import sys
import threading

_DECISION: dict[str, str] = {}
_SET_BY_US: dict[str, str] = {}
_NEEDED_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl")


def cpu_flags() -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _set_default(name: str, value: str, why: str):
    if name in os.environ:
        _DECISION[name] = f"{os.environ[name]} (set by the user)"
    else:
        os.environ[name] = value
        _SET_BY_US[name] = value
        _DECISION[name] = f"{value} ({why})"


def configure() -> dict[str, str]:
    """Set OPENBLAS_CORETYPE, OPENBLAS_THREAD_TIMEOUT and OMP_WAIT_POLICY as the module docstring says (never
    overriding a value the user set). Idempotent; returns what was decided."""
    if _DECISION:
        return _DECISION
    if os.environ.get("MINIDISTIL_THREAD_ENV", "1") == "0":
        _DECISION["threads"] = "left alone (MINIDISTIL_THREAD_ENV=0)"
    else:
        _set_default("OMP_WAIT_POLICY", "PASSIVE", "Numba's OpenMP workers sleep between kernels")
        if "numpy" not in sys.modules:
            _set_default("OPENBLAS_THREAD_TIMEOUT", "4", "OpenBLAS workers sleep between GEMMs")
    _configure_malloc()
    wish = os.environ.get("MINIDISTIL_OPENBLAS_CORETYPE", "").strip()
    if wish == "0":
        _DECISION["OPENBLAS_CORETYPE"] = "not set (MINIDISTIL_OPENBLAS_CORETYPE=0)"
    elif "numpy" in sys.modules:
        _DECISION["OPENBLAS_CORETYPE"] = "not set (numpy was imported before minidistil)"
    elif "OPENBLAS_CORETYPE" in os.environ:
        _DECISION["OPENBLAS_CORETYPE"] = f"{os.environ['OPENBLAS_CORETYPE']} (set by the user)"
    elif wish and wish not in ("1", "auto"):
        _set_default("OPENBLAS_CORETYPE", wish, "MINIDISTIL_OPENBLAS_CORETYPE")
    elif all(f in cpu_flags() for f in _NEEDED_FLAGS):
        _set_default("OPENBLAS_CORETYPE", "SkylakeX", "the CPU has AVX-512 F/BW/DQ/VL")
    else:
        _DECISION["OPENBLAS_CORETYPE"] = "not set (no AVX-512 F/BW/DQ/VL in /proc/cpuinfo)"
    return _DECISION


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)


def _configure_malloc():
    """Item 3 of the module docstring: large arrays from glibc's heap, kept for reuse."""
    if os.environ.get("MINIDISTIL_MALLOC", "1") == "0":
        _DECISION["malloc"] = "left alone (MINIDISTIL_MALLOC=0)"
        return
    if "MALLOC_MMAP_MAX_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        _DECISION["malloc"] = "left alone (MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ set by the user)"
        return
    import ctypes  # noqa: PLC0415
    import platform  # noqa: PLC0415
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _DECISION["malloc"] = "left alone (not Linux with glibc)"
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    _DECISION["malloc"] = ("large arrays from the heap, kept for reuse (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"
                           if ok else "left alone (mallopt refused)")


def set_by_minidistil() -> dict[str, str]:
    """The environment variables configure() set (not the user): e.g. to hand another library its defaults."""
    return dict(_SET_BY_US)


def report() -> str:
    """One line: the decisions of configure()."""
    return ", ".join(f"{k}={v}" for k, v in (_DECISION or {"OPENBLAS_CORETYPE": "configure() not called"}).items())


# ----------------------------------------------------------------------------------------------------------------
# numpy's OpenBLAS at run time (ctypes, as threadpoolctl does; numpy has no API for it)


class _OpenBLAS:
    """The OpenBLAS library that numpy loaded: its core name and its thread count. `ok` is False when none is
    found (another BLAS, or a numpy built differently); every method then does nothing."""

    def __init__(self):
        import ctypes  # noqa: PLC0415
        import numpy as np  # noqa: F401, PLC0415  (loads OpenBLAS)
        self.path, self.lib, self.ok = None, None, False
        try:
            with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
                paths = [ln.split()[-1] for ln in f if "openblas" in ln.lower() and ln.split()[-1].startswith("/")]
        except OSError:
            paths = []
        numpy_first = sorted(set(paths), key=lambda p: ("numpy.libs" not in p, p))
        for path in numpy_first:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                corename = getattr(lib, f"{prefix}_get_corename{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    if corename is not None:
                        corename.argtypes, corename.restype = [], ctypes.c_char_p
                    self.path, self.lib, self.ok = path, lib, True
                    self._set, self._get, self._corename = setter, getter, corename
                    return

    def corename(self) -> str:
        if not self.ok or self._corename is None:
            return "unknown"
        return self._corename().decode("ascii", "replace")

    def get_num_threads(self) -> int:
        return int(self._get()) if self.ok else 0

    def set_num_threads(self, n: int):
        if self.ok:
            self._set(int(n))


_BLAS = None


def openblas() -> _OpenBLAS:
    """numpy's OpenBLAS (found once, on first use; importing numpy if needed)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = _OpenBLAS()
    return _BLAS


# ----------------------------------------------------------------------------------------------------------------
# many small GEMMs: one OpenBLAS thread each, spread over the cores by a Python thread pool


def n_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_POOL = None
_LOCK = threading.Lock()


def run_blas_tasks(tasks) -> None:
    """Run zero-argument callables that each call numpy's BLAS on small matrices (e.g. one attention head's
    Q K^T), in parallel over the cores, OpenBLAS single-threaded meanwhile.

    Why: OpenBLAS threads a 128 x 64 x 128 GEMM across the cores, and waking its threads costs more than the
    product (measured: the 96 head products of one DistilBERT-base layer took 10-90 ms threaded, 2.4 ms on one
    thread). numpy releases the GIL inside BLAS, so two Python threads keep two cores busy. Falls back to a plain
    loop when numpy's OpenBLAS is not found (its thread count could then not be set)."""
    global _POOL
    tasks = list(tasks)
    blas = openblas()
    if len(tasks) <= 1 or not blas.ok or n_cores() == 1:
        for t in tasks:
            t()
        return
    with _LOCK:  # one caller at a time: two would race on OpenBLAS's (global) thread count
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
            _POOL = ThreadPoolExecutor(max_workers=n_cores(), thread_name_prefix="minidistil-blas")
        before = blas.get_num_threads()
        blas.set_num_threads(1)
        try:
            for f in [_POOL.submit(t) for t in tasks]:
                f.result()
        finally:
            blas.set_num_threads(before)


def split_pairs(B: int, H: int, parts: int | None = None) -> list[tuple[slice, slice]]:
    """Split the (batch, head) grid into about `parts` (default: the core count) blocks of (batch slice, head
    slice), whole batches when B >= parts, else heads of one batch element."""
    parts = parts or n_cores()
    if B >= parts:
        edges = [B * i // parts for i in range(parts + 1)]
        return [(slice(a, b), slice(0, H)) for a, b in zip(edges, edges[1:]) if b > a]
    per = -(-parts // max(B, 1))
    edges = [H * i // per for i in range(per + 1)]
    return [(slice(b, b + 1), slice(h0, h1)) for b in range(B) for h0, h1 in zip(edges, edges[1:]) if h1 > h0]


# ----------------------------------------------------------------------------------------------------------------
# one large GEMM as row or column blocks on the pool (dynamic scheduling)

GEMM_SPLIT_MIN_FLOPS = 2e7    # below this a product is one plain BLAS call (splitting costs more than it gains)
GEMM_SPLIT_MAX_FLOPS = 2.5e9  # above this OpenBLAS's own threads (measured: at B=8, T=512 blocks were 25% slower,
                              # each block repacking its share)
GEMM_BLOCKS_PER_CORE = 4


def gemm_mode() -> str:
    """'blas' (default): one call, OpenBLAS's own threads; 'blocks' (MINIDISTIL_GEMM=blocks): out = a @ b as row
    or column blocks on the pool, OpenBLAS single-threaded in each.

    Which is faster depends on what else runs on the cores. Measured on the 2-core machine, whole DistilBERT-base
    forwards at B=8, median of 6-8 interleaved runs:
        session 1, machine shared with other jobs:   T=32 blocks 3-4x faster than blas; T=128 even
        session 2, idle machine:                     T=32 blas 115 ms, blocks 137 ms; T=128 blas 433, blocks 484
        session 2, two other jobs on the cores:      T=32 blas 128, blocks 156; T=128 blas 529, blocks 659
    so one call is the default, and the blocks stay available for a machine whose cores are often taken away."""
    return "blocks" if os.environ.get("MINIDISTIL_GEMM", "blas") == "blocks" else "blas"


def matmul(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N), all 2-d float32 (b and out may be strided views BLAS accepts).

    'blocks' mode, for products of GEMM_SPLIT_MIN_FLOPS to GEMM_SPLIT_MAX_FLOPS flops, splits the longer of M and N
    into GEMM_BLOCKS_PER_CORE x cores blocks (multiples of 16) that the pool's threads take one after the other,
    each a single-threaded OpenBLAS call: a thread the OS delays only delays the blocks it holds, the others take
    the rest. OpenBLAS's own threading splits once, statically, and waits for its slowest part: measured on the
    2-core machine shared with other jobs, the 256-row GEMMs of a B=8, T=32 DistilBERT forward ran 3-4x faster
    this way (250-460 ms against 900-1700 ms for the whole forward). Each output element is the same K-term dot
    product as in one call (BLAS's own order of summation within a block)."""
    import numpy as np  # noqa: PLC0415
    M, K = a.shape
    N = b.shape[1]
    parts = GEMM_BLOCKS_PER_CORE * n_cores()
    flops = 2.0 * M * N * K
    if (gemm_mode() == "blas" or not GEMM_SPLIT_MIN_FLOPS <= flops <= GEMM_SPLIT_MAX_FLOPS or max(M, N) < 32
            or not openblas().ok):
        np.matmul(a, b, out=out)
        return out
    # each block repacks the operand it does not split: split the longer side, so that the one repacked is smaller
    by_rows = M > N
    L = M if by_rows else N
    per = -(-L // parts)                     # ceil(L / parts) rows or columns per block ...
    width = max(16, -(-per // 16) * 16)      # ... rounded up to a multiple of 16
    edges = list(range(0, L, width)) + [L]
    if by_rows:
        tasks = (lambda i0=i0, i1=i1: np.matmul(a[i0:i1], b, out=out[i0:i1]) for i0, i1 in zip(edges, edges[1:]))
    else:
        tasks = (lambda j0=j0, j1=j1: np.matmul(a, b[:, j0:j1], out=out[:, j0:j1])
                 for j0, j1 in zip(edges, edges[1:]))
    run_blas_tasks(tasks)
    return out
