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
# # 13 · One transformer block, then the whole DistilBERT, forward and backward
#
# Chapters 01–03 built the kernels one by one: GELU, layer norm, attention. Here they are put together. First one
# **transformer block** (DistilBERT's, post-LN as in the original BERT), then the **embeddings**, then the whole
# encoder, each from the NumPy references of `kernels/` in float64. Then the **backward** of the block, derived
# line by line (the linear layer, the residual, dropout, the embedding sum), and checked on *every* parameter of the
# model against central finite differences, against the library's autograd and against `transformers`.
#
# One block, with $x$ of shape (B, T, C):
#
# $$\begin{aligned}
# q, k, v &= x W_q^\top + b_q,\; x W_k^\top + b_k,\; x W_v^\top + b_v \\
# a &= \mathrm{LN}_1\!\big(x + \mathrm{Attention}(q, k, v)\,W_o^\top + b_o\big) \\
# y &= \mathrm{LN}_2\!\big(a + \mathrm{dropout}(\mathrm{gelu}(a W_1^\top + b_1)\,W_2^\top + b_2)\big)
# \end{aligned}$$
#
# The names are Hugging Face's (`q_lin`, `k_lin`, `v_lin`, `out_lin`, `sa_layer_norm`, `ffn.lin1`, `ffn.lin2`,
# `output_layer_norm`), so one dictionary of arrays serves our model, `transformers` and this chapter.
# The library's version is `minidistil/models/distilbert.py` (`TransformerBlock`, `Embeddings`).

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

from minidistil import DistilBertConfig, DistilBertModel, no_grad
from minidistil.core import functional as Fn
from minidistil.core.autograd import Tensor
from minidistil.kernels import _checks
from minidistil.kernels import attention as KA
from minidistil.kernels import dropout as KD
from minidistil.kernels import embedding as KE
from minidistil.kernels import gelu as KG
from minidistil.kernels import layernorm as KL
from minidistil.kernels import linear as KLin

EPS = DistilBertConfig.layer_norm_eps                  # 1e-12, DistilBERT's layer-norm epsilon
cfg = DistilBertConfig(vocab_size=23, n_layers=2, n_heads=2, dim=8, hidden_dim=12, max_position_embeddings=16,
                       dropout=0.1, attention_dropout=0.0)
B, T, C, H, Fd, V = 2, 5, cfg.dim, cfg.n_heads, cfg.hidden_dim, cfg.vocab_size
rng = np.random.default_rng(0)
model = DistilBertModel.from_config(cfg, seed=0)       # only for its parameter names and shapes, and section 6
# every parameter drawn again at a size where each term of the backward matters (the default init is 0.02)
P = {name: (1.0 + 0.2 * rng.standard_normal(p.shape)) if "LayerNorm.weight" in name or "layer_norm.weight" in name
     else 0.4 * rng.standard_normal(p.shape) for name, p in model.named_parameters()}
ids = rng.integers(1, V, size=(B, T))
ids[0, 1] = ids[0, 3]                                  # a repeated id: its embedding row gets two gradients
mask = np.ones((B, T), dtype=np.int64)
mask[1, 3:] = 0                                        # the second sequence has two padding positions
ids[1, 3:] = cfg.pad_token_id
print(f"{len(P)} parameter arrays, {sum(a.size for a in P.values())} numbers; ids\n{ids}")
assert OUT.is_dir() and all(a.dtype == np.float64 for a in P.values())

# %% [markdown]
# ## 1. One block, forward, from the kernels
#
# Every step is one kernel reference returning `(output, cache)`; the caches are what the backward needs (chapter
# 02's `mean, rstd`, chapter 03's probabilities, the linear layer's input). The residual sums happen inside
# `residual_layernorm_forward_ref(x, r, ...) = LN(x + r)`, as the library fuses them.

# %%
def linear(x, p, name):
    return KLin.linear_forward_ref(x, p[name + ".weight"], p[name + ".bias"])        # y = x W^T + b


def block_forward(x, mask, p, pre, drop_p=0.0, seed=0):
    """x (B, T, C) -> y (B, T, C), caches: one DistilBERT TransformerBlock (parameters p[pre + name])."""
    c = {}
    q, c["q"] = linear(x, p, pre + "attention.q_lin")                              # (B, T, C)
    k, c["k"] = linear(x, p, pre + "attention.k_lin")                              # (B, T, C)
    v, c["v"] = linear(x, p, pre + "attention.v_lin")                              # (B, T, C)
    h, c["att"] = KA.attention_forward_ref(q, k, v, mask, H)                       # (B, T, C) heads merged
    o, c["o"] = linear(h, p, pre + "attention.out_lin")                            # (B, T, C)
    a, c["ln1"] = KL.residual_layernorm_forward_ref(o, x, p[pre + "sa_layer_norm.weight"],
                                                    p[pre + "sa_layer_norm.bias"], EPS)   # a = LN(o + x)
    u, c["lin1"] = linear(a, p, pre + "ffn.lin1")                                  # (B, T, F)
    g, c["gelu"] = KG.gelu_forward_ref(u)                                          # (B, T, F)
    f, c["lin2"] = linear(g, p, pre + "ffn.lin2")                                  # (B, T, C)
    fd, c["drop"] = KD.dropout_forward_ref(f, drop_p, seed) if drop_p else (f, None)   # dropout(f)
    y, c["ln2"] = KL.residual_layernorm_forward_ref(fd, a, p[pre + "output_layer_norm.weight"],
                                                    p[pre + "output_layer_norm.bias"], EPS)  # y = LN(fd + a)
    return y, c


x0 = rng.standard_normal((B, T, C))
y0, _ = block_forward(x0, mask, P, "transformer.layer.0.")
# the library's block on the same numbers (float32, eval mode: no dropout)
model.load_state_dict({n: a.astype(np.float32) for n, a in P.items()})
model.eval()
with no_grad():
    ours, _ = model.transformer.layer[0](Tensor(x0.astype(np.float32)), mask)
err = np.abs(np.asarray(ours) - y0).max()
print(f"one block: max |library (float32) - this chapter (float64)| = {err:.1e}")
# the outputs are layer-normed (|y| ~ 1 to 4) and each went through reductions of length <= F: float32's error
assert err <= _checks.f32_tol(Fd, scale=np.abs(y0).max() * 4)

# %% [markdown]
# ## 2. The embeddings, and the whole encoder
#
# A token's first hidden vector is the **sum of embeddings**, one row of each table, then a layer norm:
#
# $$e_{b,t} = \mathrm{LN}\big(W_\text{word}[\mathrm{id}_{b,t}] + W_\text{pos}[t]
#   \ \big(+\ W_\text{type}[\mathrm{type}_{b,t}] \text{ in BERT}\big)\big),\qquad x^{(0)} = \mathrm{dropout}(e).$$
#
# DistilBERT dropped BERT's token-type table (chapter 07 folds its row 0 into the position table); the code below
# takes any number of tables, so the BERT form is the same function with three. Then the blocks, one after
# another: that is the whole `DistilBertModel.forward`.

# %%
def embed_forward(tables, p, drop_p=0.0, seed=0):
    """tables: [(ids (B, T), name of a (rows, C) table), ...] -> the summed, layer-normed embeddings (B, T, C)."""
    c = {"rows": []}
    total = 0.0
    for idx, name in tables:
        rows, cache = KE.embedding_forward_ref(idx, p[name])                      # (B, T, C) table[idx]
        c["rows"].append((name, cache))
        total = total + rows
    e, c["ln"] = KL.layernorm_forward_ref(total, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"],
                                          EPS)
    ed, c["drop"] = KD.dropout_forward_ref(e, drop_p, seed) if drop_p else (e, None)
    return ed, c


positions = np.broadcast_to(np.arange(T), (B, T))
TABLES = [(ids, "embeddings.word_embeddings.weight"), (positions, "embeddings.position_embeddings.weight")]


def model_forward(p, drop_p=0.0, seeds=None, tables=None):
    """The whole encoder: embeddings, then cfg.n_layers blocks -> last_hidden_state (B, T, C), caches."""
    seeds = seeds or [0] * (1 + cfg.n_layers)
    x, ce = embed_forward(tables or TABLES, p, drop_p, seeds[0])
    caches = [ce]
    for i in range(cfg.n_layers):
        x, c = block_forward(x, mask, p, f"transformer.layer.{i}.", drop_p, seeds[1 + i])
        caches.append(c)
    return x, caches


h_ours = np.asarray(model(ids, mask).last_hidden_state)
h_here, _ = model_forward(P)
err = np.abs(h_ours - h_here).max()
print(f"whole encoder: max |DistilBertModel - this chapter| = {err:.1e}")
assert err <= _checks.f32_tol(Fd, scale=np.abs(h_here).max() * 4 * (1 + cfg.n_layers))

# %% [markdown]
# ## 3. The backward of each piece
#
# **The linear layer.** $y = x W^\top + b$ with $x$ (N, C_in), $W$ (C_out, C_in): each $y_{nj} = \sum_i x_{ni}
# W_{ji} + b_j$. The derivative of the loss with respect to one input, weight or bias collects every output it
# touched:
#
# $$\frac{\partial L}{\partial x_{ni}} = \sum_j \frac{\partial L}{\partial y_{nj}} W_{ji}\ \Rightarrow\ dX = dY\,W,
# \qquad \frac{\partial L}{\partial W_{ji}} = \sum_n \frac{\partial L}{\partial y_{nj}} x_{ni}\ \Rightarrow\
# dW = dY^\top X,\qquad db = \textstyle\sum_n dY_{n\cdot}.$$
#
# Shapes check it: $dY\,W$ is (N, C_out)(C_out, C_in) = (N, C_in), and $dY^\top X$ is (C_out, N)(N, C_in), the
# weight's shape. Leading axes (B, T) are just more rows N: the weight's gradient sums over all B·T tokens.
#
# **The residual** $h = x + r$: both inputs get $dh$ unchanged. A tensor used twice (the block's $a$ feeds both
# `lin1` and the second residual) **adds** its two gradients, as chapter 04's autograd does.
#
# **Dropout** $y = x \cdot \mathrm{keep} / (1-p)$, with the mask fixed by the seed: $dx = dy \cdot \mathrm{keep}
# / (1-p)$, the same mask, the same scale.
#
# **The embedding sum** $e = \mathrm{LN}(W_\text{word}[\mathrm{id}] + W_\text{pos}[t] + \dots)$: the layer norm's
# backward (chapter 02) gives $d(\text{sum})$, and every table receives that same gradient, *scattered* into the
# rows its ids picked: $dW_\text{word}[\mathrm{id}_{b,t}] \mathrel{+}= d(\text{sum})_{b,t}$. A repeated id adds
# (that is `np.add.at`, not an assignment); a row no token used gets zero. One exception is a convention, not
# maths: the `[PAD]` row (`padding_idx`, id 0) is declared constant in torch and in the library, so its gradient is
# set to zero; the finite differences below see the maths (`padding_idx=None`), the comparisons with the library
# and `transformers` the convention (`padding_idx=0`).
#
# Written out, one function per forward function, each line quoting the line it differentiates:

# %%
def linear_backward(dy, x, w):
    """y = x W^T + b  ->  (dx, dW, db); x (..., Cin), w (Cout, Cin), dy (..., Cout)."""
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])             # (N, Cin), (N, Cout)
    return dy @ w, dy2.T @ x2, dy2.sum(axis=0)                                     # dX = dY W, dW = dY^T X


def lin_bwd(dy, c, name, grads):
    dx, grads[name + ".weight"], grads[name + ".bias"] = linear_backward(dy, c.x, c.w)
    return dx


def block_backward(dy, c, pre, grads):
    """dy = dL/dy (B, T, C) -> dL/dx; the parameters' gradients go into grads[pre + name]."""
    # y = LN(fd + a)
    dh2, grads[pre + "output_layer_norm.weight"], grads[pre + "output_layer_norm.bias"] = \
        KL.residual_layernorm_backward_ref(dy, c["ln2"])
    da = dh2.copy()                                                 # h2 = fd + a: a gets dh2 ...
    df = KD.dropout_backward_ref(dh2, c["drop"]) if c["drop"] else dh2   # fd = dropout(f): same mask, same scale
    dg = lin_bwd(df, c["lin2"], pre + "ffn.lin2", grads)           # f = g W2^T + b2
    du = KG.gelu_backward_ref(dg, c["gelu"])                        # g = gelu(u)
    da += lin_bwd(du, c["lin1"], pre + "ffn.lin1", grads)          # u = a W1^T + b1: ... and a second gradient
    # a = LN(o + x)
    dh1, grads[pre + "sa_layer_norm.weight"], grads[pre + "sa_layer_norm.bias"] = \
        KL.residual_layernorm_backward_ref(da, c["ln1"])
    dx = dh1.copy()                                                 # h1 = o + x: x gets dh1 ...
    dh = lin_bwd(dh1, c["o"], pre + "attention.out_lin", grads)    # o = h Wo^T + bo
    dq, dk, dv = KA.attention_backward_ref(dh, c["att"])            # h = attention(q, k, v) (chapter 03)
    for d, key, name in ((dq, "q", "q_lin"), (dk, "k", "k_lin"), (dv, "v", "v_lin")):
        dx += lin_bwd(d, c[key], pre + "attention." + name, grads)  # ... and x fed q, k and v too: four paths
    return dx


def embed_backward(dx, c, grads, padding_idx=None):
    de = KD.dropout_backward_ref(dx, c["drop"]) if c["drop"] else dx                 # x = dropout(e)
    dsum, grads["embeddings.LayerNorm.weight"], grads["embeddings.LayerNorm.bias"] = \
        KL.layernorm_backward_ref(de, c["ln"])                                       # e = LN(sum)
    for name, cache in c["rows"]:                                                    # sum = table_1[ids_1] + ...
        grads[name] = KE.embedding_backward_ref(dsum, cache)                         # scatter-add into the rows
    if padding_idx is not None:                   # torch's padding_idx: the [PAD] row is a constant, never trained
        grads["embeddings.word_embeddings.weight"][padding_idx] = 0.0


def model_backward(dy, caches, padding_idx=None):
    grads = {}
    for i in reversed(range(cfg.n_layers)):
        dy = block_backward(dy, caches[1 + i], f"transformer.layer.{i}.", grads)
    embed_backward(dy, caches[0], grads, padding_idx)
    return grads


G = rng.standard_normal((B, T, C))                     # the loss L = sum(G * last_hidden_state): dL/dy = G
DROP, SEEDS = 0.1, [11, 12, 13]                        # dropout ON, masks fixed by the seeds: a training step


def loss(p, tables=None):
    return float((model_forward(p, DROP, SEEDS, tables)[0] * G).sum())


_, caches = model_forward(P, DROP, SEEDS)
grads = model_backward(G, caches)
assert sorted(grads) == sorted(P), "the backward must give every parameter a gradient"
print("gradients of", len(grads), "parameter arrays; |dW_word| of the unused rows:",
      np.abs(grads["embeddings.word_embeddings.weight"][np.setdiff1d(np.arange(V), ids)]).max())

# %% [markdown]
# ## 4. Every parameter against finite differences (float64)
#
# Central differences $\big(L(\theta + h) - L(\theta - h)\big) / 2h$ with $h = 10^{-6}$ in float64: truncation
# $O(h^2) \approx 10^{-12}$ times the third derivative, rounding $\approx \varepsilon_{64} |L| / h \approx 10^{-9}$
# for $|L| \sim 10$. We ask for agreement within $10^{-6}$ (absolute plus relative), a 1000x margin, on **every
# entry of every parameter**: dropout on, one padded sequence, a repeated id, every layer: every number the model
# has (the count is printed above), two forward passes each.

# %%
fd_err = {}
for name in P:
    num = _checks.numerical_gradient(lambda: loss(P), P[name])              # perturbs P[name] in place, restores
    fd_err[name] = float(np.abs(num - grads[name]).max() / (1.0 + np.abs(num).max()))
    assert np.allclose(grads[name], num, atol=1e-6, rtol=1e-6), (name, fd_err[name])
worst = max(fd_err, key=fd_err.get)
print(f"{sum(a.size for a in P.values())} gradient entries checked; worst: {worst} at {fd_err[worst]:.1e}")

# %% [markdown]
# The BERT form of the embedding sum has a third table. Same functions, one more `(ids, table)` pair: its gradient
# is the same $d(\text{sum})$ scattered by the token types, checked the same way.

# %%
types = np.array([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
P_bert = {**P, "embeddings.token_type_embeddings.weight": 0.4 * rng.standard_normal((2, C))}
bert_tables = TABLES + [(types, "embeddings.token_type_embeddings.weight")]
_, c_bert = model_forward(P_bert, DROP, SEEDS, bert_tables)
g_bert = model_backward(G, c_bert)
num = _checks.numerical_gradient(lambda: loss(P_bert, bert_tables), P_bert["embeddings.token_type_embeddings.weight"])
print("d type table:", np.round(g_bert["embeddings.token_type_embeddings.weight"][:, :4], 4))
assert np.allclose(g_bert["embeddings.token_type_embeddings.weight"], num, atol=1e-6, rtol=1e-6)

# %% [markdown]
# ## 5. Against the library's autograd, in a training step
#
# The library runs the same maths in float32 through its autograd (chapter 04). Its dropout takes one seed per
# call from a generator that `functional.manual_seed` seeds; drawing the same three seeds here and passing them to
# the float64 forward makes the two training steps use the same masks, so every gradient can be compared.

# %%
Fn.manual_seed(1234)
lib_seeds = [int(s) for s in np.random.default_rng(1234).integers(0, 2**31 - 1, size=1 + cfg.n_layers)]
model.train()
model.zero_grad()
out = model(ids, mask).last_hidden_state
(out * G.astype(np.float32)).sum().backward()
_, c_lib = model_forward(P, DROP, lib_seeds)
g_lib = model_backward(G, c_lib, padding_idx=cfg.pad_token_id)
lib_err = {}
for name, p in model.named_parameters():
    # the scale of the terms summed: at least 1, the size of the gradients flowing (|G| ~ 1); an exactly-zero true
    # gradient (k_lin.bias: softmax ignores a constant added to a whole row of scores) comes back as float32 noise
    scale = max(np.abs(g_lib[name]).max(), 1.0)
    lib_err[name] = float(np.abs(p.grad - g_lib[name]).max() / scale)
    # a float32 backward through 2 layers: reductions of length <= B*T*F, a few of them chained per layer
    assert np.abs(p.grad - g_lib[name]).max() <= _checks.f32_tol(B * T * Fd, scale=scale * 8), name
print(f"library autograd (float32, dropout on) vs this chapter: worst relative error "
      f"{max(lib_err.values()):.1e} ({max(lib_err, key=lib_err.get)})")
model.eval()

# %% [markdown]
# ## 6. Against `transformers` (optional): a tiny random model built here, nothing downloaded
#
# `transformers.DistilBertModel` with the same configuration takes our dictionary of arrays as its state dict
# (the names are the same), runs in float64 and differentiates with torch's autograd. Eval mode: torch's dropout
# masks come from torch's generator and cannot match ours, and dropout was checked above.

# %%
try:
    import torch
    import transformers
except ImportError:
    torch = None
    print("torch / transformers are not installed: the comparison with transformers is skipped")

hf_err = {}
if torch is not None:
    hf_cfg = transformers.DistilBertConfig(vocab_size=V, n_layers=cfg.n_layers, n_heads=H, dim=C, hidden_dim=Fd,
                                           max_position_embeddings=cfg.max_position_embeddings, dropout=0.1,
                                           attention_dropout=0.0)
    hf = transformers.DistilBertModel(hf_cfg).double().eval()
    missing, unexpected = hf.load_state_dict({n: torch.tensor(a) for n, a in P.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    y_hf = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    (y_hf * torch.tensor(G)).sum().backward()
    y_here, c_eval = model_forward(P)                                       # dropout off
    g_eval = model_backward(G, c_eval, padding_idx=cfg.pad_token_id)
    assert np.abs(y_hf.detach().numpy() - y_here).max() < 1e-10
    for name, p in hf.named_parameters():
        hf_err[name] = float(np.abs(p.grad.numpy() - g_eval[name]).max() / (1.0 + np.abs(g_eval[name]).max()))
    print(f"transformers (float64) vs this chapter: {len(hf_err)} parameter gradients, worst "
          f"{max(hf_err.values()):.1e}")
    # both float64: only the order of the additions differs (reductions of length <= B*T*F)
    assert max(hf_err.values()) < 1e-10

# %% [markdown]
# ## 7. The three checks, per parameter

# %%
names = list(P)
short = [n.replace("transformer.layer.", "L").replace("embeddings.", "emb.").replace(".weight", ".w")
         .replace(".bias", ".b").replace("attention.", "") for n in names]
fig, ax = plt.subplots(figsize=(10, 4))
xs = np.arange(len(names))
ax.scatter(xs, [max(fd_err[n], 1e-17) for n in names], label="finite differences (float64)", s=18)
ax.scatter(xs, [max(lib_err[n], 1e-17) for n in names], label="library autograd (float32)", s=18, marker="x")
if hf_err:
    ax.scatter(xs, [max(hf_err[n], 1e-17) for n in names], label="transformers (float64)", s=18, marker="^")
ax.set_yscale("log")
ax.set_xticks(xs, short, rotation=90, fontsize=6)
ax.set_ylabel("relative gradient error")
ax.set_title("every parameter of a 2-layer DistilBERT: the hand-derived backward against three others")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(OUT / "13_block_gradients.png", dpi=80)
plt.show()
assert len(fd_err) == len(lib_err) == len(P)

# %% [markdown]
# ## Exercise
#
# `minidistil grade linear_backward`: write `linear_backward(dy, x, w) -> (dx, dw, db)` yourself (get your copy
# with `minidistil exercises copy my_exercises`). The grader compares it with `kernels/linear.py`'s reference on
# awkward shapes and with finite differences, and names the usual mistakes (a transposed `dW`, `dy @ w.T`, a mean
# where a sum belongs).
#
# ## Try it
#
# 1. In `block_backward`, drop `lin1`'s contribution to `da` (keep only the residual's). Predict which parameters'
#    finite-difference checks fail, then run section 4. (Those the backward reaches after `lin1`: `sa_layer_norm`,
#    the attention's projections, the embeddings and every earlier layer; `lin1`, `lin2` and `output_layer_norm`
#    do not depend on `da`.)
# 2. Replace `np.add.at` by assignment in your head: which entry of `grads["embeddings.word_embeddings.weight"]`
#    would be wrong? (`ids[0, 1] == ids[0, 3]`: print that row of the gradient and of the finite differences.)
# 3. Set `DROP = 0.5` and rerun sections 3–4. Does the check still pass? Why must the backward use the forward's
#    seed, and what happens if `SEEDS` changes between `loss` and `model_forward`?
# 4. Set `mask[1, :] = 0` (a fully padded sequence). What does attention output on that row (chapter 03), and do
#    the gradient checks still hold?
# 5. How many multiplications does `dW = dY^T X` cost for N tokens, and how does that compare with the forward
#    `X W^T`? (Count them for `lin1` here, then for DistilBERT-base with N = 8 x 128.)
