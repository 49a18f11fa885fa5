"""Softmax and log-softmax: finite differences, float32 versions vs reference, masking values, torch, bad input.

Tolerances come from `softmax.tolerances` (derived from f32_tol with the row length N and the data; the derivation
is in its docstring). Log-softmax outputs of masked entries (~ float32 min) are compared with rtol f32_tol(1).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import softmax as K

SHAPES = [(1, 1), (7, 1), (1, 13), (7, 13), (2, 7, 13), (3, 1, 768), (1, 768)]
F32_MIN = np.finfo(np.float32).min


def _data(rng, shape, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


def _check_against_ref(x, dy, y, dx, ly, ldx):
    """Softmax (y, dx) and log-softmax (ly, ldx) results in float32 against the float64 reference."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    tol_sm, tol_sm_dx, tol_ls, tol_ls_dx = K.tolerances(x64, dy64)
    y_ref, c_ref = K.softmax_forward_ref(x64)
    ly_ref, lc_ref = K.log_softmax_forward_ref(x64)
    assert y.dtype == dx.dtype == ly.dtype == ldx.dtype == np.float32
    _checks.assert_close(y, y_ref, atol=tol_sm, name="softmax y")
    _checks.assert_close(dx, K.softmax_backward_ref(dy64, c_ref), atol=tol_sm_dx, name="softmax dx")
    _checks.assert_close(ly, ly_ref, atol=tol_ls, rtol=_checks.f32_tol(1), name="log_softmax y")
    _checks.assert_close(ldx, K.log_softmax_backward_ref(dy64, lc_ref), atol=tol_ls_dx, name="log_softmax dx")


def _run(x, dy):
    y, c = K.softmax_forward(x)
    dx = K.softmax_backward(dy, c)
    ly, lc = K.log_softmax_forward(x)
    ldx = K.log_softmax_backward(dy, lc)
    return y, dx, ly, ldx


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    x = rng.standard_normal((3, 5)) * 2
    g = rng.standard_normal((3, 5))  # loss = sum(g * y), so dL/dy = g
    loss = lambda: float((g * K.softmax_forward_ref(x)[0]).sum())
    dx = K.softmax_backward_ref(g, K.softmax_forward_ref(x)[1])
    assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6
    loss = lambda: float((g * K.log_softmax_forward_ref(x)[0]).sum())
    dx = K.log_softmax_backward_ref(g, K.log_softmax_forward_ref(x)[1])
    assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6


# (b) every float32 version against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference(rng, shape):
    x, dy = _data(rng, shape)
    _check_against_ref(x, dy, *_run(x, dy))


def test_masking_values_give_no_nan(rng):
    # row 0: keys 5.. masked with float32 min (attention padding); row 1: every entry float32 min (a fully padded
    # query row); row 2: all equal and very negative; row 3: ordinary
    x, dy = _data(rng, (4, 13))
    x[0, 5:] = F32_MIN
    x[1] = F32_MIN
    x[2] = -1e30
    y, dx, ly, ldx = _run(x, dy)
    for name, a in (("y", y), ("dx", dx), ("log y", ly), ("log dx", ldx)):
        assert np.isfinite(a).all(), f"{name} is not finite"
    assert (y[0, 5:] == 0).all() and (dx[0, 5:] == 0).all()      # exp(min - m) underflows to exactly 0
    _checks.assert_close(y[0, :5].sum(), 1.0, atol=_checks.f32_tol(5))
    _checks.assert_close(y[1:3], np.full((2, 13), 1 / 13), atol=_checks.f32_tol(13, scale=1 / 13))  # uniform
    _check_against_ref(x, dy, y, dx, ly, ldx)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.one_of(st.floats(-50, 50, width=32), st.just(float(F32_MIN)))),
       st.integers(0, 2**32 - 1))
def test_cpu_matches_reference_hypothesis(x, seed):
    dy = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    _check_against_ref(x, dy, *_run(x, dy))


@pytest.mark.cuda
# (the last shape takes more than one pass of every strided loop, whatever THREADS is)
@pytest.mark.parametrize("shape", [(1, 1), (3, 13), (2, 3, 40), (3, 2 * _cuda.THREADS + 3)])
def test_cuda_matches_reference(rng, shape):
    x, dy = _data(rng, shape)
    x.reshape(-1, shape[-1])[0, 1:] = F32_MIN  # one masked row (all but its first entry)
    out = _run(_cuda.to_device(x), _cuda.to_device(dy))  # dispatches to CUDA on device arrays
    _check_against_ref(x, dy, *(_cuda.to_host(a) for a in out))


# (c) against torch autograd ---------------------------------------------------------------------------------------

def test_matches_torch(torch, rng):
    x, dy = _data(rng, (4, 7, 50))
    x[0, :, 40:] = F32_MIN
    y, dx, ly, ldx = _run(x, dy)
    xt = torch.tensor(x, requires_grad=True)
    torch.softmax(xt, dim=-1).backward(torch.tensor(dy))
    xl = torch.tensor(x, requires_grad=True)
    torch.log_softmax(xl, dim=-1).backward(torch.tensor(dy))
    # torch is float32 too: each side is within the derived tolerance of the exact result, so twice it between them
    tol_sm, tol_sm_dx, tol_ls, tol_ls_dx = (2 * t for t in K.tolerances(x.astype(np.float64), dy.astype(np.float64)))
    _checks.assert_close(y, torch.softmax(torch.tensor(x), -1).numpy(), atol=tol_sm, name="softmax y")
    _checks.assert_close(dx, xt.grad.numpy(), atol=tol_sm_dx, name="softmax dx")
    _checks.assert_close(ly, torch.log_softmax(torch.tensor(x), -1).numpy(), atol=tol_ls,
                         rtol=2 * _checks.f32_tol(1), name="log_softmax y")
    _checks.assert_close(ldx, xl.grad.numpy(), atol=tol_ls_dx, name="log_softmax dx")


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        K.softmax_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.log_softmax_forward(np.zeros((3, 2), np.float32).T)
    with pytest.raises(ValueError, match="x: expected a 1 or 2"):
        K.softmax_forward(np.float32(1.0) * np.ones((), np.float32))
    with pytest.raises(ValueError, match="x: expected a last axis of at least 1"):
        K.softmax_forward(np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="dy: expected shape"):
        K.softmax_backward(np.zeros((2, 4), np.float32), K.softmax_forward(x)[1])
    with pytest.raises(ValueError, match="dy: expected shape"):
        K.log_softmax_backward(np.zeros((3, 3), np.float32), K.log_softmax_forward(x)[1])
