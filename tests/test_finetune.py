"""Fine-tuning: every task trains a tiny model to clearly better than chance on a small labelled set made here,
task-level distillation from a fine-tuned teacher, resume giving the same weights as an uninterrupted run, and
(oracle) the saved fine-tuned checkpoint giving the same predictions in `transformers`.

The data are synthetic sentences over a 60-word vocabulary written below; the models are random tiny
DistilBERT / BERT checkpoints (2 layers, width 32) saved in the test. Nothing is downloaded.
"""
import json
import random

import numpy as np
import pytest

import minidistil
from conftest import (COLORS, FAST, FILL, NEG, POS, VOCAB, conll_sentences, sentiment_rows, squad_file,
                      tiny_checkpoint, write_conll, write_csv)
from minidistil.train.finetune import FinetuneConfig, finetune
from minidistil.io.loading import from_pretrained
from minidistil.io.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tiny shapes: see conftest


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("base") / "student")


# ---- each task trains to clearly better than chance --------------------------------------------------------------


def test_classification_from_a_distilled_student(base, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(240, 0) + [("no label here",)])
    val = write_csv(tmp_path / "val.csv", sentiment_rows(60, 1))
    report = finetune("classification", str(base), str(train), str(tmp_path / "out"), validation=str(val),
                      **{**FAST, "progress": True})
    said = capsys.readouterr().out
    assert "start from fresh random values" in said and "classifier.weight" in said   # the new head, in words
    assert "vocab_projector" in said                                                   # the unused MLM head
    assert report["skipped_rows"] == 1 and "train.csv:242" in (tmp_path / "out" / "skipped.txt").read_text()
    assert report["labels"] == ["neg", "pos"]
    assert report["best_score"] >= 0.9                                                 # chance: 0.5
    best = report["best_eval"]
    assert best["per_class"]["pos"]["support"] + best["per_class"]["neg"]["support"] == 60
    assert np.array(best["confusion_matrix"]).sum() == 60
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval" in r for r in rows) == 6 and sum("loss" in r for r in rows) == report["updates"]
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.npz"))       # no training state here
    assert sorted(p.name for p in (tmp_path / "out.training").iterdir()) == ["checkpoint-00000075.npz",
                                                                          "checkpoint-00000090.npz"]  # the last two
    assert (out / "training_curve.png").is_file() and json.loads((out / "report.json").read_text())["finished"]
    model = from_pretrained(out)                                                       # the saved best model
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_on_error_fail_names_file_and_line(base, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(20, 0) + [("no label here",)])
    with pytest.raises(ValueError, match=r"train.csv:22: expected 2 columns"):
        finetune("classification", str(base), str(train), str(tmp_path / "out"), on_error="fail", **FAST)


def test_regression_and_multilabel(base, tmp_path):
    r = random.Random(3)
    reg, multi = [], []
    for _ in range(400):
        k = r.randint(0, 3)                                   # score = number of positive words
        words = [r.choice(FILL) for _ in range(3)] + [r.choice(POS) for _ in range(k)]
        r.shuffle(words)
        reg.append((" ".join(words), float(k)))
        colors = sorted(r.sample(COLORS[:3], r.randint(0, 2)))  # labels = the colours named
        words = [r.choice(FILL) for _ in range(3)] + colors
        r.shuffle(words)
        multi.append({"text": " ".join(words), "labels": colors})
    rep = finetune("regression", str(base), str(write_csv(tmp_path / "reg.csv", reg)), str(tmp_path / "reg"),
                   **{**FAST, "epochs": 8})
    assert rep["metric"] == "pearson" and rep["best_score"] > 0.8                    # chance: 0
    (tmp_path / "multi.jsonl").write_text("".join(json.dumps(m) + "\n" for m in multi))
    rep = finetune("multilabel", str(base), str(tmp_path / "multi.jsonl"), str(tmp_path / "multi"),
                   label_field="labels", labels=COLORS[:3], **{**FAST, "epochs": 10, "lr": 3e-3})
    assert rep["metric"] == "f1_micro" and rep["best_score"] > 0.8     # all-zero predictions: 0; coin flips: ~0.5
    assert from_pretrained(tmp_path / "multi").config.problem_type == "multi_label_classification"


def test_token_classification(base, tmp_path):
    train = write_conll(tmp_path / "train.conll", conll_sentences(200, 0))
    val = write_conll(tmp_path / "val.conll", conll_sentences(40, 1))
    rep = finetune("token", str(base), str(train), str(tmp_path / "out"), validation=str(val), **FAST)
    assert rep["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]
    assert rep["metric"] == "f1" and rep["best_score"] > 0.8                         # entity-level F1


def test_question_answering_with_windows(base, tmp_path):
    train, val = squad_file(tmp_path / "train.json", 240, 0), squad_file(tmp_path / "dev.json", 40, 1)
    rep = finetune("qa", str(base), str(train), str(tmp_path / "out"), validation=str(val),
                   **{**FAST, "max_length": 32, "stride": 8, "epochs": 8, "lr": 3e-3})
    assert rep["metric"] == "f1" and rep["best_score"] > 0.6           # a random span of ~30 tokens: F1 ~ 0.1
    assert rep["best_eval"]["exact_match"] > 0.5


def test_multiple_choice(base, tmp_path):
    r = random.Random(5)
    rows = []
    for _ in range(240):
        label = r.randrange(3)
        choices = [" ".join([r.choice(FILL), r.choice(POS if k == label else NEG), r.choice(FILL)])
                   for k in range(3)]
        rows.append({"question": "pick the good one", "choices": choices, "label": label})
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    rep = finetune("choice", str(base), str(tmp_path / "mc.jsonl"), str(tmp_path / "out"), **FAST)
    assert rep["metric"] == "accuracy" and rep["best_score"] > 0.8                   # chance: 1/3


# ---- task-level distillation ----------------------------------------------------------------------------------


def test_task_distillation_from_a_finetuned_teacher(base, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(240, 0))
    val = write_csv(tmp_path / "val.csv", sentiment_rows(60, 1))
    finetune("classification", str(base), str(train), str(tmp_path / "teacher"), validation=str(val), **FAST)
    student = tiny_checkpoint(tmp_path / "small", "DistilBertModel", seed=3, layers=1)
    rep = finetune("classification", str(student), str(train), str(tmp_path / "out"), validation=str(val),
                   teacher=str(tmp_path / "teacher"), alpha=0.5, temperature=2.0, **FAST)
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in rows if "loss" in x]
    assert all("teacher_loss" in x for x in steps)
    for x in steps:                                                  # the logged total is the stated mixture
        assert x["loss"] == pytest.approx(0.5 * x["task_loss"] + 0.5 * x["teacher_loss"], rel=1e-5)
    first, last = np.mean([x["teacher_loss"] for x in steps[:15]]), np.mean([x["teacher_loss"] for x in steps[-15:]])
    assert last < 0.5 * first                                        # the student moves toward the teacher
    assert rep["best_score"] >= 0.9


def test_teacher_with_other_labels_is_refused(base, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(40, 0))
    finetune("classification", str(base), str(train), str(tmp_path / "teacher"), **{**FAST, "epochs": 1})
    with pytest.raises(ValueError, match="labels"):
        finetune("classification", str(base), str(train), str(tmp_path / "out"), teacher=str(tmp_path / "teacher"),
                 labels=["pos", "neg"], **FAST)


# ---- resume ---------------------------------------------------------------------------------------------------


def test_resume_gives_the_uninterrupted_weights(base, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(80, 0))
    kw = dict(FAST, epochs=2, checkpoint_every=3)
    whole = finetune("classification", str(base), str(train), str(tmp_path / "a"), **kw)
    part = finetune("classification", str(base), str(train), str(tmp_path / "b"), stop_after=7, **kw)
    assert not part["finished"] and part["updates"] == 7                 # stopped mid-epoch 2 (5 batches per epoch)
    rest = finetune("classification", str(base), str(train), str(tmp_path / "b"), resume=True, **kw)
    assert rest["updates"] == whole["updates"] == 10
    a = np.load(tmp_path / "a.training" / "checkpoint-00000010.npz")
    b = np.load(tmp_path / "b.training" / "checkpoint-00000010.npz")
    for k in a.files:
        if k != "meta":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    la = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [x.get("loss") for x in la] == [x.get("loss") for x in lb]


def test_bad_arguments(base, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(10, 0))
    with pytest.raises(ValueError, match="task"):
        finetune("summarise", str(base), str(train), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="alpha"):
        finetune("classification", str(base), str(train), str(tmp_path / "o"), alpha=2.0)
    with pytest.raises(ValueError, match="on_error"):
        finetune("classification", str(base), str(train), str(tmp_path / "o"), on_error="ignore")
    assert FinetuneConfig().task == "classification"


# ---- the saved model in transformers (oracle) ---------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("arch,task", [("DistilBertForSequenceClassification", "classification"),
                                       ("BertForTokenClassification", "token")])
def test_finetuned_checkpoint_predicts_the_same_in_transformers(oracle, torch, tmp_path, arch, task):
    transformers = oracle("transformers")
    start = tmp_path / "start"
    start.mkdir()
    (start / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (start / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 48}))
    common = dict(vocab_size=len(VOCAB), max_position_embeddings=48, initializer_range=0.1)
    if task == "classification":
        cfg = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=2,
                                            id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, **common)
        train = write_csv(tmp_path / "train.csv", sentiment_rows(64, 0))
        texts = [t for t, _ in sentiment_rows(6, 9)]
    else:
        labels = ["B-LOC", "B-PER", "I-PER", "O"]
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, num_labels=4, id2label=dict(enumerate(labels)),
                                      label2id={x: i for i, x in enumerate(labels)}, **common)
        train = write_conll(tmp_path / "train.conll", conll_sentences(64, 0))
        texts = [" ".join(w) for w, _ in conll_sentences(6, 9)]
    hf = getattr(transformers, arch)(cfg).eval()                       # random, WITH its head
    hf.save_pretrained(start, safe_serialization=True)
    rep = finetune(task, str(start), str(train), str(tmp_path / "out"), **{**FAST, "epochs": 2})
    assert rep["new_head_weights"] == []                               # the head came from the checkpoint
    out = tmp_path / "out"
    theirs = getattr(transformers, arch).from_pretrained(out).eval()
    ours = from_pretrained(out)
    tok = Tokenizer.from_pretrained(out)
    enc = tok(texts)
    with torch.no_grad():
        ref = theirs(input_ids=torch.tensor(enc["input_ids"]),
                     attention_mask=torch.tensor(enc["attention_mask"])).logits.numpy()
    with minidistil.no_grad():
        got = ours(enc["input_ids"], attention_mask=enc["attention_mask"]).logits.numpy()
    # float32 forward of a 2-layer width-32 model: ~1e-6 relative differences, bounded well below 1e-4
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    real = enc["attention_mask"].astype(bool)
    assert (np.argmax(got, -1)[..., None] == np.argmax(ref, -1)[..., None]).all() if task == "classification" \
        else (np.argmax(got, -1)[real] == np.argmax(ref, -1)[real]).all()
    assert theirs.config.id2label == {i: n for i, n in ours.config.id2label.items()}
