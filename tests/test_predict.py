"""`minidistil predict` and the `minidistil finetune` command on tiny checkpoints: each head's answers recomputed from
the raw model outputs, inputs from arguments / file / stdin / JSON lines, and errors in one line."""
import io
import json
import sys

import numpy as np
import pytest
from conftest import (FAST, VOCAB, conll_sentences, sentiment_rows, squad_file, tiny_checkpoint, write_conll,
                           write_csv)

import minidistil
from minidistil.apps import cli
from minidistil.apps import predict as P
from minidistil.io.loading import from_pretrained, save_pretrained
from minidistil.kernels._checks import f32_tol
from minidistil.apps.pipelines import softmax
from minidistil.io.tokenizer import Tokenizer


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tiny shapes: see conftest


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, [json.loads(x) for x in out.out.splitlines() if x.startswith(("{", "["))], out


def with_head(tmp_path, arch, **cfg):
    """A random tiny checkpoint with a task head (labels from cfg)."""
    folder = tiny_checkpoint(tmp_path / arch, arch="DistilBertModel")
    with pytest.warns(UserWarning, match="newly initialized"):                # the head is new: said so
        model = from_pretrained(folder, cls=arch, config_overrides=cfg)
    model.init_weights(seed=4)                                        # every weight random, head included
    save_pretrained(model, folder, tokenizer=Tokenizer.from_pretrained(folder))
    return folder


def test_finetune_then_predict_on_the_command_line(tmp_path, capsys, monkeypatch):
    base = tiny_checkpoint(tmp_path / "base")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(240, 0))
    code, _, out = run(["finetune", "--task", "classification", "--model", str(base), "--train", str(train),
                        "--out", str(tmp_path / "sent"), "--epochs", "6", "--lr", "2e-3", "--no-progress"], capsys)
    assert code == 0 and "updates in" in out.out and "accuracy" in out.out
    held = sentiment_rows(20, 9)
    texts = [t for t, _ in held]
    code, res, _ = run(["predict", "--model", str(tmp_path / "sent"), *texts], capsys)
    assert code == 0 and sum(r["label"] == lab for r, (_, lab) in zip(res, held)) >= 18        # chance: 10
    assert all(0.5 < r["score"] <= 1 for r in res)
    (tmp_path / "in.txt").write_text("\n".join(texts[:4]) + "\n\n")
    code, res2, _ = run(["predict", "--model", str(tmp_path / "sent"), "--file", str(tmp_path / "in.txt"),
                         "--top-k", "0"], capsys)
    assert [r[0]["label"] for r in res2] == [r["label"] for r in res[:4]] and all(len(r) == 2 for r in res2)
    code, res3, _ = run(["predict", "--model", str(tmp_path / "sent")], capsys, texts[0] + "\n", monkeypatch)
    # alone or in a padded batch: the same label, scores equal to float32 rounding (padding changes sum order)
    assert res3[0]["label"] == res[0]["label"] and res3[0]["score"] == pytest.approx(res[0]["score"], rel=1e-5)


def test_classification_scores_are_the_softmax_of_the_logits(tmp_path):
    folder = with_head(tmp_path, "DistilBertForSequenceClassification", num_labels=3,
                       id2label={"0": "a", "1": "b", "2": "c"})
    model, tok = P.load(folder)
    texts = ["the film", "a movie was so good ."]
    res = P.predict(model, tok, texts, top_k=3)
    enc = tok(texts)
    with minidistil.no_grad():
        p = softmax(model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy().astype(np.float64))
    for r, row in zip(res, p):
        assert [x["label"] for x in r] == [["a", "b", "c"][k] for k in np.argsort(-row, kind="stable")]
        np.testing.assert_allclose([x["score"] for x in r], np.sort(row)[::-1], rtol=1e-12)


def test_sentence_pairs_and_regression(tmp_path, capsys):
    folder = with_head(tmp_path, "DistilBertForSequenceClassification", num_labels=1, problem_type="regression")
    model, tok = P.load(folder)
    res = P.predict(model, tok, [("the film", "a movie"), ("good", "bad")])
    enc = tok(["the film", "good"], ["a movie", "bad"])
    with minidistil.no_grad():
        want = model(enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()[:, 0]
    # the raw value, no sigmoid. Each call pads to its own length and may take another BLAS path, so two float32
    # results agree to a few ulps of the activations that made them (|h| ~ 1 at width C), not of a score that
    # happens to lie near 0: an absolute tolerance, f32_tol(C) (derivation in kernels/_checks.py)
    tol = f32_tol(model.config.dim, scale=4.0)
    np.testing.assert_allclose([r["score"] for r in res], want, rtol=0, atol=tol)
    code, out, _ = run(["predict", "--model", str(folder), "--pair-sep", "\\t", "the film\ta movie"], capsys)
    assert code == 0 and out[0]["score"] == pytest.approx(res[0]["score"], abs=tol)
    code, _, err = run(["predict", "--model", str(folder), "--pair-sep", "|", "no separator"], capsys)
    assert code == 1 and "input 1: no '|'" in err.err


def test_token_classification_prediction(tmp_path):
    base = tiny_checkpoint(tmp_path / "base")
    train = write_conll(tmp_path / "t.conll", conll_sentences(200, 0))
    from minidistil.train.finetune import finetune
    finetune("token", str(base), str(train), str(tmp_path / "ner"), **FAST)
    model, tok = P.load(tmp_path / "ner")
    [ents] = P.predict(model, tok, ["we saw ada turing in zürich"])
    assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in ents] == [
        ("PER", "ada turing", 7, 17), ("LOC", "zurich", 21, 27)]


def test_question_answering_over_windows(tmp_path, capsys):
    base = tiny_checkpoint(tmp_path / "base")
    train = squad_file(tmp_path / "t.json", 240, 0)
    from minidistil.train.finetune import finetune
    finetune("qa", str(base), str(train), str(tmp_path / "qa"), **{**FAST, "max_length": 32, "stride": 8,
                                                                    "epochs": 8, "lr": 3e-3})
    context = ("the movie was so very it . we saw a film on the plot . it is very so . the key is gold . "
               "the film was . a plot is very .")                    # ~33 tokens: more than one 32-token window
    code, res, _ = run(["predict", "--model", str(tmp_path / "qa"), "--max-length", "32", "--context", context,
                        "what is the key ?"], capsys)
    assert code == 0 and res[0]["answer"] == "gold" and context[res[0]["start"]:res[0]["end"]] == "gold"
    line = json.dumps({"question": "what is the key ?", "context": "the key is red ."})
    code, res, _ = run(["predict", "--model", str(tmp_path / "qa"), line], capsys)
    assert res[0]["answer"] == "red"
    code, _, err = run(["predict", "--model", str(tmp_path / "qa"), "what is the key ?"], capsys)
    assert code == 1 and "expected a JSON object with 'question' and 'context'" in err.err


def test_multiple_choice_prediction(tmp_path, capsys):
    folder = with_head(tmp_path, "DistilBertForMultipleChoice")
    model, tok = P.load(folder)
    [r] = P.predict(model, tok, [{"question": "pick", "choices": ["the film", "a movie", "so good"]}])
    enc = tok(["pick"] * 3, ["the film", "a movie", "so good"])
    with minidistil.no_grad():
        logits = model(enc["input_ids"][None], attention_mask=enc["attention_mask"][None]).logits.numpy()[0]
    p = softmax(logits.astype(np.float64))
    assert r["index"] == int(np.argmax(p)) and r["choice"] == ["the film", "a movie", "so good"][r["index"]]
    np.testing.assert_allclose(r["scores"], p, rtol=1e-6)
    code, res, _ = run(["predict", "--model", str(folder), "--choices", "the film|a movie|so good", "pick"], capsys)
    assert res[0]["index"] == r["index"]


def test_a_model_without_a_head_is_refused(tmp_path, capsys):
    base = tiny_checkpoint(tmp_path / "base")
    code, _, err = run(["predict", "--model", str(base), "hello"], capsys)
    assert code == 1 and "has no task head" in err.err and "minidistil finetune" in err.err
    assert len(VOCAB) > 50
