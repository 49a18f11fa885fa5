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
# # 02 · Layer norm, forward and backward
#
# Same path as every kernel chapter: maths → NumPy reference → finite differences and PyTorch → hand-derived
# backward → Numba → numba.cuda → benchmark. Kernel: `kernels/layernorm.py`.
#
# For one row $x$ of width $C$ (every token's hidden vector is a row):
#
# $$\mu = \tfrac1C\textstyle\sum_i x_i,\quad \sigma^2 = \tfrac1C\sum_i (x_i-\mu)^2,\quad
#   r = 1/\sqrt{\sigma^2 + \varepsilon},\quad \hat x = (x-\mu)\,r,\quad y = \hat x \odot w + b.$$
#
# BERT uses $\varepsilon = 10^{-12}$ *inside* the square root and the biased variance (divide by $C$).

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

from minidistil.kernels import _checks, _cuda
from minidistil.kernels import layernorm as K

assert OUT.is_dir()

# %% [markdown]
# ## 1. NumPy reference (float64, written from the formula)

# %%
def layernorm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)                         # (N, 1)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)          # (N, 1) biased, two passes
    rstd = 1.0 / np.sqrt(var + eps)                          # (N, 1)
    xhat = (x - mean) * rstd                                 # (N, C)
    return xhat * w + b, (xhat, rstd)


rng = np.random.default_rng(0)
N, C = 6, 13                                                  # awkward sizes on purpose
x = rng.standard_normal((N, C)) * 2 + 0.5
w = 1 + 0.1 * rng.standard_normal(C)
b = 0.1 * rng.standard_normal(C)
y, (xhat, rstd) = layernorm(x, w, b, 1e-12)
y_lib, cache_lib = K.layernorm_forward_ref(x, w, b, 1e-12)
assert np.allclose(y, y_lib, rtol=0, atol=1e-14)
# each row of xhat has mean 0 and variance 1: that is what "normalise" means
assert np.allclose(xhat.mean(-1), 0, atol=1e-14) and np.allclose(xhat.var(-1), 1, atol=1e-12)
print("row means of xhat ~ 0, variances ~ 1: ok")

# %% [markdown]
# ## 2. The backward, by hand
#
# From `y = xhat * w + b`: $\;dw = \sum_{\text{rows}} dy\,\hat x$, $\;db = \sum_{\text{rows}} dy$, and
# $d\hat x = dy \odot w$. The subtle part is that $\mu$ and $r$ depend on every $x_i$ of the row. Working through
# $\partial \hat x_j/\partial x_i = r\,(\delta_{ij} - \tfrac1C - \tfrac1C \hat x_i \hat x_j)$ gives
#
# $$dx = r\left(d\hat x - \overline{d\hat x} - \hat x\;\overline{d\hat x \odot \hat x}\right)$$
#
# where the bars are means over the row. The first mean comes through $\mu$, the second through $r$.

# %%
def layernorm_backward(dy, xhat, rstd, w):
    dw = (dy * xhat).sum(0)                                   # forward: y = xhat * w + b
    db = dy.sum(0)
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dw, db


G = rng.standard_normal((N, C))                               # loss = sum(G * y), so dy = G
loss = lambda: float((G * layernorm(x, w, b, 1e-12)[0]).sum())  # noqa: E731
dx, dw, db = layernorm_backward(G, xhat, rstd, w)
errs = [_checks.relative_error(g, _checks.numerical_gradient(loss, a)) for g, a in ((dx, x), (dw, w), (db, b))]
print("relative error vs central finite differences (dx, dw, db):", [f"{e:.1e}" for e in errs])
assert max(errs) < 1e-7
for ours, lib in zip((dx, dw, db), K.layernorm_backward_ref(G, cache_lib)):
    assert np.allclose(ours, lib, rtol=0, atol=1e-12)

# %% [markdown]
# ## 3. Against PyTorch (optional)

# %%
try:
    import torch
except ImportError:
    torch = None
    print("torch is not installed: the PyTorch comparison is skipped")

if torch is not None:
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.layer_norm(xt, (C,), wt, bt, eps=1e-12)
    yt.backward(torch.tensor(G))
    for name, ours, theirs in (("y", y, yt), ("dx", dx, xt.grad), ("dw", dw, wt.grad), ("db", db, bt.grad)):
        err = np.abs(ours - theirs.detach().numpy()).max()
        print(f"torch vs ours {name}: {err:.1e}")
        assert err < 1e-12

# %% [markdown]
# ## 4. Why two passes for the variance
#
# A one-pass formula $\sigma^2 = \overline{x^2} - \mu^2$ needs only one sweep over the row, but in float32 it
# subtracts two large, nearly equal numbers when the row's mean is large compared with its spread. The kernels use
# two passes (the mean first, then the centred squares). Measured, for rows of width 768 with a growing offset:

# %%
offsets = np.logspace(0, 3.5, 12)
one_pass, two_pass = [], []
base = rng.standard_normal((64, 768))
for m in offsets:
    rows = (base + m).astype(np.float32)
    true_var = (base - base.mean(-1, keepdims=True)).var(-1)          # float64, exact enough
    mu = rows.mean(-1, dtype=np.float32)
    v1 = (rows * rows).mean(-1, dtype=np.float32) - mu * mu
    v2 = ((rows - mu[:, None]) ** 2).mean(-1, dtype=np.float32)
    one_pass.append(np.abs(v1 / true_var - 1).max())
    two_pass.append(np.abs(v2 / true_var - 1).max())
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(offsets, one_pass, "o-", label="one pass  E[x²] - E[x]²")
ax.loglog(offsets, two_pass, "s-", label="two passes (the kernels)")
ax.set_xlabel("row mean / row std")
ax.set_ylabel("relative error of the variance")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "02_layernorm_variance.png", dpi=80)
plt.show()
print(f"offset 1000: one pass {one_pass[-2]:.1e}, two passes {two_pass[-2]:.1e}")
assert one_pass[-1] > 100 * two_pass[-1] and max(two_pass) < 1e-3

# %% [markdown]
# ## 5. Numba CPU: one row per thread, and the residual fused in
#
# `layernorm_forward_cpu` runs `prange` over rows; each row is read twice (mean, then variance) while it is still
# in cache, then normalised and written. BERT's post-LN block is `LayerNorm(h + sublayer(h))`:
# `residual_layernorm_forward` adds the residual inside the first pass, so the sum is never written as a separate
# temporary that must be re-read. Its backward returns one `dh`, the gradient of both addends.
#
# The backward sums `dw`, `db` over rows: each of 64 row chunks owns a partial sum (no races between threads,
# and a result that does not depend on the thread count). The float32 tolerances come from
# `K.tolerances(...)`, derived from float32's epsilon and the reduction lengths (read its docstring).

# %%
N2, C2 = 512, 768
x32 = (rng.standard_normal((N2, C2)) * 2 + 0.5).astype(np.float32)
r32 = rng.standard_normal((N2, C2)).astype(np.float32)
w32 = (1 + 0.1 * rng.standard_normal(C2)).astype(np.float32)
b32 = (0.1 * rng.standard_normal(C2)).astype(np.float32)
dy32 = rng.standard_normal((N2, C2)).astype(np.float32)
f64 = lambda *a: tuple(v.astype(np.float64) for v in a)  # noqa: E731
tol_y, tol_dx, tol_dw, tol_db = K.tolerances(*f64(x32 + r32, w32, b32, dy32), 1e-12)
y64, c64 = K.residual_layernorm_forward_ref(*f64(x32, r32, w32, b32), 1e-12)
dh64, dw64, db64 = K.residual_layernorm_backward_ref(dy32.astype(np.float64), c64)
y32, c32 = K.residual_layernorm_forward(x32, r32, w32, b32, 1e-12)
dh32, dw32, db32 = K.residual_layernorm_backward(dy32, c32)
for name, got, want, t in (("y", y32, y64, tol_y), ("dh", dh32, dh64, tol_dx),
                           ("dw", dw32, dw64, tol_dw), ("db", db32, db64, tol_db)):
    _checks.assert_close(got, want, atol=t, name=name)
    print(f"Numba {name}: max |err| {np.abs(got - want).max():.1e} <= tolerance {t:.1e}")
assert y32.dtype == dh32.dtype == np.float32

# %% [markdown]
# ## 6. numba.cuda: one block per row, reductions in shared memory
#
# Each block owns one row; its threads stride over the row, each summing its share, then a tree reduction in
# `cuda.shared.array(THREADS)` halves the number of active threads each step (the simulator has no warp shuffles).
# `dw`, `db` come from a second kernel whose threads read adjacent columns of a row (coalesced), in chunks of rows
# that a column sum then adds. Tiny shapes on the simulator.

# %%
n, c = 6, 40                                                  # the simulator runs one Python thread per GPU thread
xs, rs, dys = (a[:n, :c].copy() for a in (x32, r32, dy32))
ws, bs = w32[:c].copy(), b32[:c].copy()
xd, rd, wd, bd, dyd = (_cuda.to_device(a) for a in (xs, rs, ws, bs, dys))
yd, cd = K.residual_layernorm_forward(xd, rd, wd, bd, 1e-12)
dhd, dwd, dbd = K.residual_layernorm_backward(dyd, cd)
t_y, t_dx, t_dw, t_db = K.tolerances(*f64(xs + rs, ws, bs, dys), 1e-12)
y64s, c64s = K.residual_layernorm_forward_ref(*f64(xs, rs, ws, bs), 1e-12)
dh64s, dw64s, db64s = K.residual_layernorm_backward_ref(dys.astype(np.float64), c64s)
_checks.assert_close(_cuda.to_host(yd), y64s, atol=t_y, name="cuda y")
_checks.assert_close(_cuda.to_host(dhd), dh64s, atol=t_dx, name="cuda dh")
_checks.assert_close(_cuda.to_host(dwd), dw64s, atol=t_dw, name="cuda dw")
_checks.assert_close(_cuda.to_host(dbd), db64s, atol=t_db, name="cuda db")
print("CUDA layer norm agrees with the reference", "(simulator)" if _cuda.SIMULATOR else "(GPU)")

# %% [markdown]
# ## 7. Benchmark (median ms after warm-up; printed, not asserted: the machine may be busy)

# %%
t_ref = _checks.bench(lambda: K.residual_layernorm_forward_ref(x32, r32, w32, b32, 1e-12), warmup=1, repeat=5)
t_unf = _checks.bench(lambda: K.layernorm_forward(x32 + r32, w32, b32, 1e-12), warmup=1, repeat=5)
t_fus = _checks.bench(lambda: K.residual_layernorm_forward(x32, r32, w32, b32, 1e-12), warmup=1, repeat=5)
t_bwd_ref = _checks.bench(lambda: K.layernorm_backward_ref(dy32, c32), warmup=1, repeat=5)
t_bwd = _checks.bench(lambda: K.layernorm_backward(dy32, c32), warmup=1, repeat=5)
print(f"residual + LN forward ({N2} x {C2}): NumPy {t_ref:.2f} ms, Numba unfused {t_unf:.2f} ms, "
      f"Numba fused {t_fus:.2f} ms")
print(f"LN backward: NumPy {t_bwd_ref:.2f} ms, Numba {t_bwd:.2f} ms")
assert min(t_ref, t_unf, t_fus, t_bwd_ref, t_bwd) > 0

# %% [markdown]
# ## Exercise
#
# `minidistil grade layernorm_forward` and `minidistil grade layernorm_backward` (your own copy of the stubs:
# `minidistil exercises copy my_exercises`): the grader names the one-pass variance, the unbiased variance and the
# missing `mean(dxhat * xhat)` term.
#
# ## Try it
#
# 1. In section 4 add a mean of 1e4 to the rows: predict the relative error of the one-pass variance in float32,
#    then measure it with the chapter's code.
# 2. Remove the `- xhat * mean(dxhat * xhat)` term from section 2's backward and rerun the finite-difference check:
#    which of dx, dw, db fails, and why do the other two still pass?
# 3. Set `eps = 1e-5` (PyTorch's default) instead of BERT's 1e-12: on which rows does the output change visibly?
#    (Try a row of constants.)
