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
# # 06 · Tokenization with WordPiece
#
# BERT does not see words, it sees ids from a 30522-entry vocabulary (`vocab.txt`, one token per line, the line
# number is the id). Turning text into ids takes four steps:
#
# 1. **normalise**: drop control characters, put spaces around CJK characters, lowercase and strip accents
#    (for uncased models);
# 2. **pre-tokenise**: split on whitespace and punctuation;
# 3. **WordPiece**: split each word greedily into the *longest* vocabulary entry from the left, the following
#    pieces prefixed `##`; a word that cannot be split becomes `[UNK]`;
# 4. **post-process**: `[CLS] A [SEP]` (or `[CLS] A [SEP] B [SEP]` for pairs, with token types 0 then 1).
#
# `minidistil.io.tokenizer.Tokenizer` does this with the Rust `tokenizers` library, exactly as `transformers`.
# Here we write the same algorithm in plain Python and check that both agree.

# %%
# Set-up shared by every chapter: CUDA simulator when there is no GPU, figures to files outside Jupyter, OUT.
from minidistil.apps.tutorial import setup

OUT = setup()

import re
import unicodedata

import matplotlib.pyplot as plt
import numpy as np

from minidistil.io import hub
from minidistil.io.tokenizer import Tokenizer

folder = hub.fetch("all-MiniLM-L6-v2")
vocab = {line.rstrip("\n"): i for i, line in enumerate(open(folder / "vocab.txt", encoding="utf-8"))}
tok = Tokenizer.from_pretrained(folder)
print(len(vocab), "tokens; e.g.", [t for t in list(vocab)[:5]], "...", list(vocab)[2000:2005])
assert len(vocab) == tok.vocab_size == 30522 and vocab["[CLS]"] == 101 and vocab["[SEP]"] == 102

# %% [markdown]
# ## 1. Normalise and pre-tokenise (BERT's "basic tokenizer")

# %%
def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:   # ASCII symbols count too
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text):
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C") and ch not in "\t\n\r"):
            continue                                               # control characters are dropped
        out.append(f" {ch} " if is_cjk(cp) else (" " if ch.isspace() else ch))
    text = unicodedata.normalize("NFD", "".join(out).lower())     # uncased: lowercase, then strip accents
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    words = []
    for word in text.split():
        current = ""
        for ch in word:
            if is_punctuation(ch):                                 # every punctuation mark is its own word
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


print(basic_tokenize("Héllo, World! It's 3.5°C in Zürich."))
assert basic_tokenize("Héllo, World!") == ["hello", ",", "world", "!"]

# %% [markdown]
# ## 2. WordPiece: greedy longest match first
#
# For each word, try the whole word; if it is not in the vocabulary, drop one character from the end and try
# again, until a prefix matches. Then continue from there with `##`-prefixed candidates. If at some point nothing
# matches, the *whole word* becomes `[UNK]` (words over 100 characters too).

# %%
def wordpiece(word, vocab, unk="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:                                           # no prefix matched
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tokenize(text):
    # special tokens written in the text are matched first, on the raw text, and kept whole
    out = []
    for part in re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", text):
        out += [part] if part in SPECIALS else [p for w in basic_tokenize(part) for p in wordpiece(w, vocab)]
    return out


for w in ["tokenization", "unaffable", "distillation", "minidistil"]:
    print(f"{w:14s} -> {wordpiece(w, vocab)}")
assert wordpiece("tokenization", vocab) == ["token", "##ization"]
assert tokenize("a [MASK] b") == ["a", "[MASK]", "b"]                # not "[", "mask", "]"

# %% [markdown]
# ## 3. The same as the library (and `transformers`), on awkward text

# %%
texts = [
    "The quick brown fox jumps over the lazy dog.",
    "DistilBERT is 40% smaller and 60% faster than BERT-base!",
    "Naïve café owners in São Paulo don't over-think it...",
    "Emoji 🙂 and symbols like ∑ or → become [UNK] when unknown.",
    "中文字符 are split one by one; tabs\tand\nnewlines are spaces.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]
for t in texts:
    ours, theirs = tokenize(t), tok.tokenize(t)
    assert ours == theirs, (t, ours, theirs)
print("pure-Python WordPiece == minidistil.Tokenizer on", len(texts), "texts")
print(tok.tokenize(texts[3]))

try:
    import transformers
except ImportError:
    transformers = None
    print("transformers is not installed: the comparison with BertTokenizerFast is skipped")
if transformers is not None:
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))          # BertTokenizerFast from tokenizer.json
    for t in texts:
        assert hf.tokenize(t) == tokenize(t)
    print("... and ==", type(hf).__name__)

# %% [markdown]
# ## 4. Ids, special tokens, pairs, padding, offsets
#
# Calling the tokenizer on a batch returns `(B, T)` int64 arrays: `input_ids`, `token_type_ids` (0 for the first
# text, 1 for the second of a pair) and `attention_mask` (1 = real token, 0 = padding, which the attention kernel
# of chapter 03 hides). `offset_mapping` gives each token's character span in its text.

# %%
enc = tok(["How old are you?", "Where do you live?"], ["I am 6.", "In a small flat near the river."],
          return_offsets_mapping=True)
for b in range(2):
    n = int(enc["attention_mask"][b].sum())
    toks = tok.convert_ids_to_tokens(enc["input_ids"][b])
    print(" ".join(f"{t}/{s}" for t, s in zip(toks[:n], enc["token_type_ids"][b][:n])), "| pad:", len(toks) - n)
ids0 = [vocab["[CLS]"]] + [vocab[p] for p in tokenize("How old are you?")] + [vocab["[SEP]"]] \
    + [vocab[p] for p in tokenize("I am 6.")] + [vocab["[SEP]"]]
assert list(enc["input_ids"][0][: len(ids0)]) == ids0
assert enc["input_ids"].dtype == np.int64 and enc["attention_mask"][0, len(ids0):].sum() == 0
s, e = enc["offset_mapping"][1, 9]                                    # a token of the second text
print("token", tok.convert_ids_to_tokens([enc["input_ids"][1, 9]]), "is characters", (int(s), int(e)), "of its text")
assert "In a small flat near the river."[s:e].lower() == tok.convert_ids_to_tokens([enc["input_ids"][1, 9]])[0]
assert tok.decode(enc["input_ids"][0]) == "how old are you? i am 6."

# %% [markdown]
# ## 5. How many pieces per word?
#
# Common words are one token; rare ones split into several. The tokens-per-word ratio decides how long the
# sequences get (and attention costs O(T²)).

# %%
import pydoc

corpus = pydoc.render_doc(str, renderer=pydoc.plaintext)            # any English-ish text at hand
words = [w for w in basic_tokenize(corpus) if w.isalpha()]
counts = np.array([len(wordpiece(w, vocab)) for w in words])
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(counts, bins=np.arange(1, counts.max() + 2) - 0.5)
ax.set_xlabel("WordPiece tokens per word")
ax.set_ylabel("words")
fig.tight_layout()
fig.savefig(OUT / "06_pieces_per_word.png", dpi=80)
plt.show()
print(f"{len(words)} words, {counts.mean():.2f} pieces per word, {np.mean(counts == 1):.0%} single-piece")
assert counts.min() == 1 and 1.0 < counts.mean() < 2.0

# %% [markdown]
# ## Exercise
#
# `minidistil grade wordpiece` (your own copy of the stubs: `minidistil exercises copy my_exercises`): write
# WordPiece for one word; the grader compares it with the `tokenizers` library and names shortest-first matching, a
# missing `##` and a partial `[UNK]`.
#
# ## Try it
#
# 1. Predict the pieces of "untokenizable" before running `wordpiece` on it.
# 2. Remove `"##"` from the continuation lookup: which words of section 3's awkward text change, and how?
# 3. Section 5's histogram: which word of the corpus has the most pieces? Print it with its pieces.
