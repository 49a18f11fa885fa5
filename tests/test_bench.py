"""`minidistil bench` (minidistil/apps/bench.py): FLOP counts, a quick in-process run, the JSON and plot output, the
peak-memory child, the other frameworks' process environment, and torch's forward against ours on shared
weights; the BLAS kernel line and its warning under a forced slower core. No timed assertion anywhere: times are
only checked to be positive."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minidistil.core import _runtime
from minidistil.apps import bench
from minidistil.kernels import _blas, _checks, _cpuinfo


def test_bench_flop_count_is_distilbert_base():
    sc = next(s for s in bench.scenarios(False) if s.name == "fwd_T128")
    assert (sc.B, sc.T) == (8, 128)
    # q, k, v, out projections 4 C^2, FFN 2 C F, two attention products: ~89 GFLOP
    assert 88.0e9 < bench.flops(bench.FULL, sc) < 89.5e9


def test_bench_quick_runs_and_writes_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    rc = bench.main(["--quick", "--frameworks", "minidistil", "--no-memory", "--repeat", "1", "--warmup", "1",
                     "--fast-math", "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    data = json.loads(out_json.read_text())
    rows = {(r["scenario"], r["framework"]) for r in data["results"]}
    assert rows == {(s.name, fw) for s in bench.scenarios(True) for fw in ("minidistil", "minidistil-fast")}
    assert all(r["ms"] > 0 and r["gflops"] > 0 for r in data["results"])
    assert all(r["ratio"] == 1.0 for r in data["results"] if r["framework"] == "minidistil")
    assert all(r["gemm_calls"] > 0 and 0 < r["gemm_ms"] and r["gemm_gflops"] > 0 for r in data["results"])
    assert out_png.stat().st_size > 1000


def test_gemm_tally_counts_every_linear_product_of_a_forward_once():
    # per layer: the fused q|k|v projection (C -> 3C), the output projection (C -> C) and the two FFN products
    # (C -> F -> C): 4 products and 2 N (3 C^2 + C^2 + 2 C F) flops; the attention products are not linear layers
    s, sc = bench.QUICK, bench.Scenario("fwd_T16", "forward", 2, 16)
    step = bench.minidistil_step(s, sc)
    step()
    N, C, F = sc.B * sc.T, s.dim, s.hidden_dim
    with _blas.tally_gemms() as t:
        step()
        with _blas.tally_gemms() as inner:  # a nested tally counts its own block only
            step()
    assert t.calls == inner.calls == 4 * s.n_layers
    assert t.flops == inner.flops == s.n_layers * 2.0 * N * (4 * C * C + 2 * C * F)
    assert t.seconds > 0 and t.gflops > 0
    assert _blas._TALLY is None                                    # the matmul path is back to plain
    ms, gflops, calls = bench.gemm_tally(step, steps=2)
    assert calls == 4 * s.n_layers and ms > 0 and gflops > 0
    r = bench.Result(sc.name, "minidistil", 2 * ms, gemm_ms=ms, gemm_gflops=gflops, gemm_calls=calls)
    line = bench.format_gemm_line(r, sgemm_gflops=4 * gflops)
    assert f"{calls} products" in line and "(50% of its" in line and "25% of the sgemm rate" in line


def test_bench_memory_child_reports_a_peak_and_a_time(tmp_path):
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
    with pytest.raises(ValueError, match="--frameworks"):
        bench.main(["--quick", "--frameworks", "tensorflow"])
    with pytest.raises(ValueError, match="--scenarios"):
        bench.main(["--quick", "--frameworks", "minidistil", "--scenarios", "nope"])


def test_bench_torch_forward_matches_minidistil_on_shared_weights(oracle, torch):
    oracle("transformers")  # required in CI, like torch
    s, sc = bench.QUICK, bench.scenarios(True)[0]
    tm = bench._torch_models(s, sc.kind)
    mm = bench._md_models(s, sc.kind)
    mm[0].load_state_dict({k: v.detach().numpy() for k, v in tm[0].state_dict().items()}, strict=False)
    a = np.asarray(bench.minidistil_step(s, sc, mm)())
    b = bench.torch_step(s, sc, tm)().detach().numpy()
    # layer-normed outputs of O(1): a float32 tolerance over the longest reduction (F) and the depth
    _checks.assert_close(a, b, atol=_checks.f32_tol(s.hidden_dim, scale=4.0) * s.n_layers)


@pytest.mark.parametrize("name", ["train_mlm", "distill"])
def test_bench_training_steps_compute_the_loss_of_every_position(name):
    """minidistil's training scenarios run the MLM head at the loss's rows only (logits_rows): the first step's
    loss equals the same loss with the logits at every position (as transformers computes them), before the
    update, with the same dropout masks. The two differ only in the order of the head's float32 sums (see
    tests/test_mlm_rows.py): the head's chain (transform, layer norm, projector, log-softmax, mean) of 5
    reductions of length <= max(C, V), each off by at most f32_tol, in each run; the distillation loss adds its
    terms with weights 5 + 2 + 1 = 8."""
    from minidistil.core import functional as F
    from minidistil.core.autograd import no_grad
    from minidistil.train.distill import LossWeights, distillation_loss, forward_outputs
    s = bench.QUICK
    sc = next(x for x in bench.scenarios(True) if x.name == name)
    models = bench._md_models(s, sc.kind)
    ids, mask, labels = bench.make_inputs(s, sc)
    student, teacher = models
    student.train()
    F.manual_seed(0)
    if name == "train_mlm":
        ref = float(student(ids, attention_mask=mask, labels=labels).loss.item())
    else:
        teacher.eval()
        with no_grad():
            t_logits, t_hidden = forward_outputs(teacher, ids, mask)
        s_logits, s_hidden = forward_outputs(student, ids, mask)
        w = LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, temperature=2.0)
        ref = float(distillation_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, w)[0].item())
    step = bench.minidistil_step(s, sc, models)
    F.manual_seed(0)
    loss = float(step().item())
    weights = 1 if name == "train_mlm" else 8
    tol = weights * 2 * 5 * _checks.f32_tol(max(s.dim, s.vocab_size), scale=max(1.0, abs(ref)))
    assert abs(loss - ref) <= tol, (loss, ref, tol)


def test_bench_runs_torch_and_onnxruntime_alone_under_their_own_defaults():
    ours = _runtime.set_by_minidistil()
    assert ours                                                   # import minidistil set something (this process)
    for fw in ("torch", "onnxruntime"):
        env = bench.child_env(fw)
        assert all(env.get(k) != v for k, v in ours.items())     # none of our settings leak into their process
        assert env["MINIDISTIL_MALLOC"] == env["MINIDISTIL_THREAD_ENV"] == "0"
    assert bench.child_env("minidistil").get("MINIDISTIL_MALLOC") != "0"
    assert bench.child_env("minidistil-fast")["MINIDISTIL_FAST_MATH"] == "1"


def _bench_in_fresh_python(env_extra: dict) -> subprocess.CompletedProcess:
    """The tiny bench (minidistil only, one forward) in a fresh process: OpenBLAS reads its variables at load."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*_blas.FORCING_VARIABLES, "MINIDISTIL_OPENBLAS_CORETYPE")}
    env.update(env_extra)
    cmd = [sys.executable, "-m", "minidistil.apps.bench", "--size", "tiny", "--frameworks", "minidistil", "--scenarios",
           "fwd_T4", "--no-memory", "--repeat", "1", "--warmup", "0", "--pause", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.skipif(_cpuinfo.cpu_level() < 2, reason="no AVX-512 F/BW/DQ/VL here: Haswell's kernels are not slower "
                    "than what this CPU supports, so there is nothing to warn about")
def test_bench_warns_when_openblas_coretype_forces_slower_kernels():
    forced = _bench_in_fresh_python({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"})
    if "runs its unknown kernels" in forced.stdout:
        pytest.skip("numpy's BLAS is not an OpenBLAS with a readable core name here")
    assert "runs its Haswell kernels" in forced.stdout and "GFLOP/s" in forced.stdout
    assert "warning: numpy's OpenBLAS runs its Haswell kernels on a CPU with AVX-512" in forced.stderr
    assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE minidistil bench" in forced.stderr
    free = _bench_in_fresh_python({})                                   # as users run it: neither variable set
    assert "runs its Haswell kernels" not in free.stdout
    assert "numpy's OpenBLAS runs its" not in free.stderr, free.stderr


def test_encode_student_scenario_runs_and_compares_embeddings(minilm_dir, monkeypatch):
    # the student scenario (minidistil/apps/bench_encode.py) at a few sentences: every framework asked for that is
    # installed gives a rate and its embeddings' smallest cosine to minidistil float32's
    from minidistil.apps import bench_encode
    monkeypatch.setattr(bench_encode, "N_SENTENCES", 8)
    assert bench_encode.sentences() == bench_encode.sentences() and len(bench_encode.sentences()) == 8
    res = bench_encode.run(frameworks=("minidistil", "minidistil-int8"), repeat=1, warmup=1, pause=0.0,
                           log=lambda *_: None)
    assert set(res) == {"minidistil", "minidistil-int8"}
    assert all(r["per_s"] > 0 for r in res.values())
    assert abs(res["minidistil"]["min_cos"] - 1.0) < 1e-6
    assert 0.99 < res["minidistil-int8"]["min_cos"] <= 1.0 + 1e-6      # int8 stays close to float32


def test_bench_cli_runs_the_encode_scenario_only_when_named(monkeypatch, capsys):
    from minidistil.apps import bench_encode
    calls = []
    monkeypatch.setattr(bench_encode, "run", lambda **kw: calls.append(kw))
    assert bench.main(["--scenarios", "encode_student", "--repeat", "2", "--pause", "0"]) == 0
    assert calls == [{"repeat": 2, "warmup": 2, "pause": 0.0}]
    assert "encode_student: 256 short sentences" in capsys.readouterr().out
