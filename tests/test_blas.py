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
