"""LayerNorm and residual + LayerNorm: finite differences, float32 versions vs reference, torch, bad input.

Tolerances come from `layernorm.tolerances` (derived from f32_tol with the reduction lengths C and N and the data's
magnitudes; the derivation is in its docstring). Both epsilons are tested: 1e-12 (BERT / DistilBERT configs) and 1e-5.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import layernorm as K

SHAPES = [(1, 1), (7, 1), (1, 13), (7, 13), (2, 7, 13), (3, 1, 768), (1, 768)]
EPSILONS = [1e-12, 1e-5]


def _data(rng, shape):
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    w = (1 + 0.3 * rng.standard_normal(C)).astype(np.float32)
    b = (0.3 * rng.standard_normal(C)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, r, w, b, dy


def _f64(*arrays):
    return tuple(a.astype(np.float64) for a in arrays)


def _check_against_ref(x, r, w, b, dy, eps, y, dx, dw, db):
    """y, dx, dw, db (float32, from any version) against the float64 reference of LN(x + r) (r may be None)."""
    x64, w64, b64, dy64 = _f64(x, w, b, dy)
    h64 = x64 if r is None else x64 + r.astype(np.float64)
    y_ref, c_ref = K.layernorm_forward_ref(h64, w64, b64, eps)
    dx_ref, dw_ref, db_ref = K.layernorm_backward_ref(dy64, c_ref)
    tol_y, tol_dx, tol_dw, tol_db = K.tolerances(h64, w64, b64, dy64, eps)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    _checks.assert_close(y, y_ref, atol=tol_y, name="y")
    _checks.assert_close(dx, dx_ref, atol=tol_dx, name="dx")
    _checks.assert_close(dw, dw_ref, atol=tol_dw, name="dw")
    _checks.assert_close(db, db_ref, atol=tol_db, name="db")


# (a) the reference backward against central finite differences in float64 ---------------------------------------

@pytest.mark.parametrize("eps", EPSILONS)
def test_ref_backward_matches_finite_differences(rng, eps):
    x = rng.standard_normal((3, 6)) * 2 + 1
    r = rng.standard_normal((3, 6))
    w = rng.standard_normal(6)
    b = rng.standard_normal(6)
    g = rng.standard_normal((3, 6))  # loss = sum(g * y), so dL/dy = g
    loss = lambda: float((g * K.layernorm_forward_ref(x, w, b, eps)[0]).sum())
    dx, dw, db = K.layernorm_backward_ref(g, K.layernorm_forward_ref(x, w, b, eps)[1])
    assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6
    assert _checks.relative_error(dw, _checks.numerical_gradient(loss, w)) <= 1e-6
    assert _checks.relative_error(db, _checks.numerical_gradient(loss, b)) <= 1e-6

    res_loss = lambda: float((g * K.residual_layernorm_forward_ref(x, r, w, b, eps)[0]).sum())
    dh, _, _ = K.residual_layernorm_backward_ref(g, K.residual_layernorm_forward_ref(x, r, w, b, eps)[1])
    assert _checks.relative_error(dh, _checks.numerical_gradient(res_loss, x)) <= 1e-6
    assert _checks.relative_error(dh, _checks.numerical_gradient(res_loss, r)) <= 1e-6


# (b) every float32 version against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("eps", EPSILONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference(rng, shape, eps):
    x, r, w, b, dy = _data(rng, shape)
    y, cache = K.layernorm_forward(x, w, b, eps)
    assert cache.mean.shape == cache.rstd.shape == (x.size // shape[-1],)
    _check_against_ref(x, None, w, b, dy, eps, y, *K.layernorm_backward(dy, cache))
    y, cache = K.residual_layernorm_forward(x, r, w, b, eps)
    _check_against_ref(x, r, w, b, dy, eps, y, *K.residual_layernorm_backward(dy, cache))


def test_cpu_backward_chunks_do_not_overlap(rng):
    # more rows than N_CHUNKS, and a row count that does not divide evenly: every row counted once in dw, db
    x, _, w, b, dy = _data(rng, (K.N_CHUNKS * 2 + 5, 13))
    y, cache = K.layernorm_forward(x, w, b, 1e-12)
    _check_against_ref(x, None, w, b, dy, 1e-12, y, *K.layernorm_backward(dy, cache))


@pytest.mark.parametrize("eps", EPSILONS)
def test_fully_padded_rows(rng, eps):
    # a row of zeros (a padded position) has var = 0: y = b exactly, rstd = 1/sqrt(eps), nothing NaN
    x, r, w, b, dy = _data(rng, (4, 13))
    x[1] = 0.0
    y, cache = K.layernorm_forward(x, w, b, eps)
    assert np.array_equal(y[1], b)
    assert cache.mean[1] == 0.0 and cache.rstd[1] == np.float32(1 / np.sqrt(np.float32(eps)))
    dx, dw, db = K.layernorm_backward(dy, cache)
    assert np.isfinite(dx).all() and np.isfinite(dw).all() and np.isfinite(db).all()
    # in the zero row xhat = 0, so dx = rstd * (dy*w - mean(dy*w)): compared relative to its own size (~1/sqrt(eps))
    g = dy[1].astype(np.float64) * w
    expect = (g - g.mean()) / np.sqrt(eps)
    _checks.assert_close(dx[1], expect, atol=0, rtol=_checks.f32_tol(13, scale=4), name="dx of the zero row")


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.floats(-20, 20, width=32)),
       st.sampled_from(EPSILONS), st.integers(0, 2**32 - 1))
def test_cpu_matches_reference_hypothesis(x, eps, seed):
    # a row of equal non-zero values is ill-conditioned in float32 (see the module docstring): the tolerance grows
    # with |mean| * rstd, as derived in K.tolerances, so such rows are checked only as far as float32 can resolve
    rng = np.random.default_rng(seed)
    _, r, w, b, dy = _data(rng, x.shape)
    y, cache = K.layernorm_forward(x, w, b, eps)
    _check_against_ref(x, None, w, b, dy, eps, y, *K.layernorm_backward(dy, cache))
    y, cache = K.residual_layernorm_forward(x, r, w, b, eps)
    _check_against_ref(x, r, w, b, dy, eps, y, *K.residual_layernorm_backward(dy, cache))


@pytest.mark.cuda
# the last shape takes several passes of every strided loop: a row's columns (THREADS apart), dw and db's column
# blocks, row lanes and row chunks (three: a second launch adds them)
@pytest.mark.parametrize("shape", [(1, 1), (3, 13), (2, 3, 40),
                                   (2 * _cuda.COL_CHUNK_ROWS + 3, _cuda.THREADS + 3)])
def test_cuda_matches_reference(rng, shape):
    eps = 1e-12
    x, r, w, b, dy = _data(rng, shape)
    xd, rd, wd, bd, dyd = (_cuda.to_device(a) for a in (x, r, w, b, dy))
    y, cache = K.layernorm_forward(xd, wd, bd, eps)          # dispatches to CUDA on device arrays
    grads = K.layernorm_backward(dyd, cache)
    _check_against_ref(x, None, w, b, dy, eps, _cuda.to_host(y), *(_cuda.to_host(g) for g in grads))
    y, cache = K.residual_layernorm_forward(xd, rd, wd, bd, eps)
    grads = K.residual_layernorm_backward(dyd, cache)
    _check_against_ref(x, r, w, b, dy, eps, _cuda.to_host(y), *(_cuda.to_host(g) for g in grads))


# (c) against torch autograd ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", EPSILONS)
def test_matches_torch(torch, rng, eps):
    x, r, w, b, dy = _data(rng, (2, 7, 768))
    xt, rt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, r, w, b))
    yt = torch.nn.functional.layer_norm(xt + rt, (768,), wt, bt, eps)
    yt.backward(torch.tensor(dy))
    y, cache = K.residual_layernorm_forward(x, r, w, b, eps)
    dh, dw, db = K.residual_layernorm_backward(dy, cache)
    # torch is float32 too: each side is within the derived tolerance of the exact result, so twice it between them
    tol_y, tol_dx, tol_dw, tol_db = (2 * t for t in K.tolerances(*_f64(x + r, w, b, dy), eps))
    _checks.assert_close(y, yt.detach().numpy(), atol=tol_y, name="y")
    _checks.assert_close(dh, xt.grad.numpy(), atol=tol_dx, name="dx")
    _checks.assert_close(dh, rt.grad.numpy(), atol=tol_dx, name="dr")
    _checks.assert_close(dw, wt.grad.numpy(), atol=tol_dw, name="dw")
    _checks.assert_close(db, bt.grad.numpy(), atol=tol_db, name="db")


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((2, 3), np.float32)
    w = np.ones(3, np.float32)
    b = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        K.layernorm_forward(x.astype(np.float64), w, b, 1e-12)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.layernorm_forward(np.zeros((3, 2), np.float32).T, w, b, 1e-12)
    with pytest.raises(ValueError, match=r"w: expected shape \(3\)"):
        K.layernorm_forward(x, np.ones(4, np.float32), b, 1e-12)
    with pytest.raises(ValueError, match="b: expected a 1-d array"):
        K.layernorm_forward(x, w, np.zeros((1, 3), np.float32), 1e-12)
    with pytest.raises(ValueError, match="eps: expected a positive finite float"):
        K.layernorm_forward(x, w, b, -1.0)
    with pytest.raises(ValueError, match=r"r: expected the shape of x \(2, 3\)"):
        K.residual_layernorm_forward(x, np.zeros((3, 3), np.float32), w, b, 1e-12)
    with pytest.raises(ValueError, match="dy: expected shape"):
        K.layernorm_backward(np.zeros((2, 4), np.float32), K.layernorm_forward(x, w, b, 1e-12)[1])
