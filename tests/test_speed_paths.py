"""The fast paths of the speed work, each against the reference (no timed assertion anywhere):

- fast math: exp_fast / erf_fast measured over dense grids against their STATED maximum errors, and the opt-in
  GELU and attention versions that use them, with tolerances derived from those errors;
- attention: the BLAS version (the CPU default) and the pure-Numba one, with and without attention-probability
  dropout, against the float64 reference on awkward shapes; the dropout mask is kernels/dropout.py's; the
  reference backward with dropout against finite differences; CUDA (simulator) with dropout; the models use it;
- minidistil._runtime: the OpenBLAS core-type rule (in fresh subprocesses), the (batch, head) split, the BLAS task
  runner;
- minidistil.bench: FLOP counts, a quick in-process run, the JSON/plot output and the peak-memory child.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import oracle

from minidistil import _runtime
from minidistil.kernels import _blas, _checks, _cuda, _f32math
from minidistil.kernels import attention as KA
from minidistil.kernels import dropout as KD
from minidistil.kernels import gelu as KG

EPS = _checks.EPS32


# ---- fast math: the stated maximum errors, measured on dense grids ----------------------------------------------

from numba import njit, prange  # noqa: E402


@njit(cache=True, parallel=True)
def _exp_fast_all(x, y):
    for i in prange(x.size):
        y[i] = _f32math.exp_fast(x[i])


@njit(cache=True, parallel=True)
def _erf_fast_all(x, y):
    for i in prange(x.size):
        y[i] = _f32math.erf_fast(x[i])


def test_exp_fast_relative_error_is_within_the_stated_bound():
    # every float32 spacing matters near 0 and at the ends: 4M points over the whole range plus [-1, 1] densely
    x = np.concatenate([np.linspace(-87.3, 88.3, 4_000_001), np.linspace(-1, 1, 1_000_001)]).astype(np.float32)
    y = np.empty_like(x)
    _exp_fast_all(x, y)
    exact = np.exp(x.astype(np.float64))
    rel = np.abs(y - exact) / exact
    assert y.dtype == np.float32
    assert rel.max() <= _f32math.EXP_FAST_MAX_REL_ERR, f"max relative error {rel.max():.3e}"
    # below the smallest normal it returns exactly 0 (softmax's filled scores), and exp(0) is 1
    lo = np.array([-3.4e38, -1000.0, -87.5, 0.0], np.float32)
    out = np.empty_like(lo)
    _exp_fast_all(lo, out)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_erf_fast_absolute_error_is_within_the_stated_bound():
    from scipy.special import erf
    x = np.concatenate([np.linspace(-10, 10, 4_000_001), np.linspace(-0.6, 0.6, 1_000_001)]).astype(np.float32)
    y = np.empty_like(x)
    _erf_fast_all(x, y)
    err = np.abs(y - erf(x.astype(np.float64)))
    assert err.max() <= _f32math.ERF_FAST_MAX_ABS_ERR, f"max absolute error {err.max():.3e}"
    neg = np.empty_like(x)
    _erf_fast_all(-x, neg)
    np.testing.assert_array_equal(neg, -y)      # odd
    # near 0 the Maclaurin branch keeps the RELATIVE error small too (|x| < 0.5)
    small = (np.abs(x) > 1e-30) & (np.abs(x) < 0.5)
    rel = err[small] / np.abs(erf(x[small].astype(np.float64)))
    assert rel.max() <= 8 * EPS, f"max relative error near 0: {rel.max():.3e}"


# ---- fast GELU ---------------------------------------------------------------------------------------------------


def _gelu_fast_bounds(h, dy):
    """Per-element error bounds of the fast versions against the float64 maths, from the stated errors:
      y = 0.5 h (1 + erf(h / sqrt 2)):  0.5 |h| E_erf + the exact version's rounding budget (f32_tol, 8 roundings)
      dx = dy (Phi + h phi):            |dy| (0.5 E_erf + |h| phi E_exp) + the same rounding budget on |dy| (1 + |h|)"""
    h64 = h.astype(np.float64)
    phi = np.exp(-0.5 * h64 * h64) / math.sqrt(2 * math.pi)
    r = _checks.f32_tol(1, scale=8)
    ty = 0.5 * np.abs(h64) * _f32math.ERF_FAST_MAX_ABS_ERR + r * (1 + np.abs(h64))
    tdx = np.abs(dy) * (0.5 * _f32math.ERF_FAST_MAX_ABS_ERR + np.abs(h64) * phi * _f32math.EXP_FAST_MAX_REL_ERR
                        + r * (1 + np.abs(h64)))
    return ty, tdx


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 13), (64, 257)])
def test_bias_gelu_fast_matches_reference(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = KG.bias_gelu_forward(x, b, fast=True)
    dx, db = KG.bias_gelu_backward(dy, cache, fast=True)
    y64, c64 = KG.bias_gelu_forward_ref(x.astype(np.float64), b.astype(np.float64))
    dx64, db64 = KG.bias_gelu_backward_ref(dy.astype(np.float64), c64)
    ty, tdx = _gelu_fast_bounds((x.astype(np.float64) + b).astype(np.float32), dy)
    assert y.dtype == dx.dtype == db.dtype == np.float32
    assert np.all(np.abs(y - y64) <= ty), f"y: worst excess {np.max(np.abs(y - y64) - ty):.3e}"
    assert np.all(np.abs(dx - dx64) <= tdx), f"dx: worst excess {np.max(np.abs(dx - dx64) - tdx):.3e}"
    # db sums the rows of dx: the sum of their bounds plus the float32 sum's own rounding
    n = dx.size // shape[-1]
    tdb = tdx.reshape(n, -1).sum(axis=0) + _checks.f32_tol(n, scale=float(np.abs(dx).max()))
    assert np.all(np.abs(db - db64) <= tdb)


def test_gelu_fast_without_bias_and_the_environment_switch(rng, monkeypatch):
    x = (rng.standard_normal((5, 33)) * 4).astype(np.float32)
    dy = rng.standard_normal((5, 33)).astype(np.float32)
    y_fast, c = KG.gelu_forward(x, fast=True)
    y64, c64 = KG.gelu_forward_ref(x.astype(np.float64))
    ty, tdx = _gelu_fast_bounds(x, dy)
    assert np.all(np.abs(y_fast - y64) <= ty)
    assert np.all(np.abs(KG.gelu_backward(dy, c, fast=True) - KG.gelu_backward_ref(dy.astype(np.float64), c64))
                  <= tdx)
    y_exact, _ = KG.gelu_forward(x, fast=False)
    monkeypatch.setenv("MINIDISTIL_FAST_MATH", "1")
    y_env, _ = KG.gelu_forward(x)                     # fast=None follows the environment
    np.testing.assert_array_equal(y_env, y_fast)
    monkeypatch.setenv("MINIDISTIL_FAST_MATH", "0")
    np.testing.assert_array_equal(KG.gelu_forward(x)[0], y_exact)


# ---- attention: versions, dropout, fast exp ----------------------------------------------------------------------

SHAPES = [(1, 1, 13, 1, 0), (1, 1, 4, 2, 1), (2, 7, 13, 1, 0), (3, 7, 12, 3, 1), (2, 5, 8, 2, 2), (2, 9, 128, 2, 1)]
VERSIONS = {"blas": (KA.attention_forward_blas, KA.attention_backward_blas),
            "numba": (KA.attention_forward_numba, KA.attention_backward_numba)}


def _reference(q, k, v, dout, mask, H, p, seed):
    """float64 forward/backward with the same dropout mask, and tolerances: K.tolerances' derivation with the
    dropped-out dP; dropout multiplies every term of every sum by keep / (1 - p) <= 1 / (1 - p), and each bound is
    linear in those magnitudes, so the bounds are scaled by 1 / (1 - p)."""
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    out, c = KA.attention_forward_ref(f64(q), f64(k), f64(v), mask, H, p, seed)
    grads = KA.attention_backward_ref(f64(dout), c)
    dP = KA._drop_ref(KA._split_heads(f64(dout), H) @ KA._split_heads(f64(v), H).transpose(0, 1, 3, 2), p, seed)
    tols = tuple(t / (1.0 - p) for t in KA.tolerances(q, k, v, dout, c.probs, dP))
    return out, c.probs, grads, tols


def _assert_matches(out, probs, grads, ref, factor=1.0):
    out64, probs64, grads64, tols = ref
    assert out.dtype == probs.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    for name, a, e, t in zip(("out", "probs", "dq", "dk", "dv"), (out, probs, *grads), (out64, probs64, *grads64),
                             tols):
        _checks.assert_close(a, e, atol=factor * t, name=name)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("B,T,C,H,n_pad", SHAPES)
def test_attention_cpu_versions_match_reference(rng, version, p, B, T, C, H, n_pad):
    fwd, bwd = VERSIONS[version]
    q, k, v, dout, mask = KA.make_data(rng, B, T, C, n_pad_rows=n_pad)
    seed = 12345
    out, cache = fwd(q, k, v, mask, H, p, seed)
    grads = bwd(dout, cache)
    _assert_matches(out, cache.probs, grads, _reference(q, k, v, dout, mask, H, p, seed))


@pytest.mark.parametrize("B,T,C,H,n_pad", SHAPES)
def test_attention_fast_exp_matches_reference(rng, B, T, C, H, n_pad):
    # exp_fast adds a relative error <= E to each exp of the softmax: the probability error ep of K.tolerances
    # grows to ep + 2E (numerator and sum); every bound is a combination of terms each at most proportional to ep
    # or free of it, so scaling all of them by (ep + 2E) / ep bounds the fast version
    q, k, v, dout, mask = KA.make_data(rng, B, T, C, n_pad_rows=n_pad)
    ref = _reference(q, k, v, dout, mask, H, 0.0, 0)
    ep = ref[3][1]
    out, cache = KA.attention_forward_blas(q, k, v, mask, H, fast=True)
    grads = KA.attention_backward_blas(dout, cache)
    _assert_matches(out, cache.probs, grads, ref, factor=(ep + 2 * _f32math.EXP_FAST_MAX_REL_ERR) / ep)


def test_attention_dropout_mask_is_the_dropout_kernels():
    # H = 1, V = the identity (T = C): out = P~ itself, so its zeros are exactly the dropped entries
    B, T, p, seed = 2, 16, 0.25, 99
    r = np.random.default_rng(0)
    q, k = (r.standard_normal((B, T, T)).astype(np.float32) for _ in range(2))
    v = np.ascontiguousarray(np.broadcast_to(np.eye(T, dtype=np.float32), (B, T, T)))
    mask = np.ones((B, T), np.int64)
    keep = KD.dropout_keep_ref((B, 1, T, T), p, seed)[:, 0]       # (B, T, T)
    for fwd in (KA.attention_forward_blas, KA.attention_forward_numba):
        out, cache = fwd(q, k, v, mask, 1, p, seed)
        assert np.array_equal(out != 0, keep)                     # softmax probabilities are > 0 here
        np.testing.assert_allclose(out[keep], (cache.probs[:, 0][keep] / (1 - p)), rtol=4 * EPS)
    assert 0.1 < 1 - keep.mean() < 0.4                            # about p of them dropped


def test_attention_reference_backward_with_dropout_matches_finite_differences(rng):
    B, T, C, H, p, seed = 2, 4, 6, 2, 0.4, 7
    q, k, v, dout, mask = (a.astype(np.float64) if a.dtype == np.float32 else a
                           for a in KA.make_data(rng, B, T, C, n_pad_rows=0))
    _, cache = KA.attention_forward_ref(q, k, v, mask, H, p, seed)
    grads = KA.attention_backward_ref(dout, cache)
    for x, g in zip((q, k, v), grads):
        num = _checks.numerical_gradient(
            lambda: float((dout * KA.attention_forward_ref(q, k, v, mask, H, p, seed)[0]).sum()), x)
        _checks.assert_close(g, num, atol=1e-7, rtol=1e-6, name="grad")   # O(h^2) + O(eps64 / h) with h = 1e-6


def test_attention_rejects_bad_dropout_arguments(rng):
    q, k, v, _, mask = KA.make_data(rng, 1, 3, 4)
    with pytest.raises(ValueError, match="p:"):
        KA.attention_forward(q, k, v, mask, 2, 1.0, 0)
    with pytest.raises(ValueError, match="p:"):
        KA.attention_forward(q, k, v, mask, 2, -0.1, 0)
    with pytest.raises(ValueError, match="seed:"):
        KA.attention_forward(q, k, v, mask, 2, 0.1, -3)


@pytest.mark.cuda
@pytest.mark.parametrize("B,T,C,H,n_pad", [(1, 1, 4, 1, 0), (2, 5, 6, 2, 1), (1, 7, 13, 1, 0)])
def test_attention_cuda_dropout_matches_reference(rng, B, T, C, H, n_pad):
    q, k, v, dout, mask = KA.make_data(rng, B, T, C, n_pad_rows=n_pad)
    p, seed = 0.3, 2024
    qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
    out, cache = KA.attention_forward(qd, kd, vd, mask, H, p, seed)
    grads = tuple(_cuda.to_host(g) for g in KA.attention_backward(dod, cache))
    _assert_matches(_cuda.to_host(out), _cuda.to_host(cache.probs), grads,
                    _reference(q, k, v, dout, mask, H, p, seed))


def test_functional_attention_dropout_gradients_match_the_reference(rng):
    from minidistil import functional as F
    from minidistil.autograd import Tensor
    B, T, C, H, p, seed = 2, 6, 8, 2, 0.3, 5
    q, k, v, dout, mask = KA.make_data(rng, B, T, C, n_pad_rows=1)
    tq, tk, tv = (Tensor(a, requires_grad=True) for a in (q, k, v))
    out, _ = F.attention(tq, tk, tv, mask, H, p, training=True, seed=seed)
    out.backward(dout)
    ref = _reference(q, k, v, dout, mask, H, p, seed)
    _assert_matches(out.numpy(), KA.attention_forward_ref(q, k, v, mask, H, p, seed)[1].probs,
                    (tq.grad, tk.grad, tv.grad), ref)
    out_eval, _ = F.attention(tq, tk, tv, mask, H, p, training=False)   # eval: no dropout at all
    _checks.assert_close(out_eval.numpy(), KA.attention_forward_ref(q, k, v, mask, H)[0], atol=ref[3][0])


def test_models_apply_attention_dropout_in_training_only():
    from minidistil import BertConfig, BertModel, DistilBertConfig, DistilBertModel, no_grad
    from minidistil import functional as F
    ids = np.array([[5, 6, 7, 8, 9, 10]])
    for model in (DistilBertModel.from_config(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                               hidden_dim=32, dropout=0.0, attention_dropout=0.5),
                                              seed=0),
                  BertModel.from_config(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5),
                                        seed=0)):
        with no_grad():
            e1 = model.eval()(ids).last_hidden_state.numpy().copy()
            e2 = model(ids).last_hidden_state.numpy()
            F.manual_seed(3)
            t1 = model.train()(ids).last_hidden_state.numpy().copy()
            F.manual_seed(3)
            t2 = model(ids).last_hidden_state.numpy()
        np.testing.assert_array_equal(e1, e2)              # eval: deterministic, no dropout
        np.testing.assert_array_equal(t1, t2)              # training: the seed generator replays the masks
        assert np.abs(t1 - e1).max() > 1e-3                # and the only dropout there is on the probabilities


# ---- minidistil._runtime -------------------------------------------------------------------------------------------

def _coretype_in_fresh_python(env_extra: dict, numpy_first: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "MINIDISTIL_OPENBLAS_CORETYPE")}
    env.update(env_extra)
    code = ("import numpy; " if numpy_first else "") + \
        "import os, minidistil; print(os.environ.get('OPENBLAS_CORETYPE', 'unset'))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_openblas_coretype_rule():
    avx512 = all(f in _runtime.cpu_flags() for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl"))
    assert _coretype_in_fresh_python({}) == ("SkylakeX" if avx512 else "unset")
    assert _coretype_in_fresh_python({"MINIDISTIL_OPENBLAS_CORETYPE": "0"}) == "unset"
    assert _coretype_in_fresh_python({"OPENBLAS_CORETYPE": "Haswell"}) == "Haswell"       # the user's choice
    assert _coretype_in_fresh_python({}, numpy_first=True) == "unset"                       # too late: untouched


def test_openblas_core_in_use_is_the_one_chosen():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "MINIDISTIL_OPENBLAS_CORETYPE")}
    code = "from minidistil.kernels import _blas; b = _blas.openblas(); print(b.ok, b.corename())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stdout.split()
    if out[0] != "True":
        pytest.skip("numpy's BLAS is not an OpenBLAS with a readable core name here")
    if all(f in _runtime.cpu_flags() for f in ("avx512f", "avx512bw", "avx512dq", "avx512vl")):
        assert out[1].lower() == "skylakex"


_IN_HEAP = """
import minidistil, numpy as np
from minidistil import _runtime
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
    run = lambda extra: subprocess.run([sys.executable, "-c", _IN_HEAP], capture_output=True, text=True,  # noqa
                                       env={**env, **extra}, timeout=120).stdout
    out = run({})
    assert out.startswith("True") and "M_MMAP_MAX=0" in out      # reused heap memory, not a fresh mapping
    out = run({"MINIDISTIL_MALLOC": "0"})
    assert out.startswith("False") and "MINIDISTIL_MALLOC=0" in out
    out = run({"MALLOC_TRIM_THRESHOLD_": "1000000"})              # the user's own malloc settings win
    assert "set by the user" in out


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


# ---- minidistil.bench ---------------------------------------------------------------------------------------------

def test_bench_flop_count_is_distilbert_base():
    from minidistil import bench
    sc = next(s for s in bench.scenarios(False) if s.name == "fwd_T128")
    assert (sc.B, sc.T) == (8, 128)
    # q, k, v, out projections 4 C^2, FFN 2 C F, two attention products: ~89 GFLOP (the figure)
    assert 88.0e9 < bench.flops(bench.FULL, sc) < 89.5e9


def test_bench_quick_runs_and_writes_json_and_plot(tmp_path):
    from minidistil import bench
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    rc = bench.main(["--quick", "--frameworks", "minidistil", "--no-memory", "--repeat", "1", "--warmup", "1",
                     "--fast-math", "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    data = json.loads(out_json.read_text())
    rows = {(r["scenario"], r["framework"]) for r in data["results"]}
    assert rows == {(s.name, fw) for s in bench.scenarios(True) for fw in ("minidistil", "minidistil-fast")}
    assert all(r["ms"] > 0 and r["gflops"] > 0 for r in data["results"])
    assert all(r["ratio"] == 1.0 for r in data["results"] if r["framework"] == "minidistil")
    assert out_png.stat().st_size > 1000


def test_bench_memory_child_reports_a_peak_and_a_time(tmp_path):
    from minidistil import bench
    sc = bench.scenarios(True)[0]
    mem = bench.measure_memory("minidistil", True, sc, None, steps=2)
    assert "error" not in mem, mem
    assert 0 < mem["base_mb"] <= mem["peak_mb"]
    assert mem["alone_ms"] > 0                                     # the second step, timed alone
    results = [bench.Result(sc.name, "minidistil", 5.0, alone_ms=mem["alone_ms"]),
               bench.Result(sc.name, "torch", 4.0)]                # no alone time: no dash
    bench.plot(results, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_bench_rejects_bad_arguments():
    from minidistil import bench
    with pytest.raises(ValueError, match="--frameworks"):
        bench.main(["--quick", "--frameworks", "tensorflow"])
    with pytest.raises(ValueError, match="--scenarios"):
        bench.main(["--quick", "--frameworks", "minidistil", "--scenarios", "nope"])


def test_bench_torch_forward_matches_minidistil_on_shared_weights(torch):
    oracle("transformers")  # required in CI, like torch
    from minidistil import bench
    s, sc = bench.QUICK, bench.scenarios(True)[0]
    tm = bench._torch_models(s, sc.kind)
    mm = bench._md_models(s, sc.kind)
    mm[0].load_state_dict({k: v.detach().numpy() for k, v in tm[0].state_dict().items()}, strict=False)
    a = np.asarray(bench.minidistil_step(s, sc, mm)())
    b = bench.torch_step(s, sc, tm)().detach().numpy()
    # layer-normed outputs of O(1): a float32 tolerance over the longest reduction (F) and the depth
    _checks.assert_close(a, b, atol=_checks.f32_tol(s.hidden_dim, scale=4.0) * s.n_layers)


# ---- fast distillation KL ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,V,T", [(1, 1, 1.0), (5, 7, 2.0), (37, 301, 2.0), (8, 2000, 4.0)])
def test_distill_kl_fast_matches_reference(rng, N, V, T):
    from minidistil.kernels import distill_kl as KL
    s = (rng.standard_normal((N, V)) * 3).astype(np.float32)
    z = (rng.standard_normal((N, V)) * 3).astype(np.float32)
    mask = rng.random(N) < 0.7
    mask[0] = True
    n, dloss = int(mask.sum()), 1.5
    loss, cache = KL.distill_kl_forward(s, z, T, mask, fast=True)
    ds = KL.distill_kl_backward(dloss, cache, fast=True)
    loss64, c64 = KL.distill_kl_forward_ref(s.astype(np.float64), z.astype(np.float64), T, mask)
    ds64 = KL.distill_kl_backward_ref(dloss, c64)
    # K.tolerances' derivation with exp_fast's relative error E added where an exp is taken: each lse gains E
    # (a sum of terms each off by E relative), each p gains 2E relative (its lse and its own exp). The row KL then
    # gains 2E (the two lse in d, weighted by sum p_t = 1) + 2E W, W = max_i sum_v p_t |d|; dstudent gains 2 * 2E
    # on each of p_s, p_t, times T |dloss| / n.
    E = _f32math.EXP_FAST_MAX_REL_ERR
    tol_l, tol_g = KL.tolerances(s, z, T, dloss, n)
    logp_s, _ = KL._log_softmax_ref(s.astype(np.float64) / T)
    logp_t, _ = KL._log_softmax_ref(z.astype(np.float64) / T)
    W = float((np.exp(logp_t) * np.abs(logp_t - logp_s))[mask].sum(axis=-1).max(initial=0.0))
    assert ds.dtype == np.float32
    _checks.assert_close(loss, loss64, atol=tol_l + T * T * E * (2 + 2 * W), name="loss")
    _checks.assert_close(ds, ds64, atol=tol_g + 4 * E * T * dloss / n, name="dstudent")


# ---- linear backward that skips the zero rows of dy ----------------------------------------------------------------

@pytest.mark.parametrize("n,cin,cout,frac", [(2, 3, 5, 0.0), (16, 7, 11, 0.15), (64, 32, 300, 0.15),
                                            (64, 32, 30, 0.5), (64, 32, 30, 0.9)])
def test_linear_backward_skipping_zero_rows_matches_reference(rng, n, cin, cout, frac):
    from minidistil.kernels import linear as KL
    x = rng.standard_normal((n, cin)).astype(np.float32)
    w = (rng.standard_normal((cout, cin)) * 0.02).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.02).astype(np.float32)
    dy = rng.standard_normal((n, cout)).astype(np.float32)
    dy[rng.random(n) >= frac] = 0.0                     # the rows an MLM loss ignores
    _, cache = KL.linear_forward(x, w, b)
    dx, dw, db = KL.linear_backward(dy, cache)
    _, c64 = KL.linear_forward_ref(*(a.astype(np.float64) for a in (x, w, b)))
    dx64, dw64, db64 = KL.linear_backward_ref(dy.astype(np.float64), c64)
    _, tdx, tdw, tdb = KL.tolerances(x, w, dy)
    assert dx.dtype == dw.dtype == db.dtype == np.float32 and dx.shape == x.shape
    _checks.assert_close(dx, dx64, atol=tdx, name="dx")
    _checks.assert_close(dw, dw64, atol=tdw, name="dw")
    _checks.assert_close(db, db64, atol=tdb, name="db")
    assert np.all(dx[~dy.any(axis=1)] == 0)             # zero rows of dy give zero rows of dx
    # and the same as the dense version within the same tolerances
    dxd, dwd, dbd = KL.linear_backward_cpu_dense(dy, cache)
    _checks.assert_close(dw, dwd, atol=2 * tdw, name="dw vs dense")


# ---- GEMM as column blocks on the pool (MINIDISTIL_GEMM=blocks) ------------------------------------------------------------------------------

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


# ---- vectorised row reductions (_f32math.row_sum / row_dot / row_max) ---------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 31, 128, 30522])
def test_row_reductions(rng, n):
    a = (rng.standard_normal(n) * 10).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    # reassociated float32 sums: any order of n adds errs by at most (n - 1) eps sum|terms| (first-order bound)
    eps = float(np.finfo(np.float32).eps)
    s = _f32math.row_sum(a)
    assert float(np.float32(s)) == s                           # a float32 result (numba returns a Python float)
    assert abs(float(_f32math.row_sum(a)) - a64.sum()) <= max(n - 1, 0) * eps * np.abs(a64).sum() + 1e-30
    assert abs(float(_f32math.row_dot(a, b)) - a64 @ b64) <= n * eps * np.abs(a64 * b64).sum() + 1e-30
    # the maximum is exact whatever the order; -inf for an empty row
    assert _f32math.row_max(a) == (a.max() if n else -np.inf)
    if n >= 9:
        for pos in (0, n // 2, n - 1):                           # the maximum anywhere, in any lane or the tail
            c = a.copy()
            c[pos] = 1e30
            assert _f32math.row_max(c) == np.float32(1e30)
        c = a.copy()
        c[n // 3] = np.nan                                       # NaN is skipped by the compares ...
        assert _f32math.row_max(c) == np.nanmax(c)
        assert np.isnan(_f32math.row_sum(c))                      # ... and propagates through a sum
        c = np.full(n, -np.inf, np.float32)
        assert _f32math.row_max(c) == -np.inf
        c[5] = np.inf
        assert _f32math.row_max(c) == np.inf and np.isnan(_f32math.row_sum(c))   # inf + -inf
        c[c == -np.inf] = 0.0
        assert _f32math.row_sum(c) == np.inf


def test_bench_runs_torch_and_onnxruntime_alone_under_their_own_defaults():
    from minidistil import bench
    ours = _runtime.set_by_minidistil()
    assert ours                                                   # import minidistil set something (this process)
    for fw in ("torch", "onnxruntime"):
        env = bench.child_env(fw)
        assert all(env.get(k) != v for k, v in ours.items())     # none of our settings leak into their process
        assert env["MINIDISTIL_MALLOC"] == env["MINIDISTIL_THREAD_ENV"] == "0"
    assert bench.child_env("minidistil").get("MINIDISTIL_MALLOC") != "0"
    assert bench.child_env("minidistil-fast")["MINIDISTIL_FAST_MATH"] == "1"
