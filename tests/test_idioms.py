"""The lines transformers and sentence-transformers users write, run against minidistil as they are written there:
the tokenizer's call and helpers, `model(**tok(texts))`, from_pretrained / save_pretrained, outputs, devices,
pipelines, SentenceEncoder.encode / similarity, the README's Python blocks (semantic search included), and fine-tuning
as users run it (evaluate, --limit, data in memory, a metrics callback). Where transformers or sentence-transformers
give the reference, it comes through conftest's oracle() (required in CI).

Tiny random checkpoints are built here with test_finetune's 60-word vocabulary; the README blocks and the
sentence-transformers comparison use the real all-MiniLM-L6-v2 (conftest's minilm_dir).
"""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, sentiment_rows, tiny_checkpoint, write_csv

import minidistil
from minidistil import (BertModel, DistilBertForSequenceClassification, DistilBertModel, SentenceEncoder, Tokenizer,
                        no_grad, pipeline)
from minidistil.apps import cli
from minidistil.train.finetune import finetune
from minidistil.kernels._checks import f32_tol
from minidistil.apps.predict import evaluate

README = Path(__file__).resolve().parent.parent / "README.md"
TEXTS = ["the film was very good", "a bad plot", "we saw it on the movie"]
# two float32 forwards of the same tiny model (width 32, activations |h| <~ 10 after LayerNorm) that pad or batch
# differently sum in different orders: f32_tol(32, 10) bounds the difference (derivation in kernels/_checks.py)
TOL = f32_tol(32, 10.0)


pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tiny shapes: see conftest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A DistilBERT encoder as `minidistil distill` writes one (DistilBertForMaskedLM), with a BERT tokenizer."""
    return tiny_checkpoint(tmp_path_factory.mktemp("idioms") / "student", seed=2)


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- transformers: the tokenizer -------------------------------------------------------------------------------


def test_tokenizer_call_decode_and_save(ckpt, tmp_path):
    tok = Tokenizer.from_pretrained(ckpt)
    enc = tok(TEXTS, padding=True, truncation=True, return_tensors="np")
    assert tok.model_input_names == ["input_ids", "token_type_ids", "attention_mask"]
    assert list(enc.keys()) == tok.model_input_names and enc.input_ids is enc["input_ids"]
    assert enc["input_ids"].shape == enc["attention_mask"].shape == (3, 8)
    assert tok.batch_decode(enc["input_ids"], skip_special_tokens=True) == TEXTS
    assert enc.word_ids(1)[:5] == [None, 0, 1, 2, None] and enc.tokens(1)[1] == "a"
    tok.save_pretrained(tmp_path / "tok")
    again = Tokenizer.from_pretrained(tmp_path / "tok")(TEXTS, return_tensors="np")
    np.testing.assert_array_equal(again["input_ids"], enc["input_ids"])
    with pytest.raises(ValueError, match="return_tensors"):
        tok(TEXTS, return_tensors="tf")


def test_return_tensors_pt_with_torch_and_without(ckpt, torch, monkeypatch):
    tok = Tokenizer.from_pretrained(ckpt)
    model = DistilBertModel.from_pretrained(ckpt)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    assert all(isinstance(v, torch.Tensor) for v in enc.values())
    with no_grad():
        h_pt = model(**enc).last_hidden_state.numpy()
        h_np = model(**tok(TEXTS, padding=True, return_tensors="np")).last_hidden_state.numpy()
    np.testing.assert_array_equal(h_pt, h_np)                           # the same arrays in, the same path
    monkeypatch.setitem(sys.modules, "torch", None)                     # as if torch were not installed
    with pytest.raises(ValueError, match="needs torch.*return_tensors='np'"):
        tok(TEXTS, return_tensors="pt")


def test_same_ids_and_input_names_as_transformers(oracle, ckpt, tmp_path):
    transformers = oracle("transformers")
    for cls in ("BertTokenizer", "DistilBertTokenizer"):
        folder = tmp_path / cls
        folder.mkdir()
        (folder / "vocab.txt").write_text((ckpt / "vocab.txt").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls, "do_lower_case": True}))
        ours, hf = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
        assert ours.model_input_names == list(hf.model_input_names)
        a, b = ours(TEXTS, ["a movie", "good", "so"], padding=True), hf(TEXTS, ["a movie", "good", "so"],
                                                                           padding=True, return_tensors="np")
        assert sorted(a.keys()) == sorted(b.keys())                     # DistilBERT's: no token_type_ids
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert ours.batch_decode(a["input_ids"]) == hf.batch_decode(b["input_ids"], skip_special_tokens=True)


# ---- transformers: models ----------------------------------------------------------------------------------------


def test_model_call_on_the_tokenizer_output(ckpt):
    """model(**tok(texts)) on DistilBERT with a BERT tokenizer: token_type_ids are accepted and ignored."""
    tok = Tokenizer.from_pretrained(ckpt)
    model = DistilBertModel.from_pretrained(ckpt)
    enc = tok(TEXTS, padding=True)
    assert "token_type_ids" in enc
    with no_grad():
        out = model(**enc)
        ref = model(enc["input_ids"], attention_mask=enc["attention_mask"])
    np.testing.assert_array_equal(out.last_hidden_state.numpy(), ref.last_hidden_state.numpy())
    assert out.keys() == ["last_hidden_state"] and list(dict(out)) == ["last_hidden_state"]
    assert out["last_hidden_state"] is out.last_hidden_state and out.to_tuple()[0] is out[0]
    with no_grad():
        as_tuple = model(**enc, return_dict=False)
    assert isinstance(as_tuple, tuple) and as_tuple[0].shape == (3, 8, 32)
    with pytest.raises(KeyError, match="hidden_states"):
        out["hidden_states"]                                            # not set: as transformers' ModelOutput


def test_from_pretrained_with_config_changes_and_save_pretrained(oracle, ckpt, tmp_path):
    with pytest.warns(UserWarning, match="newly initialized"):
        model = DistilBertForSequenceClassification.from_pretrained(
            ckpt, num_labels=3, id2label={0: "neg", 1: "neutral", 2: "pos"})
    assert model.config.num_labels == 3 and model.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    with pytest.raises(TypeError, match="nmu_labels"):
        minidistil.from_pretrained(ckpt, nmu_labels=3)
    tok = Tokenizer.from_pretrained(ckpt)
    model.save_pretrained(tmp_path / "clf", tokenizer=tok)
    again = DistilBertForSequenceClassification.from_pretrained(tmp_path / "clf")
    enc = tok(TEXTS)
    with no_grad():
        ours = again(**enc).logits.numpy()
    np.testing.assert_array_equal(ours, model(**enc).logits.numpy())
    torch = oracle("torch")
    transformers = oracle("transformers")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "clf")).eval()
    with torch.no_grad():
        theirs = hf(**tok(TEXTS, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=TOL, rtol=0)
    assert hf.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}


def test_bert_model_from_pretrained_is_the_bare_encoder(tmp_path):
    folder = tiny_checkpoint(tmp_path / "bert", arch="BertForMaskedLM")
    with pytest.warns(UserWarning, match="not used"):                   # the MLM head is left out, as in HF
        model = BertModel.from_pretrained(folder)
    assert type(model) is BertModel


def test_devices_as_transformers_names_them(ckpt):
    from minidistil.core.device import check_device
    assert check_device("cuda:0") == check_device(0) == "cuda" and check_device(-1) == check_device(None) == "cpu"
    with pytest.raises(ValueError, match="one GPU"):
        check_device("cuda:1")
    tok = Tokenizer.from_pretrained(ckpt)
    cpu = pipeline("feature-extraction", DistilBertModel.from_pretrained(ckpt), tok)("the film")
    for device in ("cuda", "cuda:0", 0):             # a GPU, or numba's simulator (conftest): never a silent CPU
        fe = pipeline("feature-extraction", DistilBertModel.from_pretrained(ckpt), tok, device=device)
        assert fe.model.device == "cuda"
    np.testing.assert_allclose(fe("the film"), cpu, atol=TOL, rtol=0)


# ---- transformers: pipelines ------------------------------------------------------------------------------------


def test_feature_extraction_gives_token_features(ckpt):
    tok = Tokenizer.from_pretrained(ckpt)
    model = DistilBertModel.from_pretrained(ckpt)
    fe = pipeline("feature-extraction", model, tok)
    one = fe("the film was very good")
    assert np.array(one).shape == (1, 7, 32)                            # (1, T, C): [CLS] 5 words [SEP]
    with no_grad():
        h = model(**tok("the film was very good")).last_hidden_state.numpy()
    np.testing.assert_allclose(one, h, atol=TOL, rtol=0)
    assert [x.shape for x in fe(TEXTS)] == [(1, 7, 32), (1, 5, 32), (1, 8, 32)]   # each text unpadded


def test_task_commands_refuse_a_head_without_weights(ckpt, capsys):
    rc, out, err = _run(capsys, "classify", "--model", ckpt, "the film")
    assert rc == 1 and not out and err.count("\n") == 1
    assert "no trained weights" in err and "classifier.weight" in err and "minidistil finetune" in err
    rc, _, err = _run(capsys, "qa", "--model", ckpt, "--context", "the key is red .", "what is the key ?")
    assert rc == 1 and "qa_outputs.weight" in err


# ---- sentence-transformers ------------------------------------------------------------------------------------


def test_encode_and_similarity_as_sentence_transformers(oracle, minilm_dir):
    st = oracle("sentence_transformers")
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                 "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods."]
    ours = SentenceEncoder.from_pretrained(minilm_dir)
    theirs = st.SentenceTransformer(str(minilm_dir), device="cpu")
    a = ours.encode(sentences, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    b = theirs.encode(sentences, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    assert a.dtype == np.float32 and a.shape == b.shape == (6, 384)
    # unit vectors of 384 float32 components from two 6-layer forwards: 1e-5 per component covers the summation
    # orders (test_minilm.py measured 2.9e-6 on the hidden states)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.similarity(a, a), theirs.similarity(b, b).numpy(), atol=1e-5, rtol=0)
    assert ours.get_embedding_dimension() == theirs.get_embedding_dimension() == 384
    assert ours.encode("A man is eating food.").shape == (384,)


def test_encode_batches_by_length_and_keeps_the_input_order(ckpt, capsys, torch):
    enc = SentenceEncoder.from_pretrained(ckpt)
    sentences = ["a", "the film was very good and the plot was so good", "bad", "we saw it", "it is a movie"]
    together = enc.encode(sentences, batch_size=2, show_progress_bar=False)
    alone = np.stack([enc.encode(s) for s in sentences])
    np.testing.assert_allclose(together, alone, atol=TOL, rtol=0)      # row i is sentence i
    assert capsys.readouterr().err == ""
    enc.encode(sentences, batch_size=2, show_progress_bar=True)
    assert "encode" in capsys.readouterr().err                          # tqdm's bar, on stderr
    unit = enc.encode(sentences, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert isinstance(enc.encode(sentences, convert_to_tensor=True), torch.Tensor)
    assert len(enc.encode(sentences, convert_to_numpy=False)) == 5
    np.testing.assert_allclose(enc.similarity(together[0], together), unit[:1] @ unit.T, atol=1e-6)
    with pytest.raises(ValueError, match=r"sentences\[1\]"):
        enc.encode(["ok", 3])


def test_embed_a_file_to_npy_and_json(ckpt, tmp_path, capsys):
    lines = [f"{w} film" for w in ["good", "bad", "the", "a", "so"]] * 3
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    rc, out, err = _run(capsys, "embed", "--model", ckpt, "--file", tmp_path / "in.txt", "--npy", tmp_path / "e.npy")
    assert rc == 0 and "15 embeddings of 32 floats" in out, err
    emb = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(emb, SentenceEncoder.from_pretrained(ckpt).encode(lines), atol=TOL, rtol=0)
    rc, _, _ = _run(capsys, "embed", "--model", ckpt, "--file", tmp_path / "in.txt", "--json", tmp_path / "e.json",
                    "--normalize")
    got = json.loads((tmp_path / "e.json").read_text())
    assert rc == 0 and got["texts"] == lines
    np.testing.assert_allclose(got["embeddings"], emb / np.linalg.norm(emb, axis=1, keepdims=True), atol=1e-6)


def test_readme_python_blocks_run(minilm_dir, tmp_path, monkeypatch, capsys):
    """The README's "In Python" section, run as written: the transformers lines, semantic search and fine-tuning
    with data in memory; their printed results checked."""
    monkeypatch.setenv("MINIDISTIL_WEIGHTS", str(minilm_dir.parent))
    monkeypatch.chdir(tmp_path)
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## In Python"):text.index("\n## ", text.index("## In Python") + 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "['last_hidden_state', 'pooler_output'] (2, 6, 384)"
    assert printed[1] == "['hello world', 'a longer second sentence']" and printed[2] == "(384, 384)"
    meal, music = printed[3], printed[4]                                # semantic search: the right best match
    assert meal.startswith("Someone is having a meal. -> [('A man is eating food.'")
    assert music.startswith("A person plays a string instrument. -> [('A woman is playing the violin.'")
    accuracy, share = printed[5].split()
    assert printed[6] == accuracy and 0.0 <= float(share) <= 1.0       # evaluate: the run's own figure


# ---- evaluation and fine-tuning as users run them --------------------------------------------------------------


def _sentiment_tsv(path, rows):
    """A file in the layout of the worked example's resource:sentiment_small.tsv (comments, header, label first)."""
    path.write_text("# a comment line\n# another\nlabel\tsentence\n" + "".join(f"{lab}\t{t}\n" for t, lab in rows))
    return path


@pytest.mark.parametrize("data", ["resource:sentiment_small.tsv", "learnable"])
def test_evaluate_reproduces_the_finetuning_run(ckpt, tmp_path, capsys, data):
    """The README's worked example (its file and flags; the tiny model and vocabulary make its sentences mostly
    [UNK]), and a file of the same layout the tiny model learns: `minidistil evaluate` on the held-out share
    prints the metrics the fine-tuning run reported for its best epoch."""
    if data == "learnable":
        data = _sentiment_tsv(tmp_path / "reviews.tsv", sentiment_rows(200, 0))
    flags = ["--text-field", "sentence", "--max-length", "32", "--batch-size", "16"]
    rc, out, err = _run(capsys, "finetune", "--task", "classification", "--model", ckpt, "--train", data,
                        "--held-out", "0.25", "--epochs", "5", "--lr", "2e-3", "--out", tmp_path / "sent",
                        "--no-progress", *flags)
    assert rc == 0, err
    reported = json.loads((tmp_path / "sent" / "report.json").read_text())["best_eval"]
    assert reported["n"] == 50                                          # the README's 50 held-out sentences
    if data != "resource:sentiment_small.tsv":
        assert reported["accuracy"] > 0.8                               # chance: 0.5
    rc, out, err = _run(capsys, "evaluate", "--model", tmp_path / "sent", "--data", data, "--held-out", "0.25",
                        *flags)
    assert rc == 0, err
    got = json.loads(out)
    assert got["task"] == "classification" and got["skipped_rows"] == 0
    for key in ("n", "accuracy", "f1_macro", "per_class", "confusion_matrix", "labels"):
        assert got[key] == reported[key], key
    whole = evaluate(tmp_path / "sent", str(data), text_field="sentence", max_length=32, batch_size=16)
    assert whole["n"] == 200                                            # without held_out: every row


def test_limit_samples_rows_and_one_label_is_refused(ckpt, tmp_path):
    rows = sorted(sentiment_rows(120, 3), key=lambda r: r[1])          # sorted by label, as the bundled set
    train = write_csv(tmp_path / "sorted.csv", rows)
    rep = finetune("classification", str(ckpt), str(train), str(tmp_path / "out"), limit=20,
                   **{**FAST, "epochs": 1})
    assert rep["labels"] == ["neg", "pos"] and rep["train_examples"] + rep["validation_examples"] == 20
    one = write_csv(tmp_path / "one.csv", [r for r in rows if r[1] == "pos"])
    with pytest.raises(ValueError, match="at least two labels.*pos"):
        finetune("classification", str(ckpt), str(one), str(tmp_path / "out1"), **FAST)


def test_data_in_memory_and_a_metrics_callback(oracle, ckpt, tmp_path):
    rows, val = sentiment_rows(160, 4), sentiment_rows(40, 5)
    seen = []

    def compute_metrics(p):
        seen.append((p.predictions.shape, p.label_ids.shape))
        return {"share_pos": float((p.predictions.argmax(-1) == 1).mean())}

    rep = finetune("classification", str(ckpt), train=([t for t, _ in rows], [lab for _, lab in rows]),
                   out_dir=str(tmp_path / "mem"), validation={"text": [t for t, _ in val],
                                                             "label": [lab for _, lab in val]},
                   compute_metrics=compute_metrics, **FAST)
    assert seen == [((40, 2), (40,))] * FAST["epochs"]
    assert rep["best_eval"]["accuracy"] > 0.8 and 0.0 < rep["best_eval"]["share_pos"] < 1.0
    assert (rep["train_examples"], rep["validation_examples"]) == (160, 40)
    again = evaluate(tmp_path / "mem", [{"text": t, "label": lab} for t, lab in val], batch_size=16, max_length=48)
    assert again["accuracy"] == rep["best_eval"]["accuracy"]
    datasets = oracle("datasets")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [int(lab == "pos") for _, lab in rows]},
                                    features=features)
    rep = finetune("classification", str(ckpt), train=ds, out_dir=str(tmp_path / "ds"), **{**FAST, "epochs": 1})
    assert rep["labels"] == ["neg", "pos"] and rep["train_examples"] == 144           # 10% held out


def test_evaluate_sentence_pair_similarity(ckpt, tmp_path):
    from scipy import stats                                             # a dependency of minidistil
    pairs = [("the film was good", "a movie was good", 4.5), ("the plot", "we saw it", 1.0),
             ("good", "bad", 2.0), ("it is so very nice", "it is very nice", 5.0), ("a film", "the sad plot", 0.5)]
    path = tmp_path / "sts.tsv"
    path.write_text("score\tsentence1\tsentence2\n" + "".join(f"{s}\t{a}\t{b}\n" for a, b, s in pairs))
    got = evaluate(ckpt, str(path), text_field="sentence1", text_pair_field="sentence2", label_field="score")
    enc = SentenceEncoder.from_pretrained(ckpt)
    a, b = enc.encode([p[0] for p in pairs]), enc.encode([p[1] for p in pairs])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert got["task"] == "similarity" and got["n"] == 5
    assert got["spearman"] == pytest.approx(stats.spearmanr(cos, [p[2] for p in pairs])[0], abs=1e-9)
