"""Extractive question answering: the one window maker and the one span decoder, shared by the question-answering
pipeline (`minidistil qa`), `minidistil predict`, fine-tuning (its training targets and its evaluation) and
`minidistil evaluate`, with transformers' question-answering pipeline defaults (DEFAULTS).

Windows. A context too long for max_seq_len tokens is read in overlapping windows, each holding the whole
question:  [CLS] question [SEP] context[w0:w1] [SEP], consecutive windows sharing doc_stride context tokens (the
tokenizer's return_overflowing_tokens, as transformers' pipeline and run_qa.py cut them).

Decoding one window (transformers' rule):
    p_start = softmax(start_logits over the context tokens and [CLS])       [CLS] stands for "no answer"
    p_end   = softmax(end_logits   over the context tokens and [CLS])
    score(s, e) = p_start[s] * p_end[e]   for context tokens s <= e < s + max_answer_len
The best spans over all windows of a question win; with handle_impossible_answer the empty answer competes with
score min over windows of p_start[CLS] * p_end[CLS]. With align_to_words the answer's characters are widened to
whole words (a span that starts inside "lovelace" at "##lace" answers "Lovelace").

Shapes: W windows, T tokens.
"""
from __future__ import annotations

import numpy as np

# transformers' question-answering pipeline defaults; max_seq_len is also capped by the model's max length, and
# doc_stride by half a window
DEFAULTS = {"top_k": 1, "max_answer_len": 15, "doc_stride": 128, "max_seq_len": 384,
            "handle_impossible_answer": False, "align_to_words": True}


def resolve(max_seq_len: int | None, doc_stride: int | None, model_max_length: int) -> tuple[int, int]:
    """(max_seq_len, doc_stride) with the defaults filled in: max_seq_len min(384, the model's limit) and
    doc_stride min(128, max_seq_len // 2), as transformers' pipeline does."""
    max_seq_len = int(max_seq_len or min(DEFAULTS["max_seq_len"], model_max_length))
    if not 3 <= max_seq_len <= model_max_length:
        raise ValueError(f"max_seq_len: expected 3 to {model_max_length} tokens, got {max_seq_len}")
    doc_stride = DEFAULTS["doc_stride"] if doc_stride is None else int(doc_stride)
    if doc_stride < 0:
        raise ValueError(f"doc_stride: expected a non-negative number of tokens, got {doc_stride}")
    return max_seq_len, min(doc_stride, max_seq_len // 2)


def windows(tokenizer, questions: list[str], contexts: list[str], max_seq_len: int, doc_stride: int):
    """Every window of every (question, context): the tokenizer's encoding with offset_mapping (W, T, 2),
    sequence_ids (W, T) (1 marks context tokens) and overflow_to_sample_mapping (W,) (the question of each row)."""
    if len(questions) != len(contexts):
        raise ValueError(f"context: expected {len(questions)} contexts (one per question), got {len(contexts)}")
    for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"question {i}: expected a non-empty string, got {q!r}")
        if not isinstance(c, str):
            raise ValueError(f"context {i}: expected a string, got {type(c).__name__}")
        room = max_seq_len - len(tokenizer.tokenize(q)) - 3                  # context tokens per window
        if room <= doc_stride and len(tokenizer.tokenize(c)) > room:         # windows needed, none can overlap
            raise ValueError(f"question {i}: {q[:40]!r} leaves {max(room, 0)} context tokens per window of "
                             f"max_seq_len={max_seq_len}, not more than doc_stride={doc_stride}; raise max_seq_len "
                             "or lower doc_stride")
    return tokenizer(questions, contexts, padding=True, truncation="only_second", max_length=max_seq_len,
                     stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                     return_token_type_ids=True)


def answer_positions(enc, answers: list[tuple[int, int] | None]) -> tuple[np.ndarray, np.ndarray]:
    """Training targets: for each window, the token positions (start, end) of its question's answer, given as
    character [start, end) in the context (None: no answer); (0, 0), the [CLS] token, when the window does not
    hold the whole answer (as transformers' run_qa.py)."""
    W = enc["input_ids"].shape[0]
    starts, ends = np.zeros(W, dtype=np.int64), np.zeros(W, dtype=np.int64)    # (W,) 0 = [CLS]
    for w in range(W):
        span = answers[int(enc["overflow_to_sample_mapping"][w])]
        if span is None:
            continue
        a0, a1 = span
        ctx = np.flatnonzero(enc["sequence_ids"][w] == 1)
        off = enc["offset_mapping"][w]
        if ctx.size == 0 or not (off[ctx[0], 0] <= a0 and off[ctx[-1], 1] >= a1):
            continue                                                            # not wholly in this window
        hit = ctx[(off[ctx, 0] < a1) & (off[ctx, 1] > a0)]                      # tokens overlapping the answer
        if hit.size:
            starts[w], ends[w] = hit[0], hit[-1]
    return starts, ends


def window_spans(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray, top_k: int,
                 max_answer_len: int) -> tuple[list[tuple[float, int, int]], float]:
    """The top_k spans (score, s, e) of one window and its null score p_start[CLS] * p_end[CLS].
    start_logits, end_logits (T,); context (T,) bool, True for context tokens."""
    allowed = context.copy()
    allowed[0] = True                                                           # [CLS] joins the softmax
    p_start = _masked_softmax(start_logits, allowed)                            # (T,)
    p_end = _masked_softmax(end_logits, allowed)                                # (T,)
    null = float(p_start[0] * p_end[0])
    p_start[~context], p_end[~context] = 0.0, 0.0                               # ... but is never an answer
    span = np.triu(np.tril(np.outer(p_start, p_end), max_answer_len - 1))      # (T, T) s <= e < s + len
    spans = []
    for flat in np.argsort(-span.reshape(-1), kind="stable")[:top_k]:
        s, e = divmod(int(flat), span.shape[1])
        if span[s, e] <= 0:
            break
        spans.append((float(span[s, e]), s, e))
    return spans, null


def _masked_softmax(logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    z = np.where(allowed, np.asarray(logits, dtype=np.float64), -np.inf)
    e = np.exp(z - z.max())
    return e / e.sum()


def decode(enc, start_logits, end_logits, contexts: list[str], *, top_k: int = DEFAULTS["top_k"],
           max_answer_len: int = DEFAULTS["max_answer_len"],
           handle_impossible_answer: bool = DEFAULTS["handle_impossible_answer"],
           align_to_words: bool = DEFAULTS["align_to_words"]) -> list[list[dict]]:
    """For each question: its top_k answers {"score", "start", "end", "answer"} over all its windows, best first
    (start/end index characters of its context). start_logits / end_logits: one row per window of `enc` (arrays
    (W, T) or lists of rows, a row may be shorter than T: what lies beyond it is padding)."""
    if top_k < 1 or max_answer_len < 1:
        raise ValueError(f"top_k, max_answer_len: expected positive integers, got {top_k}, {max_answer_len}")
    found: list[list[dict]] = [[] for _ in contexts]
    null = [1e6] * len(contexts)
    for w in range(enc["input_ids"].shape[0]):
        i = int(enc["overflow_to_sample_mapping"][w])
        n = len(start_logits[w])
        spans, w_null = window_spans(np.asarray(start_logits[w]), np.asarray(end_logits[w]),
                                     enc["sequence_ids"][w][:n] == 1, top_k, max_answer_len)
        null[i] = min(null[i], w_null)
        for score, s, e in spans:
            c0, c1 = _characters(enc, w, s, e, align_to_words)
            found[i].append({"score": score, "start": c0, "end": c1, "answer": contexts[i][c0:c1]})
    out = []
    for i, answers in enumerate(found):
        if handle_impossible_answer:
            answers.append({"score": null[i], "start": 0, "end": 0, "answer": ""})
        if not answers:
            raise ValueError(f"context {i}: no context token left after tokenisation (an empty context?)")
        out.append(sorted(answers, key=lambda a: -a["score"])[:top_k])           # stable: windows in order
    return out


def _characters(enc, w: int, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """The context characters [c0, c1) of tokens s..e of window w, widened to whole words with align_to_words."""
    off = enc["offset_mapping"][w]
    c0, c1 = int(off[s, 0]), int(off[e, 1])
    if align_to_words:
        words = np.asarray(enc.word_ids(w), dtype=object)
        ctx = enc["sequence_ids"][w][:len(words)] == 1
        same_start = ctx & (words == words[s])                                  # tokens of the start's word
        same_end = ctx & (words == words[e])
        c0 = int(off[:len(words)][same_start, 0].min())
        c1 = int(off[:len(words)][same_end, 1].max())
    return c0, c1
