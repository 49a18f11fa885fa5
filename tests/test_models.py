"""The BERT and DistilBERT model classes against `transformers`.

1. Parity with torch (needs torch + transformers; skipped locally without them, REQUIRED in CI): for every class, a
   tiny random transformers model built here, saved as safetensors, loaded with minidistil.io.loading; outputs, all
   hidden states and attentions compared, then the gradient of sum(output * w) for every parameter by name, then
   the loss with labels and its gradients.
2. The same checks against the committed dumps in tests/data/tiny (written by make_reference_dumps.py): no torch.
3. The model plumbing: names, tied weights, state dicts, shape errors, train / eval, no_grad, config round trips.

Tolerances: outputs 1e-5 absolute, gradients 1e-4 relative to the gradient's max abs. Why they hold:
float32 rounds at eps = 1.2e-7; a 2-layer width-32 encoder chains ~30 kernels, each with reductions of <= 37 terms
of magnitude <= ~3 (LayerNorm output), i.e. errors ~16 eps sqrt(37) * 3 ~ 3.5e-5 worst case per reduction by the
f32_tol rule, far less in practice (random signs); torch's float32 has the same rounding, so the two differ by a
few eps per op: ~1e-6 on the outputs. Gradients pass the same chain backwards; 1e-4 relative leaves 100x margin.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import make_reference_dumps as ref
from minidistil.core import autograd, config as cfgmod, nn
from minidistil.core.autograd import Tensor, no_grad
from minidistil.kernels import _checks

OUT_ATOL = 1e-5
GRAD_RTOL = 1e-4


def _classes():
    import minidistil
    return minidistil.MODEL_CLASSES


def _load(folder, arch):
    from minidistil.io.loading import from_pretrained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint of that very class: nothing may be missing or unexpected
        return from_pretrained(folder, cls=_classes()[arch])


def _check_against(model, arch: str, rec: dict[str, np.ndarray]):
    """Run our model on the recorded inputs and compare everything recorded."""
    inputs = {k.split("/", 1)[1]: v for k, v in rec.items() if k.startswith("input/")}
    plain = {k: v for k, v in inputs.items() if k not in ref.LABEL_KEYS}
    model.zero_grad()
    out = model(**plain, output_hidden_states=True, output_attentions=True)
    objective = None
    for name in ref.output_names(arch):
        y = getattr(out, name)
        assert isinstance(y, Tensor) and y.dtype == np.float32, name
        _checks.assert_close(np.asarray(y), rec[f"out/{name}"], atol=OUT_ATOL, name=f"{arch} {name}")
        term = (y * rec[f"w/{name}"]).sum()
        objective = term if objective is None else objective + term
    n_hidden = sum(k.startswith("hidden/") for k in rec)
    assert len(out.hidden_states) == n_hidden
    for i, h in enumerate(out.hidden_states):
        _checks.assert_close(np.asarray(h), rec[f"hidden/{i}"], atol=OUT_ATOL, name=f"{arch} hidden_states[{i}]")
    for i, a in enumerate(out.attentions):
        _checks.assert_close(np.asarray(a), rec[f"attention/{i}"], atol=OUT_ATOL, name=f"{arch} attentions[{i}]")

    objective.backward()
    ours = dict(model.named_parameters())
    theirs = {k[len("grad/"):]: v for k, v in rec.items() if k.startswith("grad/")}
    assert sorted(ours) == sorted(theirs), "parameter names differ from transformers' named_parameters()"
    for name, g in theirs.items():
        _check_grad(ours[name], g, f"{arch} d(sum out*w)/d {name}", theirs)

    if "loss" in rec:
        model.zero_grad()
        loss = model(**inputs).loss
        assert loss.shape == () and loss.dtype == np.float32
        np.testing.assert_allclose(loss.item(), float(rec["loss"]), rtol=1e-5, atol=OUT_ATOL,
                                   err_msg=f"{arch} loss")
        loss.backward()
        loss_grads = {k[len("loss_grad/"):]: v for k, v in rec.items() if k.startswith("loss_grad/")}
        for name, g in loss_grads.items():
            _check_grad(ours[name], g, f"{arch} dloss/d {name}", loss_grads)


# Some gradients are exactly 0 in exact arithmetic: the key bias (q.b_k is the same for every key of a query row and
# softmax removes a constant), or the last LayerNorm bias under the QA loss (the start/end logit gradients of a row
# sum to 0 over tokens). Both frameworks then return rounding noise, ~eps * the size of the cancelling terms, which
# relative to its own max abs is O(1). So the tolerance has a floor: GRAD_FLOOR times the largest gradient of the
# whole backward pass (the scale of the terms being summed), ~1e-7 here, 30x the noise seen and far below any real
# gradient of these models.
GRAD_FLOOR = 1e-6


def _grad_floor(all_expected: dict) -> float:
    return GRAD_FLOOR * max(np.abs(g).max(initial=0.0) for g in all_expected.values())


def _check_grad(p, expected, what, all_expected):
    if not p.requires_grad:
        return
    got = np.zeros_like(expected) if p.grad is None else np.asarray(p.grad)
    assert got.dtype == np.float32, what
    scale = np.abs(expected).max(initial=0.0)
    _checks.assert_close(got, expected, atol=max(GRAD_RTOL * scale, _grad_floor(all_expected)), name=what)


# ---------------------------------------------------------------------------------------------------------------
# 1. parity with transformers, built on the fly

PARITY_CASES = [(a, None) for a in ref.ARCHS] + [
    ("BertForSequenceClassification", "regression"),
    ("BertForSequenceClassification", "multi_label_classification"),
    ("DistilBertForSequenceClassification", "regression"),
    ("DistilBertForSequenceClassification", "multi_label_classification"),
]


@pytest.mark.torch
@pytest.mark.parametrize("arch,problem_type", PARITY_CASES, ids=[f"{a}-{p}" if p else a for a, p in PARITY_CASES])
def test_parity_with_transformers(oracle, torch, tmp_path, arch, problem_type):
    tf = oracle("transformers")
    hf = ref.build_hf(torch, tf, arch, ref.TEST_SIZE, problem_type)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    inputs = ref.make_inputs(arch, ref.TEST_SIZE["vocab"], problem_type=problem_type)
    rec = ref.run_hf(torch, hf, arch, inputs)
    model = _load(tmp_path, arch)
    assert not model.training
    _check_against(model, arch, rec)


# ---------------------------------------------------------------------------------------------------------------
# 2. the committed dumps (no torch)

DUMPED = sorted(p.name for p in ref.DATA.iterdir()) if ref.DATA.is_dir() else []


def test_every_class_has_a_dump():
    assert DUMPED == sorted(ref.ARCHS), "run tests/make_reference_dumps.py"


@pytest.mark.parametrize("arch", DUMPED)
def test_against_committed_dump(arch):
    folder = ref.DATA / arch
    with np.load(folder / "reference.npz") as f:
        rec = dict(f)
    _check_against(_load(folder, arch), arch, rec)


# ---------------------------------------------------------------------------------------------------------------
# 3. plumbing

def _tiny(arch="DistilBertForMaskedLM", **kw):
    classes = _classes()
    if arch.startswith("Bert"):
        config = cfgmod.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=24, max_position_embeddings=16, **kw)
    else:
        config = cfgmod.DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=24,
                                         max_position_embeddings=16, **kw)
    return classes[arch].from_config(config, seed=0)


def test_registry_lists_every_class():
    assert sorted(_classes()) == sorted(ref.ARCHS)
    for name, cls in _classes().items():
        assert cls.__name__ == name and cls.base_model_prefix in ("bert", "distilbert")


@pytest.mark.parametrize("arch,tied,source", [
    ("BertForMaskedLM", "cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"),
    ("BertForMaskedLM", "cls.predictions.decoder.bias", "cls.predictions.bias"),
    ("DistilBertForMaskedLM", "vocab_projector.weight", "distilbert.embeddings.word_embeddings.weight"),
])
def test_tied_weights_are_one_parameter(arch, tied, source):
    m = _tiny(arch)
    names = [n for n, _ in m.named_parameters()]
    assert source in names and tied not in names and len(names) == len(set(names))
    assert m.get_parameter(tied) is m.get_parameter(source)
    assert sorted(m.state_dict()) == sorted(names)
    # one array: a change through the source is seen through the tied name, and gradients meet in one .grad
    m.get_parameter(source).data[0, ...] = 7.0
    assert np.all(m.get_parameter(tied).data[0, ...] == 7.0)


def test_load_state_dict_round_trip_and_errors():
    a, b = _tiny("DistilBertForSequenceClassification"), _tiny("DistilBertForSequenceClassification")
    for p in b.parameters():
        p.data[...] = 0.0
    missing, unexpected = b.load_state_dict(a.state_dict())
    assert missing == [] and unexpected == []
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and pa.data is not pb.data and np.array_equal(pa.data, pb.data)

    state = dict(a.state_dict())
    state["classifier.weight"] = np.zeros((5, 16), np.float32)
    with pytest.raises(ValueError, match=r"classifier\.weight.*\(5, 16\).*\(2, 16\)"):
        b.load_state_dict(state)

    state = dict(a.state_dict())
    del state["classifier.bias"]
    state["extra.thing"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="missing.*classifier.bias.*unexpected.*extra.thing"):
        b.load_state_dict(state)
    missing, unexpected = b.load_state_dict(state, strict=False)
    assert missing == ["classifier.bias"] and unexpected == ["extra.thing"]

    # float64 / float16 checkpoints are cast into the float32 parameters
    b.load_state_dict({k: v.astype(np.float64) for k, v in a.state_dict().items()})
    assert all(p.dtype == np.float32 for p in b.parameters())


def test_old_checkpoint_with_tied_copy_loads():
    m = _tiny("BertForMaskedLM")
    state = dict(m.state_dict())
    state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias") + 1.0  # an old name for the bias
    fresh = _tiny("BertForMaskedLM")
    missing, unexpected = fresh.load_state_dict(state)
    assert missing == [] and unexpected == []
    bias = "cls.predictions.decoder.bias"
    assert np.array_equal(fresh.get_parameter(bias).data, state[bias])


def test_init_is_hf_like():
    m = _tiny("BertForMaskedLM")
    sd = m.state_dict()
    emb = sd["bert.embeddings.word_embeddings.weight"]
    assert np.all(emb[0] == 0.0)  # the padding row
    assert abs(emb[1:].std() - 0.02) < 0.004
    assert np.all(sd["bert.encoder.layer.0.attention.output.LayerNorm.weight"] == 1.0)
    assert np.all(sd["bert.encoder.layer.0.intermediate.dense.bias"] == 0.0)
    assert all(v.dtype == np.float32 for v in sd.values())


def test_sinusoidal_positions_are_fixed():
    m = _tiny("DistilBertModel", sinusoidal_pos_embds=True)
    table = m.embeddings.position_embeddings.weight
    assert not table.requires_grad
    pos, j = 3, 5
    np.testing.assert_allclose(table.data[pos, j], np.cos(pos / 10000 ** (2 * (j // 2) / 16)), rtol=1e-6)


def test_dropout_only_in_training_mode():
    m = _tiny("DistilBertModel", dropout=0.5, attention_dropout=0.0)
    ids = np.arange(1, 9).reshape(1, 8)
    assert not m.training
    with no_grad():
        e1, e2 = np.asarray(m(ids).last_hidden_state), np.asarray(m(ids).last_hidden_state)
        assert np.array_equal(e1, e2)
        m.train()
        assert all(sub.training for _, sub in m.named_modules())
        t1, t2 = np.asarray(m(ids).last_hidden_state), np.asarray(m(ids).last_hidden_state)
    assert not np.array_equal(t1, t2) and not np.array_equal(t1, e1)
    assert m.eval() is m and not m.training


def test_no_grad_records_nothing_and_grads_accumulate():
    m = _tiny("DistilBertForSequenceClassification")
    ids = np.array([[1, 2, 3, 4]])
    with no_grad():
        out = m(ids)
    assert not out.logits.requires_grad and out.logits._parents == ()
    logits = m(ids).logits
    logits.sum().backward()
    g1 = {n: p.grad.copy() for n, p in m.named_parameters()}
    logits.sum().backward()  # the same graph again: every gradient doubles
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * g1[n], rtol=1e-6, atol=1e-12)
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_outputs_index_like_hf_and_convert_to_numpy():
    m = _tiny("BertForSequenceClassification")
    with no_grad():
        out = m(np.array([[1, 2, 3]]), labels=np.array([1]))
    assert out[0] is out.loss and out[1] is out.logits and out["logits"] is out.logits
    assert np.asarray(out.logits).shape == (1, 2) and np.asarray(out.logits).dtype == np.float32
    assert out.hidden_states is None and out.attentions is None


@pytest.mark.parametrize("bad,match", [
    (dict(input_ids=np.array([[1, 99]])), r"input_ids: id 99 at position \(0, 1\) is out of range \[0, 50\)"),
    (dict(input_ids=np.array([1, 2])), r"input_ids: expected a 2-d integer array"),
    (dict(input_ids=np.array([[1, 2]]), attention_mask=np.array([[1, 1, 1]])), r"attention_mask: expected shape"),
    (dict(input_ids=np.array([[1, 2]]), token_type_ids=np.array([[0, 2]])), r"token_type_ids: id 2"),
    (dict(input_ids=np.ones((1, 17), np.int64)), r"max_position_embeddings 16"),
])
def test_bad_inputs_raise_clear_errors(bad, match):
    m = _tiny("BertModel")
    with pytest.raises(ValueError, match=match):
        m(**bad)


def test_wrong_config_class_is_refused():
    with pytest.raises(ValueError, match="expects a BertConfig"):
        _classes()["BertModel"](cfgmod.DistilBertConfig())
    with pytest.raises(ValueError, match="num_labels"):
        _tiny("DistilBertForQuestionAnswering", num_labels=3)


# ---- config ----------------------------------------------------------------------------------------------------

def test_config_defaults_match_hf():
    b, d = cfgmod.BertConfig(), cfgmod.DistilBertConfig()
    assert (b.vocab_size, b.hidden_size, b.num_hidden_layers, b.num_attention_heads, b.intermediate_size,
            b.max_position_embeddings, b.type_vocab_size, b.layer_norm_eps) == (30522, 768, 12, 12, 3072, 512, 2, 1e-12)
    assert (d.dim, d.n_layers, d.n_heads, d.hidden_dim, d.dropout, d.attention_dropout, d.seq_classif_dropout,
            d.qa_dropout, d.layer_norm_eps) == (768, 6, 12, 3072, 0.1, 0.1, 0.2, 0.1, 1e-12)
    assert d.hidden_size == 768 and d.num_attention_heads == 12 and d.num_hidden_layers == 6
    assert b.num_labels == 2 and b.id2label == {0: "LABEL_0", 1: "LABEL_1"}


@pytest.mark.parametrize("kind,field", [("bert", "hidden_act"), ("distilbert", "activation")])
def test_only_exact_gelu(kind, field):
    cls = cfgmod.CONFIG_CLASSES[kind]
    with pytest.raises(ValueError, match=f"{field}: only the exact-erf 'gelu' is supported, got 'gelu_new'"):
        cls(**{field: "gelu_new"})


def test_config_json_round_trip(tmp_path):
    original = {"architectures": ["DistilBertForSequenceClassification"], "model_type": "distilbert", "dim": 48,
                "n_layers": 3, "id2label": {"0": "NEG", "1": "POS", "2": "NEU"}, "label2id": {"NEG": 0, "POS": 1,
                "NEU": 2}, "transformers_version": "5.23.0", "dtype": "float32", "some_future_field": [1, 2]}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(original))
    c = cfgmod.config_from_json_file(path)
    assert isinstance(c, cfgmod.DistilBertConfig) and c.dim == 48 and c.num_labels == 3
    assert c.id2label[2] == "NEU" and c.extra["some_future_field"] == [1, 2]
    c.to_json_file(tmp_path / "again.json")
    back = json.loads((tmp_path / "again.json").read_text())
    for k, v in original.items():
        assert back[k] == v, k
    assert cfgmod.config_from_dict(back) == c
    with pytest.raises(ValueError, match="model_type"):
        cfgmod.config_from_dict({"model_type": "gpt2"})
    assert cfgmod.config_from_dict({"architectures": ["BertForMaskedLM"]}).model_type == "bert"


def test_config_reads_real_hf_config(oracle, tmp_path):
    tf = oracle("transformers")
    for hf_cfg in (tf.BertConfig(num_labels=4), tf.DistilBertConfig(problem_type="regression", num_labels=1)):
        hf_cfg.save_pretrained(tmp_path)
        ours = cfgmod.config_from_json_file(tmp_path / "config.json")
        d = hf_cfg.to_dict()
        for k, v in ours.to_dict().items():
            if k in d and k not in ("id2label", "label2id"):
                assert v == d[k], k
        assert ours.num_labels == hf_cfg.num_labels


def test_parameter_is_a_leaf_tensor():
    p = nn.Parameter(np.ones(3))
    assert p.dtype == np.float32 and p.requires_grad and p.is_leaf and p.grad is None
    assert autograd.is_grad_enabled()


def test_models_apply_attention_dropout_in_training_only():
    from minidistil import BertConfig, BertModel, DistilBertConfig, DistilBertModel, no_grad
    from minidistil.core import functional as F
    ids = np.array([[5, 6, 7, 8, 9, 10]])
    for model in (DistilBertModel.from_config(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2,
                                                               hidden_dim=32, dropout=0.0, attention_dropout=0.5),
                                              seed=0),
                  BertModel.from_config(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5),
                                        seed=0)):
        with no_grad():
            e1 = model.eval()(ids).last_hidden_state.numpy().copy()
            e2 = model(ids).last_hidden_state.numpy()
            F.manual_seed(3)
            t1 = model.train()(ids).last_hidden_state.numpy().copy()
            F.manual_seed(3)
            t2 = model(ids).last_hidden_state.numpy()
        np.testing.assert_array_equal(e1, e2)              # eval: deterministic, no dropout
        np.testing.assert_array_equal(t1, t2)              # training: the seed generator replays the masks
        assert np.abs(t1 - e1).max() > 1e-3                # and the only dropout there is on the probabilities


def test_distilbert_qkv_projection_is_one_stacked_weight_and_falls_back_to_a_copy():
    from minidistil.core import functional as F
    m = _tiny("DistilBertModel")
    att = m.transformer.layer[0].attention
    ws = [att.q_lin.weight.data, att.k_lin.weight.data, att.v_lin.weight.data]
    W = F.stack_rows(ws)
    assert W.shape == (48, 16) and all(w.base is W for w in ws)              # the three weights, no copy
    ids = np.array([[1, 2, 3, 4], [5, 6, 7, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    with no_grad():
        before = np.asarray(m(ids, attention_mask=mask).last_hidden_state).copy()
    att.k_lin.weight.data = att.k_lin.weight.data.copy()                     # no longer a view: stacked by a copy
    assert F.stack_rows([att.q_lin.weight.data, att.k_lin.weight.data, att.v_lin.weight.data]) is not W
    with no_grad():
        after = np.asarray(m(ids, attention_mask=mask).last_hidden_state)
    # the same products, maybe summed in another order: layer-normed outputs of O(1), a C-term float32 tolerance
    _checks.assert_close(after, before, atol=_checks.f32_tol(16, scale=4.0))
