"""Loss functions as autograd ops, each backed by one kernel pair. The CPU kernels return a Python float and take
the upstream gradient `dloss` as a float; the CUDA kernels return a 0-d device array and take `dloss` as a float or
a device scalar, so a GPU step never waits to read a loss back (`loss.item()` reads it, to log it). Every loss is a
MEAN over the positions that count, 0 when none counts.

Shapes: N rows (positions), V classes / vocabulary, K labels, C width.
"""
from __future__ import annotations

import numpy as np

from minidistil.core.autograd import Tensor, make_result
from minidistil.core.functional import l2_normalize
from minidistil.kernels import bce as _bce
from minidistil.kernels import cosine as _cosine
from minidistil.kernels import cross_entropy as _ce
from minidistil.kernels import _cuda
from minidistil.kernels import distill_kl as _kl


def _scalar(loss, like: Tensor):
    """The loss as the data of a 0-d Tensor on `like`'s device. The CUDA kernels return a 0-d device array (the
    loss never waits for the GPU to be read back); a host number beside device inputs is written on the device by
    a kernel."""
    if _cuda.is_device_array(loss):
        return loss
    if _cuda.is_device_array(like.data):
        return _cuda.device_scalar(float(loss), like.dtype)
    return np.asarray(loss, dtype=like.dtype)


def _dloss(dloss):
    """The upstream gradient as the kernels take it: a device scalar stays on the device, a host one is a float."""
    return dloss if _cuda.is_device_array(dloss) else float(dloss)


def _data(t):
    return t.data if isinstance(t, Tensor) else t


def cross_entropy(logits: Tensor, targets: np.ndarray, ignore_index: int = -100) -> Tensor:
    """mean over rows with targets != ignore_index of -log softmax(logits)[target];  logits (N, V), targets (N,)."""
    loss, cache = _ce.cross_entropy_forward(logits.data, _data(targets), ignore_index)

    def backward(dloss):
        # loss = mean_n -log_softmax(logits_n)[t_n]  ->  dlogits_n = (softmax(logits_n) - onehot(t_n)) / count
        return (_ce.cross_entropy_backward(_dloss(dloss), cache),)

    return make_result(_scalar(loss, logits), (logits,), backward, "cross_entropy", fresh_grads=True)


def distill_kl(student: Tensor, teacher, temperature: float, mask: np.ndarray | None = None) -> Tensor:
    """DistilBERT's soft-target loss: T^2 * mean_n KL(softmax(teacher_n / T) || softmax(student_n / T)).

    student (N, V) logits; teacher (N, V) logits (a Tensor or an array; it gets no gradient); mask (N,) bool rows.
    """
    loss, cache = _kl.distill_kl_forward(student.data, _data(teacher), temperature, mask)

    def backward(dloss):
        # loss = T^2 mean_n KL(p_t || p_s)  ->  dstudent_n = T (p_s - p_t) / count
        return (_kl.distill_kl_backward(_dloss(dloss), cache),)

    return make_result(_scalar(loss, student), (student,), backward, "distill_kl", fresh_grads=True)


def cosine_embedding_loss(a: Tensor, b, mask: np.ndarray | None = None) -> Tensor:
    """mean_n (1 - cos(a_n, b_n));  a, b (N, C); mask (N,) bool rows. DistilBERT aligns student and teacher
    hidden states with it. b may be a Tensor (gradient to both) or an array."""
    b_t = b if isinstance(b, Tensor) else None
    loss, cache = _cosine.cosine_loss_forward(a.data, _data(b), mask)

    def backward(dloss):
        # loss = mean_n (1 - a_n.b_n / (|a_n| |b_n|))  ->  (da, db)
        return _cosine.cosine_loss_backward(_dloss(dloss), cache)

    return make_result(_scalar(loss, a), (a, b_t), backward, "cosine_embedding_loss", fresh_grads=True)


def mse(a: Tensor, b, mask: np.ndarray | None = None) -> Tensor:
    """mean squared error between a and b (N, C); b a Tensor or an array."""
    b_t = b if isinstance(b, Tensor) else None
    loss, cache = _cosine.mse_forward(a.data, _data(b), mask)

    def backward(dloss):
        # loss = mean (a - b)^2  ->  da = 2 (a - b) / count,  db = -da
        return _cosine.mse_backward(_dloss(dloss), cache)

    return make_result(_scalar(loss, a), (a, b_t), backward, "mse", fresh_grads=True)


def similarity_kl(a: Tensor, b, temperature: float) -> Tensor:
    """How much of the teacher's in-batch similarity structure the student keeps (a, b (N, C), N >= 2; b gets no
    gradient): with S = cos(a_i, a_j) and S' = cos(b_i, b_j) over the pairs i != j (each row's N - 1 others),
        loss = tau^2 mean_i KL(softmax(S'_i / tau) || softmax(S_i / tau))
    which is distill_kl on the (N, N - 1) off-diagonal similarity rows: each sentence's ranking of the other
    sentences of the batch is matched, the thing a retrieval or similarity user reads off the embeddings."""
    # The (N, C) pooled rows (N the batch) are small: on a GPU they are copied to the host explicitly, once, and
    # the gradient copied back (a device array has no NumPy operations; calling np.linalg on one fails there).
    on_device = _cuda.is_device_array(_data(a))
    x = _cuda.to_host(_data(a))
    y = np.asarray(_cuda.to_host(_data(b)), dtype=np.float32)
    N = x.shape[0]
    if N < 2:
        raise ValueError(f"similarity_kl: needs at least 2 rows, got {N}")
    norm = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))   # (N, 1), kept for backward
    xn = x / norm                                                                      # (N, C)
    yn = l2_normalize(y, axis=1)                                                       # (N, C)
    off = ~np.eye(N, dtype=bool)                                                       # (N, N) i != j
    s = np.ascontiguousarray((xn @ xn.T)[off].reshape(N, N - 1), dtype=np.float32)    # (N, N-1) student
    t = np.ascontiguousarray((yn @ yn.T)[off].reshape(N, N - 1), dtype=np.float32)    # (N, N-1) teacher
    loss, cache = _kl.distill_kl_forward(s, t, temperature, None)

    def backward(dloss):
        # loss = tau^2 mean_i KL(p_t || p_s) over S = xn xn^T off the diagonal  ->  dS from distill_kl, then
        # S = xn xn^T  ->  dxn = (dS + dS^T) xn;   xn = x / |x|  ->  dx = (dxn - xn (xn . dxn)) / |x|
        ds = np.zeros((N, N), dtype=np.float32)
        d = float(_cuda.to_host(dloss))  # a device dloss is read back: this term is computed on the host
        ds[off] = np.asarray(_kl.distill_kl_backward(d, cache)).reshape(-1)
        dxn = (ds + ds.T) @ xn                                                        # (N, C)
        dx = np.ascontiguousarray((dxn - xn * (xn * dxn).sum(axis=1, keepdims=True)) / norm, dtype=np.float32)
        return (_cuda.to_device(dx) if on_device else dx,)

    return make_result(_scalar(loss, a), (a,), backward, "similarity_kl")


def bce_with_logits(logits: Tensor, targets: np.ndarray) -> Tensor:
    """mean over all N*K entries of -[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))];  logits, targets (N, K)."""
    loss, cache = _bce.bce_with_logits_forward(logits.data, _data(targets))  # targets get no gradient

    def backward(dloss):
        # loss = mean softplus(x) - t x  ->  dx = (sigmoid(x) - t) / (N K)
        return (_bce.bce_with_logits_backward(_dloss(dloss), cache),)

    return make_result(_scalar(loss, logits), (logits,), backward, "bce_with_logits", fresh_grads=True)


# ---- the task losses of the head models (Hugging Face's rules) --------------------------------------------------

def sequence_classification_loss(logits: Tensor, labels, problem_type: str | None) -> Tensor:
    """HF's rule for the ...ForSequenceClassification heads; logits (B, K).

    problem_type None is inferred as HF does: K == 1 -> "regression" (MSE), integer labels -> single-label cross
    entropy, otherwise "multi_label_classification" (BCE with logits on float labels (B, K)).
    """
    labels = np.asarray(labels)
    B, K = logits.shape
    if problem_type is None:
        if K == 1:
            problem_type = "regression"
        elif np.issubdtype(labels.dtype, np.integer):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        # mean over all B*K entries of (logits - labels)^2 (one value per row, so any per-row mean is that mean)
        target = np.ascontiguousarray(labels, dtype=logits.dtype).reshape(B * K, 1)
        return mse(logits.reshape(B * K, 1), target)
    if problem_type == "single_label_classification":
        return cross_entropy(logits, np.ascontiguousarray(labels, dtype=np.int64).reshape(-1))
    if problem_type == "multi_label_classification":
        return bce_with_logits(logits, np.ascontiguousarray(labels, dtype=logits.dtype).reshape(B, K))
    raise ValueError(f"problem_type: unknown {problem_type!r}")


def span_loss(start_logits: Tensor, end_logits: Tensor, start_positions, end_positions) -> Tensor:
    """Extractive QA: (CE(start) + CE(end)) / 2; start/end logits (B, T), positions (B,). As HF, positions outside
    [0, T) are clamped to T and then ignored."""
    T = start_logits.shape[1]
    start = np.clip(np.asarray(start_positions).reshape(-1), 0, T).astype(np.int64)
    end = np.clip(np.asarray(end_positions).reshape(-1), 0, T).astype(np.int64)
    start_loss = cross_entropy(start_logits, start, ignore_index=T)
    end_loss = cross_entropy(end_logits, end, ignore_index=T)
    return (start_loss + end_loss) * 0.5
