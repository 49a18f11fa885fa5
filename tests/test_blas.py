"""kernels/_blas.py: the (batch, head) split, the BLAS thread pool, and the GEMM as row or column blocks
(MINIDISTIL_GEMM=blocks), each against a float64 product with the derived float32 tolerance."""
import numpy as np
import pytest

from minidistil.kernels import _blas, _checks


@pytest.mark.parametrize("B,H,parts", [(8, 12, 2), (1, 12, 2), (1, 1, 2), (3, 2, 4), (2, 5, 3)])
def test_split_pairs_covers_every_batch_head_pair_once(B, H, parts):
    seen = np.zeros((B, H), int)
    for bs, hs in _blas.split_pairs(B, H, parts):
        seen[bs, hs] += 1
    assert np.all(seen == 1)


def test_run_blas_tasks_runs_everything_and_restores_the_thread_count():
    blas = _blas.openblas()
    before = blas.get_num_threads()
    r = np.random.default_rng(0)
    a = r.standard_normal((6, 40, 30)).astype(np.float32)
    b = r.standard_normal((6, 30, 20)).astype(np.float32)
    out = np.zeros((6, 40, 20), np.float32)
    tasks = [lambda i=i: np.matmul(a[i], b[i], out=out[i]) for i in range(6)]
    _blas.run_blas_tasks(tasks)
    _checks.assert_close(out, a.astype(np.float64) @ b, atol=_checks.f32_tol(30, scale=float(np.abs(a).max() *
                                                                                          np.abs(b).max())))
    assert blas.get_num_threads() == before


@pytest.mark.parametrize("M,K,N", [(1, 3, 40), (37, 29, 33), (256, 64, 1000), (300, 200, 70), (40, 3, 1)])
@pytest.mark.parametrize("layout", ["plain", "b transposed", "a transposed, out strided"])
def test_blocked_matmul_matches_reference(rng, monkeypatch, M, K, N, layout):
    monkeypatch.setenv("MINIDISTIL_GEMM", "blocks")                # the opt-in mode (one BLAS call is the default)
    monkeypatch.setattr(_blas, "GEMM_SPLIT_MIN_FLOPS", 0)      # split even these small products
    assert _blas.gemm_mode() == "blocks"
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    if layout == "b transposed":
        b = np.ascontiguousarray(b.T).T                            # (K, N) view of an (N, K) array, as w.T
    out_full = np.full((M, N + 5), np.nan, np.float32)
    out = out_full[:, 2:N + 2] if "strided" in layout else np.empty((M, N), np.float32)
    if "a transposed" in layout:
        a = np.ascontiguousarray(a.T).T
    res = _blas.matmul(a, b, out)
    assert res is out
    _checks.assert_close(out, a.astype(np.float64) @ b,
                         atol=_checks.f32_tol(K, scale=float(np.abs(a).max() * np.abs(b).max())))
    if "strided" in layout:                                        # nothing written outside the view
        assert np.isnan(out_full[:, :2]).all() and np.isnan(out_full[:, N + 2:]).all()


AVX512_CPU = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"}
AVX2_CPU = {"avx2", "fma", "avx"}


@pytest.mark.parametrize("core,flags,warns", [
    ("Haswell", AVX512_CPU, True), ("Zen", AVX512_CPU, True), ("Sandybridge", AVX2_CPU, True),
    ("SkylakeX", AVX512_CPU, False), ("Cooperlake", AVX512_CPU, False), ("Haswell", AVX2_CPU, False),
    ("Zen", AVX2_CPU, False), ("Haswell", set(), False), ("unknown", AVX512_CPU, False),
    ("NeoverseN1", AVX512_CPU, False)])
def test_kernel_warning_only_for_a_core_below_the_cpu(core, flags, warns):
    msg = _blas.kernel_warning(core, {"OPENBLAS_CORETYPE": core, "OPENBLAS_L2_SIZE": "512"}, flags)
    assert (msg is not None) == warns
    if warns:
        assert f"runs its {core} kernels" in msg
        assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE minidistil bench" in msg


def test_kernel_warning_without_the_variable_says_which_core_to_ask_for():
    msg = _blas.kernel_warning("Haswell", {}, AVX512_CPU, command="python -m minidistil.kernels.bench")
    assert "OPENBLAS_CORETYPE=SkylakeX" in msg and "env -u" not in msg


def test_kernel_report_names_the_core_and_measures_sgemm():
    rep = _blas.kernel_report()
    assert rep["core"] == _blas.openblas().corename()
    assert rep["sgemm_gflops"] > 0
    assert rep["core"] in _blas.kernel_line(rep) and "GFLOP/s" in _blas.kernel_line(rep)
