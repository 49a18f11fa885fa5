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
# The library does the whole job in one call, `minidistil.train.finetune.finetune` (the command `minidistil finetune`):
# read a labelled file, hold out a validation split, add the head, train with AdamW, evaluate after every epoch,
# keep the best model as a Hugging Face checkpoint. This chapter runs it on the small sentiment set that ships
# with minidistil, starting from a 3-layer student of all-MiniLM-L6-v2, then looks at what it wrote: the
# metrics, the curves, predictions on new sentences, and a saved model that reloads to identical logits.
# It ends with the shell commands that do the same, and the one for IMDb.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import json
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
warnings.filterwarnings("ignore", message=".*dropout")

from minidistil.train import finetune as FT
from minidistil.io import hub
from minidistil.train.distill import distill

folder = hub.fetch("all-MiniLM-L6-v2")          # downloaded once (87 MB), then read from the weights folder
T0 = time.perf_counter()
assert (folder / "config.json").is_file() and OUT.is_dir()

# %% [markdown]
# ## 1. The student
#
# Chapter 07 built the student by copying the teacher layers `default_layer_map` picks into a 3-layer DistilBERT
# and distilled it. Here `minidistil.train.distill.distill` does both, with the same map and the teacher's width
# (printed below, read from the code; given no shape, `distill` picks its own default student, for this teacher 4
# layers of 256, projected onto the teacher's principal directions: the README's "Narrower students"), then a few
# updates against the teacher's hidden states. Twelve updates on short sequences of Python's help topics are only
# a token run, to keep the chapter fast; a real one is `minidistil distill` with its default 15-minute budget (see
# the end). What matters here is the folder it writes: a checkpoint that `finetune` starts from like any other.

# %%
from minidistil.train import data as D

corpus = OUT / "08_corpus.jsonl"                 # a small corpus: Python's help topics, one document per line
corpus.write_text("".join(json.dumps({"text": d.text}) + "\n" for d in D.pydoc_topics()), encoding="utf-8")
student_dir = OUT / "08_student"
from minidistil.train.distill import default_layer_map

LAYERS = default_layer_map(6, 3, mlm=False)      # all-MiniLM-L6-v2: a 6-layer sentence encoder, no MLM head
print("teacher layers copied into the student:", LAYERS)
dist = distill(folder, student_dir, layer_map=LAYERS, hidden_size=384, corpus=[str(corpus)], steps=12, max_len=32,
               batch_size=8, lr=5e-4, checkpoint_every=0, evaluate=False, progress=False,
               overwrite=True)                  # running the chapter again into the same folder starts again
student_cfg = json.loads((student_dir / "config.json").read_text())
print(f"student: {student_cfg['n_layers']} layers of width {student_cfg['dim']}, {dist['steps']} distillation "
      f"updates in {dist['train_seconds']} s")
assert student_cfg["n_layers"] == 3 and student_cfg["dim"] == 384 and dist["steps"] == 12
assert (student_dir / "model.safetensors").is_file()

# %% [markdown]
# ## 2. The data
#
# `resource:sentiment_small.tsv` names a file shipped in `minidistil/resources/`: 200 short reviews written for
# this project, mostly in minimal pairs ("The soup was warm and full of flavour." / "The soup was cold and
# tasted of nothing."), one per line as `label<TAB>sentence` under a header row naming the two columns. So
# the text field is `sentence` and the label field `label`; the labels are `neg` and `pos` (ids in sorted order).
#
# With no `validation=` file, `finetune` holds out a share of the training file (`held_out`, chosen by the seed).
# `FT.load_data` is the function it uses, so we can look at the split before training.

# %%
cfg = FT.FinetuneConfig(task="classification", model=str(student_dir), train="resource:sentiment_small.tsv",
                        out_dir=str(OUT / "08_sentiment"), text_field="sentence", label_field="label",
                        held_out=0.25, max_length=32, epochs=5, batch_size=16, lr=3e-4, seed=0, overwrite=True)
train_ex, val_ex, skipped = FT.load_data(FT.FinetuneConfig(**vars(cfg)))     # a copy: load_data fills in the path
for e in train_ex[:3]:
    print(f"{e.label}  {e.text}")
count = {s: {lab: sum(e.label == lab for e in ex) for lab in ("neg", "pos")} for s, ex in (("train", train_ex),
                                                                                            ("held out", val_ex))}
print(count)
assert len(train_ex) + len(val_ex) == 200 and len(val_ex) == 50 and not skipped
assert not {e.text for e in train_ex} & {e.text for e in val_ex}
assert min(count["held out"].values()) >= 15                       # both classes are in the held-out split

# %% [markdown]
# ## 3. What one training step does
#
# `finetune` loads the student with a `DistilBertForSequenceClassification` head (its four head weights are not
# in the student, so they start from seeded random values, and it says so), encodes every example once
# (`max_length=32` tokens), then for each epoch shuffles the examples and takes one step per batch. The step, in
# the loop of `finetune()` (its body, `_finetune()`) in `minidistil/train/finetune.py`:
#
# ```python
# b = batch(tr, idx)                      # the batch's rows, trimmed to its longest sentence
# s_out = forward(model_, b)              # forward: logits (B, K) and the cross-entropy loss, s_out.loss
# loss.backward()                         # backward over the autograd tape (chapter 04)
# lr = sched(state.step)                  # linear warm-up (10% of the updates), then linear decay to 0
# norm = update(run, world, opt, state.step, cfg.max_grad_norm, lr)   # the update distill's loop makes too
# ```
#
# `update` (in `minidistil/train/run.py`, shared with `distill`) sums the gradients over the processes of a
# data-parallel
# run, rescales them when their global norm exceeds `max_grad_norm` (1.0), takes AdamW's step (weight decay 0.01)
# and zeroes them (`sync=False`: on a GPU the norm stays on the device and the step skips itself there when the norm
# is not finite; on the CPU the norm is a float, checked before the step):
#
# ```python
# norm = clip_grad_norm(opt.parameters(), max_grad_norm, sync=False)
# opt.step(lr=lr, norm=norm)
# opt.zero_grad()
# ```
#
# After each epoch it evaluates on the held-out split and saves the model when the accuracy is the best so far.
# The check below reads those lines from the library's source, so this description cannot drift from the code.

# %%
import inspect

from minidistil.train import run as run_module

source = inspect.getsource(FT._finetune)     # finetune() checks its arguments and opens the run, then calls this
step_lines = ["b = batch(tr, idx)", "s_out = forward(model_, b)", "loss.backward()", "lr = sched(state.step)",
              "update(run, world, opt, state.step, cfg.max_grad_norm, lr)",
              "evaluate_examples(cfg.task, model_, val_ex, va, names, cfg", "save_pretrained(model_, out"]
update_lines = ["clip_grad_norm(opt.parameters(), max_grad_norm, sync=False)", "opt.step(lr=lr, norm=norm)",
                "opt.zero_grad()"]
for name, code, lines in (("_finetune()", source, step_lines),
                          ("update()", inspect.getsource(run_module.update), update_lines)):
    positions = [code.find(line) for line in lines]
    print(f"in this order in {name}:", all(p >= 0 for p in positions) and positions == sorted(positions))
    assert all(p >= 0 for p in positions) and positions == sorted(positions)

# %% [markdown]
# ## 4. Fine-tune
#
# One call. Five epochs of 10 batches of 16; the learning rate is higher than the usual 5e-5 because the set
# is tiny and the run short.

# %%
t = time.perf_counter()
report = FT.finetune(config=cfg)
seconds = time.perf_counter() - t
best = report["best_eval"]
print(f"\n{report['updates']} updates in {seconds:.1f} s; best epoch {report['best_epoch']} of {report['epochs_done']}")
assert report["finished"] and report["updates"] == 5 * 10 and report["labels"] == ["neg", "pos"]
assert sorted(report["new_head_weights"]) == ["classifier.bias", "classifier.weight", "pre_classifier.bias",
                                               "pre_classifier.weight"]

# %% [markdown]
# ## 5. The metrics on the held-out split
#
# `report["best_eval"]` is `minidistil.train.metrics.classification_report` of the best epoch: accuracy, per-class
# precision / recall / F1, their macro mean, and the confusion matrix (rows: the true label, columns: the
# predicted one). Guessing scores 0.5; always answering the held-out split's majority class (`neg`) scores 0.6.

# %%
cm = np.array(best["confusion_matrix"])
majority = max(count["held out"].values()) / 50
print(f"accuracy {best['accuracy']:.3f}   macro F1 {best['f1_macro']:.3f}   ({best['n']} held-out sentences; "
      f"majority-class baseline {majority:.2f})")
for lab, m in best["per_class"].items():
    print(f"  {lab}: precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
          f"support {m['support']}")
print("confusion matrix (rows true, columns predicted):", best["labels"])
print(cm)
assert cm.sum() == 50 and np.isclose(np.trace(cm) / cm.sum(), best["accuracy"])
assert best["accuracy"] >= 0.8 > majority and best["f1_macro"] >= 0.8            # chance: 0.5

# %% [markdown]
# ## 6. The curves
#
# `out_dir/metrics.jsonl` has one line per update (loss, learning rate, gradient norm before clipping) and one
# per evaluation. (`finetune` draws its own `training_curve.png` there too; here we draw the three panels.)

# %%
out_dir = Path(report["out_dir"])
rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in rows if "loss" in r]
evals = [r for r in rows if "eval" in r]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], marker=".")
axes[0].set(xlabel="update", ylabel="cross-entropy", title="training loss")
axes[1].plot([r["step"] for r in steps], [r["lr"] for r in steps], label="learning rate")
axes[1].set(xlabel="update", title="learning rate (warm-up, then linear decay)")
axes[2].plot([r["epoch"] for r in evals], [r["eval"]["accuracy"] for r in evals], "o-", label="accuracy")
axes[2].plot([r["epoch"] for r in evals], [r["eval"]["f1_macro"] for r in evals], "s--", label="macro F1")
axes[2].axhline(0.5, color="k", ls=":", label="chance")
axes[2].set(xlabel="epoch", ylim=(0, 1.02), title="held-out metrics")
axes[2].legend()
for ax in axes:
    ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(OUT / "08_finetuning_curves.png", dpi=80)
plt.show()
first, last = np.mean([r["loss"] for r in steps[:10]]), np.mean([r["loss"] for r in steps[-10:]])
print(f"mean training loss: first epoch {first:.3f}, last epoch {last:.3f}")
assert len(steps) == report["updates"] and len(evals) == 5 and last < first
assert (out_dir / "training_curve.png").is_file()

# %% [markdown]
# ## 7. Predict new sentences
#
# `minidistil.apps.predict` loads the saved folder with its own head class and returns a label and a softmax score
# per text (the command `minidistil predict --model <folder> "text" ...` prints the same as JSON lines).

# %%
from minidistil.apps import predict as P

model, tok = P.load(out_dir)
new = [("The waiter was friendly and the pizza was delicious.", "pos"),
       ("The hotel room was dirty and the staff were rude.", "neg"),
       ("I loved this phone, the screen is wonderful.", "pos"),
       ("A boring film with a terrible ending.", "neg")]
preds = P.predict(model, tok, [text for text, _ in new], max_length=32)
for (text, _), p in zip(new, preds):
    print(f"{p['label']} ({p['score']:.2f})  {text}")
right = sum(p["label"] == want for (_, want), p in zip(new, preds))
print(f"{right} of {len(new)} as a reader would label them")
assert type(model).__name__ == "DistilBertForSequenceClassification" and model.config.id2label == {0: "neg", 1: "pos"}
assert right >= 3 and all(0.5 <= p["score"] <= 1.0 for p in preds)

# %% [markdown]
# ## 8. Save, reload, same logits
#
# The folder `finetune` wrote is a Hugging Face checkpoint (`config.json` with `architectures` and the label
# names, `model.safetensors`, the tokenizer files): `transformers.AutoModelForSequenceClassification` reads it
# too. Saving the loaded model again and reloading it must give bit-identical logits; and the reloaded model,
# evaluated on the held-out split, must score exactly what the report says.

# %%
from minidistil import no_grad
from minidistil.io.loading import from_pretrained, save_pretrained

again = from_pretrained(save_pretrained(model, OUT / "08_sentiment_copy", tokenizer=tok))
enc = tok([text for text, _ in new], truncation=True, max_length=32)
with no_grad():
    a = model.eval()(enc["input_ids"], enc["attention_mask"]).logits.numpy()                 # (B, K)
    b = again.eval()(enc["input_ids"], enc["attention_mask"]).logits.numpy()
print(sorted(p.name for p in (OUT / "08_sentiment_copy").iterdir()))
print("max |logit difference| after save and reload:", np.abs(a - b).max())
assert np.array_equal(a, b)

names = [model.config.id2label[i] for i in range(model.config.num_labels)]
feats = FT.encode("classification", val_ex, tok, names, cfg)
r = FT.evaluate_examples("classification", again, val_ex, feats, names, cfg)
print(f"reloaded model on the held-out split: accuracy {r['accuracy']:.3f} (report: {best['accuracy']:.3f})")
assert r["accuracy"] == best["accuracy"] and r["confusion_matrix"] == best["confusion_matrix"]

# %% [markdown]
# ## 9. The same from the shell
#
# Everything above is two commands (`minidistil --help` lists them all). The cell below builds the fine-tuning
# command from the config we used and checks that the command-line parser reads it back to the same config.
#
# ```bash
# minidistil fetch all-MiniLM-L6-v2                                  # once
# minidistil distill --teacher all-MiniLM-L6-v2 --layer-map 0,2,4 --out student     # ~15 min by default
# minidistil finetune --task classification --model student --train resource:sentiment_small.tsv \
#     --text-field sentence --label-field label --held-out 0.25 --max-length 32 --epochs 5 \
#     --batch-size 16 --lr 0.0003 --out sentiment
# minidistil predict --model sentiment "The waiter was friendly and the pizza was delicious."
# ```
#
# For IMDb, download and unpack `aclImdb_v1.tar.gz` (https://ai.stanford.edu/~amaas/data/sentiment/): the folder
# is read as `aclImdb/{train,test}/{pos,neg}/*.txt`, its test split is the validation set, and the reviews are
# long, so use the usual length and learning rate (hours on a CPU; `--limit` / `--eval-limit` for a quick look):
#
# ```bash
# minidistil finetune --task classification --model student --train aclImdb --text-field text \
#     --max-length 256 --epochs 2 --lr 5e-5 --out imdb
# ```

# %%
from minidistil.apps.cli import build_parser
from minidistil.apps.commands import run_finetune

command = ("minidistil finetune --task classification --model student --train resource:sentiment_small.tsv "
           "--text-field sentence --label-field label --held-out 0.25 --max-length 32 --epochs 5 "
           "--batch-size 16 --lr 0.0003 --out sentiment")
print(command)
args = build_parser().parse_args(command.split()[1:])
fields = {k: v for k, v in vars(args).items() if k in FT.FinetuneConfig.__dataclass_fields__}
parsed = FT.FinetuneConfig(**fields)
ours = FT.FinetuneConfig(**{**vars(cfg), "model": "student", "out_dir": "sentiment", "progress": True,
                            "overwrite": False})
print("same config as the run above:", parsed == ours)
imdb = build_parser().parse_args("finetune --task classification --model student --train aclImdb --text-field text "
                                 "--max-length 256 --epochs 2 --lr 5e-5 --out imdb".split())
print(f"the chapter ran in {time.perf_counter() - T0:.0f} s")
assert parsed == ours and imdb.train == "aclImdb" and imdb.text_field == "text" and imdb.run is run_finetune

# %% [markdown]
# ## Exercise
#
# fine-tuning reuses the kernels and the training maths of chapters 13–14: `minidistil grade adamw` and `minidistil
# grade cross_entropy` (your own copy of the stubs: `minidistil exercises copy my_exercises`).
#
# ## Try it
#
# 1. Set the learning rate ten times higher in section 4: predict the curves of section 6, then run it.
# 2. Which class does the model confuse most (section 5's confusion matrix)? Print three misclassified
#    sentences and say why.
# 3. Fine-tune from a fresh random model (`DistilBertForSequenceClassification.from_config`) instead of the
#    distilled student: how much accuracy does the pre-training give?
