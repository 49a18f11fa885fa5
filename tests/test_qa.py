"""Question answering's one window maker and one span decoder (minidistil.train.qa): windows that cover the context
with the stated overlap, training targets at a window's edge, answers mapped back to the exact characters (accents,
punctuation, whole words), the best span over windows under the length limit, the empty answer, and `minidistil
qa` and `minidistil predict` giving the same answer and score for the same checkpoint, context and question."""
import json

import numpy as np
import pytest

from conftest import write_vocab

from minidistil.train import qa as QA
from minidistil.io.tokenizer import Tokenizer

WORDS = ["the", "key", "is", "in", "cafe", "zurich", "lon", "##don", "new", "york", "u", "s", "oslo", "we", "met",
         "at", "what", "where", "red", "a", "b", "c", "d", "e", "f", "g", "h", "who", "then"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", "(", ")", "'", "-"] + WORDS


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"), VOCAB, model_max_length=64)


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return Tokenizer.from_pretrained(vocab_dir)


def _targets_check(enc, context, answer, a0):
    """Every window holding the whole answer points at it, the others at [CLS]; returns how many hold it."""
    starts, ends = QA.answer_positions(enc, [(a0, a0 + len(answer))])
    found = 0
    for w in range(enc["input_ids"].shape[0]):
        ctx = np.flatnonzero(enc["sequence_ids"][w] == 1)
        off = enc["offset_mapping"][w]
        whole = off[ctx[0], 0] <= a0 and off[ctx[-1], 1] >= a0 + len(answer)
        if starts[w] == 0:
            assert ends[w] == 0 and not whole
        else:
            found += 1
            assert context[off[starts[w], 0]:off[ends[w], 1]] == answer
            assert enc["token_type_ids"][w, starts[w]] == 1
    return found


def test_windows_cover_the_context_with_the_stated_overlap(tok):
    context = " ".join("abcdefgh"[i % 8] for i in range(40))              # 40 one-token words
    enc = QA.windows(tok, ["who is the key ?"], [context], max_seq_len=20, doc_stride=4)
    q = 5                                                                     # "who is the key ?"
    L = 20 - q - 3                                                            # 12 context tokens per window
    assert enc["input_ids"].shape[1] <= 20 and (enc["overflow_to_sample_mapping"] == 0).all()
    firsts = [int(enc["offset_mapping"][w, q + 2, 0]) // 2 for w in range(enc["input_ids"].shape[0])]
    assert firsts == [0, 8, 16, 24, 32] and L - 4 == 8                         # step = L - stride
    last = np.flatnonzero(enc["sequence_ids"][-1] == 1)[-1]
    assert enc["offset_mapping"][-1, last, 1] == len(context)
    assert tok.convert_ids_to_tokens(enc["input_ids"][0, :q + 2]) == ["[CLS]", "who", "is", "the", "key", "?",
                                                                      "[SEP]"]
    assert _targets_check(enc, context, "e", context.index("e")) == 1
    with pytest.raises(ValueError, match="doc_stride"):
        QA.windows(tok, ["who ?"], [context], max_seq_len=10, doc_stride=8)  # 10 - 2 - 3 = 5 tokens <= 8
    assert QA.resolve(None, None, 512) == (384, 128) and QA.resolve(32, None, 64) == (32, 16)   # transformers'
    with pytest.raises(ValueError, match="max_seq_len"):
        QA.resolve(1000, None, 512)


@pytest.mark.parametrize("first", [10, 11, 12])
def test_answer_at_a_window_edge(tok, first):
    # 30 words; windows of 12 context tokens stepping by 8: [0, 12), [8, 20), [16, 28), [24, 30)
    words = ["a"] * 30
    words[first:first + 2] = ["new", "york"]                                  # a two-token answer
    context = " ".join(words)
    enc = QA.windows(tok, ["who is the key ?"], [context], max_seq_len=20, doc_stride=4)
    # first=10: tokens 10-11 lie in window 0 (its last two) and in window 1; first=11: 11-12 cross window 0's
    # edge, so only window 1 holds it; first=12: window 1 only (window 0 ends at token 11)
    assert _targets_check(enc, context, "new york", 2 * first) == {10: 2, 11: 1, 12: 1}[first]


def _logits_for(enc, w, s, e):
    """Start/end logits of every window that make (s, e) of window w the one likely span."""
    W, T = enc["input_ids"].shape
    start, end = np.full((W, T), -5.0), np.full((W, T), -5.0)
    start[w, s], end[w, e] = 5.0, 5.0
    return start, end


def test_answers_map_back_to_exact_characters(tok):
    context = "We met in Zürich (at the café), then in Oslo!"
    enc = QA.windows(tok, ["where ?"], [context], max_seq_len=64, doc_stride=8)
    off = enc["offset_mapping"][0]
    ctx = np.flatnonzero(enc["sequence_ids"][0] == 1)
    for answer in ("Zürich", "café", "Oslo", "Zürich (at"):
        a0 = context.index(answer)
        s, e = QA.answer_positions(enc, [(a0, a0 + len(answer))])
        assert tok.convert_ids_to_tokens(int(enc["input_ids"][0, s[0]])) != "[CLS]"
        start, end = _logits_for(enc, 0, s[0], e[0])
        start[0, 0] = end[0, 0] = 50.0                                        # [CLS] is never an answer
        [[got]] = QA.decode(enc, start, end, [context], max_answer_len=10)
        assert got["answer"] == answer and context[got["start"]:got["end"]] == answer
    # a span from the middle of a word: align_to_words (transformers' default) widens it to the whole word
    enc = QA.windows(tok, ["where ?"], ["We met in London."], max_seq_len=64, doc_stride=8)
    don = int(np.flatnonzero(enc["input_ids"][0] == tok.convert_tokens_to_ids("##don"))[0])
    start, end = _logits_for(enc, 0, don, don)
    assert QA.decode(enc, start, end, ["We met in London."])[0][0]["answer"] == "London"
    assert QA.decode(enc, start, end, ["We met in London."], align_to_words=False)[0][0]["answer"] == "don"
    assert ctx.size and off[ctx[0], 0] == 0


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_best_span_over_windows_length_limit_and_empty_answer(tok):
    context = " ".join(["a"] * 30)
    enc = QA.windows(tok, ["who ?"], [context], max_seq_len=16, doc_stride=4)
    W, T = enc["input_ids"].shape
    assert W > 2 and (QA.answer_positions(enc, [None])[0] == 0).all()        # no answer: every window at [CLS]
    start, end = np.full((W, T), -10.0), np.full((W, T), -10.0)
    start[1, 5], end[1, 8] = 3.0, 3.0
    start[2, 4], end[2, 4] = 4.0, 4.0                                         # the surest span: window 2
    [[best, second]] = QA.decode(enc, start, end, [context], top_k=2, max_answer_len=5)
    off = enc["offset_mapping"]
    assert (best["start"], best["end"]) == (int(off[2, 4, 0]), int(off[2, 4, 1]))
    # the score: the product of the two softmaxes over [CLS] and the window's context tokens
    keep = (enc["sequence_ids"][2] == 1) | (np.arange(T) == 0)
    want = _softmax(start[2][keep])[list(np.flatnonzero(keep)).index(4)] ** 2
    assert best["score"] == pytest.approx(want, rel=1e-12) and second["score"] < best["score"]
    end[2, 4], end[2, 12] = -10.0, 9.0                                        # 12 - 4 >= 5: too long
    [[got]] = QA.decode(enc, start, end, [context], max_answer_len=5)
    assert (got["start"], got["end"]) == (int(off[1, 5, 0]), int(off[1, 8, 1]))
    start[:, 0] = end[:, 0] = 20.0                                            # every window: "no answer"
    [[got]] = QA.decode(enc, start, end, [context], handle_impossible_answer=True)
    assert got["answer"] == "" and got["start"] == got["end"] == 0 and got["score"] > 0.99
    [[got]] = QA.decode(enc, start, end, [context])                           # default: a span all the same
    assert got["answer"].startswith("a") and got["score"] < 1e-6


def test_qa_and_predict_give_the_same_answer(tmp_path, capsys):
    """The same checkpoint, context and question through `minidistil qa` and `minidistil predict`: one decoder,
    one set of defaults, so the same answer and score (one window, then many)."""
    import minidistil
    from minidistil.apps import cli
    from minidistil.core.config import DistilBertConfig

    folder = tmp_path / "qa"
    config = DistilBertConfig(vocab_size=len(VOCAB), dim=16, n_layers=2, n_heads=2, hidden_dim=32,
                              max_position_embeddings=64, initializer_range=0.3)
    model = minidistil.DistilBertForQuestionAnswering.from_config(config, seed=3)
    (tmp_path / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    tok = Tokenizer.from_vocab(tmp_path / "vocab.txt", model_max_length=64)
    model.save_pretrained(folder, tokenizer=tok)
    context = "We met in Zürich (at the café), then in Oslo! " * 4
    question = "where is the key ?"

    def answer(argv):
        assert cli.main(argv) == 0
        return [json.loads(x) for x in capsys.readouterr().out.splitlines()]

    for qa_flags, predict_flags in (([], []), (["--max-seq-len", "20", "--doc-stride", "4"],
                                              ["--max-length", "20", "--stride", "4"])):
        by_qa = answer(["qa", "--model", str(folder), "--context", context, question, *qa_flags])
        by_predict = answer(["predict", "--model", str(folder), "--context", context, question, *predict_flags])
        assert by_qa == by_predict and by_qa[0]["answer"]
    passage = tmp_path / "passage.txt"                                       # --context @FILE: one reader
    passage.write_text(context, encoding="utf-8")
    by_qa = answer(["qa", "--model", str(folder), "--context", f"@{passage}", question])
    assert by_qa == answer(["predict", "--model", str(folder), "--context", f"@{passage}", question])
