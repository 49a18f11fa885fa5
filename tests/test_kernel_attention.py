"""Attention: the three test levels (finite differences, float32 versions vs reference, torch) and bad input.

Tolerances come from K.tolerances (derivation in its docstring): each output is a chain of a D-term dot product
(the scores, dP), a softmax over T keys and a T-term weighted sum, and the bound is built from f32_tol with the
magnitudes of this data.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda, _f32math
from minidistil.kernels import attention as K
from minidistil.kernels.dropout import dropout_keep_ref

# (B, T, C, H, fully padded sequences): T=1, T=7, C=13 (D=13, H=1), a fully padded sequence, BERT's D=64
SHAPES = [(1, 1, 13, 1, 0), (1, 1, 4, 2, 1), (2, 7, 13, 1, 0), (3, 7, 12, 3, 1), (2, 5, 8, 2, 2),
          (2, 9, 128, 2, 1)]


VERSIONS = {"blas": (K.attention_forward_blas, K.attention_backward_blas),
            "numba": (K.attention_forward_numba, K.attention_backward_numba)}


def _reference(q, k, v, dout, mask, H, p=0.0, seed=0):
    """float64 reference forward and backward (with the same dropout mask), and the tolerances of a float32
    version against it: K.tolerances' derivation with the dropped-out dP; dropout multiplies every term of every
    sum by keep / (1 - p) <= 1 / (1 - p), and each bound is linear in those magnitudes, so the bounds are scaled by
    1 / (1 - p)."""
    f64 = lambda a: a.astype(np.float64)
    out, c = K.attention_forward_ref(f64(q), f64(k), f64(v), mask, H, p, seed)
    grads = K.attention_backward_ref(f64(dout), c)
    dP = K._drop_ref(K._split_heads(f64(dout), H) @ K._split_heads(f64(v), H).transpose(0, 1, 3, 2), p, seed)
    tols = tuple(t / (1.0 - p) for t in K.tolerances(q, k, v, dout, c.probs, dP))   # dP = dO V^T, dropped out
    return out, c.probs, grads, tols


def _assert_matches(out, probs, grads, ref, factor=1.0):
    out64, probs64, grads64, tols = ref
    assert out.dtype == probs.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    for name, a, e, t in zip(("out", "probs", "dq", "dk", "dv"), (out, probs, *grads), (out64, probs64, *grads64),
                             tols):
        _checks.assert_close(a, e, atol=factor * t, name=name)


def _assert_padded_rows(out, probs, grads, mask):
    """A fully padded sequence: uniform probabilities 1/T, finite output (the mean of V), no gradient to q and k."""
    dq, dk, _ = grads
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(probs))
    for b in np.flatnonzero(~np.asarray(mask).astype(bool).any(axis=1)):
        T = mask.shape[1]
        _checks.assert_close(probs[b], np.full_like(probs[b], 1.0 / T), atol=_checks.f32_tol(T), name="uniform P")
        assert np.all(dq[b] == 0) and np.all(dk[b] == 0)


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    B, T, C, H = 3, 4, 6, 2
    q, k, v = (rng.standard_normal((B, T, C)) for _ in range(3))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])   # no padding, padding, fully padded
    g = rng.standard_normal((B, T, C))                              # loss = sum(g * out), so dL/dout = g
    loss = lambda: float((g * K.attention_forward_ref(q, k, v, mask, H)[0]).sum())
    _, cache = K.attention_forward_ref(q, k, v, mask, H)
    dq, dk, dv = K.attention_backward_ref(g, cache)
    for name, analytic, x in (("dq", dq, q), ("dk", dk, k), ("dv", dv, v)):
        assert _checks.relative_error(analytic, _checks.numerical_gradient(loss, x)) <= 1e-6, name


def test_ref_backward_with_dropout_matches_finite_differences(rng):
    B, T, C, H, p, seed = 2, 4, 6, 2, 0.4, 7
    q, k, v, dout, mask = (a.astype(np.float64) if a.dtype == np.float32 else a
                           for a in K.make_data(rng, B, T, C, n_pad_rows=0))
    _, cache = K.attention_forward_ref(q, k, v, mask, H, p, seed)
    grads = K.attention_backward_ref(dout, cache)
    for x, g in zip((q, k, v), grads):
        num = _checks.numerical_gradient(
            lambda: float((dout * K.attention_forward_ref(q, k, v, mask, H, p, seed)[0]).sum()), x)
        _checks.assert_close(g, num, atol=1e-7, rtol=1e-6, name="grad")   # O(h^2) + O(eps64 / h) with h = 1e-6


# (b) every float32 version against the reference ----------------------------------------------------------------

@pytest.mark.parametrize("B,T,C,H,n_pad", SHAPES)
def test_cpu_matches_reference(rng, B, T, C, H, n_pad):
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    out, cache = K.attention_forward(q, k, v, mask, H)
    grads = K.attention_backward(dout, cache)
    assert out.shape == q.shape and cache.probs.shape == (B, H, T, T)
    _assert_matches(out, cache.probs, grads, _reference(q, k, v, dout, mask, H))
    _assert_padded_rows(out, cache.probs, grads, mask)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("B,T,C,H,n_pad", SHAPES)
def test_cpu_versions_with_dropout_match_reference(rng, version, p, B, T, C, H, n_pad):
    fwd, bwd = VERSIONS[version]
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    seed = 12345
    out, cache = fwd(q, k, v, mask, H, p, seed)
    grads = bwd(dout, cache)
    _assert_matches(out, cache.probs, grads, _reference(q, k, v, dout, mask, H, p, seed))


@pytest.mark.parametrize("B,T,C,H,n_pad", SHAPES)
def test_fast_exp_matches_reference(rng, B, T, C, H, n_pad):
    # exp_fast adds a relative error <= E to each exp of the softmax: the probability error ep of K.tolerances
    # grows to ep + 2E (numerator and sum); every bound is a combination of terms each at most proportional to ep
    # or free of it, so scaling all of them by (ep + 2E) / ep bounds the fast version
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    ref = _reference(q, k, v, dout, mask, H, 0.0, 0)
    ep = ref[3][1]
    out, cache = K.attention_forward_blas(q, k, v, mask, H, fast=True)
    grads = K.attention_backward_blas(dout, cache)
    _assert_matches(out, cache.probs, grads, ref, factor=(ep + 2 * _f32math.EXP_FAST_MAX_REL_ERR) / ep)


def test_dropout_mask_is_the_dropout_kernels():
    # H = 1, V = the identity (T = C): out = P~ itself, so its zeros are exactly the dropped entries
    B, T, p, seed = 2, 16, 0.25, 99
    r = np.random.default_rng(0)
    q, k = (r.standard_normal((B, T, T)).astype(np.float32) for _ in range(2))
    v = np.ascontiguousarray(np.broadcast_to(np.eye(T, dtype=np.float32), (B, T, T)))
    mask = np.ones((B, T), np.int64)
    keep = dropout_keep_ref((B, 1, T, T), p, seed)[:, 0]       # (B, T, T)
    for fwd in (K.attention_forward_blas, K.attention_forward_numba):
        out, cache = fwd(q, k, v, mask, 1, p, seed)
        assert np.array_equal(out != 0, keep)                     # softmax probabilities are > 0 here
        np.testing.assert_allclose(out[keep], (cache.probs[:, 0][keep] / (1 - p)), rtol=4 * _checks.EPS32)
    assert 0.1 < 1 - keep.mean() < 0.4                            # about p of them dropped


@pytest.mark.parametrize("dtype", [np.bool_, np.int32, np.int64, np.uint8])
def test_mask_dtypes_agree(rng, dtype):
    q, k, v, dout, mask = K.make_data(rng, 2, 6, 8, n_pad_rows=1)
    out0, c0 = K.attention_forward(q, k, v, mask, 2)
    out, c = K.attention_forward(q, k, v, mask.astype(dtype), 2)
    assert np.array_equal(out, out0) and np.array_equal(c.probs, c0.probs)
    for g, g0 in zip(K.attention_backward(dout, c), K.attention_backward(dout, c0)):
        assert np.array_equal(g, g0)


def test_mask_changes_the_result(rng):
    # the mask is not ignored: padding a key changes every row of that sequence, and its probability is 0
    q, k, v, _, _ = K.make_data(rng, 1, 5, 4)
    full = np.ones((1, 5), np.int64)
    part = full.copy()
    part[0, 3:] = 0
    out_full, _ = K.attention_forward(q, k, v, full, 1)
    out_part, c = K.attention_forward(q, k, v, part, 1)
    assert np.all(c.probs[0, 0, :, 3:] == 0)
    assert np.abs(out_full - out_part).min() > 0


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 3), T=st.integers(1, 9), H=st.integers(1, 3), D=st.integers(1, 6),
       seed=st.integers(0, 2**31 - 1), data=st.data())
def test_cpu_matches_reference_hypothesis(B, T, H, D, seed, data):
    r = np.random.default_rng(seed)
    q, k, v, dout, _ = K.make_data(r, B, T, H * D)
    keep = data.draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B))
    mask = np.array(keep, dtype=bool)                  # any pattern, holes and fully padded rows included
    out, cache = K.attention_forward(q, k, v, mask, H)
    grads = K.attention_backward(dout, cache)
    _assert_matches(out, cache.probs, grads, _reference(q, k, v, dout, mask, H))
    _assert_padded_rows(out, cache.probs, grads, mask)


@pytest.mark.cuda
# (the last shape: T and the head width D above THREADS, so the loops over keys and over D take several passes)
@pytest.mark.parametrize("B,T,C,H,n_pad", [(1, 1, 4, 1, 0), (2, 5, 6, 2, 1), (1, 7, 13, 1, 0), (2, 3, 8, 2, 2),
                                           (1, _cuda.THREADS + 3, _cuda.THREADS + 2, 1, 1)])
def test_cuda_matches_reference(rng, B, T, C, H, n_pad):
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
    out, cache = K.attention_forward(qd, kd, vd, mask, H)   # dispatches to CUDA on device arrays
    grads = K.attention_backward(dod, cache)
    assert _cuda.is_device_array(out) and all(_cuda.is_device_array(g) for g in grads)
    out, probs = _cuda.to_host(out), _cuda.to_host(cache.probs)
    grads = tuple(_cuda.to_host(g) for g in grads)
    _assert_matches(out, probs, grads, _reference(q, k, v, dout, mask, H))
    _assert_padded_rows(out, probs, grads, mask)


@pytest.mark.cuda
@pytest.mark.parametrize("B,T,C,H,n_pad", [(1, 1, 4, 1, 0), (2, 5, 6, 2, 1), (1, 7, 13, 1, 0)])
def test_cuda_dropout_matches_reference(rng, B, T, C, H, n_pad):
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    p, seed = 0.3, 2024
    qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
    out, cache = K.attention_forward(qd, kd, vd, mask, H, p, seed)
    grads = tuple(_cuda.to_host(g) for g in K.attention_backward(dod, cache))
    _assert_matches(_cuda.to_host(out), _cuda.to_host(cache.probs), grads,
                    _reference(q, k, v, dout, mask, H, p, seed))


def _multi_pass_shapes():
    """(B, T, C, H, n_pad) at which every loop of the CUDA kernels takes more than one pass: T above the rows of a
    block (K.ROWS_CUDA), the threads of a block and a tile (TILE = lanes per row) and not a multiple of any;
    the head width D above the block and the tile and a multiple of neither; several heads; padding (one sequence
    fully padded, the others at random lengths); on the simulator more (b, h, row tile)s than blocks per launch."""
    lanes = _cuda.THREADS // K.ROWS_CUDA
    T = max(_cuda.THREADS, 2 * lanes, 2 * K.ROWS_CUDA) + 3
    return [(2, T, 2 * (_cuda.THREADS + 3), 2, 1), (3, 2 * max(K.ROWS_CUDA, lanes) + 1, 3 * (lanes + 1), 3, 1)]


@pytest.mark.cuda
@pytest.mark.parametrize("shape,p", [(0, 0.3), (1, 0.0)])   # dropout on the larger shape; p = 0 checks padded rows
def test_cuda_multi_pass_shapes_match_reference(rng, shape, p):
    B, T, C, H, n_pad = _multi_pass_shapes()[shape]
    lanes = _cuda.THREADS // K.ROWS_CUDA
    D = C // H
    assert T > K.ROWS_CUDA and T > lanes and T % lanes and D > lanes and D % lanes and H > 1
    if (B, T) == _multi_pass_shapes()[0][:2]:
        assert T > _cuda.THREADS and D > _cuda.THREADS and D % _cuda.THREADS
        if _cuda.SIMULATOR:
            assert B * H * -(-T // K.ROWS_CUDA) > K.MAX_GRID_CUDA        # the blocks grid-stride
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    seed = 777
    qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
    out, cache = K.attention_forward(qd, kd, vd, mask, H, p, seed)
    grads = tuple(_cuda.to_host(g) for g in K.attention_backward(dod, cache))
    out, probs = _cuda.to_host(out), _cuda.to_host(cache.probs)
    _assert_matches(out, probs, grads, _reference(q, k, v, dout, mask, H, p, seed))
    if p == 0:
        _assert_padded_rows(out, probs, grads, mask)


@pytest.mark.cuda
def test_cuda_dropout_mask_is_the_dropout_kernels():
    # as test_dropout_mask_is_the_dropout_kernels, on the device, with T and D = T above the rows and threads of
    # a block: the zeros of out = P~ are exactly kernels/dropout.py's dropped entries, the rest P / (1 - p)
    B, T, p, seed = 2, max(16, _cuda.THREADS + 3), 0.25, 99
    r = np.random.default_rng(0)
    q, k = (r.standard_normal((B, T, T)).astype(np.float32) for _ in range(2))
    v = np.ascontiguousarray(np.broadcast_to(np.eye(T, dtype=np.float32), (B, T, T)))
    keep = dropout_keep_ref((B, 1, T, T), p, seed)[:, 0]       # (B, T, T)
    out, cache = K.attention_forward(*(_cuda.to_device(a) for a in (q, k, v)), np.ones((B, T), np.int64), 1, p, seed)
    out, probs = _cuda.to_host(out), _cuda.to_host(cache.probs)
    assert np.array_equal(out != 0, keep)
    np.testing.assert_allclose(out[keep], probs[:, 0][keep] / (1 - p), rtol=4 * _checks.EPS32)


@pytest.mark.cuda
def test_cuda_backward_allocates_no_scores_sized_array(rng, monkeypatch):
    """The backward's device allocations are dq, dk, dv (B, T, C) and the row sums (B, H, T): no (B, H, T, T) dS
    (at B = 64, T = 512, H = 12 that array alone is 805 MB); nothing is copied either way."""
    B, T, C, H = 2, 9, 8, 2
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=1)
    qd, kd, vd, dod = (_cuda.to_device(a) for a in (q, k, v, dout))
    _, cache = K.attention_forward(qd, kd, vd, mask, H, 0.2, 3)
    cuda = _cuda.get_cuda()
    shapes = []
    device_array = cuda.device_array

    def recording_device_array(shape, *args, **kwargs):
        shapes.append(tuple(np.atleast_1d(shape)))
        return device_array(shape, *args, **kwargs)

    monkeypatch.setattr(cuda, "device_array", recording_device_array)
    with _cuda.count_traffic() as n:
        shapes.clear()                                  # (count_traffic allocates one probe array itself)
        K.attention_backward(dod, cache)
    assert sorted(shapes) == sorted([(B, T, C)] * 3 + [(B, H, T)]), shapes
    assert n["alloc"] == 4 and n["h2d"] == 0 and n["d2h"] == 0 and n["sync"] == 0, n


@pytest.mark.cuda
def test_cuda_rejects_long_sequences():
    T = K.MAX_T_CUDA + 1
    x = _cuda.device_zeros((1, T, 1))
    with pytest.raises(ValueError, match=f"T <= {K.MAX_T_CUDA}"):
        K.attention_forward(x, x, x, np.ones((1, T), np.int64), 1)


# (c) against torch autograd ---------------------------------------------------------------------------------------

def _torch_attention(torch, q, k, v, mask, H):
    """The same maths in torch, written the way transformers' DistilBERT does it."""
    B, T, C = q.shape
    D = C // H
    split = lambda x: x.view(B, T, H, D).transpose(1, 2)                    # (B, H, T, D)
    scores = split(q) @ split(k).transpose(2, 3) / math.sqrt(D)             # (B, H, T, T)
    pad = (torch.as_tensor(mask) == 0).view(B, 1, 1, T)
    scores = scores.masked_fill(pad, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    out = (probs @ split(v)).transpose(1, 2).reshape(B, T, C)
    return out, probs


@pytest.mark.parametrize("n_pad", [0, 1])
def test_matches_torch(torch, rng, n_pad):
    B, T, C, H = 3, 7, 12, 3
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=n_pad)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    out_t, probs_t = _torch_attention(torch, qt, kt, vt, mask, H)
    out_t.backward(torch.tensor(dout))
    out, cache = K.attention_forward(q, k, v, mask, H)
    grads = K.attention_backward(dout, cache)
    ref = _reference(q, k, v, dout, mask, H)
    # two float32 results, each within the tolerance of the exact value: they agree within twice that
    expected = (out_t.detach().numpy(), probs_t.detach().numpy(), (qt.grad.numpy(), kt.grad.numpy(), vt.grad.numpy()))
    _assert_matches(out, cache.probs, grads, expected + (ref[3],), factor=2.0)
    assert np.all(np.isfinite(expected[0]))            # torch's fully padded row is finite too


# (d) through the autograd ---------------------------------------------------------------------------------------

def test_functional_attention_dropout_gradients_match_the_reference(rng):
    from minidistil.core import functional as F
    from minidistil.core.autograd import Tensor
    B, T, C, H, p, seed = 2, 6, 8, 2, 0.3, 5
    q, k, v, dout, mask = K.make_data(rng, B, T, C, n_pad_rows=1)
    tq, tk, tv = (Tensor(a, requires_grad=True) for a in (q, k, v))
    out, _ = F.attention(tq, tk, tv, mask, H, p, training=True, seed=seed)
    out.backward(dout)
    ref = _reference(q, k, v, dout, mask, H, p, seed)
    _assert_matches(out.numpy(), K.attention_forward_ref(q, k, v, mask, H, p, seed)[1].probs,
                    (tq.grad, tk.grad, tv.grad), ref)
    out_eval, _ = F.attention(tq, tk, tv, mask, H, p, training=False)   # eval: no dropout at all
    _checks.assert_close(out_eval.numpy(), K.attention_forward_ref(q, k, v, mask, H)[0], atol=ref[3][0])


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument(rng):
    q, k, v, dout, mask = K.make_data(rng, 2, 3, 4)
    with pytest.raises(ValueError, match="q: expected dtype float32, got float64"):
        K.attention_forward(q.astype(np.float64), k, v, mask, 2)
    with pytest.raises(ValueError, match=r"q: expected a 3-d array"):
        K.attention_forward(q[0], k[0], v[0], mask, 2)
    with pytest.raises(ValueError, match=r"k: expected the shape of q \(2, 3, 4\)"):
        K.attention_forward(q, k[:, :2].copy(), v, mask, 2)
    with pytest.raises(ValueError, match="v: expected a C-contiguous"):
        K.attention_forward_numba(q, k, np.swapaxes(np.swapaxes(v, 1, 2).copy(), 1, 2), mask, 2)
    with pytest.raises(ValueError, match="mask: expected an integer or bool array"):
        K.attention_forward(q, k, v, mask.astype(np.float32), 2)
    with pytest.raises(ValueError, match="mask: expected an integer or bool array"):
        K.attention_forward(q, k, v, [[1, 1, 1], [1, 1, 1]], 2)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        K.attention_forward(q, k, v, mask[:, :2], 2)
    with pytest.raises(ValueError, match="n_heads: the width C = 4 of q must be divisible by n_heads = 3"):
        K.attention_forward(q, k, v, mask, 3)
    with pytest.raises(ValueError, match="n_heads: expected a positive int"):
        K.attention_forward(q, k, v, mask, 0)
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 3, 4\)"):
        K.attention_backward(dout[:, :2].copy(), K.attention_forward(q, k, v, mask, 2)[1])


def test_bad_dropout_arguments_name_the_argument(rng):
    q, k, v, _, mask = K.make_data(rng, 1, 3, 4)
    with pytest.raises(ValueError, match="p:"):
        K.attention_forward(q, k, v, mask, 2, 1.0, 0)
    with pytest.raises(ValueError, match="p:"):
        K.attention_forward(q, k, v, mask, 2, -0.1, 0)
    with pytest.raises(ValueError, match="seed:"):
        K.attention_forward(q, k, v, mask, 2, 0.1, -3)


@pytest.mark.parametrize("layout", ["column blocks of one (B, T, 3C) array", "v transposed in memory"])
def test_blas_version_takes_strided_q_k_v(rng, layout):
    """The BLAS version reads q, k, v through numpy (no contiguity needed): the models hand it the three column
    blocks of one fused projection's output."""
    B, T, C, H = 2, 7, 12, 3
    q, k, v, dout, mask = K.make_data(rng, B, T, C)
    if layout.startswith("column"):
        qkv = np.concatenate([q, k, v], axis=-1)                    # (B, T, 3C)
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    else:
        v = np.swapaxes(np.swapaxes(v, 1, 2).copy(), 1, 2)
    assert not v.flags.c_contiguous
    out, c = K.attention_forward_blas(q, k, v, mask, H)
    grads = K.attention_backward_blas(dout, c)
    _assert_matches(out, c.probs, grads, _reference(q, k, v, dout, mask, H))
