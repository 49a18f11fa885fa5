"""numpy's OpenBLAS at run time: its core name and thread count, and a thread pool for many small GEMMs.

numpy has no API for OpenBLAS's thread count, so `openblas()` finds the library numpy loaded (through
/proc/self/maps and ctypes, as threadpoolctl does). Two users:

- `run_blas_tasks`: attention's head products (128 x 64 x 128 GEMMs at DistilBERT-base size) run one OpenBLAS
  thread per core from a Python thread pool. Measured on the 2-core machine: the 96 head products of one
  DistilBERT-base layer took 10-90 ms with OpenBLAS's own threads, 2.4 ms this way.
- `matmul`: one large product as one BLAS call (the default), or as row or column blocks on the same pool
  (MINIDISTIL_GEMM=blocks) for a machine whose cores other jobs often take (tutorials/09_cpu_performance.py).

`kernel_report` says which OpenBLAS kernels numpy runs (its core name), the sgemm rate they reach on a model-shaped
product, and `kernel_warning` whether OPENBLAS_CORETYPE holds them below what the CPU supports (the benchmarks
print both).

Process set-up that must happen before numpy loads (OPENBLAS_CORETYPE, OMP_WAIT_POLICY, malloc) is not here: it is
`minidistil/core/_runtime.py`, run by `import minidistil`.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _cpuinfo


class _OpenBLAS:
    """The OpenBLAS library that numpy loaded: its core name and its thread count. `ok` is False when none is
    found (another BLAS, or a numpy built differently); every method then does nothing."""

    def __init__(self):
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
    """numpy's OpenBLAS (found once, on first use)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = _OpenBLAS()
    return _BLAS


def n_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------------------
# many small GEMMs: one OpenBLAS thread each, spread over the cores by a Python thread pool

_POOL = None
_LOCK = threading.Lock()


def run_blas_tasks(tasks) -> None:
    """Run zero-argument callables that each call numpy's BLAS on small matrices (e.g. one attention head's
    Q K^T), in parallel over the cores, OpenBLAS single-threaded meanwhile.

    OpenBLAS threads a 128 x 64 x 128 GEMM across the cores, and waking its threads costs more than the product.
    numpy releases the GIL inside BLAS, so two Python threads keep two cores busy. Falls back to a plain loop
    when numpy's OpenBLAS is not found (its thread count could then not be set)."""
    global _POOL
    tasks = list(tasks)
    blas = openblas()
    if len(tasks) <= 1 or not blas.ok or n_cores() == 1:
        for t in tasks:
            t()
        return
    with _LOCK:  # one caller at a time: two would race on OpenBLAS's (global) thread count
        if _POOL is None:
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

    Measured on the idle 2-core machine (whole DistilBERT-base forwards, B=8, T=128): blas 433 ms, blocks 484 ms,
    so one call is the default; on a machine shared with other jobs the blocks were 3-4x faster at T=32
    (tutorials/09_cpu_performance.py tells the whole story)."""
    return "blocks" if os.environ.get("MINIDISTIL_GEMM", "blas") == "blocks" else "blas"


class GemmTally:
    """What `matmul` ran while `tally_gemms()` was active: the products counted, their flops (2 M N K each) and the
    wall time spent inside them. The benchmark uses it to say how much of a step the linear layers' GEMMs take and
    at what rate they run, beside the sgemm rate `kernel_report` measures on one product."""

    def __init__(self):
        self.calls, self.flops, self.seconds = 0, 0.0, 0.0

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0


_TALLY: GemmTally | None = None


@contextlib.contextmanager
def tally_gemms():
    """with tally_gemms() as t: ... -> t.calls, t.flops, t.seconds of the `matmul` calls made inside the block
    (process-wide, for one calling thread at a time; an inner block counts its own products, which the outer
    one then misses)."""
    global _TALLY
    outer, _TALLY = _TALLY, GemmTally()
    try:
        yield _TALLY
    finally:
        _TALLY = outer


def matmul(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N), all 2-d float32 (b and out may be strided views BLAS accepts); inside
    `tally_gemms()` the product is also counted and timed (two clock reads: nothing measurable beside a GEMM)."""
    tally = _TALLY
    if tally is None:
        return _matmul(a, b, out)
    t0 = time.perf_counter()
    _matmul(a, b, out)
    tally.seconds += time.perf_counter() - t0
    tally.calls += 1
    tally.flops += 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    return out


def tallied(fn, M: int, K: int, N: int):
    """fn() (a product (M, K) @ (K, N) not made by `matmul`, e.g. kernels/gemm.py's), counted and timed as `matmul`
    counts its own inside `tally_gemms()`; returns fn()'s result."""
    tally = _TALLY
    if tally is None:
        return fn()
    t0 = time.perf_counter()
    out = fn()
    tally.seconds += time.perf_counter() - t0
    tally.calls += 1
    tally.flops += 2.0 * M * K * N
    return out


def _matmul(a, b, out):
    """out = a @ b: one BLAS call or, in 'blocks' mode, blocks on the pool.

    'blocks' mode, for products of GEMM_SPLIT_MIN_FLOPS to GEMM_SPLIT_MAX_FLOPS flops, splits the longer of M and N
    into GEMM_BLOCKS_PER_CORE x cores blocks (multiples of 16) that the pool's threads take one after the other,
    each a single-threaded OpenBLAS call: a thread the OS delays only delays the blocks it holds, the others take
    the rest (OpenBLAS's own threading splits once, statically, and waits for its slowest part). Each output
    element is the same K-term dot product as in one call (BLAS's own order of summation within a block)."""
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
        tasks = [_matmul_rows(a, b, out, i0, i1) for i0, i1 in zip(edges, edges[1:])]
    else:
        tasks = [_matmul_cols(a, b, out, j0, j1) for j0, j1 in zip(edges, edges[1:])]
    run_blas_tasks(tasks)
    return out


def _matmul_rows(a, b, out, i0, i1):
    return lambda: np.matmul(a[i0:i1], b, out=out[i0:i1])


def _matmul_cols(a, b, out, j0, j1):
    return lambda: np.matmul(a, b[:, j0:j1], out=out[:, j0:j1])


# ----------------------------------------------------------------------------------------------------------------
# which kernels numpy's OpenBLAS runs, how fast, and whether a variable holds it back

FORCING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # read by OpenBLAS when numpy loads it


def sgemm_gflops(M: int = 1024, K: int = 768, N: int = 3072, repeat: int = 5) -> float:
    """GFLOP/s of numpy's float32 GEMM on one (M, K) @ (K, N) product, the median of `repeat` calls after one
    warm-up. The default is DistilBERT-base's first FFN product at B*T = 1024 (4.8 GFLOP, ~10 ms at 460 GFLOP/s)."""
    r = np.random.default_rng(0)
    a = r.standard_normal((M, K), dtype=np.float32)
    b = r.standard_normal((K, N), dtype=np.float32)
    out = np.empty((M, N), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * M * K * N / float(np.median(times)) / 1e9


def kernel_warning(corename: str, environ=None, flags=None, command: str = "minidistil bench") -> str | None:
    """One paragraph when numpy's OpenBLAS runs kernels of a lower SIMD level than the CPU has (kernels/_cpuinfo.py:
    e.g. Haswell's AVX2 kernels on an AVX-512 CPU), saying which variable forced it and how to run without it;
    None when the kernels match the CPU, or when the core name or the CPU is not one we can judge."""
    environ = os.environ if environ is None else environ
    have, want = _cpuinfo.core_level(corename), _cpuinfo.cpu_level(flags)
    if have is None or have >= want:
        return None
    best = _cpuinfo.BEST_CORE[want]
    forced = [f"{k}={environ[k]}" for k in FORCING_VARIABLES if k in environ]
    simd = "AVX-512" if want == 2 else "AVX2"
    if "OPENBLAS_CORETYPE" in environ:
        unset = " ".join(f"-u {k}" for k in FORCING_VARIABLES if k in environ)
        why = (f"because the environment sets {' and '.join(forced)}. OPENBLAS_CORETYPE makes OpenBLAS load that "
               f"core's kernels whatever the CPU (OPENBLAS_L2_SIZE overrides the cache size it detected); both are "
               f"read once, when numpy loads OpenBLAS, and import minidistil respects a core type you set. To "
               f"measure what this CPU can do, run without them: env {unset} {command}")
    else:
        why = (f"without OPENBLAS_CORETYPE in the environment: OpenBLAS did not recognise this CPU, or numpy was "
               f"imported before minidistil could choose its core. Run with OPENBLAS_CORETYPE={best} (or import "
               f"minidistil before numpy)")
    return (f"warning: numpy's OpenBLAS runs its {corename} kernels on a CPU with {simd} ({best} kernels), "
            f"{why}. Every GEMM that goes through numpy (all of minidistil's) may run slower under it (a "
            f"DistilBERT-base FFN product, idle, 2 cores: on a CPU with full-width AVX-512 units ~245 GFLOP/s with "
            f"Haswell's kernels against ~460 with SkylakeX's; on an AMD EPYC Zen 4, which runs 512-bit instructions "
            f"as two 256-bit halves, both ~195), while PyTorch and ONNX Runtime "
            f"bring their own GEMMs and do not read the variable: compare the sgemm rate printed with and without "
            f"it before trusting the ratios.")


def kernel_report(measure: bool = True, command: str = "minidistil bench") -> dict:
    """numpy's BLAS as it runs: the OpenBLAS library and core, its threads, the CPU's SIMD level, the forcing
    variables present, the measured sgemm rate (when `measure`) and `kernel_warning`'s paragraph (or None), whose
    advice names `command`."""
    blas = openblas()
    core = blas.corename()
    shape = (1024, 768, 3072)
    return {"openblas": blas.path, "core": core, "threads": blas.get_num_threads(),
            "cpu_simd": {2: "AVX-512", 1: "AVX2", 0: "other"}[_cpuinfo.cpu_level()],
            "variables": {k: os.environ[k] for k in FORCING_VARIABLES if k in os.environ},
            "sgemm_shape": f"({shape[0]}x{shape[1]})@({shape[1]}x{shape[2]})",
            "sgemm_gflops": sgemm_gflops(*shape) if measure else None,
            "warning": kernel_warning(core, command=command)}


def kernel_line(report: dict) -> str:
    """kernel_report() in one line, for a benchmark's header."""
    var = ", ".join(f"{k}={v}" for k, v in report["variables"].items()) or "no OPENBLAS_CORETYPE/L2_SIZE set"
    rate = f"{report['sgemm_gflops']:.0f} GFLOP/s" if report["sgemm_gflops"] is not None else "not measured"
    return (f"BLAS: numpy's OpenBLAS runs its {report['core']} kernels ({report['threads']} threads; "
            f"{var}; CPU: {report['cpu_simd']}); sgemm {report['sgemm_shape']}: {rate}")
