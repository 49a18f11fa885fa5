"""Inference pipelines: text in, answers out, as transformers' pipelines give them.

    fill_mask = pipeline("fill-mask", "path/to/bert-base-uncased")
    fill_mask("Paris is the [MASK] of France.", top_k=3)   -> [{"score", "token", "token_str", "sequence"}, ...]

Tasks:
    "fill-mask"             *ForMaskedLM: the top-k tokens at each [MASK] with their probabilities
    "text-classification"   *ForSequenceClassification: labels from config.id2label with softmax scores (sigmoid
                            for multi-label models)
    "token-classification"  *ForTokenClassification ("ner"): per-token labels grouped into entities with HF's
                            "simple" aggregation (B-X I-X I-X -> one X entity, mean score, character offsets)
    "question-answering"    *ForQuestionAnswering: the best span start <= end < start + max_answer_len inside the
                            context, with its text and score (minidistil.train.qa: windows, decoding, defaults)
    "feature-extraction"    the bare encoder's token features, (1, T, C) per text, as transformers returns them
    "sentence-embeddings"   SentenceEncoder, sentence-transformers' encoder + pooling: mean / CLS / max pooling as
                            1_Pooling/config.json says, L2-normalised when modules.json lists a Normalize module (as
                            all-MiniLM-L6-v2 does); encode() and similarity() as in sentence-transformers

Every pipeline runs the model under no_grad(), in batches of `batch_size` texts padded to the longest of the batch.
`device="cuda"` (or "cuda:0", 0) moves the model to the GPU, or raises an error saying why it cannot.
Shapes: B batch, T tokens, C width, V vocabulary, K labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minidistil.train import qa as QA
from minidistil.core import functional as F
from minidistil.core.autograd import no_grad
from minidistil.core.files import brief, read_json
# the one model loader (minidistil/io/loading.py): a checkpoint as the class a task needs
from minidistil.io.loading import class_for as _class_for, load_model as load_model
from minidistil.io.tokenizer import Tokenizer


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)      # exp of a non-positive number cannot overflow
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _check_count(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _as_list(texts) -> tuple[list, bool]:
    return ([texts], True) if isinstance(texts, str) else (list(texts), False)


def _numpy(t) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


class Pipeline:
    """Holds a model (in eval mode) and its tokenizer; subclasses define __call__."""

    task = ""
    head = ""  # class name suffix this task needs: "ForMaskedLM", ... ("Model" for the bare encoder)

    def __init__(self, model, tokenizer: Tokenizer, batch_size: int = 32, max_length: int | None = None,
                 device=None):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        if device is not None:
            from minidistil.core.device import check_device
            model.to(check_device(device))    # no GPU: a RuntimeError saying what is missing, never a silent CPU
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        max_pos = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
        self.max_length = int(min(max_length or tokenizer.model_max_length, max_pos))

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, require_head: bool = False, **kwargs) -> Pipeline:
        """The pipeline of a checkpoint (folder or name), with the model class its task needs. require_head=True
        refuses a checkpoint without trained weights for that head (the command line's choice); otherwise the head
        starts from random weights with a warning, as in transformers."""
        from minidistil.io.loading import model_classes, resolve
        folder = resolve(name_or_path)
        model = load_model(folder, _class_for(folder, cls.head, model_classes()), device, require_head)
        return cls(model, Tokenizer.from_pretrained(folder), **kwargs)

    def _encode(self, texts, pairs=None, **kw):
        return self.tokenizer(texts, pairs, padding=True, max_length=kw.pop("max_length", self.max_length),
                              return_token_type_ids=True, return_attention_mask=True, **kw)

    def _forward(self, enc: dict):
        with no_grad():  # DistilBERT takes token_type_ids and ignores them, as transformers' does
            return self.model(enc["input_ids"], attention_mask=enc["attention_mask"],
                              token_type_ids=enc["token_type_ids"])

    def _batches(self, n: int):
        for i in range(0, n, self.batch_size):
            yield slice(i, min(n, i + self.batch_size))


# ----------------------------------------------------------------------------------------------------------------


class FillMaskPipeline(Pipeline):
    task, head = "fill-mask", "ForMaskedLM"

    def __call__(self, texts, top_k: int = 5):
        """For each text: a list of top_k {"score", "token", "token_str", "sequence"} (a list of such lists when
        the text has several [MASK]s). A single text gives a single result."""
        _check_count("top_k", top_k)
        texts, single = _as_list(texts)
        mask_id = self.tokenizer.mask_token_id
        results = []
        for sl in self._batches(len(texts)):
            enc = self._encode(texts[sl])
            ids = enc["input_ids"]                                                  # (B, T)
            logits = _numpy(self._forward(enc).logits)                              # (B, T, V)
            for b in range(ids.shape[0]):
                where = np.flatnonzero(ids[b] == mask_id)
                if where.size == 0:
                    text, mask = texts[sl.start + b], self.tokenizer.mask_token
                    if mask_id in self.tokenizer.encode(text):                    # the whole text, not truncated
                        raise ValueError(f"texts[{sl.start + b}]: its {mask} token lies beyond the first "
                                         f"{self.max_length} tokens, the most the model reads, and was cut off by "
                                         f"truncation; shorten the text or move the {mask} earlier")
                    raise ValueError(f"texts[{sl.start + b}]: no {mask} token in {brief(text)}")
                per_mask = []
                for t in where:
                    probs = softmax(logits[b, t].astype(np.float64))                # (V,)
                    best = np.argsort(-probs, kind="stable")[:top_k]
                    out = []
                    for v in best:
                        filled = ids[b, : int(enc["attention_mask"][b].sum())].copy()
                        filled[t] = v
                        out.append({"score": float(probs[v]), "token": int(v),
                                    "token_str": self.tokenizer.decode([v]),
                                    "sequence": self.tokenizer.decode(filled)})
                    per_mask.append(out)
                results.append(per_mask[0] if len(per_mask) == 1 else per_mask)
        return results[0] if single else results


class TextClassificationPipeline(Pipeline):
    task, head = "text-classification", "ForSequenceClassification"

    def __call__(self, texts, text_pair=None, top_k: int | None = 1, function_to_apply: str | None = None):
        """For each text: {"label", "score"} (top_k=1) or a list of the top_k (all labels when top_k=None), best
        first. function_to_apply: "softmax", "sigmoid" or "none"; default softmax, or sigmoid for multi-label and
        single-output models (HF's rule)."""
        if top_k is not None:
            _check_count("top_k", top_k, minimum=0)
        texts, single = _as_list(texts)
        pairs = None if text_pair is None else _as_list(text_pair)[0]
        cfg = self.model.config
        if function_to_apply is None:
            multi = cfg.problem_type == "multi_label_classification" or cfg.num_labels == 1
            function_to_apply = "sigmoid" if multi else "softmax"
        apply = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: x}.get(function_to_apply)
        if apply is None:
            raise ValueError(f"function_to_apply: expected 'softmax', 'sigmoid' or 'none', got {function_to_apply!r}")
        results = []
        for sl in self._batches(len(texts)):
            enc = self._encode(texts[sl], None if pairs is None else pairs[sl])
            scores = apply(_numpy(self._forward(enc).logits).astype(np.float64))  # (B, K)
            for row in scores:
                order = np.argsort(-row, kind="stable")
                ranked = [{"label": cfg.id2label[int(k)], "score": float(row[k])} for k in order]
                results.append(ranked[0] if top_k == 1 else ranked[:top_k] if top_k else ranked)
        return results[0] if single else results


class TokenClassificationPipeline(Pipeline):
    task, head = "token-classification", "ForTokenClassification"

    def __call__(self, texts, aggregation_strategy: str = "simple", ignore_labels=("O",), stride: int | None = None):
        """For each text: a list of entities.

        "simple": {"entity_group", "score", "word", "start", "end"}; consecutive tokens with the same tag X are
        merged when the later one is not B-X (a label without a B-/I- prefix counts as I-); score is the mean of
        the tokens' probabilities; start/end are character offsets in the text.
        "none":   one {"entity", "score", "index", "word", "start", "end"} per token.
        Entities labelled in ignore_labels ("O") are left out.
        A text longer than max_length tokens is truncated (with a warning), as transformers does by default; with
        `stride`, it is read in windows of max_length tokens sharing `stride` tokens instead, and each token takes
        its label from the window in which it lies farthest from an edge (the most context on both sides).
        "index" is then the token's position in the whole text (without [CLS]), not in a window.
        """
        if aggregation_strategy not in ("simple", "none"):
            raise ValueError(f"aggregation_strategy: expected 'simple' or 'none', got {aggregation_strategy!r}")
        texts, single = _as_list(texts)
        id2label = self.model.config.id2label
        results = []
        for sl in self._batches(len(texts)):
            windows = {} if stride is None else dict(stride=stride, return_overflowing_tokens=True)
            enc = self._encode(texts[sl], return_offsets_mapping=True, **windows)
            probs = softmax(_numpy(self._forward(enc).logits).astype(np.float64))  # (W, T, K): W rows (windows)
            sample = enc.get("overflow_to_sample_mapping", np.arange(probs.shape[0]))
            for i in range(sl.stop - sl.start):
                best = {}                      # (start, end) characters -> (distance to the window's edge, token)
                for w in np.flatnonzero(sample == i):
                    real = np.flatnonzero(enc["sequence_ids"][w] == 0)             # no [CLS]/[SEP]/padding
                    for pos, t in enumerate(real):
                        k = int(np.argmax(probs[w, t]))
                        start, end = (int(x) for x in enc["offset_mapping"][w, t])
                        edge = min(pos, len(real) - 1 - pos)
                        if (start, end) in best and best[start, end][0] >= edge:
                            continue                                                # seen with more context
                        best[start, end] = (edge, {"entity": id2label[k], "score": float(probs[w, t, k]),
                                              "word": self.tokenizer.convert_ids_to_tokens(
                                                  int(enc["input_ids"][w, t])), "start": start, "end": end})
                tokens = [tok for _, (_, tok) in sorted(best.items())]
                for index, tok in enumerate(tokens, start=1):                       # as in one window: [CLS] = 0
                    tok["index"] = index
                ents = tokens if aggregation_strategy == "none" else self._group(tokens)
                key = "entity" if aggregation_strategy == "none" else "entity_group"
                results.append([e for e in ents if e[key] not in ignore_labels])
        return results[0] if single else results

    @staticmethod
    def _tag(label: str) -> tuple[str, str]:
        if label.startswith("B-"):
            return "B", label[2:]
        if label.startswith("I-"):
            return "I", label[2:]
        return "I", label

    def _group(self, tokens: list[dict]) -> list[dict]:
        groups, current = [], []
        for tok in tokens:
            bi, tag = self._tag(tok["entity"])
            if current and tag == self._tag(current[-1]["entity"])[1] and bi != "B":
                current.append(tok)                                             # I-X continues an X entity
                continue
            if current:
                groups.append(self._merge(current))
            current = [tok]
        if current:
            groups.append(self._merge(current))
        return groups

    def _merge(self, toks: list[dict]) -> dict:
        return {"entity_group": self._tag(toks[0]["entity"])[1],
                "score": float(np.mean([t["score"] for t in toks])),
                "word": self.tokenizer.convert_tokens_to_string([t["word"] for t in toks]),
                "start": toks[0]["start"], "end": toks[-1]["end"]}


class QuestionAnsweringPipeline(Pipeline):
    task, head = "question-answering", "ForQuestionAnswering"

    def __call__(self, question, context, top_k: int = QA.DEFAULTS["top_k"],
                 max_answer_len: int = QA.DEFAULTS["max_answer_len"], doc_stride: int | None = None,
                 max_seq_len: int | None = None,
                 handle_impossible_answer: bool = QA.DEFAULTS["handle_impossible_answer"],
                 align_to_words: bool = QA.DEFAULTS["align_to_words"]):
        """For each (question, context): {"score", "start", "end", "answer"} (a list of top_k when top_k > 1).

        Defaults and rules are transformers' (minidistil.train.qa): only context tokens can be chosen; a span (s, e)
        scores p_start[s] * p_end[e] (softmaxes over the context tokens and [CLS]) with s <= e < s +
        max_answer_len; a context too long for max_seq_len tokens (default min(384, max_length)) is read in
        windows sharing doc_stride tokens (default 128, at most half a window) and the best spans over all
        windows win. start/end index characters of the context. One context may serve several questions.
        """
        _check_count("top_k", top_k)
        _check_count("max_answer_len", max_answer_len)
        if doc_stride is not None:
            _check_count("doc_stride", doc_stride, minimum=0)
        questions, single = _as_list(question)
        contexts = _as_list(context)[0]
        if len(contexts) == 1 and len(questions) > 1:
            contexts = contexts * len(questions)
        if len(contexts) != len(questions):
            raise ValueError(f"context: expected 1 or {len(questions)} contexts, got {len(contexts)}")
        max_seq_len, doc_stride = QA.resolve(max_seq_len, doc_stride, self.max_length)
        results = []
        for sl in self._batches(len(questions)):
            try:
                enc = QA.windows(self.tokenizer, questions[sl], contexts[sl], max_seq_len, doc_stride)
            except ValueError as e:  # the tokenizer's words: first text = question, second = context
                raise ValueError(f"question answering with max_seq_len={max_seq_len}, doc_stride={doc_stride}: "
                                 f"{e}") from None
            start_logits, end_logits = self._window_logits(enc)
            answers = QA.decode(enc, start_logits, end_logits, contexts[sl], top_k=top_k,
                                max_answer_len=max_answer_len, handle_impossible_answer=handle_impossible_answer,
                                align_to_words=align_to_words)
            results += [a[0] if top_k == 1 else a for a in answers]
        return results[0] if single else results


    def _window_logits(self, enc) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits (W, T) of every window, the model run on batch_size windows at a time: the windows
        of a long context do not all go through the model at once (their attention alone would be W x T x T)."""
        starts, ends = [], []
        for sl in self._batches(len(enc["input_ids"])):
            out = self._forward({k: enc[k][sl] for k in ("input_ids", "attention_mask", "token_type_ids")})
            starts.append(_numpy(out.start_logits))                                   # (batch, T)
            ends.append(_numpy(out.end_logits))
        return np.concatenate(starts), np.concatenate(ends)


class FeatureExtractionPipeline(Pipeline):
    """Token features as transformers' feature-extraction pipeline gives them: for each text, the encoder's last
    hidden states as a float32 array (1, T, C), T that text's tokens with [CLS] and [SEP] (no padding). Sentence
    embeddings come from the "sentence-embeddings" pipeline (SentenceEncoder)."""

    task, head = "feature-extraction", "Model"

    def __call__(self, texts):
        texts, single = _as_list(texts)
        results = []
        for sl in self._batches(len(texts)):
            enc = self._encode(texts[sl])
            h = _numpy(self._forward(enc).last_hidden_state)                       # (B, T, C)
            for b, n in enumerate(enc["attention_mask"].sum(axis=1)):
                results.append(np.ascontiguousarray(h[b:b + 1, :int(n)], dtype=np.float32))   # (1, T_b, C)
        return results[0] if single else results


class SentenceEncoder(Pipeline):
    """Sentence embeddings (N, C) as sentence-transformers computes them: encoder -> pooling -> (normalise).

        model = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
        emb = model.encode(sentences)                       # (N, C) float32, in the order of `sentences`
        model.similarity(emb[:1], emb)                      # (1, N) cosine similarities
    """

    task, head = "sentence-embeddings", "Model"

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None,
                 pooling: dict | None = None, normalize: bool = False, device=None):
        super().__init__(model, tokenizer, batch_size, max_length, device)
        self.pooling = pooling or {"pooling_mode_mean_tokens": True}
        modes = [k for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                             "pooling_mode_mean_sqrt_len_tokens") if self.pooling.get(k)]
        if not modes:
            raise ValueError(f"pooling: no supported pooling mode is switched on in {self.pooling}")
        self.modes = modes
        self.normalize = bool(normalize)

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, **kwargs) -> SentenceEncoder:
        """Reads the sentence-transformers files when present: 1_Pooling/config.json (pooling; mean when absent),
        modules.json (Normalize), sentence_bert_config.json (max_seq_length)."""
        from minidistil.io.loading import model_classes, resolve
        kwargs.pop("require_head", None)                # the bare encoder has no head to require
        folder = resolve(name_or_path)
        model = load_model(folder, _class_for(folder, "Model", model_classes()), device)
        modules = _json(folder / "modules.json", list) or []
        if not all(isinstance(m, dict) and isinstance(m.get("type", ""), str) and isinstance(m.get("path", ""), str)
                   for m in modules):
            raise ValueError(f"{folder / 'modules.json'}: expected a list of modules "
                             '[{"type": "...", "path": "..."}, ...]')
        pool_path = next((m.get("path") for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
        kwargs.setdefault("pooling", _json(folder / pool_path / "config.json", dict))
        kwargs.setdefault("normalize", any(m.get("type", "").endswith("Normalize") for m in modules))
        st = _json(folder / "sentence_bert_config.json", dict) or {}
        if "max_length" not in kwargs and st.get("max_seq_length") is not None:
            n = st["max_seq_length"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 3:
                raise ValueError(f"{folder / 'sentence_bert_config.json'}: max_seq_length: expected an integer >= 3, "
                                 f"got {n!r}")
            kwargs["max_length"] = n
        return cls(model, Tokenizer.from_pretrained(folder), **kwargs)

    def __call__(self, texts) -> np.ndarray:
        """float32 (N, C) embeddings (C times the number of pooling modes); a single text gives (C,)."""
        return self.encode(texts, batch_size=self.batch_size, show_progress_bar=False)

    def encode(self, sentences, batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, convert_to_tensor: bool = False, normalize_embeddings: bool = False):
        """Embeddings of `sentences` as sentence-transformers' encode() returns them: float32 (N, C) (a single
        string gives (C,)), row i for sentences[i].

        The sentences are batched longest first (by characters, as sentence-transformers does), so that each
        batch pads little; the rows come back in input order. show_progress_bar: None shows a tqdm bar on a
        terminal when there are 20 batches or more. normalize_embeddings: L2-normalise each row (on top of the
        checkpoint's own Normalize module). convert_to_numpy=False gives a list of (C,) arrays;
        convert_to_tensor=True a torch tensor (torch must be installed).
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        single = isinstance(sentences, str)
        sentences = [sentences] if single else list(sentences)
        for i, t in enumerate(sentences):
            if not isinstance(t, str):
                raise ValueError(f"sentences[{i}]: expected a string, got {type(t).__name__}")
        order = np.argsort([-len(t) for t in sentences], kind="stable")           # longest first
        starts = range(0, len(sentences), batch_size)
        if show_progress_bar is None:
            show_progress_bar = None if len(starts) >= 20 else False              # None: tqdm shows it on a tty
        bar = None
        if show_progress_bar is not False:
            from tqdm import tqdm
            bar = tqdm(total=len(sentences), desc="encode", unit="sentence", leave=False,
                       disable=None if show_progress_bar is None else False)
        emb = np.zeros((len(sentences), self.get_embedding_dimension()), dtype=np.float32)
        for i in starts:
            idx = order[i:i + batch_size]
            enc = self._encode([sentences[j] for j in idx])
            h = _numpy(self._forward(enc).last_hidden_state).astype(np.float32)      # (B, T, C)
            emb[idx] = self.pool(h, enc["attention_mask"])                             # back to input order
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        if normalize_embeddings:
            emb = F.l2_normalize(emb)
        if single:
            emb = emb[0]
        if convert_to_tensor:
            return _torch().from_numpy(emb)
        return emb if convert_to_numpy else list(emb)

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.hidden_size) * len(self.modes)

    @staticmethod
    def similarity(a, b) -> np.ndarray:
        """Cosine similarities (N, M) of embeddings a (N, C) and b (M, C) (a single (C,) counts as one row), as
        sentence-transformers' similarity() with its default cosine."""
        a = np.atleast_2d(np.asarray(a, dtype=np.float32))                            # (N, C)
        b = np.atleast_2d(np.asarray(b, dtype=np.float32))                            # (M, C)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
            raise ValueError(f"similarity: expected embeddings (N, C) and (M, C), got {a.shape} and {b.shape}")
        a, b = F.l2_normalize(a, axis=1), F.l2_normalize(b, axis=1)
        return a @ b.T                                                                # (N, M)

    def pool(self, h: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        m = attention_mask[..., None].astype(np.float32)                          # (B, T, 1)
        count = np.maximum(m.sum(axis=1), np.float32(1e-9))                       # (B, 1) real tokens
        parts = []
        for mode in self.modes:
            if mode == "pooling_mode_cls_token":
                parts.append(h[:, 0])                                             # (B, C)
            elif mode == "pooling_mode_mean_tokens":
                parts.append(F.mean_pool(h, attention_mask))                      # (B, C) mean over real tokens
            elif mode == "pooling_mode_max_tokens":
                parts.append(np.where(m > 0, h, np.float32(-np.inf)).max(axis=1))  # (B, C)
            else:
                parts.append((h * m).sum(axis=1) / np.sqrt(count))                # (B, C)
        emb = np.concatenate(parts, axis=-1).astype(np.float32)
        if self.normalize:
            emb = F.l2_normalize(emb)
        return emb


def _torch():
    try:
        import torch
    except ImportError:
        raise ValueError("convert_to_tensor=True needs torch, which is not installed; the default returns a NumPy "
                         "array") from None
    return torch


def _json(path: Path, kind: type):
    """The JSON value of `path` (None when there is no such file); a ValueError naming the file when it is not
    UTF-8, not JSON, or not of the `kind` expected (list or dict)."""
    if not path.is_file():
        return None
    value = read_json(path)
    if not isinstance(value, kind):
        want = "a JSON list [...]" if kind is list else "a JSON object {...}"
        raise ValueError(f"{path}: expected {want}, got a {type(value).__name__}")
    return value


TASKS = {
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "sentiment-analysis": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "ner": TokenClassificationPipeline,
    "question-answering": QuestionAnsweringPipeline,
    "feature-extraction": FeatureExtractionPipeline,
    "sentence-embeddings": SentenceEncoder,
}


def pipeline(task: str, model, tokenizer: Tokenizer | str | None = None, device=None, **kwargs) -> Pipeline:
    """Build the pipeline for `task` from a checkpoint name / folder, or from a loaded model + tokenizer (a
    Tokenizer or its folder). device: None / "cpu", or "cuda" ("cuda:0", 0): the model moves to the GPU."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    cls = TASKS[task]
    if isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise ValueError("tokenizer: give it only with a loaded model (a checkpoint folder brings its own)")
        return cls.from_pretrained(model, device=device, **kwargs)
    kwargs.pop("require_head", None)                  # a loaded model is taken as it is
    if isinstance(tokenizer, (str, Path)):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    if tokenizer is None:
        folder = getattr(model, "name_or_path", None)
        if folder is None:
            raise ValueError("tokenizer: required with a model that was not loaded from a checkpoint folder")
        tokenizer = Tokenizer.from_pretrained(folder)
    return cls(model, tokenizer, device=device, **kwargs)
