"""The MLM logits only at the rows a loss reads (`logits_rows=`): the same loss terms and the same gradients for
every parameter as the computation at every position, on the CPU and on numba.cuda.

Tolerances. The two computations run the same encoder on the same inputs; they differ in the MLM head, which runs
its GEMMs, layer norm and log-softmax on M rows instead of B*T (BLAS may block a product of another height
differently, and the final means and the weight gradients sum over M rows instead of B*T rows of which the others
are zero): only the order of float32 sums differs. As in tests/test_gpu.py, each run is off by at most
n * f32_tol(K, scale) after a chain of n reductions of length <= K, so the two differ by at most twice that. A term's
value is at the end of the head's chain (transform, layer norm, projector, log-softmax, the mean: 5); a gradient
goes back through the head (5 more) and then through every encoder layer (9 reductions each, see test_gpu.py) and
the embedding layer norm (1). K = max(C, F, V, B*T), scale max(|term|, 1) for a term and the largest gradient entry
of the all-positions run for the gradients.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY, _tiny_teacher
from minidistil.core import functional as F
from minidistil.core.autograd import Tensor, no_grad
from minidistil.kernels import _checks, _cuda

N_HEAD, N_PER_LAYER = 5, 9
B, T = 3, 7


def _chain_tol(n_reductions: int, K: int, scale: float) -> float:
    return 2 * n_reductions * _checks.f32_tol(K, scale=scale)


def _batch(seed=0, V=TINY["vocab_size"]):
    r = np.random.default_rng(seed)
    ids = r.integers(5, V, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[0, 6:] = 0
    mask[2, 3:] = 0                                   # padding: no loss reads it
    labels = np.full((B, T), -100, np.int64)
    labels[0, 1], labels[1, 4], labels[1, 6], labels[2, 2] = ids[0, 1], ids[1, 4], ids[1, 6], ids[2, 2]
    return ids, mask, labels


# ---- the row gather ------------------------------------------------------------------------------------------

def test_take_rows_gathers_and_scatter_adds(rng):
    """out = x[rows] exactly; dx = zeros with dout added at each row taken (a repeated row gets both)."""
    x = rng.standard_normal((7, 5)).astype(np.float32)
    rows = np.array([4, 0, 4, 6], np.int64)
    xt = Tensor(x, requires_grad=True)
    out = F.take_rows(xt, rows)
    assert out.shape == (4, 5) and out.dtype == np.float32
    assert np.array_equal(out.numpy(), x[rows])
    dout = rng.standard_normal((4, 5)).astype(np.float32)
    (out * dout).sum().backward()
    ref = np.zeros((7, 5))
    np.add.at(ref, rows, dout.astype(np.float64))
    # row 4 sums two float32 terms: one rounding of a sum of size <= 2 max|dout|
    _checks.assert_close(xt.grad, ref, atol=_checks.f32_tol(2, scale=2 * np.abs(dout).max()), name="dx")
    assert not xt.grad[[1, 2, 3, 5]].any()


# ---- the models ----------------------------------------------------------------------------------------------

def _mlm_models():
    from minidistil.core.config import DistilBertConfig
    from minidistil.models.distilbert import DistilBertForMaskedLM
    cfg = DistilBertConfig(vocab_size=TINY["vocab_size"], dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=TINY["max_position_embeddings"])
    return {"bert": (_tiny_teacher(seed=3), TINY["num_hidden_layers"]),
            "distilbert": (DistilBertForMaskedLM.from_config(cfg, seed=4), 2)}


def _grads(model):
    return {n: np.array(_cuda.to_host(p.grad)) for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_mlm_head_on_rows_equals_every_position(arch):
    """The public forward is unchanged ((B, T, V) at every position); logits_rows gives those logits' rows, the
    loss over labels at those rows equals the loss over every position, and so does every parameter's gradient."""
    model, layers = _mlm_models()[arch]
    model.eval()
    ids, mask, labels = _batch(1)
    V = model.config.vocab_size
    full = model(ids, mask, labels=labels)
    assert full.logits.shape == (B, T, V)
    full.loss.backward()
    g_full = _grads(model)
    model.zero_grad()
    rows = np.flatnonzero(labels.reshape(-1) != -100)                           # the masked positions
    part = model(ids, mask, labels=labels, logits_rows=rows)
    assert part.logits.shape == (rows.size, V)
    part.loss.backward()
    g_rows = _grads(model)
    K = max(32, 64, V, B * T)
    _checks.assert_close(part.logits.numpy(), full.logits.numpy().reshape(B * T, V)[rows],
                         atol=_chain_tol(N_HEAD - 1, K, max(1.0, float(np.abs(full.logits.numpy()).max()))),
                         name="logits at the rows")
    loss = float(full.loss.item())
    assert abs(float(part.loss.item()) - loss) <= _chain_tol(N_HEAD, K, max(1.0, abs(loss)))
    assert set(g_rows) == set(g_full)
    scale = max(float(np.abs(g).max()) for g in g_full.values())
    tol = _chain_tol(2 * N_HEAD + N_PER_LAYER * layers + 1, K, scale)
    for n in g_full:
        _checks.assert_close(g_rows[n], g_full[n], atol=tol, name=n)


def test_logits_rows_are_checked():
    model, _ = _mlm_models()["distilbert"]
    ids, mask, _ = _batch()
    with pytest.raises(ValueError, match=r"logits_rows: id 21 at position \(1,\) is out of range \[0, 21\)"):
        model(ids, mask, logits_rows=np.array([0, B * T]))
    with pytest.raises(ValueError, match="logits_rows: expected a 1-d integer array"):
        model(ids, mask, logits_rows=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="logits_rows: expected a 1-d integer array"):
        model(ids, mask, logits_rows=np.array([0.5]))


# ---- the distillation loss -----------------------------------------------------------------------------------

def _weights(case):
    from minidistil.train.distill import LossWeights
    return {"triple": LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0),
            "mlm_only": LossWeights(alpha_ce=0.0, alpha_mlm=2.0, alpha_cos=0.0),
            "kl_masked_only": LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, kl_masked_only=True),
            "kl_only": LossWeights(alpha_ce=5.0, alpha_mlm=0.0, alpha_cos=1.0, alpha_pool_cos=1.0),
            "nothing_masked": LossWeights(alpha_ce=0.0, alpha_mlm=2.0, alpha_cos=1.0),
            "labels_on_padding": LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0)}[case]


def _case_batch(case, seed, V):
    ids, mask, labels = _batch(seed, V)
    if case == "nothing_masked":
        labels[...] = -100
    if case == "labels_on_padding":   # not what masking makes; the loss over every position counts it
        labels[2, 5] = ids[2, 5]
    return ids, mask, labels


def _distill_step(teacher, student, case, on_rows: bool, seed=0):
    """One step's loss terms and the student's gradients, the logits at every position or at logit_rows'."""
    from minidistil.core.nn import to_device_of
    from minidistil.train.distill import distillation_loss_terms, forward_outputs, logit_rows
    ids, mask, labels = _case_batch(case, seed, teacher.config.vocab_size)
    w = _weights(case)
    rows = logit_rows(labels, mask, w) if on_rows else None
    rows_on = to_device_of(rows, student) if on_rows else None
    F.manual_seed(seed)
    with no_grad():
        t_logits, t_hidden = forward_outputs(teacher, ids, mask, logits_rows=rows_on)
    s_logits, s_hidden = forward_outputs(student, ids, mask, logits_rows=rows_on)
    total, terms = distillation_loss_terms(s_logits, t_logits, s_hidden, t_hidden, labels, mask, w,
                                           logits_rows=rows)
    total.backward()
    out = ({k: float(v.item()) for k, v in terms.items()}, float(total.item()),
           _grads(student), None if s_logits is None else s_logits.shape)
    student.zero_grad()
    return out


def _models(seed=0):
    from minidistil.train.distill import make_student
    teacher = _tiny_teacher(seed=seed, init=0.2).eval()
    student = make_student(teacher, layers=[0, 2]).train()   # dropout on: the same seeds in both runs
    return teacher, student


def _assert_same_step(rows_step, full_step, n_layers, V):
    terms_r, total_r, g_r, _ = rows_step
    terms_f, total_f, g_f, _ = full_step
    K = max(32, 64, V, B * T)
    assert set(terms_r) == set(terms_f)
    for k in terms_f:
        assert abs(terms_r[k] - terms_f[k]) <= _chain_tol(N_HEAD, K, max(1.0, abs(terms_f[k]))), \
            (k, terms_r[k], terms_f[k])
    assert abs(total_r - total_f) <= _chain_tol(N_HEAD, K, max(1.0, abs(total_f))) * len(terms_f) * 5
    assert set(g_r) == set(g_f)
    scale = max(float(np.abs(g).max()) for g in g_f.values())
    tol = _chain_tol(2 * N_HEAD + N_PER_LAYER * n_layers + 1, K, max(scale, 1e-6))
    for n in g_f:
        _checks.assert_close(g_r[n], g_f[n], atol=tol, name=n)


@pytest.mark.parametrize("case", ["triple", "mlm_only", "kl_masked_only", "kl_only", "nothing_masked"])
def test_distillation_on_rows_equals_every_position(case):
    """The terms and every student parameter's gradient, the logits of teacher and student at logit_rows' rows
    only, against the same step at every position."""
    from minidistil.train.distill import logit_rows
    teacher, student = _models()
    full = _distill_step(teacher, student, case, on_rows=False)
    part = _distill_step(teacher, student, case, on_rows=True)
    V = TINY["vocab_size"]
    _assert_same_step(part, full, 2, V)
    ids, mask, labels = _case_batch(case, 0, V)
    M = logit_rows(labels, mask, _weights(case)).size
    assert part[3] == (M, V) and full[3] == (B, T, V)
    assert M <= int(mask.sum()) < B * T           # never a padding row
    if case == "nothing_masked":      # no term counts a row: 0 and no gradient, as over every position
        assert full[0]["mlm"] == part[0]["mlm"] == 0.0


def test_a_label_on_padding_counts_for_nothing():
    """Padding never counts: the rows path with a label on a padding position equals the every-position step
    without that label (the every-position step counts it)."""
    teacher, student = _models()
    part = _distill_step(teacher, student, "labels_on_padding", on_rows=True)
    full = _distill_step(teacher, student, "triple", on_rows=False)
    _assert_same_step(part, full, 2, TINY["vocab_size"])
    counted = _distill_step(teacher, student, "labels_on_padding", on_rows=False)
    K, loss = max(32, 64, TINY["vocab_size"], B * T), full[0]["mlm"]
    assert abs(counted[0]["mlm"] - loss) > 10 * _chain_tol(N_HEAD, K, loss)   # which the comparison above tells


def test_logit_rows_are_the_rows_the_terms_read():
    from minidistil.train.distill import LossWeights, logit_rows
    ids, mask, labels = _batch()
    real = np.flatnonzero(mask.reshape(-1))
    masked = np.flatnonzero(labels.reshape(-1) != -100)
    assert np.array_equal(logit_rows(labels, mask, LossWeights()), real)                 # KL: every real token
    assert np.array_equal(logit_rows(labels, mask, LossWeights(alpha_ce=0.0)), masked)
    assert np.array_equal(logit_rows(labels, mask, LossWeights(kl_masked_only=True)), masked)
    assert logit_rows(labels, mask, LossWeights(alpha_ce=0.0, alpha_mlm=0.0)).size == 0  # no logits at all
    assert logit_rows(np.full_like(labels, -100), mask, LossWeights(alpha_ce=0.0)).tolist() == [0]
    assert logit_rows(labels, mask, LossWeights()).dtype == np.int64
    with pytest.raises(ValueError, match="labels: alpha_mlm"):
        logit_rows(None, mask, LossWeights())


def test_no_mlm_term_computes_no_logits():
    """A teacher with an MLM head distilled on the hidden-state terms only: no logits on either model."""
    from minidistil.train.distill import LossWeights, forward_outputs, logit_rows
    teacher, student = _models()
    ids, mask, labels = _batch()
    rows = logit_rows(labels, mask, LossWeights(alpha_ce=0.0, alpha_mlm=0.0))
    for m in (teacher, student.eval()):
        logits, h = forward_outputs(m, ids, mask, logits_rows=rows)
        assert logits is None and h.shape == (B, T, 32)
        _checks.assert_close(h.numpy(), forward_outputs(m, ids, mask)[1].numpy(), atol=0.0, name="hidden")


# ---- on numba.cuda -------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_take_rows_on_device_equals_cpu(no_host_arrays, rng):
    x = rng.standard_normal((7, 5)).astype(np.float32)
    rows = np.array([4, 0, 4, 6], np.int64)
    dout = rng.standard_normal((4, 5)).astype(np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        xt = Tensor(x if device == "cpu" else _cuda.to_device(x), requires_grad=True)
        r = rows if device == "cpu" else _cuda.to_device(rows)
        out = F.take_rows(xt, r, checked=device == "cuda")
        out.backward(dout if device == "cpu" else _cuda.to_device(dout))
        assert _cuda.is_device_array(out.data) == (device == "cuda") == _cuda.is_device_array(xt.grad)
        results[device] = (_cuda.to_host(out.data), _cuda.to_host(xt.grad))
    assert np.array_equal(results["cuda"][0], results["cpu"][0])
    # row 4 gets two atomic adds in either order: one rounding of a sum <= 2 max|dout|
    _checks.assert_close(results["cuda"][1], results["cpu"][1],
                         atol=_checks.f32_tol(2, scale=2 * np.abs(dout).max()), name="dx")
