"""The kernel lab of every op (`python -m minidistil.kernels.<op>`, the `main()` of each kernel file) runs its
validations at a tiny size (`--size tiny --no-bench`) and passes them; a failed validation makes it fail.

The labs validate every version against the float64 reference with the same derived tolerances as the tests; on a
machine without a GPU the CUDA versions run on the simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1).
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
OPS = sorted(p.stem for p in KERNELS.glob("[a-z]*.py") if p.stem != "bench")   # bench times, it validates nothing
TINY = ["--size", "tiny", "--no-bench"]


def test_every_op_file_is_listed():
    assert OPS == ["activations", "adamw", "attention", "bce", "cosine", "cross_entropy", "distill_kl", "dropout",
                   "elementwise", "embedding", "gelu", "gemm", "int8", "layernorm", "linear", "softmax"]


@pytest.mark.parametrize("op", OPS)
def test_lab_validations_pass_at_a_tiny_size(op, capsys):
    lab = importlib.import_module(f"minidistil.kernels.{op}")
    status = lab.main(TINY)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "FAIL" not in out and out.rstrip().endswith("all validations passed"), out
    assert out.count(" ok\n") >= 4, out                # it validated something
    assert "  bench " not in out                         # --no-bench


def test_a_failed_validation_fails_the_lab(monkeypatch, capsys):
    from minidistil.kernels import gelu
    real = gelu.bias_gelu_forward_cpu

    def off_by_a_thousandth(x, b, fast=None):   # 0.1% relative: far outside the tolerance of ~128 eps
        y, cache = real(x, b, fast)
        return y * np.float32(1.001), cache

    monkeypatch.setattr(gelu, "bias_gelu_forward_cpu", off_by_a_thousandth)
    assert gelu.main(TINY) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "validation(s) FAILED" in out


def test_the_lab_runs_as_a_module_and_exits_with_its_status():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM=os.environ.get("NUMBA_ENABLE_CUDASIM", "1"))
    r = subprocess.run([sys.executable, "-m", "minidistil.kernels.gelu", *TINY], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and "gelu: all validations passed" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "minidistil.kernels.gelu", "--size", "huge"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and "--size" in r.stderr
