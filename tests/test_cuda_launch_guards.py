"""Every CUDA launcher at N = 0 (an empty batch: no rows, no tokens, no elements).

A real driver rejects a launch with a grid of 0 blocks (CUDA_ERROR_INVALID_VALUE); the simulator would run nothing
and pass, so conftest's `_strict_launches` makes it raise as the driver does. Each launcher must skip the launch
and still return outputs of the right (empty) shape and dtype, as the CPU versions do. The inputs are device
arrays that refuse host conversion (`no_host_arrays`): an empty batch must not fall back to NumPy either.
"""
from __future__ import annotations

import numpy as np
import pytest

from minidistil.kernels import _cuda

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("no_host_arrays")]

C, V = 5, 7


def _d(shape, dtype=np.float32):
    return _cuda.to_device(np.zeros(shape, dtype))


def _shape(a):
    return tuple(a.shape)


def _layernorm():
    from minidistil.kernels import layernorm as K
    x, w, b = _d((0, C)), _d((C,)), _d((C,))
    y, cache = K.layernorm_forward_cuda(x, w, b, 1e-5)
    dx, dw, db = K.layernorm_backward_cuda(_d((0, C)), cache)
    y2, cache2 = K.residual_layernorm_forward_cuda(x, _d((0, C)), w, b, 1e-5)
    K.residual_layernorm_backward_cuda(_d((0, C)), cache2)
    assert _shape(y) == _shape(y2) == _shape(dx) == (0, C) and _shape(dw) == _shape(db) == (C,)
    # no rows: the weight and bias gradients are sums over nothing
    assert np.array_equal(_cuda.to_host(dw), np.zeros(C, np.float32))
    assert np.array_equal(_cuda.to_host(db), np.zeros(C, np.float32))


def _softmax():
    from minidistil.kernels import softmax as K
    for fwd, bwd in ((K.softmax_forward_cuda, K.softmax_backward_cuda),
                     (K.log_softmax_forward_cuda, K.log_softmax_backward_cuda)):
        y, cache = fwd(_d((0, 3, V)))
        assert _shape(y) == (0, 3, V) and _shape(bwd(_d((0, 3, V)), cache)) == (0, 3, V)


def _activations():
    from minidistil.kernels import activations as K
    for fwd, bwd in ((K.tanh_forward_cuda, K.tanh_backward_cuda), (K.relu_forward_cuda, K.relu_backward_cuda)):
        y, cache = fwd(_d((0, C)))
        assert _shape(bwd(_d((0, C)), cache)) == (0, C)


def _gelu():
    from minidistil.kernels import gelu as K
    y, cache = K.gelu_forward_cuda(_d((0, C)))
    assert _shape(K.gelu_backward_cuda(_d((0, C)), cache)) == (0, C)
    y, cache = K.bias_gelu_forward_cuda(_d((0, C)), _d((C,)))
    dx, db = K.bias_gelu_backward_cuda(_d((0, C)), cache)
    assert _shape(dx) == (0, C) and np.array_equal(_cuda.to_host(db), np.zeros(C, np.float32))


def _adamw():
    from minidistil.kernels import adamw as K
    K.adamw_step_cuda(_d((0,)), _d((0,)), _d((0,)), _d((0,)), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
                      weight_decay=0.01, step=1)


def _attention():
    from minidistil.kernels import attention as K
    q = _d((0, 4, 8))
    out, cache = K.attention_forward_cuda(q, _d((0, 4, 8)), _d((0, 4, 8)), _d((0, 4), np.int64), 2, p=0.1, seed=3)
    dq, dk, dv = K.attention_backward_cuda(_d((0, 4, 8)), cache)
    assert _shape(out) == _shape(dq) == _shape(dk) == _shape(dv) == (0, 4, 8)


def _losses():
    from minidistil.kernels import bce, cosine, cross_entropy, distill_kl
    loss, cache = cross_entropy.cross_entropy_forward_cuda(_d((0, V)), _d((0,), np.int64))
    assert float(_cuda.to_host(loss)) == 0.0
    assert _shape(cross_entropy.cross_entropy_backward_cuda(1.0, cache)) == (0, V)
    loss, cache = distill_kl.distill_kl_forward_cuda(_d((0, V)), _d((0, V)), 2.0, _d((0,), np.bool_))
    assert float(_cuda.to_host(loss)) == 0.0
    assert _shape(distill_kl.distill_kl_backward_cuda(1.0, cache)) == (0, V)
    for fwd, bwd in ((cosine.cosine_loss_forward_cuda, cosine.cosine_loss_backward_cuda),
                     (cosine.mse_forward_cuda, cosine.mse_backward_cuda)):
        loss, cache = fwd(_d((0, C)), _d((0, C)), _d((0,), np.bool_))
        assert float(_cuda.to_host(loss)) == 0.0
        da, db = bwd(1.0, cache)
        assert _shape(da) == _shape(db) == (0, C)
    loss, cache = bce.bce_with_logits_forward_cuda(_d((0, 3)), _d((0, 3)))
    assert float(_cuda.to_host(loss)) == 0.0
    assert _shape(bce.bce_with_logits_backward_cuda(1.0, cache)) == (0, 3)


def _dropout():
    from minidistil.kernels import dropout as K
    y, cache = K.dropout_forward_cuda(_d((0, C)), 0.1, 7)
    assert _shape(K.dropout_backward_cuda(_d((0, C)), cache)) == (0, C)


def _embedding():
    from minidistil.kernels import embedding as K
    out, cache = K.embedding_forward_cuda(_d((0, 4), np.int64), _d((V, C)))
    assert _shape(out) == (0, 4, C)
    assert np.array_equal(_cuda.to_host(K.embedding_backward_cuda(_d((0, 4, C)), cache)), np.zeros((V, C)))


def _elementwise():
    from minidistil.kernels import elementwise as E
    a = _d((0, C))
    assert _shape(E.binary_cuda("add", a, _d((C,)))) == (0, C)
    assert _shape(E.scalar_cuda("mul", a, 2.0)) == (0, C)
    assert _shape(E.broadcast_to_cuda(_d((1, C)), (0, C))) == (0, C)
    E.axpy_cuda(_d((0, C)), a, 2.0)
    assert _shape(E.fill_cuda((0, C), 1.0)) == (0, C)
    assert _shape(E.copy_cuda(a)) == (0, C)
    assert np.array_equal(_cuda.to_host(E.sum_to_cuda(a, (C,))), np.zeros(C, np.float32))
    assert _shape(E.take_cuda(_d((0, 3, C)), 1, 0)) == (0, C)
    assert _shape(E.take_backward_cuda(_d((0, C)), (0, 3, C), 1, 0)) == (0, 3, C)
    assert _shape(E.sum(a, axis=0)) == (C,)


def _linear():
    from minidistil.kernels import linear as K
    assert _shape(K.matmul_cuda(_d((0, C)), _d((C, 3)))) == (0, 3)
    assert _shape(K.gemm_cuda(_d((C, 0)), _d((3, C)), trans_a=True, trans_b=True)) == (0, 3)
    y, cache = K.linear_forward_cuda(_d((0, 4, C)), _d((3, C)), _d((3,)))
    dx, dw, db = K.linear_backward_cuda(_d((0, 4, 3)), cache)
    assert _shape(y) == (0, 4, 3) and _shape(dx) == (0, 4, C)
    assert np.array_equal(_cuda.to_host(dw), np.zeros((3, C))) and np.array_equal(_cuda.to_host(db), np.zeros(3))
    assert _shape(_cuda.column_sum(_d((0, C)))) == (C,)


def _int8():
    from minidistil.kernels import int8 as K
    w = K.weight_to_device(K.quantize_weight(np.ones((3, C), np.float32)))
    q, s, z = K.quantize_rows_cuda(_d((0, C)))
    assert _shape(q) == (0, C)
    assert _shape(K.int8_matmul_cuda(q, w)) == (0, 3)
    assert _shape(K.int8_linear_forward_cuda(_d((0, 4, C)), w, _d((3,)))) == (0, 4, 3)
    qe = K.quantize_weight(np.ones((V, C), np.float32))
    out = K.int8_embedding_cuda(_d((0, 4), np.int64), _cuda.to_device(qe.q), _cuda.to_device(qe.scale))
    assert _shape(out) == (0, 4, C)


LAUNCHERS = [_layernorm, _softmax, _activations, _gelu, _adamw, _attention, _losses, _dropout, _embedding,
             _elementwise, _linear, _int8]


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=lambda f: f.__name__.strip("_"))
def test_launcher_at_n_equals_0(launcher):
    launcher()


def test_the_simulator_rejects_an_empty_grid_as_a_gpu_does():
    """The check the test above relies on: a launch of 0 blocks raises here, as the driver's does."""
    cuda = _cuda.get_cuda()

    @cuda.jit
    def noop(a):
        pass

    with pytest.raises(RuntimeError, match="CUDA_ERROR_INVALID_VALUE"):
        noop[0, _cuda.THREADS](_d((1,)))
