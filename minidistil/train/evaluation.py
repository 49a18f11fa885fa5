"""How good is a student? Sentence embeddings, two sentence-similarity sets, and agreement with the teacher.

- Sentence embedding: the mean of the last hidden states over the real (non-padding) tokens, as
  sentence-transformers' all-MiniLM-L6-v2 does:  e = sum_t mask_t h_t / sum_t mask_t  (functional.mean_pool).
- STS score: Spearman's rank correlation (metrics.spearman) between cos(e1, e2) and the human score of each pair
  of a set: 1 = the model orders all pairs as people do. minidistil ships two sets of English sentence pairs
  written for it, scored from 0 (unrelated) to 5 (same meaning) in the style of STS-B:
    "dev"   resources/sts_pairs.tsv, 178 pairs: the DEVELOPMENT set, on which the distillation's settings were
            chosen (its figures flatter those settings a little);
    "test"  resources/sts_test_pairs.tsv, 419 pairs across everyday topics, with hard same-topic pairs: the TEST
            set, never used to choose anything. Quote this one.
  Read differences below ~0.03 on the dev set and ~0.02 on the test set as noise.
- Label-free agreement with the teacher on held-out text (no human scores needed):
    embedding_agreement   mean over texts of cos(e_student, e_teacher) (1 = the same embeddings);
    similarity_agreement  Spearman between the teacher's and the student's cos(e_i, e_j) over many random pairs
                          (i, j) (1 = the student orders every pair as the teacher does: the similarity structure
                          users rely on survives).

An "encoder" here is any function (input_ids (B, T), attention_mask (B, T)) -> last hidden states (B, T, C);
`model_encoder(model)` makes one from a minidistil model.
"""
from __future__ import annotations

from importlib import resources
from typing import NamedTuple
from collections.abc import Callable, Sequence

import numpy as np

from minidistil.train.data import encode_plain, pad_batch, special_ids
from minidistil.core.functional import l2_normalize, mean_pool
from minidistil.train.metrics import spearman

Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]

STS_SETS = {"dev": "sts_pairs.tsv", "test": "sts_test_pairs.tsv"}
EVAL_MAX_LEN = 256  # tokens: sentence-transformers' max_seq_length for all-MiniLM-L6-v2, what its users embed at
SIMILARITY_PAIRS = 4000  # random pairs for similarity_agreement: its standard error is ~0.01 or less


class Pair(NamedTuple):
    sentence1: str
    sentence2: str
    score: float  # 0 .. 5


def load_sts_pairs(split: str = "dev") -> list[Pair]:
    """A bundled sentence-pair set: "dev" (the development set) or "test" (the test set); see the module doc."""
    if split not in STS_SETS:
        raise ValueError(f"split: expected one of {sorted(STS_SETS)}, got {split!r}")
    text = resources.files("minidistil").joinpath("resources", STS_SETS[split]).read_text(encoding="utf-8")
    pairs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("score\t"):
            continue
        score, s1, s2 = line.split("\t")
        pairs.append(Pair(s1, s2, float(score)))
    return pairs


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, C) arrays, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (l2_normalize(a) * l2_normalize(b)).sum(-1)


def model_encoder(model) -> Encoder:
    """Wrap a minidistil model (its last hidden state, with or without a head) as an encoder, run in
    eval mode (no dropout) under no_grad."""
    from minidistil.core.autograd import no_grad

    def encode(input_ids, attention_mask):
        was_training = getattr(model, "training", False)
        model.eval()
        try:
            with no_grad():
                out = model(input_ids, attention_mask, output_hidden_states=True)
        finally:
            if was_training:
                model.train()
        return np.asarray(out.hidden_states[-1])  # the last hidden state, also for models with a head

    return encode


def embed(encoder: Encoder, tokenizer, texts: Sequence[str], batch_size: int = 32,
          max_len: int = EVAL_MAX_LEN) -> np.ndarray:
    """Mean-pooled embeddings (N, C) of `texts` ([CLS] text [SEP], truncated to max_len ids)."""
    ids = special_ids(tokenizer)
    seqs = [np.array([ids.cls, *t[:max_len - 2], ids.sep], dtype=np.int64) for t in encode_plain(tokenizer, texts)]
    out = []
    for i in range(0, len(seqs), batch_size):
        input_ids, attention_mask = pad_batch(seqs[i:i + batch_size], ids.pad)
        out.append(mean_pool(encoder(input_ids, attention_mask), attention_mask))
    return np.concatenate(out, axis=0)


def sts_spearman(encoder: Encoder, tokenizer, pairs: Sequence[Pair] | str = "dev",
                 max_len: int = EVAL_MAX_LEN) -> float:
    """Spearman correlation between cos(embedding 1, embedding 2) and the human scores of `pairs` (a list, or
    the name of a bundled set: "dev" or "test")."""
    pairs = load_sts_pairs(pairs) if isinstance(pairs, str) else pairs
    e1 = embed(encoder, tokenizer, [p.sentence1 for p in pairs], max_len=max_len)
    e2 = embed(encoder, tokenizer, [p.sentence2 for p in pairs], max_len=max_len)
    return spearman(cosine(e1, e2), [p.score for p in pairs])


def embedding_agreement(student: Encoder, teacher: Encoder, tokenizer, texts: Sequence[str],
                        max_len: int = EVAL_MAX_LEN) -> float:
    """Mean cosine between the student's and the teacher's sentence embeddings of the same texts."""
    return float(cosine(embed(student, tokenizer, texts, max_len=max_len),
                        embed(teacher, tokenizer, texts, max_len=max_len)).mean())


def random_pairs(n_texts: int, n_pairs: int, seed: int = 0) -> np.ndarray:
    """(n_pairs, 2) indices i != j drawn uniformly from range(n_texts), the same for the same seed."""
    if n_texts < 2:
        raise ValueError(f"texts: need at least 2 to make pairs, got {n_texts}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n_texts, n_pairs)
    j = (i + rng.integers(1, n_texts, n_pairs)) % n_texts                       # never equal to i
    return np.stack([i, j], axis=1)


def similarity_agreement(student: Encoder, teacher: Encoder, tokenizer, texts: Sequence[str],
                         n_pairs: int = SIMILARITY_PAIRS,
                         seed: int = 0, max_len: int = EVAL_MAX_LEN) -> float:
    """Spearman between the teacher's and the student's cosine similarities over `n_pairs` random pairs of texts."""
    ij = random_pairs(len(texts), n_pairs, seed)
    s = embed(student, tokenizer, texts, max_len=max_len)
    t = embed(teacher, tokenizer, texts, max_len=max_len)
    return spearman(cosine(s[ij[:, 0]], s[ij[:, 1]]), cosine(t[ij[:, 0]], t[ij[:, 1]]))


def sample_texts(docs: Sequence, n: int, seed: int = 0, max_chars: int = 300, min_chars: int = 30) -> list[str]:
    """Up to n texts for the label-free measures, from documents drawn at random (the same for the same seed):
    the first paragraph of each with at least min_chars characters (a heading is skipped), whitespace made
    single, cut at a word before max_chars. A document without such a paragraph is passed over."""
    rng = np.random.default_rng(seed)
    texts = []
    for i in rng.permutation(len(docs)):
        paras = (" ".join(p.split()) for p in docs[i].text.split("\n\n"))
        text = next((p for p in paras if len(p) >= min_chars), None)
        if text is None:
            continue
        texts.append(text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0])
        if len(texts) == n:
            break
    return texts
