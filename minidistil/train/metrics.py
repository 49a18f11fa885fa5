"""Evaluation metrics for fine-tuned models, in plain NumPy, each written as its definition reads.

Every score is a fraction in [0, 1] (the SQuAD script prints 100x these numbers).

Classification (single label), labels as integers 0..K-1:
    accuracy          = mean(pred == gold)
    confusion[i, j]   = number of examples with gold i predicted as j                (K, K)
    precision_k       = confusion[k, k] / sum_i confusion[i, k]    (0 when nothing was predicted k)
    recall_k          = confusion[k, k] / sum_j confusion[k, j]    (0 when no gold k)
    f1_k              = 2 precision_k recall_k / (precision_k + recall_k)   (0 when both are 0)
    f1_macro          = mean_k f1_k            (over the K classes; a class absent from both gold and pred counts 0,
                                                as scikit-learn's f1_score(average="macro", labels=range(K)) does)
Multi-label (gold and pred are 0/1 matrices (N, K)):
    micro F1 over every (example, label) cell, and subset accuracy (the whole row right).
Regression:
    pearson  = cov(x, y) / (std x std y);   spearman = pearson of the ranks (ties share their mean rank)
Token classification, entity level as seqeval's default mode computes it (conlleval's rules):
    an entity is a maximal run of tokens of one type: it starts at B-X, or at I-X after O / after another type,
    and ends before O, before another type, or before a B-X. BIO (IOB2) and IOB1 tags both read correctly under
    these rules (E-/S- of IOBES too). A tag without a prefix ("PER") is read as I-PER.
    precision = |pred entities & gold entities| / |pred entities|, recall = ... / |gold entities|, an entity being
    (sentence, type, first token, last token); F1 = 2PR / (P + R). Per type the same, restricted to that type.
Question answering (SQuAD v1.1, the official evaluate-v1.1.py rules):
    normalize(s) = lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace
    exact_match  = max over the gold answers of [normalize(pred) == normalize(gold)]
    f1           = max over the gold answers of the bag-of-words F1 of the normalised tokens
    both averaged over the questions.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# classification


def _int_labels(name: str, a) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected a 1-D sequence of integer labels, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.int64)


def _pair(gold, pred) -> tuple[np.ndarray, np.ndarray]:
    gold, pred = _int_labels("gold", gold), _int_labels("pred", pred)
    if gold.shape != pred.shape:
        raise ValueError(f"pred: expected {gold.shape[0]} labels (one per gold label), got {pred.shape[0]}")
    return gold, pred


def accuracy(gold, pred) -> float:
    gold, pred = _pair(gold, pred)
    return float(np.mean(gold == pred)) if gold.size else float("nan")


def confusion_matrix(gold, pred, num_labels: int | None = None) -> np.ndarray:
    """(K, K) int64: row = gold label, column = predicted label."""
    gold, pred = _pair(gold, pred)
    K = int(num_labels) if num_labels is not None else int(max(gold.max(initial=-1), pred.max(initial=-1)) + 1)
    if gold.size and (min(gold.min(), pred.min()) < 0 or max(gold.max(), pred.max()) >= K):
        raise ValueError(f"gold, pred: labels must lie in [0, {K})")
    cm = np.zeros((K, K), dtype=np.int64)
    np.add.at(cm, (gold, pred), 1)
    return cm


def _safe_div(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 (K,) from a confusion matrix (rows gold, columns predicted)."""
    tp = np.diag(cm).astype(np.float64)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return precision, recall, f1


def classification_report(gold, pred, labels: Sequence[str] | None = None) -> dict:
    """accuracy, f1_macro, per-class precision/recall/F1/support and the confusion matrix (as nested lists)."""
    K = len(labels) if labels is not None else None
    cm = confusion_matrix(gold, pred, K)
    labels = list(labels) if labels is not None else [str(k) for k in range(cm.shape[0])]
    p, r, f = precision_recall_f1(cm)
    return {"accuracy": accuracy(gold, pred), "f1_macro": float(f.mean()) if f.size else float("nan"),
            "per_class": {lab: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                                "support": int(cm[k].sum())} for k, lab in enumerate(labels)},
            "confusion_matrix": cm.tolist(), "labels": labels}


def multilabel_report(gold, pred, labels: Sequence[str] | None = None) -> dict:
    """gold, pred: 0/1 matrices (N, K). micro F1 over all cells, macro F1 over labels, subset accuracy."""
    gold, pred = np.asarray(gold) != 0, np.asarray(pred) != 0
    if gold.shape != pred.shape or gold.ndim != 2:
        raise ValueError(f"pred: expected a 0/1 matrix of gold's shape {gold.shape}, got {pred.shape}")
    tp, fp, fn = (gold & pred).sum(0), (~gold & pred).sum(0), (gold & ~pred).sum(0)   # (K,) each
    p, r = _safe_div(tp.sum(), tp.sum() + fp.sum()), _safe_div(tp.sum(), tp.sum() + fn.sum())
    pk, rk = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
    fk = _safe_div(2 * pk * rk, pk + rk)
    labels = list(labels) if labels is not None else [str(k) for k in range(gold.shape[1])]
    return {"f1_micro": float(_safe_div(2 * p * r, p + r)), "f1_macro": float(fk.mean()),
            "subset_accuracy": float(np.mean(np.all(gold == pred, axis=1))),
            "per_class": {lab: {"precision": float(pk[k]), "recall": float(rk[k]), "f1": float(fk[k]),
                                "support": int(gold[:, k].sum())} for k, lab in enumerate(labels)}}


# ----------------------------------------------------------------------------------------------------------------
# regression


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"x, y: expected two sequences of the same length >= 2, got {x.size} and {y.size}")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")  # a constant input has no correlation


def rank(x) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size, dtype=np.float64)
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1     # positions i..j (0-based) share rank mean(i+1 .. j+1)
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(rank(x), rank(y))


def regression_report(gold, pred) -> dict:
    """Pearson, Spearman and the mean squared error; the two correlations are None (undefined) for one pair."""
    gold, pred = np.asarray(gold, dtype=np.float64).ravel(), np.asarray(pred, dtype=np.float64).ravel()
    if gold.size == 1 == pred.size:
        return {"pearson": None, "spearman": None, "mse": float(np.mean((gold - pred) ** 2))}
    return {"pearson": pearson(gold, pred), "spearman": spearman(gold, pred),
            "mse": float(np.mean((gold - pred) ** 2))}


# ----------------------------------------------------------------------------------------------------------------
# token classification (entities)


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or tag == "":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "I", tag                                   # a bare type reads as inside that type


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first token, last token) of every entity in one sentence's tags (inclusive ends), in order."""
    entities, start, prev_prefix, prev_type = [], None, "O", ""
    for i, tag in enumerate(list(tags) + ["O"]):      # a final O closes the last entity
        prefix, typ = _split_tag(tag)
        ends = start is not None and (prefix in ("O", "B", "S") or typ != prev_type or prev_prefix in ("E", "S"))
        if ends:
            entities.append((prev_type, start, i - 1))
            start = None
        if prefix != "O" and start is None:
            start = i
        prev_prefix, prev_type = prefix, typ
    return entities


def entity_report(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict:
    """Entity-level precision, recall, F1 overall (micro) and per type; sentences as lists of tags."""
    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"pred_tags: expected {len(gold_tags)} sentences, got {len(pred_tags)}")
    gold, pred = set(), set()
    for s, (g, p) in enumerate(zip(gold_tags, pred_tags)):
        if len(g) != len(p):
            raise ValueError(f"pred_tags[{s}]: expected {len(g)} tags (as the gold sentence), got {len(p)}")
        gold.update((s, *e) for e in get_entities(g))
        pred.update((s, *e) for e in get_entities(p))

    def prf(gs, ps):
        tp = len(gs & ps)
        precision = tp / len(ps) if ps else 0.0
        recall = tp / len(gs) if gs else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "support": len(gs)}

    types = sorted({e[1] for e in gold | pred})
    per_type = {t: prf({e for e in gold if e[1] == t}, {e for e in pred if e[1] == t}) for t in types}
    overall = prf(gold, pred)
    n_tok = sum(len(g) for g in gold_tags)
    tok_acc = sum(a == b for g, p in zip(gold_tags, pred_tags) for a, b in zip(g, p)) / n_tok if n_tok else 0.0
    return {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1"],
            "token_accuracy": tok_acc, "per_type": per_type}


# ----------------------------------------------------------------------------------------------------------------
# question answering (SQuAD v1.1)

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lowercase, remove punctuation, remove articles, fix whitespace (in that order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, golds: Sequence[str]) -> float:
    return float(max(normalize_answer(pred) == normalize_answer(g) for g in _golds(golds)))


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(p) & Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def qa_f1(pred: str, golds: Sequence[str]) -> float:
    return max(token_f1(pred, g) for g in _golds(golds))


def _golds(golds):
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("golds: expected at least one gold answer")
    return golds


def squad_report(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict:
    if len(preds) != len(golds):
        raise ValueError(f"preds: expected {len(golds)} answers (one per question), got {len(preds)}")
    if not preds:
        return {"exact_match": float("nan"), "f1": float("nan")}
    return {"exact_match": float(np.mean([exact_match(p, g) for p, g in zip(preds, golds)])),
            "f1": float(np.mean([qa_f1(p, g) for p, g in zip(preds, golds)]))}
