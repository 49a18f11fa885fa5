"""AdamW (over the adamw_step kernel), the warm-up/decay schedule and gradient clipping, against PyTorch."""
import numpy as np
import pytest

from minidistil.core.autograd import Tensor
from minidistil.kernels import _checks
from minidistil.core.optim import AdamW, LinearWarmupDecay, clip_grad_norm, decays, global_grad_norm

SHAPES = {  # a DistilBERT-like set of names: matrices decay, biases and LayerNorm weights do not
    "embeddings.word_embeddings.weight": (11, 4),
    "embeddings.LayerNorm.weight": (4,),
    "embeddings.LayerNorm.bias": (4,),
    "transformer.layer.0.attention.q_lin.weight": (4, 4),
    "transformer.layer.0.attention.q_lin.bias": (4,),
    "transformer.layer.0.sa_layer_norm.weight": (4,),
    "transformer.layer.0.ffn.lin1.weight": (7, 4),
    "vocab_projector.bias": (11,),
}


def _params(rng):
    return {n: Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for n, s in SHAPES.items()}


def test_no_decay_rule():
    got = {n: decays(n, Tensor(np.zeros(s, np.float32))) for n, s in SHAPES.items()}
    assert [n for n, d in got.items() if d] == ["embeddings.word_embeddings.weight",
                                                 "transformer.layer.0.attention.q_lin.weight",
                                                 "transformer.layer.0.ffn.lin1.weight"]


def test_schedule_matches_transformers(oracle, torch):
    transformers = oracle("transformers")
    for total, frac in [(100, 0.05), (7, 0.05), (40, 0.0), (1000, 0.1)]:
        sched = LinearWarmupDecay(1e-3, total, frac)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        ref = transformers.get_linear_schedule_with_warmup(opt, int(np.ceil(frac * total)), total)
        for step in range(total + 2):
            assert sched(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), (total, step)
            opt.step()
            ref.step()
    s = LinearWarmupDecay(1.0, 100, 0.05)
    assert s.warmup_steps == 5 and s(0) == 0.0 and s(5) == 1.0 and s(100) == 0.0
    assert s(3) == pytest.approx(0.6) and s(43) == pytest.approx(57 / 95)


def test_clipping_matches_torch(torch, rng):
    for scale in (0.1, 10.0):  # below and above the threshold
        params = _params(rng)
        for p in params.values():
            p.grad = (rng.standard_normal(p.shape) * scale).astype(np.float32)
        tp = [torch.tensor(p.data, requires_grad=True) for p in params.values()]
        for t, p in zip(tp, params.values()):
            t.grad = torch.tensor(p.grad)
        ref_norm = float(torch.nn.utils.clip_grad_norm_(tp, 5.0))
        norm = clip_grad_norm(params.values(), 5.0)
        n_el = sum(p.size for p in params.values())
        assert norm == pytest.approx(ref_norm, rel=_checks.f32_tol(n_el))
        for t, p in zip(tp, params.values()):
            _checks.assert_close(p.grad, t.grad.numpy(), atol=_checks.f32_tol(1, scale=scale * 4), name="clipped")
        if scale > 1:
            assert global_grad_norm(params.values()) == pytest.approx(5.0, rel=1e-5)
    inf = _params(rng)
    for p in inf.values():
        p.grad = np.ones(p.shape, np.float32)
    inf["vocab_projector.bias"].grad[0] = np.inf
    assert clip_grad_norm(inf.values(), 5.0) == np.inf  # reported, so the loop can stop on it


def test_adamw_matches_torch(torch, rng):
    """20 updates with warm-up, decay, clipping and two parameter groups, against torch.optim.AdamW.

    Tolerance: each update rounds p (relative eps/2) and computes the step with a few float32 operations
    (relative error a few eps of lr); rounding errors of 20 updates of random sign grow like sqrt(20), so
    f32_tol(20, scale=max|p|) bounds the difference."""
    params = _params(rng)
    opt = AdamW(params.items(), lr=1e-2)
    tp = {n: torch.tensor(p.data.copy(), requires_grad=True) for n, p in params.items()}
    topt = torch.optim.AdamW([{"params": [tp[n] for n in SHAPES if decays(n, params[n])], "weight_decay": 0.01},
                              {"params": [tp[n] for n in SHAPES if not decays(n, params[n])], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    sched = LinearWarmupDecay(1e-2, 20, 0.1)
    for step in range(20):
        for n, p in params.items():
            g = (rng.standard_normal(p.shape) * (3.0 if step % 5 == 0 else 0.3)).astype(np.float32)
            p.grad = g.copy()
            tp[n].grad = torch.tensor(g)
        clip_grad_norm(opt.parameters(), 5.0)
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 5.0)
        opt.step(lr=sched(step))
        for group in topt.param_groups:
            group["lr"] = sched(step)
        topt.step()
    for n, p in params.items():
        assert p.data.dtype == np.float32
        ref = tp[n].detach().numpy()
        _checks.assert_close(p.data, ref, atol=_checks.f32_tol(20, scale=np.abs(ref).max()), name=n)
    # the parameters really moved (the comparison is not of two untouched copies)
    assert any(np.abs(p.data - _params(np.random.default_rng(1234))[n].data).max() > 1e-3 for n, p in params.items())


def test_state_dict_continues_exactly(rng):
    params = _params(rng)
    grads = [{n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()} for _ in range(10)]

    def run(opt, ps, gs):
        for g in gs:
            for n, p in ps.items():
                p.grad = g[n].copy()
            opt.step(lr=1e-2)

    straight = {n: Tensor(p.data.copy(), requires_grad=True) for n, p in params.items()}
    run(AdamW(straight.items()), straight, grads)

    first = {n: Tensor(p.data.copy(), requires_grad=True) for n, p in params.items()}
    opt1 = AdamW(first.items())
    run(opt1, first, grads[:4])
    state = opt1.state_dict()
    second = {n: Tensor(p.data.copy(), requires_grad=True) for n, p in first.items()}
    opt2 = AdamW(second.items())
    opt2.load_state_dict(state)
    run(opt2, second, grads[4:])
    for n in SHAPES:
        assert np.array_equal(second[n].data, straight[n].data), n  # bitwise: the same arithmetic in the same order
    with pytest.raises(ValueError, match="no entry for"):
        AdamW([("other", Tensor(np.zeros(3, np.float32)))]).load_state_dict(state)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        AdamW([])
    with pytest.raises(ValueError, match="float32"):
        AdamW([("w", Tensor(np.zeros(3)))])
    with pytest.raises(ValueError, match="total_steps"):
        LinearWarmupDecay(1e-3, 0)


# ---- on the GPU (the simulator without one): clipping and the skip stay on the device ---------------------------

def _on_device(params):
    from minidistil.kernels import _cuda
    return {n: Tensor(_cuda.to_device(p.data.copy()), requires_grad=True) for n, p in params.items()}


@pytest.mark.cuda
def test_clipping_on_the_device_gives_the_cpu_parameters(rng):
    """5 updates with clipping (norm ~5-50 clipped to 1, and one step under it) and AdamW, on the host with the
    float norm read back and on the device with clip_grad_norm(sync=False) and AdamW.step(norm=...): the same
    parameters and moments. Tolerance: both norms are float64 sums of exact squares (within n eps64 relative),
    so each coefficient rounds to float32 at most one ulp apart and each clipped gradient is within
    e = 2 eps32 max|g| of the host's. An Adam update moves by at most lr / eps per unit of gradient, so p is off by
    steps * lr * e / eps plus the update's own roundings (f32_tol of 10 roundings per step, as in test_gpu);
    m mixes the gradients (off by <= e), v their squares (off by <= 2 max|g| e plus its roundings)."""
    from minidistil.kernels import _cuda
    from minidistil.kernels.adamw import update_bound
    host = _params(rng)
    dev = _on_device(host)
    lr, eps, steps = 1e-2, 1e-3, 5
    opt_h, opt_d = AdamW(host.items(), lr=lr, eps=eps), AdamW(dev.items(), lr=lr, eps=eps)
    gmax = 0.0
    for step in range(steps):
        scale = 0.01 if step == 2 else 3.0
        for n in SHAPES:
            g = (rng.standard_normal(SHAPES[n]) * scale).astype(np.float32)
            host[n].grad, dev[n].grad = g.copy(), _cuda.to_device(g)
        norm_h = clip_grad_norm(opt_h.parameters(), 1.0)
        norm_d = clip_grad_norm(opt_d.parameters(), 1.0, sync=False)
        assert isinstance(norm_h, float) and _cuda.is_device_array(norm_d)
        n_el = sum(p.size for p in host.values())
        assert abs(float(_cuda.to_host(norm_d)[0]) - norm_h) <= n_el * float(np.finfo(np.float64).eps) * norm_h
        gmax = max(gmax, max(float(np.abs(p.grad).max()) for p in host.values()))
        opt_h.step()
        opt_d.step(norm=norm_d)
    e = 2 * float(np.finfo(np.float32).eps) * gmax
    tol_p = steps * lr * e / eps + _checks.f32_tol(10 * steps, scale=update_bound(lr, 0.9, 0.98, steps) + 4.0)
    sh, sd = opt_h.state_dict(), opt_d.state_dict()
    for n in SHAPES:
        assert _cuda.is_device_array(dev[n].data)
        _checks.assert_close(_cuda.to_host(dev[n].data), host[n].data, atol=tol_p, name=n)
        _checks.assert_close(sd["m"][n], sh["m"][n], atol=e, name=f"m[{n}]")
        _checks.assert_close(sd["v"][n], sh["v"][n], atol=2 * gmax * e + _checks.f32_tol(steps, scale=gmax ** 2),
                             name=f"v[{n}]")


@pytest.mark.cuda
def test_a_non_finite_step_is_skipped_on_the_device_and_seen_at_the_next_read(rng, tmp_path):
    """The training loops' update (minidistil.train.run.update) on the device, with a NaN in one gradient: no
    copy back and no wait, the parameters and AdamW's moments keep their values (the skip is decided on the
    device), and the next read (StepRows, when the loop logs) sees the NaN norm and stops the run naming the step;
    the step before it is logged."""
    import json

    from minidistil.kernels import _cuda
    from minidistil.train.parallel import World
    from minidistil.train.run import Diverged, Run, StepRows, update
    dev = _on_device(_params(rng))
    opt = AdamW(dev.items(), lr=1e-2)
    with Run(tmp_path / "run") as run:
        rows = StepRows(run, every=3)
        for step in range(2):
            for n, p in dev.items():
                g = rng.standard_normal(SHAPES[n]).astype(np.float32)
                if step == 1 and n == "vocab_projector.bias":
                    g[3] = np.nan
                p.grad = _cuda.to_device(g)
            if step == 1:
                before = {n: _cuda.to_host(p.data) for n, p in dev.items()}
                moments = {k: {n: _cuda.to_host(a) for n, a in getattr(opt, k).items()} for k in ("m", "v")}
            with _cuda.count_traffic() as c:
                norm = update(run, World(), opt, step, 1.0, 1e-2)
            assert c.get("d2h", 0) == 0 and c.get("sync", 0) == 0, dict(c)
            rows.add({"step": step + 1, "loss": 1.0, "grad_norm": norm})   # pending: nothing read yet
        assert len(rows.pending) == 2 and run.lines == 0
        for n, p in dev.items():
            assert np.array_equal(_cuda.to_host(p.data), before[n]), n
            for k in ("m", "v"):
                assert np.array_equal(_cuda.to_host(getattr(opt, k)[n]), moments[k][n]), (k, n)
        with pytest.raises(Diverged, match=r"step 2: the gradient norm is nan"):
            rows.flush()
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1] and np.isfinite(logged[0]["grad_norm"])
