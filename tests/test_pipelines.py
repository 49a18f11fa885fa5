"""Pipelines: each answer recomputed from the model's raw outputs (NumPy only), entity grouping on hand-made tags,
and (oracle) the same answers as transformers' pipelines on tiny random checkpoints built in the test.
"""

import numpy as np
import pytest

import minidistil
from conftest import write_vocab

from minidistil import no_grad
from minidistil.core.config import BertConfig, DistilBertConfig
from minidistil.kernels._checks import f32_tol
from minidistil.apps.pipelines import TokenClassificationPipeline, pipeline, sigmoid, softmax
from minidistil.io.tokenizer import Tokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "paris", "london", "ada", "love", "##lace",
         "lived", "who", "what", "where", "is", "was", "it", "big", "small", "house", "park", "and", "of", "to",
         "##s", "##ed", "went", "home", "john", "smith", "visited", "berlin", "yesterday", "today", "red", "blue"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", "'"] + WORDS
V = len(VOCAB)
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TEXTS = ["The cat sat on the mat.", "Ada Lovelace lived in London!", "John Smith visited Berlin yesterday, "
         "and the dog ran in the park.", "Who went home?", ""]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"), VOCAB, model_max_length=32)


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return Tokenizer.from_pretrained(vocab_dir)


def _ours(arch, seed=0, **cfg):
    """One of our models with spread-out random weights (initializer_range 0.3: scores far from uniform)."""
    common = dict(vocab_size=V, max_position_embeddings=32, initializer_range=0.3)
    if arch.startswith("DistilBert"):
        config = DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **common, **cfg)
    else:
        config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            **common, **cfg)
    return minidistil.MODEL_CLASSES[arch].from_config(config, seed=seed)


def _raw(model, enc, **kw):
    with no_grad():
        return model(enc["input_ids"], attention_mask=enc["attention_mask"], **kw)


# ---- NumPy only: answers recomputed from raw outputs ----------------------------------------------------------


def test_fill_mask(tok):
    model = _ours("BertForMaskedLM", seed=1)
    fill = pipeline("fill-mask", model, tok, batch_size=2)
    texts = ["the [MASK] sat on the mat.", "ada [MASK] in london", "[MASK] went [MASK] ."]
    res = fill(texts, top_k=4)
    enc = tok(texts)
    logits = np.array(_raw(model, enc, token_type_ids=enc["token_type_ids"]).logits)     # (B, T, V)
    for b, r in enumerate(res[:2]):
        t = int(np.flatnonzero(enc["input_ids"][b] == tok.mask_token_id)[0])
        p = softmax(logits[b, t].astype(np.float64))
        best = np.argsort(-p)[:4]
        assert [x["token"] for x in r] == list(best)
        # the pipeline runs batches of 2, the direct call all 3 texts at once: another padded length, so another
        # BLAS path. Logits are float32 sums of C=16 terms through 2 layers, each ~1 in size: they agree within
        # f32_tol(16) ~ 9e-6 (a few ulps, derivation in kernels/_checks.py), and p = softmax(logits) changes by a
        # relative 2 max|dlogit| at most
        np.testing.assert_allclose([x["score"] for x in r], p[best], rtol=2 * f32_tol(16, scale=4.0))
        assert all(x["token_str"] == tok.convert_ids_to_tokens(x["token"]).lstrip("#") or x["token_str"]
                   for x in r)
        assert r[0]["sequence"] == tok.decode([i if i != tok.mask_token_id else r[0]["token"]
                                               for i in enc["input_ids"][b] if i != tok.pad_token_id])
    assert len(res[2]) == 2 and all(len(m) == 4 for m in res[2])      # two masks: a list per mask
    assert fill("the [MASK].", top_k=2)[0]["score"] >= fill("the [MASK].", top_k=2)[1]["score"]
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        fill(["the cat"])


def test_text_classification(tok):
    model = _ours("DistilBertForSequenceClassification", seed=2, id2label={0: "neg", 1: "neu", 2: "pos"})
    clf = pipeline("text-classification", model, tok, batch_size=2)
    one = clf(TEXTS)
    every = clf(TEXTS, top_k=None)
    p = softmax(np.array(_raw(model, tok(TEXTS)).logits, dtype=np.float64))             # (B, K)
    for b in range(len(TEXTS)):
        assert one[b]["label"] == ["neg", "neu", "pos"][int(np.argmax(p[b]))]
        np.testing.assert_allclose(one[b]["score"], p[b].max(), rtol=1e-6)
        assert [x["score"] for x in every[b]] == sorted((x["score"] for x in every[b]), reverse=True)
        np.testing.assert_allclose(sum(x["score"] for x in every[b]), 1.0, rtol=1e-12)
    single = pipeline("text-classification", model, tok, batch_size=1)(TEXTS, top_k=None)   # batching: no effect
    for a, b in zip(single, every):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=1e-6)


def test_multi_label_uses_sigmoid(tok):
    model = _ours("BertForSequenceClassification", seed=3, num_labels=3,
                  problem_type="multi_label_classification")
    res = pipeline("text-classification", model, tok)(TEXTS[:2], top_k=None)
    enc = tok(TEXTS[:2])
    s = sigmoid(np.array(_raw(model, enc, token_type_ids=enc["token_type_ids"]).logits, dtype=np.float64))
    for b in range(2):
        np.testing.assert_allclose(sorted(x["score"] for x in res[b]), np.sort(s[b]), rtol=1e-6)


def _t(label, score, start, word="x"):
    return {"entity": label, "score": score, "index": start, "word": word, "start": start, "end": start + 1}


def test_simple_aggregation_rules(tok):
    group = TokenClassificationPipeline(_ours("BertForTokenClassification"), tok)._group
    toks = [_t("B-PER", 0.9, 0, "john"), _t("I-PER", 0.7, 1, "smith"), _t("O", 0.8, 2), _t("I-LOC", 0.6, 3, "new"),
            _t("I-LOC", 0.4, 4, "york"), _t("B-LOC", 0.5, 5, "paris"), _t("B-LOC", 0.3, 6, "rome"),
            _t("PER", 0.2, 7, "ada"), _t("I-PER", 0.4, 8, "love"), _t("B-PER", 0.1, 9, "##lace")]
    got = [(g["entity_group"], round(g["score"], 6), g["word"], g["start"], g["end"]) for g in group(toks)]
    assert got == [("PER", 0.8, "john smith", 0, 2), ("O", 0.8, "x", 2, 3), ("LOC", 0.5, "new york", 3, 5),
                   ("LOC", 0.5, "paris", 5, 6), ("LOC", 0.3, "rome", 6, 7), ("PER", 0.3, "ada love", 7, 9),
                   ("PER", 0.1, "##lace", 9, 10)]


def test_token_classification(tok):
    id2label = dict(enumerate(NER_LABELS))
    model = _ours("DistilBertForTokenClassification", seed=4, id2label=id2label)
    ner = pipeline("ner", model, tok)
    text = TEXTS[2]
    ents = ner(text)
    tokens = ner(text, aggregation_strategy="none")
    enc = tok(text, return_offsets_mapping=True)
    p = softmax(np.array(_raw(model, enc).logits, dtype=np.float64))[0]                 # (T, K)
    real = np.flatnonzero(enc["sequence_ids"][0] == 0)
    labels = [NER_LABELS[int(np.argmax(p[t]))] for t in real]
    assert [x["entity"] for x in tokens] == [lab for lab in labels if lab != "O"]
    assert ents, "seed 4 should tag some entities"
    for e in ents:
        assert e["entity_group"] in ("PER", "LOC")
        assert 0 <= e["start"] < e["end"] <= len(text)
        assert e["word"].replace(" ", "") == text[e["start"]:e["end"]].lower().replace(" ", "")
    assert ner("") == []


def test_token_classification_reads_a_long_text_in_windows(tok):
    import warnings
    id2label = dict(enumerate(NER_LABELS))
    model = _ours("DistilBertForTokenClassification", seed=4, id2label=id2label)
    ner = pipeline("ner", model, tok)                               # max_length 32 (the vocabulary's config)
    text = " ".join([TEXTS[2], TEXTS[1], TEXTS[0]] * 2)
    whole = tok(text, truncation=False, return_offsets_mapping=True)
    n_tokens = int((whole["sequence_ids"][0] == 0).sum())
    assert n_tokens > 50                                            # several windows of at most 30 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # windows: nothing is truncated
        tokens = ner(text, aggregation_strategy="none", ignore_labels=(), stride=6)
    # every token of the text once, in order, with its offsets in the whole text
    assert [(t["start"], t["end"]) for t in tokens] == [tuple(int(x) for x in whole["offset_mapping"][0, t])
                                                        for t in np.flatnonzero(whole["sequence_ids"][0] == 0)]
    assert [t["index"] for t in tokens] == list(range(1, n_tokens + 1))
    # each token labelled from the window where it is farthest from an edge (the first such window on a tie)
    enc = tok(text, max_length=32, stride=6, return_overflowing_tokens=True, return_offsets_mapping=True)
    p = softmax(np.array(_raw(model, enc).logits, dtype=np.float64))                    # (W, T, K)
    chosen = {}
    for w in range(p.shape[0]):
        real = np.flatnonzero(enc["sequence_ids"][w] == 0)
        for pos, t in enumerate(real):
            key, edge = tuple(int(x) for x in enc["offset_mapping"][w, t]), min(pos, len(real) - 1 - pos)
            if key not in chosen or edge > chosen[key][0]:
                chosen[key] = (edge, p[w, t])
    for t in tokens:
        probs = chosen[t["start"], t["end"]][1]
        assert t["entity"] == NER_LABELS[int(np.argmax(probs))]
        np.testing.assert_allclose(t["score"], probs.max(), rtol=1e-12)
    assert p.shape[0] >= 3
    ents = ner(text, stride=6)
    assert ents and all(0 <= e["start"] < e["end"] <= len(text) for e in ents)
    with pytest.warns(UserWarning, match="truncated"):              # without stride: truncated, as transformers
        ner(text)


def _best_span(start_logits, end_logits, enc, max_answer_len):
    """Brute force over every span: softmax over [CLS] + context tokens (transformers' normalisation), best
    p_start[s] * p_end[e] with s <= e < s + max_answer_len among context tokens. Returns (score, s, e)."""
    ctx = enc["sequence_ids"][0] == 1
    keep = ctx.copy()
    keep[0] = True
    ps = softmax(np.where(keep, start_logits, -np.inf).astype(np.float64)) * ctx
    pe = softmax(np.where(keep, end_logits, -np.inf).astype(np.float64)) * ctx
    T = len(ps)
    return max((ps[s] * pe[e], s, e) for s in range(T) for e in range(s, min(s + max_answer_len, T)))


def test_question_answering(tok):
    model = _ours("BertForQuestionAnswering", seed=5)
    qa = pipeline("question-answering", model, tok)
    q, c = "where did ada live?", "Ada Lovelace lived in London, and the cat sat on the mat."
    ans = qa(q, c, max_answer_len=4, align_to_words=False)                # the tokens' own characters
    top = qa(q, c, top_k=3, max_answer_len=4, align_to_words=False)
    assert ans == top[0] and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
    assert ans["answer"] == c[ans["start"]:ans["end"]] and ans["answer"]
    # recompute: softmax over [CLS] + context tokens, best span with s <= e < s + 4 among context tokens
    enc = tok(q, c, return_offsets_mapping=True)
    out = _raw(model, enc, token_type_ids=enc["token_type_ids"])
    score, s, e = _best_span(np.array(out.start_logits)[0], np.array(out.end_logits)[0], enc, 4)
    np.testing.assert_allclose(ans["score"], score, rtol=1e-12)
    assert ans["start"] == enc["offset_mapping"][0, s, 0] and ans["end"] == enc["offset_mapping"][0, e, 1]
    with pytest.raises(ValueError, match="context"):
        qa(["a?", "b?"], ["x", "y", "z"])


def test_question_answering_reads_a_long_context_in_windows(tok):
    model = _ours("BertForQuestionAnswering", seed=5)
    qa = pipeline("question-answering", model, tok)
    q = "where did ada live?"
    c = ("The cat sat on the mat, and the dog ran in the park. John Smith visited Berlin yesterday. "
         "Ada Lovelace lived in London. The red house and the blue house. Who went home today? ") * 2
    L, S = 20, 4
    enc = tok(q, c, truncation="only_second", max_length=L, stride=S, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    W = enc["input_ids"].shape[0]
    assert W >= 4 and (enc["overflow_to_sample_mapping"] == 0).all() and enc["input_ids"].shape[1] <= L
    # the windows cover the whole context, consecutive ones sharing S context tokens
    ctx = [enc["input_ids"][w][enc["sequence_ids"][w] == 1] for w in range(W)]
    whole = tok(q, c, truncation=False)["input_ids"][0][tok(q, c, truncation=False, return_offsets_mapping=True)
                                                          ["sequence_ids"][0] == 1]
    joined = np.concatenate([ctx[0]] + [x[S:] for x in ctx[1:]])
    np.testing.assert_array_equal(joined, whole)
    for w in range(1, W):
        np.testing.assert_array_equal(ctx[w][:S], ctx[w - 1][-S:])
    # the answer: the best span of any window, scored within its window
    out = _raw(model, enc, token_type_ids=enc["token_type_ids"])
    best = max(_best_span(np.array(out.start_logits)[w], np.array(out.end_logits)[w],
                           {k: v[w:w + 1] for k, v in enc.items()}, 4) + (w,) for w in range(W))
    score, s, e, w = best
    ans = qa(q, c, max_answer_len=4, max_seq_len=L, doc_stride=S, align_to_words=False)
    np.testing.assert_allclose(ans["score"], score, rtol=1e-12)
    assert (ans["start"], ans["end"]) == (enc["offset_mapping"][w, s, 0], enc["offset_mapping"][w, e, 1])
    assert ans["answer"] == c[ans["start"]:ans["end"]]
    top = qa(q, c, top_k=5, max_answer_len=4, max_seq_len=L, doc_stride=S, align_to_words=False)
    assert top[0] == ans and all(a["score"] >= b["score"] for a, b in zip(top, top[1:]))
    assert len({a["start"] for a in top}) > 1
    with pytest.raises(ValueError, match="max_seq_len"):
        qa(q, c, max_seq_len=1000)
    with pytest.raises(ValueError, match="stride"):
        tok(q, c, stride=-1)


def test_sentence_embeddings_pooling(tok):
    model = _ours("BertModel", seed=6)
    texts = TEXTS[:4]
    enc = tok(texts)
    h = np.array(_raw(model, enc, token_type_ids=enc["token_type_ids"]).last_hidden_state, dtype=np.float64)
    m = enc["attention_mask"][..., None]
    mean = (h * m).sum(1) / m.sum(1)
    emb = pipeline("sentence-embeddings", model, tok, batch_size=3)(texts)
    assert emb.dtype == np.float32 and emb.shape == (4, 16)
    np.testing.assert_allclose(emb, mean, atol=1e-5)
    unit = pipeline("sentence-embeddings", model, tok, normalize=True)(texts)
    np.testing.assert_allclose(unit, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)
    both = pipeline("sentence-embeddings", model, tok, pooling={"pooling_mode_cls_token": True,
                                                                "pooling_mode_max_tokens": True})(texts)
    np.testing.assert_allclose(both[:, :16], h[:, 0], atol=1e-5)
    np.testing.assert_allclose(both[:, 16:], np.where(m > 0, h, -np.inf).max(1), atol=1e-5)


def test_pipeline_from_folder_picks_the_head(tmp_path, tok):
    folder = minidistil.save_pretrained(_ours("DistilBertForMaskedLM", seed=7), tmp_path / "m", tok)
    fill = pipeline("fill-mask", folder)
    assert type(fill.model).__name__ == "DistilBertForMaskedLM"
    assert len(fill("the [MASK] sat.", top_k=3)) == 3
    with pytest.warns(UserWarning) as rec:
        clf = pipeline("text-classification", folder)                   # a new head on the encoder
    assert "newly initialized" in " ".join(str(w.message) for w in rec)
    assert type(clf.model).__name__ == "DistilBertForSequenceClassification"
    with pytest.raises(ValueError, match="task"):
        pipeline("translation", folder)


# ---- against transformers' pipelines ---------------------------------------------------------------------------


def _hf_folder(transformers, torch, tmp_path, vocab_dir, arch, **cfg):
    torch.manual_seed(0)
    common = dict(vocab_size=V, max_position_embeddings=32, initializer_range=0.3, **cfg)
    if arch.startswith("DistilBert"):
        config = transformers.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, **common)
    else:
        config = transformers.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=32, **common)
    model = getattr(transformers, arch)(config)
    with torch.no_grad():  # HF leaves LayerNorm at 1 / 0 and biases at 0: spread them too, so they are tested
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    transformers.BertTokenizerFast.from_pretrained(str(vocab_dir)).save_pretrained(tmp_path)
    return str(tmp_path)


# scores are probabilities computed in float64 from float32 logits; the logits of the two float32 forwards differ by
# ~1e-6 (see test_loading.HF_ATOL's derivation), so probabilities differ by less than that: 1e-5 leaves room.
SCORE_ATOL = 1e-5


@pytest.mark.torch
def test_fill_mask_matches_transformers(oracle, tmp_path, vocab_dir, torch):
    transformers = oracle("transformers")
    folder = _hf_folder(transformers, torch, tmp_path, vocab_dir, "BertForMaskedLM")
    texts = ["the [MASK] sat on the mat.", "ada lovelace [MASK] in london."]
    theirs = transformers.pipeline("fill-mask", model=folder, device="cpu")(texts, top_k=5)
    ours = pipeline("fill-mask", folder)(texts, top_k=5)
    for a, b in zip(ours, theirs):
        assert [x["token"] for x in a] == [x["token"] for x in b]
        assert [x["token_str"] for x in a] == [x["token_str"] for x in b]
        assert [x["sequence"] for x in a] == [x["sequence"] for x in b]
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=SCORE_ATOL)


@pytest.mark.torch
def test_text_classification_matches_transformers(oracle, tmp_path, vocab_dir, torch):
    transformers = oracle("transformers")
    folder = _hf_folder(transformers, torch, tmp_path, vocab_dir, "DistilBertForSequenceClassification",
                        id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2})
    theirs = transformers.pipeline("text-classification", model=folder, device="cpu")(TEXTS, top_k=None)
    ours = pipeline("text-classification", folder)(TEXTS, top_k=None)
    for a, b in zip(ours, theirs):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        np.testing.assert_allclose([x["score"] for x in a], [x["score"] for x in b], atol=SCORE_ATOL)


@pytest.mark.torch
def test_token_classification_matches_transformers(oracle, tmp_path, vocab_dir, torch):
    transformers = oracle("transformers")
    id2label = dict(enumerate(NER_LABELS))
    folder = _hf_folder(transformers, torch, tmp_path, vocab_dir, "BertForTokenClassification",
                        id2label=id2label, label2id={v: k for k, v in id2label.items()})
    hf = transformers.pipeline("token-classification", model=folder, device="cpu", aggregation_strategy="simple")
    ner = pipeline("ner", folder)
    n_entities = 0
    for text in TEXTS[:4]:
        theirs, ours = hf(text), ner(text)
        n_entities += len(ours)
        assert [(e["entity_group"], e["word"], e["start"], e["end"]) for e in ours] == \
               [(e["entity_group"], e["word"], e["start"], e["end"]) for e in theirs]
        np.testing.assert_allclose([e["score"] for e in ours], [float(e["score"]) for e in theirs], atol=SCORE_ATOL)
    assert n_entities >= 3, "the random model should tag a few entities, else this test shows little"


@pytest.mark.torch
def test_question_answering_matches_transformers(oracle, tmp_path, vocab_dir, torch):
    transformers = oracle("transformers")
    folder = _hf_folder(transformers, torch, tmp_path, vocab_dir, "DistilBertForQuestionAnswering")
    # transformers 5 removed its question-answering pipeline: the reference is its model's logits + _best_span
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
    qa = pipeline("question-answering", folder)
    context = "Ada Lovelace lived in London, and John Smith visited Berlin yesterday."
    for q in ["who lived in london?", "where is the dog?", "what was red?"]:
        enc = qa.tokenizer(q, context, return_offsets_mapping=True)
        with torch.no_grad():
            out = hf(input_ids=torch.from_numpy(enc["input_ids"]),
                     attention_mask=torch.from_numpy(enc["attention_mask"]))
        score, s, e = _best_span(out.start_logits[0].numpy(), out.end_logits[0].numpy(), enc, 6)
        # transformers' align_to_words (its default): the answer widened to the whole words of tokens s and e
        words, ctx = enc.word_ids(0), enc["sequence_ids"][0] == 1
        start = min(int(enc["offset_mapping"][0, t, 0]) for t in np.flatnonzero(ctx) if words[t] == words[s])
        end = max(int(enc["offset_mapping"][0, t, 1]) for t in np.flatnonzero(ctx) if words[t] == words[e])
        ours = qa(q, context, max_answer_len=6)
        assert (ours["answer"], ours["start"], ours["end"]) == (context[start:end], start, end)
        np.testing.assert_allclose(ours["score"], score, atol=SCORE_ATOL)
