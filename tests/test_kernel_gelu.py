"""GELU and bias+GELU: the three test levels (finite differences, float32 versions vs reference, torch)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidistil.kernels import _checks, _cuda, _f32math
from minidistil.kernels import gelu as K

SHAPES = [(1, 1), (1, 13), (7, 13), (2, 7, 13), (3, 1, 768)]


def _data(rng, shape, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, b, dy


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    x = rng.standard_normal((3, 5)) * 2
    b = rng.standard_normal(5)
    w = rng.standard_normal((3, 5))  # loss = sum(w * gelu(x + b)), so dL/dy = w
    loss = lambda: float((w * K.bias_gelu_forward_ref(x, b)[0]).sum())
    dx, db = K.bias_gelu_backward_ref(w, K.BiasGeluCache(x, b))
    assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6
    assert _checks.relative_error(db, _checks.numerical_gradient(loss, b)) <= 1e-6


# (b) every float32 version against the reference ----------------------------------------------------------------
# Elementwise: one float32 erf/exp and a few products per element -> a few eps relative; f32_tol(1, scale=8) covers
# |y| up to ~8 (x drawn with std 3). db sums N rows: f32_tol(N, scale=max|dx|).

@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference(rng, shape):
    x, b, dy = _data(rng, shape)
    y_ref, _ = K.bias_gelu_forward_ref(x.astype(np.float64), b.astype(np.float64))
    dx_ref, db_ref = K.bias_gelu_backward_ref(dy.astype(np.float64),
                                              K.BiasGeluCache(x.astype(np.float64), b.astype(np.float64)))
    y, cache = K.bias_gelu_forward(x, b)
    dx, db = K.bias_gelu_backward(dy, cache)
    assert y.dtype == dx.dtype == db.dtype == np.float32
    tol = _checks.f32_tol(1, scale=8)
    _checks.assert_close(y, y_ref, atol=tol, rtol=tol, name="y")
    _checks.assert_close(dx, dx_ref, atol=tol, rtol=tol, name="dx")
    n = int(np.prod(shape[:-1]))
    _checks.assert_close(db, db_ref, atol=_checks.f32_tol(n, scale=4), rtol=tol, name="db")

    y2, c2 = K.gelu_forward(x)
    dx2 = K.gelu_backward(dy, c2)
    assert y2.dtype == dx2.dtype == np.float32
    _checks.assert_close(y2, K.gelu_forward_ref(x.astype(np.float64))[0], atol=tol, rtol=tol, name="gelu y")
    _checks.assert_close(dx2, K.gelu_backward_ref(dy.astype(np.float64), K.GeluCache(x.astype(np.float64))),
                         atol=tol, rtol=tol, name="gelu dx")


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.floats(-20, 20, width=32)))
def test_cpu_matches_reference_hypothesis(x):
    y, c = K.gelu_forward(x)
    tol = _checks.f32_tol(1, scale=20)
    _checks.assert_close(y, K.gelu_forward_ref(x.astype(np.float64))[0], atol=tol, rtol=tol)
    dx = K.gelu_backward(np.ones_like(x), c)
    _checks.assert_close(dx, K.gelu_backward_ref(np.ones_like(x, dtype=np.float64),
                                                 K.GeluCache(x.astype(np.float64))), atol=tol, rtol=tol)


@pytest.mark.cuda
# (the last shape: db's column sum takes several column blocks and row chunks, whatever THREADS is)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (2, 3, 40), (2 * _cuda.COL_CHUNK_ROWS + 3, 2 * _cuda.COL_TILE + 3)])
def test_cuda_matches_reference(rng, shape):
    x, b, dy = _data(rng, shape)
    y_ref, _ = K.bias_gelu_forward_ref(x.astype(np.float64), b.astype(np.float64))
    dx_ref, db_ref = K.bias_gelu_backward_ref(dy.astype(np.float64),
                                              K.BiasGeluCache(x.astype(np.float64), b.astype(np.float64)))
    xd, bd, dyd = (_cuda.to_device(a) for a in (x, b, dy))
    y, cache = K.bias_gelu_forward(xd, bd)          # dispatches to CUDA on device arrays
    dx, db = K.bias_gelu_backward(dyd, cache)
    y, dx, db = (_cuda.to_host(a) for a in (y, dx, db))
    assert y.dtype == dx.dtype == db.dtype == np.float32
    tol = _checks.f32_tol(1, scale=8)
    _checks.assert_close(y, y_ref, atol=tol, rtol=tol, name="y")
    _checks.assert_close(dx, dx_ref, atol=tol, rtol=tol, name="dx")
    _checks.assert_close(db, db_ref, atol=_checks.f32_tol(int(np.prod(shape[:-1])), scale=4), rtol=tol, name="db")
    y2, c2 = K.gelu_forward(xd)
    _checks.assert_close(_cuda.to_host(y2), K.gelu_forward_ref(x.astype(np.float64))[0], atol=tol, rtol=tol)
    _checks.assert_close(_cuda.to_host(K.gelu_backward(dyd, c2)),
                         K.gelu_backward_ref(dy.astype(np.float64), K.GeluCache(x.astype(np.float64))),
                         atol=tol, rtol=tol)


# (c) against torch autograd ---------------------------------------------------------------------------------------

def test_matches_torch(torch, rng):
    x, b, dy = _data(rng, (4, 7, 13))
    xt = torch.tensor(x, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.gelu(xt + bt)  # approximate="none": the exact erf form
    yt.backward(torch.tensor(dy))
    y, cache = K.bias_gelu_forward(x, b)
    dx, db = K.bias_gelu_backward(dy, cache)
    tol = _checks.f32_tol(1, scale=8)
    _checks.assert_close(y, yt.detach().numpy(), atol=tol, rtol=tol, name="y")
    _checks.assert_close(dx, xt.grad.numpy(), atol=tol, rtol=tol, name="dx")
    _checks.assert_close(db, bt.grad.numpy(), atol=_checks.f32_tol(28, scale=4), rtol=tol, name="db")


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        K.gelu_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.gelu_forward(np.zeros((3, 2), np.float32).T)
    with pytest.raises(ValueError, match=r"b: expected shape \(3\)"):
        K.bias_gelu_forward(x, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="dy: expected shape"):
        K.gelu_backward(np.zeros((2, 4), np.float32), K.gelu_forward(x)[1])


# opt-in fast math (fast=True, or MINIDISTIL_FAST_MATH=1) ----------------------------------------------------------

def _gelu_fast_bounds(h, dy):
    """Per-element error bounds of the fast versions against the float64 maths, from the stated errors:
      y = 0.5 h (1 + erf(h / sqrt 2)):  0.5 |h| E_erf + the exact version's rounding budget (f32_tol, 8 roundings)
      dx = dy (Phi + h phi):            |dy| (0.5 E_erf + |h| phi E_exp) + the same rounding budget on |dy| (1 + |h|)"""
    h64 = h.astype(np.float64)
    phi = np.exp(-0.5 * h64 * h64) / math.sqrt(2 * math.pi)
    r = _checks.f32_tol(1, scale=8)
    ty = 0.5 * np.abs(h64) * _f32math.ERF_FAST_MAX_ABS_ERR + r * (1 + np.abs(h64))
    tdx = np.abs(dy) * (0.5 * _f32math.ERF_FAST_MAX_ABS_ERR + np.abs(h64) * phi * _f32math.EXP_FAST_MAX_REL_ERR
                        + r * (1 + np.abs(h64)))
    return ty, tdx


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 13), (64, 257)])
def test_bias_gelu_fast_matches_reference(rng, shape):
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = K.bias_gelu_forward(x, b, fast=True)
    dx, db = K.bias_gelu_backward(dy, cache, fast=True)
    y64, c64 = K.bias_gelu_forward_ref(x.astype(np.float64), b.astype(np.float64))
    dx64, db64 = K.bias_gelu_backward_ref(dy.astype(np.float64), c64)
    ty, tdx = _gelu_fast_bounds((x.astype(np.float64) + b).astype(np.float32), dy)
    assert y.dtype == dx.dtype == db.dtype == np.float32
    assert np.all(np.abs(y - y64) <= ty), f"y: worst excess {np.max(np.abs(y - y64) - ty):.3e}"
    assert np.all(np.abs(dx - dx64) <= tdx), f"dx: worst excess {np.max(np.abs(dx - dx64) - tdx):.3e}"
    # db sums the rows of dx: the sum of their bounds plus the float32 sum's own rounding
    n = dx.size // shape[-1]
    tdb = tdx.reshape(n, -1).sum(axis=0) + _checks.f32_tol(n, scale=float(np.abs(dx).max()))
    assert np.all(np.abs(db - db64) <= tdb)


def test_gelu_fast_without_bias_and_the_environment_switch(rng, monkeypatch):
    x = (rng.standard_normal((5, 33)) * 4).astype(np.float32)
    dy = rng.standard_normal((5, 33)).astype(np.float32)
    y_fast, c = K.gelu_forward(x, fast=True)
    y64, c64 = K.gelu_forward_ref(x.astype(np.float64))
    ty, tdx = _gelu_fast_bounds(x, dy)
    assert np.all(np.abs(y_fast - y64) <= ty)
    assert np.all(np.abs(K.gelu_backward(dy, c, fast=True) - K.gelu_backward_ref(dy.astype(np.float64), c64))
                  <= tdx)
    y_exact, _ = K.gelu_forward(x, fast=False)
    monkeypatch.setenv("MINIDISTIL_FAST_MATH", "1")
    y_env, _ = K.gelu_forward(x)                     # fast=None follows the environment
    np.testing.assert_array_equal(y_env, y_fast)
    monkeypatch.setenv("MINIDISTIL_FAST_MATH", "0")
    np.testing.assert_array_equal(K.gelu_forward(x)[0], y_exact)
