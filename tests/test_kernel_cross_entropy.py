"""Cross-entropy (fused log-softmax): the three test levels (finite differences, float32 versions vs reference,
torch), the no-row-counts convention, the cache's memory contract and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import cross_entropy as K

IGNORE = -100


def _data(rng, N, V, ignored="some", scale=3.0):
    x = (rng.standard_normal((N, V)) * scale).astype(np.float32)
    t = rng.integers(0, V, N).astype(np.int64)
    if ignored == "all":
        t[:] = IGNORE
    elif ignored == "some" and N > 1:
        t[::3] = IGNORE
    return x, t


def _reference(x, t, dloss, ignore_index=IGNORE):
    loss, c = K.cross_entropy_forward_ref(x.astype(np.float64), t, ignore_index)
    return loss, K.cross_entropy_backward_ref(dloss, c), c.n_counted


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    x = rng.standard_normal((5, 7)) * 2
    t = np.array([3, IGNORE, 0, 6, 2])
    dloss = 1.7  # a scalar loss L = dloss * loss, so dL/dx = backward(dloss)
    dx = K.cross_entropy_backward_ref(dloss, K.cross_entropy_forward_ref(x, t)[1])
    num = _checks.numerical_gradient(lambda: dloss * K.cross_entropy_forward_ref(x, t)[0], x)
    assert _checks.relative_error(dx, num) <= 1e-6
    assert np.all(dx[1] == 0.0)  # the ignored row gets no gradient


# (b) every float32 version against the reference ----------------------------------------------------------------
# Tolerances: K.tolerances (lse good to f32_tol(V) + f32_tol(1, scale=max|x|); gradient the same times |dloss| / n).

CASES = [(1, 1, "none"), (1, 13, "none"), (7, 13, "some"), (7, 13, "all"), (7, 1, "some"), (5, 1000, "some")]


@pytest.mark.parametrize("N,V,ignored", CASES)
def test_cpu_matches_reference(rng, N, V, ignored):
    x, t = _data(rng, N, V, ignored)
    dloss = 0.75
    loss_ref, dx_ref, n = _reference(x, t, dloss)
    loss, cache = K.cross_entropy_forward(x, t)
    dx = K.cross_entropy_backward(dloss, cache)
    assert isinstance(loss, float)
    assert dx.dtype == cache.lse.dtype == np.float32
    tol_l, tol_g = K.tolerances(x, dloss, n)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(dx, dx_ref, atol=tol_g, name="dlogits")
    # int32 targets give the same result
    loss32, c32 = K.cross_entropy_forward(x, t.astype(np.int32))
    assert loss32 == loss
    np.testing.assert_array_equal(K.cross_entropy_backward(dloss, c32), dx)


# dloss is drawn away from 0: a float32 gradient cannot hold dloss / n below float32's smallest normal (1e-38)
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 40), st.floats(0.1, 30), st.integers(0, 2**32 - 1),
       st.floats(0.01, 3) | st.floats(-3, -0.01))
def test_cpu_matches_reference_hypothesis(N, V, scale, seed, dloss):
    r = np.random.default_rng(seed)
    x = (r.standard_normal((N, V)) * scale).astype(np.float32)
    t = r.integers(0, V, N).astype(np.int64)
    t[r.random(N) < 0.3] = IGNORE
    loss_ref, dx_ref, n = _reference(x, t, dloss)
    loss, cache = K.cross_entropy_forward(x, t)
    tol_l, tol_g = K.tolerances(x, dloss, n)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(K.cross_entropy_backward(dloss, cache), dx_ref, atol=tol_g, name="dlogits")


@pytest.mark.cuda
# (the last shape takes several passes of every strided loop: rows of the loss's sum, columns of a row)
@pytest.mark.parametrize("N,V,ignored", [(1, 1, "none"), (7, 13, "some"), (3, 70, "none"), (2, 5, "all"),
                                         (_cuda.THREADS + 3, 2 * _cuda.THREADS + 5, "some")])
def test_cuda_matches_reference(rng, N, V, ignored):
    x, t = _data(rng, N, V, ignored)
    dloss = 1.3
    loss_ref, dx_ref, n = _reference(x, t, dloss)
    loss, cache = K.cross_entropy_forward(_cuda.to_device(x), _cuda.to_device(t))  # dispatches to CUDA
    assert _cuda.is_device_array(cache.lse)
    dx = _cuda.to_host(K.cross_entropy_backward(dloss, cache))
    # the upstream gradient as a device scalar (a device loss's backward): read on the device, the same dx
    assert np.array_equal(_cuda.to_host(K.cross_entropy_backward(_cuda.device_scalar(dloss), cache)), dx)
    assert dx.dtype == np.float32
    assert _cuda.is_device_array(loss) and tuple(loss.shape) == () and np.dtype(loss.dtype) == np.float32
    loss = float(_cuda.to_host(loss))  # the loss stays on the device: read back here to compare
    tol_l, tol_g = K.tolerances(x, dloss, n)
    _checks.assert_close(loss, loss_ref, atol=tol_l, name="loss")
    _checks.assert_close(dx, dx_ref, atol=tol_g, name="dlogits")


# (c) against torch autograd ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_matches_torch(torch, rng, ignore_index):
    x, t = _data(rng, 9, 50)
    t[::3] = ignore_index
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), ignore_index=ignore_index)
    lt.backward(torch.tensor(2.0))
    loss, cache = K.cross_entropy_forward(x, t, ignore_index=ignore_index)
    dx = K.cross_entropy_backward(2.0, cache)
    tol_l, tol_g = K.tolerances(x, 2.0, cache.n_counted)
    _checks.assert_close(loss, lt.item(), atol=2 * tol_l, name="loss")  # both sides float32: twice the bound
    _checks.assert_close(dx, xt.grad.numpy(), atol=2 * tol_g, name="dlogits")


def test_no_counted_row_gives_zero_where_torch_gives_nan(torch, rng):
    x, t = _data(rng, 4, 6, "all")
    loss, cache = K.cross_entropy_forward(x, t)
    assert loss == 0.0
    assert np.all(K.cross_entropy_backward(1.0, cache) == 0.0)
    assert K.cross_entropy_forward_ref(x, t)[0] == 0.0
    # torch divides 0 by 0 here; our convention (0.0, no gradient) lets a batch without masked tokens pass through
    assert np.isnan(torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(t)).item())


def test_cache_holds_no_probability_array(rng):
    x, t = _data(rng, 6, 50)
    _, cache = K.cross_entropy_forward(x, t)
    assert cache.logits is x  # a reference, not a copy
    for name in ("targets", "lse"):
        assert getattr(cache, name).shape == (6,), name  # one value per row, nothing (N, V)


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((3, 5), np.float32)
    t = np.array([0, 4, IGNORE])
    with pytest.raises(ValueError, match="logits: expected dtype float32, got float64"):
        K.cross_entropy_forward(x.astype(np.float64), t)
    with pytest.raises(ValueError, match="logits: expected a 2-d array"):
        K.cross_entropy_forward(np.zeros(5, np.float32), t[:1])
    with pytest.raises(ValueError, match="logits: expected a C-contiguous"):
        K.cross_entropy_forward(np.zeros((5, 3), np.float32).T, t)
    with pytest.raises(ValueError, match=r"targets: expected dtype int32 or int64, got float32"):
        K.cross_entropy_forward(x, t.astype(np.float32))
    with pytest.raises(ValueError, match=r"targets: expected shape \(3\)"):
        K.cross_entropy_forward(x, t[:2])
    with pytest.raises(ValueError, match=r"targets: id 5 at position \(1,\) is out of range \[0, 5\) or -100"):
        K.cross_entropy_forward(x, np.array([0, 5, 1]))
    with pytest.raises(ValueError, match=r"targets: id -1 at position \(2,\)"):
        K.cross_entropy_forward(x, np.array([0, 1, -1]))
    with pytest.raises(ValueError, match="at least one class"):
        K.cross_entropy_forward(np.zeros((3, 0), np.float32), np.full(3, IGNORE))
