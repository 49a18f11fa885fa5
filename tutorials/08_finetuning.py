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
# # 08 · Fine-tuning a classifier on the distilled student
#
# A distilled student is a general-purpose encoder; to *use* it, we put a small head on top and train the whole
# thing on labelled examples. DistilBERT's sequence-classification head reads the `[CLS]` token's final vector:
#
# ```
# logits (B, K) = classifier(dropout(relu(pre_classifier(h[:, 0]))))       loss = cross-entropy(logits, labels)
# ```
#
# This chapter writes the training loop out in full, over our autograd and `minidistil.optim`, so every step
# is visible. The packaged version, with data files, evaluation, early stopping and checkpoints, is
# `minidistil.finetune.finetune(task="classification", model=..., train="data.csv", ...)`.
#
# To stay fast the student here is a fresh 3-layer student of all-MiniLM-L6-v2 (chapter 07's initialisation,
# without the distillation run), and the task a toy sentiment set written below.

# %%
# Setup shared by every chapter (in Colab: `!pip install -e /path/to/minidistil` first, then restart).
import os
import sys
import tempfile
import warnings
from pathlib import Path

if not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

OUT = Path(os.environ.get("MINIDISTIL_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minidistil_tutorial_"))
OUT.mkdir(parents=True, exist_ok=True)
warnings.filterwarnings("ignore", message=".*dropout")

from minidistil import DistilBertForSequenceClassification, hub, no_grad
from minidistil.distill import make_student
from minidistil.loading import from_pretrained
from minidistil.optim import AdamW, LinearWarmupDecay, clip_grad_norm
from minidistil.tokenizer import Tokenizer

folder = hub.fetch("all-MiniLM-L6-v2")
tok = Tokenizer.from_pretrained(folder)
assert OUT.is_dir()

# %% [markdown]
# ## 1. The data: a toy sentiment task (1 = positive, 0 = negative)

# %%
positive = ["I loved this film, it was wonderful.", "What a fantastic meal, truly delicious.",
            "The staff were kind and very helpful.", "Great book, I could not put it down.",
            "Absolutely brilliant performance by the whole cast.", "This is the best coffee in town.",
            "A delightful, charming little hotel.", "The new update is fast and works perfectly.",
            "I am so happy with this purchase.", "Beautiful views and friendly people.",
            "An excellent course, clear and inspiring.", "The concert was amazing from start to finish.",
            "Superb quality, I would buy it again.", "Such a lovely afternoon in the park.",
            "The service was quick and the food was great.", "I really enjoyed every chapter.",
            "Fantastic support, they solved my problem at once.", "A warm, funny and moving story.",
            "Everything arrived on time and in perfect shape.", "My kids adored this game."]
negative = ["I hated this film, it was awful.", "What a terrible meal, totally tasteless.",
            "The staff were rude and unhelpful.", "Boring book, I gave up after ten pages.",
            "A dreadful performance by the whole cast.", "This is the worst coffee in town.",
            "A dirty, depressing little hotel.", "The new update is slow and keeps crashing.",
            "I am so disappointed with this purchase.", "Ugly views and unfriendly people.",
            "A useless course, confusing and dull.", "The concert was a noisy mess.",
            "Poor quality, it broke after one day.", "Such a miserable afternoon in the rain.",
            "The service was slow and the food was cold.", "I regret reading a single chapter.",
            "Awful support, nobody answered my emails.", "A cold, dull and pointless story.",
            "The parcel arrived late and damaged.", "My kids found this game frustrating."]
texts = positive + negative
labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.int64)
order = np.random.default_rng(0).permutation(len(texts))
test_idx, train_idx = order[:12], order[12:]
print(f"{len(train_idx)} training and {len(test_idx)} test sentences")
assert len(set(train_idx) & set(test_idx)) == 0 and labels.sum() == len(positive)

# %% [markdown]
# ## 2. The model: the student's encoder plus a fresh head
#
# The classifier's config is the student's with `num_labels=2`. Its encoder weights come from the student
# (under the `distilbert.` prefix); the two head matrices are not in the student, so they keep their random
# initialisation: `load_state_dict(strict=False)` returns them as missing.

# %%
teacher = from_pretrained(folder)
student = make_student(teacher, n_layers=3)
model = DistilBertForSequenceClassification.from_config(student.config.replace(num_labels=2), seed=0)
missing, unexpected = model.load_state_dict({"distilbert." + k: v for k, v in student.state_dict().items()},
                                            strict=False)
print("newly initialised:", missing)
assert sorted(missing) == ["classifier.bias", "classifier.weight", "pre_classifier.bias", "pre_classifier.weight"]
assert not unexpected


def predict(idx):
    model.eval()                                               # dropout off
    enc = tok([texts[i] for i in idx])
    with no_grad():
        logits = np.asarray(model(enc["input_ids"], enc["attention_mask"]).logits)   # (B, K)
    return logits.argmax(-1)


acc_before = float(np.mean(predict(test_idx) == labels[test_idx]))
print(f"test accuracy before fine-tuning: {acc_before:.2f} (a random head)")
assert 0.0 <= acc_before <= 1.0

# %% [markdown]
# ## 3. The training loop
#
# Each step: a shuffled batch → forward with `labels` (the model returns the loss) → `zero_grad` →
# `backward` → clip the gradient norm → AdamW step at the scheduled learning rate.

# %%
EPOCHS, BATCH, LR = 5, 8, 5e-4
steps_per_epoch = int(np.ceil(len(train_idx) / BATCH))
opt = AdamW(model.named_parameters(), lr=LR, weight_decay=0.01)
sched = LinearWarmupDecay(peak_lr=LR, total_steps=EPOCHS * steps_per_epoch, warmup_frac=0.1)
rng = np.random.default_rng(1)
history, step = [], 0
for epoch in range(EPOCHS):
    perm = rng.permutation(train_idx)                          # a new order every epoch
    for s in range(steps_per_epoch):
        model.train()                                          # dropout on
        idx = perm[s * BATCH:(s + 1) * BATCH]
        enc = tok([texts[i] for i in idx])
        out = model(enc["input_ids"], enc["attention_mask"], labels=labels[idx])
        opt.zero_grad()
        out.loss.backward()
        clip_grad_norm(opt.parameters(), max_norm=5.0)
        opt.step(lr=sched(step))
        history.append(out.loss.item())
        step += 1
    acc = float(np.mean(predict(train_idx) == labels[train_idx]))
    print(f"epoch {epoch + 1}: last loss {history[-1]:.3f}, training accuracy {acc:.2f}")
assert all(np.isfinite(history))
assert np.mean(history[-steps_per_epoch:]) < np.mean(history[:steps_per_epoch])

# %%
acc_after = float(np.mean(predict(test_idx) == labels[test_idx]))
print(f"test accuracy: {acc_before:.2f} before, {acc_after:.2f} after {step} steps")
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(history, marker="o")
ax.set_xlabel("step")
ax.set_ylabel("cross-entropy")
ax.set_title(f"fine-tuning: test accuracy {acc_before:.2f} -> {acc_after:.2f}")
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "08_finetuning_loss.png", dpi=80)
plt.show()
assert acc_after >= 0.75 and acc_after > acc_before

# %% [markdown]
# ## 4. Save it as a Hugging Face checkpoint
#
# `save_pretrained` writes `config.json` (with `architectures`) and `model.safetensors`; loading it back gives the
# same predictions (and `transformers.AutoModelForSequenceClassification` can read the folder too).

# %%
from minidistil.loading import save_pretrained

saved = save_pretrained(model, OUT / "08_sentiment_student", tokenizer=tok)
reloaded = from_pretrained(saved)
enc = tok([texts[i] for i in test_idx])
with no_grad():
    a = np.asarray(model.eval()(enc["input_ids"], enc["attention_mask"]).logits)
    b = np.asarray(reloaded(enc["input_ids"], enc["attention_mask"]).logits)
print(type(reloaded).__name__, "reloaded from", saved.name, "| max logit difference", np.abs(a - b).max())
assert type(reloaded).__name__ == "DistilBertForSequenceClassification" and np.array_equal(a, b)
