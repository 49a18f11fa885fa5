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
read_table, read_conll, read_squad and read_choice also take data in memory instead of a path (see in_memory):
a list of dicts, a dict of equal-length columns, a (texts, labels) pair, or a `datasets.Dataset` (its class-label
integers become their names); each row is then located as "data[i]".

Malformed rows are never dropped silently. With on_error="fail" the first one raises a DataError naming the file
and line; with on_error="skip" each is recorded in `skipped` as "file:line: why" and left out, and the caller
reports how many and which.

Encoders:
    align_word_labels      words + word tags -> word pieces with the FIRST piece of each word labelled and every
                           other piece (and [CLS]/[SEP]) labelled -100, so that the loss sees one label per word
(Question answering's windows and answer positions are minidistil.train.qa's, shared with the pipeline.)
"""
from __future__ import annotations

import csv
import json
import math
import os
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from collections.abc import Sequence

import numpy as np

from minidistil.core.files import JSON_LIMIT, brief, read_lines, read_text

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
            raise ValueError(f"--data-format: expected 'csv', 'tsv' or 'jsonl', got {fmt!r} (fmt= in Python)")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; give the format: "
                     "--data-format csv, tsv or jsonl (fmt='csv' in Python)")


def iter_records(path, fmt: str | None = None, header: bool = True, problems: _Problems | None = None):
    """Yield (where, record) with record a dict (JSONL, or a table with a header) or a list (a table without)."""
    path = _check_file(path)
    fmt = table_format(path, fmt)
    problems = problems or _Problems("fail")
    with closing(read_lines(path)) as f:     # line by line, each bounded; a BOM dropped; a bad byte named
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


# ----------------------------------------------------------------------------------------------------------------
# data in memory


def is_in_memory(data) -> bool:
    """True for data given as Python objects rather than a file or folder path."""
    return data is not None and not isinstance(data, (str, os.PathLike))


def in_memory(data, text_field: str = "text", label_field: str | None = "label"):
    """Yield ("data[i]", row dict) for in-memory data:
    - a list of dicts (rows), or of strings (texts without labels, under text_field);
    - a dict of equal-length columns, e.g. {"text": [...], "label": [...]};
    - a pair (texts, labels) of equal length, named text_field and label_field;
    - a `datasets.Dataset`: its rows, with the integers of a ClassLabel column (or of a sequence of them, such as
      conll2003's ner_tags) replaced by their names."""
    names = {}
    if hasattr(data, "features") and hasattr(data, "column_names"):                # a datasets.Dataset
        for col, feat in data.features.items():
            inner = getattr(feat, "feature", None)
            if hasattr(feat, "names"):
                names[col] = (feat.names, False)
            elif hasattr(inner, "names"):
                names[col] = (inner.names, True)
        data = data.to_list()
    if isinstance(data, tuple) and len(data) == 2 and label_field is not None:
        data = {text_field: list(data[0]), label_field: list(data[1])}
    if isinstance(data, dict):
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"data: the columns have different lengths {lengths}")
        data = [dict(zip(data, row, strict=True)) for row in zip(*data.values(), strict=True)]
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"data: expected a path, a list of rows, a dict of columns, a (texts, labels) pair or a "
                         f"datasets.Dataset, got {type(data).__name__}")
    for i, row in enumerate(data):
        if isinstance(row, str):
            row = {text_field: row}
        if not isinstance(row, dict):
            raise ValueError(f"data[{i}]: expected a dict (a row) or a string, got {type(row).__name__}")
        for col, (label_names, is_seq) in names.items():
            if col in row and row[col] is not None:
                row = {**row, col: [label_names[v] for v in row[col]] if is_seq else label_names[row[col]]}
        yield f"data[{i}]", row


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
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"label {brief(value)}: expected a number")
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"label {value!r} is not a finite number")
        return x
    if kind == "multi":
        if isinstance(value, list):
            if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
                raise ValueError(f"labels {brief(value)}: expected a list of names or numbers")
            return [str(v).strip() for v in value]
        if isinstance(value, dict):
            raise ValueError(f"labels {brief(value)}: expected a list of names or a {label_sep!r}-separated string")
        return [v.strip() for v in str(value).split(label_sep) if v.strip()]
    if isinstance(value, (list, dict)):
        raise ValueError(f"label {brief(value)}: expected one name or number (several labels per text is the "
                         "multilabel task)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)                                          # JSON 1.0 and CSV "1" name the same class
    return str(value).strip()


def read_table(path, text_field="text", label_field: str | None = "label", text_pair_field: str | None = None, *,
               fmt: str | None = None, header: bool = True, label_kind: str = "class", label_sep: str = ",",
               on_error: str = "skip") -> Loaded:
    """Text (or text-pair) examples from CSV / TSV / JSONL (or data in memory). label_field None reads unlabelled
    text."""
    if label_kind not in ("class", "regression", "multi"):
        raise ValueError(f"label_kind: expected 'class', 'regression' or 'multi', got {label_kind!r}")
    problems = _Problems(on_error)
    out = []
    records = (in_memory(path, text_field, label_field) if is_in_memory(path)
               else iter_records(path, fmt, header, problems))
    for where, rec in records:
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
                text = read_text(p)
            except ValueError as e:                                 # not UTF-8 (the offset named), or too large
                problems(f"{p}:1", str(e))
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
    """Sentences of (word, tag) from a CoNLL-style file; a sentence with a malformed line is left out whole.
    In memory: rows with the words under "tokens" (or "words") and their tags under "ner_tags" (or "tags")."""
    problems = _Problems(on_error)
    if is_in_memory(path):
        return _token_rows(path, problems)
    path = _check_file(path)
    out, words, tags, start, bad = [], [], [], None, None

    def flush():
        nonlocal words, tags, start, bad
        if words and bad is None:
            out.append(TokenExample(words, tags, f"{path}:{start}"))
        elif bad is not None:
            problems(f"{path}:{bad[0]}", bad[1] + f" (the sentence starting at line {start} is left out)")
        words, tags, start, bad = [], [], None, None

    width = None                     # columns of the first word line: every word line has as many
    with closing(read_lines(path)) as f:
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
            width = width or len(cols)
            if len(cols) != width:
                bad = bad or (i, f"expected {width} columns as in the first word line, got {len(cols)}")
                continue
            words.append(cols[0])
            tags.append(cols[tag_column])
    flush()
    return Loaded(out, problems.skipped)


def _token_rows(data, problems: _Problems) -> Loaded:
    out = []
    for where, rec in in_memory(data, "tokens", None):
        words = next((rec[k] for k in ("tokens", "words") if k in rec), None)
        tags = next((rec[k] for k in ("ner_tags", "tags") if k in rec), None)
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
            problems(where, "expected a non-empty list of words under 'tokens' (or 'words')")
        elif tags is not None and (not isinstance(tags, list) or len(tags) != len(words)):
            problems(where, f"expected one tag per word under 'ner_tags' (or 'tags'): {len(words)} words")
        else:
            out.append(TokenExample(list(words), None if tags is None else [str(t) for t in tags], where))
    return Loaded(out, problems.skipped)


# ----------------------------------------------------------------------------------------------------------------
# SQuAD v1.1


def _line_of(raw: str, needle: str) -> int:
    at = raw.find(needle)
    return raw.count("\n", 0, at) + 1 if at >= 0 else 1


def read_squad(path, on_error: str = "skip") -> Loaded:
    """Questions with their context and answers; an answer whose text is not at answer_start is malformed.
    In memory: rows {"id", "question", "context", "answers"} with the answers as the SQuAD data set on the Hub
    holds them ({"text": [...], "answer_start": [...]}) or as a list of {"text", "answer_start"}."""
    problems = _Problems(on_error)
    if is_in_memory(path):
        out = []
        for where, rec in in_memory(path, "question", None):
            answers = rec.get("answers") or []
            if isinstance(answers, dict):
                answers = [{"text": t, "answer_start": s} for t, s in zip(answers.get("text", []),
                                                                          answers.get("answer_start", []),
                                                                          strict=True)]
            ex = _qa_example(str(rec.get("id", where)), rec.get("question"), rec.get("context"), answers, where,
                             problems)
            if ex is not None:
                out.append(ex)
        return Loaded(out, problems.skipped)
    path = _check_file(path)
    raw = read_text(path, JSON_LIMIT)
    try:
        doc = json.loads(raw)
        articles = doc["data"]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
        raise DataError(f"{path}:1: not a SQuAD file (expected {{'data': [...]}}): {e}") from None
    out = []
    for art in _objects(articles, path, "data"):
        for para in _objects(art.get("paragraphs", []), path, "paragraphs"):
            context = para.get("context")
            for qa in _objects(para.get("qas", []), path, "qas"):
                qid = str(qa.get("id", ""))
                answers = qa.get("answers", [])
                where = f"{path}:{_line_of(raw, json.dumps(qid))}"
                if not isinstance(answers, list) or not all(isinstance(a, dict) for a in answers):
                    problems(where, f"question {qid!r}: 'answers' must be a list of {{'text', 'answer_start'}}")
                    continue
                ex = _qa_example(qid, qa.get("question"), context, answers, where, problems)
                if ex is not None:
                    out.append(ex)
    return Loaded(out, problems.skipped)


def _objects(value, path, key: str) -> list[dict]:
    """`value` when it is a list of JSON objects, else a DataError naming the file and the key (SQuAD's shape is
    {"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers": [...]}]}]}]})."""
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        got = type(value).__name__ if not isinstance(value, list) else "a list holding " + next(
            type(x).__name__ for x in value if not isinstance(x, dict))
        raise DataError(f"{path}: not a SQuAD file: '{key}' must be a list of objects, got {got}")
    return value


def _qa_example(qid: str, question, context, raw_answers: list, where: str, problems: _Problems):
    """A QAExample, or None after recording why the question is malformed."""
    if not isinstance(context, str) or not context.strip():
        return problems(where, f"question {qid!r}: empty context")
    if not isinstance(question, str) or not question.strip():
        return problems(where, f"question {qid!r}: empty question")
    answers = []
    for a in raw_answers:
        text, start = a.get("text"), a.get("answer_start")
        if not isinstance(text, str) or not text.strip() or not isinstance(start, int):
            return problems(where, f"question {qid!r}: answer {a!r} needs a non-empty 'text' and an integer "
                            "'answer_start'")
        if context[start:start + len(text)] != text:
            return problems(where, f"question {qid!r}: answer {text!r} is not at answer_start {start} (the context "
                            f"has {context[start:start + len(text)]!r} there)")
        answers.append((text, start))
    return QAExample(qid, question, context, answers, where)


# ----------------------------------------------------------------------------------------------------------------
# multiple choice


def read_choice(path, question_field="question", choices_field: str | Sequence[str] = "choices",
                label_field: str | None = "label", context_field: str | None = None, *, fmt: str | None = None,
                header: bool = True, on_error: str = "skip") -> Loaded:
    """choices_field: one field holding a list (JSONL) or several fields, one per choice (CSV/TSV, SWAG's
    ending0..ending3). The label is the index of the right choice. A context_field is put before the question."""
    problems = _Problems(on_error)
    out = []
    records = (in_memory(path, question_field, label_field) if is_in_memory(path)
               else iter_records(path, fmt, header, problems))
    for where, rec in records:
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
