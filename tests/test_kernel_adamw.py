"""AdamW and sum of squares: float32 versions vs the float64 reference, 20 steps vs torch.optim.AdamW, bad input.

There is no gradient to check by finite differences (an optimiser step is an update, not an op); instead the
reference is checked against the update written out by hand for step 1, where it has a closed form.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import adamw as K

HP = dict(lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6)
SHAPES = [(1,), (13,), (7, 13), (2, 7, 13), (3, 1, 768)]
EPS64 = float(np.finfo(np.float64).eps)


def _run(step_fn, p0, grads, weight_decay, device=False, **hp):
    """`len(grads)` steps from m = v = 0; returns (param, m, v) as numpy arrays."""
    hp = {**HP, **hp}
    arrs = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    if device:
        arrs = [_cuda.to_device(a) for a in arrs]
    for t, g in enumerate(grads, start=1):
        step_fn(arrs[0], _cuda.to_device(g) if device else g, arrs[1], arrs[2], weight_decay=weight_decay,
                step=t, **hp)
    return [_cuda.to_host(a) for a in arrs]


def _grads(rng, shape, steps):
    # grads of varied size per element (some near zero, where v is tiny and eps matters)
    scale = np.exp(rng.uniform(-6, 1, size=shape))
    return [(rng.standard_normal(shape) * scale).astype(np.float32) for _ in range(steps)]


# the reference against the update written by hand ----------------------------------------------------------------

def test_ref_first_step_closed_form(rng):
    # step 1 from m = v = 0: m = (1-b1) g, v = (1-b2) g^2, bc1 = 1-b1, bc2 = 1-b2, so
    # param = param (1 - lr wd) - lr g / (|g| + eps)    (the bias corrections cancel: a sign step of size ~lr)
    p = rng.standard_normal(50)
    g = rng.standard_normal(50)
    wd = 0.01
    expected = p * (1 - HP["lr"] * wd) - HP["lr"] * g / (np.abs(g) + HP["eps"])
    m, v = np.zeros(50), np.zeros(50)
    K.adamw_step_ref(p, g, m, v, weight_decay=wd, step=1, **HP)
    assert _checks.relative_error(p, expected) <= 1e-12
    assert _checks.relative_error(m, (1 - HP["beta1"]) * g) <= 1e-15
    assert _checks.relative_error(v, (1 - HP["beta2"]) * g * g) <= 1e-15


def test_update_bound_holds(rng):
    # the bound used by every tolerance below: |Adam step| <= update_bound, checked on adversarial-ish grads
    # (constant sign, growing, shrinking, alternating) over 20 steps in float64
    steps = 20
    bound = K.update_bound(HP["lr"], HP["beta1"], HP["beta2"], steps)
    seqs = [np.ones(steps), np.linspace(0.01, 10, steps), np.linspace(10, 0.01, steps),
            (-1.0) ** np.arange(steps), np.r_[np.full(steps - 1, 1e-3), 100.0], rng.standard_normal(steps)]
    for seq in seqs:
        p, m, v = np.zeros(1), np.zeros(1), np.zeros(1)
        for t, g in enumerate(seq, start=1):
            before = p.copy()
            K.adamw_step_ref(p, np.array([g]), m, v, weight_decay=0.0, step=t, **HP)
            assert abs(p - before)[0] <= bound * (1 + 1e-12)


# every float32 version against the float64 reference (tolerances: K.adamw_tolerances) ---------------------------

@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference(rng, shape, weight_decay):
    steps = 20
    p0 = rng.standard_normal(shape).astype(np.float32)
    grads = _grads(rng, shape, steps)
    p64, m64, v64 = _run(K.adamw_step_ref, p0.astype(np.float64), [g.astype(np.float64) for g in grads],
                         weight_decay)
    p32, m32, v32 = _run(K.adamw_step, p0, grads, weight_decay)
    assert p32.dtype == m32.dtype == v32.dtype == np.float32
    tol_p, tol_m, tol_v = K.adamw_tolerances(p64, m64, v64, HP["lr"], HP["beta1"], HP["beta2"], steps)
    _checks.assert_close(p32, p64, atol=tol_p, name="param")
    _checks.assert_close(m32, m64, atol=tol_m, name="m")
    _checks.assert_close(v32, v64, atol=tol_v, name="v")
    # the step really moved every parameter by about lr per step (the test cannot pass with a no-op kernel)
    assert np.all(np.abs(p32 - p0) > 0)


@settings(max_examples=20, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.floats(-100, 100, width=32)),
       st.floats(0.0, 0.1), st.integers(1, 1000))
def test_cpu_matches_reference_hypothesis(g, weight_decay, step):
    # one step at an arbitrary step count from random m and v >= 0 (a state in the middle of training)
    r = np.random.default_rng(step)
    p0 = r.standard_normal(g.shape).astype(np.float32)
    m0 = r.standard_normal(g.shape).astype(np.float32)
    v0 = r.uniform(0, 2, g.shape).astype(np.float32)
    state32 = [a.copy() for a in (p0, m0, v0)]
    state64 = [a.astype(np.float64) for a in (p0, m0, v0)]
    K.adamw_step(state32[0], g, state32[1], state32[2], weight_decay=weight_decay, step=step, **HP)
    K.adamw_step_ref(state64[0], g.astype(np.float64), state64[1], state64[2], weight_decay=weight_decay,
                     step=step, **HP)
    # from an arbitrary state the update is bounded by lr sqrt(bc2)/bc1 |m| / (sqrt(v) + eps sqrt(bc2)), at most
    # lr / bc1 * max|m| / eps: we use the float64 update itself as the scale (~10 roundings of it)
    upd = float(np.abs(state64[0] - p0.astype(np.float64) * (1 - HP["lr"] * weight_decay)).max(initial=0.0))
    tol_p = _checks.f32_tol(1, scale=float(np.abs(state64[0]).max(initial=0.0)) + upd)
    _checks.assert_close(state32[0], state64[0], atol=tol_p, name="param")
    _checks.assert_close(state32[1], state64[1], atol=_checks.f32_tol(1, scale=float(np.abs(state64[1]).max())))
    _checks.assert_close(state32[2], state64[2], atol=_checks.f32_tol(1, scale=float(np.abs(state64[2]).max())))


@pytest.mark.cuda
# (the last shape: more elements than the sum of squares' grid holds threads, so its grid-stride loop loops)
@pytest.mark.parametrize("shape", [(1,), (7, 13), (2, 40), (2 * K._SUMSQ_MAX_BLOCKS * _cuda.THREADS + 5,)])
def test_cuda_matches_reference(rng, shape):
    steps = 3
    p0 = rng.standard_normal(shape).astype(np.float32)
    grads = _grads(rng, shape, steps)
    p64, m64, v64 = _run(K.adamw_step_ref, p0.astype(np.float64), [g.astype(np.float64) for g in grads], 0.01)
    pc, mc, vc = _run(K.adamw_step, p0, grads, 0.01, device=True)   # device arrays dispatch to CUDA
    assert pc.dtype == mc.dtype == vc.dtype == np.float32
    tol_p, tol_m, tol_v = K.adamw_tolerances(p64, m64, v64, HP["lr"], HP["beta1"], HP["beta2"], steps)
    _checks.assert_close(pc, p64, atol=tol_p, name="param")
    _checks.assert_close(mc, m64, atol=tol_m, name="m")
    _checks.assert_close(vc, v64, atol=tol_v, name="v")
    g = grads[0]
    # float32 squares are exact in float64 and all terms are positive: N * eps64 relative, whatever the order
    assert abs(K.sum_of_squares(_cuda.to_device(g)) - K.sum_of_squares_ref(g)) <= g.size * EPS64 * \
        K.sum_of_squares_ref(g)


# sum of squares ---------------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_sum_of_squares_device_adds_every_array_in_one_reduction(rng):
    """Gradient clipping's global norm: every array's partial sums in one buffer, one block adds them, the result
    stays on the device ((1,) float64). Empty arrays and an empty list count 0. float32 squares are exact in float64
    and every term is positive: total * N eps64 relative, whatever the order."""
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (0,), (2 * K._SUMSQ_MAX_BLOCKS *
                                                                              _cuda.THREADS + 7,), (1,))]
    got = K.sum_of_squares_device([_cuda.to_device(a) for a in arrays])
    assert _cuda.is_device_array(got) and tuple(got.shape) == (1,) and np.dtype(got.dtype) == np.float64
    want = sum(K.sum_of_squares_ref(a) for a in arrays)
    n = sum(a.size for a in arrays)
    assert abs(float(_cuda.to_host(got)[0]) - want) <= n * EPS64 * want
    assert float(_cuda.to_host(K.sum_of_squares_device([]))[0]) == 0.0


@pytest.mark.parametrize("n", [0, 1, 13, 1000, 1 << 17])
def test_sum_of_squares_cpu(rng, n):
    a = (rng.standard_normal(n) * 10).astype(np.float32)
    ref = float(np.sum(a.astype(np.float64) ** 2))
    got = K.sum_of_squares(a)
    assert isinstance(got, float)
    assert abs(got - ref) <= n * EPS64 * ref
    assert K.sum_of_squares(a.reshape(1, -1)) == pytest.approx(got, rel=n * EPS64, abs=0)  # any shape


def test_sum_of_squares_accumulates_in_float64():
    # 4097^2 + 4096^2 + 1 = 33562626 is exact in float64 but not in float32 (spacing 4 above 2^25), and 4097^2
    # itself is odd and above 2^24: a float32 square or a float32 sum in any order would be off
    assert K.sum_of_squares(np.array([4097.0, 4096.0, 1.0], np.float32)) == 33562626.0


# against torch.optim.AdamW -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
def test_matches_torch_adamw_20_steps(torch, rng, weight_decay):
    steps, shape = 20, (33, 17)
    p0 = rng.standard_normal(shape).astype(np.float32)
    grads = _grads(rng, shape, steps)
    pt = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.AdamW([pt], lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]), eps=HP["eps"],
                            weight_decay=weight_decay)
    for g in grads:
        pt.grad = torch.tensor(g)
        opt.step()
    state = opt.state[pt]
    p32, m32, v32 = _run(K.adamw_step, p0, grads, weight_decay)
    p64, m64, v64 = _run(K.adamw_step_ref, p0.astype(np.float64), [g.astype(np.float64) for g in grads],
                         weight_decay)
    tol_p, tol_m, tol_v = K.adamw_tolerances(p64, m64, v64, HP["lr"], HP["beta1"], HP["beta2"], steps)
    # torch and we both sit within the one-sided float32 tolerance of the float64 result: twice it between us
    _checks.assert_close(p32, pt.detach().numpy(), atol=2 * tol_p, name="param vs torch")
    _checks.assert_close(m32, state["exp_avg"].numpy(), atol=2 * tol_m, name="m vs torch")
    _checks.assert_close(v32, state["exp_avg_sq"].numpy(), atol=2 * tol_v, name="v vs torch")
    _checks.assert_close(pt.detach().numpy(), p64, atol=tol_p, name="torch vs float64")


def test_sum_of_squares_matches_torch_clip_norm(torch, rng):
    # clip_grad_norm_ returns the global 2-norm; ours is sqrt(sum of squares) over the arrays
    gs = [rng.standard_normal(s).astype(np.float32) for s in [(30, 7), (7,), (5, 5, 5)]]
    params = [torch.nn.Parameter(torch.zeros(g.shape)) for g in gs]
    for p, g in zip(params, gs):
        p.grad = torch.tensor(g)
    norm_t = float(torch.nn.utils.clip_grad_norm_(params, max_norm=1e9))
    norm = math.sqrt(sum(K.sum_of_squares(g) for g in gs))
    n = sum(g.size for g in gs)
    assert abs(norm - norm_t) <= _checks.f32_tol(n, scale=norm)   # torch accumulates in float32


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    p, g, m, v = (np.zeros((2, 3), np.float32) for _ in range(4))
    kw = dict(weight_decay=0.01, step=1, **HP)
    with pytest.raises(ValueError, match=r"grad: expected the shape of param \(2, 3\), got \(3, 2\)"):
        K.adamw_step(p, np.zeros((3, 2), np.float32), m, v, **kw)
    with pytest.raises(ValueError, match=r"v: expected the shape of param"):
        K.adamw_step(p, g, m, np.zeros(6, np.float32), **kw)
    with pytest.raises(ValueError, match="m: expected dtype float32, got float64"):
        K.adamw_step(p, g, m.astype(np.float64), v, **kw)
    with pytest.raises(ValueError, match="param: expected dtype float32, got float16"):
        K.adamw_step(p.astype(np.float16), g, m, v, **kw)
    with pytest.raises(ValueError, match="grad: expected a C-contiguous"):
        K.adamw_step(p, np.zeros((3, 2), np.float32).T, m, v, **kw)
    with pytest.raises(ValueError, match="step: expected an integer >= 1"):
        K.adamw_step(p, g, m, v, **{**kw, "step": 0})
    with pytest.raises(ValueError, match=r"beta2: expected a real number in \[0.0, 1.0\)"):
        K.adamw_step(p, g, m, v, **{**kw, "beta2": 1.0})
    with pytest.raises(ValueError, match="lr: expected a real number"):
        K.adamw_step(p, g, m, v, **{**kw, "lr": float("nan")})
    with pytest.raises(ValueError, match="weight_decay: expected a real number"):
        K.adamw_step(p, g, m, v, **{**kw, "weight_decay": -0.1})
    with pytest.raises(ValueError, match="a: expected dtype float32"):
        K.sum_of_squares(np.zeros(3))


@pytest.mark.cuda
def test_cuda_rejects_mixed_host_and_device():
    p, g, m, v = (np.zeros(4, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match="grad: expected a device array like param"):
        K.adamw_step(_cuda.to_device(p), g, _cuda.to_device(m), _cuda.to_device(v), weight_decay=0.0, step=1, **HP)


# gradient clipping on the device ----------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("max_norm", [0.5, 1e6])   # clips, and does not (coef 1: nothing is written)
def test_clip_on_the_device_follows_the_host_rule(rng, max_norm):
    """clip_coefficient_device and clip_scale_device_ against the host's rule (core.optim.clip_grad_norm). The norm:
    float32 squares are exact in float64 and positive, so both sums are within n eps64 relative of the exact one,
    whatever the order. coef = min(1, max_norm / (norm + 1e-6)) in float64 is then within ~n eps64 relative of the
    host's, and rounding it to float32 may land one float32 ulp (<= eps32 relative) away. Each scaled element is
    one float32 product: |dev - host| <= (eps32 + eps32) |g| (the coefficients' ulp and the two roundings)."""
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (0,), (2 * _cuda.THREADS + 7,), (1,))]
    n = sum(a.size for a in arrays)
    norm_h = math.sqrt(sum(K.sum_of_squares_ref(a) for a in arrays))
    coef_h = min(1.0, max_norm / (norm_h + 1e-6))
    dev = [_cuda.to_device(a) for a in arrays]
    norm, coef = K.clip_coefficient_device(dev, max_norm)
    assert tuple(norm.shape) == (1,) and np.dtype(norm.dtype) == np.float64
    assert tuple(coef.shape) == (1,) and np.dtype(coef.dtype) == np.float32
    got_norm, got_coef = float(_cuda.to_host(norm)[0]), float(_cuda.to_host(coef)[0])
    assert abs(got_norm - norm_h) <= n * EPS64 * norm_h
    eps32 = float(np.finfo(np.float32).eps)
    assert abs(got_coef - coef_h) <= eps32 * coef_h
    assert (got_coef == 1.0) == (max_norm > norm_h)
    for a, d in zip(arrays, dev):
        got = _cuda.to_host(K.clip_scale_device_(d, coef))
        assert got.dtype == np.float32
        assert np.all(np.abs(got - a * np.float32(coef_h)) <= 2 * eps32 * np.abs(a))
        if got_coef == 1.0:
            assert np.array_equal(got, a)


@pytest.mark.cuda
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_norm_skips_the_update_on_the_device(rng, bad):
    """A gradient holding inf or NaN: the device norm is not finite, the coefficient is 1 (nothing is scaled), and
    adamw_step_cuda given that norm leaves param, m and v bit for bit as they were; a finite norm updates them."""
    p0, g = (rng.standard_normal(37).astype(np.float32) for _ in range(2))
    m0, v0 = (np.abs(rng.standard_normal(37)).astype(np.float32) for _ in range(2))
    g[5] = bad
    pd, gd, md, vd = (_cuda.to_device(a.copy()) for a in (p0, g, m0, v0))
    norm, coef = K.clip_coefficient_device([gd], 1.0)
    assert not math.isfinite(float(_cuda.to_host(norm)[0])) and float(_cuda.to_host(coef)[0]) == 1.0
    K.clip_scale_device_(gd, coef)
    assert np.array_equal(_cuda.to_host(gd), g, equal_nan=True)
    K.adamw_step(pd, gd, md, vd, weight_decay=0.01, step=3, norm=norm, **HP)
    for before, d in ((p0, pd), (m0, md), (v0, vd)):
        assert np.array_equal(_cuda.to_host(d), before)
    g[5] = 0.0
    gd = _cuda.to_device(g)
    norm, _ = K.clip_coefficient_device([gd], 1e6)
    K.adamw_step(pd, gd, md, vd, weight_decay=0.01, step=3, norm=norm, **HP)
    assert not np.array_equal(_cuda.to_host(pd), p0) and not np.array_equal(_cuda.to_host(md), m0)


def test_the_device_norm_is_refused_on_the_cpu_and_checked_on_the_device(rng):
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="norm: the on-device skip is for device arrays"):
        K.adamw_step(p, p.copy(), p.copy(), p.copy(), weight_decay=0.0, step=1, norm=np.zeros(1), **HP)
