"""Metrics against cases worked out by hand (the arithmetic is in the comments), and against scipy."""
import math

import numpy as np
import pytest

from minidistil.train import metrics as M


def test_accuracy_confusion_f1_by_hand():
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    assert M.accuracy(gold, pred) == pytest.approx(4 / 6)
    cm = M.confusion_matrix(gold, pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])       # rows gold, columns predicted
    r = M.classification_report(gold, pred, ["a", "b", "c"])
    # a: P = 2/2, R = 2/3, F1 = 2*1*(2/3)/(5/3) = 0.8
    # b: P = 1/2, R = 1/2, F1 = 0.5
    # c: P = 1/2, R = 1/1, F1 = 2*(1/2)/(3/2) = 2/3
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                   "support": 3}
    assert r["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert r["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert r["f1_macro"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_a_class_never_predicted_nor_present_counts_zero():
    r = M.classification_report([0, 1], [0, 1], ["x", "y", "z"])
    assert r["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["f1_macro"] == pytest.approx(2 / 3)


def test_classification_input_checks():
    with pytest.raises(ValueError, match="pred: expected 3"):
        M.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        M.accuracy([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        M.confusion_matrix([0, 2], [0, 1], 2)


def test_multilabel_by_hand():
    gold = [[1, 0, 1], [0, 1, 0]]
    pred = [[1, 1, 0], [0, 1, 0]]
    r = M.multilabel_report(gold, pred)
    # cells: tp = 2 (0,0) (1,1); fp = 1 (0,1); fn = 1 (0,2) -> P = R = 2/3, F1 = 2/3
    assert r["f1_micro"] == pytest.approx(2 / 3)
    assert r["subset_accuracy"] == 0.5
    # per label: 0: F1 1; 1: P 1/2 R 1 -> 2/3; 2: 0
    assert r["f1_macro"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_pearson_spearman_by_hand():
    # x = [1, 2, 3], y = [2, 4, 7]: dx = [-1, 0, 1], dy = [-7/3, -1/3, 8/3]
    # sum dx dy = 5, sum dx^2 = 2, sum dy^2 = (49 + 1 + 64) / 9 = 114/9 -> r = 5 / sqrt(2 * 114/9)
    assert M.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 114 / 9))
    assert M.spearman([1, 2, 3], [2, 4, 7]) == pytest.approx(1.0)              # monotone
    np.testing.assert_array_equal(M.rank([10, 20, 20, 30]), [1, 2.5, 2.5, 4])   # ties share their mean rank
    np.testing.assert_array_equal(M.rank([3, 1, 3, 3]), [3, 1, 3, 3])
    # ranks x [1, 2.5, 2.5, 4] vs y [4, 3, 2, 1]: dx = [-1.5, 0, 0, 1.5], dy = [1.5, .5, -.5, -1.5]
    # sum dx dy = -4.5, sum dx^2 = 4.5, sum dy^2 = 5 -> -4.5 / sqrt(22.5)
    assert M.spearman([10, 20, 20, 30], [4, 3, 2, 1]) == pytest.approx(-4.5 / math.sqrt(22.5))
    assert math.isnan(M.pearson([1, 1, 1], [1, 2, 3]))                         # constant: undefined
    with pytest.raises(ValueError, match="same length"):
        M.pearson([1, 2], [1, 2, 3])


def test_regression_against_scipy():
    from scipy import stats  # a dependency (Numba needs it)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 50).astype(float)                                    # many ties
    y = x + rng.normal(0, 1, 50)
    assert M.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert M.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_entities_bio_by_hand():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC", "I-ORG", "O", "I-PER"]
    # B-PER I-PER -> PER 0..1; B-LOC -> LOC 3..3; B-LOC I-LOC -> LOC 4..5; I-ORG after another type starts ORG
    # 6..6; a stray I-PER after O starts PER 8..8 (conlleval's lenient rule, as seqeval's default mode)
    assert M.get_entities(tags) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 5), ("ORG", 6, 6), ("PER", 8, 8)]
    assert M.get_entities(["I-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]


def test_entities_iob1_and_bare_tags():
    # IOB1: entities start with I-; B- only separates two adjacent entities of one type
    assert M.get_entities(["I-LOC", "I-LOC", "B-LOC", "O", "I-PER"]) == [("LOC", 0, 1), ("LOC", 2, 2),
                                                                          ("PER", 4, 4)]
    assert M.get_entities(["PER", "PER", "O", "LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert M.get_entities(["B-X", "E-X", "S-X", "O"]) == [("X", 0, 1), ("X", 2, 2)]      # IOBES


def test_entity_report_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-LOC"]]
    # gold: PER(0,0..1) LOC(0,3..3) ORG(1,0..0); pred: PER(0,0..0) LOC(0,3..3) ORG(1,0..0) LOC(1,1..1)
    # correct: LOC, ORG -> P = 2/4, R = 2/3, F1 = 2 (1/2)(2/3) / (7/6) = 4/7
    r = M.entity_report(gold, pred)
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(4 / 7)
    assert r["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_type"]["LOC"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert r["token_accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match=r"pred_tags\[1\]"):
        M.entity_report(gold, [pred[0], ["O"]])


def test_squad_normalisation_and_scores_by_hand():
    assert M.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"           # punctuation removed, not spaced
    assert M.normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert M.normalize_answer("theatre") == "theatre"                          # articles only as whole words
    assert M.exact_match("the Eiffel Tower", ["Eiffel Tower.", "Paris"]) == 1.0
    assert M.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred "eiffel tower in paris" vs gold "eiffel tower": same = 2, P = 2/4, R = 1 -> F1 = 2/3
    assert M.qa_f1("Eiffel Tower in Paris", ["the Eiffel Tower"]) == pytest.approx(2 / 3)
    assert M.qa_f1("Paris", ["Eiffel Tower", "in Paris"]) == pytest.approx(2 / 3)   # best gold: P 1, R 1/2
    assert M.token_f1("a", "the") == 0.0                                       # both normalise to nothing
    r = M.squad_report(["Eiffel Tower", "London"], [["the Eiffel Tower"], ["Paris", "France"]])
    assert r == {"exact_match": 0.5, "f1": 0.5}
    with pytest.raises(ValueError, match="at least one gold"):
        M.exact_match("x", [])
