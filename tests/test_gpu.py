"""The whole model on numba.cuda: forward, backward and distillation steps on the device equal the CPU run.

On the simulator (NUMBA_ENABLE_CUDASIM=1, set by conftest.py without a GPU) every GPU thread is a Python thread, so
the models are tiny: vocabulary 24, width 8, 2 heads, FFN 16, B = 2, T = 4 (one row padded). On a real GPU the
same tests run with `pytest -m cuda`.

Tolerances. The CPU and GPU runs are both float32 and differ only in the order of their sums, so each result's
difference is at most twice the error of one run. One reduction of length K over terms of size `scale` is off by
at most f32_tol(K, scale) (see _checks.f32_tol); a network is a chain of such reductions, and LayerNorm
re-normalises after every block, so errors add (they are not amplified by more than the O(1) gain of each block).
`chain_tol(n, K, scale)` = 2 * n * f32_tol(K, scale), with n the number of chained reductions (per layer: q/k/v,
scores, softmax, probs @ v, out_lin, LayerNorm, lin1, lin2, LayerNorm = 9; plus embeddings LN and the MLM head's
transform, LN, projector, log-softmax = 5) and K the longest reduction (max of C, F, V, T and, for gradients, the
B*T rows summed into dW). A backward pass chains the forward's reductions once more: n doubles.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from minidistil.core import functional as F
from minidistil.core.autograd import Tensor, no_grad
from minidistil.core.config import BertConfig, DistilBertConfig
from minidistil.kernels import _checks, _cuda
from minidistil.kernels import elementwise as E

V, C, H, FF, B, T = 24, 8, 2, 16, 2, 4
N_PER_LAYER, N_HEAD = 9, 5


def chain_tol(n_reductions: int, K: int, scale: float) -> float:
    """Bound on |GPU - CPU| for a result at the end of a chain of n float32 reductions of length <= K (module
    docstring): each run is off by <= n f32_tol(K, scale), so the two differ by at most twice that."""
    return 2 * n_reductions * _checks.f32_tol(K, scale=scale)


def _data(seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(0, V, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, T - 1:] = 0                      # a padded position: attention and the losses must skip it
    labels = r.integers(0, V, (B, T))
    labels[0, :2] = -100                     # ignored positions of the MLM loss
    return ids, mask, labels


def _student_config(n_layers=2):
    return DistilBertConfig(vocab_size=V, dim=C, n_layers=n_layers, n_heads=H, hidden_dim=FF,
                            max_position_embeddings=8, dropout=0.1, attention_dropout=0.1)


def _grads(model):
    return {n: _cuda.to_host(p.grad) for n, p in model.named_parameters() if p.grad is not None}


# ---- moving a model -------------------------------------------------------------------------------------------

@pytest.mark.cuda
def test_to_cuda_round_trip_is_bit_exact_and_keeps_ties():
    from minidistil.models.distilbert import DistilBertForMaskedLM
    m = DistilBertForMaskedLM.from_config(_student_config(1), seed=3)
    before = {n: a.copy() for n, a in m.state_dict().items()}
    assert m.to("cuda") is m and m.device == "cuda"
    for n, p in m.named_parameters():
        assert _cuda.is_device_array(p.data), n
    # the tied projector is still the word embedding Parameter (one array, one gradient)
    assert m.vocab_projector.weight is m.distilbert.embeddings.word_embeddings.weight
    on_device = m.state_dict()  # copies to the host
    m.to("cpu")
    assert m.device == "cpu"
    for n, a in m.state_dict().items():
        assert isinstance(a, np.ndarray)
        # bit for bit: compare the raw 32-bit patterns, not the values
        assert np.array_equal(a.view(np.uint32), before[n].view(np.uint32)), n
        assert np.array_equal(on_device[n].view(np.uint32), before[n].view(np.uint32)), n


def test_cuda_without_a_gpu_fails_with_a_clear_message(tmp_path):
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has a GPU: the no-GPU error path cannot be shown here")
    code = ("from minidistil.core.config import DistilBertConfig\n"
            "from minidistil.models.distilbert import DistilBertModel\n"
            "m = DistilBertModel.from_config(DistilBertConfig(vocab_size=10, dim=4, n_layers=1, n_heads=1, "
            "hidden_dim=4, max_position_embeddings=4))\n"
            "try:\n    m.to('cuda')\nexcept RuntimeError as e:\n    print('RuntimeError:', e)\n"
            "from minidistil.core.device import check_device\n"
            "try:\n    check_device('tpu')\nexcept ValueError as e:\n    print('ValueError:', e)\n")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "RuntimeError: no CUDA GPU is available (device='cuda' was asked for)" in res.stdout, res.stdout
    assert "NUMBA_ENABLE_CUDASIM=1" in res.stdout
    assert "ValueError: device: expected 'cpu' or 'cuda', got 'tpu'" in res.stdout
    # the CLI says the same, without a traceback
    res = subprocess.run([sys.executable, "-m", "minidistil.distill", "--teacher", "missing-teacher", "--out",
                          str(tmp_path / "s"), "--device", "cuda", "--steps", "1"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2                                    # one line on standard error, as every error
    assert "error: no CUDA GPU is available" in res.stderr and "Traceback" not in res.stderr, res.stderr


# ---- data moves to the device once per batch ------------------------------------------------------------------

def _count_host_to_device(monkeypatch):
    """Count the host arrays copied to the device (numba.cuda's to_device, which _cuda.to_device calls), by the
    file that asked for each."""
    import collections
    import traceback
    cuda = _cuda.get_cuda()
    calls = collections.Counter()
    original = cuda.to_device

    def counting(a, *args, **kwargs):
        if not _cuda.is_device_array(a):
            frames = [f for f in traceback.extract_stack()[:-1]  # the caller of the helpers that copy
                      if "kernels/_cuda.py" not in f.filename and f.name != "to_device_of"]
            calls[os.path.basename(frames[-1].filename)] += 1
        return original(a, *args, **kwargs)

    monkeypatch.setattr(cuda, "to_device", counting)
    return calls


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_a_training_step_copies_each_batch_array_to_the_device_once(monkeypatch, arch):
    """ids, mask (and BERT's token types) are copied once per forward by the model, the position ids once, the MLM
    labels once by the loss; no layer copies the mask again, the backward copies nothing (the attention mask is
    kept on the device in its cache, the embedding gradient is zeroed on the device), and the count does not grow
    with the number of layers."""
    from minidistil.models.bert import BertForMaskedLM
    from minidistil.kernels import attention as KA
    ids, mask, labels = _data(0)
    masks_seen = []
    forward = KA.attention_forward
    monkeypatch.setattr(KA, "attention_forward",
                        lambda q, k, v, m, *a, **kw: masks_seen.append(_cuda.is_device_array(m)) or
                        forward(q, k, v, m, *a, **kw))
    if arch == "distilbert":
        from minidistil.models.distilbert import DistilBertForMaskedLM
        model = DistilBertForMaskedLM.from_config(_student_config(2), seed=0)
        per_forward = {"distilbert.py": 3}  # input ids and mask (the model), position ids (embeddings)
    else:
        model = BertForMaskedLM.from_config(BertConfig(vocab_size=V, hidden_size=C, num_hidden_layers=2,
                                                       num_attention_heads=H, intermediate_size=FF,
                                                       max_position_embeddings=8), seed=0)
        per_forward = {"bert.py": 4}        # input ids, token types, mask; position ids
    model.to("cuda").train()
    calls = _count_host_to_device(monkeypatch)
    out = model(ids, mask, labels=labels)
    assert dict(calls) == {**per_forward, "cross_entropy.py": 1}, dict(calls)
    assert masks_seen == [True, True], "every layer's attention must get the device mask"
    calls.clear()
    out.loss.backward()
    assert dict(calls) == {}, f"the backward copied host arrays over: {dict(calls)}"
    # the ids are still checked (on the host, before they move): a bad id is a ValueError, not a bad read
    bad = ids.copy()
    bad[0, 1] = V
    with pytest.raises(ValueError, match=f"input_ids: id {V} at position"):
        model(bad, mask)


# ---- forward and backward of the whole model ------------------------------------------------------------------

@pytest.mark.cuda
def test_model_forward_backward_on_device_equals_cpu():
    from minidistil.models.distilbert import DistilBertForMaskedLM
    cfg = _student_config(2)
    model = DistilBertForMaskedLM.from_config(cfg, seed=0)
    ids, mask, labels = _data(0)

    out = model(ids, mask, labels=labels, output_hidden_states=True)
    out.loss.backward()
    cpu_logits, cpu_hidden, cpu_loss = out.logits.numpy().copy(), [h.numpy().copy() for h in out.hidden_states], \
        float(out.loss.item())
    cpu_grads = _grads(model)
    model.zero_grad()

    model.to("cuda")
    out = model(ids, mask, labels=labels, output_hidden_states=True)
    assert _cuda.is_device_array(out.logits.data) and all(_cuda.is_device_array(h.data) for h in out.hidden_states)
    assert _cuda.is_device_array(out.loss.data) and out.loss.shape == ()  # a loss stays on the device
    out.loss.backward()
    grads = _grads(model)
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert _cuda.is_device_array(p.grad), f"{n}: the gradient left the device"

    L = cfg.n_layers
    K = max(C, FF, V, T)
    n_fwd = L * N_PER_LAYER + N_HEAD
    logits = out.logits.numpy()
    assert logits.dtype == np.float32
    _checks.assert_close(logits, cpu_logits, atol=chain_tol(n_fwd, K, float(np.abs(cpu_logits).max())),
                         name="logits")
    for i, (h, h_cpu) in enumerate(zip(out.hidden_states, cpu_hidden)):
        _checks.assert_close(h.numpy(), h_cpu, atol=chain_tol(i * N_PER_LAYER + 1, K, float(np.abs(h_cpu).max())),
                             name=f"hidden_states[{i}]")
    assert abs(float(out.loss.item()) - cpu_loss) <= chain_tol(n_fwd + 1, max(K, B * T), abs(cpu_loss))
    # every parameter's gradient: the backward doubles the chain, and dW sums the B*T rows
    assert set(grads) == set(cpu_grads) and len(grads) == len(list(model.named_parameters()))
    for n, g in grads.items():
        scale = _grad_scale(n, cpu_grads)
        _checks.assert_close(g, cpu_grads[n], atol=chain_tol(2 * n_fwd, max(K, B * T), scale), name=n)


def _grad_scale(name: str, grads: dict) -> float:
    """The size of the terms summed into a parameter's gradient. For a weight, its gradient's own size. A bias's
    gradient db = sum_n dy_n sums the same dy as the weight's dW = dy^T x (x a LayerNorm output, O(1)), so its
    terms are as large as dW's entries even where db itself cancels to 0: the key bias's gradient is exactly 0,
    because softmax ignores the constant q.b_k that the bias adds to a row of scores. Its rounding residue is
    then compared at the size of those terms."""
    scale = float(np.abs(grads[name]).max())
    sibling = name[: -len("bias")] + "weight"
    if name.endswith(".bias") and sibling in grads:
        scale = max(scale, float(np.abs(grads[sibling]).max()))
    return scale


# ---- two distillation steps -----------------------------------------------------------------------------------

def _teacher():
    from minidistil.models.bert import BertForMaskedLM
    cfg = BertConfig(vocab_size=V, hidden_size=C, num_hidden_layers=1, num_attention_heads=H, intermediate_size=FF,
                     max_position_embeddings=8, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return BertForMaskedLM.from_config(cfg, seed=1)


def _distill_steps(device: str, steps: int = 2, weights=None):
    """`steps` updates of the triple loss (+ MSE and the pooled terms) with clipping and AdamW, student in training
    mode (dropout on: the same masks on both devices, from the same seeds). Returns the per-step (loss, terms,
    grad norm), the final parameters and AdamW's moments, all on the host."""
    from minidistil.train.distill import LossWeights, distillation_loss, forward_outputs, make_student
    from minidistil.core.optim import AdamW, clip_grad_norm
    teacher = _teacher().eval()
    student = make_student(teacher, layers=[0])  # then trained away from it
    teacher.to(device)
    student.to(device)
    w = weights or LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=1.0, alpha_pool_cos=1.0,
                               alpha_pool_mse=1.0)
    # eps 1e-3 (not DistilBERT's 1e-6) keeps the update a smooth function of the gradient: |d update / d g| <=
    # 1 / eps, so a float32 difference in a gradient near 0 cannot flip an update's sign (see the tolerance below)
    opt = AdamW(student.named_parameters(), lr=1e-2, eps=1e-3)
    student.train()
    history = []
    for s in range(steps):
        ids, mask, labels = _data(10 + s)
        F.manual_seed(s)  # dropout seeds of this step
        with no_grad():
            t_logits, t_hidden = forward_outputs(teacher, ids, mask)
        s_logits, s_hidden = forward_outputs(student, ids, mask)
        loss, terms = distillation_loss(s_logits, t_logits, s_hidden, t_hidden, labels, mask, w)
        loss.backward()
        norm = clip_grad_norm(opt.parameters(), max_norm=0.05)  # small enough to clip: the scale kernel runs
        opt.step()
        opt.zero_grad()
        history.append((float(loss.item()), terms, norm))
    params = {n: a.copy() for n, a in student.state_dict().items()}
    state = opt.state_dict()
    if device == "cuda":
        assert all(_cuda.is_device_array(a) for a in opt.m.values()), "AdamW's moments must live on the device"
    return history, params, state


@pytest.mark.cuda
def test_two_distillation_steps_on_device_equal_cpu():
    from minidistil.kernels.adamw import update_bound
    cpu_hist, cpu_params, cpu_state = _distill_steps("cpu")
    gpu_hist, gpu_params, gpu_state = _distill_steps("cuda")

    # student and teacher: 1 layer + MLM head each; the loss adds the teacher's chain to the student's
    K = max(C, FF, V, B * T)
    n_fwd = 2 * (N_PER_LAYER + N_HEAD)
    for s, ((l_c, t_c, g_c), (l_g, t_g, g_g)) in enumerate(zip(cpu_hist, gpu_hist)):
        assert abs(l_g - l_c) <= chain_tol(n_fwd, K, abs(l_c)), f"step {s}: loss {l_g} vs {l_c}"
        for k in t_c:
            assert abs(t_g[k] - t_c[k]) <= chain_tol(n_fwd, K, max(abs(t_c[k]), 1.0)), (s, k, t_g[k], t_c[k])
        assert abs(g_g - g_c) <= chain_tol(2 * n_fwd, K, g_c), f"step {s}: grad norm {g_g} vs {g_c}"
        assert g_c > 0.05, "the test wants clipping to happen"
    # parameters after 2 AdamW steps (the second uses the moments the first left, bias-corrected: two steps test
    # what any number does, and the simulator runs every GPU thread as a Python thread). The gradients (clipped to
    # norm 0.05) differ by at most e = chain_tol(2 n_fwd, K, 0.05); one update u = m^/(sqrt(v^) + eps) moves by at
    # most e / eps per step, times lr, over 2 steps; each update is also rounded (~10 float32 roundings of a change
    # <= update_bound).
    lr, eps, steps = 1e-2, 1e-3, 2
    e = chain_tol(2 * n_fwd, K, 0.05)
    tol_p = steps * lr * e / eps + _checks.f32_tol(10 * steps, scale=update_bound(lr, 0.9, 0.98, steps) + 1.0)
    assert set(gpu_params) == set(cpu_params)
    for n in cpu_params:
        _checks.assert_close(gpu_params[n], cpu_params[n], atol=tol_p, name=n)
    for key in ("m", "v"):
        for n in cpu_state[key]:
            # m: a mix of the gradients (each off by <= e); v of their squares (off by <= 2 * 0.05 * e)
            tol = e if key == "m" else 2 * 0.05 * e + _checks.f32_tol(steps, scale=0.05 ** 2)
            _checks.assert_close(gpu_state[key][n], cpu_state[key][n], atol=tol, name=f"{key}[{n}]")
    assert gpu_state["t"] == cpu_state["t"] == steps


@pytest.mark.cuda
def test_every_loss_term_runs_on_device_arrays_without_host_numpy(no_host_arrays):
    """One step with every term, the similarity KL (--alpha-sim) included, on device arrays that refuse host
    conversion as a real GPU's do (conftest's no_host_arrays): no term may call NumPy on a device array. The step
    equals the CPU one within the tolerance of test_two_distillation_steps_on_device_equal_cpu."""
    from minidistil.train.distill import LossWeights
    w = LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=1.0, alpha_pool_cos=1.0, alpha_pool_mse=1.0,
                    alpha_sim=1.0, sim_temperature=0.5)
    (l_c, t_c, g_c), = _distill_steps("cpu", steps=1, weights=w)[0]
    (l_g, t_g, g_g), = _distill_steps("cuda", steps=1, weights=w)[0]
    K = max(C, FF, V, B * T)
    n_fwd = 2 * (N_PER_LAYER + N_HEAD)
    assert set(t_g) == set(t_c) and "sim" in t_g
    for k in t_c:
        assert abs(t_g[k] - t_c[k]) <= chain_tol(n_fwd, K, max(abs(t_c[k]), 1.0)), (k, t_g[k], t_c[k])
    assert abs(l_g - l_c) <= chain_tol(n_fwd, K, abs(l_c))
    assert abs(g_g - g_c) <= chain_tol(2 * n_fwd, K, g_c)


# ---- the small generic kernels the autograd uses on device arrays ---------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(0, 5), (3, 1), (2 * _cuda.COL_CHUNK_ROWS + 1, 2 * _cuda.COL_TILE + 3),
                                   ((_cuda.COL_MAX_CHUNKS + 1) * _cuda.COL_CHUNK_ROWS + 3, _cuda.COL_TILE + 1)])
def test_column_sum_matches_numpy(rng, shape):
    """The bias gradients' column sums: several column blocks (the last one partial), several row lanes and row
    chunks (then a second launch adds the chunks' partial sums), at most COL_MAX_CHUNKS chunks. Float32 sums of
    `rows` terms: within f32_tol(rows, max|a|) of the float64 sum."""
    a = rng.standard_normal(shape).astype(np.float32)
    got = _cuda.to_host(_cuda.column_sum(_cuda.to_device(a)))
    assert got.dtype == np.float32 and got.shape == (shape[1],)
    _checks.assert_close(got, a.astype(np.float64).sum(axis=0),
                         atol=_checks.f32_tol(max(shape[0], 1), scale=float(np.abs(a).max(initial=1.0))),
                         name="column sums")


@pytest.mark.cuda
def test_sum_to_sums_float64_in_float64():
    """A float64 device array is summed in float64 (not through a float32 buffer). Every entry is 1 + 2^-40 and
    there are 2 THREADS + 3 rows (several passes of the strided loop): each partial sum k (1 + 2^-40) is exact in
    float64 (45 bits) whatever the order, while float32 (24 bits) would round every one to k."""
    rows = 2 * _cuda.THREADS + 3
    g = np.full((rows, 3), 1.0 + 2.0 ** -40, np.float64)
    got = _cuda.to_host(E.sum_to(_cuda.to_device(g), (1, 3)))
    assert got.dtype == np.float64
    assert np.array_equal(got, np.full((1, 3), rows * (1.0 + 2.0 ** -40))), got - rows

# sum_to at shapes where every loop takes more than one pass: more rows than COL_MAX_CHUNKS * COL_CHUNK_ROWS
# (chunks of several lanes' rows, then the second launch), more columns than 2 COL_TILE (several column blocks, the
# last partial), several outer blocks, and a summed last axis longer than 2 THREADS (the per-output kernel's loop).
_ROWS = _cuda.COL_MAX_CHUNKS * _cuda.COL_CHUNK_ROWS + 5
_COLS = 2 * _cuda.COL_TILE + 3
_SUM_TO_CASES = [
    ((_ROWS, _COLS), (_COLS,), 1),                      # a bias gradient (B*T, C) -> (C,): one column sum
    ((3, _ROWS // 3, _COLS), (_COLS,), 1),              # (B, T, C) -> (C,): B and T merge into one summed group
    ((3, _ROWS // 3, _COLS), (3, 1, _COLS), 1),         # (B, T, C) -> (B, 1, C): outer B, rows T
    ((2, 5, 3, _ROWS // 4, _COLS), (5, 1, 1, _COLS), 2),  # summed, kept, summed, kept: two column sums
    ((3, 2 * _cuda.THREADS + 3), (3, 1), 0),            # last axis summed: the one-block-per-output kernel
    ((2, 3, 2 * _cuda.THREADS + 3), (1, 3, 1), 0),
    ((4, 1, _COLS), (1, 1, _COLS), 1),                  # a size-1 axis of g is neither summed nor kept
    ((4, _COLS), (4, _COLS), 0),                        # nothing summed: a copy
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("g_shape,shape,n_column_sums", _SUM_TO_CASES)
def test_sum_to_reads_columns_coalesced_and_matches_numpy(rng, monkeypatch, dtype, g_shape, shape, n_column_sums):
    """sum_to against NumPy's float64 sum, with the route it takes: a kept last axis goes through _cuda.column_sum
    (adjacent threads read adjacent columns) once per summed group, never through the one-block-per-output kernel
    (whose threads would read addresses a row apart). Tolerance: n terms of size <= max|g| summed in float32 are
    within f32_tol(n, max|g|) of the float64 sum (a summed group's partial sums only reorder the additions); in
    float64, n * eps64 * sum|g| bounds any order's rounding (the worst case, not the sqrt(n) estimate)."""
    calls = []
    column_sum = _cuda.column_sum

    def counted(a):
        calls.append(tuple(a.shape))
        return column_sum(a)

    monkeypatch.setattr(_cuda, "column_sum", counted)
    g = rng.standard_normal(g_shape).astype(dtype)
    got = _cuda.to_host(E.sum_to(_cuda.to_device(g), shape))
    want = E.sum_to_ref(g.astype(np.float64), shape)
    assert got.shape == tuple(shape) and got.dtype == dtype
    n = g.size // max(1, int(np.prod(shape)))  # terms per output element
    scale = float(np.abs(g).max())
    if dtype == np.float32:
        tol = _checks.f32_tol(n, scale=scale)
    else:
        tol = n * np.finfo(np.float64).eps * (n * scale)  # sum|g| <= n max|g|
    _checks.assert_close(got, want, atol=tol, name=f"sum_to {g_shape} -> {shape} ({np.dtype(dtype).name})")
    assert len(calls) == n_column_sums, calls


@pytest.mark.cuda
@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 5), (5,)), ((2, 3, 5), (2, 3, 1)), ((2, 3, 5), (2, 3, 5)),
                                             ((1, 5), (3, 1)), ((4,), ()), ((), ())])
def test_elementwise_binary_and_sum_to_match_numpy(rng, a_shape, b_shape):
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    ad, bd = _cuda.to_device(a), _cuda.to_device(b)
    for op in ("add", "sub", "mul"):
        got = _cuda.to_host(getattr(E, op)(ad, bd))
        assert got.dtype == np.float32
        # one float32 operation per element, the same one numpy does: bit-identical
        assert np.array_equal(got, E.binary_ref(op, a, b)), op
        assert np.array_equal(_cuda.to_host(getattr(E, op)(bd, ad)), E.binary_ref(op, b, a)), op + " reversed"
    assert np.array_equal(_cuda.to_host(E.mul(ad, np.float32(0.25))), a * np.float32(0.25))
    assert np.array_equal(_cuda.to_host(E.sub(np.float32(1.5), ad)), np.float32(1.5) - a)
    full = np.broadcast_shapes(a_shape, b_shape)
    g = rng.standard_normal(full).astype(np.float32)
    for shape in (a_shape, b_shape):
        got = _cuda.to_host(E.sum_to(_cuda.to_device(g), shape))
        want = E.sum_to_ref(g.astype(np.float64), shape)
        n = max(1, int(np.prod(full)) // max(1, int(np.prod(shape))))  # terms per output element
        _checks.assert_close(got, want, atol=_checks.f32_tol(n, scale=float(np.abs(g).max(initial=0))),
                             name=f"sum_to {shape}")
        assert got.shape == tuple(shape) and got.dtype == np.float32


@pytest.mark.cuda
def test_elementwise_take_axpy_fill_copy_and_sum(rng):
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    xd = _cuda.to_device(x)
    for axis, i in ((1, 0), (2, -1), (0, 1)):
        got = _cuda.to_host(E.take(xd, axis, i))
        assert np.array_equal(got, E.take_ref(x, axis, i))
        back = _cuda.to_host(E.take_backward(_cuda.to_device(got), x.shape, axis, i))
        assert np.array_equal(back, E.take_backward_ref(got, x.shape, axis, i))
    assert E.single_axis_index((slice(None), 0), 3) == (1, 0)
    assert E.single_axis_index((Ellipsis, 1), 3) == (2, 1)
    assert E.single_axis_index((slice(None), slice(0, 2)), 3) is None
    y = E.copy(xd)
    E.axpy_(y, xd, 2.0)
    assert np.array_equal(_cuda.to_host(y), x + np.float32(2.0) * x)
    E.scale_(y, 0.5)
    assert np.array_equal(_cuda.to_host(y), (x + np.float32(2.0) * x) * np.float32(0.5))
    assert np.array_equal(_cuda.to_host(E.full((2, 2), 3.0, like=xd)), np.full((2, 2), 3.0, np.float32))
    assert _cuda.to_host(E.copy(xd, np.float64)).dtype == np.float64
    s = _cuda.to_host(E.sum(xd, axis=1))
    _checks.assert_close(s, x.astype(np.float64).sum(1), atol=_checks.f32_tol(3, scale=float(np.abs(x).max())))
    with pytest.raises(ValueError, match="index: expected an index in"):
        E.take(xd, 1, 3)
    with pytest.raises(ValueError, match=r"b: shape \(4,\) does not broadcast"):
        E.add(xd, _cuda.to_device(np.zeros(4, np.float32)))


@pytest.mark.cuda
def test_autograd_generic_ops_on_device(rng):
    """sum, mean, mul by a host mask, [CLS] indexing, a device matmul, neg and sub: values and gradients."""
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    w = rng.standard_normal((4, 2)).astype(np.float32)
    m = (rng.random((2, 3, 1)) > 0.3).astype(np.float32)

    def run(dev):
        xt = Tensor(_cuda.to_device(x) if dev else x.copy(), requires_grad=True)
        wt = Tensor(_cuda.to_device(w) if dev else w.copy(), requires_grad=True)
        pooled = (xt * m).sum(axis=1) * np.float32(0.5)       # (2, 4)
        cls = xt[:, 0]                                         # (2, 4)
        y = (pooled - cls) @ wt                                # (2, 2)
        out = (-y).mean(axis=0)                                # (2,)
        g = np.array([1.0, -2.0], np.float32)
        out.backward(_cuda.to_device(g) if dev else g)
        return out.numpy(), _cuda.to_host(xt.grad), _cuda.to_host(wt.grad)

    for got, want in zip(run(True), run(False)):
        _checks.assert_close(got, want, atol=_checks.f32_tol(12, scale=8.0))


@pytest.mark.cuda
def test_task_losses_take_host_labels_with_device_logits(rng):
    """A fine-tuning batch's labels are numpy arrays: the multi-label BCE and the regression MSE copy them to the
    device once (as cross_entropy does), giving bit for bit what device labels give."""
    from minidistil.core import losses
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = (rng.random((2, 3)) > 0.5).astype(np.float32)
    for fn in (losses.bce_with_logits, losses.mse):
        results = []
        for labels in (y, _cuda.to_device(y)):
            xt = Tensor(_cuda.to_device(x), requires_grad=True)
            loss = fn(xt, labels)
            loss.backward()
            results.append((float(loss), _cuda.to_host(xt.grad)))
        assert results[0][0] == results[1][0] and np.array_equal(results[0][1], results[1][1]), fn.__name__


# ---- fine-tuning, pipelines and the commands on the device ----------------------------------------------------

# a vocabulary of V = 24 (5 special tokens + 19 words) and sentences of at most 4 words: T <= 6 with [CLS], [SEP]
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "is", "it", "very", "and", "plot",
         "so", "we", "saw", "a", "movie"]
SENTIMENT = [("the film was good", "pos"), ("it is awful", "neg"), ("a great movie", "pos"), ("plot was poor", "neg"),
             ("we saw it", "neg"), ("so very fine", "pos")]
N_CLS_HEAD = 3  # pre_classifier, classifier, then the loss's log-softmax (or the pipeline's softmax)


def _tiny_folder(folder, arch="DistilBertForMaskedLM", **config):
    """A random 1-layer checkpoint of the tiny size above, with a tokenizer over WORDS (nothing downloaded)."""
    import json

    from minidistil import MODEL_CLASSES
    from minidistil.io.loading import save_pretrained
    from minidistil.io.tokenizer import Tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                              + WORDS))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 8}))
    model = MODEL_CLASSES[arch].from_config(_student_config(1).replace(**config), seed=0)
    save_pretrained(model, folder, tokenizer=Tokenizer.from_pretrained(folder))
    return folder


def _csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    return str(path)


@pytest.mark.cuda
def test_two_finetuning_steps_on_device_equal_cpu(tmp_path, monkeypatch):
    """`finetune(device=...)` itself: 2 updates (B = 2, dropout on, clipping, AdamW) of a classification head on a
    student checkpoint, stopped before the epoch's end (stop_after), so its checkpoint holds the weights and
    AdamW's moments after exactly those updates and metrics.jsonl their losses and gradient norms."""
    import functools
    import json

    from minidistil.io import checkpoint as ckpt
    from minidistil.train import finetune as FT
    from minidistil.kernels.adamw import update_bound
    from minidistil.core.optim import AdamW
    # eps 1e-3 (not 1e-6) keeps each update a smooth function of the gradient (as in the distillation test above)
    eps, lr, clip, steps = 1e-3, 1e-2, 0.05, 2
    monkeypatch.setattr(FT, "AdamW", functools.partial(AdamW, eps=eps))
    base = _tiny_folder(tmp_path / "student")
    train, val = _csv(tmp_path / "train.csv", SENTIMENT), _csv(tmp_path / "val.csv", SENTIMENT[:2])

    def run(device):
        out = tmp_path / device
        FT.finetune("classification", str(base), train, str(out), validation=val, device=device, epochs=1,
                    batch_size=2, lr=lr, warmup=0.0, max_grad_norm=clip, max_length=6, stop_after=steps,
                    progress=False)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return rows, ckpt.load_checkpoint(tmp_path / f"{device}.training" / f"checkpoint-{steps:08d}.npz")

    cpu_rows, cpu = run("cpu")
    gpu_rows, gpu = run("cuda")

    K = max(C, FF, V, B * 6)  # the longest reduction: a width, or dW's sum over the B*T rows
    n_fwd = 1 + N_PER_LAYER + N_CLS_HEAD  # embeddings' LayerNorm, the layer, the head and its loss
    assert len(cpu_rows) == len(gpu_rows) == steps and gpu.step == cpu.step == steps
    for r_c, r_g in zip(cpu_rows, gpu_rows):
        assert r_g["step"] == r_c["step"] and r_g["lr"] == r_c["lr"]
        for key in ("task_loss", "loss"):
            assert abs(r_g[key] - r_c[key]) <= chain_tol(n_fwd, K, abs(r_c[key])), (r_c["step"], key, r_g, r_c)
        assert abs(r_g["grad_norm"] - r_c["grad_norm"]) <= chain_tol(2 * n_fwd, K, r_c["grad_norm"]), (r_g, r_c)
        assert r_c["grad_norm"] > clip, "the test wants clipping to happen"
    # Parameters and moments. Each gradient entry is at most g_n, the largest gradient entry of parameter n over
    # the steps, read off the CPU run's second moment: v = (1-b2) sum_k b2^(steps-k) g_k^2 >= (1-b2) b2^(steps-1) g_k^2
    # (a bias is compared at its weight's size, as in _grad_scale). A gradient is then off by at most
    # e_n = chain_tol(2 n_fwd, K, g_n); with eps = 1e-3 one update u = m^/(sqrt(v^) + eps) moves by at most e_n / eps,
    # times lr, per step; and each update is rounded (~10 float32 roundings of a change <= update_bound).
    b2 = 0.98
    g = {n: float(np.sqrt(v.max() / ((1 - b2) * b2 ** (steps - 1)))) for n, v in cpu.optimizer["v"].items()}
    g = {n: max(s, g.get(n[: -len("bias")] + "weight", 0.0)) if n.endswith(".bias") else s for n, s in g.items()}
    e = {n: chain_tol(2 * n_fwd, K, s) for n, s in g.items()}
    rounding = _checks.f32_tol(10 * steps, scale=update_bound(lr, 0.9, b2, steps) + 1.0)
    tol_p = {n: steps * lr * e[n] / eps + rounding for n in e}
    assert set(gpu.model) == set(cpu.model) == set(tol_p)
    for n, w in cpu.model.items():
        assert gpu.model[n].dtype == np.float32
        _checks.assert_close(gpu.model[n], w, atol=tol_p[n], name=n)
    for n in cpu.optimizer["m"]:
        # m mixes the gradients (each off by <= e_n); v their squares (off by <= 2 g_n e_n, then rounded)
        _checks.assert_close(gpu.optimizer["m"][n], cpu.optimizer["m"][n], atol=e[n], name=f"m[{n}]")
        _checks.assert_close(gpu.optimizer["v"][n], cpu.optimizer["v"][n],
                             atol=2 * g[n] * e[n] + _checks.f32_tol(steps, scale=g[n] ** 2), name=f"v[{n}]")
    # and the comparison says something: the updates moved the weights by far more than the tolerance
    from minidistil.io.loading import from_pretrained
    name = "distilbert.transformer.layer.0.ffn.lin1.weight"
    assert np.abs(cpu.model[name] - from_pretrained(base).state_dict()[name]).max() > 10 * tol_p[name]


@pytest.mark.cuda
def test_text_classification_pipeline_and_predict_on_device_equal_cpu(tmp_path, capsys):
    """pipeline(..., device="cuda") and `minidistil predict --device cuda`: the same labels as on the CPU and
    scores within a float32 tolerance (3 texts at batch size 2: a full batch and a batch of 1)."""
    import json

    from minidistil.apps import cli
    from minidistil.apps.pipelines import pipeline
    names = {0: "neg", 1: "neutral", 2: "pos"}
    # initializer_range 0.5: logits of a few units, so the scores are far from uniform and the labels differ
    folder = _tiny_folder(tmp_path / "clf", "DistilBertForSequenceClassification", num_labels=3, id2label=names,
                          label2id={v: k for k, v in names.items()}, initializer_range=0.5)
    texts = ["the film was good", "awful plot", "we saw a movie"]
    cpu = pipeline("text-classification", str(folder), device="cpu", batch_size=2)
    gpu = pipeline("text-classification", str(folder), device="cuda", batch_size=2)
    assert cpu.model.device == "cpu" and gpu.model.device == "cuda"
    want = cpu(texts, top_k=None)
    got = gpu(texts, top_k=None)

    # logits: the embeddings' LayerNorm, the layer and the head's two linears (K: the longest reduction; the terms
    # are of size <= max(1, |logits|): LayerNorm outputs, and head weights of std 0.5 over C = 8 inputs). A score
    # p_k = softmax(z)_k moves by p_k (dz_k - sum_j p_j dz_j), at most 2 max|dz|.
    logits = cpu._forward(cpu._encode(texts)).logits.numpy()
    dz = chain_tol(1 + N_PER_LAYER + 2, max(C, FF, 6), max(1.0, float(np.abs(logits).max())))
    for w, g in zip(want, got):
        assert [r["label"] for r in g] == [r["label"] for r in w], (g, w)
        assert w[0]["score"] - w[1]["score"] > 4 * dz, "a near tie: the label comparison would say nothing"
        for rw, rg in zip(w, g):
            assert abs(rg["score"] - rw["score"]) <= 2 * dz, (rg, rw)
    assert len({r[0]["label"] for r in want}) > 1, "every text got the same label: pick other texts or seeds"

    # the command: JSON lines, one per text, as the pipeline's
    assert cli.main(["predict", "--model", str(folder), "--device", "cuda", "--batch-size", "2", "--top-k", "0",
                     *texts]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(texts)
    for line, w in zip(lines, want):
        assert [r["label"] for r in line] == [r["label"] for r in w]
        for rl, rw in zip(line, w):
            assert abs(rl["score"] - rw["score"]) <= 2 * dz


def test_finetune_and_predict_cuda_without_a_gpu_exit_2_with_one_line(tmp_path):
    """Not marked cuda: it shows what happens WITHOUT one (as test_cuda_without_a_gpu_fails_with_a_clear_message)."""
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has a GPU: the no-GPU error path cannot be shown here")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = tmp_path / "out"
    for args in (["finetune", "--task", "classification", "--model", "missing-model", "--train", "missing.csv",
                  "--out", str(out), "--device", "cuda"],
                 ["predict", "--model", "missing-model", "--device", "cuda", "some text"]):
        res = subprocess.run([sys.executable, "-m", "minidistil.apps.cli", *args], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2, (args[0], res.returncode, res.stderr)
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith(f"minidistil {args[0]}: error: no CUDA GPU is available"), lines[0]
        assert "NUMBA_ENABLE_CUDASIM=1" in lines[0] and res.stdout == ""
    assert not out.exists(), "the device is checked before any work"
    # the library call says the same before any work: no output folder either
    code = ("from minidistil.train.finetune import finetune\n"
            "try:\n"
            f"    finetune('classification', 'missing-model', 'missing.csv', {str(out)!r}, device='cuda')\n"
            "except RuntimeError as e:\n    print('RuntimeError:', e)\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("RuntimeError: no CUDA GPU is available"), res.stdout
    assert not out.exists()


# ---- `minidistil bench --device cuda` ---------------------------------------------------------------------------

@pytest.mark.cuda
def test_bench_on_the_device_runs_end_to_end(tmp_path, capsys):
    """The tiny model's forward on the device, timed with the device synchronised; the environment names the
    device and the GEMM; torch and ONNX Runtime are reported missing when they have no GPU here (on a GPU
    machine with torch's CUDA build they run, and their outputs are compared with minidistil's)."""
    import json

    from minidistil.apps import bench
    out = tmp_path / "bench.json"
    rc = bench.main(["--size", "tiny", "--device", "cuda", "--frameworks", "minidistil,torch,onnxruntime",
                     "--scenarios", "fwd_T4", "--repeat", "1", "--warmup", "1", "--pause", "0", "--no-memory",
                     "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["device"] == "cuda" and data["sizes"]["dim"] == 8
    assert data["environment"]["device"].startswith("device: cuda on ")
    assert "GEMM: " + _cuda.gemm_backend() in data["environment"]["device"]
    rows = {r["framework"]: r for r in data["results"]}
    assert rows["minidistil"]["scenario"] == "fwd_T4" and rows["minidistil"]["device"] == "cuda"
    assert rows["minidistil"]["ms"] > 0 and len(rows["minidistil"]["times_ms"]) == 1
    versions = data["environment"]["versions"]
    for fw in ("torch", "onnxruntime"):
        if versions[fw].startswith("missing"):
            assert fw not in rows and f"skip {fw}: missing" in text
        else:  # a GPU machine: the same weights, so the outputs agree
            assert fw in rows and f"fwd_T4: max |{fw} - minidistil|" in text
    assert "peak memory on the GPU" in text


def test_bench_cuda_without_a_gpu_fails_at_once_with_one_line():
    """Not marked cuda: what `minidistil bench --device cuda` says WITHOUT a GPU (and without the simulator)."""
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("this machine has a GPU: the no-GPU error path cannot be shown here")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    for cmd in (["-m", "minidistil.apps.cli", "bench"], ["-m", "minidistil.apps.bench"]):
        res = subprocess.run([sys.executable, *cmd, "--quick", "--device", "cuda"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 2, (cmd, res.returncode, res.stderr)
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert lines[0].startswith("minidistil bench: error: no CUDA GPU is available"), lines[0]
        assert "NUMBA_ENABLE_CUDASIM=1" in lines[0] and res.stdout == ""


# ---- python -m minidistil.kernels.bench --device cuda -----------------------------------------------------------

@pytest.mark.cuda
def test_kernel_bandwidth_bench_runs_and_counts_the_bytes(tmp_path, capsys):
    """Every memory-bound CUDA kernel (forward and backward) is timed, its GB/s is its minimum bytes over its time,
    and the fractions of the stated peak and of the measured copy peak are printed (tiny sizes: the simulator)."""
    import json

    from minidistil.kernels import bench as KB
    out = tmp_path / "bw.json"
    assert KB.main(["--device", "cuda", "--size", "tiny", "--repeat", "1", "--peak-gbps", "1000",
                    "--json", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["peak_gbps"] == 1000.0 and data["copy_gbps"] > 0 and data["copy_bytes"] == 2**20
    assert "peak bandwidth: 1000 GB/s" in text and "device-to-device copy of 1 MB" in text
    rows = {(r["op"].split(" (")[0], r["pass_"]): r for r in data["rows"]}
    assert set(rows) == {(op, p) for op in ("residual+layernorm", "bias+gelu", "softmax", "attention")
                         for p in ("fwd", "bwd")}
    # the byte counts, from the tiny sizes (B=2, T=4, C=8, F=16, H=2; N = 8 rows; float32 = 4 bytes)
    n, c, f, bhtt, act = 8, 8, 16, 2 * 2 * 4 * 4, 2 * 4 * 8
    want = {("residual+layernorm", "fwd"): 4 * (4 * n * c + 2 * c + 2 * n),   # x, r, w, b -> y, h, mean, rstd
            ("residual+layernorm", "bwd"): 4 * (3 * n * c + 3 * c + 2 * n),   # dy, h, w, mean, rstd -> dh, dw, db
            ("bias+gelu", "fwd"): 4 * (2 * n * f + f), ("bias+gelu", "bwd"): 4 * (3 * n * f + 2 * f),
            ("softmax", "fwd"): 4 * 2 * bhtt, ("softmax", "bwd"): 4 * 3 * bhtt,
            ("attention", "fwd"): 4 * (4 * act + bhtt) + 4 * 2 * 4,           # + the int32 (B, T) mask
            ("attention", "bwd"): 4 * (7 * act + bhtt) + 4 * 2 * 4}
    for key, r in rows.items():
        assert r["bytes"] == want[key], key
        ms = r["device_ms"] if r["device_ms"] is not None else r["wall_ms"]
        assert r["wall_ms"] > 0 and abs(r["gbps"] - r["bytes"] / ms / 1e6) <= 1e-9 * r["gbps"]
        assert abs(r["of_peak"] - r["gbps"] / 1000.0) <= 1e-12 and abs(r["of_copy"] - r["gbps"] / data["copy_gbps"]) \
            <= 1e-9 * r["of_copy"]
        assert (r["gflops"] is not None) == (key[0] == "attention")


# ---- DistilBERT-base, CPU against a real GPU -----------------------------------------------------------------------

@pytest.mark.cuda
def test_distilbert_base_cpu_and_gpu_agree_within_1e4():
    """The GPU acceptance check at full size (python -m minidistil.gpu_check): forward logits, the loss, every gradient
    and the parameters after one AdamW step within 1e-4 of their scale. Far too slow for the simulator, so it runs
    only on a real GPU (`pytest -m cuda` there)."""
    if _cuda.SIMULATOR:
        pytest.skip("DistilBERT-base needs a real GPU (the simulator would take days)")
    from minidistil.apps import gpu_check
    lines = []
    assert gpu_check.check(batch=8, tokens=128, tol=1e-4, log=lines.append) == 0, "\n".join(lines)
