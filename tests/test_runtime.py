"""minidistil/core/_runtime.py: the process set-up of `import minidistil`, each rule in a fresh Python process (the
settings must be in the environment before numpy loads OpenBLAS): the OpenBLAS core type and glibc's malloc
settings."""
import os
import subprocess
import sys

import pytest

from minidistil.core import _runtime

AVX512 = all(f in _runtime.cpu_flags() for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))


def _coretype_in_fresh_python(env_extra: dict, numpy_first: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "MINIDISTIL_OPENBLAS_CORETYPE")}
    env.update(env_extra)
    code = ("import numpy; " if numpy_first else "") + \
        "import os, minidistil; print(os.environ.get('OPENBLAS_CORETYPE', 'unset'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_openblas_coretype_rule():
    assert _coretype_in_fresh_python({}) == ("SkylakeX" if AVX512 else "unset")
    assert _coretype_in_fresh_python({"MINIDISTIL_OPENBLAS_CORETYPE": "0"}) == "unset"
    assert _coretype_in_fresh_python({"OPENBLAS_CORETYPE": "Haswell"}) == "Haswell"       # the user's choice
    assert _coretype_in_fresh_python({}, numpy_first=True) == "unset"                       # too late: untouched


@pytest.mark.skipif(not AVX512, reason="no AVX-512 F/BW/DQ/VL here: import minidistil leaves OpenBLAS's core alone")
def test_openblas_core_in_use_is_the_one_chosen():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "MINIDISTIL_OPENBLAS_CORETYPE")}
    code = "from minidistil.kernels import _blas; b = _blas.openblas(); print(b.ok, b.corename())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stdout.split()
    if out[0] != "True":
        pytest.skip("numpy's BLAS is not an OpenBLAS with a readable core name here")
    assert out[1].lower() == "skylakex"


_IN_HEAP = """
import minidistil, numpy as np
from minidistil.core import _runtime
a = np.ones(16 * 2**20, np.float32)                  # 64 MB: above glibc's largest mmap threshold (32 MB)
p = a.ctypes.data
heap = [l.split()[0].split("-") for l in open("/proc/self/maps") if l.rstrip().endswith("[heap]")]
print(any(int(lo, 16) <= p < int(hi, 16) for lo, hi in heap), _runtime.report())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are Linux-only")
def test_large_arrays_come_from_the_heap_unless_turned_off():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "MINIDISTIL_MALLOC"))}

    def run(extra):
        return subprocess.run([sys.executable, "-c", _IN_HEAP], capture_output=True, text=True,
                              env={**env, **extra}, timeout=120).stdout

    out = run({})
    assert out.startswith("True") and "M_MMAP_MAX=0" in out      # reused heap memory, not a fresh mapping
    out = run({"MINIDISTIL_MALLOC": "0"})
    assert out.startswith("False") and "MINIDISTIL_MALLOC=0" in out
    out = run({"MALLOC_TRIM_THRESHOLD_": "1000000"})              # the user's own malloc settings win
    assert "set by the user" in out


def _wait_settings(env_extra: dict) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MINIDISTIL_GEMM", "MINIDISTIL_GEMM_KERNEL",
                        "MINIDISTIL_THREAD_ENV", "NUMBA_CPU_FEATURES")}
    env.update(env_extra)
    code = "import os, minidistil; print(os.environ.get('GOMP_SPINCOUNT', '-'), os.environ.get('OMP_WAIT_POLICY', '-'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    spin, policy = r.stdout.split()
    return spin, policy


def test_numba_workers_spin_only_where_the_products_run_on_their_pool():
    own = "avx512f" in _runtime.cpu_flags()
    assert _wait_settings({}) == ((str(_runtime.SPIN_COUNT), "-") if own else ("-", "PASSIVE"))
    for off in ({"MINIDISTIL_GEMM": "openblas"}, {"MINIDISTIL_GEMM": "blocks"}, {"MINIDISTIL_GEMM_KERNEL": "portable"},
                {"NUMBA_CPU_FEATURES": "+avx2,+fma"}):
        assert _wait_settings(off) == ("-", "PASSIVE"), off          # OpenBLAS's threads run the products
    assert _wait_settings({"OMP_WAIT_POLICY": "ACTIVE"}) == ("-", "ACTIVE")            # the user's, nothing added
    assert _wait_settings({"GOMP_SPINCOUNT": "5"}) == ("5", "-")
    assert _wait_settings({"MINIDISTIL_THREAD_ENV": "0"}) == ("-", "-")
