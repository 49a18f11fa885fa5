"""Dynamic masking for the masked-language-model terms of distillation (BERT's recipe, DistilBERT's smoothing).

Redrawn for every batch (never fixed in the data):
  1. candidates: every real token that is not special ([CLS], [SEP], [PAD], [MASK], [UNK]) and not padding;
  2. select n = ceil(mask_prob * #candidates) of them (15% by default) without replacement, each candidate with
     probability proportional to  count(token) ** -smoothing  (smoothing 0.7 as in DistilBERT: frequent tokens
     such as "the" or "." are picked less often than their share, rare ones more), normalised over the
     candidates of the batch; smoothing = 0 gives BERT's uniform choice;
  3. each selected position: 80% -> [MASK], 10% -> a random non-special token, 10% unchanged;
  4. labels: the original id at selected positions, -100 (ignored by the cross-entropy) everywhere else.

    masked_ids, labels = mask_tokens(input_ids, attention_mask, rng, special, counts)
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minidistil.train.data import SpecialIds

IGNORE_INDEX = -100


class MaskingConfig(NamedTuple):
    mask_prob: float = 0.15     # share of candidate tokens selected for prediction
    mask_frac: float = 0.8      # of those: replaced by [MASK]
    random_frac: float = 0.1    # of those: replaced by a random token (the rest, 10%, stay unchanged)
    smoothing: float = 0.7      # selection weight count ** -smoothing (0 = uniform)


def selection_weights(counts: np.ndarray | None, vocab_size: int, smoothing: float) -> np.ndarray:
    """(V,) float64 weight of each id: max(count, 1) ** -smoothing (an id never seen counts once)."""
    if counts is None or smoothing == 0.0:
        return np.ones(vocab_size, dtype=np.float64)
    counts = np.asarray(counts)
    if counts.shape != (vocab_size,):
        raise ValueError(f"counts: expected shape ({vocab_size},) (one count per vocabulary id), got {counts.shape}")
    return np.maximum(counts, 1).astype(np.float64) ** -smoothing


def mask_tokens(input_ids: np.ndarray, attention_mask: np.ndarray, rng: np.random.Generator, special: SpecialIds,
                counts: np.ndarray | None = None, config: MaskingConfig = MaskingConfig(),
                weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (masked_ids (B, T) int64, labels (B, T) int64, -100 where nothing is predicted).

    `weights` (from `selection_weights`) may be passed to avoid recomputing them from `counts` every batch.
    """
    input_ids = np.asarray(input_ids)
    attention_mask = np.asarray(attention_mask)
    if input_ids.ndim != 2 or not np.issubdtype(input_ids.dtype, np.integer):
        raise ValueError(f"input_ids: expected a (B, T) integer array, got shape {input_ids.shape} "
                         f"and dtype {input_ids.dtype}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected the shape of input_ids {input_ids.shape}, "
                         f"got {attention_mask.shape}")
    V = special.vocab_size
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= V):
        raise ValueError(f"input_ids: ids must lie in [0, {V}), got [{input_ids.min()}, {input_ids.max()}]")
    if weights is None:
        weights = selection_weights(counts, V, config.smoothing)

    specials = np.array(special.all, dtype=np.int64)
    candidate = (attention_mask != 0) & ~np.isin(input_ids, specials)        # (B, T) bool
    flat = np.flatnonzero(candidate)                                          # positions in the flattened batch
    labels = np.full(input_ids.shape, IGNORE_INDEX, dtype=np.int64)
    masked = input_ids.astype(np.int64, copy=True)
    if flat.size == 0:
        return masked, labels

    # 2. choose n positions without replacement, probability ~ count ** -smoothing over the batch's candidates
    n = min(flat.size, math.ceil(config.mask_prob * flat.size))
    p = weights[input_ids.reshape(-1)[flat]]
    chosen = rng.choice(flat, size=n, replace=False, p=p / p.sum())
    labels.reshape(-1)[chosen] = input_ids.reshape(-1)[chosen]

    # 3. 80% [MASK], 10% random token, 10% unchanged
    u = rng.random(n)
    to_mask = chosen[u < config.mask_frac]
    to_random = chosen[(u >= config.mask_frac) & (u < config.mask_frac + config.random_frac)]
    masked.reshape(-1)[to_mask] = special.mask
    # random replacement: uniform over the non-special ids
    allowed = np.setdiff1d(np.arange(V, dtype=np.int64), specials)
    masked.reshape(-1)[to_random] = allowed[rng.integers(0, allowed.size, size=to_random.size)]
    return masked, labels
