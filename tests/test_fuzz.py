"""Property tests over hostile input: the safetensors reader, the tokenizer and the pipelines either answer (and
the answer is consistent) or raise a documented error class (ValueError and its subclasses SafetensorsError and
CheckpointError); anything else (IndexError, TypeError, OverflowError, a Rust PanicException) fails the test.

Each test draws a bounded number of examples (settings below), so the whole file runs in seconds in CI.
"""
import json
import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

import minidistil
from minidistil.io import safetensors_io as st
from minidistil.core.config import BertConfig, DistilBertConfig
from minidistil.apps.pipelines import pipeline
from minidistil.io.tokenizer import Tokenizer

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", "the", "cat", "sat", "on", "mat", "dog", "ran",
         "who", "ada", "lived", "in", "london", "##s", "é", "中"]
MAX_POS = 16                       # short windows: long inputs, strides and truncation are the common case


# ---- safetensors headers -----------------------------------------------------------------------------------------

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"]
DIMS = hs.one_of(hs.integers(0, 5), hs.sampled_from([0, 2**31, 2**32, 2**62, 2**63, 2**64, 2**70, -1]))
JSON = hs.recursive(hs.none() | hs.booleans() | hs.integers(-2**70, 2**70) | hs.floats(allow_nan=False)
                    | hs.text(max_size=8),
                    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@hs.composite
def structured_file(draw):
    """A safetensors file built from drawn entries: mostly well formed (offsets that tile the data), with drawn
    dtypes, shapes (huge and zero-sized dimensions included), offsets, metadata and data length."""
    header, offset = {}, 0
    for i in range(draw(hs.integers(0, 4))):
        dtype = draw(hs.sampled_from(DTYPES + ["Q8", 5, None]))
        shape = draw(hs.one_of(hs.lists(DIMS, max_size=3), JSON))
        size = np.dtype(st._DTYPES[dtype]).itemsize if dtype in st._DTYPES else 4
        nbytes = size * int(np.prod([d for d in shape if isinstance(d, int) and 0 <= d < 6], dtype=np.int64)) \
            if isinstance(shape, list) else 4
        offsets = draw(hs.one_of(hs.just([offset, offset + nbytes]), hs.lists(hs.integers(-1, 2**65), max_size=3),
                                 JSON))
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        header[draw(hs.sampled_from([f"t{i}", "", "__metadata__", "ü" * 3]))] = draw(hs.one_of(hs.just(entry), JSON))
        offset += nbytes
    if draw(hs.booleans()):
        header["__metadata__"] = draw(hs.one_of(hs.dictionaries(hs.text(max_size=4), hs.text(max_size=4)), JSON))
    raw = json.dumps(header).encode()
    data = draw(hs.binary(min_size=0, max_size=8)) if draw(hs.booleans()) else b"\x01" * offset
    length = draw(hs.one_of(hs.just(len(raw)), hs.integers(0, 2**64 - 1)))
    return struct.pack("<Q", length) + raw + data


def _check_read(path, content: bytes):
    path.write_bytes(content)
    try:
        out = st.load_file(path, to_float32=False)
    except st.SafetensorsError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)       # one line naming the file
        return
    header, _, start = st.read_header(path)
    for name, a in out.items():
        begin, end = header[name]["data_offsets"]
        assert list(a.shape) == header[name]["shape"] and a.nbytes == end - begin
        assert a.tobytes() == content[start + begin:start + end]


@FEW
@given(content=hs.binary(max_size=64))
def test_safetensors_random_bytes(tmp_path_factory, content):
    _check_read(tmp_path_factory.getbasetemp() / "random.safetensors", content)


@settings(max_examples=150, deadline=None)
@given(content=structured_file())
def test_safetensors_structured_headers(tmp_path_factory, content):
    _check_read(tmp_path_factory.getbasetemp() / "structured.safetensors", content)


@FEW
@given(header=JSON)
def test_safetensors_any_json_header(tmp_path_factory, header):
    raw = json.dumps(header).encode()
    _check_read(tmp_path_factory.getbasetemp() / "json.safetensors", struct.pack("<Q", len(raw)) + raw)


# ---- the tokenizer and the pipelines over random text ------------------------------------------------------------

# any code point, mixed with words the vocabulary knows; a quarter of the texts hold lone surrogates (what
# undecodable bytes become in Python) and a quarter are long (several windows of MAX_POS tokens)
PIECES = hs.one_of(hs.characters(), hs.sampled_from(["[MASK]", "[CLS]", "[SEP]", " ", "the", "cat", "sat", "ada",
                                                     "london", ".", "?", "\x00", "\ufffd", "é", "中", "\u0301"]))
SURROGATES = hs.integers(0xD800, 0xDFFF).map(chr)
TEXT = hs.one_of(hs.lists(PIECES, max_size=20).map(" ".join) | hs.lists(PIECES, max_size=20).map("".join),
                 hs.lists(PIECES | SURROGATES, min_size=1, max_size=8).map(" ".join),
                 hs.tuples(hs.integers(0, 30), hs.lists(PIECES, max_size=4)).map(
                     lambda nw: " ".join(["the cat sat"] * nw[0] + nw[1])))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    tok = Tokenizer.from_pretrained(root)
    small = dict(vocab_size=len(VOCAB), max_position_embeddings=MAX_POS, initializer_range=0.3)
    bert = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, **small)
    distil = DistilBertConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=16, **small)
    models = {"fill-mask": ("BertForMaskedLM", bert),
              "text-classification": ("DistilBertForSequenceClassification", distil),
              "token-classification": ("BertForTokenClassification",
                                       bert.replace(id2label={0: "O", 1: "B-X", 2: "I-X"}, label2id=None)),
              "question-answering": ("DistilBertForQuestionAnswering", distil),
              "sentence-embeddings": ("BertModel", bert)}
    return tok, {task: pipeline(task, minidistil.MODEL_CLASSES[cls].from_config(config, seed=0), tok)
                 for task, (cls, config) in models.items()}


def _only_value_errors(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                  # truncation warnings
        try:
            return call()
        except ValueError as e:
            assert str(e) and "\n" not in str(e), repr(e)
            return None


@hs.composite
def windowing(draw):
    """(max_length, stride), stride mostly at the edges of the room a window leaves (max_length less 2 or 3
    special tokens), where tokenizers panics."""
    max_length = draw(hs.integers(3, 12) | hs.integers(-1, 2))
    stride = draw(hs.sampled_from([max_length - 4, max_length - 3, max_length - 2, max_length - 1, 0, 1, -1]))
    return max_length, stride


@settings(max_examples=150, deadline=None)
@given(texts=hs.lists(TEXT, min_size=1, max_size=3), pair=hs.booleans(), window=windowing(),
       truncation=hs.sampled_from([True, "only_first", "only_second", False]), windows=hs.booleans(),
       padding=hs.sampled_from([True, False, "max_length"]))
def test_tokenizer_random_text(tiny, texts, pair, window, truncation, windows, padding):
    """Window-size edge cases included: max_length from 3 (the special tokens alone) up, strides at and past the
    room a window leaves."""
    tok, _ = tiny
    max_length, stride = window
    for t in texts:
        _only_value_errors(lambda t=t: tok.tokenize(t))
        _only_value_errors(lambda t=t: tok.decode(tok.encode(t)))
    pairs = list(reversed(texts)) if pair else None
    enc = _only_value_errors(lambda: tok(texts, pairs, max_length=max_length, stride=stride, truncation=truncation,
                                         return_overflowing_tokens=windows, padding=padding,
                                         return_offsets_mapping=True))
    if enc is None:
        return
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape and ((0 <= ids) & (ids < len(VOCAB))).all()
    assert ids.shape[0] >= len(texts) and (mask.sum(axis=1) >= 2).all()                 # [CLS] ... [SEP] at least
    if truncation:
        assert (mask.sum(axis=1) <= max_length).all()


@settings(max_examples=100, deadline=None)
@given(texts=hs.lists(TEXT, min_size=1, max_size=3), top_k=hs.integers(-1, 4),
       stride=hs.sampled_from([None, -1, 0, 1, MAX_POS - 4, MAX_POS - 3, MAX_POS - 2, MAX_POS - 1]),
       task=hs.sampled_from(["fill-mask", "text-classification", "token-classification", "sentence-embeddings"]))
def test_pipelines_random_text(tiny, texts, top_k, stride, task):
    _, pipes = tiny
    call = {"fill-mask": lambda p: p(texts, top_k=top_k),
            "text-classification": lambda p: p(texts, top_k=top_k if top_k >= 0 else None),
            "token-classification": lambda p: p(texts, stride=stride),
            "sentence-embeddings": lambda p: p(texts)}[task]
    out = _only_value_errors(lambda: call(pipes[task]))
    if out is None:
        return
    assert len(out) == len(texts)
    flat = json.dumps(out.tolist() if isinstance(out, np.ndarray) else out, allow_nan=False)   # all finite
    assert flat


@settings(max_examples=100, deadline=None)
@given(question=TEXT, context=TEXT, top_k=hs.integers(0, 3), max_answer_len=hs.integers(0, 6),
       doc_stride=hs.integers(-1, MAX_POS), max_seq_len=hs.none() | hs.integers(0, MAX_POS + 2))
def test_question_answering_random_text(tiny, question, context, top_k, max_answer_len, doc_stride, max_seq_len):
    _, pipes = tiny
    out = _only_value_errors(lambda: pipes["question-answering"](question, context, top_k=top_k,
                                                                 max_answer_len=max_answer_len,
                                                                 doc_stride=doc_stride, max_seq_len=max_seq_len))
    if out is None:
        return
    for a in out if isinstance(out, list) else [out]:
        assert context[a["start"]:a["end"]] == a["answer"] and 0 <= a["score"] <= 1
