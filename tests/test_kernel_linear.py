"""Linear layer: the three test levels (finite differences, float32 versions vs reference, torch) and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import linear as K

# (x shape, Cout): T=1, T=7, C=13, an empty batch of rows, a row of zeros (a padded position), BERT's width
SHAPES = [((1, 13), 5), ((7, 13), 13), ((2, 7, 13), 17), ((3, 1, 768), 4), ((1, 1), 1), ((0, 13), 6), ((13,), 7)]


def _data(rng, xshape, cout, bias=True):
    x = rng.standard_normal(xshape).astype(np.float32)
    if x.ndim > 1 and x.shape[0] > 1:
        x[0] = 0.0                                     # a padded (all-zero) row
    w = rng.standard_normal((cout, xshape[-1])).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    dy = rng.standard_normal(xshape[:-1] + (cout,)).astype(np.float32)
    return x, w, b, dy


def _reference(x, w, b, dy):
    f64 = lambda a: None if a is None else a.astype(np.float64)
    y, c = K.linear_forward_ref(f64(x), f64(w), f64(b))
    return (y,) + K.linear_backward_ref(f64(dy), c)


def _assert_matches_reference(y, dx, dw, db, x, w, b, dy):
    """Tolerances from K.tolerances: y sums Cin products |x||w| (+ the bias add), dx sums Cout products |dy||w|,
    dW sums N products |dy||x|, db sums N values |dy|; each f32_tol(length, scale=product of the maxima)."""
    y64, dx64, dw64, db64 = _reference(x, w, b, dy)
    ty, tdx, tdw, tdb = K.tolerances(x, w, dy)
    assert y.dtype == dx.dtype == dw.dtype == np.float32
    _checks.assert_close(y, y64, atol=ty, name="y")
    _checks.assert_close(dx, dx64, atol=tdx, name="dx")
    _checks.assert_close(dw, dw64, atol=tdw, name="dw")
    if b is None:
        assert db is None
    else:
        assert db.dtype == np.float32
        _checks.assert_close(db, db64, atol=tdb, name="db")


# (a) the reference backward against central finite differences in float64 ---------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_ref_backward_matches_finite_differences(rng, bias):
    x = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((5, 4))
    b = rng.standard_normal(5) if bias else None
    g = rng.standard_normal((2, 3, 5))                 # loss = sum(g * y), so dL/dy = g
    loss = lambda: float((g * K.linear_forward_ref(x, w, b)[0]).sum())
    dx, dw, db = K.linear_backward_ref(g, K.LinearCache(x, w, b))
    assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6
    assert _checks.relative_error(dw, _checks.numerical_gradient(loss, w)) <= 1e-6
    if bias:
        assert _checks.relative_error(db, _checks.numerical_gradient(loss, b)) <= 1e-6
    else:
        assert db is None


# (b) every float32 version against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("xshape,cout", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_matches_reference(rng, xshape, cout, bias):
    x, w, b, dy = _data(rng, xshape, cout, bias)
    y, cache = K.linear_forward(x, w, b)
    assert y.shape == xshape[:-1] + (cout,)
    dx, dw, db = K.linear_backward(dy, cache)
    assert dx.shape == x.shape and dw.shape == w.shape
    _assert_matches_reference(y, dx, dw, db, x, w, b, dy)


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 6), min_size=0, max_size=2), cin=st.integers(1, 20), cout=st.integers(1, 20),
       bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_cpu_matches_reference_hypothesis(lead, cin, cout, bias, seed):
    x, w, b, dy = _data(np.random.default_rng(seed), tuple(lead) + (cin,), cout, bias)
    y, cache = K.linear_forward(x, w, b)
    _assert_matches_reference(y, *K.linear_backward(dy, cache), x, w, b, dy)


@pytest.mark.cuda
@pytest.mark.parametrize("xshape,cout,bias", [((1, 1), 1, True), ((7, 13), 5, True), ((2, 9, 13), 11, False),
                                              ((1, 17), 9, True)])
def test_cuda_matches_reference(rng, xshape, cout, bias):
    # sizes are not multiples of TILE (8 on the simulator): the tile edges are exercised
    x, w, b, dy = _data(rng, xshape, cout, bias)
    xd, wd, dyd = (_cuda.to_device(a) for a in (x, w, dy))
    bd = None if b is None else _cuda.to_device(b)
    y, cache = K.linear_forward(xd, wd, bd)           # dispatches to CUDA on device arrays
    dx, dw, db = K.linear_backward(dyd, cache)
    assert _cuda.is_device_array(y) and _cuda.is_device_array(dx)
    _assert_matches_reference(_cuda.to_host(y), _cuda.to_host(dx), _cuda.to_host(dw),
                              None if db is None else _cuda.to_host(db), x, w, b, dy)


@pytest.mark.cuda
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_cuda_transposes(rng, trans_a, trans_b):
    # c (M, N) = op(a) (M, K) @ op(b) (K, N), with several tiles in every direction (the last ones partial)
    M, Kd, N = 2 * _cuda.TILE + 1, 2 * _cuda.TILE + 3, _cuda.TILE + 2
    a = rng.standard_normal((Kd, M) if trans_a else (M, Kd)).astype(np.float32)
    b = rng.standard_normal((N, Kd) if trans_b else (Kd, N)).astype(np.float32)
    c = _cuda.to_host(K.matmul_cuda(_cuda.to_device(a), _cuda.to_device(b), trans_a=trans_a, trans_b=trans_b))
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    assert c.dtype == np.float32
    # a K-term dot product of terms up to max|a| max|b|
    _checks.assert_close(c, ref, atol=_checks.f32_tol(Kd, scale=np.abs(a).max() * np.abs(b).max()))
    with pytest.raises(ValueError, match="b: op\\(b\\) must have"):
        K.matmul_cuda(_cuda.to_device(a), _cuda.to_device(np.zeros((Kd + 1, 3), np.float32)), trans_a=trans_a)


# (c) against torch autograd ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(torch, rng, bias):
    x, w, b, dy = _data(rng, (4, 7, 13), 9, bias)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if bias else None
    yt = torch.nn.functional.linear(xt, wt, bt)
    yt.backward(torch.tensor(dy))
    y, cache = K.linear_forward(x, w, b)
    dx, dw, db = K.linear_backward(dy, cache)
    # two float32 results, each within K.tolerances of the exact value: they agree within twice that
    ty, tdx, tdw, tdb = (2 * t for t in K.tolerances(x, w, dy))
    _checks.assert_close(y, yt.detach().numpy(), atol=ty, name="y")
    _checks.assert_close(dx, xt.grad.numpy(), atol=tdx, name="dx")
    _checks.assert_close(dw, wt.grad.numpy(), atol=tdw, name="dw")
    if bias:
        _checks.assert_close(db, bt.grad.numpy(), atol=tdb, name="db")


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((2, 3), np.float32)
    w = np.zeros((4, 3), np.float32)
    b = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        K.linear_forward(x.astype(np.float64), w, b)
    with pytest.raises(ValueError, match="w: expected dtype float32"):
        K.linear_forward(x, w.astype(np.float16), b)
    with pytest.raises(ValueError, match=r"w: expected shape \(Cout, 3\)"):
        K.linear_forward(x, np.zeros((4, 5), np.float32), b)
    with pytest.raises(ValueError, match="w: expected a 2-d array"):
        K.linear_forward(x, np.zeros(3, np.float32), b)
    with pytest.raises(ValueError, match=r"b: expected shape \(4\)"):
        K.linear_forward(x, w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.linear_forward(np.zeros((3, 2), np.float32).T, w, b)
    with pytest.raises(ValueError, match=r"x: expected an array \(..., Cin\) with at least one axis"):
        K.linear_forward(np.ones((), np.float32), w, b)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 4\)"):
        K.linear_backward(np.zeros((2, 3), np.float32), K.linear_forward(x, w, b)[1])


# the backward that skips the zero rows of dy (an MLM loss ignores most positions) ---------------------------------

@pytest.mark.parametrize("n,cin,cout,frac", [(2, 3, 5, 0.0), (16, 7, 11, 0.15), (64, 32, 300, 0.15),
                                            (64, 32, 30, 0.5), (64, 32, 30, 0.9)])
def test_linear_backward_skipping_zero_rows_matches_reference(rng, n, cin, cout, frac):
    x = rng.standard_normal((n, cin)).astype(np.float32)
    w = (rng.standard_normal((cout, cin)) * 0.02).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.02).astype(np.float32)
    dy = rng.standard_normal((n, cout)).astype(np.float32)
    dy[rng.random(n) >= frac] = 0.0                     # the rows an MLM loss ignores
    _, cache = K.linear_forward(x, w, b)
    dx, dw, db = K.linear_backward(dy, cache)
    _, c64 = K.linear_forward_ref(*(a.astype(np.float64) for a in (x, w, b)))
    dx64, dw64, db64 = K.linear_backward_ref(dy.astype(np.float64), c64)
    _, tdx, tdw, tdb = K.tolerances(x, w, dy)
    assert dx.dtype == dw.dtype == db.dtype == np.float32 and dx.shape == x.shape
    _checks.assert_close(dx, dx64, atol=tdx, name="dx")
    _checks.assert_close(dw, dw64, atol=tdw, name="dw")
    _checks.assert_close(db, db64, atol=tdb, name="db")
    assert np.all(dx[~dy.any(axis=1)] == 0)             # zero rows of dy give zero rows of dx
    # and the same as the dense version: each within its tolerance of the reference, so within twice it of each other
    for name, a, dense, tol in zip(("dx", "dw", "db"), (dx, dw, db), K.linear_backward_cpu_dense(dy, cache),
                                   (tdx, tdw, tdb)):
        _checks.assert_close(a, dense, atol=2 * tol, name=f"{name} vs dense")
