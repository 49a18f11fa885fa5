"""Students narrower than their teacher (minidistil.train.narrow): the shape rules, the projected initialisation
against a
random one, and a narrow student saved and loaded by minidistil, transformers and sentence-transformers, without
the training-only width map.

The teachers are tiny random BERTs built here (conftest's TINY: C = 32, 2 heads of 16, FFN 64, 4 layers); nothing
is downloaded.
"""
import json

import numpy as np
import pytest

from minidistil.kernels import _checks

from conftest import RUN, TINY, _corpus_dir, _tiny_teacher
from test_distill import _st_teacher

pytestmark = pytest.mark.usefixtures("one_numba_thread")  # tiny shapes: see conftest


def _basis(teacher, rng, n=48):
    from minidistil.train.narrow import hidden_moment, principal_basis
    seqs = [rng.integers(5, TINY["vocab_size"], size=rng.integers(6, 24)) for _ in range(n)]
    return principal_basis(hidden_moment(teacher, seqs, pad_id=0))


def test_student_shape_rules():
    from minidistil.train.narrow import student_shape
    assert student_shape(384, 12, 1536, 256) == (256, 8, 1024)     # MiniLM: heads of 32 kept, FFN 4H
    assert student_shape(768, 12, 3072, 256) == (256, 4, 1024)     # BERT-base: 4 heads of 64
    assert student_shape(384, 12, 1536, 192, num_heads=8, intermediate_size=500) == (192, 8, 500)  # heads of 24
    for args, match in [((384, 12, 1536, 200), "head width 32"), ((384, 12, 1536, 512), "--hidden-size"),
                        ((384, 12, 1536, 256, 3), "does not divide"), ((384, 12, 1536, 256, 4), "width at most 32"),
                        ((384, 12, 1536, 256, None, 2000), "--intermediate-size")]:
        with pytest.raises(ValueError, match=match):
            student_shape(*args)


def test_identity_basis_is_the_plain_copy(rng):
    """With U = I (C x C) and every head kept, every projection rule is the identity (g' = sqrt(C/C) (I*I)^T g = g):
    the projected state equals the copied one bit for bit, so the rules' index bookkeeping is right."""
    from minidistil.train.distill import make_student
    teacher = _tiny_teacher(mlm=True, init=0.2)
    plain = make_student(teacher, layers=[0, 2]).state_dict()
    proj = make_student(teacher, layers=[0, 2], basis=np.eye(32)).state_dict()
    assert plain.keys() == proj.keys()
    for n in plain:
        assert np.array_equal(plain[n], proj[n]), n


@pytest.mark.parametrize("mlm", [False, True])
@pytest.mark.parametrize("H,heads", [(24, 2), (16, None)])
def test_projected_init_beats_a_random_init(rng, mlm, H, heads):
    """The narrow student's first forward, every teacher layer kept, against the teacher's hidden states projected
    onto U: its mean cosine per layer (embedding output and each layer) beats a random init of the same config by
    at least 0.3 at every layer and by 0.5 on the mean over the layers. Why these margins: a random init's states
    are unrelated to the teacher's, so its cosines lie near 0 (|cos| <= 0.2 on these 4 x 20 tokens, asserted),
    while the projection keeps most of the teacher's energy (the basis's share is asserted too) and loses some
    through the layer norms, more with depth (minidistil.train.narrow, point 3). Drawn with four seeds of the test's
    generator, the projected init's cosines ran from 0.28 (last layer, H = 16) to 0.99 (embedding output), the
    smallest per-layer gap over the random init was 0.35 and the smallest mean gap 0.61."""
    from minidistil.models.distilbert import DistilBertForMaskedLM, DistilBertModel
    from minidistil.train.distill import make_student
    from minidistil.train.narrow import projected_agreement
    teacher = _tiny_teacher(mlm=mlm, init=0.2)
    U, evals = _basis(teacher, rng)
    U = U[:, :H]
    assert np.allclose(U.T @ U, np.eye(H), atol=1e-12)                           # orthonormal columns
    assert evals[:H].sum() / evals.sum() > 0.7                                    # most of the energy is kept
    layers = [0, 1, 2, 3]
    student = make_student(teacher, layers, basis=U, num_heads=heads)
    assert (student.config.dim, student.config.hidden_dim) == (H, H * 2)         # the teacher's FFN ratio, 64 / 32
    ids = rng.integers(5, TINY["vocab_size"], size=(4, 20))
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    ours = np.array(projected_agreement(teacher, student, U, layers, ids, mask))
    cls = DistilBertForMaskedLM if mlm else DistilBertModel
    random = np.array(projected_agreement(teacher, cls.from_config(student.config, seed=1), U, layers, ids, mask))
    assert (np.abs(random) <= 0.2).all(), random
    assert (ours >= random + 0.3).all() and ours.mean() >= random.mean() + 0.5, (ours, random)


def test_narrow_student_saved_loads_in_transformers(oracle, tmp_path, rng):
    transformers = oracle("transformers")
    torch = oracle("torch")
    from minidistil.train.distill import make_student
    from minidistil.io.loading import from_pretrained, save_pretrained
    teacher = _tiny_teacher(mlm=True, init=0.2)
    U = _basis(teacher, rng)[0][:, :16]
    student = make_student(teacher, layers=[0, 3], basis=U)
    save_pretrained(student, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["dim"], config["n_heads"], config["hidden_dim"], config["model_type"]) == (16, 1, 32, "distilbert")
    ids = rng.integers(5, TINY["vocab_size"], size=(2, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    ours = student(ids, mask).logits.numpy()
    again = from_pretrained(tmp_path)(ids, mask).logits.numpy()
    assert np.array_equal(ours, again)                                         # the same weights, the same code
    hf = transformers.DistilBertForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    # float32 sums of 16- and 32-term products of O(1) values, logits up to ~|E| * 16: the parity tests' bound
    _checks.assert_close(ours, ref, atol=_checks.f32_tol(32 * 2, scale=2 / 0.02), name="logits vs transformers")


@pytest.mark.parametrize("width_loss", ["learned", "pca"])
def test_narrow_sentence_encoder_run(tmp_path, oracle, width_loss):
    """A 16-wide student distilled from a 32-wide sentence-transformers teacher: its folder is a standard
    DistilBERT that sentence-transformers loads, whose 16-dimensional embeddings equal minidistil's (cosine >=
    0.9999 as the full-width test asks); the learned width map is in the training state (checkpoints) and nowhere
    in the saved model."""
    st = oracle("sentence_transformers")
    from minidistil.io import checkpoint as ck
    from minidistil.train.distill import distill
    from minidistil.apps.pipelines import pipeline
    from safetensors.numpy import load_file
    corpus = _corpus_dir(tmp_path, 20)
    teacher = _st_teacher(tmp_path, corpus)
    out = tmp_path / "student"
    report = distill(str(teacher), out, corpus=[str(corpus)], steps=6, seed=0, hidden_size=16, pca_texts=40,
                     student_layers=2, width_loss=width_loss, **{**RUN, "checkpoint_every": 3})
    assert (report["student_dim"], report["teacher_dim"], report["width_loss"]) == (16, 32, width_loss)
    assert 0.7 < report["pca_energy"] <= 1 and len(report["init_projected_cos"]) == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(np.isfinite(r["loss"]) for r in rows)
    saved = load_file(str(out / "model.safetensors"))
    assert not any("width_map" in n for n in saved)
    assert saved["embeddings.word_embeddings.weight"].shape == (TINY["vocab_size"], 16)
    state = ck.load_checkpoint(sorted((tmp_path / "student.training").glob("checkpoint-*.npz"))[-1])
    in_state = sorted(n for n in state.model if n.startswith("width_map."))
    assert in_state == (["width_map.bias", "width_map.weight"] if width_loss == "learned" else [])
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 16
    texts = ["The cat sat on the mat.", "for loops and while loops", "x"]
    ours = pipeline("sentence-embeddings", str(out))(texts)
    theirs = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (3, 16)
    assert (np.sum(ours * theirs, axis=1) >= 0.9999).all()


def test_resume_of_a_learned_width_map(tmp_path):
    """The learned map is part of the training state: a run resumed from its step-3 checkpoint gives the same
    losses as the run that went straight through (same process, same threads: bit for bit)."""
    import shutil

    from minidistil.train.distill import distill
    corpus = _corpus_dir(tmp_path, 20)
    teacher = _st_teacher(tmp_path, corpus)
    kw = dict(corpus=[str(corpus)], seed=0, steps=6, hidden_size=16, pca_texts=40, width_loss="learned",
              **{**RUN, "checkpoint_every": 3})
    distill(str(teacher), tmp_path / "straight", **kw)
    shutil.copytree(tmp_path / "straight", tmp_path / "cut")
    shutil.copytree(tmp_path / "straight.training", tmp_path / "cut.training")
    (tmp_path / "cut.training" / "checkpoint-00000006.npz").unlink()            # back to the step-3 checkpoint
    distill(str(teacher), tmp_path / "cut", resume=True, **kw)
    lines = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("straight", "cut")]
    assert len(lines[0]) == 6 and lines[1] == lines[0]


def test_cli_flags_and_bad_widths(tmp_path):
    import argparse

    from minidistil.apps.commands import add_distill
    from minidistil.train.distill import distill
    parser = argparse.ArgumentParser()
    add_distill(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["distill", "--hidden-size", "256", "--num-heads", "8", "--intermediate-size", "1000",
                              "--width-loss", "learned", "--pca-texts", "100"])
    assert (args.hidden_size, args.num_heads, args.intermediate_size, args.width_loss, args.pca_texts) == \
        (256, 8, 1000, "learned", 100)
    assert parser.parse_args(["distill"]).width_loss == "pca"
    for bad in (["--hidden-size", "0"], ["--width-loss", "both"], ["--num-heads", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["distill", *bad])
    corpus = _corpus_dir(tmp_path, 10)
    teacher = _st_teacher(tmp_path, corpus)
    with pytest.raises(ValueError, match=r"--hidden-size: expected 1 \.\. 32"):
        distill(str(teacher), tmp_path / "wide", corpus=[str(corpus)], steps=2, hidden_size=48, **RUN)
    with pytest.raises(ValueError, match="not a multiple of the teacher's head width 16"):
        distill(str(teacher), tmp_path / "odd", corpus=[str(corpus)], steps=2, hidden_size=20, **RUN)


def test_layer_pairs_and_the_layer_wise_term(rng):
    """The layer-wise term pairs the embedding outputs and each student layer but the last with the teacher layer
    it copies; its value is the mean over the pairs of the mean 1 - cos over real tokens (NumPy, float64: the
    kernel's float32 sums of C = 32 products and 2 x 12 tokens, a few u each: 1e-5 absolute); a full-width
    student has it 0 while it copies the layers in order from the first (the same states), not after a skip."""
    from minidistil.core.autograd import Tensor
    from minidistil.train.distill import (LossWeights, distillation_loss_terms, forward_outputs, layer_pairs,
                                          make_student)
    assert layer_pairs([0, 3, 5]) == [(0, 0), (1, 1), (2, 4)]
    assert layer_pairs([2]) == [(0, 0)]
    teacher = _tiny_teacher(mlm=False, init=0.2)
    ids = rng.integers(5, TINY["vocab_size"], size=(2, 12))
    mask = np.ones((2, 12), dtype=np.int64)
    mask[1, 8:] = 0
    w = LossWeights.defaults(mlm=False)
    w.alpha_layers = 1.0
    _, t_states = forward_outputs(teacher, ids, mask, every_layer=True)
    assert len(t_states) == TINY["num_hidden_layers"] + 1
    for layers, exact in (([0, 1, 2, 3], True), ([0, 2], True), ([1, 3], False)):
        student = make_student(teacher, layers)
        _, s_states = forward_outputs(student, ids, mask, every_layer=True)
        pairs = layer_pairs(layers)
        s_layers = [s_states[i] for i, _ in pairs]
        t_layers = [t_states[j].data for _, j in pairs]
        _, terms = distillation_loss_terms(None, None, s_states[-1], t_states[-1].data, None, mask, w,
                                           s_layers=s_layers, t_layers=t_layers)
        real = mask.reshape(-1) != 0
        want = 0.0
        for s, t in zip(s_layers, t_layers):
            a, b = (np.asarray(x.data if isinstance(x, Tensor) else x, np.float64).reshape(24, -1)[real]
                    for x in (s, t))
            want += np.mean(1 - np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        want /= len(pairs)
        got = float(terms["layers"].item())
        assert abs(got - want) <= 1e-5, (layers, got, want)
        assert (want <= 1e-6) if exact else (want > 1e-3), (layers, want)
    with pytest.raises(ValueError, match="alpha_layers"):
        distillation_loss_terms(None, None, s_states[-1], t_states[-1].data, None, mask, w)


def test_frozen_word_embeddings_stay_as_copied(tmp_path):
    """--freeze-embeddings: after a short run with the layer-wise term, the saved student's word embeddings are
    the teacher's, bit for bit (full width: the copy is exact), while its layers moved; the optimizer keeps no
    state for them."""
    from minidistil.io import checkpoint as ck
    from minidistil.io.loading import from_pretrained
    from minidistil.train.distill import LossWeights, distill
    from safetensors.numpy import load_file
    corpus = _corpus_dir(tmp_path, 20)
    teacher = _st_teacher(tmp_path, corpus)
    w = LossWeights.defaults(mlm=False)
    w.alpha_layers = 1.0
    out = tmp_path / "student"
    distill(str(teacher), out, corpus=[str(corpus)], steps=4, seed=0, freeze_embeddings=True, weights=w,
            hidden_size=TINY["hidden_size"],
            **{**RUN, "checkpoint_every": 4})
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["layers"]) and r["layers"] > 0 for r in rows)
    t = from_pretrained(teacher).state_dict()
    s = load_file(str(out / "model.safetensors"))
    assert np.array_equal(s["embeddings.word_embeddings.weight"], t["embeddings.word_embeddings.weight"])
    assert not np.array_equal(s["transformer.layer.0.ffn.lin1.weight"], t["encoder.layer.0.intermediate.dense.weight"])
    state = ck.load_checkpoint(sorted((tmp_path / "student.training").glob("checkpoint-*.npz"))[-1])
    assert state.optimizer["m"] and not any("word_embeddings" in n for n in state.optimizer["m"])


def test_int8_targets(tmp_path):
    """--teacher-int8: the first step's loss terms come from the int8 copy's outputs: near the float32 teacher's
    (int8 rounding of every Linear: a few 1e-3 relative on the tiny teacher) but not equal to them, so the int8
    model is the one that ran; the student is the same copy either way. And the defaults: int8 targets where the
    VNNI kernel runs, the learning rate 1e-3 for a narrower student, 5e-4 at the teacher's width."""
    from minidistil.train.distill import distill
    corpus = _corpus_dir(tmp_path, 20)
    teacher = _st_teacher(tmp_path, corpus)
    rows = {}
    for int8 in (False, True):
        out = tmp_path / f"s{int8}"
        report = distill(str(teacher), out, corpus=[str(corpus)], steps=1, seed=0, hidden_size=16, pca_texts=40,
                         **{**RUN, "checkpoint_every": 0, "teacher_int8": int8, "lr": None})
        rows[int8] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert report["lr"] == 1e-3                                    # the narrow student's default
    for term in ("cos", "pool_cos", "pool_mse"):
        f32, q = rows[False][term], rows[True][term]
        assert f32 != q and abs(q - f32) <= 0.05 * abs(f32) + 1e-4, (term, f32, q)
    # the default: int8 targets where the CPU runs the VNNI kernel (the faster int8 forward), else float32
    from minidistil.kernels.int8 import cpu_kernel
    report = distill(str(teacher), tmp_path / "auto", corpus=[str(corpus)], steps=1, seed=0,
                     hidden_size=TINY["hidden_size"],
                     **{**RUN, "checkpoint_every": 0, "teacher_int8": None, "lr": None})
    assert report["teacher_int8"] is (cpu_kernel() == "vnni") and report["lr"] == 5e-4      # full width


def test_basis_weightings(rng):
    """hidden_moment's weightings: "all" is the sum of the per-state moments, "last" the last state's alone (the
    moment of the last hidden states, recomputed here from the model's output), "equal" the per-state moments at
    unit trace each (trace = the number of states); an unknown one is named."""
    from minidistil.core.autograd import no_grad
    from minidistil.train.narrow import hidden_moment
    teacher = _tiny_teacher(mlm=False, init=0.2)
    seqs = [rng.integers(5, TINY["vocab_size"], size=n) for n in (7, 12, 9)]
    M_all, M_last, M_equal = (hidden_moment(teacher, seqs, 0, batch_size=3, weighting=w)   # one batch, as below
                              for w in ("all", "last", "equal"))
    from minidistil.train import data as D
    ids, mask = D.pad_batch(seqs, 0)
    with no_grad():
        states = teacher(ids, mask, output_hidden_states=True).hidden_states
    per = [np.asarray(h.numpy(), np.float64)[mask.astype(bool)] for h in states]
    per = [X.T @ X for X in per]
    # the same float32 states (one batch both ways), float64 sums perhaps in another order: 1e-12 of the scale
    scale = max(np.abs(M).max() for M in per)
    assert np.allclose(M_all, sum(per), rtol=0, atol=1e-12 * scale * len(per))
    assert np.allclose(M_last, per[-1], rtol=0, atol=1e-12 * scale)
    assert np.isclose(np.trace(M_equal), len(per), rtol=1e-12)
    with pytest.raises(ValueError, match="pca-weighting"):
        hidden_moment(teacher, seqs, 0, weighting="first")
