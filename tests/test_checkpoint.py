"""Checkpoints: a faithful round trip, and atomic replacement (an exception or a SIGKILL mid-write never leaves
a broken file)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from minidistil.io import checkpoint as ck
from minidistil.core.autograd import Tensor
from minidistil.core.optim import AdamW


def test_round_trip(tmp_path, rng):
    model = {"a.weight": rng.standard_normal((3, 4)).astype(np.float32), "a.bias": np.zeros(4, np.float32)}
    params = {n: Tensor(a.copy(), requires_grad=True) for n, a in model.items()}
    opt = AdamW(params.items())
    opt.m["a.bias"][:] = 1.5
    opt.t = 7
    g = np.random.default_rng(42)
    g.random(5)  # advance it, so the saved state is not the initial one
    data_state = {"seed": 1, "epoch": 2, "index": 3, "n_seqs": 100}
    path = ck.save_checkpoint(tmp_path / "run" / "checkpoint.npz", step=7, model=model, optimizer=opt.state_dict(),
                              rng={"mask": g}, data=data_state, extra={"losses": [1.0, 0.5]})
    c = ck.load_checkpoint(path)
    assert c.step == 7 and c.data == data_state and c.extra == {"losses": [1.0, 0.5]}
    assert all(np.array_equal(c.model[n], model[n]) and c.model[n].dtype == np.float32 for n in model)
    opt2 = AdamW({n: Tensor(np.zeros_like(a), requires_grad=True) for n, a in model.items()}.items())
    opt2.load_state_dict(c.optimizer)
    assert opt2.t == 7 and np.array_equal(opt2.m["a.bias"], np.full(4, 1.5, np.float32))
    g2 = ck.restore_rng(np.random.default_rng(0), c.rng["mask"])
    assert np.array_equal(g2.random(10), g.random(10))  # continues the same stream
    fresh = {n: Tensor(np.zeros_like(a)) for n, a in model.items()}
    ck.load_model_arrays(fresh, c.model)
    assert np.array_equal(fresh["a.weight"].data, model["a.weight"])
    with pytest.raises(ValueError, match="missing"):
        ck.load_model_arrays({"other": Tensor(np.zeros(2, np.float32))}, c.model)
    with pytest.raises(ValueError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "nothing.npz")


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = ck.save_checkpoint(tmp_path / "c.npz", step=1, model={"w": np.ones(3, np.float32)})

    class Boom(RuntimeError):
        pass

    def bad_writer(f):
        f.write(b"half a zip file")
        raise Boom

    with pytest.raises(Boom):
        ck.atomic_write(path, bad_writer)
    assert ck.load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]  # the temporary file is gone


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "no meta"])
def test_a_damaged_checkpoint_is_named(tmp_path, damage):
    """A checkpoint cut short (a copy or disk fault: the atomic writer itself never leaves one) is refused with a
    ValueError naming the file, never a BadZipFile / EOFError traceback."""
    path = ck.save_checkpoint(tmp_path / "c.npz", step=3, model={"w": np.arange(5000, dtype=np.float32)})
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "empty": b"", "garbage": b"PK\x03\x04" + b"x" * 100,
                      "no meta": b""}[damage])
    if damage == "no meta":
        np.savez(path, w=np.ones(2))
        path = path.with_suffix(".npz")
    with pytest.raises(ValueError, match=r"checkpoint: .*c\.npz (is damaged|is not a minidistil checkpoint)"):
        ck.load_checkpoint(path)


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from minidistil.io.checkpoint import save_checkpoint
    path = sys.argv[1]
    big = np.zeros((512, 1024), np.float32)            # 2 MB: each write takes a while, so kills land mid-write
    step = 0
    while True:
        step += 1
        big[:] = step
        save_checkpoint(path, step=step, model={"w": big}, extra={"step_again": step})
        print(step, flush=True)
""")


def test_sigkill_mid_write_never_corrupts(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "c.npz"
    last = 0
    for delay in (0.9, 1.3, 1.7):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        written = [int(x) for x in out.split()]
        if not written:
            continue  # killed before the first write finished (slow machine): nothing to check this round
        c = ck.load_checkpoint(path)  # must load: either the last completed write or, at most, one more
        assert c.extra["step_again"] == c.step and (c.model["w"] == c.step).all()
        assert written[-1] <= c.step <= written[-1] + 1
        last = c.step
        ck.save_checkpoint(path, step=0, model={"w": np.zeros(1, np.float32)}, extra={"step_again": 0})
    assert last > 0, "the writer never completed a checkpoint: the test checked nothing"
