"""minidistil.quantize: every model class quantised (structure, closeness to float32, refused backward), saved and
loaded back to identical outputs, bad checkpoints refused with one line, the pipelines and `minidistil quantize` on
a quantised folder, the model on numba.cuda (simulator), and the real all-MiniLM-L6-v2 (file size, STS score).

The kernels' own error bound is tested in test_kernel_int8.py. Here the quantised models are compared with the
float32 ones through a quality threshold (the cosine between their outputs), not a rounding tolerance: a
network's error is the sum of its layers' quantisation errors, which the kernels bound one layer at a time.
"""
import json

import numpy as np
import pytest

import minidistil
from minidistil import no_grad
from minidistil.apps import cli
from minidistil.core.config import BertConfig, DistilBertConfig
from minidistil.kernels import _cuda
from minidistil.io.loading import CheckpointError, from_pretrained, save_pretrained
from minidistil.core.nn import LayerNorm, Linear
from minidistil.io.quantization import (QuantizedEmbedding, QuantizedLinear, QuantizedModelError, QuantizedWeight,
                                     quantize_folder)
from minidistil.io.safetensors_io import load_file, save_file
from minidistil.io.tokenizer import Tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "the", "cat", "sat", "on", "mat", "dog", "ran",
         "who", "where", "ada", "lived", "in", "london", "paris", "a", "big", "house"]
V = len(VOCAB)
ARCHS = list(minidistil.MODEL_ARCHITECTURES)
COSINE_MIN = 0.99   # quality threshold on tiny random models (measured: >= 0.999)


def _config(arch, **kw):
    small = dict(vocab_size=V, max_position_embeddings=16, **kw)
    if arch.startswith("DistilBert"):
        return DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **small)
    return BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, **small)


def _model(arch, seed=0):
    return minidistil.MODEL_CLASSES[arch].from_config(_config(arch), seed=seed)


def _inputs(arch, seed=0):
    r = np.random.default_rng(seed)
    ids = r.integers(5, V, (2, 6))
    mask = np.ones((2, 6), np.int64)
    mask[1, 4:] = 0                                                   # a padded row
    if arch.endswith("MultipleChoice"):
        return ids.reshape(2, 1, 6).repeat(3, axis=1), mask.reshape(2, 1, 6).repeat(3, axis=1)
    return ids, mask


def _output(model, arch, seed=0):
    ids, mask = _inputs(arch, seed)
    with no_grad():
        out = model(ids, attention_mask=mask)
    main = getattr(out, "logits", None)
    main = out.start_logits if arch.endswith("QuestionAnswering") else main
    return np.asarray(out.last_hidden_state if main is None else main)


def _cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    (d / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    return Tokenizer.from_pretrained(d)


# ---- quantising ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_quantize_every_class(arch):
    model = _model(arch)
    before = _output(model, arch)
    q = minidistil.quantize(model)
    assert type(q) is type(model) and q is not model
    np.testing.assert_array_equal(_output(model, arch), before)              # the float32 model is untouched
    mods = dict(q.named_modules())
    assert not any(isinstance(m, Linear) for m in mods.values())             # every Linear is int8 ...
    qlin = [m for m in mods.values() if isinstance(m, QuantizedLinear)]
    assert len(qlin) == sum(isinstance(m, Linear) for m in dict(model.named_modules()).values())
    assert all(m.weight.data.dtype == np.int8 and m.weight.scale.dtype == np.float32 for m in qlin)
    emb = [n for n, m in mods.items() if isinstance(m, QuantizedEmbedding)]  # ... and the word table
    assert len(emb) == 1 and emb[0].endswith("embeddings.word_embeddings")
    assert all(p.data.dtype == np.float32 for p in q.parameters())           # biases, LayerNorms, positions
    assert any(isinstance(m, LayerNorm) for m in mods.values())
    assert not any(isinstance(p, QuantizedWeight) for p in q.parameters())   # int8 weights are not parameters
    if arch.endswith("ForMaskedLM"):                                         # the tie survives: one int8 table
        proj = mods["vocab_projector" if arch.startswith("DistilBert") else "cls.predictions.decoder"]
        assert proj.weight is mods[emb[0]].weight
    after = _output(q, arch)
    assert after.dtype == np.float32 and after.shape == before.shape
    assert _cosine(after, before) >= COSINE_MIN
    with pytest.raises(ValueError, match="quantised already"):
        minidistil.quantize(q)


def test_backward_is_refused():
    q = minidistil.quantize(_model("DistilBertForMaskedLM"))
    ids, mask = _inputs("DistilBertForMaskedLM")
    out = q(ids, attention_mask=mask, labels=ids)
    with pytest.raises(QuantizedModelError, match="inference-only.*quantise it"):
        out.loss.backward()


def test_embeddings_can_stay_float32(tmp_path):
    model = _model("BertForMaskedLM")
    q = minidistil.quantize(model, embeddings=False)
    mods = dict(q.named_modules())
    assert isinstance(mods["bert.embeddings.word_embeddings"].weight, minidistil.Parameter)
    assert isinstance(mods["cls.predictions.decoder"], Linear)               # tied to the float32 table
    assert _cosine(_output(q, "BertForMaskedLM"), _output(model, "BertForMaskedLM")) >= COSINE_MIN
    back = from_pretrained(save_pretrained(q, tmp_path / "q"))
    np.testing.assert_array_equal(_output(back, "BertForMaskedLM"), _output(q, "BertForMaskedLM"))


# ---- saving and loading ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["BertModel", "BertForMaskedLM", "DistilBertForMaskedLM",
                                  "DistilBertForSequenceClassification", "BertForMultipleChoice"])
def test_save_and_load_give_identical_outputs(tmp_path, arch):
    q = minidistil.quantize(_model(arch))
    folder = save_pretrained(q, tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "minidistil_int8"
    assert config["architectures"] == [arch]
    state = load_file(folder / "model.safetensors")
    for name, m in q.named_modules():
        if isinstance(m, QuantizedEmbedding) or (isinstance(m, QuantizedLinear) and f"{name}.weight" in state):
            assert state[f"{name}.weight"].dtype == np.int8 and state[f"{name}.weight_scale"].dtype == np.float32
    assert all(a.dtype in (np.int8, np.float32) for a in state.values())
    back = from_pretrained(folder)
    assert type(back) is type(q) and back.quantization_config["quant_method"] == "minidistil_int8"
    np.testing.assert_array_equal(_output(back, arch), _output(q, arch))
    again = save_pretrained(back, tmp_path / "again")                        # the same bytes when saved again
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_head_checkpoint_loads_into_the_bare_encoder(tmp_path):
    q = minidistil.quantize(_model("DistilBertForMaskedLM"))
    folder = save_pretrained(q, tmp_path / "q")
    with pytest.warns(UserWarning, match="not used"):
        bare = from_pretrained(folder, cls="DistilBertModel")                # the "distilbert." prefix dropped
    ids, mask = _inputs("DistilBertModel")
    with no_grad():
        want = q(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].numpy()
        got = bare(ids, attention_mask=mask).last_hidden_state.numpy()
    np.testing.assert_array_equal(got, want)


def test_bad_quantised_checkpoints_are_refused(tmp_path):
    folder = save_pretrained(minidistil.quantize(_model("DistilBertForSequenceClassification")), tmp_path / "q")
    config = json.loads((folder / "config.json").read_text())
    state = load_file(folder / "model.safetensors")
    name = "distilbert.transformer.layer.0.ffn.lin1"

    def broken(tag, config=config, **tensors):
        d = tmp_path / tag
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
        save_file({**state, **tensors}, d / "model.safetensors")
        return d

    with pytest.raises(CheckpointError, match=f"{name}.weight' has dtype float32"):
        from_pretrained(broken("f32", **{f"{name}.weight": state[f"{name}.weight"].astype(np.float32)}))
    with pytest.raises(CheckpointError, match="positive finite"):
        from_pretrained(broken("scale", **{f"{name}.weight_scale": -state[f"{name}.weight_scale"]}))
    with pytest.raises(CheckpointError, match="holds -128"):
        from_pretrained(broken("m128", **{f"{name}.weight": np.full_like(state[f"{name}.weight"], -128)}))
    other = dict(config, quantization_config={"quant_method": "gptq"})
    with pytest.raises(CheckpointError, match="'gptq' is not minidistil's"):
        from_pretrained(broken("method", config=other))
    with pytest.raises(CheckpointError, match="cannot start a new head"):
        from_pretrained(folder, cls="DistilBertForQuestionAnswering")


# ---- pipelines and the command line ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("quantized")
    out = {}
    for task, arch, cfg in [
            ("sentence-embeddings", "BertModel", {}), ("fill-mask", "DistilBertForMaskedLM", {}),
            ("text-classification", "BertForSequenceClassification", {"id2label": {0: "neg", 1: "pos"}}),
            ("ner", "DistilBertForTokenClassification", {"id2label": {0: "O", 1: "B-PER", 2: "I-PER"}}),
            ("question-answering", "BertForQuestionAnswering", {})]:
        model = minidistil.MODEL_CLASSES[arch].from_config(_config(arch, **cfg), seed=0)
        src = save_pretrained(model, root / f"{arch}-f32", tok)
        out[task] = (src, root / f"{arch}-int8")
        info = quantize_folder(src, out[task][1])
        assert info["int8_bytes"] < info["float32_bytes"]
    return out


@pytest.mark.parametrize("task,call", [
    ("sentence-embeddings", lambda p: p(["the cat sat", "a dog ran"])),
    ("fill-mask", lambda p: p("the [MASK] sat .", top_k=2)),
    ("text-classification", lambda p: p(["the cat sat", "who lived in london ?"])),
    ("ner", lambda p: p("ada lived in london .")),
    ("question-answering", lambda p: p("who lived in london ?", "ada lived in london .")),
])
def test_pipelines_take_a_quantised_folder(folders, task, call):
    src, qdir = folders[task]
    qpipe = minidistil.pipeline(task, str(qdir))
    assert minidistil.io.quantization.is_quantized(qpipe.model)
    got = call(qpipe)
    want = call(minidistil.pipeline(task, minidistil.quantize(from_pretrained(src)), Tokenizer.from_pretrained(src)))
    assert json.dumps(got, default=lambda a: np.asarray(a).tolist()) == json.dumps(
        want, default=lambda a: np.asarray(a).tolist())                      # the folder = quantising in memory


def test_quantize_command(folders, tmp_path, capsys):
    src, _ = folders["text-classification"]
    assert cli.main(["quantize", str(src), str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out
    assert "int8" in line and "x)" in line and (tmp_path / "out" / "vocab.txt").is_file()
    assert cli.main(["classify", "--model", str(tmp_path / "out"), "the cat sat"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in ("neg", "pos")
    for argv, message in [([str(src), str(src)], "is the source checkpoint"),
                          ([str(tmp_path / "out"), str(tmp_path / "o2")], "quantised already"),
                          ([str(tmp_path / "nowhere"), str(tmp_path / "o3")], "no such checkpoint folder")]:
        assert cli.main(["quantize", *argv]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_training_commands_refuse_a_quantised_model(folders, tmp_path, capsys):
    _, qdir = folders["fill-mask"]
    assert cli.main(["distill", "--teacher", str(qdir), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "is an int8 checkpoint" in err and len(err.strip().splitlines()) == 1
    assert issubclass(QuantizedModelError, ValueError)        # a backward in any command: one line, exit 1


# ---- on numba.cuda (the simulator without a GPU) ---------------------------------------------------------------

@pytest.mark.cuda
def test_quantised_model_on_cuda():
    if not _cuda.available():
        pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not set")
    # tiny (every simulated GPU thread is a Python thread): width 8, one layer, B = 2, T = 4 with a padded token
    config = DistilBertConfig(vocab_size=V, dim=8, n_layers=1, n_heads=2, hidden_dim=16, max_position_embeddings=8)
    q = minidistil.quantize(minidistil.DistilBertForSequenceClassification.from_config(config, seed=0))
    ids, mask = _inputs("DistilBertModel")
    ids, mask = ids[:, :4], mask[:, 2:]
    with no_grad():
        cpu = q(ids, attention_mask=mask).logits.numpy()
    q.to("cuda")
    with no_grad():
        gpu = q(ids, attention_mask=mask).logits
    assert _cuda.is_device_array(gpu.data)
    # the float32 parts sum in another order on the GPU, which can move an activation across a rounding boundary
    # of the next quantisation (one step s_x): the two runs agree as two quantisations do, not to the last bit
    assert _cosine(gpu.numpy(), cpu) >= 0.999


# ---- the real all-MiniLM-L6-v2 ---------------------------------------------------------------------------------

def test_minilm_quantised(minilm_dir, tmp_path):
    from minidistil.train import evaluation as E
    info = quantize_folder(minilm_dir, tmp_path / "q")
    assert info["int8_bytes"] <= 0.3 * info["float32_bytes"]                 # measured 0.26x
    tok = Tokenizer.from_pretrained(minilm_dir)
    model, q = from_pretrained(minilm_dir), from_pretrained(tmp_path / "q")
    pairs = E.load_sts_pairs()
    s_float = E.sts_spearman(E.model_encoder(model), tok, pairs)
    s_int8 = E.sts_spearman(E.model_encoder(q), tok, pairs)
    assert s_int8 >= 0.99 * s_float, (s_int8, s_float)                       # measured 0.9142 vs 0.9145
    texts = [p.sentence1 for p in pairs[:40]]
    fresh = minidistil.quantize(model)                                        # the file = quantising in memory
    np.testing.assert_array_equal(E.embed(E.model_encoder(q), tok, texts),
                                  E.embed(E.model_encoder(fresh), tok, texts))


# ---- `minidistil bench`: the int8 rows --------------------------------------------------------------------------

def test_bench_int8_rows(tmp_path, capsys):
    import importlib.util

    from minidistil.apps import bench
    have_ort = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnx", "torch", "transformers"))
    fws = "minidistil,minidistil-int8" + (",onnxruntime,onnxruntime-int8" if have_ort else ",onnxruntime-int8")
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--frameworks", fws, "--scenarios", "fwd_T16,train_mlm", "--no-memory",
                       "--repeat", "1", "--warmup", "1", "--pause", "0", "--json", str(out)]) == 0
    rows = {(r["scenario"], r["framework"]): r for r in json.loads(out.read_text())["results"]}
    assert ("train_mlm", "minidistil-int8") not in rows                      # int8 is inference only
    f32, i8 = rows["fwd_T16", "minidistil"], rows["fwd_T16", "minidistil-int8"]
    assert i8["ms"] > 0 and 0 < i8["file_mb"] < 0.5 * f32["file_mb"]
    text = capsys.readouterr().out
    assert "fwd_T16: max |minidistil-int8 - minidistil|" in text and "file" in text
    if have_ort:
        o32, o8 = rows["fwd_T16", "onnxruntime"], rows["fwd_T16", "onnxruntime-int8"]
        assert o8["ms"] > 0 and 0 < o8["file_mb"] < o32["file_mb"]
    else:
        assert "skip onnxruntime-int8: missing" in text
    mem = bench.measure_memory("minidistil-int8", True, bench.scenarios(True)[0], None, steps=2)
    assert "error" not in mem and mem["alone_ms"] > 0                       # the fresh process runs int8 too
