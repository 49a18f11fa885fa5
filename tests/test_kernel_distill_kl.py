"""Distillation KL loss: the three test levels (finite differences, float32 versions vs reference, torch), the
no-row-selected convention and bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda, _f32math
from minidistil.kernels import distill_kl as K


def _data(rng, N, V, selected="some", scale=3.0):
    s = (rng.standard_normal((N, V)) * scale).astype(np.float32)
    z = (s + rng.standard_normal((N, V)) * scale).astype(np.float32)  # a teacher correlated with the student
    mask = {"none": None, "all": np.ones(N, bool), "nothing": np.zeros(N, bool),
            "some": np.arange(N) % 3 != 1}[selected]
    return s, z, mask


def _reference(s, z, T, mask, dloss):
    loss, c = K.distill_kl_forward_ref(s.astype(np.float64), z.astype(np.float64), T, mask)
    return loss, K.distill_kl_backward_ref(dloss, c), c.n_selected


# (a) the reference backward against central finite differences in float64 ---------------------------------------

@pytest.mark.parametrize("T", [1.0, 2.0, 0.5])
def test_ref_backward_matches_finite_differences(rng, T):
    s = rng.standard_normal((4, 6)) * 2
    z = rng.standard_normal((4, 6)) * 2
    mask = np.array([True, False, True, True])
    dloss = -0.8
    ds = K.distill_kl_backward_ref(dloss, K.distill_kl_forward_ref(s, z, T, mask)[1])
    num = _checks.numerical_gradient(lambda: dloss * K.distill_kl_forward_ref(s, z, T, mask)[0], s)
    assert _checks.relative_error(ds, num) <= 1e-6
    assert np.all(ds[1] == 0.0)  # an unselected row gets no gradient


def test_ref_is_zero_when_student_equals_teacher(rng):
    s = rng.standard_normal((3, 9))
    loss, c = K.distill_kl_forward_ref(s, s.copy(), 2.0)
    assert abs(loss) < 1e-14
    assert np.abs(K.distill_kl_backward_ref(1.0, c)).max() < 1e-15


# (b) every float32 version against the reference ----------------------------------------------------------------
# Tolerances: K.tolerances (each lse good to f32_tol(V) + f32_tol(1, scale=max|x|/T); see its docstring).

CASES = [(1, 1, "none"), (1, 13, "all"), (7, 13, "some"), (7, 13, "nothing"), (5, 1000, "some")]


@pytest.mark.parametrize("N,V,selected", CASES)
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_cpu_matches_reference(rng, N, V, selected, T):
    s, z, mask = _data(rng, N, V, selected)
    dloss = 0.6
    loss_ref, ds_ref, n = _reference(s, z, T, mask, dloss)
    loss, cache = K.distill_kl_forward(s, z, T, mask)
    ds = K.distill_kl_backward(dloss, cache)
    assert isinstance(loss, float)
    assert ds.dtype == cache.lse_s.dtype == cache.lse_t.dtype == np.float32
    tol_l, tol_g = K.tolerances(s, z, T, dloss, n)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(ds, ds_ref, atol=tol_g, name="dstudent")
    if mask is not None:  # an integer mask (1 = counts) selects the same rows
        loss_i, _ = K.distill_kl_forward(s, z, T, mask.astype(np.int64))
        assert loss_i == loss


# dloss is drawn away from 0: a float32 gradient cannot hold T dloss / n below float32's smallest normal
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.floats(0.1, 20), st.floats(0.25, 8), st.integers(0, 2**32 - 1),
       st.floats(0.01, 3) | st.floats(-3, -0.01))
def test_cpu_matches_reference_hypothesis(N, V, scale, T, seed, dloss):
    r = np.random.default_rng(seed)
    s = (r.standard_normal((N, V)) * scale).astype(np.float32)
    z = (r.standard_normal((N, V)) * scale).astype(np.float32)
    mask = r.random(N) < 0.7
    loss_ref, ds_ref, n = _reference(s, z, T, mask, dloss)
    loss, cache = K.distill_kl_forward(s, z, T, mask)
    tol_l, tol_g = K.tolerances(s, z, T, dloss, n)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(K.distill_kl_backward(dloss, cache), ds_ref, atol=tol_g, name="dstudent")


@pytest.mark.cuda
# (the last shape takes several passes of every strided loop: rows of the loss's sum, columns of a row)
@pytest.mark.parametrize("N,V,selected", [(1, 1, "none"), (7, 13, "some"), (3, 70, "all"), (2, 5, "nothing"),
                                          (_cuda.THREADS + 3, 2 * _cuda.THREADS + 5, "some")])
@pytest.mark.parametrize("mask_on", ["host", "device"])
def test_cuda_matches_reference(rng, N, V, selected, mask_on):
    s, z, mask = _data(rng, N, V, selected)
    T, dloss = 2.0, 1.3
    loss_ref, ds_ref, n = _reference(s, z, T, mask, dloss)
    m = _cuda.to_device(mask) if mask_on == "device" and mask is not None else mask  # a device mask: used in place
    loss, cache = K.distill_kl_forward(_cuda.to_device(s), _cuda.to_device(z), T, m)  # dispatches to CUDA
    assert _cuda.is_device_array(cache.lse_s)
    ds = _cuda.to_host(K.distill_kl_backward(dloss, cache))
    assert np.array_equal(_cuda.to_host(K.distill_kl_backward(_cuda.device_scalar(dloss), cache)), ds)
    assert ds.dtype == np.float32
    assert _cuda.is_device_array(loss) and tuple(loss.shape) == () and np.dtype(loss.dtype) == np.float32
    loss = float(_cuda.to_host(loss))  # the loss stays on the device: read back here to compare
    tol_l, tol_g = K.tolerances(s, z, T, dloss, n)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(ds, ds_ref, atol=tol_g, name="dstudent")


# (c) against torch autograd: the line from DistilBERT's training code -----------------------------------------------

@pytest.mark.parametrize("T", [1.0, 2.0])
def test_matches_torch(torch, rng, T):
    s, z, mask = _data(rng, 9, 50, "some")
    F = torch.nn.functional
    st_ = torch.tensor(s, requires_grad=True)
    sel = torch.tensor(mask)
    lt = F.kl_div(F.log_softmax(st_[sel] / T, -1), F.softmax(torch.tensor(z)[sel] / T, -1),
                  reduction="batchmean") * T ** 2
    lt.backward(torch.tensor(1.5))
    loss, cache = K.distill_kl_forward(s, z, T, mask)
    ds = K.distill_kl_backward(1.5, cache)
    tol_l, tol_g = K.tolerances(s, z, T, 1.5, cache.n_selected)
    _checks.assert_close(loss, lt.item(), atol=2 * tol_l, name="loss")  # both sides float32: twice the bound
    _checks.assert_close(ds, st_.grad.numpy(), atol=2 * tol_g, name="dstudent")


def test_no_selected_row_gives_zero_where_torch_gives_nan(torch, rng):
    s, z, mask = _data(rng, 4, 6, "nothing")
    loss, cache = K.distill_kl_forward(s, z, 2.0, mask)
    assert loss == 0.0
    assert np.all(K.distill_kl_backward(1.0, cache) == 0.0)
    F = torch.nn.functional
    sel = torch.tensor(mask)
    lt = F.kl_div(F.log_softmax(torch.tensor(s)[sel], -1), F.softmax(torch.tensor(z)[sel], -1), reduction="batchmean")
    assert math.isnan(lt.item())


def test_underflowed_teacher_probability_counts_as_zero():
    # teacher p_t = exp(-200) underflows to 0 in float32: 0 * log 0 must give 0, not NaN
    s = np.zeros((1, 3), np.float32)
    z = np.array([[0.0, -200.0, -200.0]], np.float32)
    loss, cache = K.distill_kl_forward(s, z, 1.0)
    loss_ref, _ = K.distill_kl_forward_ref(s.astype(np.float64), z.astype(np.float64), 1.0)
    assert math.isfinite(loss) and abs(loss - loss_ref) < 1e-5  # both ~ log 3
    assert np.all(np.isfinite(K.distill_kl_backward(1.0, cache)))


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    s = np.zeros((3, 5), np.float32)
    with pytest.raises(ValueError, match="student: expected dtype float32, got float64"):
        K.distill_kl_forward(s.astype(np.float64), s, 1.0)
    with pytest.raises(ValueError, match=r"teacher: expected the shape of student \(3, 5\), got \(3, 4\)"):
        K.distill_kl_forward(s, np.zeros((3, 4), np.float32), 1.0)
    with pytest.raises(ValueError, match="teacher: expected a 2-d array"):
        K.distill_kl_forward(s, np.zeros(15, np.float32), 1.0)
    for bad_t in (0.0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="temperature: expected a finite number > 0"):
            K.distill_kl_forward(s, s, bad_t)
    with pytest.raises(ValueError, match=r"mask: expected shape \(3\)"):
        K.distill_kl_forward(s, s, 1.0, np.ones(4, bool))
    with pytest.raises(ValueError, match="mask: expected None or a bool/integer array"):
        K.distill_kl_forward(s, s, 1.0, np.ones(3, np.float32))


# opt-in fast math (fast=True) -------------------------------------------------------------------------------------

@pytest.mark.parametrize("N,V,T", [(1, 1, 1.0), (5, 7, 2.0), (37, 301, 2.0), (8, 2000, 4.0)])
def test_distill_kl_fast_matches_reference(rng, N, V, T):
    s = (rng.standard_normal((N, V)) * 3).astype(np.float32)
    z = (rng.standard_normal((N, V)) * 3).astype(np.float32)
    mask = rng.random(N) < 0.7
    mask[0] = True
    n, dloss = int(mask.sum()), 1.5
    loss, cache = K.distill_kl_forward(s, z, T, mask, fast=True)
    ds = K.distill_kl_backward(dloss, cache, fast=True)
    loss64, c64 = K.distill_kl_forward_ref(s.astype(np.float64), z.astype(np.float64), T, mask)
    ds64 = K.distill_kl_backward_ref(dloss, c64)
    # K.tolerances' derivation with exp_fast's relative error E added where an exp is taken: each lse gains E
    # (a sum of terms each off by E relative), each p gains 2E relative (its lse and its own exp). The row KL then
    # gains 2E (the two lse in d, weighted by sum p_t = 1) + 2E W, W = max_i sum_v p_t |d|; dstudent gains 2 * 2E
    # on each of p_s, p_t, times T |dloss| / n.
    E = _f32math.EXP_FAST_MAX_REL_ERR
    tol_l, tol_g = K.tolerances(s, z, T, dloss, n)
    logp_s, _ = K._log_softmax_ref(s.astype(np.float64) / T)
    logp_t, _ = K._log_softmax_ref(z.astype(np.float64) / T)
    W = float((np.exp(logp_t) * np.abs(logp_t - logp_s))[mask].sum(axis=-1).max(initial=0.0))
    assert ds.dtype == np.float32
    _checks.assert_close(loss, loss64, atol=tol_l + T * T * E * (2 + 2 * W), name="loss")
    _checks.assert_close(ds, ds64, atol=tol_g + 4 * E * T * dloss / n, name="dstudent")
