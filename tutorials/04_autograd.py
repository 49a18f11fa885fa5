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
# # 04 · The autograd: a tape, a topological order, accumulated gradients
#
# `minidistil/core/autograd.py` is a reverse-mode autograd in a few hundred lines. A `Tensor` holds `.data` (a NumPy
# array), `.grad`, and, when an op made it, its parents and a `backward(dout)` closure written right under the
# forward maths. Calling `loss.backward()`:
#
# 1. sorts the graph so that every node comes before the nodes it was computed from (a **topological order**),
#    iteratively, so a chain of any length works;
# 2. walks that order from the loss to the leaves, calling each node's closure and **summing** the gradients that
#    arrive at a node used several times before passing them on;
# 3. **adds** the result into each leaf's `.grad` (leaves are the parameters, `requires_grad=True`).
#
# The ops the model uses are *coarse*: one node per kernel call (`minidistil.core.functional.linear`,
# `.attention`, `.layer_norm`, ...), each backed by the kernel pairs of the earlier chapters.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

from minidistil.core import functional as F
from minidistil import no_grad
from minidistil.core.autograd import Tensor, _topological_order
from minidistil.kernels import _checks

assert OUT.is_dir()

# %% [markdown]
# ## 0. The `Tensor`, and one op with its backward closure
#
# A `Tensor` is a NumPy array plus four things: `.grad`, `requires_grad`, the Tensors it was computed from
# (`_parents`) and the closure that turns the gradient of its output into gradients for those parents
# (`_backward`). Here are its constructor and the op `mul`, printed from the library's source (so this page cannot
# drift from it). Read `mul` top to bottom: the forward maths, then the closure, written right under it and quoting
# it (`out = a * b -> da = dout * b, db = dout * a`), then `make_result`, which records the node only when some
# input needs a gradient. `_unbroadcast` sums the gradient back over axes that broadcasting stretched.

# %%
import inspect

from minidistil.core import autograd

print(inspect.getsource(Tensor.__init__))
print(inspect.getsource(autograd.mul))
# the closure is an ordinary function: call it by hand on a gradient of the output
x1 = Tensor(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32), requires_grad=True)
x2 = Tensor(np.array([10.0, 20.0], dtype=np.float32), requires_grad=True)      # broadcast over the rows
prod = autograd.mul(x1, x2)
dprod = np.ones((2, 2), dtype=np.float32)
g1, g2 = prod._backward(dprod)
print("mul's parents:", [p is x for p, x in zip(prod._parents, (x1, x2))], " da =", g1.tolist(), " db =", g2.tolist())
assert prod._op == "mul" and np.array_equal(g1, dprod * x2.data) and np.array_equal(g2, (dprod * x1.data).sum(0))

# %% [markdown]
# ## 1. A small graph, by hand
#
# `L = sum((a * b + a) * c)`: `a` is used twice, so its gradient has two contributions,
# `dL/da = (b + 1) * c`. The graph has the nodes `mul`, `add`, `mul`, `sum`; the topological order lists the
# loss first and every node before its inputs.

# %%
a = Tensor(np.array([1.0, 2.0, 3.0], dtype=np.float32), requires_grad=True)
b = Tensor(np.array([4.0, 5.0, 6.0], dtype=np.float32), requires_grad=True)
c = np.array([0.5, -1.0, 2.0], dtype=np.float32)                 # a constant (no gradient)
ab = a * b
s = ab + a
L = (s * c).sum()
order = _topological_order(L)
print("topological order:", [n._op or "leaf" for n in order])
assert order[0] is L and order.index(ab) < order.index(a) and order.index(s) < order.index(ab)
L.backward()
print("dL/da =", a.grad, " dL/db =", b.grad)
assert np.array_equal(a.grad, (b.data + 1) * c) and np.array_equal(b.grad, a.data * c)

# %% [markdown]
# ## 2. Gradients accumulate
#
# As in PyTorch, `.grad` is *added to*: a second `backward()` on the same graph doubles it. A training loop
# therefore zeroes the gradients before each step (`optimizer.zero_grad()` / `model.zero_grad()`). Accumulation
# is also a feature: summing the gradients of several micro-batches before one update is how a large batch is
# simulated in small memory.

# %%
L.backward()
assert np.array_equal(a.grad, 2 * (b.data + 1) * c)
a.zero_grad()
b.zero_grad()
assert a.grad is None
# two micro-batches of half the loss each give the gradient of the full loss
(a * b * c).sum().__mul__(0.5).backward()
(a * b * c).sum().__mul__(0.5).backward()
assert np.allclose(a.grad, b.data * c)
print("gradients accumulate until zeroed: ok")

# %% [markdown]
# ## 3. Why the sort is iterative
#
# A recursive depth-first search uses one Python stack frame per node and fails past ~1000 nodes. Our sort keeps
# its own stack, so a chain of 5000 ops differentiates fine: `x * 1.001` five thousand times has the derivative
# `1.001 ** 5000`.

# %%
x = Tensor(np.ones(1, dtype=np.float32), requires_grad=True)
y = x
for _ in range(5000):
    y = y * 1.001
y.sum().backward()
print(f"d/dx (1.001^5000 x) = {x.grad[0]:.4f}  (exact {1.001 ** 5000:.4f})")
assert abs(x.grad[0] / 1.001 ** 5000 - 1) < 5000 * 1.2e-7 * 2   # 5000 float32 roundings

# %% [markdown]
# ## 4. A small network on the coarse kernel ops, checked by finite differences
#
# `linear -> bias_gelu -> linear -> layer_norm`, every op one kernel pair. We check the gradient of one weight
# against central finite differences of the float32 forward (step `h = 1e-2`: float32 rounding of a loss of
# size ~10 is ~1e-6, divided by `2h` gives ~5e-5 of noise, while the truncation error is `O(h^2)` ~ 1e-4).

# %%
rng = np.random.default_rng(0)
B, T, Cin, Fh, Cout = 2, 3, 8, 16, 8
X = Tensor(rng.standard_normal((B, T, Cin)).astype(np.float32))
W1 = Tensor((0.3 * rng.standard_normal((Fh, Cin))).astype(np.float32), requires_grad=True)
b1 = Tensor((0.1 * rng.standard_normal(Fh)).astype(np.float32), requires_grad=True)
W2 = Tensor((0.3 * rng.standard_normal((Cout, Fh))).astype(np.float32), requires_grad=True)
g = Tensor(np.ones(Cout, dtype=np.float32), requires_grad=True)
beta = Tensor(np.zeros(Cout, dtype=np.float32), requires_grad=True)
G = rng.standard_normal((B, T, Cout)).astype(np.float32)        # loss = sum(G * out)


def net():
    h = F.bias_gelu(F.linear(X, W1), b1)                          # (B, T, F)
    return F.layer_norm(F.linear(h, W2), g, beta, 1e-12)          # (B, T, Cout)


loss = (net() * G).sum()
loss.backward()


def f():
    with no_grad():
        return float((np.asarray(net()).astype(np.float64) * G).sum())


num = _checks.numerical_gradient(f, W1.data, h=1e-2)
err = _checks.relative_error(W1.grad, num)
print(f"dW1: relative error vs finite differences {err:.1e}")
assert err < 1e-3

# %% [markdown]
# ## 5. The same network in PyTorch (optional)

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: the PyTorch comparison is skipped")

if torch is not None:
    tW1, tb1, tW2, tg, tbeta = (torch.tensor(p.data, requires_grad=True) for p in (W1, b1, W2, g, beta))
    h = torch.nn.functional.gelu(torch.tensor(X.data) @ tW1.T + tb1)
    out = torch.nn.functional.layer_norm(h @ tW2.T, (Cout,), tg, tbeta, eps=1e-12)
    (out * torch.tensor(G)).sum().backward()
    for name, ours, theirs in (("W1", W1, tW1), ("b1", b1, tb1), ("W2", W2, tW2), ("g", g, tg), ("beta", beta, tbeta)):
        scale = np.abs(theirs.grad.numpy()).max()
        e = np.abs(ours.grad - theirs.grad.numpy()).max()
        print(f"d{name}: max |ours - torch| = {e:.1e} (largest entry {scale:.1e})")
        # each entry sums at most B*T*F float32 products of size <= the largest entry: f32_tol of that sum
        assert e <= _checks.f32_tol(B * T * Fh, scale=scale)

# %% [markdown]
# ## 6. The graph of a real layer
#
# Counting nodes by op in one DistilBERT transformer block forward shows how coarse the tape is: a handful of
# kernel nodes per layer, not thousands of scalar ones.

# %%
from collections import Counter

from minidistil import DistilBertConfig, DistilBertModel

cfg = DistilBertConfig(vocab_size=100, n_layers=2, n_heads=2, dim=16, hidden_dim=32, max_position_embeddings=16)
model = DistilBertModel.from_config(cfg, seed=0)
ids = rng.integers(0, 100, size=(2, 7))
h = model(ids, np.ones((2, 7), dtype=np.int64)).last_hidden_state
ops = Counter(n._op for n in _topological_order(h.sum()) if n._op)
print("ops on the tape of a 2-layer DistilBERT forward:", dict(ops))
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(list(ops), list(ops.values()))
ax.set_ylabel("nodes")
ax.tick_params(axis="x", rotation=45)
fig.tight_layout()
fig.savefig(OUT / "04_autograd_ops.png", dpi=80)
plt.show()
assert ops.get("projected_attention", 0) + ops.get("attention", 0) == 2 and sum(ops.values()) < 60

# %% [markdown]
# ## Exercise
#
# `minidistil grade autograd_ops` (your own copy of the stubs: `minidistil exercises copy my_exercises`): write the
# backward closures of `mul` and `tanh` in a tiny Tensor class; the grader checks a graph that uses a node twice.
#
# ## Try it
#
# 1. Rewrite section 1's `mul` closure so that it assigns `.grad` instead of returning gradients to be summed:
#    which of section 1's asserts fails, and why only for `a`?
# 2. Replace the 5000-op chain of section 3 by 50 000 ops. Does the iterative sort still work, and how long does
#    `backward()` take?
# 3. In section 4 change `h` to 1e-3: the error grows. Is it truncation or float32 rounding? (Compute both
#    estimates as the text does.)
