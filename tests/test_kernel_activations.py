"""tanh and ReLU: finite differences, float32 versions vs reference, torch, bad input.

Tolerances: tanh is one float32 libm call, so a few ulp of |y| <= 1: TANH_TOL = f32_tol(1); its backward adds the
forward's error through 1 - y^2 (2|y| * TANH_TOL) and one product: tanh_backward_tol(max|dy|). ReLU is exact (0).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import activations as K

SHAPES = [(1, 1), (7, 1), (1, 13), (7, 13), (2, 7, 13), (3, 1, 768), (13,)]


def _data(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[::5] = 0.0  # ReLU's kink: the gradient at 0 is 0, as in torch
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


def _check_against_ref(x, dy, ty, tdx, ry, rdx):
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    assert ty.dtype == tdx.dtype == ry.dtype == rdx.dtype == np.float32
    y_ref, c_ref = K.tanh_forward_ref(x64)
    _checks.assert_close(ty, y_ref, atol=K.TANH_TOL, name="tanh y")
    dymax = float(np.abs(dy).max(initial=0.0))
    _checks.assert_close(tdx, K.tanh_backward_ref(dy64, c_ref), atol=K.tanh_backward_tol(dymax), name="tanh dx")
    assert np.array_equal(ry, np.maximum(x, 0)), "relu y"
    assert np.array_equal(rdx, np.where(x > 0, dy, 0)), "relu dx"


def _run(x, dy):
    ty, tc = K.tanh_forward(x)
    ry, rc = K.relu_forward(x)
    return ty, K.tanh_backward(dy, tc), ry, K.relu_backward(dy, rc)


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    x = rng.standard_normal((3, 5)) * 2
    x[np.abs(x) < 1e-3] = 0.5  # finite differences across ReLU's kink are meaningless: keep |x| >> h
    g = rng.standard_normal((3, 5))  # loss = sum(g * y), so dL/dy = g
    for fwd, bwd in ((K.tanh_forward_ref, K.tanh_backward_ref), (K.relu_forward_ref, K.relu_backward_ref)):
        loss = lambda fwd=fwd: float((g * fwd(x)[0]).sum())
        dx = bwd(g, fwd(x)[1])
        assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6


# (b) every float32 version against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference(rng, shape):
    x, dy = _data(rng, shape)
    _check_against_ref(x, dy, *_run(x, dy))


def test_saturation_and_extremes():
    x = np.array([-1e30, -20.0, -9.0, -1e-30, 0.0, 1e-30, 9.0, 20.0, 1e30], np.float32)
    dy = np.ones_like(x)
    ty, tdx, ry, rdx = _run(x, dy)
    assert np.isfinite(ty).all() and np.isfinite(tdx).all()
    assert ty[0] == -1.0 and ty[-1] == 1.0 and tdx[0] == 0.0 and tdx[-1] == 0.0
    _check_against_ref(x, dy, ty, tdx, ry, rdx)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.floats(-50, 50, width=32)),
       st.integers(0, 2**32 - 1))
def test_cpu_matches_reference_hypothesis(x, seed):
    dy = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    _check_against_ref(x, dy, *_run(x, dy))


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1, 1), (3, 13), (2, 3, 40)])
def test_cuda_matches_reference(rng, shape):
    x, dy = _data(rng, shape)
    out = _run(_cuda.to_device(x), _cuda.to_device(dy))  # dispatches to CUDA on device arrays
    _check_against_ref(x, dy, *(_cuda.to_host(a) for a in out))


# (c) against torch autograd ---------------------------------------------------------------------------------------

def test_matches_torch(torch, rng):
    x, dy = _data(rng, (4, 7, 13))
    ty, tdx, ry, rdx = _run(x, dy)
    xt = torch.tensor(x, requires_grad=True)
    torch.tanh(xt).backward(torch.tensor(dy))
    # torch is float32 too: each side is within the tolerance of the exact result, so twice it between them
    _checks.assert_close(ty, torch.tanh(torch.tensor(x)).numpy(), atol=2 * K.TANH_TOL, name="tanh y")
    _checks.assert_close(tdx, xt.grad.numpy(), atol=2 * K.tanh_backward_tol(float(np.abs(dy).max())), name="tanh dx")
    xr = torch.tensor(x, requires_grad=True)
    torch.relu(xr).backward(torch.tensor(dy))
    assert np.array_equal(ry, torch.relu(torch.tensor(x)).numpy())
    assert np.array_equal(rdx, xr.grad.numpy())  # including the 0 gradient at x = 0


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((2, 3), np.float32)
    for fwd, bwd in ((K.tanh_forward, K.tanh_backward), (K.relu_forward, K.relu_backward)):
        with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
            fwd(x.astype(np.float64))
        with pytest.raises(ValueError, match="x: expected a C-contiguous"):
            fwd(np.zeros((3, 2), np.float32).T)
        with pytest.raises(ValueError, match="dy: expected shape"):
            bwd(np.zeros((2, 4), np.float32), fwd(x)[1])
        with pytest.raises(ValueError, match="dy: expected dtype float32"):
            bwd(np.zeros((2, 3), np.float16), fwd(x)[1])
