"""Process set-up that must happen BEFORE numpy is imported: which OpenBLAS kernels to use and how its threads wait.

This module imports nothing heavy (os, sys and kernels/_cpuinfo.py, which uses only the standard library):
`minidistil/__init__.py` calls `configure()` first thing, so that `import minidistil` (or
`import minidistil.kernels.X`, which imports the package first) sets the environment before numpy loads OpenBLAS.
Once numpy is imported, OpenBLAS has read its environment and nothing here changes it.

1. OpenBLAS core type. numpy's wheel bundles OpenBLAS built with DYNAMIC_ARCH: at load time it picks the kernels
   for the CPU model it recognises. On some AVX-512 machines (new or virtualised CPU models) it falls back to its
   Haswell (AVX2) kernels, which reach about half the GEMM rate of its SkylakeX ones (the figures: README,
   "Performance", and tutorial 09). We set OPENBLAS_CORETYPE=SkylakeX when
       - numpy is not imported yet (otherwise it is too late, and changing it would be a lie),
       - the user has not set OPENBLAS_CORETYPE themselves,
       - /proc/cpuinfo lists avx512f, avx512bw, avx512dq and avx512vl (what OpenBLAS's SkylakeX kernels use), and
       - MINIDISTIL_OPENBLAS_CORETYPE is not "0".
   MINIDISTIL_OPENBLAS_CORETYPE=0 turns this off; MINIDISTIL_OPENBLAS_CORETYPE=<name> (e.g. Haswell) sets that core
   type instead (subject to the same first two conditions). The numbers change only by float32 rounding (another
   order of summation in the GEMM), within the parity tests' derived tolerances. A core type the user set is
   respected, even a slower one than the CPU supports: `minidistil bench` then says so on stderr
   (kernels/_blas.py `kernel_warning`).

2. Spinning threads. After a GEMM, OpenBLAS's worker threads busy-wait for up to 2^28 cycles (~0.1 s) for more
   work, and the Numba kernel that runs next (layer norm, GELU, softmax) wants the same cores; Numba's OpenMP
   workers (GNU libgomp) likewise spin after each parallel loop, and where the linear layers' products run on
   OpenBLAS's threads, a step then waits for cores that the other pool spins on (tutorial 09 measures it). So,
   unless the user set them or MINIDISTIL_THREAD_ENV=0:
       OPENBLAS_THREAD_TIMEOUT=4        OpenBLAS workers sleep after 2^4 cycles (only before numpy's import)
   and for Numba's workers one of two, by where the linear layers' products run:
       GOMP_SPINCOUNT=300000            where they run on kernels/gemm.py, on Numba's own pool (an AVX-512 CPU,
                                        NUMBA_CPU_FEATURES unset or with +avx512f, MINIDISTIL_GEMM not
                                        "openblas"/"blas"/"blocks", MINIDISTIL_GEMM_KERNEL not "portable"): a
                                        worker spins a few milliseconds before it sleeps, so it is awake for the
                                        next kernel of the step. Sleeping after every parallel loop
                                        let the second core go idle between kernels, and after a pause (a request
                                        after idle time) it came back slowly: the first layers' products then ran
                                        at one core's rate (README, Performance, has the measurement).
       OMP_WAIT_POLICY=PASSIVE          elsewhere: workers sleep at once (a wake-up costs microseconds), leaving
                                        the cores to OpenBLAS's threads.
   A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is (and no GOMP_SPINCOUNT is added to their policy).
   Attention's many small GEMMs avoid OpenBLAS's threads altogether (kernels/_blas.py).

3. Fresh memory. glibc's malloc serves every allocation above 32 MB (its largest mmap threshold) with a fresh
   mmap and unmaps it on free, so each such array is new memory whose first touch faults every page in, zeroed by
   the kernel; a DistilBERT-base MLM training step allocates ~450 MB of them. So, unless MINIDISTIL_MALLOC=0 or the
   user set MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_, configure() calls glibc's mallopt(M_MMAP_MAX, 0) and
   mallopt(M_TRIM_THRESHOLD, 2^31 - 1): large arrays come from the heap, and freed memory stays in the process for
   the next step instead of going back to the kernel (faster training steps at the same peak resident memory:
   `minidistil bench` and tutorial 09 measure it). The cost: memory once used is not returned to the system until
   the process ends (the peak stays resident). This is a process-wide setting, so in `minidistil bench` PyTorch and
   ONNX Runtime run under it too. Only on Linux with glibc; elsewhere nothing is done.

tutorials/09_cpu_performance.py measures each of these on the machine it runs on. `report()` says what was decided
(the bench command prints it).
"""
from __future__ import annotations

import os
import sys

from minidistil.kernels._cpuinfo import AVX512_FLAGS, cpu_flags  # standard library only: safe before numpy

_DECISION: dict[str, str] = {}
_SET_BY_US: dict[str, str] = {}


def _set_default(name: str, value: str, why: str):
    if name in os.environ:
        _DECISION[name] = f"{os.environ[name]} (set by the user)"
    else:
        os.environ[name] = value
        _SET_BY_US[name] = value
        _DECISION[name] = f"{value} ({why})"


SPIN_COUNT = 300_000    # libgomp's spin iterations before a worker sleeps (its own default when no policy is set)


def own_gemm_expected() -> bool:
    """Whether the linear layers' products will run on kernels/gemm.py (Numba's thread pool) rather than on
    OpenBLAS's: the CPU lists avx512f and neither MINIDISTIL_GEMM nor MINIDISTIL_GEMM_KERNEL turns it off. Read from
    /proc/cpuinfo and the environment only (numpy and Numba are not imported yet); gemm.use_own_gemm decides per
    product later."""
    if os.environ.get("MINIDISTIL_GEMM", "auto").strip().lower() in ("openblas", "blas", "blocks"):
        return False
    if os.environ.get("MINIDISTIL_GEMM_KERNEL", "").strip().lower() == "portable":
        return False
    numba_features = os.environ.get("NUMBA_CPU_FEATURES")        # Numba compiling for another CPU than this one
    if numba_features is not None and "+avx512f" not in numba_features.split(","):
        return False
    return "avx512f" in cpu_flags()


def configure() -> dict[str, str]:
    """Set OPENBLAS_CORETYPE, OPENBLAS_THREAD_TIMEOUT and GOMP_SPINCOUNT or OMP_WAIT_POLICY as the module
    docstring says (never overriding a value the user set). Idempotent; returns what was decided."""
    if _DECISION:
        return _DECISION
    if os.environ.get("MINIDISTIL_THREAD_ENV", "1") == "0":
        _DECISION["threads"] = "left alone (MINIDISTIL_THREAD_ENV=0)"
    else:
        if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
            for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
                if name in os.environ:
                    _DECISION[name] = f"{os.environ[name]} (set by the user)"
        elif own_gemm_expected():
            _set_default("GOMP_SPINCOUNT", str(SPIN_COUNT),
                         "Numba's OpenMP workers spin a few ms between kernels: the products run on their pool")
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
    elif all(f in cpu_flags() for f in AVX512_FLAGS):
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
    import ctypes
    import platform
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
