"""Evaluation: the development and test sentence-pair sets, one mean pooling and one Spearman for the whole
package, and the label-free measures of agreement with the teacher on cases whose answer is known."""
import ast
from pathlib import Path

import numpy as np
import pytest

from minidistil.train import data as D
from minidistil.train import evaluation as E
from minidistil.core import functional as F
from minidistil.train import metrics as M
from minidistil.core.autograd import Tensor
from minidistil.kernels import _checks

PKG = Path(E.__file__).parents[1]   # minidistil/


def test_dev_and_test_sets_are_well_formed_and_disjoint():
    dev, test = E.load_sts_pairs("dev"), E.load_sts_pairs("test")
    assert len(dev) == 178 and len(test) >= 400
    for pairs in (dev, test):
        assert all(0.0 <= p.score <= 5.0 and p.sentence1.strip() and p.sentence2.strip() for p in pairs)
        assert len({(p.sentence1, p.sentence2) for p in pairs}) == len(pairs)
        hist = np.histogram([p.score for p in pairs], bins=[0, 1, 2, 3, 4, 5.01])[0]
        assert (hist >= 20).all(), hist  # every similarity band is represented
    dev_sentences = {s for p in dev for s in p[:2]}
    assert not dev_sentences & {s for p in test for s in p[:2]}  # no sentence of the test set is in the dev set
    assert E.load_sts_pairs() == dev
    with pytest.raises(ValueError, match="split"):
        E.load_sts_pairs("train")


def test_one_mean_pool_for_arrays_and_tensors(rng):
    h = rng.standard_normal((3, 4, 5)).astype(np.float32)
    m = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    ref = np.stack([h[0, :2].mean(0), h[1].mean(0), np.zeros(5)])              # an empty row gives 0
    pooled = F.mean_pool(h, m)
    assert isinstance(pooled, np.ndarray) and pooled.dtype == np.float32
    _checks.assert_close(pooled, ref, atol=_checks.f32_tol(4, scale=4))
    t = Tensor(h, requires_grad=True)
    out = F.mean_pool(t, m)
    _checks.assert_close(out.numpy(), ref, atol=_checks.f32_tol(4, scale=4))
    out.sum().backward()
    # d mean / d h[b, t] = mask[b, t] / (real tokens of row b)
    expect = np.broadcast_to((m / np.maximum(m.sum(1, keepdims=True), 1))[..., None], h.shape)
    _checks.assert_close(t.grad, expect, atol=_checks.f32_tol(1))


def _calls(module_file: Path, name: str) -> int:
    tree = ast.parse(module_file.read_text())
    return sum(1 for n in ast.walk(tree) if isinstance(n, ast.Attribute | ast.Name)
               and getattr(n, "attr", getattr(n, "id", None)) == name)


def test_pooling_and_spearman_are_defined_once():
    """Mean pooling lives in functional.py and Spearman in metrics.py; the other modules call them."""
    defs = {}
    for f in sorted(PKG.rglob("*.py")):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.FunctionDef) and n.name in ("mean_pool", "spearman", "rank"):
                defs.setdefault(n.name, []).append(f.name)
    assert defs == {"mean_pool": ["functional.py"], "spearman": ["metrics.py"], "rank": ["metrics.py"]}
    for f in ("evaluation.py", "distill.py", "pipelines.py"):
        assert _calls(next(PKG.glob(f"*/{f}")), "mean_pool") >= 1, f
        assert "spearmanr" not in next(PKG.glob(f"*/{f}")).read_text(), f


def test_sts_spearman_is_the_spearman_of_the_cosines(rng):
    tok = D.train_wordpiece([p.sentence1 + " " + p.sentence2 for p in E.load_sts_pairs()], vocab_size=600)
    V = tok.get_vocab_size()

    def bow(ids, mask):  # one-hot rows: cosine of the mean-pooled rows tracks word overlap
        return np.eye(V, dtype=np.float32)[ids] * mask[..., None]

    pairs = E.load_sts_pairs("test")
    e1 = E.embed(bow, tok, [p.sentence1 for p in pairs])
    e2 = E.embed(bow, tok, [p.sentence2 for p in pairs])
    rho = E.sts_spearman(bow, tok, "test")
    assert rho == M.spearman(E.cosine(e1, e2), [p.score for p in pairs])
    assert 0.3 < rho < 1.0  # word overlap follows the human scores, but not all the way (hard pairs)


def _linear_encoder(W):
    """An encoder whose sentence embedding is a fixed linear map of the bag of words (mean pooling is linear)."""
    return lambda ids, mask: W[ids] * mask[..., None]


def test_label_free_measures_on_known_cases(rng):
    texts = [d.text for d in D.pydoc_topics()[:60]]
    tok = D.train_wordpiece(texts, vocab_size=500)
    V, C = tok.get_vocab_size(), 16
    W = rng.standard_normal((V, C)).astype(np.float32)
    teacher = _linear_encoder(W)
    sample = E.sample_texts(D.pydoc_topics(), 50, seed=3, max_chars=200, min_chars=80)
    assert len(sample) == 50 and all(80 <= len(t) <= 200 for t in sample)
    assert sample == E.sample_texts(D.pydoc_topics(), 50, seed=3, max_chars=200, min_chars=80)
    # the same encoder: both measures are exactly 1
    assert E.embedding_agreement(teacher, teacher, tok, sample) == pytest.approx(1.0, abs=1e-6)
    assert E.similarity_agreement(teacher, teacher, tok, sample, n_pairs=500) == pytest.approx(1.0)
    # a rotation of the embedding space keeps every similarity (rho 1) but not the embeddings (cosine < 1)
    Q, _ = np.linalg.qr(rng.standard_normal((C, C)))
    rotated = _linear_encoder((W @ Q).astype(np.float32))
    assert E.similarity_agreement(rotated, teacher, tok, sample, n_pairs=500) == pytest.approx(1.0, abs=1e-4)
    assert E.embedding_agreement(rotated, teacher, tok, sample) < 0.9
    # an encoder that ignores the text: no agreement (500 pairs: |rho| of noise has std 1 / sqrt(499) = 0.045)
    noise = lambda ids, mask: rng.standard_normal((*ids.shape, C)).astype(np.float32)
    assert abs(E.similarity_agreement(noise, teacher, tok, sample, n_pairs=500)) < 0.2
    ij = E.random_pairs(5, 1000, seed=1)
    assert (ij[:, 0] != ij[:, 1]).all() and ij.min() == 0 and ij.max() == 4
    assert np.array_equal(ij, E.random_pairs(5, 1000, seed=1))


def test_similarity_kl_value_and_gradient(rng):
    """The similarity-structure loss against a float64 NumPy reference, and its gradient against central
    differences of that reference."""
    from minidistil.core import losses as L
    N, C, tau = 5, 7, 0.5
    a = rng.standard_normal((N, C))
    b = rng.standard_normal((N, C))

    def ref(x):
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        yn = b / np.linalg.norm(b, axis=1, keepdims=True)
        off = ~np.eye(N, dtype=bool)
        s, t = (xn @ xn.T)[off].reshape(N, N - 1) / tau, (yn @ yn.T)[off].reshape(N, N - 1) / tau
        ls = s - np.log(np.exp(s).sum(1, keepdims=True))
        lt = t - np.log(np.exp(t).sum(1, keepdims=True))
        return tau ** 2 * (np.exp(lt) * (lt - ls)).sum(1).mean()

    x = Tensor(a.astype(np.float32), requires_grad=True)
    loss = L.similarity_kl(x, b.astype(np.float32), tau)
    loss.backward()
    # float32 inputs (relative rounding 6e-8 per entry, amplified by 1/tau through the softmax of N - 1 terms)
    assert float(loss.item()) == pytest.approx(ref(a), abs=_checks.f32_tol(C * N, scale=1 / tau))
    h = 1e-6
    num = np.zeros_like(a)
    for i in range(N):
        for j in range(C):
            e = np.zeros_like(a)
            e[i, j] = h
            num[i, j] = (ref(a + e) - ref(a - e)) / (2 * h)
    _checks.assert_close(x.grad, num, atol=_checks.f32_tol(C * N, scale=1 / tau))
    assert L.similarity_kl(Tensor(b.astype(np.float32)), b.astype(np.float32), tau).item() == pytest.approx(
        0.0, abs=_checks.f32_tol(C * N))
    with pytest.raises(ValueError, match="at least 2"):
        L.similarity_kl(Tensor(a[:1].astype(np.float32)), b[:1], tau)
