"""Dropout: finite differences, bit-identical masks across versions, mask statistics, torch's scaling, bad input."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import dropout as K

SHAPES = [(1,), (1, 13), (7, 13), (2, 7, 13), (3, 1, 768), ()]
PS = [0.0, 0.1, 0.5, 0.9, 1.0]
# y = x * scale in float32 against x / (1 - p) in float64: two roundings (scale to float32, then the product), each
# within a factor (1 + eps/2)
TWO_ROUNDINGS = (1 + _checks.EPS32 / 2) ** 2 - 1


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    x = rng.standard_normal((4, 6))
    w = rng.standard_normal((4, 6))                  # loss = sum(w * dropout(x)), so dL/dy = w
    loss = lambda: float((w * K.dropout_forward_ref(x, 0.3, 7)[0]).sum())
    dx = K.dropout_backward_ref(w, K.DropoutCache(0.3, 7, x.shape))
    assert _checks.relative_error(dx, _checks.numerical_gradient(loss, x)) <= 1e-6
    assert 0 < np.count_nonzero(dx) < dx.size       # the mask at this seed drops some and keeps some


# (b) every float32 version against the reference: the same mask and the same float32 product, so EXACT ----------

@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cpu_matches_reference_exactly(rng, shape, p):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, cache = K.dropout_forward(x, p, seed=42)
    dx = K.dropout_backward(dy, cache)
    assert y.dtype == dx.dtype == np.float32 and y.shape == dx.shape == shape
    y_ref, c_ref = K.dropout_forward_ref(x, p, 42)
    assert np.array_equal(y, y_ref)
    assert np.array_equal(dx, K.dropout_backward_ref(dy, c_ref))
    # the float64 reference: scale rounded to float32 then one product
    y64, _ = K.dropout_forward_ref(x.astype(np.float64), p, 42)
    _checks.assert_close(y, y64, atol=0.0, rtol=TWO_ROUNDINGS, name="y vs float64")


def test_masks_are_identical_and_backward_follows_forward(rng):
    # the kept set of the forward is the kept set of the backward, and of the reference: one mask, never stored
    x = np.ones((37, 29), np.float32)
    for p in (0.1, 0.5):
        y, cache = K.dropout_forward(x, p, seed=2024)
        keep = K.dropout_keep_ref(x.shape, p, 2024)
        assert np.array_equal(y != 0, keep)
        assert np.array_equal(K.dropout_backward(x, cache) != 0, keep)
        assert np.all(y[keep] == np.float32(1.0 / (1.0 - p)))


def test_edge_probabilities(rng):
    x = rng.standard_normal((5, 11)).astype(np.float32)
    y0, c0 = K.dropout_forward(x, 0.0, seed=3)
    assert np.array_equal(y0, x) and np.array_equal(K.dropout_backward(x, c0), x)     # p = 0: identity
    y1, c1 = K.dropout_forward(x, 1.0, seed=3)
    assert not y1.any() and not K.dropout_backward(x, c1).any()                        # p = 1: all zeros


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                  elements=st.floats(-1e6, 1e6, width=32)),
       st.floats(0.0, 1.0), st.integers(0, 2 ** 64 - 1))
def test_cpu_matches_reference_hypothesis(x, p, seed):
    y, cache = K.dropout_forward(x, p, seed)
    assert np.array_equal(y, K.dropout_forward_ref(x, p, seed)[0])
    assert np.array_equal(K.dropout_backward(x, cache), y)   # the backward applied to x is the forward


@pytest.mark.cuda
@pytest.mark.parametrize("shape,p", [((1,), 0.5), ((7, 13), 0.1), ((2, 3, 40), 0.5), ((3, 5), 1.0)])
def test_cuda_matches_reference_exactly(rng, shape, p):
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    seed = 2 ** 40 + 17                                 # a seed with high bits set: both keys matter
    yd, cache = K.dropout_forward(_cuda.to_device(x), p, seed)    # device arrays dispatch to CUDA
    dxd = K.dropout_backward(_cuda.to_device(dy), cache)
    y, dx = _cuda.to_host(yd), _cuda.to_host(dxd)
    assert y.dtype == dx.dtype == np.float32
    y_ref, c_ref = K.dropout_forward_ref(x, p, seed)
    assert np.array_equal(y, y_ref)
    assert np.array_equal(dx, K.dropout_backward_ref(dy, c_ref))
    assert np.array_equal(y, K.dropout_forward_cpu(x, p, seed)[0])


# statistics of the mask -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropped_fraction_is_binomial(p):
    # 10^6 independent Bernoulli(p) drops: the dropped count has std sqrt(n p (1-p)); 5 std fail with prob ~6e-7.
    # Also the pairs (i, i+1) both dropped (p^2) and the mask of seed 1 vs seed 2 both dropped (p^2): a hash that
    # correlates neighbours or seeds fails these.
    n = 10 ** 6
    x = np.ones(n, np.float32)
    d1 = K.dropout_forward(x, p, seed=1)[0] == 0
    d2 = K.dropout_forward(x, p, seed=2)[0] == 0
    sd = math.sqrt(n * p * (1 - p))
    assert abs(d1.sum() - n * p) <= 5 * sd
    q = p * p
    # n-1 overlapping pairs: each has variance q(1-q), and adjacent pairs share an element (covariance p^3 - p^4)
    pair_sd = math.sqrt((n - 1) * q * (1 - q) + 2 * (n - 2) * (p ** 3 - p ** 4))
    assert abs((d1[:-1] & d1[1:]).sum() - (n - 1) * q) <= 5 * pair_sd
    assert abs((d1 & d2).sum() - n * q) <= 5 * math.sqrt(n * q * (1 - q))


def test_different_seeds_give_different_masks():
    shape = (64, 64)
    masks = [K.dropout_keep_ref(shape, 0.5, s) for s in (0, 1, 2, 2 ** 32, 2 ** 32 + 1, 12345)]
    for i in range(len(masks)):
        for j in range(i):
            agree = np.mean(masks[i] == masks[j])
            assert 0.45 < agree < 0.55           # independent masks agree on half the elements (std 0.008)
    assert np.array_equal(K.dropout_keep_ref(shape, 0.5, 7), K.dropout_keep_ref(shape, 0.5, 7))  # deterministic


def test_expectation_is_the_input(rng):
    # E[y] = x: the mean over 2000 seeds of dropout(x) is x to within 5 std of the mean (std of one draw:
    # |x| sqrt(p / (1-p)))
    x = rng.standard_normal(50).astype(np.float32)
    p, S = 0.3, 2000
    mean = np.mean([K.dropout_forward(x, p, seed=s)[0] for s in range(S)], axis=0, dtype=np.float64)
    assert np.all(np.abs(mean - x) <= 5 * np.abs(x) * math.sqrt(p / (1 - p)) / math.sqrt(S) + 1e-6)


# (c) against torch: no mask equality is possible (different generators), so compare what must agree ---------------

def test_matches_torch_scaling_and_gradient_relation(torch, rng):
    x = rng.standard_normal((64, 257)).astype(np.float32)
    p = 0.2
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.dropout(xt, p=p, training=True)
    dyt = torch.tensor(rng.standard_normal(x.shape).astype(np.float32))
    yt.backward(dyt)
    y, cache = K.dropout_forward(x, p, seed=5)
    dx = K.dropout_backward(dyt.numpy(), cache)
    # kept elements are scaled by 1 / (1 - p): two float32 roundings (the scale, the product) in each library
    # (torch may group them differently: we allow two roundings on each side)
    x64, y_t, dy = x.astype(np.float64), yt.detach().numpy().astype(np.float64), dyt.numpy().astype(np.float64)
    kept_t = y_t != 0
    kept = y != 0
    _checks.assert_close(y_t[kept_t], x64[kept_t] / (1 - p), atol=0, rtol=2 * TWO_ROUNDINGS, name="torch kept")
    _checks.assert_close(y[kept], x64[kept] / (1 - p), atol=0, rtol=TWO_ROUNDINGS, name="our kept")
    # the gradient relation of both: dx = dy * y / x (y / x is the scaled mask; y and dx each round once more)
    _checks.assert_close(xt.grad.numpy(), dy * (y_t / x64), atol=0, rtol=2 * TWO_ROUNDINGS, name="torch dx")
    _checks.assert_close(dx, dy * (y / x64), atol=0, rtol=TWO_ROUNDINGS, name="our dx")
    # both drop about p of the elements (5 binomial std)
    sd = math.sqrt(x.size * p * (1 - p))
    assert abs((~kept_t).sum() - x.size * p) <= 5 * sd and abs((~kept).sum() - x.size * p) <= 5 * sd


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    x = np.zeros((2, 3), np.float32)
    for bad_p in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match=r"p: expected a drop probability in \[0, 1\]"):
            K.dropout_forward(x, bad_p, seed=0)
    for bad_seed in (-1, 2 ** 64, 1.5, None):
        with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\^64\)"):
            K.dropout_forward(x, 0.1, seed=bad_seed)
    with pytest.raises(ValueError, match="x: expected dtype float32, got float64"):
        K.dropout_forward(x.astype(np.float64), 0.1, seed=0)
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        K.dropout_forward(np.zeros((3, 2), np.float32).T, 0.1, seed=0)
    _, cache = K.dropout_forward(x, 0.1, seed=0)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\)"):
        K.dropout_backward(np.zeros((3, 2), np.float32), cache)
    with pytest.raises(ValueError, match="dy: expected dtype float32"):
        K.dropout_backward(np.zeros((2, 3), np.float64), cache)
