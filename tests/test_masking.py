"""Dynamic masking: its statistics (15%, 80/10/10) within binomial bounds, specials and padding never selected,
frequency smoothing, and a fresh draw every batch."""
import math

import numpy as np
import pytest

from minidistil.train.data import SpecialIds
from minidistil.train.masking import IGNORE_INDEX, MaskingConfig, mask_tokens, selection_weights

SPECIAL = SpecialIds(cls=2, sep=3, pad=0, mask=4, unk=1, vocab_size=200)
Z = 5.0  # bounds at 5 standard deviations of a binomial: a correct implementation fails with p < 1e-6


def _batch(rng, B=64, T=40):
    ids = rng.integers(5, SPECIAL.vocab_size, size=(B, T))
    lengths = rng.integers(3, T + 1, size=B)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    ids[:, 0] = SPECIAL.cls
    ids[np.arange(B), lengths - 1] = SPECIAL.sep
    ids[mask == 0] = SPECIAL.pad
    ids[ids == 17] = SPECIAL.unk  # some [UNK] in the text too
    return ids, mask


def _within(k, n, p):
    return abs(k - n * p) <= Z * math.sqrt(n * p * (1 - p))


def test_statistics_uniform_selection(rng):
    sel = n_cand = n_mask = n_rand = n_keep = 0
    for _ in range(30):
        ids, am = _batch(rng)
        masked, labels = mask_tokens(ids, am, rng, SPECIAL, config=MaskingConfig(smoothing=0.0))
        cand = (am == 1) & ~np.isin(ids, SPECIAL.all)
        chosen = labels != IGNORE_INDEX
        # exactly ceil(15%) of the candidates, never a special token or padding
        assert chosen.sum() == math.ceil(0.15 * cand.sum())
        assert not (chosen & ~cand).any()
        assert (labels[chosen] == ids[chosen]).all()
        # only chosen positions change
        assert (masked[~chosen] == ids[~chosen]).all()
        sel += chosen.sum()
        n_cand += cand.sum()
        n_mask += (masked[chosen] == SPECIAL.mask).sum()
        same = masked[chosen] == ids[chosen]
        n_keep += same.sum()
        n_rand += ((masked[chosen] != SPECIAL.mask) & ~same).sum()
        assert not np.isin(masked[chosen & (masked != SPECIAL.mask)], SPECIAL.all).any()  # random ids not special
    assert n_mask + n_keep + n_rand == sel
    assert _within(n_mask, sel, 0.8)
    # a random draw equals the original with probability 1/(#non-special ids): it counts as "kept"
    p_same = 1 / (SPECIAL.vocab_size - 5)
    assert _within(n_keep, sel, 0.1 + 0.1 * p_same)
    assert _within(n_rand, sel, 0.1 * (1 - p_same))


def test_frequency_smoothing_prefers_rare_tokens(rng):
    # two token kinds: a frequent one (count 10 000) and a rare one (count 10); each batch half and half
    counts = np.ones(SPECIAL.vocab_size, dtype=np.int64)
    counts[10], counts[11] = 10_000, 10
    w = selection_weights(counts, SPECIAL.vocab_size, 0.7)
    ratio = w[11] / w[10]  # = 1000 ** 0.7 ~ 125
    assert ratio == pytest.approx(1000 ** 0.7)
    ids = np.where(rng.random((8, 50)) < 0.5, 10, 11)
    am = np.ones_like(ids)
    n_rare = n_tot = 0
    for _ in range(50):
        _, labels = mask_tokens(ids, am, rng, SPECIAL, counts=counts)
        n_rare += (labels == 11).sum()
        n_tot += (labels != IGNORE_INDEX).sum()
    # 15% drawn with weight 125:1 toward the rare half; the rare half holds ~200 tokens, 60 drawn: nearly all rare
    assert n_rare / n_tot > 0.95
    # smoothing 0 gives the uniform choice: about half rare
    n_rare0 = sum((mask_tokens(ids, am, rng, SPECIAL, counts=counts, config=MaskingConfig(smoothing=0.0))[1] == 11)
                  .sum() for _ in range(50))
    assert _within(n_rare0, n_tot, (ids == 11).mean())


def test_redrawn_every_batch_and_reproducible(rng):
    ids, am = _batch(rng)
    a = mask_tokens(ids, am, np.random.default_rng(7), SPECIAL)
    b = mask_tokens(ids, am, np.random.default_rng(7), SPECIAL)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    r = np.random.default_rng(7)
    first, second = mask_tokens(ids, am, r, SPECIAL)[1], mask_tokens(ids, am, r, SPECIAL)[1]
    assert not np.array_equal(first, second)


def test_edge_cases_and_bad_input():
    ids = np.array([[2, 3, 0, 0]])
    masked, labels = mask_tokens(ids, np.array([[1, 1, 0, 0]]), np.random.default_rng(0), SPECIAL)
    assert (labels == IGNORE_INDEX).all() and np.array_equal(masked, ids)
    with pytest.raises(ValueError, match="attention_mask: expected the shape"):
        mask_tokens(ids, np.ones((1, 3)), np.random.default_rng(0), SPECIAL)
    with pytest.raises(ValueError, match=r"input_ids: ids must lie in \[0, 200\)"):
        mask_tokens(np.array([[2, 500, 3]]), np.ones((1, 3)), np.random.default_rng(0), SPECIAL)
    with pytest.raises(ValueError, match="counts: expected shape"):
        mask_tokens(ids, np.ones((1, 4)), np.random.default_rng(0), SPECIAL, counts=np.ones(5))
