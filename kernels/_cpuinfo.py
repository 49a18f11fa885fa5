"""The CPU's vector extensions and the OpenBLAS kernels that use them: which sgemm kernels a CPU could run.

Imports only the standard library (no numpy), so `minidistil/core/_runtime.py` reads it before numpy loads OpenBLAS.
A SIMD level orders what matters for float32 GEMMs: 2 = AVX-512 (F, BW, DQ, VL: what OpenBLAS's SkylakeX kernels
use), 1 = AVX2 with FMA (its Haswell and Zen kernels), 0 = anything else or unknown.
"""
from __future__ import annotations

AVX512_FLAGS = ("avx512f", "avx512bw", "avx512dq", "avx512vl")

# OpenBLAS core names (openblas_get_corename, lower case) by the SIMD level their sgemm kernels use
_CORE_LEVEL = {"skylakex": 2, "cooperlake": 2, "sapphirerapids": 2, "haswell": 1, "zen": 1}
# the core to ask for (OPENBLAS_CORETYPE) to get a level's kernels
BEST_CORE = {2: "SkylakeX", 1: "Haswell"}


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


def cpu_level(flags: set[str] | None = None) -> int:
    """The SIMD level (module docstring) of this CPU, from its flags."""
    flags = cpu_flags() if flags is None else flags
    if all(f in flags for f in AVX512_FLAGS):
        return 2
    return 1 if {"avx2", "fma"} <= flags else 0


def core_level(corename: str) -> int | None:
    """The SIMD level of an OpenBLAS core's kernels; None for a core name not listed (no judgement made)."""
    name = corename.strip().lower()
    if name in _CORE_LEVEL:
        return _CORE_LEVEL[name]
    older = ("prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge", "atom", "barcelona",
             "bulldozer", "piledriver", "steamroller", "excavator", "opteron", "katmai", "coppermine", "northwood")
    return 0 if name in older else None
