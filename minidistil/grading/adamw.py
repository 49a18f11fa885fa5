"""Exercise adamw: one AdamW step in place (decoupled weight decay, bias correction), checked against
minidistil.kernels.adamw's reference in float64.
"""
import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import CaseOver, Exercise, Session, f32


HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)


def _adamw_variant(p, g, m, v, *, lr, beta1, beta2, eps, weight_decay, step, bias_correction=True, l2=False,
                   decay_after=False):
    """A float64 AdamW step with one deliberate difference (for the hints)."""
    p, g, m, v = (a.astype(np.float64).copy() for a in (p, g, m, v))
    if l2:
        g = g + weight_decay * p
    elif not decay_after:
        p = p * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = (1 - beta1 ** step, 1 - beta2 ** step) if bias_correction else (1.0, 1.0)
    p = p - lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
    if decay_after and not l2:
        p = p * (1 - lr * weight_decay)
    return p, m, v


def run(s: Session):
    from minidistil.kernels import adamw as K
    r = np.random.default_rng(6)
    cases = [  # (label, shape, weight_decay, step, start from zero moments)
        ("first step from zero moments (3, 13), wd=0.1", (3, 13), 0.1, 1, True),
        ("step 10 from a mid-training state (7,), wd=0.1", (7,), 0.1, 10, False),
        ("step 1000, wd=0 (2, 2, 3)", (2, 2, 3), 0.0, 1000, False),
        ("step 3, strong decay wd=1.0 (5, 4)", (5, 4), 1.0, 3, False),
    ]
    for label, shape, wd, step, zero in cases:
        p0 = r.standard_normal(shape) * 2
        g = r.standard_normal(shape) * 0.05  # gradients of the size of wd * param, so L2 and decoupled differ
        m0 = np.zeros(shape) if zero else r.standard_normal(shape) * 0.05
        v0 = np.zeros(shape) if zero else r.uniform(1e-4, 1e-2, shape)
        p32, g32, m32, v32 = f32(p0, g, m0, v0)
        state = [a.astype(np.float64) for a in (p32, m32, v32)]
        K.adamw_step_ref(state[0], g32.astype(np.float64), state[1], state[2], weight_decay=wd, step=step, **HP)
        # as in tests/test_kernel_adamw.py: ~10 roundings of the parameter and of the update
        upd = float(np.abs(state[0] - p32 * (1 - HP["lr"] * wd)).max())
        tol_p = _checks.f32_tol(1, scale=float(np.abs(state[0]).max()) + upd)
        tol_m = _checks.f32_tol(1, scale=float(np.abs(state[1]).max()))
        tol_v = _checks.f32_tol(1, scale=float(np.abs(state[2]).max()))
        kw = dict(weight_decay=wd, step=step, **HP)
        args = (p32, g32, m32, v32)
        with s.case(label):
            sp, sg, sm, sv = (a.copy() for a in args)
            s.call("adamw_step", sp, sg, sm, sv, **kw)
            s.expect_unchanged("grad", g32, sg)
            if np.array_equal(sp, p32):
                s.check.fail("param did not change: the update must happen IN PLACE",
                             "`param = param - ...` only rebinds the local name; write param -= ... or "
                             "param[...] = ... (the same for m and v)")
                raise CaseOver
            s.expect_array("param", sp, state[0], tol_p, variants={
                "no bias correction: divide m by (1 - beta1^step) and v by (1 - beta2^step)":
                    lambda: _adamw_variant(*args, **kw, bias_correction=False)[0],
                "that is Adam with L2 regularisation (wd * param added to the gradient); AdamW DECOUPLES the decay: "
                "param *= (1 - lr * weight_decay), outside the moments":
                    lambda: _adamw_variant(*args, **kw, l2=True)[0],
                "decay the parameter BEFORE the Adam update (torch: param *= 1 - lr * wd, then the step)":
                    lambda: _adamw_variant(*args, **kw, decay_after=True)[0],
                "the step counter is 1-based: bias corrections use 1 - beta^step with step >= 1 as given":
                    lambda: _adamw_variant(*args, **{**kw, "step": step + 1})[0],
            })
            s.expect_array("m", sm, state[1], tol_m, variants={
                "m = beta1 * m + (1 - beta1) * grad (the weights are swapped)":
                    lambda: (1 - HP["beta1"]) * m32 + HP["beta1"] * g32,
                "m holds the raw first moment; the bias correction only enters the update, never m itself":
                    lambda: state[1] / (1 - HP["beta1"] ** step)})
            s.expect_array("v", sv, state[2], tol_v, variants={
                "v = beta2 * v + (1 - beta2) * grad**2 (the square of the gradient)":
                    lambda: HP["beta2"] * v32.astype(np.float64) + (1 - HP["beta2"]) * g32,
                "v holds the raw second moment; the bias correction only enters the update":
                    lambda: state[2] / (1 - HP["beta2"] ** step)})


EXERCISE = Exercise("adamw", "one AdamW step in place (decoupled weight decay, bias correction)", ("adamw_step",), run,
                    in_place=("param", "m", "v"),
                    nonfinite_hint="bias correction divides by 1 - beta^step: step starts at 1, never 0")
