"""What a training step on the GPU costs in host traffic, counted on the simulator (or the GPU) by
_cuda.count_traffic, with a written budget.

A step that waits for the GPU (a device->host copy, a synchronize) stalls the queue of kernels every time; on a GPU
a DistilBERT step has ~100 parameters and ~30 kernels per layer, so one wait per parameter or per loss costs more
than the step's arithmetic at small batches. The budget of one distillation step that does not log (teacher
forward, student forward, every loss term, backward, and the training loops' update, minidistil.train.run.update:
gradient clipping and AdamW):
  - device->host copies: 0. Every loss is a 0-d device array and each term's gradient scale is computed on the
    device; clipping adds every gradient's squares in one device reduction, computes the norm and the coefficient
    min(1, max_norm / (norm + 1e-6)) on the device and scales the gradients by it there; AdamW's kernels read the
    norm from device memory and skip the update when it is not finite. The loss, the terms and the norm are read
    at the loops' logging steps (minidistil.train.run.StepRows, every READ_EVERY steps), not counted here.
  - synchronisations: 0 (nothing calls cuda.synchronize, and no copy comes back).
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


def _step(teacher, student, opt, w, batch, seed, run):
    from minidistil.core import functional as F
    from minidistil.core.autograd import no_grad
    from minidistil.core.nn import to_device_of
    from minidistil.train.distill import distillation_loss_terms, forward_outputs, logit_rows
    from minidistil.train.parallel import World
    from minidistil.train.run import update
    ids, mask, labels = batch
    F.manual_seed(seed)
    rows = logit_rows(labels, mask, w)                  # the MLM logits' rows, uploaded once for both models
    rows_on = to_device_of(rows, student)
    with no_grad():
        t_logits, t_hidden = forward_outputs(teacher, ids, mask, logits_rows=rows_on)
    s_logits, s_hidden = forward_outputs(student, ids, mask, logits_rows=rows_on)
    loss, terms = distillation_loss_terms(s_logits, t_logits, s_hidden, t_hidden, labels, mask, w, logits_rows=rows)
    loss.backward()
    norm = update(run, World(), opt, seed, 0.05, 1e-2)   # the loops' update: clipping (0.05: it scales), AdamW
    return loss, terms, norm


def test_a_distillation_step_keeps_to_its_traffic_budget(no_host_arrays, tmp_path):
    """Two steps of every term but the similarity KL (which is computed on the host by design), counted: no
    device->host copy and no wait, the batch's fixed host->device copies, and the same allocations in both steps.
    The device arrays refuse host conversion (no_host_arrays): nothing hides a copy. (Before clipping moved to the
    device this test failed: one copy and one wait per step, the gradient norm.)"""
    from test_gpu import _data, _teacher

    from minidistil.train.distill import LossWeights, make_student
    from minidistil.core.optim import AdamW
    from minidistil.train.run import Run
    teacher = _teacher().eval()
    student = make_student(teacher, layers=[0])
    teacher.to("cuda")
    student.to("cuda")
    w = LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=1.0, alpha_pool_cos=1.0, alpha_pool_mse=1.0)
    opt = AdamW(student.named_parameters(), lr=1e-2, eps=1e-3)
    student.train()
    counts, norms = [], []
    run = Run(tmp_path / "run", writer=False)   # checks, writes nothing
    for s in range(2):
        with _cuda.count_traffic() as c:
            loss, terms, norm = _step(teacher, student, opt, w, _data(10 + s), s, run)
        counts.append(dict(c))
        # logging, after the step: the loss, each term and the norm are device scalars, read here (one copy each)
        assert _cuda.is_device_array(loss.data) and all(_cuda.is_device_array(t.data) for t in terms.values())
        norms.append(norm)
        assert np.isfinite(float(_cuda.to_host(loss.data)))
    for c in counts:
        assert c.get("d2h", 0) == 0, f"device->host copies in a step: {c} (budget: 0)"
        assert c.get("sync", 0) == 0, f"waits for the GPU in a step: {c} (budget: 0)"
        # the batch: the BERT teacher's input ids, token types, mask and position ids (4), the DistilBERT
        # student's ids, mask and position ids (3), the rows of the MLM logits (1), the MLM labels at those rows
        # (1), the row mask of the cosine / MSE terms (1), and mean pooling's mask and 1/count for each model (4)
        assert c.get("h2d", 0) == 14, f"host->device copies in a step: {c} (budget: 14, the batch)"
    assert counts[0]["alloc"] == counts[1]["alloc"], f"allocations differ between steps: {counts}"
    # the norm, left on the device, read when the loop logs: finite and above 0.05 (so the step was clipped)
    assert all(_cuda.is_device_array(n) and 0.05 < float(_cuda.to_host(n)[0]) < np.inf for n in norms), norms


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


def test_the_distillation_loop_reads_only_when_it_logs(tmp_path, monkeypatch):
    """distill(device="cuda") itself, reading every 2 updates (READ_EVERY), with a NaN put into a gradient at
    update 1: neither update copies anything back or waits outside the read; the read after update 2 finds update
    1's NaN norm and stops the run naming it (nothing logged, nothing saved); update 1 was skipped on the device, so
    every parameter is still finite (and update 2 trained on). The tiniest models: the simulator runs every GPU
    thread as a Python thread."""
    from conftest import _corpus_dir

    from minidistil.core.config import BertConfig
    from minidistil.io.tokenizer import Tokenizer
    from minidistil.models.bert import BertForMaskedLM
    from minidistil.train import data as Data
    from minidistil.train import distill as D
    from minidistil.train import run as run_module
    monkeypatch.setattr(D, "READ_EVERY", 2)
    corpus = _corpus_dir(tmp_path, 2)
    tokenizer = Tokenizer(Data.train_wordpiece([p.read_text() for p in sorted(corpus.glob("*.txt"))], vocab_size=40))
    V = tokenizer.vocab_size
    teacher = BertForMaskedLM.from_config(BertConfig(vocab_size=V, hidden_size=8, num_hidden_layers=1,  # tiny:
                                                     num_attention_heads=2, intermediate_size=16,      # simulator
                                                     max_position_embeddings=16), seed=0)
    reads, seen, real_clip, real_flush, real_train = [], {}, run_module.clip_grad_norm, D.StepRows.flush, D._train

    def poisoned_clip(params, max_norm, **kwargs):
        seen["params"] = params = list(params)
        seen["updates"] = seen.get("updates", 0) + 1
        if seen["updates"] == 1:
            _cuda.fill_(next(p for p in params if p.grad is not None).grad, np.nan)   # on the device, no copy
        return real_clip(params, max_norm, **kwargs)

    def counted_flush(self):
        before = dict(seen["counts"])
        try:
            real_flush(self)
        finally:
            reads.append((before, dict(seen["counts"])))

    def counted_train(*args, **kwargs):
        with _cuda.count_traffic() as c:
            seen["counts"] = c
            return real_train(*args, **kwargs)

    monkeypatch.setattr(run_module, "clip_grad_norm", poisoned_clip)
    monkeypatch.setattr(D.StepRows, "flush", counted_flush)
    monkeypatch.setattr(D, "_train", counted_train)
    with pytest.raises(run_module.Diverged, match=r"step 1: the gradient norm is nan"):
        D.distill(teacher, tmp_path / "student", tokenizer=tokenizer, corpus=[str(corpus)], device="cuda",
                  steps=2, batch_size=1, max_len=10, student_layers=1, checkpoint_every=0, progress=False,
                  evaluate=False, held_out=0.25)
    assert seen["updates"] == 2                                         # the stop came at the read after update 2
    total = dict(seen["counts"])
    inside = {k: sum(after.get(k, 0) - before.get(k, 0) for before, after in reads) for k in ("d2h", "sync")}
    assert len(reads) == 1 and inside["d2h"] > 0
    assert total.get("d2h", 0) == inside["d2h"] and total.get("sync", 0) == inside["sync"], (total, inside)
    log = tmp_path / "student" / "metrics.jsonl"
    assert not log.exists() or log.read_text() == ""
    assert all(np.isfinite(_cuda.to_host(p.data)).all() for p in seen["params"])
