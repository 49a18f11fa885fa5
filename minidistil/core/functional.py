"""The coarse autograd ops of the model, each one kernel pair: `*_forward` builds the output and a cache, and the
backward closure right below it calls `*_backward(dout, cache)`.

Every closure quotes the forward line it differentiates. Arrays stay behind the kernels (no NumPy maths here), so
the same code runs when `.data` holds numba.cuda device arrays: the kernels dispatch on the array type.

Shapes: B batch, T tokens, C model width, H heads, D = C / H head width, F feed-forward width, V vocabulary.
"""
from __future__ import annotations

import numpy as np

from minidistil.core.autograd import Tensor, make_result
from minidistil.kernels import activations as _act
from minidistil.kernels import _cuda
from minidistil.kernels import attention as _attention
from minidistil.kernels import dropout as _dropout
from minidistil.kernels import embedding as _embedding
from minidistil.kernels import gelu as _gelu
from minidistil.kernels import layernorm as _layernorm
from minidistil.kernels import linear as _linear
from minidistil.kernels import softmax as _softmax


def l2_normalize(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """a / max(||a||_2, 1e-12) along `axis` (a new array in a's float dtype): unit vectors; the clamp keeps a zero
    vector zero instead of dividing by zero. On plain arrays (embeddings, similarity matrices), not Tensors."""
    a = np.asarray(a)
    return a / np.maximum(np.linalg.norm(a, axis=axis, keepdims=True), a.dtype.type(1e-12))


def _own_linear(w) -> bool:
    """True for a weight Tensor subclass that computes x W^T + b itself (its `linear` method): the hook through which
    a plug-in weight format (int8) runs its own kernel without this module knowing it."""
    return callable(getattr(type(w), "linear", None))


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """y = x @ w^T + b;  x (..., Cin), w (Cout, Cin), b (Cout,) -> y (..., Cout).
    A weight that brings its own product (`w.linear(x, b)`, e.g. an int8 weight) runs it instead."""
    if _own_linear(w):
        return w.linear(x, b)
    y, cache = _linear.linear_forward(x.data, w.data, None if b is None else b.data)

    def backward(dy):
        # y = x @ w^T + b  ->  dx = dy @ w,  dw = dy^T @ x,  db = sum(dy) over all rows
        return _linear.linear_backward(dy, cache)

    return make_result(y, (x, w, b), backward, "linear", fresh_grads=True)


def gelu(x: Tensor) -> Tensor:
    """y = x * Phi(x) (exact erf)."""
    y, cache = _gelu.gelu_forward(x.data)

    def backward(dy):
        # y = 0.5 * x * (1 + erf(x / sqrt(2)))  ->  dx = dy * (Phi(x) + x * phi(x))
        return (_gelu.gelu_backward(dy, cache),)

    return make_result(y, (x,), backward, "gelu", fresh_grads=True)


def bias_gelu(x: Tensor, b: Tensor) -> Tensor:
    """y = gelu(x + b);  x (..., F), b (F,): the bias of the linear before GELU, fused into the GELU pass."""
    y, cache = _gelu.bias_gelu_forward(x.data, b.data)

    def backward(dy):
        # y = gelu(x + b)  ->  dx = dy * gelu'(x + b),  db = sum(dx) over all rows
        return _gelu.bias_gelu_backward(dy, cache)

    return make_result(y, (x, b), backward, "bias_gelu", fresh_grads=True)


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis C."""
    y, cache = _layernorm.layernorm_forward(x.data, w.data, b.data, eps)

    def backward(dy):
        # y = (x - mean) * rstd * w + b  ->  (dx, dw, db)
        return _layernorm.layernorm_backward(dy, cache)

    return make_result(y, (x, w, b), backward, "layer_norm", fresh_grads=True)


def residual_layer_norm(x: Tensor, r: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    """y = LayerNorm(x + r): the Post-LN residual step of BERT, in one kernel."""
    y, cache = _layernorm.residual_layernorm_forward(x.data, r.data, w.data, b.data, eps)

    def backward(dy):
        # y = LN(h), h = x + r  ->  dx = dr = dh
        dh, dw, db = _layernorm.residual_layernorm_backward(dy, cache)
        return dh, dh, dw, db

    return make_result(y, (x, r, w, b), backward, "residual_layer_norm", fresh_grads=True)


def _attention_dropout(p: float, training: bool, seed: int | None, n_heads: int, T: int) -> tuple[float, int, int]:
    """(p, seed, offset) of attention-probability dropout: p = 0 outside training; a fresh seed per call from the
    generator manual_seed sets unless one is given; offset, the flat index of this batch's first mask element within
    the global batch's (a data-parallel rank's slice starts at example _FIRST_EXAMPLE)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1), got {p}")
    if not training:
        p = 0.0
    if p > 0.0 and seed is None:
        seed = int(_SEEDS.integers(0, 2**31 - 1))
    offset = _FIRST_EXAMPLE * n_heads * T * T if p > 0.0 else 0
    return p, int(seed or 0), offset


def attention(q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray, n_heads: int, p: float = 0.0,
              training: bool = False, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Multi-head scaled dot-product attention over all H heads in one kernel.

    q, k, v (B, T, C); mask (B, T), 1 = a real token, 0 = padding (keys at padding get no attention); a host
    array, or a device array when q is one (the models move their mask to the device once per forward).
    p: dropout on the attention probabilities, applied in training only (a fresh seed per call, from the generator
    that manual_seed sets, unless `seed` is given); the kernel regenerates the mask in backward.
    Returns (out (B, T, C), probs (B, H, T, T)); probs (before dropout) is for output_attentions, no gradient.
    """
    p, seed, offset = _attention_dropout(p, training, seed, n_heads, q.shape[1])
    out, cache = _attention.attention_forward(q.data, k.data, v.data, mask, n_heads, p, seed, offset=offset)

    def backward(dout):
        # out = dropout(softmax(q k^T / sqrt(D) + mask)) @ v, per head  ->  (dq, dk, dv)
        return _attention.attention_backward(dout, cache)

    return make_result(out, (q, k, v), backward, "attention", fresh_grads=True), Tensor(cache.probs)


def projected_attention(x: Tensor, w: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor],
                        mask: np.ndarray, n_heads: int, p: float = 0.0, training: bool = False,
                        seed: int | None = None) -> tuple[Tensor, Tensor]:
    """attention(x wq^T + bq, x wk^T + bk, x wv^T + bv, mask, ...) with the three projections as ONE GEMM.

    x (B, T, C); w = (wq, wk, wv), each (C, C); b = (bq, bk, bv), each (C,). On the CPU the weights are stacked
    into W = [wq; wk; wv] (3C, C) (no copy when they are consecutive row blocks of one array, as the models keep
    them: `stack_rows`), qkv = x W^T + [bq; bk; bv] is one (B*T, C) x (C, 3C) product, and attention reads q, k and
    v as strided column blocks of qkv (no copies between heads). On a GPU, or with int8 weights
    (a weight with its own product): three products, as `linear` does.
    Returns what `attention` returns; the gradient reaches x and the six parameters separately."""
    p, seed, offset = _attention_dropout(p, training, seed, n_heads, x.shape[1])
    if _cuda.is_device_array(x.data) or any(_own_linear(wi) for wi in w):
        q, k, v = (linear(x, wi, bi) for wi, bi in zip(w, b, strict=True))    # GPU, or weights with own products
        return attention(q, k, v, mask, n_heads, p, training, seed)
    C = w[0].shape[0]
    W, bias = stack_rows([t.data for t in w]), stack_rows([t.data for t in b])
    qkv, lin_cache = _linear.linear_forward(x.data, W, bias)                      # (B, T, 3C)  [q | k | v]
    out, cache = _attention.attention_forward(qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:], mask, n_heads,
                                              p, seed, offset=offset)             # (B, T, C)

    def backward(dout):
        # out = attention(q, k, v), [q | k | v] = x W^T + b  ->  (dq, dk, dv), then dx = dqkv W,
        # dW = dqkv^T x and db = sum(dqkv) over the rows, W's and b's row blocks going to (wq, wk, wv), (bq, bk, bv)
        dqkv = np.concatenate(_attention.attention_backward(dout, cache), axis=-1)  # (B, T, 3C)
        dx, dW, db = _linear.linear_backward(dqkv, lin_cache)
        blocks = [slice(0, C), slice(C, 2 * C), slice(2 * C, 3 * C)]
        return (dx, *(dW[s] for s in blocks), *(db[s] for s in blocks))

    return (make_result(out, (x, *w, *b), backward, "projected_attention", fresh_grads=True),
            Tensor(cache.probs))


def stack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    """[a0; a1; ...] along axis 0: the array they are consecutive, contiguous row blocks of when they are (no copy),
    else a new concatenation (e.g. after a parameter's .data was replaced by another array)."""
    base = arrays[0].base
    if base is not None and base.flags.c_contiguous and base.shape[0] == sum(a.shape[0] for a in arrays):
        at = base.ctypes.data
        for a in arrays:
            if a.base is not base or not a.flags.c_contiguous or a.ctypes.data != at:
                break
            at += a.nbytes
        else:
            return base
    return np.concatenate(arrays)


def embedding(ids: np.ndarray, table: Tensor, padding_idx: int | None = None, checked: bool = False) -> Tensor:
    """out[..., :] = table[ids[...], :];  ids any shape (int, a host or device array), table (V, C) -> (*ids.shape, C).
    As torch's nn.Embedding(padding_idx=...), the row padding_idx receives no gradient (it stays as loaded).
    checked=True: the caller has checked 0 <= ids < V (so device ids are not copied back to check them)."""
    out, cache = _embedding.embedding_forward(ids, table.data, checked)

    def backward(dout):
        # out = table[ids]  ->  dtable[id] += dout at every position holding id (but not the padding row)
        dtable = _embedding.embedding_backward(dout, cache)
        if padding_idx is not None:
            if _cuda.is_device_array(dtable):
                _cuda.fill_(dtable[padding_idx], 0.0)  # on the device (a setitem would copy a host row over)
            else:
                dtable[padding_idx] = 0.0
        return (dtable,)

    return make_result(out, (table,), backward, "embedding", fresh_grads=True)


def take_rows(x: Tensor, rows, checked: bool = False) -> Tensor:
    """out = x[rows];  x (N, C), rows (M,) int32 / int64 row indices (a host or device array) -> (M, C).

    A row gather IS an embedding lookup with x as the table, so it runs the embedding kernels: the gather forward,
    a scatter-add into zeros (N, C) backward (a row taken twice gets both gradients). The MLM head uses it to
    compute logits only at the rows a loss reads. checked=True: the caller has checked 0 <= rows < N (device rows
    are then not copied back to check them)."""
    out, cache = _embedding.embedding_forward(rows, x.data, checked)             # (M, C)

    def backward(dout):
        # out = x[rows]  ->  dx[rows[m]] += dout[m] for each of the M rows, zero elsewhere: (N, C)
        return (_embedding.embedding_backward(dout, cache),)

    return make_result(out, (x,), backward, "take_rows", fresh_grads=True)


def tanh(x: Tensor) -> Tensor:
    y, cache = _act.tanh_forward(x.data)

    def backward(dy):
        # y = tanh(x)  ->  dx = dy * (1 - y^2)
        return (_act.tanh_backward(dy, cache),)

    return make_result(y, (x,), backward, "tanh", fresh_grads=True)


def relu(x: Tensor) -> Tensor:
    y, cache = _act.relu_forward(x.data)

    def backward(dy):
        # y = max(x, 0)  ->  dx = dy * (x > 0)
        return (_act.relu_backward(dy, cache),)

    return make_result(y, (x,), backward, "relu", fresh_grads=True)


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last axis."""
    y, cache = _softmax.softmax_forward(x.data)

    def backward(dy):
        # y = exp(x) / sum(exp(x))  ->  dx = y * (dy - sum(dy * y))
        return (_softmax.softmax_backward(dy, cache),)

    return make_result(y, (x,), backward, "softmax", fresh_grads=True)


def log_softmax(x: Tensor) -> Tensor:
    """log(softmax(x)) over the last axis."""
    y, cache = _softmax.log_softmax_forward(x.data)

    def backward(dy):
        # y = x - log(sum(exp(x)))  ->  dx = dy - softmax(x) * sum(dy)
        return (_softmax.log_softmax_backward(dy, cache),)

    return make_result(y, (x,), backward, "log_softmax", fresh_grads=True)


# ---- dropout --------------------------------------------------------------------------------------------------
# The dropout kernel draws its mask from a counter-based hash of (seed, index), so a seed replays the same mask on
# CPU and GPU. Each call takes a fresh seed from this generator; `manual_seed` makes a run reproducible.
# A data-parallel rank that holds examples [b0, b0 + B) of a global batch sets first_example = b0: its masks are
# then the slices of the global batch's masks (the counter of element i of example b is (b0 + b) * per_example + i),
# so dropout depends on the seed and the global example index, never on how the batch is split.

_SEEDS = np.random.default_rng()
_FIRST_EXAMPLE = 0


def manual_seed(seed: int, first_example: int = 0):
    """Seed the generator that hands out dropout seeds; first_example: the global index of this batch's first
    example (a data-parallel rank's share, see above)."""
    global _SEEDS, _FIRST_EXAMPLE
    _SEEDS = np.random.default_rng(seed)
    _FIRST_EXAMPLE = int(first_example)


def dropout(x: Tensor, p: float, training: bool, seed: int | None = None) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only; identity otherwise)."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1), got {p}")
    if seed is None:
        seed = int(_SEEDS.integers(0, 2**31 - 1))
    offset = _FIRST_EXAMPLE * (x.size // x.shape[0]) if x.ndim and x.shape[0] else 0   # (B, ...): per example
    y, cache = _dropout.dropout_forward(x.data, p, seed, offset)

    def backward(dy):
        # y = x * keep(seed, i) / (1 - p)  ->  dx = dy * keep / (1 - p)
        return (_dropout.dropout_backward(dy, cache),)

    return make_result(y, (x,), backward, "dropout", fresh_grads=True)


def mean_pool(h, attention_mask: np.ndarray):
    """Sentence embedding as sentence-transformers' mean pooling: the mean of h over the real tokens.

    h (B, T, C) a Tensor (then the result carries gradients; it is composed of autograd ops, so it runs on GPU
    arrays too) or a NumPy array; attention_mask (B, T), 1 = real token -> (B, C). A row with no real token gives 0.
    """
    m = np.asarray(attention_mask, dtype=np.float32)[..., None]                 # (B, T, 1)
    inv = (1.0 / np.maximum(m.sum(axis=1), 1.0)).astype(np.float32)             # (B, 1) 1 / real tokens
    if not isinstance(h, Tensor):
        h = np.asarray(h, dtype=np.float32)
    elif _cuda.is_device_array(h.data):  # the two constants copied over once (the backward reuses them)
        m, inv = _cuda.to_device(m), _cuda.to_device(inv)
    return (h * m).sum(axis=1) * inv                                            # (B, C)
