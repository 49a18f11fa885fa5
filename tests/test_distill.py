"""Distillation: the evaluation set and metrics, the student built from a teacher, the triple loss against torch,
a tiny run that lowers every loss term, NaN handling, and resume after SIGKILL giving the identical loss sequence.

The teachers are tiny random BERTs built here (minidistil's from_config, or transformers for the parity checks);
nothing is downloaded.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from minidistil.train import data as D
from minidistil.train import evaluation as E
from minidistil.kernels import _checks

from conftest import RUN, TINY, _corpus_dir, _tiny_teacher, _tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tiny shapes: see conftest


# ---- the evaluation set ---------------------------------------------------------------------------------------

def test_sts_pairs_are_well_formed():
    pairs = E.load_sts_pairs()
    assert 150 <= len(pairs) <= 250
    assert all(0.0 <= p.score <= 5.0 and p.sentence1.strip() and p.sentence2.strip() for p in pairs)
    assert len({(p.sentence1, p.sentence2) for p in pairs}) == len(pairs)
    hist = np.histogram([p.score for p in pairs], bins=[0, 1, 2, 3, 4, 5.01])[0]
    assert (hist >= 20).all(), hist  # every similarity band is represented


def test_mean_pool_and_spearman():
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 4, 3)).astype(np.float32)
    m = np.array([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = E.mean_pool(h, m)
    assert pooled.dtype == np.float32
    _checks.assert_close(pooled, np.stack([h[0, :2].mean(0), h[1].mean(0)]), atol=_checks.f32_tol(4, scale=4))

    # a bag-of-words "encoder" (one-hot rows): its cosine tracks word overlap, which the human scores follow
    tok = D.train_wordpiece([p.sentence1 + " " + p.sentence2 for p in E.load_sts_pairs()], vocab_size=600)
    V = tok.get_vocab_size()
    bow = lambda ids, mask: np.eye(V, dtype=np.float32)[ids] * mask[..., None]
    rho = E.sts_spearman(bow, tok)
    assert 0.4 < rho < 1.0
    noise = lambda ids, mask: rng.standard_normal((*ids.shape, 8)).astype(np.float32)
    assert abs(E.sts_spearman(noise, tok)) < 0.3  # 178 pairs: |rho| of noise has std 0.075
    assert E.embedding_agreement(bow, bow, tok, ["some text", "more text here"]) == pytest.approx(1.0)


# ---- the student ------------------------------------------------------------------------------------------------


def test_default_layer_maps():
    from minidistil.train.distill import default_layer_map
    assert default_layer_map(12, 6) == [0, 2, 4, 7, 9, 11]
    assert default_layer_map(6, 3) == [0, 2, 4]
    assert default_layer_map(6, 3, mlm=False) == [0, 3, 5]  # a sentence encoder's student ends on its last layer
    assert default_layer_map(12, 6, mlm=False) == [0, 2, 4, 7, 9, 11]
    assert default_layer_map(4, 2) == [0, 3]
    with pytest.raises(ValueError, match="student layers"):
        default_layer_map(4, 5)


def test_default_student_shapes():
    """DistilBERT's shape for an MLM teacher; two thirds of a sentence encoder's heads and depth (rounded up), whole
    heads of the teacher's width, never below one head or one layer."""
    from minidistil.train.distill import default_layer_map, default_student_shape
    assert default_student_shape(768, 12, 12, mlm=True) == (768, 6)            # BERT-base -> DistilBERT
    assert default_student_shape(384, 12, 6, mlm=False) == (256, 4)            # all-MiniLM-L6-v2
    assert default_layer_map(6, 4, mlm=False) == [0, 2, 3, 5]
    assert default_student_shape(384, 6, 12, mlm=False) == (256, 8)            # heads of 64: 4 of 6
    assert default_student_shape(32, 2, 4, mlm=False) == (16, 3)
    assert default_student_shape(16, 1, 1, mlm=False) == (16, 1)


@pytest.mark.parametrize("mlm", [True, False])
def test_student_copies_the_teacher(rng, mlm):
    from minidistil.train.distill import forward_outputs, make_student
    teacher = _tiny_teacher(mlm=mlm)
    # make token-type row 0 clearly non-zero, so folding it matters
    tt = teacher.get_parameter(("bert." if mlm else "") + "embeddings.token_type_embeddings.weight")
    tt.data[0] += 0.5
    ids = rng.integers(5, TINY["vocab_size"], size=(3, 9))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    t_out = teacher(ids, mask, output_hidden_states=True)

    student = make_student(teacher, layers=[0, 2])
    assert type(student).__name__ == ("DistilBertForMaskedLM" if mlm else "DistilBertModel")
    assert student.config.n_layers == 2 and student.config.dim == 32
    s_out = student(ids, mask, output_hidden_states=True)
    # the embedding output equals the teacher's EXACTLY: the teacher computes LN(w + (t0 + p)) and the student
    # LN(w + p') with p' = p + t0 folded in, the same float32 additions in the same order
    emb_t, emb_s = t_out.hidden_states[0].numpy(), s_out.hidden_states[0].numpy()
    assert np.array_equal(emb_s, emb_t)
    # the copied layers are the teacher's layers 0 and 2, weights bitwise
    sp, tp = dict(student.named_parameters()), dict(teacher.named_parameters())
    sb, tb = ("distilbert." if mlm else ""), ("bert." if mlm else "")
    assert np.array_equal(sp[f"{sb}transformer.layer.1.attention.q_lin.weight"].data,
                          tp[f"{tb}encoder.layer.2.attention.self.query.weight"].data)
    assert np.array_equal(sp[f"{sb}transformer.layer.1.output_layer_norm.bias"].data,
                          tp[f"{tb}encoder.layer.2.output.LayerNorm.bias"].data)
    # with every layer copied the student IS the teacher: same hidden states and logits (all names mapped)
    full = make_student(teacher, layers=[0, 1, 2, 3])
    t_logits, t_h = forward_outputs(teacher, ids, mask)
    s_logits, s_h = forward_outputs(full, ids, mask)
    tol = _checks.f32_tol(32 * 4, scale=2 / 0.02)
    _checks.assert_close(s_h.numpy(), t_h.numpy(), atol=tol, name="last hidden")
    if mlm:
        _checks.assert_close(s_logits.numpy(), t_logits.numpy(), atol=tol, name="logits")
    assert not any("token_type" in n or "pooler" in n for n, _ in full.named_parameters())


def test_student_saved_loads_in_transformers(oracle, tmp_path, rng):
    transformers = oracle("transformers")
    torch = oracle("torch")
    from minidistil.train.distill import make_student
    from minidistil.io.loading import save_pretrained
    student = make_student(_tiny_teacher(), layers=[0, 3])
    save_pretrained(student, tmp_path)
    hf = transformers.DistilBertForMaskedLM.from_pretrained(tmp_path).eval()
    ids = rng.integers(5, TINY["vocab_size"], size=(2, 7))
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.ones(2, 7, dtype=torch.long)).logits.numpy()
    ours = student(ids, np.ones_like(ids)).logits.numpy()
    _checks.assert_close(ours, ref, atol=_checks.f32_tol(32 * 2, scale=2 / 0.02), name="logits vs transformers")


# ---- the loss against torch -------------------------------------------------------------------------------------

def _torch_triple(torch, s_logits, t_logits, s_h, t_h, labels, mask, w):
    """The same formulas, written directly in torch."""
    Fn = torch.nn.functional
    rows = torch.tensor(mask.reshape(-1) != 0)
    V, C = s_logits.shape[-1], s_h.shape[-1]
    sl, tl = s_logits.reshape(-1, V)[rows], torch.tensor(t_logits).reshape(-1, V)[rows]
    T = w.temperature
    kl = Fn.kl_div(Fn.log_softmax(sl / T, -1), Fn.softmax(tl / T, -1), reduction="batchmean") * T * T
    mlm = Fn.cross_entropy(s_logits.reshape(-1, V), torch.tensor(labels.reshape(-1)), ignore_index=-100)
    sh, th = s_h.reshape(-1, C)[rows], torch.tensor(t_h).reshape(-1, C)[rows]
    cos = (1 - Fn.cosine_similarity(sh, th, dim=-1)).mean()
    mse = ((sh - th) ** 2).mean()
    m = torch.tensor(mask, dtype=torch.float32)[..., None]
    sp = (s_h * m).sum(1) / m.sum(1)
    tp = (torch.tensor(t_h) * m).sum(1) / m.sum(1)
    pool_cos = (1 - Fn.cosine_similarity(sp, tp, dim=-1)).mean()
    pool_mse = ((sp - tp) ** 2).mean()
    terms = {"ce": kl, "mlm": mlm, "cos": cos, "mse": mse, "pool_cos": pool_cos, "pool_mse": pool_mse}
    total = sum(getattr(w, "alpha_" + k) * v for k, v in terms.items())
    return total, {k: float(v.detach()) for k, v in terms.items()}


def test_triple_loss_and_gradients_match_torch(torch, rng):
    from minidistil.core.autograd import Tensor
    from minidistil.train.distill import LossWeights, distillation_loss
    B, T, V, C = 3, 6, 17, 8
    s_logits = (rng.standard_normal((B, T, V)) * 2).astype(np.float32)
    t_logits = (rng.standard_normal((B, T, V)) * 2).astype(np.float32)
    s_h = rng.standard_normal((B, T, C)).astype(np.float32)
    t_h = rng.standard_normal((B, T, C)).astype(np.float32)
    mask = np.ones((B, T), dtype=np.int64)
    mask[0, 4:] = 0
    mask[2, 1:] = 0
    labels = np.full((B, T), -100, dtype=np.int64)
    labels[0, 1], labels[1, 3], labels[1, 5] = 3, 16, 0
    w = LossWeights(alpha_ce=5.0, alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=0.5, alpha_pool_cos=0.7,
                    alpha_pool_mse=0.3, temperature=2.0)

    sl, sh = Tensor(s_logits, requires_grad=True), Tensor(s_h, requires_grad=True)
    total, terms = distillation_loss(sl, t_logits, sh, t_h, labels, mask, w)
    total.backward()
    tsl, tsh = torch.tensor(s_logits, requires_grad=True), torch.tensor(s_h, requires_grad=True)
    ref_total, ref_terms = _torch_triple(torch, tsl, t_logits, tsh, t_h, labels, mask, w)
    ref_total.backward()
    # float32 losses are means of sums over V (or C) terms of size ~|logits| / T: f32_tol(V, scale=10)
    tol = _checks.f32_tol(V * B * T, scale=10)
    for k in ref_terms:
        assert terms[k] == pytest.approx(ref_terms[k], abs=tol), k
    assert float(total.item()) == pytest.approx(float(ref_total), abs=tol * 10)
    _checks.assert_close(sl.grad, tsl.grad.numpy(), atol=_checks.f32_tol(V, scale=5), name="dlogits")
    _checks.assert_close(sh.grad, tsh.grad.numpy(), atol=_checks.f32_tol(C * T, scale=5), name="dhidden")
    # padding gets no gradient at all
    assert not sl.grad[0, 4:].any() and not sh.grad[2, 1:].any()


# ---- runs ----------------------------------------------------------------------------------------------------------


def _assert_decreased(rows, term, k=10):
    """The mean of the last k steps is below that of the first k by more than 3 standard errors of the difference
    of two k-step means: a decrease batch-to-batch noise cannot explain. The noise is measured on the last window
    (the first one also holds the decrease itself, which would inflate it)."""
    first = np.array([r[term] for r in rows[:k]])
    last = np.array([r[term] for r in rows[-k:]])
    se = np.sqrt(2.0 / k) * last.std(ddof=1)
    assert last.mean() < first.mean() - 3 * se, (term, first.mean(), last.mean(), se)


def test_tiny_run_lowers_every_loss_term(tmp_path):
    from minidistil.train.distill import distill
    corpus = _corpus_dir(tmp_path)
    tok = _tiny_tokenizer(corpus)
    report = distill(_tiny_teacher(init=0.2), tmp_path / "out", tokenizer=tok, corpus=[str(corpus)], steps=60,
                     student_layers=2, seed=1, **{**RUN, "evaluate": True})
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 61))
    for term in ("ce", "mlm", "cos"):
        _assert_decreased(rows, term)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "report.json", "loss_curve.png"):
        assert (tmp_path / "out" / f).exists(), f
    assert sorted(p.name for p in (tmp_path / "out.training").iterdir()) == ["checkpoint-00000055.npz",
                                                                          "checkpoint-00000060.npz"]  # the last two
    assert report["student_layers"] == 2 and report["teacher_layers"] == 4
    assert report["student_params"] < report["teacher_params"]
    for split in ("test", "dev"):
        assert -1 <= report[f"sts_{split}_student"] <= 1 and -1 <= report[f"sts_{split}_student_init"] <= 1
    assert report["sts_test_pairs"] >= 400 and report["sts_dev_pairs"] == 178
    assert 0 < report["held_out_mean_cosine"] <= 1 and -1 <= report["held_out_similarity_spearman"] <= 1


def test_distilled_student_beats_its_initial_sts_score(tmp_path, minilm_dir):
    """The real teacher (all-MiniLM-L6-v2) and a 1-layer student of its width copied from one of its layers: 20
    steps that pull the student's hidden states and mean-pooled embeddings towards the teacher's raise the
    student's score on the development pairs. The run is deterministic (fixed seed, data order and masks), so the
    margin asserted only has to cover float32 rounding."""
    from minidistil.train.distill import distill
    corpus = _corpus_dir(tmp_path)
    report = distill(str(minilm_dir), tmp_path / "out", corpus=[str(corpus)], steps=20, student_layers=1, seed=1,
                     hidden_size=384, **{**RUN, "evaluate": True, "lr": 1e-3})   # the teacher's width
    assert report["sts_dev_teacher"] > report["sts_dev_student_init"] + 0.05
    assert report["sts_dev_student"] > report["sts_dev_student_init"] + 0.005, report


def test_no_mlm_teacher_trains_hidden_terms(tmp_path, capsys):
    from minidistil.train.distill import distill
    corpus = _corpus_dir(tmp_path, 20)
    tok = _tiny_tokenizer(corpus)
    distill(_tiny_teacher(mlm=False, init=0.2), tmp_path / "out", tokenizer=tok, corpus=[str(corpus)], steps=30,
            seed=2, **{**RUN, "progress": True})
    assert "has no MLM head" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert "ce" not in rows[0] and "mlm" not in rows[0]
    for term in ("cos", "pool_cos", "pool_mse"):
        _assert_decreased(rows, term)


def test_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from minidistil.io import checkpoint as ck
    from minidistil.train import distill as M
    from minidistil.train.run import Diverged
    corpus = _corpus_dir(tmp_path, 20)
    tok = _tiny_tokenizer(corpus)
    teacher = _tiny_teacher()
    real = M.forward_outputs
    calls = {"teacher": 0}

    def poisoned(model, ids, mask, **kw):
        logits, h = real(model, ids, mask, **kw)
        if model is teacher:
            calls["teacher"] += 1
            if calls["teacher"] == 8:  # the teacher's 8th forward = step 8
                h.data[...] = np.nan
        return logits, h

    monkeypatch.setattr(M, "forward_outputs", poisoned)
    with pytest.raises(Diverged, match=r"step 8: the loss is nan.*step 5\)"):
        M.distill(teacher, tmp_path / "out", tokenizer=tok, corpus=[str(corpus)], steps=20, seed=0, **RUN)
    assert ck.load_checkpoint(tmp_path / "out.training" / "checkpoint-00000005.npz").step == 5
    assert not (tmp_path / "out.training" / "lock").exists()                # the lock went with the run


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from tokenizers import Tokenizer
    from conftest import _tiny_teacher, RUN
    from minidistil.train.distill import distill
    corpus, out, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    tok = Tokenizer.from_file(corpus + "/../tokenizer.json")
    distill(_tiny_teacher(init=0.2), out, tokenizer=tok, corpus=[corpus], steps=24,
            student_layers=2, seed=3, resume=resume, **{{**RUN, "checkpoint_every": 4}})
""")


def test_resume_after_sigkill_gives_the_same_losses(tmp_path):
    corpus = _corpus_dir(tmp_path, 30)
    # one vocabulary for all three runs (WordPiece training breaks ties in hash order: not reproducible across
    # processes)
    _tiny_tokenizer(corpus).save(str(tmp_path / "tokenizer.json"))
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, NUMBA_NUM_THREADS="1")
    run = lambda out, resume: [sys.executable, str(script), str(corpus), str(out), "1" if resume else "0"]

    # the uninterrupted run
    subprocess.run(run(tmp_path / "straight", False), check=True, env=env, timeout=600)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert len(straight) == 24

    # a run killed part-way (after its second checkpoint, before the end), then resumed
    out = tmp_path / "killed"
    proc = subprocess.Popen(run(out, False), env=env)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        if len(lines) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: nothing was tested"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len((out / "metrics.jsonl").read_text().splitlines())
    assert 10 <= killed_at < 24
    subprocess.run(run(out, True), check=True, env=env, timeout=600)
    resumed = (out / "metrics.jsonl").read_text().splitlines()
    # identical, bit for bit: every loss term, the learning rate, the gradient norm, the token count
    assert resumed == straight


def test_time_budget_and_cli_flags(tmp_path, monkeypatch):
    import argparse
    import math

    from minidistil.apps.commands import add_distill
    from minidistil.train.distill import distill
    corpus = _corpus_dir(tmp_path, 20)
    tok = _tiny_tokenizer(corpus)
    report = distill(_tiny_teacher(), tmp_path / "out", tokenizer=tok, corpus=[str(corpus)], time_budget=4.0,
                     **{**RUN, "checkpoint_every": 0})
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    n, planned = report["steps"], report["schedule"]["planned_steps"]
    # the schedule was re-planned to end where the budget did: the last plan held the updates done, or one more
    # when the last update took longer than the recent ones (run.schedule_complete's tolerance), and the last
    # update took its learning rate from that plan's decay
    assert n == len(rows) >= 3 and report["schedule"]["complete"] and 0 <= planned - n <= max(1, planned // 100)
    warmup = math.ceil(RUN["warmup"] * planned)
    assert rows[-1]["lr"] == pytest.approx(RUN["lr"] * (planned - n + 1) / (planned - warmup))
    assert report["time_budget_seconds"] == 4.0 and report["setup_seconds"] >= 0 and report["eval_seconds"] >= 0

    parser = argparse.ArgumentParser()
    add_distill(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["distill", "--teacher", "t", "--out", "o", "--layer-map", "0,2,4", "--steps", "7",
                              "--alpha-cos", "0.5", "--temperature", "3", "--batch-size", "4", "--max-len", "16",
                              "--lr", "1e-4", "--seed", "9", "--resume", "--corpus", "a.txt", "b/",
                              "--time-budget", "2"])
    assert (args.layer_map, args.steps, args.alpha_cos, args.temperature, args.batch_size, args.max_len, args.lr,
            args.seed, args.resume, args.corpus, args.time_budget, args.out_dir) == \
        ([0, 2, 4], 7, 0.5, 3.0, 4, 16, 1e-4, 9, True, ["a.txt", "b/"], 2.0, "o")
    assert args.run.__name__ == "run_distill"


# ---- the student as a sentence-transformers model ---------------------------------------------------------------

def _st_teacher(tmp_path, corpus):
    """A tiny BERT sentence encoder folder with the sentence-transformers files of all-MiniLM-L6-v2 (mean pooling,
    Normalize, max_seq_length 48)."""
    from minidistil.io.loading import save_pretrained
    from minidistil.io.tokenizer import Tokenizer
    from tokenizers import processors
    folder = tmp_path / "teacher"
    tk = _tiny_tokenizer(corpus)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(  # [CLS] text [SEP], as a real BERT tokenizer frames it
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    save_pretrained(_tiny_teacher(mlm=False, init=0.2), folder, tokenizer=Tokenizer(tk))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {}}))
    return folder


def test_student_is_a_sentence_transformers_model(tmp_path, oracle):
    """The student folder of a sentence-transformers teacher loads in sentence-transformers and in transformers,
    and both give the embeddings `minidistil embed` gives (mean pooling, normalised) at the teacher's length."""
    st = oracle("sentence_transformers")
    transformers = oracle("transformers")
    torch = oracle("torch")
    from minidistil.train.distill import distill
    from minidistil.apps.pipelines import pipeline
    corpus = _corpus_dir(tmp_path, 20)
    teacher = _st_teacher(tmp_path, corpus)
    out = tmp_path / "student"
    distill(str(teacher), out, corpus=[str(corpus)], steps=4, seed=0, **RUN)
    for f in ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json",
              "config_sentence_transformers.json"):
        assert (out / f).is_file(), f
    assert (out / "2_Normalize").is_dir()
    texts = ["The cat sat on the mat.", "for loops and while loops", "x",
             "A much longer sentence about the import system, " * 6]
    ours = pipeline("sentence-embeddings", str(out))(texts)                       # (N, C), normalised
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    model = st.SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 48
    theirs = model.encode(texts, convert_to_numpy=True)
    assert (np.sum(ours * theirs, axis=1) >= 0.9999).all()
    # transformers: the bare model, mean-pooled and normalised by hand, truncated at the same length
    hf = transformers.AutoModel.from_pretrained(str(out)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    enc = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        h = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.numpy()
    from minidistil.core.functional import mean_pool
    e = mean_pool(h, enc["attention_mask"].numpy())
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert (np.sum(ours * e, axis=1) >= 0.9999).all()


def test_plain_teacher_gives_no_sentence_transformers_files(tmp_path):
    from minidistil.train.distill import write_sentence_transformers_files
    assert write_sentence_transformers_files(tmp_path, tmp_path / "out", 32) == []
    assert not (tmp_path / "out").exists()
