"""Training runs (minidistil.train.run, used by distill and finetune) as an unlucky or hostile user meets them: the
model
folder holds no training state and follows the umask; one run per folder (a lock, a stale one taken over); a
folder that holds a run is not silently replaced; a diverging run keeps its last good checkpoints; damaged
checkpoints and a torn metrics log are named and fallen back from; a full disk or an unwritable folder is one line
and the run stays resumable; every numeric flag is checked at parse time; the schedule under a time budget ends
with the budget, and a cut one is reported.

The runs are tiny: a random 4-layer BERT teacher of width 32 saved with its tokenizer in a folder, Python's help
topics as the corpus, a 2-layer student, 8-16 updates.
"""
import errno
import json
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import RUN, _corpus_dir, _tiny_teacher, _tiny_tokenizer

from minidistil.io import checkpoint as ck
from minidistil.apps import cli
from minidistil.train.run import Diverged, FolderLock, Run, RunError, schedule_complete


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tiny shapes: see conftest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(teacher folder, corpus folder): a tiny BERT teacher with an MLM head and its tokenizer, saved once (WordPiece
    training is not reproducible across processes, so every run reads this one)."""
    from minidistil.io.loading import save_pretrained
    from minidistil.io.tokenizer import Tokenizer
    root = tmp_path_factory.mktemp("runs")
    corpus = _corpus_dir(root, 30)
    teacher = save_pretrained(_tiny_teacher(init=0.2), root / "teacher", tokenizer=Tokenizer(_tiny_tokenizer(corpus)))
    return teacher, corpus


def distill_args(setup, out, *extra, steps=12, every=4):
    teacher, corpus = setup
    return ["distill", "--teacher", teacher, "--corpus", corpus, "--out", out, "--steps", steps, "--batch-size", 8,
            "--max-len", 32, "--lr", 3e-3, "--warmup", 0.1, "--held-out", 0.1, "--checkpoint-every", every,
            "--student-layers", 2, "--seed", 3, "--no-eval", "--no-progress", *extra]


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, command: str = "distill") -> str:
    """The single error line on stderr (no traceback)."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"minidistil {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def metrics(out) -> list[str]:
    return (Path(out) / "metrics.jsonl").read_text().splitlines()


def names(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    """metrics.jsonl of an uninterrupted 12-update run: what every interrupted and resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "student"
    assert cli.main([str(a) for a in distill_args(setup, out)]) == 0
    return metrics(out)


# ---- the output folders -------------------------------------------------------------------------------------------


def test_model_folder_holds_no_training_state_and_files_follow_the_umask(setup, tmp_path, capsys, straight):
    out = tmp_path / "student"
    old = os.umask(0o027)
    try:
        rc, said, err = run_cli(capsys, *distill_args(setup, out))
    finally:
        os.umask(old)
    assert rc == 0, err
    model_files = {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json"}
    logs = {"metrics.jsonl", "report.json", "loss_curve.png"}
    assert set(names(out)) - model_files <= logs and model_files & set(names(out)) >= {"config.json",
                                                                                         "model.safetensors"}
    state = tmp_path / "student.training"
    assert names(state) == ["checkpoint-00000008.npz", "checkpoint-00000012.npz"]       # the last two, no lock
    c = ck.load_checkpoint(state / "checkpoint-00000012.npz")
    assert c.optimizer["m"] and c.data is not None                   # AdamW's moments and the data position are here
    from minidistil.io.safetensors_io import load_file
    saved = load_file(out / "model.safetensors")
    assert set(saved) <= set(c.model) and all(np.array_equal(saved[k], c.model[k]) for k in saved)
    # the model folder is what a user shares: a fraction of the state's size
    assert sum(p.stat().st_size for p in out.iterdir()) < sum(p.stat().st_size for p in state.iterdir()) / 2
    # every file as open() would create it under umask 027: rw-r-----, folders rwxr-x---
    for p in [*out.iterdir(), *state.iterdir()]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, (p, oct(p.stat().st_mode))
    for d in (out, state):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d
    assert metrics(out) == straight
    report = json.loads((out / "report.json").read_text())
    assert report["state_dir"] == str(state) and report["schedule"]["complete"]
    assert "schedule complete: 12 updates" in said and f"training state (for --resume; not part of the model): " \
        f"{state}" in said


def test_atomic_writes_honour_the_umask(tmp_path):
    from minidistil.core.files import atomic_write
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            path = atomic_write(tmp_path / f"f{mask:o}.json", "{}")
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == mode, (oct(mask), oct(path.stat().st_mode))


def test_default_output_folders_are_ignored_by_git():
    """A checkout does not offer a run's output for committing: the default folders and every OUT.training."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    paths = ["student/model.safetensors", "finetuned/config.json", "student.training/checkpoint-00000001.npz",
             "sentiment.training/lock"]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=root, capture_output=True, text=True)
    assert proc.stdout.split() == paths, proc.stdout + proc.stderr


# ---- one run per folder ---------------------------------------------------------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from minidistil.train.run import FolderLock
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True)
    FolderLock(folder).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def test_a_second_run_is_refused_and_a_dead_runs_lock_is_taken_over(setup, tmp_path, capsys):
    out = tmp_path / "student"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "student.training")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, _, err = run_cli(capsys, *distill_args(setup, out))
        assert rc == 1
        line = one_line_error(err)
        assert f"is in use by another run (PID {holder.pid})" in line and "student.training" in line
        assert not (out / "metrics.jsonl").exists()              # the refused run wrote nothing
    finally:
        os.kill(holder.pid, signal.SIGKILL)                       # dies holding the lock: the file stays
        holder.wait()
        holder.stdout.close()
    assert (tmp_path / "student.training" / "lock").read_text().split()[0] == str(holder.pid)
    rc, said, err = run_cli(capsys, *distill_args(setup, out, steps=4))
    assert rc == 0, err
    assert f"taking over the lock left by PID {holder.pid}, which is no longer running" in said
    assert not (tmp_path / "student.training" / "lock").exists()  # released at the end


def test_the_lock_excludes_within_one_process_too(tmp_path):
    a = FolderLock(tmp_path).acquire()
    with pytest.raises(RunError, match=f"in use by another run \\(PID {os.getpid()}\\)"):
        FolderLock(tmp_path).acquire()
    a.release()
    FolderLock(tmp_path).acquire().release()


def test_a_folder_holding_a_run_or_a_model_is_not_replaced_silently(setup, tmp_path, capsys):
    out = tmp_path / "student"
    assert run_cli(capsys, *distill_args(setup, out, steps=4))[0] == 0
    before = {p.name: p.read_bytes() for p in [*out.iterdir(), *(tmp_path / "student.training").iterdir()]}
    rc, _, err = run_cli(capsys, *distill_args(setup, out, steps=4))
    assert rc == 1
    assert "already holds a run (checkpoint of step 4" in one_line_error(err) and "--resume" in err \
        and "--overwrite" in err
    after = {p.name: p.read_bytes() for p in [*out.iterdir(), *(tmp_path / "student.training").iterdir()]}
    assert after == before                                                        # nothing touched
    rc, _, err = run_cli(capsys, *distill_args(setup, out, "--overwrite", steps=6, every=3))
    assert rc == 0, err
    assert names(tmp_path / "student.training") == ["checkpoint-00000003.npz", "checkpoint-00000006.npz"]
    assert len(metrics(out)) == 6                                                 # the old log was replaced
    # a folder that holds a model is not a place to write a student; the teacher itself is refused whatever the flags
    rc, _, err = run_cli(capsys, *distill_args(setup, setup[0], "--overwrite", steps=4))
    assert rc == 1 and "is the teacher" in one_line_error(err)
    other = tmp_path / "a-model"
    other.mkdir()
    (other / "config.json").write_text("{}")
    rc, _, err = run_cli(capsys, *distill_args(setup, other, steps=4))
    assert rc == 1 and "holds a model (config.json) that this run would replace" in one_line_error(err)
    with pytest.raises(SystemExit) as e:                                          # one or the other
        cli.main([str(a) for a in distill_args(setup, out, "--resume", "--overwrite")])
    assert e.value.code == 2
    assert "not allowed with argument" in one_line_error(capsys.readouterr().err)


def test_finetune_uses_the_same_run_rules(tmp_path):
    from conftest import FAST, sentiment_rows, tiny_checkpoint, write_csv

    from minidistil.train.finetune import finetune
    base = tiny_checkpoint(tmp_path / "base")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(48, 0))
    kw = dict(FAST, epochs=2, checkpoint_every=2)
    part = finetune("classification", str(base), str(train), str(tmp_path / "ft"), stop_after=3, **kw)
    assert not part["schedule"]["complete"] and "stop_after 3" in part["schedule"]["ended_early"]
    assert part["schedule"]["planned_steps"] == 6 and part["schedule"]["steps"] == 3
    with pytest.raises(RunError, match="already holds a run"):
        finetune("classification", str(base), str(train), str(tmp_path / "ft"), **kw)
    rest = finetune("classification", str(base), str(train), str(tmp_path / "ft"), resume=True, **kw)
    assert rest["schedule"]["complete"] and rest["updates"] == 6
    assert not list((tmp_path / "ft").glob("*.npz"))
    assert names(tmp_path / "ft.training") == ["checkpoint-00000004.npz", "checkpoint-00000006.npz"]


# ---- divergence -------------------------------------------------------------------------------------------------


def test_a_diverging_run_keeps_the_last_good_checkpoints(setup, tmp_path, capsys):
    """The probe's case: a run resumed with a huge learning rate. The loss may stay finite (layer norms bound the
    activations) while the weights explode; nothing diverged is saved, and the good run resumes."""
    out, state = tmp_path / "student", tmp_path / "student.training"
    assert run_cli(capsys, *distill_args(setup, out, steps=8))[0] == 0
    good = {p.name: p.read_bytes() for p in state.iterdir()}
    rc, said, err = run_cli(capsys, *distill_args(setup, out, "--resume", "--lr", 1e4, steps=16))
    assert rc == 1
    line = one_line_error(err)                                       # on stderr; stdout has no error
    assert "error" not in said
    assert "step 9" in line or "step 1" in line                       # names the step (9 .. 16)
    assert any(w in line for w in ("the parameters have diverged", "the loss is", "the gradient norm is")), line
    assert "The last good checkpoint (step 8) is kept at" in line and "checkpoint-00000008.npz" in line
    assert {p.name: p.read_bytes() for p in state.iterdir()} == good          # both good checkpoints, untouched
    rc, said, err = run_cli(capsys, *distill_args(setup, out, "--resume", steps=16))
    assert rc == 0, err
    assert "resumed from" in said and "at step 8" in said
    rows = [json.loads(x) for x in metrics(out)]
    assert [r["step"] for r in rows] == list(range(1, 17)) and all(math.isfinite(r["loss"]) for r in rows)


def test_a_non_finite_gradient_norm_stops_finetuning(tmp_path, monkeypatch):
    from conftest import FAST, sentiment_rows, tiny_checkpoint, write_csv

    from minidistil.train import finetune as FT
    from minidistil.train import run as run_module                         # the optimiser update both loops share
    base = tiny_checkpoint(tmp_path / "base")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(48, 0))
    real, calls = run_module.clip_grad_norm, []

    def poisoned(params, max_norm, **kwargs):
        calls.append(1)
        return float("inf") if len(calls) == 5 else real(params, max_norm, **kwargs)

    monkeypatch.setattr(run_module, "clip_grad_norm", poisoned)
    with pytest.raises(Diverged, match=r"step 5: the gradient norm is inf.*\(step 4\)"):
        FT.finetune("classification", str(base), str(train), str(tmp_path / "ft"),
                    **dict(FAST, epochs=2, checkpoint_every=2))
    assert names(tmp_path / "ft.training") == ["checkpoint-00000003.npz", "checkpoint-00000004.npz"]


# ---- resuming from damage ---------------------------------------------------------------------------------------


def test_resume_falls_back_past_a_damaged_checkpoint_and_a_torn_log(setup, tmp_path, capsys, straight):
    out, state = tmp_path / "student", tmp_path / "student.training"
    assert run_cli(capsys, *distill_args(setup, out))[0] == 0
    newest = state / "checkpoint-00000012.npz"
    newest.write_bytes(newest.read_bytes()[:5000])                          # truncated: a bad copy, a disk fault
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 1.2')                                  # a line torn by a crash
    rc, said, err = run_cli(capsys, *distill_args(setup, out, "--resume"))
    assert rc == 0, err
    assert f"checkpoint: {newest} is damaged" in said and "falling back to the one before it, " \
        "checkpoint-00000008.npz" in said
    assert "metrics.jsonl: line 13 is cut short (a torn write)" in said
    assert "resumed from" in said and "at step 8" in said
    assert metrics(out) == straight                                        # the same losses, bit for bit
    assert ck.load_checkpoint(newest).step == 12                            # written again, whole

    # a checkpoint whose parameters exploded (saved by a version that did not check) is passed over as well
    c = ck.load_checkpoint(newest)
    ck.save_checkpoint(newest, step=12, model={k: v * 1e9 for k, v in c.model.items()}, optimizer=c.optimizer,
                       data=c.data, extra=c.extra)
    rc, said, err = run_cli(capsys, *distill_args(setup, out, "--resume"))
    assert rc == 0, err
    assert "holds diverged parameters" in said and "at step 8" in said
    assert metrics(out) == straight

    # nothing left to resume from: one line, and the way out
    for p in state.iterdir():
        p.write_bytes(b"")
    rc, said, err = run_cli(capsys, *distill_args(setup, out, "--resume"))
    assert rc == 1 and "no checkpoint can be resumed" in one_line_error(err) and "--overwrite" in err
    assert said.count("is damaged") == 2


def test_metrics_lines_follow_the_checkpoint(tmp_path):
    """Resuming keeps exactly the lines written before the checkpoint, also an evaluation row logged at the same
    step as the checkpoint (fine-tuning logs one per epoch), and nothing after it."""
    out = tmp_path / "o"
    with Run(out) as run:
        run.resume({"w": np.ones(3, np.float32)})
        for step in (1, 2):
            run.log({"step": step, "loss": 1.0})
        run.log({"step": 2, "eval": {"main": "accuracy", "accuracy": 0.5}})
        from minidistil.train.run import RunState
        run.save(2, model={"w": np.ones(3, np.float32)}, optimizer=None, state=RunState(step=2))
        run.log({"step": 3, "loss": 1.0})
    with Run(out, resume=True, say=lambda *a: None) as run:
        c = run.resume({"w": np.ones(3, np.float32)})
        assert c.step == 2 and run.lines == 3
    assert [json.loads(x).get("eval") is not None for x in metrics(out)] == [False, False, True]


# ---- the operating system says no -------------------------------------------------------------------------------


def test_a_full_disk_is_one_line_and_the_run_stays_resumable(setup, tmp_path, capsys, monkeypatch, straight):
    out, state = tmp_path / "student", tmp_path / "student.training"
    real, calls = np.savez, []

    def full_disk(f, **arrays):  # the second checkpoint: the disk fills half way through the write
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04" + b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, **arrays)

    monkeypatch.setattr(np, "savez", full_disk)
    rc, _, err = run_cli(capsys, *distill_args(setup, out))
    assert rc == 1
    assert one_line_error(err).endswith(f"{state / 'checkpoint-00000008.npz'}: No space left on device")
    assert names(state) == ["checkpoint-00000004.npz"]                    # no temporary file, the good one kept
    monkeypatch.setattr(np, "savez", real)
    rc, said, err = run_cli(capsys, *distill_args(setup, out, "--resume"))
    assert rc == 0 and "at step 4" in said, err
    assert metrics(out) == straight


def test_unwritable_places_are_one_line(setup, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(capsys, *distill_args(setup, tmp_path / "file" / "student"))
    assert rc == 1 and one_line_error(err).endswith(f"{tmp_path / 'file' / 'student'}: Not a directory")

    import tempfile

    def refused(suffix=None, prefix=None, dir=None, text=False):  # as os.open reports it: the temporary name
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, f"{prefix}x1y2z3{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)                 # as in a folder made read-only mid-run
    rc, _, err = run_cli(capsys, *distill_args(setup, tmp_path / "student"))
    assert rc == 1
    assert one_line_error(err).endswith(f"{tmp_path / 'student.training' / 'checkpoint-00000004.npz'}: "
                                        "Permission denied")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(setup, tmp_path, capsys):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        rc, _, err = run_cli(capsys, *distill_args(setup, tmp_path / "ro" / "student"))
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert rc == 1 and one_line_error(err).endswith("student: Permission denied")


TMPFS = textwrap.dedent("""
    # runs in a private mount namespace (unshare -m): the mounts vanish with this process
    set -u
    mount -t tmpfs -o size=$1 tmpfs "$2" || exit 77
    shift 2
    python - "$@" <<'EOF'
    import json, subprocess, sys
    mnt, args = sys.argv[1], sys.argv[2:]
    run = lambda *extra: subprocess.run([sys.executable, "-m", "minidistil.apps.cli", *args, *extra],
    capture_output=True,
                                        text=True)
    full = run()
    subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
    resumed = run("--resume")
    metrics = open(mnt + "/student/metrics.jsonl").read().splitlines()
    subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
    ro = subprocess.run([sys.executable, "-m", "minidistil.apps.cli", *[a.replace("/student", "/other") for a in args]],
                        capture_output=True, text=True)
    print(json.dumps({"full": [full.returncode, full.stderr], "resumed": [resumed.returncode, resumed.stderr],
                      "metrics": metrics, "ro": [ro.returncode, ro.stderr]}))
    EOF
""")


def test_a_full_tmpfs_and_a_read_only_mount(setup, tmp_path, straight):
    """The real thing where this machine lets a test mount a tmpfs in a private namespace (root or user
    namespaces): the disk fills while the third checkpoint is written, then grows and the run resumes; then
    the mount turns read-only. (The monkeypatched tests above cover the same paths everywhere.)"""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        pytest.skip("needs Linux's unshare to mount a private tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs -o size=1m tmpfs {mnt}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {probe.stderr.strip()}")
    # room for two checkpoints and a little more: the third one's temporary file does not fit
    assert cli.main([str(a) for a in distill_args(setup, tmp_path / "probe", steps=4)]) == 0
    one = (tmp_path / "probe.training" / "checkpoint-00000004.npz").stat().st_size
    size = (int(2.6 * one) // 4096 + 8) * 4096
    script = tmp_path / "tmpfs.sh"
    script.write_text(TMPFS)
    argv = [str(a) for a in distill_args(setup, mnt / "student")]
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", str(script), str(size), str(mnt),
                           str(mnt), *argv], capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["full"][0] == 1 and "Traceback" not in r["full"][1], r["full"][1]
    assert r["full"][1].strip().splitlines()[-1].endswith("checkpoint-00000012.npz: No space left on device")
    assert r["resumed"][0] == 0, r["resumed"][1]
    assert r["metrics"] == straight
    assert r["ro"][0] == 1 and r["ro"][1].strip().endswith("Read-only file system"), r["ro"][1]
    assert len(r["ro"][1].strip().splitlines()) == 1


# ---- the command line -------------------------------------------------------------------------------------------


BAD_FLAGS = [
    ("distill", ["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    ("distill", ["--steps", "-5"], "argument --steps: must be >= 1, got -5"),
    ("distill", ["--time-budget", "0"], "argument --time-budget: must be > 0, got 0"),
    ("distill", ["--time-budget", "inf"], "argument --time-budget: must be a finite number"),
    ("distill", ["--grad-accum", "0"], "argument --grad-accum: must be >= 1"),
    ("distill", ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("distill", ["--lr", "0"], "argument --lr: must be > 0"),
    ("distill", ["--lr", "nan"], "argument --lr: must be a finite number"),
    ("distill", ["--max-len", "2"], "argument --max-len: must be >= 10"),
    ("distill", ["--warmup", "1"], "argument --warmup: must be >= 0 and < 1"),
    ("distill", ["--held-out", "-0.1"], "argument --held-out: must be >= 0 and < 1"),
    ("distill", ["--checkpoint-every", "-1"], "argument --checkpoint-every: must be >= 0"),
    ("distill", ["--seed", "-1"], "argument --seed: must be >= 0"),
    ("distill", ["--temperature", "0"], "argument --temperature: must be > 0"),
    ("distill", ["--alpha-cos", "-1"], "argument --alpha-cos: must be >= 0"),
    ("distill", ["--student-layers", "0"], "argument --student-layers: must be >= 1"),
    ("distill", ["--layer-map", "0,x"], "argument --layer-map: expected comma-separated numbers"),
    ("distill", ["--steps", "2.5"], "argument --steps: invalid int value: '2.5'"),
    ("finetune", ["--epochs", "0"], "argument --epochs: must be >= 1"),
    ("finetune", ["--lr", "-1"], "argument --lr: must be > 0"),
    ("finetune", ["--max-length", "2"], "argument --max-length: must be >= 3"),
    ("finetune", ["--stride", "-1"], "argument --stride: must be >= 0"),
    ("finetune", ["--max-answer-len", "0"], "argument --max-answer-len: must be >= 1"),
    ("finetune", ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("finetune", ["--alpha", "2"], "argument --alpha: must be >= 0 and <= 1"),
    ("finetune", ["--stop-after", "0"], "argument --stop-after: must be >= 1"),
    ("finetune", ["--early-stopping", "0"], "argument --early-stopping: must be >= 1"),
    ("finetune", ["--limit", "0"], "argument --limit: must be >= 1"),
    ("predict", ["--max-answer-len", "0"], "argument --max-answer-len: must be >= 1"),
    ("predict", ["--top-k", "-1"], "argument --top-k: must be >= 0"),
    ("qa", ["--max-answer-len", "0"], "argument --max-answer-len: must be >= 1"),
    ("qa", ["--doc-stride", "-1"], "argument --doc-stride: must be >= 0"),
    ("qa", ["--top-k", "0"], "argument --top-k: must be >= 1"),
    ("fill-mask", ["--top-k", "-1"], "argument --top-k: must be >= 1"),
    ("classify", ["--top-k", "-1"], "argument --top-k: must be >= 0"),
    ("ner", ["--stride", "-1"], "argument --stride: must be >= 0"),
    ("embed", ["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("embed", ["--precision", "-1"], "argument --precision: must be >= 0"),
    ("bench", ["--repeat", "0"], "argument --repeat: must be >= 1"),
]
REQUIRED = {"finetune": ["--task", "classification", "--model", "m", "--train", "t"], "predict": ["--model", "m"],
            "qa": ["--model", "m", "--context", "c"], "fill-mask": ["--model", "m"], "classify": ["--model", "m"],
            "ner": ["--model", "m"]}


@pytest.mark.parametrize("command,argv,message", BAD_FLAGS, ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD_FLAGS])
def test_numeric_flags_are_checked_at_parse_time(capsys, command, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main([command, *REQUIRED.get(command, []), *argv])
    assert e.value.code == 2
    line = one_line_error(capsys.readouterr().err, command)
    assert message in line, line


def test_every_numeric_flag_has_a_range():
    """No command parses a number with bare int or float: each uses one of minidistil.apps.cli's types."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    bare = [f"{name} {'/'.join(a.option_strings)}" for name, p in sub.choices.items() for a in p._actions
            if a.type in (int, float)]
    assert not bare, bare
    assert {"distill", "finetune", "predict", "bench", "qa"} <= set(sub.choices)


def test_the_api_checks_the_same_ranges(tmp_path):
    from minidistil.train.distill import distill
    from minidistil.train.finetune import finetune
    with pytest.raises(ValueError, match="steps: must be >= 1, got 0"):
        distill("t", tmp_path / "o", steps=0)
    with pytest.raises(ValueError, match="time_budget: must be > 0"):
        distill("t", tmp_path / "o", time_budget=0)
    with pytest.raises(ValueError, match="epochs: must be >= 1"):
        finetune("classification", "m", "t", str(tmp_path / "o"), epochs=0)
    assert not (tmp_path / "o").exists()                              # refused before anything is written


def test_os_errors_and_panics_are_one_line(capsys, tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "model.safetensors").mkdir(parents=True)                  # unreadable as a file
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")
    rc, _, err = run_cli(capsys, "embed", "--model", model, "a")
    assert rc == 1 and "model.safetensors" in one_line_error(err, "embed")

    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    tk = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "[CLS]": 2, "[SEP]": 3}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tk.enable_truncation(max_length=20, stride=8, strategy="only_second")

    def panics(args):                   # a window that leaves less room than the stride: a Rust panic
        tk.encode("a " * 10, "a " * 60)

    monkeypatch.setattr(cli, "run_fetch", panics)
    rc, _, err = run_cli(capsys, "fetch", "x")
    lines = err.strip().splitlines()
    assert rc == 1 and lines[-1].startswith("minidistil fetch: error: the tokenizers library failed"), err
    assert "stride" in lines[-1] and "Traceback" not in err          # (Rust prints its own panic note above)
    with pytest.raises(BaseException, match="stride"):
        cli.main(["--debug", "fetch", "x"])                           # --debug keeps the traceback


def test_diverged_goes_to_stderr_from_python_m_too(setup, tmp_path):
    """`python -m minidistil.distill` is `minidistil distill`: the same single error path."""
    proc = subprocess.run([sys.executable, "-m", "minidistil.distill",
                           *[str(a) for a in distill_args(setup, tmp_path / "s", "--lr", 1e6, steps=6)[1:]]],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, NUMBA_NUM_THREADS="1"))
    assert proc.returncode == 1
    line = one_line_error(proc.stderr)
    assert "step " in line and "stopping" in line and "error" not in proc.stdout


# ---- the schedule under a time budget -----------------------------------------------------------------------------


class FakeClock:
    """Stands in for the time module inside minidistil.train.distill: the teacher's forward advances it."""

    def __init__(self):
        self.now = 1000.0

    def perf_counter(self):
        return self.now


def _clocked(monkeypatch, durations):
    """Make the n-th update take durations(n) seconds of the fake clock."""
    from minidistil.train import distill as M
    clock, real, n = FakeClock(), M.forward_outputs, [0]

    def forward(model, ids, mask, **kw):
        if model.config.__class__.__name__ == "BertConfig":            # the teacher: once per update
            n[0] += 1
            clock.now += durations(n[0])
        return real(model, ids, mask, **kw)

    monkeypatch.setattr(M, "time", clock)
    monkeypatch.setattr(M, "forward_outputs", forward)
    return M


def test_the_schedule_follows_the_speed_and_ends_with_the_budget(setup, tmp_path, monkeypatch, capsys):
    """1 s per update for 20 updates, then 2 s: a plan fixed from the first speed would hold 60 updates and stop
    at 40 with the learning rate still at a third of its peak; the re-planned one ends its decay at the budget."""
    from minidistil.io.tokenizer import Tokenizer
    M = _clocked(monkeypatch, lambda n: 1.0 if n <= 20 else 2.0)
    teacher, corpus = setup
    report = M.distill(str(teacher), tmp_path / "s", tokenizer=Tokenizer.from_pretrained(teacher),
                       corpus=[str(corpus)], time_budget=60.0, **{**RUN, "checkpoint_every": 0, "progress": True})
    rows = [json.loads(x) for x in metrics(tmp_path / "s")]
    n = report["steps"]
    assert 38 <= n <= 41 and report["train_seconds"] <= 60.0
    assert report["schedule"]["complete"]
    W = math.ceil(RUN["warmup"] * n)
    assert rows[-1]["lr"] <= 2 * RUN["lr"] / (n - W)               # the last step or two of the decay
    assert max(r["lr"] for r in rows) == pytest.approx(RUN["lr"], rel=0.1)
    err = capsys.readouterr().err
    assert "100%|" in err and f"{n}/{n}" in err                  # the bar ends full


def test_a_cut_schedule_is_reported(setup, tmp_path, monkeypatch, capsys):
    """The machine stalls: update 31 takes 100 s of a 60 s budget. The run stops, and says it was cut."""
    from minidistil.train.distill import format_report
    from minidistil.io.tokenizer import Tokenizer
    M = _clocked(monkeypatch, lambda n: 100.0 if n == 31 else 1.0)
    teacher, corpus = setup
    report = M.distill(str(teacher), tmp_path / "s", tokenizer=Tokenizer.from_pretrained(teacher),
                       corpus=[str(corpus)], time_budget=60.0, **{**RUN, "checkpoint_every": 0})
    s = report["schedule"]
    assert report["steps"] == 31 and not s["complete"] and s["planned_steps"] > 40
    assert "time budget ran out" in s["ended_early"] and s["last_lr_share_of_peak"] > 0.2
    assert f"schedule CUT: the run ended after 31 of the {s['planned_steps']} planned updates" in format_report(report)
    assert "schedule CUT" in capsys.readouterr().out


def test_schedule_complete():
    assert schedule_complete(12, 12) and schedule_complete(1609, 1610) and schedule_complete(990, 1000)
    assert not schedule_complete(1228, 1848) and not schedule_complete(3, 6) and not schedule_complete(0, 0)
