"""numpy's OpenBLAS at run time: its core name and thread count, and a thread pool for many small GEMMs.

numpy has no API for OpenBLAS's thread count, so `openblas()` finds the library numpy loaded (through
/proc/self/maps and ctypes, as threadpoolctl does). Two users:

- `run_blas_tasks`: attention's head products (128 x 64 x 128 GEMMs at DistilBERT-base size) run one OpenBLAS
  thread per core from a Python thread pool. Measured on the 2-core machine: the 96 head products of one
  DistilBERT-base layer took 10-90 ms with OpenBLAS's own threads, 2.4 ms this way.
- `matmul`: one large product as one BLAS call (the default), or as row or column blocks on the same pool
  (MINIDISTIL_GEMM=blocks) for a machine whose cores other jobs often take (tutorials/09_cpu_performance.py).

Process set-up that must happen before numpy loads (OPENBLAS_CORETYPE, OMP_WAIT_POLICY, malloc) is not here: it is
`minidistil/_runtime.py`, run by `import minidistil`.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


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


def matmul(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N), all 2-d float32 (b and out may be strided views BLAS accepts).

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
