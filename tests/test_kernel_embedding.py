"""Embedding: the three test levels (finite differences, float32 versions vs reference, torch), repeated ids summed."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import embedding as K

# (ids shape, V, C): T=1, T=7, C=13, a 0-d id, a single-row table, ids of 3 dims, empty ids
CASES = [((1,), 5, 13), ((7,), 3, 13), ((2, 7), 11, 8), ((), 4, 13), ((3, 4), 1, 5), ((2, 3, 4), 9, 768),
         ((0,), 6, 13), ((2, 0), 6, 3)]


def _data(rng, ids_shape, V, C, dtype=np.int64):
    ids = rng.integers(0, V, size=ids_shape).astype(dtype)
    table = rng.standard_normal((V, C)).astype(np.float32)
    dout = rng.standard_normal((*ids_shape, C)).astype(np.float32)
    return ids, table, dout


def _bwd_tol(ids, dout):
    # dtable[v] sums the k rows of dout whose id is v, in float32: f32_tol(k, max|dout|) with k the largest count
    k = int(np.bincount(np.asarray(ids).reshape(-1)).max(initial=1)) if np.size(ids) else 1
    return _checks.f32_tol(k, scale=float(np.abs(dout).max(initial=1.0)))


# (a) the reference backward against central finite differences in float64 ---------------------------------------

def test_ref_backward_matches_finite_differences(rng):
    ids = np.array([[0, 2, 2], [4, 0, 2]])         # repeated ids: 2 three times, 0 twice, 1 and 3 never
    table = rng.standard_normal((5, 4))
    w = rng.standard_normal((2, 3, 4))               # loss = sum(w * table[ids]), so dL/dout = w
    loss = lambda: float((w * K.embedding_forward_ref(ids, table)[0]).sum())
    dtable = K.embedding_backward_ref(w, K.EmbeddingCache(ids, 5))
    assert _checks.relative_error(dtable, _checks.numerical_gradient(loss, table)) <= 1e-6
    assert np.all(dtable[[1, 3]] == 0.0)             # ids that never occur get no gradient


# (b) every float32 version against the reference ----------------------------------------------------------------
# Forward is a copy: exact (atol 0). Backward sums repeated rows: _bwd_tol.

@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,C", CASES)
def test_cpu_matches_reference(rng, ids_shape, V, C, id_dtype):
    ids, table, dout = _data(rng, ids_shape, V, C, id_dtype)
    out, cache = K.embedding_forward(ids, table)
    dtable = K.embedding_backward(dout, cache)
    assert out.dtype == dtable.dtype == np.float32
    assert out.shape == (*ids_shape, C) and dtable.shape == (V, C)
    _checks.assert_close(out, K.embedding_forward_ref(ids, table.astype(np.float64))[0], atol=0.0, name="out")
    ref = K.embedding_backward_ref(dout.astype(np.float64), K.EmbeddingCache(ids, V))
    _checks.assert_close(dtable, ref, atol=_bwd_tol(ids, dout), name="dtable")
    _checks.assert_close(K.embedding_backward_cpu_colblocks(dout, cache), ref, atol=_bwd_tol(ids, dout),
                         name="dtable colblocks")


def test_repeated_ids_are_summed(rng):
    # every position holds id 3: dtable[3] is the sum of all rows of dout, every other row is exactly zero
    ids = np.full((4, 7), 3, dtype=np.int64)
    dout = rng.standard_normal((4, 7, 130)).astype(np.float32)
    _, cache = K.embedding_forward(ids, rng.standard_normal((6, 130)).astype(np.float32))
    for dtable in (K.embedding_backward(dout, cache), K.embedding_backward_cpu_colblocks(dout, cache)):
        _checks.assert_close(dtable[3], dout.astype(np.float64).sum(axis=(0, 1)), atol=_checks.f32_tol(28, scale=4))
        assert np.all(np.delete(dtable, 3, axis=0) == 0.0)


def test_backward_returns_a_fresh_array(rng):
    ids, table, dout = _data(rng, (2, 3), 4, 5)
    _, cache = K.embedding_forward(ids, table)
    a = K.embedding_backward(dout, cache)
    b = K.embedding_backward(dout, cache)
    assert a is not b and np.array_equal(a, b)       # a second call does not add into the first result


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(0, 9), st.integers(1, 12), st.integers(1, 17), st.integers(0, 2 ** 31))
def test_cpu_matches_reference_hypothesis(B, T, V, C, seed):
    ids, table, dout = _data(np.random.default_rng(seed), (B, T), V, C)
    out, cache = K.embedding_forward(ids, table)
    _checks.assert_close(out, table.astype(np.float64)[ids], atol=0.0)
    _checks.assert_close(K.embedding_backward(dout, cache),
                         K.embedding_backward_ref(dout.astype(np.float64), K.EmbeddingCache(ids, V)),
                         atol=_bwd_tol(ids, dout))


@pytest.mark.cuda
# (the last shape takes more than one pass of every strided loop, whatever THREADS is)
@pytest.mark.parametrize("ids_shape,V,C", [((1,), 3, 1), ((2, 7), 4, 13), ((3, 5), 2, 40), ((0,), 3, 4),
                                           ((2, 3), 5, 2 * _cuda.THREADS + 3)])
def test_cuda_matches_reference(rng, ids_shape, V, C):
    # V small so that ids repeat across blocks: the atomics must sum them (in any order: _bwd_tol allows it)
    ids, table, dout = _data(rng, ids_shape, V, C)
    out_d, cache = K.embedding_forward(ids, _cuda.to_device(table))   # a device table dispatches to CUDA
    assert _cuda.is_device_array(out_d) and _cuda.is_device_array(cache.ids)
    dtable = _cuda.to_host(K.embedding_backward(_cuda.to_device(dout), cache))
    out = _cuda.to_host(out_d)
    assert out.dtype == dtable.dtype == np.float32
    _checks.assert_close(out, table.astype(np.float64)[ids], atol=0.0, name="out")
    _checks.assert_close(dtable, K.embedding_backward_ref(dout.astype(np.float64), K.EmbeddingCache(ids, V)),
                         atol=_bwd_tol(ids, dout), name="dtable")
    # device ids work too, and an out-of-range device id is still caught (checked on a host copy)
    out2, _ = K.embedding_forward(_cuda.to_device(ids.astype(np.int32)), _cuda.to_device(table))
    assert np.array_equal(_cuda.to_host(out2), out)
    if ids.size:
        bad = ids.copy()
        bad.reshape(-1)[-1] = V
        with pytest.raises(ValueError, match=f"ids: id {V} at position"):
            K.embedding_forward(_cuda.to_device(bad), _cuda.to_device(table))


# (c) against torch autograd ---------------------------------------------------------------------------------------

def test_matches_torch(torch, rng):
    ids, table, dout = _data(rng, (4, 9), 6, 13)      # 36 positions over 6 ids: many repeats
    tt = torch.tensor(table, requires_grad=True)
    yt = torch.nn.functional.embedding(torch.tensor(ids), tt)
    yt.backward(torch.tensor(dout))
    out, cache = K.embedding_forward(ids, table)
    dtable = K.embedding_backward(dout, cache)
    _checks.assert_close(out, yt.detach().numpy(), atol=0.0, name="out")
    # torch and we sum the repeats in float32 in possibly different orders: twice the one-sided bound
    _checks.assert_close(dtable, tt.grad.numpy(), atol=2 * _bwd_tol(ids, dout), name="dtable")


# bad input -------------------------------------------------------------------------------------------------------

def test_bad_input_names_the_argument():
    table = np.zeros((5, 3), np.float32)
    ids = np.array([[0, 1], [2, 3]])
    with pytest.raises(ValueError, match=r"ids: id 5 at position \(1, 0\) is out of range \[0, 5\)"):
        K.embedding_forward(np.array([[0, 1], [5, 2]]), table)
    with pytest.raises(ValueError, match=r"ids: id -1 at position \(1,\)"):
        K.embedding_forward(np.array([0, -1]), table)
    with pytest.raises(ValueError, match="ids: expected dtype int32 or int64, got float32"):
        K.embedding_forward(ids.astype(np.float32), table)
    with pytest.raises(ValueError, match="ids: expected dtype int32 or int64, got int16"):
        K.embedding_forward(ids.astype(np.int16), table)
    with pytest.raises(ValueError, match="table: expected dtype float32, got float64"):
        K.embedding_forward(ids, table.astype(np.float64))
    with pytest.raises(ValueError, match="table: expected a 2-d array"):
        K.embedding_forward(ids, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="table: expected a C-contiguous"):
        K.embedding_forward(ids, np.zeros((3, 5), np.float32).T)
    _, cache = K.embedding_forward(ids, table)
    with pytest.raises(ValueError, match=r"dout: expected shape \(2, 2, \*\)"):
        K.embedding_backward(np.zeros((2, 3, 3), np.float32), cache)
    with pytest.raises(ValueError, match="dout: expected a 3-d array"):
        K.embedding_backward(np.zeros((4, 3), np.float32), cache)
    with pytest.raises(ValueError, match="dout: expected dtype float32"):
        K.embedding_backward(np.zeros((2, 2, 3), np.float64), cache)
