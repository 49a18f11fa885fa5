"""What a training step on the GPU costs in host traffic, counted on the simulator (or the GPU) by
_cuda.count_traffic, with a written budget.

A step that waits for the GPU (a device->host copy, a synchronize) stalls the queue of kernels every time; on a GPU
a DistilBERT step has ~100 parameters and ~30 kernels per layer, so one wait per parameter or per loss costs more
than the step's arithmetic at small batches. The budget of one distillation step (teacher forward, student forward,
every loss term, backward, gradient clipping, AdamW):
  - device->host copies: 1, the global gradient norm (8 bytes) that clip_grad_norm returns and that clipping needs.
    Every loss is a 0-d device array, each term's gradient scale is computed on the device, and the per-parameter
    norms are added on the device in one reduction. Reading the loss or the terms to log them is the caller's.
  - synchronisations: 1, the same read (nothing calls cuda.synchronize).
  - host->device copies: the batch only (the rows of the MLM logits among it), a fixed number that does not grow
    with the layers (listed in the test).
"""
from __future__ import annotations

import numpy as np
import pytest

from minidistil.kernels import _cuda

pytestmark = pytest.mark.cuda


def test_count_traffic_counts_each_kind_and_restores_numba():
    cuda = _cuda.get_cuda()
    before = (cuda.to_device, cuda.device_array, cuda.synchronize)
    with _cuda.count_traffic() as c:
        a = _cuda.to_device(np.ones(3, np.float32))   # 1 h2d (and its allocation)
        _cuda.device_empty((2,))                       # 1 allocation
        _cuda.to_host(a)                               # 1 d2h, which waits: 1 sync
        cuda.synchronize()                             # 1 sync
    assert dict(c) == {"h2d": 1, "alloc": 2, "d2h": 1, "sync": 2}
    assert (cuda.to_device, cuda.device_array, cuda.synchronize) == before
    with _cuda.count_traffic() as c:
        _cuda.to_host(a)
    assert dict(c) == {"d2h": 1, "sync": 1}


def _step(teacher, student, opt, w, batch, seed):
    from minidistil.core import functional as F
    from minidistil.core.autograd import no_grad
    from minidistil.core.nn import to_device_of
    from minidistil.train.distill import distillation_loss_terms, forward_outputs, logit_rows
    from minidistil.core.optim import clip_grad_norm
    ids, mask, labels = batch
    F.manual_seed(seed)
    rows = logit_rows(labels, mask, w)                  # the MLM logits' rows, uploaded once for both models
    rows_on = to_device_of(rows, student)
    with no_grad():
        t_logits, t_hidden = forward_outputs(teacher, ids, mask, logits_rows=rows_on)
    s_logits, s_hidden = forward_outputs(student, ids, mask, logits_rows=rows_on)
    loss, terms = distillation_loss_terms(s_logits, t_logits, s_hidden, t_hidden, labels, mask, w, logits_rows=rows)
    loss.backward()
    norm = clip_grad_norm(opt.parameters(), max_norm=0.05)
    opt.step()
    opt.zero_grad()
    return loss, terms, norm


def test_a_distillation_step_keeps_to_its_traffic_budget(no_host_arrays):
    """Two steps of every term but the similarity KL (which is computed on the host by design), counted: one
    device->host copy and one wait each (the gradient norm), the batch's fixed host->device copies, and the same
    allocations in both steps. The device arrays refuse host conversion (no_host_arrays): nothing hides a copy."""
    from test_gpu import _data, _teacher

    from minidistil.train.distill import LossWeights, make_student
    from minidistil.core.optim import AdamW
    teacher = _teacher().eval()
    student = make_student(teacher, layers=[0])
    teacher.to("cuda")
    student.to("cuda")
    w = LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=1.0, alpha_pool_cos=1.0, alpha_pool_mse=1.0)
    opt = AdamW(student.named_parameters(), lr=1e-2, eps=1e-3)
    student.train()
    counts = []
    for s in range(2):
        with _cuda.count_traffic() as c:
            loss, terms, norm = _step(teacher, student, opt, w, _data(10 + s), s)
        counts.append(dict(c))
        # logging, after the step: the loss and each term are device scalars, read here (one copy each)
        assert _cuda.is_device_array(loss.data) and all(_cuda.is_device_array(t.data) for t in terms.values())
        assert np.isfinite(float(loss.item())) and norm > 0
    for c in counts:
        assert c.get("d2h", 0) == 1, f"device->host copies in a step: {c} (budget: the gradient norm only)"
        assert c.get("sync", 0) == 1, f"waits for the GPU in a step: {c} (budget: 1)"
        # the batch: the BERT teacher's input ids, token types, mask and position ids (4), the DistilBERT
        # student's ids, mask and position ids (3), the rows of the MLM logits (1), the MLM labels at those rows
        # (1), the row mask of the cosine / MSE terms (1), and mean pooling's mask and 1/count for each model (4)
        assert c.get("h2d", 0) == 14, f"host->device copies in a step: {c} (budget: 14, the batch)"
    assert counts[0]["alloc"] == counts[1]["alloc"], f"allocations differ between steps: {counts}"


def test_an_int8_layer_copies_nothing_to_the_device():
    """int8_linear_forward on device arrays: no host->device copy per call (the unused one-element arguments of
    the GEMM are made once on the device) and nothing copied back."""
    from minidistil.kernels import int8 as K
    w = K.weight_to_device(K.quantize_weight(np.linspace(-1, 1, 15, dtype=np.float32).reshape(3, 5)))
    x = _cuda.to_device(np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5))
    K.int8_linear_forward_cuda(x, w)  # first call: builds the kernels and the zero arguments
    with _cuda.count_traffic() as c:
        K.int8_linear_forward_cuda(x, w)
        K.int8_matmul_cuda(K.quantize_rows_cuda(x)[0], w)
    assert c.get("h2d", 0) == 0 and c.get("d2h", 0) == 0 and c.get("sync", 0) == 0, dict(c)
