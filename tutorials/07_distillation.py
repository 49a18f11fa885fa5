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
# # 07 · Distillation: the triple loss, the student's initialisation, a short run
#
# DistilBERT (Sanh et al., 2019) trains a student with half the teacher's layers to imitate the teacher.
# The loss has three terms, computed on every batch of (masked) text:
#
# $$\mathcal L = \alpha_{ce}\,T^2\,\mathrm{KL}\!\left(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T)\right)
#   + \alpha_{mlm}\,\mathrm{CE}(z_s, \text{true token}) + \alpha_{cos}\,(1 - \cos(h_s, h_t))$$
#
# * the **distillation** term matches the teacher's *softened* output distribution over the vocabulary
#   (temperature $T = 2$ lets the student learn from the small probabilities too; $T^2$ keeps the gradient's size
#   independent of $T$, as chapter 14 derives), on every real token;
# * the **masked-LM** term is BERT's own objective, on the masked tokens only;
# * the **cosine** term aligns the directions of the last hidden states, on every real token.
#
# DistilBERT's weights are $\alpha = (5, 2, 1)$. The code is `minidistil/train/distill.py`; each term is one kernel
# pair (`kernels/distill_kl.py`, `cross_entropy.py`, `cosine.py`).

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import warnings

import matplotlib.pyplot as plt
import numpy as np
warnings.filterwarnings("ignore", message=".*truncated")          # long paragraphs are cut to max_length
warnings.filterwarnings("ignore", message=".*dropout")

from minidistil import BertConfig, BertForMaskedLM, no_grad
from minidistil.io import hub
from minidistil.train import data as D
from minidistil.core import losses as L
from minidistil.core.autograd import Tensor
from minidistil.kernels import _checks
from minidistil.train.distill import LossWeights, distillation_loss, forward_outputs, make_student
from minidistil.io.loading import from_pretrained
from minidistil.train.masking import IGNORE_INDEX, mask_tokens
from minidistil.io.tokenizer import Tokenizer

folder = hub.fetch("all-MiniLM-L6-v2")
tok = Tokenizer.from_pretrained(folder)
assert OUT.is_dir()

# %% [markdown]
# ## 1. The triple loss, term by term, on a tiny MLM teacher
#
# The three terms need a teacher with a masked-LM head. A tiny random `BertForMaskedLM` (4 layers, width 32) is
# enough to check the arithmetic (a large init range gives it peaked, non-uniform outputs): we recompute every
# term in NumPy from the logits and hidden states.

# %%
tcfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, initializer_range=0.4)  # large: peaked outputs
tiny_teacher = BertForMaskedLM.from_config(tcfg, seed=0)
tiny_student = make_student(tiny_teacher, n_layers=2)          # layers 0 and 3 of the teacher (evenly spaced)
print(type(tiny_student).__name__, tiny_student.config.n_layers, "layers")

enc = tok(["The teacher knows the answer.", "A student learns from the teacher's soft targets."])
ids, am = enc["input_ids"], enc["attention_mask"]
masked, labels = mask_tokens(ids, am, np.random.default_rng(0), D.special_ids(tok))
with no_grad():
    t_logits, t_hidden = forward_outputs(tiny_teacher, masked, am)
s_logits, s_hidden = forward_outputs(tiny_student, masked, am)
w = LossWeights()                                              # DistilBERT's: ce 5, mlm 2, cos 1, T = 2
loss, terms = distillation_loss(s_logits, t_logits, s_hidden, t_hidden, labels, am, w)
print("terms:", {k: round(v, 5) for k, v in terms.items()}, " total:", round(loss.item(), 5))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


real = am.reshape(-1) == 1                                      # padding never counts
zs = np.asarray(s_logits, np.float64).reshape(-1, tok.vocab_size)
zt = np.asarray(t_logits, np.float64).reshape(-1, tok.vocab_size)
T = w.temperature
lps, lpt = log_softmax(zs / T), log_softmax(zt / T)
ce = T ** 2 * (np.exp(lpt) * (lpt - lps)).sum(-1)[real].mean()
lab = labels.reshape(-1)
sel = lab != IGNORE_INDEX
mlm = -log_softmax(zs)[sel, lab[sel]].mean()
hs = np.asarray(s_hidden, np.float64).reshape(-1, 32)
ht = np.asarray(t_hidden, np.float64).reshape(-1, 32)
cos = (1 - (hs * ht).sum(-1) / np.linalg.norm(hs, axis=-1) / np.linalg.norm(ht, axis=-1))[real].mean()
print(f"NumPy: ce {ce:.5f}, mlm {mlm:.5f}, cos {cos:.5f}; {sel.sum()} masked tokens of {real.sum()}")
# float32 kernels vs float64 NumPy: sums over V = 30522 logits dominate, f32 eps * sqrt(V) * 16 ~ 3e-4 relative
for name, ref in (("ce", ce), ("mlm", mlm), ("cos", cos)):
    assert abs(terms[name] - ref) <= 3e-4 * max(1.0, abs(ref)), (name, terms[name], ref)
assert abs(loss.item() - (5 * ce + 2 * mlm + 1 * cos)) <= 3e-3

# %% [markdown]
# The gradient of the distillation term has a closed form: $\partial/\partial z_s = T\,(p_s - p_t)/n$ on the
# $n$ selected rows. Differentiating through our autograd gives exactly that.

# %%
zs_leaf = Tensor(np.asarray(s_logits).reshape(-1, tok.vocab_size).copy(), requires_grad=True)
kl = L.distill_kl(zs_leaf, np.ascontiguousarray(zt.astype(np.float32)), T, real)
kl.backward()
expected = T * (np.exp(lps) - np.exp(lpt)) * real[:, None] / real.sum()
err = np.abs(zs_leaf.grad - expected).max()
print(f"dKL/dz_s: max |autograd - closed form| = {err:.1e} (largest entry {np.abs(expected).max():.1e})")
# each entry comes from two float32 softmaxes over V logits: f32_tol(V) of the largest entry
assert err <= _checks.f32_tol(tok.vocab_size, scale=np.abs(expected).max())

# %% [markdown]
# ## 2. The student's initialisation
#
# The student is the teacher with layers removed: `make_student` copies the embeddings and the teacher layers that
# `minidistil.train.distill.default_layer_map` picks into a smaller DistilBERT. For a 12-layer BERT with an MLM head
# that
# is DistilBERT's own choice, every other layer; for a 6-layer *sentence encoder* such as all-MiniLM-L6-v2 the map
# keeps the last layer, because the sentence embeddings live in the last layer's output space (both maps are printed
# below, read from the code). BERT adds a token-type embedding that DistilBERT does not have; row 0 of that table
# (the one a single sentence uses) is folded into the position table, so the student's embedding output equals the
# teacher's. Since its first layer *is* the teacher's first layer, their first hidden states are equal too. Here
# with the real all-MiniLM-L6-v2.

# %%
from minidistil.train.distill import default_layer_map, has_mlm_head

teacher = from_pretrained(folder)
student = make_student(teacher, n_layers=3)
LAYERS = default_layer_map(teacher.config.num_hidden_layers, 3, mlm=has_mlm_head(teacher))
print(f"12 -> 6 with an MLM head: teacher layers {default_layer_map(12, 6)}; this 6-layer sentence encoder -> 3: "
      f"{LAYERS}")
n_t = sum(p.size for _, p in teacher.named_parameters())
n_s = sum(p.size for _, p in student.named_parameters())
print(f"teacher {teacher.config.num_hidden_layers} layers, {n_t / 1e6:.1f} M parameters -> "
      f"student {student.config.n_layers} layers, {n_s / 1e6:.1f} M")
enc = tok(["Knowledge distillation compresses a model.", "Short one."])
with no_grad():
    th = teacher(enc["input_ids"], enc["attention_mask"], output_hidden_states=True).hidden_states
    sh = student(enc["input_ids"], enc["attention_mask"], output_hidden_states=True).hidden_states
real = enc["attention_mask"].astype(bool)
for i in (0, 1):
    e = np.abs(np.asarray(th[i]) - np.asarray(sh[i]))[real].max()
    print(f"hidden state {i}: max |teacher - student| = {e:.1e}")
    assert e < 1e-4                                        # only float32 rounding of the folded table
e_last = np.abs(np.asarray(th[-1]) - np.asarray(sh[-1]))[real].max()
skipped = sorted(set(range(teacher.config.num_hidden_layers)) - set(LAYERS))
print(f"last hidden state: {e_last:.2f} apart (the student skips teacher layers {skipped}): that is what training "
      "closes")
assert e_last > 0.1

# %% [markdown]
# ## 3. A short run
#
# all-MiniLM-L6-v2 is a sentence encoder without an MLM head, so there are no logits to match: the student
# learns from the hidden-state terms only: the cosine term, plus the cosine and MSE between mean-pooled sentence
# embeddings (`LossWeights.defaults(mlm=False)`). The loop is the one `minidistil.train.distill.distill` runs
# (AdamW, warm-up then linear decay, gradient clipping at norm 5), reduced to its core and kept tiny here:
# 16 steps of 8 paragraphs of at most 32 tokens from Python's own documentation. A real run is
# `minidistil distill --teacher all-MiniLM-L6-v2 --out student` (see `python -m minidistil.distill --help`).

# %%
from minidistil.core.optim import AdamW, LinearWarmupDecay, clip_grad_norm

paragraphs = [p.strip() for d in D.pydoc_topics() for p in d.text.split("\n\n") if len(p.strip()) > 60]
held_out, train_texts = paragraphs[:16], paragraphs[16:]
weights = LossWeights.defaults(mlm=False)
STEPS, BATCH, MAX_LEN = 16, 8, 32


def batch_loss(texts, grad):
    enc = tok(texts, max_length=MAX_LEN)
    with no_grad():
        _, t_h = forward_outputs(teacher, enc["input_ids"], enc["attention_mask"])
    if grad:
        _, s_h = forward_outputs(student, enc["input_ids"], enc["attention_mask"])
    else:
        with no_grad():
            _, s_h = forward_outputs(student, enc["input_ids"], enc["attention_mask"])
    return distillation_loss(None, None, s_h, t_h, None, enc["attention_mask"], weights)


def held_out_loss():
    student.eval()
    return float(np.mean([batch_loss(held_out[i:i + BATCH], False)[0].item() for i in range(0, 16, BATCH)]))


before = held_out_loss()
opt = AdamW(student.named_parameters(), lr=2e-4)
sched = LinearWarmupDecay(peak_lr=2e-4, total_steps=STEPS, warmup_frac=0.1)
history = []
rng = np.random.default_rng(0)
for step in range(STEPS):
    student.train()                                        # dropout on
    texts = [train_texts[i] for i in rng.choice(len(train_texts), BATCH, replace=False)]
    loss, terms = batch_loss(texts, True)
    opt.zero_grad()
    loss.backward()
    norm = clip_grad_norm(opt.parameters(), max_norm=5.0)
    opt.step(lr=sched(step))
    history.append({"loss": loss.item(), **terms})
    assert np.isfinite(loss.item()) and np.isfinite(norm)
after = held_out_loss()
print(f"held-out loss: {before:.4f} before, {after:.4f} after {STEPS} steps")
assert after < before

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for key in history[0]:
    ax.plot([h[key] for h in history], label=key, lw=2 if key == "loss" else 1)
ax.axhline(after, color="k", ls=":", label="held-out total after")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.set_title("distilling all-MiniLM-L6-v2 (6 layers) into 3 layers")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "07_distillation_losses.png", dpi=80)
plt.show()
first, last = np.mean([h["loss"] for h in history[:4]]), np.mean([h["loss"] for h in history[-4:]])
print(f"training loss: first 4 steps {first:.3f}, last 4 steps {last:.3f}")
assert last < first

# %% [markdown]
# ## 4. Did the student's sentence embeddings move towards the teacher's?

# %%
from minidistil.train.evaluation import cosine, mean_pool


def sentence_embeddings(model, texts):
    enc = tok(texts, max_length=MAX_LEN)
    model.eval()
    with no_grad():
        h = np.asarray(forward_outputs(model, enc["input_ids"], enc["attention_mask"])[1])
    return mean_pool(h, enc["attention_mask"])


fresh = make_student(teacher, n_layers=3)
t_emb = sentence_embeddings(teacher, held_out)
agree_before = float(np.mean(cosine(sentence_embeddings(fresh, held_out), t_emb)))
agree_after = float(np.mean(cosine(sentence_embeddings(student, held_out), t_emb)))
print(f"mean cosine(student, teacher) on held-out paragraphs: {agree_before:.3f} -> {agree_after:.3f}")
assert agree_after > agree_before

# %% [markdown]
# ## Exercise
#
# `minidistil grade distill_kl` (your own copy of the stubs: `minidistil exercises copy my_exercises`) (the $T^2$
# factor is derived in chapter 14); `minidistil grade cross_entropy` for the masked-LM term.
#
# ## Try it
#
# 1. Set `T = 1` and then `T = 8` in section 1: how do the distillation term and its gradient change? (Chapter 14
#    derives why the loss carries T^2.)
# 2. Build the student with `make_student(teacher, layers=[0, 2, 4])` instead of the default map and compare the
#    mean cosine of section 4 before training. Which map does `default_layer_map(6, 3, mlm=False)` return, and why
#    (read `ENCODER_MAPS` in `minidistil/train/distill.py`)?
# 3. Double `STEPS` in section 3: does the held-out loss keep falling?
