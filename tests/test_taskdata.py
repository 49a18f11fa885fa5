"""Readers (CSV / TSV / JSONL / IMDb / CoNLL / SQuAD / multiple choice) with malformed rows skipped-and-listed or
refused with file:line, and word-piece label alignment on tricky inputs (accents, punctuation, truncation).
Question answering's windows and decoding are tested in test_qa.py."""
import json

import numpy as np
import pytest

from conftest import write_vocab

from minidistil.train import taskdata as TD
from minidistil.io.tokenizer import Tokenizer

WORDS = ["the", "key", "is", "in", "cafe", "zurich", "lon", "##don", "new", "york", "u", "s", "oslo", "we", "met",
         "at", "what", "where", "red", "a", "b", "c", "d", "e", "f", "g", "h", "who"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", "(", ")", "'", "-"] + WORDS


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_pretrained(write_vocab(tmp_path_factory.mktemp("vocab"), VOCAB, model_max_length=64))


# ---- tables ---------------------------------------------------------------------------------------------------


def test_csv_quotes_line_numbers_and_malformed_rows(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"hello, world",pos\n"two\nlines",neg\nno label\n,pos\nfine,\nlast,neg\n')
    ex, skipped = TD.read_table(p)
    assert [(e.text, e.label) for e in ex] == [("hello, world", "pos"), ("two\nlines", "neg"), ("last", "neg")]
    assert [e.where for e in ex] == [f"{p}:2", f"{p}:3", f"{p}:8"]             # a quoted field spans lines 3-4
    assert len(skipped) == 3
    assert skipped[0].startswith(f"{p}:5: expected 2 columns")
    assert skipped[1].startswith(f"{p}:6: empty or non-text 'text'")
    assert skipped[2].startswith(f"{p}:7: bad label ''")
    with pytest.raises(TD.DataError, match=f"{p}:5: expected 2 columns"):
        TD.read_table(p, on_error="fail")


def test_glue_tsv_pairs_and_regression(tmp_path):
    p = tmp_path / "stsb.tsv"
    # GLUE TSVs are not quoted: a sentence may begin with a quote mark
    p.write_text('index\tsentence1\tsentence2\tscore\n0\t"Hi," she said.\tShe said hi.\t4.5\n'
                 '1\tA man.\tA dog.\tnot-a-number\n2\tX.\tY.\tnan\n')
    ex, skipped = TD.read_table(p, "sentence1", "score", "sentence2", label_kind="regression")
    assert [(e.text, e.text_pair, e.label) for e in ex] == [('"Hi," she said.', "She said hi.", 4.5)]
    assert skipped[0].startswith(f"{p}:3: bad label 'not-a-number'") and skipped[1].startswith(f"{p}:4:")


def test_headerless_columns_and_jsonl(tmp_path):
    p = tmp_path / "sst.tsv"
    p.write_text("a fine film\t1\nawful\t0\n")
    ex, _ = TD.read_table(p, 0, 1, header=False)
    assert [(e.text, e.label) for e in ex] == [("a fine film", "1"), ("awful", "0")]
    ex, skipped = TD.read_table(p, 0, 5, header=False)
    assert not ex and "no column 5" in skipped[0]
    j = tmp_path / "d.jsonl"
    j.write_text('{"review": "good", "stars": 1}\n{oops\n\n[1, 2]\n{"review": "meh", "stars": 0.0}\n'
                 '{"review": "x", "tags": "a, b"}\n')
    ex, skipped = TD.read_table(j, "review", "stars")
    assert [(e.text, e.label) for e in ex] == [("good", "1"), ("meh", "0")]  # 1 and 0.0 name classes "1", "0"
    assert [s.split(": ")[0] for s in skipped] == [f"{j}:2", f"{j}:4", f"{j}:6"]
    ex, _ = TD.read_table(j, "review", "tags", label_kind="multi", on_error="skip")
    assert ex[0].label == ["a", "b"]
    (tmp_path / "d.csv.bak").write_text("text,label\n")
    with pytest.raises(ValueError, match="fmt"):
        TD.read_table(tmp_path / "d.csv.bak")


def test_imdb_folders(tmp_path):
    for split, lab, name, text in [("train", "pos", "0_9.txt", "Great<br /><br />film."),
                                   ("train", "neg", "1_2.txt", "Dull."), ("train", "neg", "2_1.txt", "  "),
                                   ("test", "pos", "0_10.txt", "Fine.")]:
        (tmp_path / split / lab).mkdir(parents=True, exist_ok=True)
        (tmp_path / split / lab / name).write_text(text)
    (tmp_path / "test" / "neg").mkdir()
    ex, skipped = TD.read_imdb(tmp_path, "train")
    assert sorted((e.text, e.label) for e in ex) == [("Dull.", "neg"), ("Great film.", "pos")]
    assert len(skipped) == 1 and "2_1.txt:1: empty review" in skipped[0]
    with pytest.raises(FileNotFoundError, match="IMDb layout"):
        TD.read_imdb(tmp_path, "unsup")


def test_conll_sentences_and_a_bad_line(tmp_path):
    p = tmp_path / "ner.conll"
    p.write_text("-DOCSTART- -X- O O\n\nAda NNP B-PER\nLovelace NNP I-PER\n. . O\n\nBroken\nline X O\n\n"
                 "Oslo NNP B-LOC\n")
    ex, skipped = TD.read_conll(p)
    assert [(e.words, e.tags) for e in ex] == [(["Ada", "Lovelace", "."], ["B-PER", "I-PER", "O"]),
                                               (["Oslo"], ["B-LOC"])]
    assert ex[0].where == f"{p}:3" and ex[1].where == f"{p}:10"
    assert skipped == [f"{p}:7: expected 'word ... tag', got 'Broken' (the sentence starting at line 7 is left out)"]
    with pytest.raises(TD.DataError, match=f"{p}:7"):
        TD.read_conll(p, on_error="fail")


def test_squad_reader_checks_answer_positions(tmp_path):
    p = tmp_path / "squad.json"
    ctx = "We met in Zürich (at the café)."
    doc = {"data": [{"title": "t", "paragraphs": [{"context": ctx, "qas": [
        {"id": "ok", "question": "Where?", "answers": [{"text": "Zürich", "answer_start": 10}]},
        {"id": "off", "question": "Where?", "answers": [{"text": "Zürich", "answer_start": 11}]},
        {"id": "noq", "question": " ", "answers": [{"text": "café", "answer_start": 25}]}]}]}]}
    p.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    ex, skipped = TD.read_squad(p)
    assert [(e.id, e.answers) for e in ex] == [("ok", [("Zürich", 10)])]
    raw = p.read_text().splitlines()
    line_off = next(i for i, x in enumerate(raw, 1) if '"off"' in x)
    assert skipped[0].startswith(f"{p}:{line_off}: question 'off': answer 'Zürich' is not at answer_start 11")
    assert "empty question" in skipped[1]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(TD.DataError, match="not a SQuAD file"):
        TD.read_squad(tmp_path / "bad.json")


def test_multiple_choice_jsonl_and_swag_columns(tmp_path):
    j = tmp_path / "mc.jsonl"
    j.write_text('{"question": "q1", "choices": ["a", "b"], "label": 1}\n'
                 '{"question": "q2", "choices": ["a"], "label": 0}\n'
                 '{"question": "q3", "choices": ["a", "b"], "label": 2}\n')
    ex, skipped = TD.read_choice(j)
    assert [(e.question, e.choices, e.label) for e in ex] == [("q1", ["a", "b"], 1)]
    assert "at least 2" in skipped[0] and "not a choice index" in skipped[1]
    c = tmp_path / "swag.csv"
    c.write_text("sent1,sent2,ending0,ending1,ending2,label\nHe sat.,Then he,ran.,slept.,ate.,2\n")
    ex, _ = TD.read_choice(c, "sent2", ["ending0", "ending1", "ending2"], "label", context_field="sent1")
    assert (ex[0].question, ex[0].choices, ex[0].label) == ("He sat. Then he", ["ran.", "slept.", "ate."], 2)


# ---- token classification: labels on word pieces ---------------------------------------------------------------


def test_first_piece_gets_the_label(tok):
    words = ["We", "met", "in", "Zürich", "(", "London", ")", "and", "U.S.", "!"]
    tags = [0, 0, 0, 1, 0, 1, 0, 0, 2, 0]
    ids, labels, word_ids = TD.align_word_labels(words, tags, tok, max_length=64)
    pieces = tok.convert_ids_to_tokens(ids)
    # "zürich" loses its accent in the uncased normaliser, "london" is two pieces, "and" is unknown, "u.s." is
    # four pieces of one word; [CLS] and [SEP] and every later piece get -100
    assert pieces == ["[CLS]", "we", "met", "in", "zurich", "(", "lon", "##don", ")", "[UNK]", "u", ".", "s", ".",
                      "!", "[SEP]"]
    assert labels.tolist() == [-100, 0, 0, 0, 1, 0, 1, -100, 0, 0, 2, -100, -100, -100, 0, -100]
    assert word_ids.tolist() == [-1, 0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 8, 8, 8, 9, -1]
    assert ids.dtype == np.int64 and labels.dtype == np.int64


def test_alignment_with_decomposed_accents_and_truncation(tok):
    words = ["cafe\u0301", "oslo", "new", "york"]               # "café" with a combining accent (NFD)
    with pytest.warns(UserWarning, match="truncated"):
        ids, labels, word_ids = TD.align_word_labels(words, [1, 2, 3, 4], tok, max_length=4)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "cafe", "oslo", "[SEP]"]   # cut at 4 tokens
    assert labels.tolist() == [-100, 1, 2, -100] and word_ids.tolist() == [-1, 0, 1, -1]
