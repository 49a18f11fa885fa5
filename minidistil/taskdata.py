"""Labelled data for fine-tuning: readers for the layouts people have, and the encoders that turn examples into
model inputs (labels aligned to word pieces, QA contexts cut into windows).

Readers (each returns Loaded(examples, skipped)):
    read_table(path, ...)      CSV, TSV (GLUE layout: a header row, tab-separated, no quoting) or JSONL, with
                               configurable text / text-pair / label fields (names, or column numbers when the file
                               has no header). Labels are class names, floats (regression) or, for multi-label, a
                               list (JSON) or a string split on label_sep ("sports,politics").
    read_imdb(folder, split)   the IMDb review folders: folder/split/pos/*.txt and folder/split/neg/*.txt.
    read_conll(path)           CoNLL-style token classification: one "word ... tag" line per token (the word is the
                               first column, the tag the last unless tag_column says otherwise), a blank line
                               between sentences, -DOCSTART- lines ignored.
    read_squad(path)           SQuAD v1.1 JSON: data[].paragraphs[].{context, qas[].{id, question, answers[]}}.
    read_choice(path, ...)     multiple choice, JSONL (a list field of choices) or CSV/TSV (one column per choice).

Malformed rows are never dropped silently. With on_error="fail" the first one raises a DataError naming the file
and line; with on_error="skip" each is recorded in `skipped` as "file:line: why" and left out, and the caller
reports how many and which.

Encoders:
    align_word_labels      words + word tags -> word pieces with the FIRST piece of each word labelled and every
                           other piece (and [CLS]/[SEP]) labelled -100, so that the loss sees one label per word
    qa_windows             [CLS] question [SEP] context-window [SEP] for every window of a long context (windows
                           overlap by `stride` tokens); the answer's character span becomes token start/end
                           positions, and a window that does not hold the whole answer points both at [CLS] (0)
    best_span              the best answer over all windows of one example, mapped back to characters
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from collections.abc import Sequence

import numpy as np

IGNORE_INDEX = -100          # label of a position the loss skips (HF's convention)
ON_ERROR = ("skip", "fail")


class DataError(ValueError):
    """A malformed row with on_error="fail": the message starts with file:line."""


class Loaded(NamedTuple):
    examples: list
    skipped: list[str]       # "file:line: why", one per row left out


@dataclass
class TextExample:
    text: str
    text_pair: str | None = None
    label: Any = None        # class name (str), float (regression), list of names (multi-label), None (no label)
    where: str = ""          # file:line


@dataclass
class TokenExample:
    words: list[str]
    tags: list[str] | None
    where: str = ""


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)   # (text, character start) in context
    where: str = ""


@dataclass
class ChoiceExample:
    question: str
    choices: list[str]
    label: int | None = None
    where: str = ""


class _Problems:
    def __init__(self, on_error: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error: expected 'skip' or 'fail', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[str] = []

    def __call__(self, where: str, why: str):
        msg = f"{where}: {why}"
        if self.on_error == "fail":
            raise DataError(msg + " (use on_error='skip' / --on-error skip to leave such rows out)")
        self.skipped.append(msg)


def _check_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


# ----------------------------------------------------------------------------------------------------------------
# tables: CSV, TSV, JSONL


def table_format(path: Path, fmt: str | None = None) -> str:
    if fmt is not None:
        if fmt not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"fmt: expected 'csv', 'tsv' or 'jsonl', got {fmt!r}")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; give fmt='csv', 'tsv' or 'jsonl'")


def iter_records(path, fmt: str | None = None, header: bool = True, problems: _Problems | None = None):
    """Yield (where, record) with record a dict (JSONL, or a table with a header) or a list (a table without)."""
    path = _check_file(path)
    fmt = table_format(path, fmt)
    problems = problems or _Problems("fail")
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "jsonl":
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    problems(f"{path}:{i}", f"not valid JSON ({e.msg})")
                    continue
                if not isinstance(rec, dict):
                    problems(f"{path}:{i}", f"expected a JSON object, got {type(rec).__name__}")
                    continue
                yield f"{path}:{i}", rec
            return
        # GLUE's TSV files are not quoted (a sentence may start with a quote mark): read tabs literally
        reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(f))
        names, line = None, 1
        for row in reader:
            where, line = f"{path}:{line}", reader.line_num + 1   # a quoted CSV field may span lines
            if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("#") and names is None \
                    and header:
                continue                                            # blank lines; comments before the header
            if header and names is None:
                names = [c.strip() for c in row]
                continue
            if names is not None:
                if len(row) != len(names):
                    problems(where, f"expected {len(names)} columns (as the header), got {len(row)}")
                    continue
                yield where, dict(zip(names, row))
            else:
                yield where, row


def _get(rec, key, where):
    """A field by name (dict records) or by column number (list records); KeyError with a clear message."""
    if isinstance(rec, dict):
        if key not in rec:
            raise KeyError(f"no field {key!r} (fields: {sorted(rec)})")
        return rec[key]
    try:
        return rec[int(key)]
    except (ValueError, IndexError):
        raise KeyError(f"no column {key!r} (the row has {len(rec)} columns; without a header, fields are column "
                       "numbers from 0)") from None


def parse_label(value, kind: str, label_sep: str = ","):
    """kind "class" -> str; "regression" -> float; "multi" -> list[str]. ValueError when it does not parse."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("empty label")
    if kind == "regression":
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"label {value!r} is not a finite number")
        return x
    if kind == "multi":
        if isinstance(value, list):
            return [str(v).strip() for v in value]
        return [v.strip() for v in str(value).split(label_sep) if v.strip()]
    if isinstance(value, float) and value.is_integer():
        value = int(value)                                          # JSON 1.0 and CSV "1" name the same class
    return str(value).strip()


def read_table(path, text_field="text", label_field: str | None = "label", text_pair_field: str | None = None, *,
               fmt: str | None = None, header: bool = True, label_kind: str = "class", label_sep: str = ",",
               on_error: str = "skip") -> Loaded:
    """Text (or text-pair) examples from CSV / TSV / JSONL. label_field None reads unlabelled text."""
    if label_kind not in ("class", "regression", "multi"):
        raise ValueError(f"label_kind: expected 'class', 'regression' or 'multi', got {label_kind!r}")
    problems = _Problems(on_error)
    out = []
    for where, rec in iter_records(path, fmt, header, problems):
        try:
            text = _get(rec, text_field, where)
            pair = _get(rec, text_pair_field, where) if text_pair_field is not None else None
            raw = _get(rec, label_field, where) if label_field is not None else None
        except KeyError as e:
            problems(where, e.args[0])
            continue
        if not isinstance(text, str) or not text.strip():
            problems(where, f"empty or non-text {text_field!r}")
            continue
        if pair is not None and (not isinstance(pair, str) or not pair.strip()):
            problems(where, f"empty or non-text {text_pair_field!r}")
            continue
        label = None
        if label_field is not None:
            try:
                label = parse_label(raw, label_kind, label_sep)
            except (ValueError, TypeError) as e:
                problems(where, f"bad label {raw!r} in {label_field!r}: {e}")
                continue
        out.append(TextExample(text, pair, label, where))
    return Loaded(out, problems.skipped)


# ----------------------------------------------------------------------------------------------------------------
# IMDb folders


IMDB_LABELS = ("neg", "pos")


def read_imdb(folder, split: str = "train", on_error: str = "skip") -> Loaded:
    """folder/split/{neg,pos}/*.txt (the aclImdb layout). HTML line breaks (<br />) become spaces."""
    problems = _Problems(on_error)
    base = Path(folder) / split
    if not all((base / lab).is_dir() for lab in IMDB_LABELS):
        raise FileNotFoundError(f"{base}: expected the IMDb layout with folders {base / 'neg'} and {base / 'pos'}")
    out = []
    for lab in IMDB_LABELS:
        for p in sorted((base / lab).glob("*.txt")):
            try:
                text = p.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                problems(f"{p}:1", f"not UTF-8 ({e.reason})")
                continue
            text = " ".join(text.replace("<br />", " ").split())
            if not text:
                problems(f"{p}:1", "empty review")
                continue
            out.append(TextExample(text, None, lab, f"{p}:1"))
    return Loaded(out, problems.skipped)


# ----------------------------------------------------------------------------------------------------------------
# CoNLL token classification


def read_conll(path, tag_column: int = -1, on_error: str = "skip") -> Loaded:
    """Sentences of (word, tag) from a CoNLL-style file; a sentence with a malformed line is left out whole."""
    path = _check_file(path)
    problems = _Problems(on_error)
    out, words, tags, start, bad = [], [], [], None, None

    def flush():
        nonlocal words, tags, start, bad
        if words and bad is None:
            out.append(TokenExample(words, tags, f"{path}:{start}"))
        elif bad is not None:
            problems(f"{path}:{bad[0]}", bad[1] + f" (the sentence starting at line {start} is left out)")
        words, tags, start, bad = [], [], None, None

    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            cols = line.split()
            if not cols:
                flush()
                continue
            if cols[0] == "-DOCSTART-":
                flush()
                continue
            if start is None:
                start = i
            if len(cols) < 2:
                bad = bad or (i, f"expected 'word ... tag', got {line.strip()!r}")
                continue
            words.append(cols[0])
            tags.append(cols[tag_column])
    flush()
    return Loaded(out, problems.skipped)


# ----------------------------------------------------------------------------------------------------------------
# SQuAD v1.1


def _line_of(raw: str, needle: str) -> int:
    at = raw.find(needle)
    return raw.count("\n", 0, at) + 1 if at >= 0 else 1


def read_squad(path, on_error: str = "skip") -> Loaded:
    """Questions with their context and answers; an answer whose text is not at answer_start is malformed."""
    path = _check_file(path)
    problems = _Problems(on_error)
    raw = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(raw)
        articles = doc["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path}:1: not a SQuAD file (expected {{'data': [...]}}): {e}") from None
    out = []
    for art in articles:
        for para in art.get("paragraphs", []):
            context = para.get("context")
            for qa in para.get("qas", []):
                qid = str(qa.get("id", ""))
                where = f"{path}:{_line_of(raw, json.dumps(qid))}"
                if not isinstance(context, str) or not context.strip():
                    problems(where, f"question {qid!r}: empty context")
                    continue
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    problems(where, f"question {qid!r}: empty question")
                    continue
                answers, why = [], None
                for a in qa.get("answers", []):
                    text, start = a.get("text"), a.get("answer_start")
                    if not isinstance(text, str) or not text.strip() or not isinstance(start, int):
                        why = f"answer {a!r} needs a non-empty 'text' and an integer 'answer_start'"
                    elif context[start:start + len(text)] != text:
                        why = (f"answer {text!r} is not at answer_start {start} (the context has "
                               f"{context[start:start + len(text)]!r} there)")
                    else:
                        answers.append((text, start))
                if why is not None:
                    problems(where, f"question {qid!r}: {why}")
                    continue
                out.append(QAExample(qid, question, context, answers, where))
    return Loaded(out, problems.skipped)


# ----------------------------------------------------------------------------------------------------------------
# multiple choice


def read_choice(path, question_field="question", choices_field: str | Sequence[str] = "choices",
                label_field: str | None = "label", context_field: str | None = None, *, fmt: str | None = None,
                header: bool = True, on_error: str = "skip") -> Loaded:
    """choices_field: one field holding a list (JSONL) or several fields, one per choice (CSV/TSV, SWAG's
    ending0..ending3). The label is the index of the right choice. A context_field is put before the question."""
    problems = _Problems(on_error)
    out = []
    for where, rec in iter_records(path, fmt, header, problems):
        try:
            question = _get(rec, question_field, where)
            if context_field is not None:
                question = f"{_get(rec, context_field, where)} {question}"
            if isinstance(choices_field, str):
                choices = _get(rec, choices_field, where)
            else:
                choices = [_get(rec, c, where) for c in choices_field]
            raw = _get(rec, label_field, where) if label_field is not None else None
        except KeyError as e:
            problems(where, e.args[0])
            continue
        if not isinstance(question, str) or not question.strip():
            problems(where, f"empty question {question_field!r}")
            continue
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip()
                                                                         for c in choices):
            problems(where, f"expected at least 2 non-empty choices, got {choices!r}")
            continue
        label = None
        if label_field is not None:
            try:
                label = int(float(raw))
                if not 0 <= label < len(choices):
                    raise ValueError(f"not a choice index in [0, {len(choices)})")
            except (ValueError, TypeError) as e:
                problems(where, f"bad label {raw!r}: {e}")
                continue
        out.append(ChoiceExample(question, list(choices), label, where))
    return Loaded(out, problems.skipped)


# ----------------------------------------------------------------------------------------------------------------
# encoders


def word_spans(words: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by single spaces, and each word's [start, end) in that text."""
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    return " ".join(words), spans


def align_word_labels(words: Sequence[str], label_ids: Sequence[int] | None, tokenizer, max_length: int):
    """One sentence for token classification.

    Returns (input_ids (T,), labels (T,), word_ids (T,)): labels[t] is the word's label at the FIRST piece of each
    word and IGNORE_INDEX (-100) at every later piece and at [CLS]/[SEP]; word_ids[t] is the word index of piece t
    (-1 for [CLS]/[SEP]). The words are joined by spaces and tokenised once; BERT's pre-tokeniser splits on
    whitespace and punctuation, so this gives the pieces each word would give alone, and the tokenizer's character
    offsets (into the original text, accents and all) say which word each piece came from. A word beyond
    max_length is cut (it gets no piece); a word that normalises to nothing (a lone control character) has none.
    """
    text, spans = word_spans(words)
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    ids, offsets, seq = enc["input_ids"][0], enc["offset_mapping"][0], enc["sequence_ids"][0]
    starts = np.array([s for s, _ in spans], dtype=np.int64)                     # (W,)
    word_ids = np.full(ids.shape, -1, dtype=np.int64)                            # (T,)
    labels = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)                    # (T,)
    prev = -1
    for t in np.flatnonzero(seq == 0):
        w = int(np.searchsorted(starts, offsets[t, 0], side="right") - 1)        # the word whose span holds it
        word_ids[t] = w
        if w != prev and label_ids is not None:
            labels[t] = label_ids[w]                                             # first piece of word w
        prev = w
    return ids, labels, word_ids


@dataclass
class QAWindow:
    example: int                 # index of the QAExample
    input_ids: np.ndarray        # (T,) [CLS] question [SEP] context window [SEP]
    token_type_ids: np.ndarray   # (T,) 0 for [CLS] question [SEP], 1 for the window and its [SEP]
    offsets: np.ndarray          # (T, 2) character [start, end) in the context of each context token; -1 elsewhere
    start_position: int          # token index of the answer's first token, 0 ([CLS]) when not in this window
    end_position: int


def _pieces(tokenizer, text: str):
    enc = tokenizer(text, truncation=False, padding=False, return_offsets_mapping=True)
    keep = enc["sequence_ids"][0] == 0                                           # drop [CLS]/[SEP]
    return enc["input_ids"][0][keep], enc["offset_mapping"][0][keep]


def answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """First and last context token overlapping the characters [start, end); None when no token does."""
    hit = np.flatnonzero((offsets[:, 0] < end) & (offsets[:, 1] > start))
    return (int(hit[0]), int(hit[-1])) if hit.size else None


def qa_windows(examples: Sequence[QAExample], tokenizer, max_length: int = 384, stride: int = 128,
               max_question_len: int = 64) -> list[QAWindow]:
    """Cut each context into windows of at most max_length tokens with the question in front.

    Consecutive windows overlap by `stride` tokens, so an answer cut by one window's edge lies whole in the next
    (as long as it is shorter than stride). Training positions come from the first answer.
    """
    windows = []
    for i, ex in enumerate(examples):
        q_ids = _pieces(tokenizer, ex.question)[0][:max_question_len]
        c_ids, c_off = _pieces(tokenizer, ex.context)
        L = max_length - len(q_ids) - 3                                           # room for context tokens
        if L <= stride:
            raise ValueError(f"max_length: {max_length} leaves {L} context tokens per window after the question "
                             f"({len(q_ids)} tokens), not more than stride={stride}; raise max_length or lower "
                             "stride")
        span = None
        if ex.answers:
            text, a0 = ex.answers[0]
            span = answer_tokens(c_off, a0, a0 + len(text))
        head = np.concatenate([[tokenizer.cls_token_id], q_ids, [tokenizer.sep_token_id]]).astype(np.int64)
        w0 = 0
        while True:
            w1 = min(w0 + L, len(c_ids))
            ids = np.concatenate([head, c_ids[w0:w1], [tokenizer.sep_token_id]]).astype(np.int64)
            types = np.concatenate([np.zeros(len(head), np.int64), np.ones(w1 - w0 + 1, np.int64)])
            offsets = np.full((len(ids), 2), -1, dtype=np.int64)
            offsets[len(head):len(head) + w1 - w0] = c_off[w0:w1]
            s = e = 0
            if span is not None and w0 <= span[0] and span[1] < w1:
                s, e = span[0] - w0 + len(head), span[1] - w0 + len(head)
            windows.append(QAWindow(i, ids, types, offsets, s, e))
            if w1 >= len(c_ids):
                break
            w0 += L - stride
    return windows


def best_span(windows: Sequence[QAWindow], start_logits: Sequence[np.ndarray], end_logits: Sequence[np.ndarray],
              context: str, max_answer_len: int = 30, n_best: int = 20) -> dict:
    """The answer with the highest start_logit + end_logit over all windows of one example (HF's rule): start and
    end are context tokens of the same window, start <= end < start + max_answer_len (tokens). Returns
    {"answer", "start", "end", "score"} with character offsets into context."""
    best = None
    for w, sl, el in zip(windows, start_logits, end_logits):
        T = len(w.input_ids)
        ctx = w.offsets[:, 0] >= 0                                               # (T,) context tokens
        sl, el = np.asarray(sl, np.float64)[:T], np.asarray(el, np.float64)[:T]
        cand_s = [t for t in np.argsort(-sl, kind="stable")[:n_best] if ctx[t]]
        cand_e = [t for t in np.argsort(-el, kind="stable")[:n_best] if ctx[t]]
        for s in cand_s:
            for e in cand_e:
                if s <= e < s + max_answer_len:
                    score = sl[s] + el[e]
                    if best is None or score > best[0]:
                        best = (score, int(w.offsets[s, 0]), int(w.offsets[e, 1]))
    if best is None:
        return {"answer": "", "start": 0, "end": 0, "score": float("-inf")}
    return {"answer": context[best[1]:best[2]], "start": best[1], "end": best[2], "score": float(best[0])}
