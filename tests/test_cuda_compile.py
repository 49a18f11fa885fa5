"""Every @cuda.jit kernel in kernels/*.py compiled for a real GPU (compute capability 9.0, sm_90) by libNVVM.

The simulator runs the kernels' Python, never Numba's CUDA typing and lowering, so code that only a real device
rejects (a shared-array shape built from an expression, an unsupported intrinsic, a type unification) passes every
simulator test. Here a child process with the real numba-cuda (NUMBA_ENABLE_CUDASIM=0, so the simulator the other
tests use is untouched) types each kernel at the argument types its launcher passes, lowers it to LLVM IR and has
libNVVM turn it into PTX for sm_90. Nothing runs: no driver or GPU is needed, only libNVVM (the system CUDA toolkit,
or the `nvidia-nvvm` wheel of the test extra).

Signatures are a table (SIGNATURES, below): the child discovers the kernels itself (every `functools.cache`
factory in kernels/*.py whose source holds `@cuda.jit`, and every dispatcher it returns), and the test asserts that
the set discovered equals the set in the table, so a new kernel without a signature fails here.

Run as a script (`python tests/test_cuda_compile.py`) it is the child: it prints one JSON line.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

ROOT = Path(__file__).resolve().parents[1]

# The argument types each launcher passes (Numba's signature strings): C-contiguous device arrays, the Python int a
# launcher passes is int64, a bool is boolean, np.float32(...) float32, np.uint64(...) uint64. Key: "module.factory.
# name" (name: the dict key the factory returns it under, else the kernel function's name). Checked against the
# argument types the launchers actually pass, recorded on the simulator over `python -m minidistil.kernels.<op>
# --size tiny --no-bench` for every op (the kernels the labs do not launch were read off their launchers).
F1, F2, F3, F4 = "float32[::1]", "float32[:, ::1]", "float32[:, :, ::1]", "float32[:, :, :, ::1]"
D1 = "float64[::1]"
U8, I64 = "uint8[::1]", "int64[::1]"
T3 = "UniTuple(int64, 3)"
ATT_DROP = "boolean, uint64, uint64, uint64, float32"
SIGNATURES = {
    "_cuda._column_sum_kernel(float32).colsum": [f"{F1}, int64, int64, int64, int64, {F1}"],
    "_cuda._column_sum_kernel(float64).colsum": [f"{D1}, int64, int64, int64, int64, {D1}"],
    "_cuda._fill_kernel.fill": [f"{F1}, float32", f"{D1}, float64", f"{U8}, uint8", "int32[::1], int32"],
    "_cuda._loss_kernels.finish": [f"{F1}, {U8}, boolean, float64, float64, {F1}, {D1}",
                                   f"{F1}, {F1}, boolean, float64, float64, {F1}, {D1}"],
    "_cuda._loss_kernels.scale": [f"{F1}, {D1}, float64, {F1}"],
    "activations._cuda_kernels.tanh_fwd": [f"{F1}, {F1}"],
    "activations._cuda_kernels.tanh_bwd": [f"{F1}, {F1}, {F1}"],
    "activations._cuda_kernels.relu_fwd": [f"{F1}, {F1}"],
    "activations._cuda_kernels.relu_bwd": [f"{F1}, {F1}, {F1}"],
    "adamw._cuda_kernels.adamw": [f"{F1}, {F1}, {F1}, {F1}, " + ", ".join(["float32"] * 8) + f", {D1}"],
    "adamw._cuda_kernels.sumsq": [f"{F1}, {D1}, int64"],
    "adamw._cuda_kernels.add_partials": [f"{D1}, {D1}"],
    "adamw._cuda_kernels.clip_finish": [f"{D1}, float64, {D1}, {F1}"],
    "adamw._cuda_kernels.clip_scale": [f"{F1}, {F1}"],
    "attention._cuda_kernels.fwd": [f"{F3}, {F3}, {F3}, {keep}, int64, float32, {F3}, {F4}, {ATT_DROP}"
                                    for keep in ("boolean[:, ::1]", "int32[:, ::1]")],
    "attention._cuda_kernels.bwd_rows": [f"{F3}, {F3}, {F3}, {keep}, {F4}, int64, float32, {F3}, {F3}, {ATT_DROP}"
                                         for keep in ("boolean[:, ::1]", "int32[:, ::1]")],
    "attention._cuda_kernels.bwd_cols": [f"{F3}, {F3}, {F3}, {keep}, {F4}, {F3}, int64, float32, {F3}, {F3}, "
                                         f"{ATT_DROP}" for keep in ("boolean[:, ::1]", "int32[:, ::1]")],
    "bce._cuda_kernels.fwd": [f"{F2}, {F2}, {F1}"],
    "bce._cuda_kernels.bwd": [f"{F1}, {F1}, {F1}, {F1}"],
    "bench._spin_kernel.spin": [f"{F1}, int64"],
    "cosine._cuda_kernels.cos_fwd": [f"{F2}, {F2}, {U8}, {F1}, {F1}, {F1}, {F1}"],
    "cosine._cuda_kernels.cos_bwd": [f"{F2}, {F2}, {U8}, {F1}, {F1}, {F1}, {F1}, {F2}, {F2}"],
    "cosine._cuda_kernels.mse_fwd": [f"{F2}, {F2}, {U8}, {F1}"],
    "cosine._cuda_kernels.mse_bwd": [f"{F2}, {F2}, {U8}, {F1}, {F2}, {F2}"],
    "cross_entropy._cuda_kernels.fwd": [f"{F2}, {I64}, int64, {F1}, {F1}"],
    "cross_entropy._cuda_kernels.bwd": [f"{F2}, {I64}, int64, {F1}, {F1}, {F2}"],
    "distill_kl._cuda_kernels.fwd": [f"{F2}, {F2}, float32, {U8}, {F1}, {F1}, {F1}"],
    "distill_kl._cuda_kernels.bwd": [f"{F2}, {F2}, float32, {U8}, {F1}, {F1}, {F1}, {F2}"],
    "dropout._cuda_kernels.dropout": [f"{F1}, {F1}, uint64, uint64, uint64, float32"],
    "elementwise._cuda_kernels.binary": [f"{F1}, {T3}, {F1}, {T3}, {F1}, {T3}, int64"],
    "elementwise._cuda_kernels.scalar": [f"{F1}, float32, {F1}, int64"],
    "elementwise._cuda_kernels.axpy": [f"{F1}, {F1}, float32"],
    "elementwise._cuda_kernels.fill": [f"{F1}, float32"],
    "elementwise._cuda_kernels.copy": [f"{F1}, {F1}"],
    "elementwise._cuda_kernels.sum_to": [f"{F1}, {T3}, {T3}, {T3}, int64, {F1}"],
    "elementwise._cuda_kernels.sum_to64": [f"{D1}, {T3}, {T3}, {T3}, int64, {D1}"],
    "elementwise._cuda_kernels.take": [f"{F1}, {F1}, int64, int64, int64"],
    "elementwise._cuda_kernels.put": [f"{F1}, {F1}, int64, int64, int64"],
    "embedding._cuda_kernels.gather": [f"{ids}, {F1}, {F1}, int64" for ids in (I64, "int32[::1]")],
    "embedding._cuda_kernels.scatter_add": [f"{ids}, {F1}, {F1}, int64" for ids in (I64, "int32[::1]")],
    "gelu._cuda_kernels.fwd": [f"{F1}, {F1}, {F1}, int64, boolean"],
    "gelu._cuda_kernels.bwd": [f"{F1}, {F1}, {F1}, {F1}, int64, boolean"],
    "int8._cuda_kernels.quantize_rows": [f"{F1}, int64, {U8}, {F1}, int32[::1]"],
    "int8._cuda_kernels.gemm": ["uint8[:, ::1], int8[:, ::1], int64, int64, int64, boolean, int32[:, ::1], "
                                f"{F2}, {F1}, int32[::1], {F1}, int32[::1], {F1}, boolean"],
    "int8._cuda_kernels.embed": [f"{I64}, int8[:, ::1], {F1}, {F1}, int64"],
    "layernorm._cuda_kernels.fwd": [f"{F1}, {F1}, boolean, {F1}, {F1}, float32, {F1}, {F1}, {F1}, {F1}, int64"],
    "layernorm._cuda_kernels.bwd_dx": [f"{F1}, {F1}, {F1}, {F1}, {F1}, {F1}, int64"],
    "layernorm._cuda_kernels.bwd_dwdb": [f"{F1}, {F1}, {F1}, {F1}, {F1}, {F1}, int64, int64, int64"],
    "linear._cuda_kernels.matmul": [f"{F2}, {F2}, {F2}, int64, int64, int64, boolean, boolean"],
    "linear._cuda_kernels.add_bias": [f"{F1}, {F1}, int64"],
    "softmax._cuda_kernels.fwd": [f"{F1}, {F1}, int64, boolean"],
    "softmax._cuda_kernels.bwd": [f"{F1}, {F1}, {F1}, int64, boolean"],
}
# factories that take an argument: the calls their launchers make
FACTORY_ARGS = {"_cuda._column_sum_kernel": [("float32",), ("float64",)]}
CC = (9, 0)


def _child() -> dict:
    """Discover, type and compile every kernel; returns {"nvvm": version or None, "error", "kernels", "failed"}."""
    import importlib
    import inspect
    import types

    import numpy as np
    from numba.core import sigutils
    # NVRTC (CUDA C++ sources, which no kernel here links) is not needed: numba-cuda looks for it when it first
    # collects its CUDA paths (libdevice's among them), so it is taken as absent instead of an error
    from numba.cuda import cuda_paths
    cuda_paths._get_nvrtc_path = lambda: None
    try:
        from numba.cuda.cudadrv import nvvm
        version = nvvm.NVVM().get_version()
    except Exception as e:  # numba raises NvvmSupportError ("libNVVM cannot be found ...") without libNVVM
        return {"nvvm": None, "error": f"{type(e).__name__}: {e}"}
    from numba import cuda
    from numba.cuda import dispatcher as cuda_dispatcher
    from numba.cuda.dispatcher import CUDADispatcher
    # no driver here: typing asks the current device for its compute capability, so answer 9.0 (device functions
    # called from a kernel are typed through that path)
    cuda_dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    # compile_ptx checks the requested capability against NVRTC's list; libNVVM alone makes the PTX, so without
    # NVRTC (not needed for pure-Python kernels) the list is the one capability compiled here
    from numba.cuda.cudadrv import nvrtc
    nvrtc.get_supported_ccs = lambda: (CC,)

    found = {}
    for path in sorted((ROOT / "kernels").glob("*.py")):
        mod = importlib.import_module(f"minidistil.kernels.{path.stem}")
        for fname, fn in vars(mod).items():
            if not (callable(fn) and hasattr(fn, "cache_info") and getattr(fn, "__module__", "") == mod.__name__):
                continue
            if "@cuda.jit" not in inspect.getsource(fn):
                continue
            calls = FACTORY_ARGS.get(f"{path.stem}.{fname}", [()])
            for args in calls:
                tag = f"{path.stem}.{fname}" + (f"({', '.join(args)})" if args else "")
                made = fn(*(np.dtype(a).type for a in args))
                items = made.items() if isinstance(made, dict) else (
                    ((None, k) for k in made) if isinstance(made, (tuple, list)) else [(None, made)])
                for key, k in items:
                    if isinstance(k, CUDADispatcher) and not k.targetoptions.get("device", False):
                        found[f"{tag}.{key or k.py_func.__name__}"] = k
    # every non-device @cuda.jit in the sources must have been found (a kernel outside a factory would not be)
    n_src = sum(path.read_text().count("@cuda.jit\n") for path in (ROOT / "kernels").glob("*.py"))
    n_found = len({(k.py_func.__code__.co_filename, k.py_func.__code__.co_firstlineno) for k in found.values()})

    failed, compiled = {}, []
    for name, k in sorted(found.items()):
        for sig in SIGNATURES.get(name, []):
            args, _ = sigutils.normalize_signature(f"({sig},)")
            opts = k.targetoptions
            try:
                ptx, _ = cuda.compile_ptx(k.py_func, args, device=False, cc=CC, fastmath=opts.get("fastmath", False),
                                          lineinfo=opts.get("lineinfo", False))
                if ".target sm_90" not in ptx:
                    raise RuntimeError("the PTX does not target sm_90")
            except Exception as e:
                failed.setdefault(name, []).append(f"({sig}): {type(e).__name__}: {str(e)[:1500]}")
        compiled.append(name)
    return {"nvvm": list(version), "kernels": sorted(found), "compiled": compiled, "failed": failed,
            "n_source": n_src, "n_found": n_found}


def test_every_kernel_compiles_for_sm90():
    from conftest import REQUIRE_ORACLES

    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the compile child failed:\n{proc.stderr[-4000:]}"
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    if rep["nvvm"] is None:
        msg = f"libNVVM is not available, so the kernels cannot be compiled for sm_90: {rep['error']}"
        if REQUIRE_ORACLES:
            pytest.fail(msg + " (required here: CI / MINIDISTIL_REQUIRE_ORACLES=1; `pip install nvidia-nvvm`)")
        pytest.skip(msg)
    assert rep["n_found"] == rep["n_source"], (
        f"{rep['n_source']} kernels (@cuda.jit) in kernels/*.py but {rep['n_found']} found in their factories")
    assert set(rep["kernels"]) == set(SIGNATURES), (
        f"kernels without a signature here: {sorted(set(rep['kernels']) - set(SIGNATURES))}; "
        f"signatures of no kernel: {sorted(set(SIGNATURES) - set(rep['kernels']))}")
    assert set(rep["compiled"]) == set(SIGNATURES)
    assert not rep["failed"], "kernels that do not compile for sm_90:\n" + "\n".join(
        f"{k}: {m}" for k, ms in rep["failed"].items() for m in ms)


if __name__ == "__main__":
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "0", "run by the test with NUMBA_ENABLE_CUDASIM=0"
    print(json.dumps(_child()))
