"""Cosine-embedding loss and MSE: the three test levels (finite differences, float32 versions vs reference, torch),
the no-row-selected convention and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import cosine as K


def _data(rng, N, C, selected="some"):
    a = rng.standard_normal((N, C)).astype(np.float32)
    b = (a + rng.standard_normal((N, C))).astype(np.float32)
    mask = {"none": None, "all": np.ones(N, bool), "nothing": np.zeros(N, bool),
            "some": np.arange(N) % 3 != 1}[selected]
    return a, b, mask


def _refs(a, b, mask, dloss):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    lc, cc = K.cosine_loss_forward_ref(a64, b64, mask)
    lm, cm = K.mse_forward_ref(a64, b64, mask)
    return (lc, *K.cosine_loss_backward_ref(dloss, cc)), (lm, *K.mse_backward_ref(dloss, cm)), cc.n_selected


def _check_both(a, b, mask, dloss, cos_out, mse_out):
    """cos_out / mse_out: (loss, da, db) of a float32 version, compared with the float64 reference."""
    cos_ref, mse_ref, n = _refs(a, b, mask, dloss)
    # tolerances: K.cosine_tolerances / K.mse_tolerances derive them (docstrings there)
    tol_l, tol_g = K.cosine_tolerances(a, b, dloss, n)
    for what, got, want, tol in zip(("cos loss", "cos da", "cos db"), cos_out, cos_ref, (tol_l, tol_g, tol_g)):
        _checks.assert_close(got, want, atol=tol, name=what)
    rtol_l, tol_g = K.mse_tolerances(a, b, dloss, n)
    _checks.assert_close(mse_out[0], mse_ref[0], atol=0.0, rtol=rtol_l, name="mse loss")
    _checks.assert_close(mse_out[1], mse_ref[1], atol=tol_g, name="mse da")
    _checks.assert_close(mse_out[2], mse_ref[2], atol=tol_g, name="mse db")


# (a) the reference backwards against central finite differences in float64 --------------------------------------

@pytest.mark.parametrize("op", ["cosine", "mse"])
def test_ref_backward_matches_finite_differences(rng, op):
    a = rng.standard_normal((4, 5))
    b = rng.standard_normal((4, 5))
    mask = np.array([True, True, False, True])
    fwd, bwd = {"cosine": (K.cosine_loss_forward_ref, K.cosine_loss_backward_ref),
                "mse": (K.mse_forward_ref, K.mse_backward_ref)}[op]
    dloss = 1.9
    da, db = bwd(dloss, fwd(a, b, mask)[1])
    loss = lambda: dloss * fwd(a, b, mask)[0]
    assert _checks.relative_error(da, _checks.numerical_gradient(loss, a)) <= 1e-6
    assert _checks.relative_error(db, _checks.numerical_gradient(loss, b)) <= 1e-6
    assert np.all(da[2] == 0.0) and np.all(db[2] == 0.0)  # an unselected row gets no gradient


# (b) every float32 version against the reference ----------------------------------------------------------------

CASES = [(1, 1, "none"), (1, 13, "all"), (7, 13, "some"), (7, 13, "nothing"), (5, 768, "some")]


@pytest.mark.parametrize("N,C,selected", CASES)
def test_cpu_matches_reference(rng, N, C, selected):
    a, b, mask = _data(rng, N, C, selected)
    dloss = 0.7
    lc, cc = K.cosine_loss_forward(a, b, mask)
    lm, cm = K.mse_forward(a, b, mask)
    cos_out, mse_out = (lc, *K.cosine_loss_backward(dloss, cc)), (lm, *K.mse_backward(dloss, cm))
    assert isinstance(lc, float) and isinstance(lm, float)
    assert all(g.dtype == np.float32 for g in (*cos_out[1:], *mse_out[1:], cc.cos, cc.A, cc.B))
    _check_both(a, b, mask, dloss, cos_out, mse_out)


# dloss away from 0 (a float32 gradient cannot hold values below 1e-38); vectors away from 0 (the cosine's gradient
# grows like 1 / |a|, and at |a|^2 ~ 1e-12 torch's epsilon takes over: a different regime, tested below)
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.floats(0.01, 100), st.integers(0, 2**32 - 1),
       st.floats(0.01, 3) | st.floats(-3, -0.01))
def test_cpu_matches_reference_hypothesis(N, C, scale, seed, dloss):
    r = np.random.default_rng(seed)
    a = (r.standard_normal((N, C)) * scale).astype(np.float32)
    b = (r.standard_normal((N, C)) * scale).astype(np.float32)
    mask = r.random(N) < 0.7
    lc, cc = K.cosine_loss_forward(a, b, mask)
    lm, cm = K.mse_forward(a, b, mask)
    _check_both(a, b, mask, dloss, (lc, *K.cosine_loss_backward(dloss, cc)), (lm, *K.mse_backward(dloss, cm)))


@pytest.mark.cuda
# (the last shape takes several passes of every strided loop: rows of the loss's sum, columns of a row)
@pytest.mark.parametrize("N,C,selected", [(1, 1, "none"), (7, 13, "some"), (3, 70, "all"), (2, 5, "nothing"),
                                          (_cuda.THREADS + 3, 2 * _cuda.THREADS + 5, "some")])
@pytest.mark.parametrize("mask_on", ["host", "device"])
def test_cuda_matches_reference(rng, N, C, selected, mask_on):
    a, b, mask = _data(rng, N, C, selected)
    dloss = 1.3
    ad, bd = _cuda.to_device(a), _cuda.to_device(b)
    m = _cuda.to_device(mask) if mask_on == "device" and mask is not None else mask  # a device mask: used in place
    lc, cc = K.cosine_loss_forward(ad, bd, m)  # dispatches to CUDA
    lm, cm = K.mse_forward(ad, bd, m)
    assert _cuda.is_device_array(cc.cos)
    for loss in (lc, lm):  # the losses stay on the device: read back here to compare
        assert _cuda.is_device_array(loss) and tuple(loss.shape) == () and np.dtype(loss.dtype) == np.float32
    lc, lm = float(_cuda.to_host(lc)), float(_cuda.to_host(lm))
    d = _cuda.device_scalar(dloss)  # the upstream gradient as a device scalar: the same gradients
    for x, y in zip((*K.cosine_loss_backward(d, cc), *K.mse_backward(d, cm)),
                    (*K.cosine_loss_backward(dloss, cc), *K.mse_backward(dloss, cm))):
        assert np.array_equal(_cuda.to_host(x), _cuda.to_host(y))
    cos_out = (lc, *(_cuda.to_host(g) for g in K.cosine_loss_backward(dloss, cc)))
    mse_out = (lm, *(_cuda.to_host(g) for g in K.mse_backward(dloss, cm)))
    assert all(g.dtype == np.float32 for g in (*cos_out[1:], *mse_out[1:]))
    _check_both(a, b, mask, dloss, cos_out, mse_out)


# (c) against torch autograd ---------------------------------------------------------------------------------------

def test_matches_torch(torch, rng):
    a, b, mask = _data(rng, 9, 40, "some")
    F = torch.nn.functional
    sel = torch.tensor(mask)
    dloss = 1.5
    cos_ref, mse_ref = [], []
    for fn, out in ((lambda x, y: F.cosine_embedding_loss(x, y, torch.ones(x.shape[0])), cos_ref),
                    (F.mse_loss, mse_ref)):
        at = torch.tensor(a, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        lt = fn(at[sel], bt[sel])
        lt.backward(torch.tensor(dloss))
        out += [lt.item(), at.grad.numpy(), bt.grad.numpy()]
    lc, cc = K.cosine_loss_forward(a, b, mask)
    lm, cm = K.mse_forward(a, b, mask)
    n = int(mask.sum())
    tol_l, tol_g = K.cosine_tolerances(a, b, dloss, n)
    for got, want, tol in zip((lc, *K.cosine_loss_backward(dloss, cc)), cos_ref, (tol_l, tol_g, tol_g)):
        _checks.assert_close(got, want, atol=2 * tol)  # both sides float32: twice the bound
    rtol_l, tol_g = K.mse_tolerances(a, b, dloss, n)
    _checks.assert_close(lm, mse_ref[0], atol=0.0, rtol=2 * rtol_l)
    for got, want in zip(K.mse_backward(dloss, cm), mse_ref[1:]):
        _checks.assert_close(got, want, atol=2 * tol_g)


def test_zero_vector_follows_torch_epsilon(torch, rng):
    # a zero row: |a|^2 + 1e-12 keeps the division finite; cos = 0 and the loss is 1, as in torch
    a = np.zeros((2, 6), np.float32)
    a[1] = rng.standard_normal(6)
    b = rng.standard_normal((2, 6)).astype(np.float32)
    loss, cache = K.cosine_loss_forward(a, b)
    F = torch.nn.functional
    at = torch.tensor(a, requires_grad=True)
    lt = F.cosine_embedding_loss(at, torch.tensor(b), torch.ones(2))
    lt.backward()
    assert abs(loss - lt.item()) <= 2 * K.cosine_tolerances(a[1:], b[1:], 1.0, 2)[0]
    da, _ = K.cosine_loss_backward(1.0, cache)
    assert np.all(np.isfinite(da))
    _checks.assert_close(da, at.grad.numpy(), atol=0.0, rtol=_checks.f32_tol(6))  # huge (~1e6 / |b|) but equal


def test_no_selected_row_gives_zero_where_torch_gives_nan(torch, rng):
    a, b, mask = _data(rng, 4, 6, "nothing")
    for fwd, bwd in ((K.cosine_loss_forward, K.cosine_loss_backward), (K.mse_forward, K.mse_backward)):
        loss, cache = fwd(a, b, mask)
        assert loss == 0.0
        assert all(np.all(g == 0.0) for g in bwd(1.0, cache))
    sel = torch.tensor(mask)
    assert math.isnan(torch.nn.functional.mse_loss(torch.tensor(a)[sel], torch.tensor(b)[sel]).item())


# bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fwd", [K.cosine_loss_forward, K.mse_forward])
def test_bad_input_names_the_argument(fwd):
    a = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="a: expected dtype float32, got float64"):
        fwd(a.astype(np.float64), a)
    with pytest.raises(ValueError, match=r"b: expected the shape of a \(3, 5\), got \(3, 4\)"):
        fwd(a, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="b: expected a 2-d array"):
        fwd(a, np.zeros((1, 3, 5), np.float32))
    with pytest.raises(ValueError, match="a: expected a C-contiguous"):
        fwd(np.zeros((5, 3), np.float32).T, a)
    with pytest.raises(ValueError, match=r"mask: expected shape \(3\)"):
        fwd(a, a, np.ones(2, bool))
    with pytest.raises(ValueError, match="mask: expected None or a bool/integer array"):
        fwd(a, a, [1, 1, 1])
