"""The WordPiece tokenizer: ids equal to transformers' BertTokenizerFast, from tokenizer.json and from vocab.txt.

The small-vocabulary tests build their vocab.txt here; the MiniLM tests use the real all-MiniLM-L6-v2 files (fetched
by `minidistil fetch all-MiniLM-L6-v2`, or by the fixture) and the ids committed in tests/data/minilm_reference.npz.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from minidistil.io.tokenizer import Tokenizer

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.npz"

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "un", "##believ", "##able",
         "!", ",", ".", "?", "a", "dog", "run", "##s", "fast", "cafe", "naive", "'", "s", "x", "##x", "东"]
TEXTS = ["The cat sat on the mat.", "Unbelievable!", "", "A dog runs fast, the cat sat?", "Café naïve dog's",
         "xxxx  unknownword 东京", "   ", "the [MASK] sat"]


@pytest.fixture
def vocab_dir(tmp_path):
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 16}))
    return tmp_path


def _same(ours: dict, theirs: dict, keys=("input_ids", "token_type_ids", "attention_mask")):
    for k in keys:
        assert ours[k].dtype == np.int64, k
        np.testing.assert_array_equal(ours[k], np.asarray(theirs[k]), err_msg=k)


def test_vocab_txt_basics(vocab_dir):
    tok = Tokenizer.from_pretrained(vocab_dir)
    assert tok.vocab_size == len(VOCAB)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2,
                                                                                                           3, 4)
    assert tok.tokenize("Unbelievable!") == ["un", "##believ", "##able", "!"]
    enc = tok(["The cat", "a dog runs fast"])
    np.testing.assert_array_equal(enc["input_ids"], [[2, 5, 6, 3, 0, 0, 0], [2, 17, 18, 19, 20, 21, 3]])
    np.testing.assert_array_equal(enc["attention_mask"], [[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    assert tok.convert_ids_to_tokens([2, 10, 11]) == ["[CLS]", "un", "##believ"]
    assert tok.decode(tok("Unbelievable!")["input_ids"][0]) == "unbelievable!"
    assert tok.convert_tokens_to_ids(["cat", "zebra"]) == [6, 1]


def test_empty_string_and_pairs(vocab_dir):
    tok = Tokenizer.from_pretrained(vocab_dir)
    enc = tok("")
    np.testing.assert_array_equal(enc["input_ids"], [[2, 3]])
    enc = tok("the cat", "sat on")
    np.testing.assert_array_equal(enc["input_ids"], [[2, 5, 6, 3, 7, 8, 3]])
    np.testing.assert_array_equal(enc["token_type_ids"], [[0, 0, 0, 0, 1, 1, 1]])


def test_truncation_warns_and_padding_modes(vocab_dir):
    tok = Tokenizer.from_pretrained(vocab_dir)                      # model_max_length 16 from tokenizer_config.json
    long = "the cat " * 30
    with pytest.warns(UserWarning, match="truncated"):
        enc = tok([long, "the"])
    assert enc["input_ids"].shape == (2, 16)
    assert enc["input_ids"][0, -1] == tok.sep_token_id
    enc = tok(["the", "the cat"], padding="max_length", max_length=6)
    assert enc["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="padding=False"):
        tok(["the", "the cat"], padding=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # no warning when nothing is cut
        assert tok(long, truncation=False)["input_ids"].shape == (1, 62)
    with pytest.raises(ValueError, match="texts"):
        tok([1, 2])


def test_vocab_txt_matches_transformers(oracle, vocab_dir):
    transformers = oracle("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))     # reads vocab.txt + tokenizer_config
    ours = Tokenizer.from_pretrained(vocab_dir)
    _same(ours(TEXTS, max_length=16), hf(TEXTS, padding=True, truncation=True, max_length=16))
    with pytest.warns(UserWarning, match="truncated"):
        pairs = ours(TEXTS[:4], TEXTS[4:], max_length=12)
    _same(pairs, hf(TEXTS[:4], TEXTS[4:], padding=True, truncation=True, max_length=12))
    ours_off = ours(TEXTS, return_offsets_mapping=True)
    hf_off = hf(TEXTS, padding=True, return_offsets_mapping=True)
    np.testing.assert_array_equal(ours_off["offset_mapping"], np.asarray(hf_off["offset_mapping"]))


def test_cased_vocab_matches_transformers(oracle, vocab_dir):
    transformers = oracle("transformers")
    (vocab_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    hf = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))
    ours = Tokenizer.from_pretrained(vocab_dir)
    assert ours.tokenize("The Cat") == ["[UNK]", "[UNK]"]
    _same(ours(TEXTS), hf(TEXTS, padding=True, truncation=True))


def test_save_roundtrip(vocab_dir, tmp_path):
    tok = Tokenizer.from_pretrained(vocab_dir)
    out = tok.save(tmp_path / "saved")
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"} <= {
        p.name for p in out.iterdir()}
    back = Tokenizer.from_pretrained(out)
    for a, b in zip(tok(TEXTS).values(), back(TEXTS).values()):
        np.testing.assert_array_equal(a, b)
    assert back.model_max_length == 16
    (out / "tokenizer.json").unlink()                                # the vocab.txt written is complete too
    back = Tokenizer.from_pretrained(out)
    for a, b in zip(tok(TEXTS).values(), back(TEXTS).values()):
        np.testing.assert_array_equal(a, b)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json nor vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such (checkpoint )?folder"):
        Tokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="special token"):
        Tokenizer.from_pretrained(tmp_path)


def test_minilm_ids_equal_reference(minilm_dir):
    """ids from tokenizer.json and from vocab.txt alone equal those transformers gave (committed dump)."""
    ref = np.load(REFERENCE)
    sentences = [str(s) for s in ref["sentences"]]
    for tok in (Tokenizer.from_pretrained(minilm_dir), Tokenizer.from_vocab(minilm_dir / "vocab.txt")):
        enc = tok(sentences)
        np.testing.assert_array_equal(enc["input_ids"], ref["input_ids"])
        np.testing.assert_array_equal(enc["attention_mask"], ref["attention_mask"])
    assert tok.vocab_size == 30522 and tok.mask_token_id == 103


def test_minilm_matches_transformers(oracle, minilm_dir):
    transformers = oracle("transformers")
    hf = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    ours = Tokenizer.from_pretrained(minilm_dir)
    texts = [str(s) for s in np.load(REFERENCE)["sentences"]] + ["question?", "[MASK] is  a  Test!!"]
    _same(ours(texts), hf(texts, padding=True, truncation=True))
    _same(ours(texts[:4], texts[4:]), hf(texts[:4], texts[4:], padding=True, truncation=True))
    long = ["word " * 700, "short"]
    with pytest.warns(UserWarning, match="truncated"):
        enc = ours(long)
    _same(enc, hf(long, padding=True, truncation=True))
    assert ours.decode(enc["input_ids"][1]) == hf.decode(enc["input_ids"][1], skip_special_tokens=True)
