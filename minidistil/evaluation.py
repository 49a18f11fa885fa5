"""How good is a student? Sentence embeddings, a small similarity benchmark, and agreement with the teacher.

- Sentence embedding: the mean of the last hidden states over the real (non-padding) tokens, as
  sentence-transformers' all-MiniLM-L6-v2 does:  e = sum_t mask_t h_t / sum_t mask_t.
- STS score: minidistil ships `resources/sts_pairs.tsv`, 178 English sentence pairs written for this project
  with similarity scores from 0 (unrelated) to 5 (same meaning) in the style of STS-B: paraphrases, pairs that
  differ in one detail, pairs on the same topic, unrelated pairs. The score is Spearman's rank correlation
  between cos(e1, e2) and the human score (scipy.stats.spearmanr): 1 = the model orders all pairs as people do.
  The set is small: read differences below ~0.03 as noise.
- Agreement: mean over held-out texts of cos(e_student, e_teacher) (1 = the student reproduces the teacher's
  sentence embeddings exactly).

An "encoder" here is any function (input_ids (B, T), attention_mask (B, T)) -> last hidden states (B, T, C);
`model_encoder(model)` makes one from a minidistil model.
"""
from __future__ import annotations

from importlib import resources
from typing import NamedTuple
from collections.abc import Callable, Sequence

import numpy as np

from .data import encode_plain, pad_batch, special_ids

Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Pair(NamedTuple):
    sentence1: str
    sentence2: str
    score: float  # 0 .. 5


def load_sts_pairs() -> list[Pair]:
    """The bundled sentence-pair set (package data minidistil/resources/sts_pairs.tsv)."""
    text = resources.files("minidistil").joinpath("resources/sts_pairs.tsv").read_text(encoding="utf-8")
    pairs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("score\t"):
            continue
        score, s1, s2 = line.split("\t")
        pairs.append(Pair(s1, s2, float(score)))
    return pairs


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """(B, T, C) hidden states, (B, T) mask -> (B, C) mean over the real tokens (float32)."""
    m = np.asarray(attention_mask, dtype=np.float32)[..., None]              # (B, T, 1)
    summed = (np.asarray(hidden, dtype=np.float32) * m).sum(axis=1)         # (B, C)
    return summed / np.maximum(m.sum(axis=1), np.float32(1.0))              # (B, C)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (N, C) arrays, in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def model_encoder(model) -> Encoder:
    """Wrap a minidistil model (its last hidden state, with or without a head) as an encoder, run in
    eval mode (no dropout) under no_grad."""
    from .autograd import no_grad

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


def embed(encoder: Encoder, tokenizer, texts: Sequence[str], batch_size: int = 32, max_len: int = 128) -> np.ndarray:
    """Mean-pooled embeddings (N, C) of `texts` ([CLS] text [SEP], truncated to max_len ids)."""
    ids = special_ids(tokenizer)
    seqs = [np.array([ids.cls, *t[:max_len - 2], ids.sep], dtype=np.int64) for t in encode_plain(tokenizer, texts)]
    out = []
    for i in range(0, len(seqs), batch_size):
        input_ids, attention_mask = pad_batch(seqs[i:i + batch_size], ids.pad)
        out.append(mean_pool(encoder(input_ids, attention_mask), attention_mask))
    return np.concatenate(out, axis=0)


def sts_spearman(encoder: Encoder, tokenizer, pairs: Sequence[Pair] | None = None, max_len: int = 128) -> float:
    """Spearman correlation between cos(embedding 1, embedding 2) and the human scores."""
    from scipy.stats import spearmanr
    pairs = load_sts_pairs() if pairs is None else pairs
    e1 = embed(encoder, tokenizer, [p.sentence1 for p in pairs], max_len=max_len)
    e2 = embed(encoder, tokenizer, [p.sentence2 for p in pairs], max_len=max_len)
    return float(spearmanr(cosine(e1, e2), [p.score for p in pairs]).statistic)


def embedding_agreement(student: Encoder, teacher: Encoder, tokenizer, texts: Sequence[str],
                        max_len: int = 128) -> float:
    """Mean cosine between the student's and the teacher's sentence embeddings of the same texts."""
    return float(cosine(embed(student, tokenizer, texts, max_len=max_len),
                        embed(teacher, tokenizer, texts, max_len=max_len)).mean())
