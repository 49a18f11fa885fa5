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
# # 14 · The maths of training: cross-entropy's gradient, the T² of distillation, AdamW, MLM masking
#
# Chapter 13 differentiated the model; this one differentiates what sits on top of it during training and what
# the optimiser does with the gradient. Four results, each derived and then checked by code:
#
# 1. the gradient of softmax cross-entropy is $p - \text{onehot}(y)$;
# 2. the distillation loss is multiplied by $T^2$ because its gradient shrinks like $1/T^2$;
# 3. AdamW's update, with its bias correction and its *decoupled* weight decay;
# 4. BERT's masking recipe: 15% of the tokens, of which 80% `[MASK]`, 10% a random token, 10% unchanged.
#
# The code: `kernels/cross_entropy.py`, `kernels/distill_kl.py`, `kernels/adamw.py` with `minidistil/core/optim.py`,
# and `minidistil/train/masking.py`.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import inspect

import matplotlib.pyplot as plt
import numpy as np

from minidistil.core import losses
from minidistil.core.autograd import Tensor
from minidistil.kernels import _checks
from minidistil.kernels import adamw as KAdam
from minidistil.kernels import cross_entropy as KCE
from minidistil.kernels import distill_kl as KKL

rng = np.random.default_rng(0)
assert OUT.is_dir()


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

# %% [markdown]
# ## 1. Cross-entropy and its gradient
#
# For one row of logits $z$ (V classes) and the true class $y$: $p = \mathrm{softmax}(z)$ and
# $L = -\log p_y = -z_y + \log\sum_j e^{z_j}$. Differentiate the two terms:
#
# $$\frac{\partial L}{\partial z_i} = -[i = y] + \frac{e^{z_i}}{\sum_j e^{z_j}} = p_i - [i = y].$$
#
# The softmax's Jacobian never has to be formed: it cancels against the log. The gradient is bounded
# ($|p_i - [i=y]| \le 1$), sums to zero over the row, and vanishes only when $p_y = 1$. Over N rows the loss is the
# **mean over the rows that count** (targets `-100` are ignored: padding, unmasked tokens), so each counted row's
# gradient is divided by their number $n$, and an ignored row gets zero.

# %%
N, Vc = 6, 7
z = rng.standard_normal((N, Vc)) * 2
y = rng.integers(0, Vc, N)
y[2] = -100                                                    # an ignored row
keep = y != -100
n = keep.sum()


def ce(z):
    p = softmax(z)
    return float(-np.log(p[keep, y[keep]]).sum() / n)


dz = (softmax(z) - np.eye(Vc)[np.where(keep, y, 0)]) * keep[:, None] / n     # (p - onehot) / n, zero if ignored
num = _checks.numerical_gradient(lambda: ce(z), z)
print(f"cross-entropy {ce(z):.4f}; |closed form - finite differences| = {np.abs(dz - num).max():.1e}")
assert np.allclose(dz, num, atol=1e-8) and np.allclose(dz.sum(1), 0.0, atol=1e-15)
# the kernel's reference and the library's autograd loss give the same numbers
loss_k, cache = KCE.cross_entropy_forward_ref(z, y)
assert abs(loss_k - ce(z)) < 1e-12 and np.allclose(KCE.cross_entropy_backward_ref(1.0, cache), dz, atol=1e-15)
zt = Tensor(z.astype(np.float32), requires_grad=True)
losses.cross_entropy(zt, y).backward()
assert np.abs(zt.grad - dz).max() <= _checks.f32_tol(Vc, scale=1.0 / n)

# %% [markdown]
# ## 2. Why the distillation loss carries $T^2$
#
# The student matches the teacher's *softened* distribution $q = \mathrm{softmax}(t/T)$ with its own
# $p = \mathrm{softmax}(s/T)$: $\mathrm{KL}(q\|p) = \sum_i q_i(\log q_i - \log p_i)$. Only $\log p$ depends on $s$,
# and $\log p_i = s_i/T - \log\sum_j e^{s_j/T}$, so by the same cancellation as above, with a $1/T$ from the
# chain rule:
#
# $$\frac{\partial\,\mathrm{KL}}{\partial s_i} = \frac{1}{T}\,(p_i - q_i).$$
#
# For a large $T$ both distributions flatten: $e^{x/T} \approx 1 + x/T$ gives
# $p_i \approx \frac1V\big(1 + (s_i - \bar s)/T\big)$ and the same for $q$, so
#
# $$p_i - q_i \approx \frac{(s_i - \bar s) - (t_i - \bar t)}{V\,T}\quad\Rightarrow\quad
# \frac{\partial\,\mathrm{KL}}{\partial s_i} \approx \frac{(s_i - \bar s) - (t_i - \bar t)}{V\,T^2}.$$
#
# The gradient shrinks like $1/T^2$. Multiplying the loss by $T^2$ (Hinton et al., 2015) keeps its size the same
# whatever the temperature, so the weight $\alpha_{ce}$ means the same thing at $T = 2$ as at $T = 8$, against the
# hard-label terms whose gradients do not depend on $T$. Checked: the exact gradient, then its size over $T$.

# %%
s, t = rng.standard_normal((1, 50)) * 3, rng.standard_normal((1, 50)) * 3
for T in (1.0, 2.0, 8.0):
    def kl(T=T):
        return float((softmax(t / T) * (np.log(softmax(t / T)) - np.log(softmax(s / T)))).sum())
    exact = (softmax(s / T) - softmax(t / T)) / T
    assert np.allclose(_checks.numerical_gradient(kl, s), exact, atol=1e-9)
    # the kernel's loss is T^2 KL, its gradient T (p - q)
    loss_k, c = KKL.distill_kl_forward_ref(s, t, T)
    assert abs(loss_k - T * T * kl()) < 1e-12 and np.allclose(KKL.distill_kl_backward_ref(1.0, c), T * T * exact)

temps = np.array([1, 2, 4, 8, 16, 32, 64], dtype=np.float64)
plain = np.array([np.linalg.norm((softmax(s / T) - softmax(t / T)) / T) for T in temps])
scaled = plain * temps ** 2
limit = np.linalg.norm(((s - s.mean()) - (t - t.mean())) / s.size)          # the large-T limit derived above
for T, a, b in zip(temps, plain, scaled):
    print(f"T = {T:4.0f}: |dKL/ds| = {a:.2e}   |d(T^2 KL)/ds| = {b:.2e}")
print(f"large-T limit of |d(T^2 KL)/ds|: {limit:.2e}")
assert plain[-1] < plain[0] / 100                                  # without T^2 the gradient vanishes
assert abs(scaled[-1] / limit - 1) < 0.01                          # with it, it tends to the derived limit

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.loglog(temps, plain, "o-", label=r"$\partial\,\mathrm{KL}/\partial s$")
ax.loglog(temps, scaled, "s-", label=r"$\partial\,(T^2\,\mathrm{KL})/\partial s$")
ax.axhline(limit, color="k", ls=":", label="derived large-T limit")
ax.set_xlabel("temperature T")
ax.set_ylabel("gradient norm")
ax.set_title("why the distillation loss is multiplied by T²")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "14_distillation_temperature.png", dpi=80)
plt.show()

# %% [markdown]
# ## 3. AdamW's update
#
# Adam keeps two running averages per parameter, of the gradient $g$ and of its square:
#
# $$m_t = \beta_1 m_{t-1} + (1-\beta_1)\,g_t,\qquad v_t = \beta_2 v_{t-1} + (1-\beta_2)\,g_t^2,$$
#
# both started at zero, so both are biased towards zero early on: $E[m_t] = (1-\beta_1^t)\,E[g]$ for a steady
# gradient. Dividing by $1-\beta^t$ removes that bias: $\hat m_t = m_t/(1-\beta_1^t)$,
# $\hat v_t = v_t/(1-\beta_2^t)$. The step is $\theta \leftarrow \theta - \mathrm{lr}\,\hat m_t/(\sqrt{\hat v_t}
# + \varepsilon)$: every coordinate moves by about lr, whatever its gradient's scale. On the first step
# $\hat m_1 = g$ and $\hat v_1 = g^2$, so the step is exactly $\mathrm{lr}\cdot\mathrm{sign}(g)$ (up to $\varepsilon$).
#
# **Weight decay, decoupled** (Loshchilov and Hutter, 2019): Adam with L2 regularisation adds $\lambda\theta$ to
# $g$, and then the division by $\sqrt{\hat v}$ shrinks the decay of exactly the weights with large gradients.
# AdamW instead shrinks the weights directly, $\theta \leftarrow \theta\,(1 - \mathrm{lr}\,\lambda)$, outside the
# moments. The library does not decay biases and layer-norm weights (`minidistil.core.optim.decays`), as BERT does.

# %%
defaults = {k: v.default for k, v in inspect.signature(
    __import__("minidistil.core.optim", fromlist=["AdamW"]).AdamW.__init__).parameters.items() if k != "self"
            and v.default is not inspect.Parameter.empty}
print("minidistil.core.optim.AdamW defaults:", defaults)
hp = dict(lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-6, weight_decay=0.0, step=1)
g = rng.standard_normal(5) * np.array([1e-4, 1e-2, 1, 10, 1e3])     # gradients over seven orders of magnitude
p0 = rng.standard_normal(5)
p, m, v = p0.copy(), np.zeros(5), np.zeros(5)
KAdam.adamw_step_ref(p, g, m, v, **hp)
print("first step / lr:", np.round((p0 - p) / hp["lr"], 4), " sign(g):", np.sign(g))
# exactly lr * g / (|g| + eps): the sign of g, except where |g| is not much larger than eps = 1e-6
assert np.allclose((p0 - p) / hp["lr"], g / (np.abs(g) + hp["eps"]), rtol=1e-9)


def steps(decoupled, n=200, lam=0.5, g_scale=(1e-3, 1e2)):
    """n Adam steps on L = 0 plus a gradient of constant size per coordinate, decay lam: L2 or decoupled."""
    p, m, v = np.ones(2), np.zeros(2), np.zeros(2)
    for k in range(1, n + 1):
        grad = np.array(g_scale) * np.sign(rng.standard_normal(2))          # noise: no net direction
        if decoupled:
            KAdam.adamw_step_ref(p, grad, m, v, lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=lam, step=k)
        else:
            grad = grad + lam * p                                            # L2: decay added to the gradient
            KAdam.adamw_step_ref(p, grad, m, v, lr=1e-2, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.0, step=k)
    return p


l2, dec = steps(False), steps(True)
print(f"after 200 noisy steps, weights started at 1 (small-gradient, large-gradient coordinate):\n"
      f"  Adam + L2: {np.round(l2, 3)}    AdamW: {np.round(dec, 3)}")
# L2 decays the small-gradient weight but not the one whose gradient is large; AdamW decays both alike (x 0.995^200)
assert abs(l2[1]) > 0.6 and abs(dec[1] - (1 - 1e-2 * 0.5) ** 200) < 0.2

# %% [markdown]
# The whole AdamW step is the graded exercise of this chapter: `minidistil grade adamw` (your copy:
# `minidistil exercises copy my_exercises`). The grader names the usual slips: no bias correction, L2 instead of
# decoupled decay, a 0-based step counter, moments that keep the bias correction.
#
# ## 4. MLM masking: 15%, then 80 / 10 / 10
#
# The masked-language-model loss predicts hidden tokens from their context. `minidistil/train/masking.py` follows BERT:
#
# * select 15% of the real tokens (never `[CLS]`, `[SEP]`, `[PAD]`, `[MASK]`, `[UNK]`); only they get a label,
#   every other position gets `-100` and is ignored by section 1's mean;
# * of the selected: 80% become `[MASK]`, 10% a random token, 10% stay as they are.
#
# Why not 100% `[MASK]`? Fine-tuning and inference never see `[MASK]`: a model trained only on `[MASK]` positions
# would learn that a real-looking token needs no thought. Keeping 10% unchanged makes it predict at real tokens
# too; the 10% random ones make it unable to trust the token it sees, so it must use the context. (DistilBERT
# also weights the selection towards rare tokens, `smoothing`; set it to 0 for BERT's uniform choice.)

# %%
from minidistil.train.data import SpecialIds
from minidistil.train.masking import MaskingConfig, mask_tokens

special = SpecialIds(cls=1, sep=2, pad=0, mask=3, unk=4, vocab_size=100)
Bm, Tm = 64, 128
ids = rng.integers(5, 100, size=(Bm, Tm))
ids[:, 0], ids[:, -1] = special.cls, special.sep
am = np.ones_like(ids)
am[: Bm // 2, 100:] = 0                                             # half the rows padded after 100 tokens
ids[am == 0] = special.pad
conf = MaskingConfig(smoothing=0.0)
masked, labels = mask_tokens(ids, am, np.random.default_rng(1), special, config=conf)
sel = labels != -100
candidates = (am == 1) & (ids > 4)
k = int(sel.sum())
n_mask = int((masked[sel] == special.mask).sum())
n_same = int((masked[sel] == ids[sel]).sum())
n_rand = k - n_mask - n_same
print(f"{candidates.sum()} candidate tokens, {k} selected ({k / candidates.sum():.1%}): "
      f"{n_mask / k:.1%} [MASK], {n_rand / k:.1%} random, {n_same / k:.1%} unchanged")
assert k == int(np.ceil(conf.mask_prob * candidates.sum())) and not (sel & ~candidates).any()
assert np.array_equal(labels[sel], ids[sel]) and np.array_equal(masked[~sel], ids[~sel])
# each share is a binomial draw: within 4 standard deviations of 80 / 10 / 10 (a random token equal to the original
# counts as unchanged: 1 in 95 of the random ones, so the expected shares are 0.8, 0.1 * 94/95, 0.1 + 0.1/95)
for got, share in ((n_mask, 0.8), (n_rand, 0.1 * 94 / 95), (n_same, 0.1 + 0.1 / 95)):
    assert abs(got - k * share) <= 4 * np.sqrt(k * share * (1 - share)), (got, k * share)

# %% [markdown]
# ## Try it
#
# 1. In section 1 set every logit of one row to the same value. What is that row's gradient, and why does it not
#    depend on which class is right, apart from one entry?
# 2. Drop the $T^2$ (plot `plain` only) and predict how much smaller the gradient is at $T = 2$ than at $T = 1$.
#    Then read `LossWeights` in `minidistil/train/distill.py`: which weight would you have to change to compensate?
# 3. In `steps`, swap the two coordinates' gradient sizes, or set `lam = 0`. Which weight does Adam + L2 decay now?
# 4. Run `mask_tokens` with `MaskingConfig(smoothing=0.7)` and `counts` that make token 5 a thousand times more
#    frequent than the others: how often is token 5 selected compared with its share of the text?
# 5. Why is the masking redrawn for every batch instead of fixed once in the data? (Count how many distinct
#    positions of one sentence get a label over 10 epochs with each choice.)
