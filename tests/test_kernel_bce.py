"""Binary cross-entropy with logits: the three test levels (finite differences, float32 versions vs reference,
torch), large logits without overflow, and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import bce as K


def _data(rng, N, Kl, scale=4.0, soft=False):
    x = (rng.standard_normal((N, Kl)) * scale).astype(np.float32)
    y = rng.random((N, Kl)).astype(np.float32) if soft else (rng.random((N, Kl)) < 0.3).astype(np.float32)
    return x, y


def _reference(x, y, dloss):
    loss, c = K.bce_with_logits_forward_ref(x.astype(np.float64), y.astype(np.float64))
    return loss, K.bce_with_logits_backward_ref(dloss, c)


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    x = rng.standard_normal((4, 5)) * 3
    y = rng.random((4, 5))  # soft targets in [0, 1]: the formula holds for them too
    dloss = 1.4
    dx = K.bce_with_logits_backward_ref(dloss, K.bce_with_logits_forward_ref(x, y)[1])
    num = _checks.numerical_gradient(lambda: dloss * K.bce_with_logits_forward_ref(x, y)[0], x)
    assert _checks.relative_error(dx, num) <= 1e-6


# (b) every float32 version against the reference ----------------------------------------------------------------
# Tolerances: K.tolerances (elements good to f32_tol(1, scale=max|x|), rows add f32_tol(K); gradient f32_tol(1)).

@pytest.mark.parametrize("N,Kl,soft", [(1, 1, False), (1, 13, True), (7, 13, False), (7, 1, True), (5, 300, False)])
def test_cpu_matches_reference(rng, N, Kl, soft):
    x, y = _data(rng, N, Kl, soft=soft)
    dloss = 0.9
    loss_ref, dx_ref = _reference(x, y, dloss)
    loss, cache = K.bce_with_logits_forward(x, y)
    dx = K.bce_with_logits_backward(dloss, cache)
    assert isinstance(loss, float) and dx.dtype == np.float32
    tol_l, tol_g = K.tolerances(x, dloss)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(dx, dx_ref, atol=tol_g, name="dlogits")


# dloss away from 0: a float32 gradient cannot hold dloss / (N K) below float32's smallest normal
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.floats(0.01, 200), st.integers(0, 2**32 - 1),
       st.floats(0.01, 3) | st.floats(-3, -0.01))
def test_cpu_matches_reference_hypothesis(N, Kl, scale, seed, dloss):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((N, Kl)) * scale).astype(np.float32)
    y = r.random((N, Kl)).astype(np.float32)
    loss_ref, dx_ref = _reference(x, y, dloss)
    loss, cache = K.bce_with_logits_forward(x, y)
    tol_l, tol_g = K.tolerances(x, dloss)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(K.bce_with_logits_backward(dloss, cache), dx_ref, atol=tol_g, name="dlogits")


@pytest.mark.cuda
# (the last shape takes several passes of every strided loop: rows of the loss's sum, the elements of the grid)
@pytest.mark.parametrize("N,Kl", [(1, 1), (7, 13), (3, 70), (_cuda.THREADS + 3, 2 * _cuda.THREADS + 5)])
def test_cuda_matches_reference(rng, N, Kl):
    x, y = _data(rng, N, Kl)
    dloss = 1.3
    loss_ref, dx_ref = _reference(x, y, dloss)
    loss, cache = K.bce_with_logits_forward(_cuda.to_device(x), _cuda.to_device(y))  # dispatches to CUDA
    dx = _cuda.to_host(K.bce_with_logits_backward(dloss, cache))
    assert np.array_equal(_cuda.to_host(K.bce_with_logits_backward(_cuda.device_scalar(dloss), cache)), dx)
    assert dx.dtype == np.float32
    assert _cuda.is_device_array(loss) and tuple(loss.shape) == () and np.dtype(loss.dtype) == np.float32
    loss = float(_cuda.to_host(loss))  # the loss stays on the device: read back here to compare
    tol_l, tol_g = K.tolerances(x, dloss)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(dx, dx_ref, atol=tol_g, name="dlogits")


def test_large_logits_do_not_overflow():
    # exp(100) overflows float32; the max(x, 0) + log1p(exp(-|x|)) form never computes it
    x = np.array([[100.0, -100.0, 0.0]], np.float32)
    y = np.array([[0.0, 1.0, 1.0]], np.float32)
    loss, cache = K.bce_with_logits_forward(x, y)
    assert abs(loss - (100 + 100 + math.log(2)) / 3) < 1e-4
    dx = K.bce_with_logits_backward(3.0, cache)
    _checks.assert_close(dx, [[1.0, -1.0, -0.5]], atol=_checks.f32_tol(1))


# (c) against torch autograd ---------------------------------------------------------------------------------------

def test_matches_torch(torch, rng):
    x, y = _data(rng, 9, 20, soft=True)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.binary_cross_entropy_with_logits(xt, torch.tensor(y))
    lt.backward(torch.tensor(2.0))
    loss, cache = K.bce_with_logits_forward(x, y)
    dx = K.bce_with_logits_backward(2.0, cache)
    tol_l, tol_g = K.tolerances(x, 2.0)
    _checks.assert_close(loss, lt.item(), atol=2 * tol_l, name="loss")  # both sides float32: twice the bound
    _checks.assert_close(dx, xt.grad.numpy(), atol=2 * tol_g, name="dlogits")


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="logits: expected dtype float32, got float64"):
        K.bce_with_logits_forward(x.astype(np.float64), x)
    with pytest.raises(ValueError, match="targets: expected dtype float32, got int64"):
        K.bce_with_logits_forward(x, np.zeros((3, 5), np.int64))
    with pytest.raises(ValueError, match=r"targets: expected the shape of logits \(3, 5\), got \(3, 4\)"):
        K.bce_with_logits_forward(x, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="logits: expected a 2-d array"):
        K.bce_with_logits_forward(np.zeros(5, np.float32), np.zeros(5, np.float32))
