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
                            context, with its text and score
    "feature-extraction"    the bare encoder + sentence-transformers pooling ("sentence-embeddings"): mean / CLS /
                            max pooling as 1_Pooling/config.json says, L2-normalised when modules.json lists a
                            Normalize module (as all-MiniLM-L6-v2 does)

Every pipeline runs the model under no_grad(), in batches of `batch_size` texts padded to the longest of the batch.
Shapes: B batch, T tokens, C width, V vocabulary, K labels.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from . import functional as F
from .autograd import no_grad
from .tokenizer import Tokenizer


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)      # exp of a non-positive number cannot overflow
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _as_list(texts) -> tuple[list, bool]:
    return ([texts], True) if isinstance(texts, str) else (list(texts), False)


def _numpy(t) -> np.ndarray:
    return t.numpy() if hasattr(t, "numpy") else np.asarray(t)


class Pipeline:
    """Holds a model (in eval mode) and its tokenizer; subclasses define __call__."""

    task = ""
    head = ""  # class name suffix this task needs: "ForMaskedLM", ... ("Model" for the bare encoder)

    def __init__(self, model, tokenizer: Tokenizer, batch_size: int = 32, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        max_pos = getattr(model.config, "max_position_embeddings", tokenizer.model_max_length)
        self.max_length = int(min(max_length or tokenizer.model_max_length, max_pos))
        self._takes_types = "token_type_ids" in inspect.signature(model.forward).parameters

    @classmethod
    def from_pretrained(cls, name_or_path, device: str | None = None, **kwargs) -> "Pipeline":
        from .loading import from_pretrained, model_classes, resolve
        folder = resolve(name_or_path)
        model_cls = _class_for(folder, cls.head, model_classes())
        model = from_pretrained(folder, cls=model_cls, device=device)
        return cls(model, Tokenizer.from_pretrained(folder), **kwargs)

    def _encode(self, texts, pairs=None, **kw):
        return self.tokenizer(texts, pairs, padding=True, max_length=kw.pop("max_length", self.max_length), **kw)

    def _forward(self, enc: dict):
        kwargs = {"attention_mask": enc["attention_mask"]}
        if self._takes_types:
            kwargs["token_type_ids"] = enc["token_type_ids"]
        with no_grad():
            return self.model(enc["input_ids"], **kwargs)

    def _batches(self, n: int):
        for i in range(0, n, self.batch_size):
            yield slice(i, min(n, i + self.batch_size))


def _class_for(folder: Path, head: str, classes: dict[str, type]) -> type:
    """The class for this task: the checkpoint's own architecture when it has the right head, else the model
    type's prefix + head (a new, randomly initialised head then: the loader warns about it)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for arch in config.get("architectures") or []:
        if arch.endswith(head) and arch in classes:
            return classes[arch]
    model_type = config.get("model_type") or ("distilbert" if any(
        a.startswith("DistilBert") for a in config.get("architectures") or []) else "bert")
    name = {"bert": "Bert", "distilbert": "DistilBert"}.get(model_type, "Bert") + head
    if name not in classes:
        raise ValueError(f"{folder}: no {name} class in minidistil (available: {sorted(classes)})")
    return classes[name]


# ----------------------------------------------------------------------------------------------------------------


class FillMaskPipeline(Pipeline):
    task, head = "fill-mask", "ForMaskedLM"

    def __call__(self, texts, top_k: int = 5):
        """For each text: a list of top_k {"score", "token", "token_str", "sequence"} (a list of such lists when
        the text has several [MASK]s). A single text gives a single result."""
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
                    raise ValueError(f"texts[{sl.start + b}]: no {self.tokenizer.mask_token} token in "
                                     f"{texts[sl.start + b]!r}")
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

    def __call__(self, question, context, top_k: int = 1, max_answer_len: int = 15, doc_stride: int = 128,
                 max_seq_len: int | None = None):
        """For each (question, context): {"score", "start", "end", "answer"} (a list of top_k when top_k > 1).

        Only context tokens can be chosen. p_start and p_end are softmaxes over the context tokens plus [CLS] (which
        stands for "no answer", as in transformers, but is never returned); a span (s, e) scores p_start[s] *
        p_end[e] with s <= e < s + max_answer_len. A context too long for max_seq_len tokens (default
        min(384, max_length), as transformers) is read in overlapping windows, each holding the whole question
        and consecutive windows sharing doc_stride context tokens (at most half a window); every window is scored
        on its own and the best spans over all windows are returned (start/end index the original context).
        """
        questions, single = _as_list(question)
        contexts = _as_list(context)[0]
        if len(contexts) == 1 and len(questions) > 1:
            contexts = contexts * len(questions)
        if len(contexts) != len(questions):
            raise ValueError(f"context: expected 1 or {len(questions)} contexts, got {len(contexts)}")
        max_seq_len = int(max_seq_len or min(384, self.max_length))
        if not 3 <= max_seq_len <= self.max_length:
            raise ValueError(f"max_seq_len: expected 3 to {self.max_length} tokens, got {max_seq_len}")
        doc_stride = min(int(doc_stride), max_seq_len // 2)
        results = []
        for sl in self._batches(len(questions)):
            enc = self._encode(questions[sl], contexts[sl], truncation="only_second", return_offsets_mapping=True,
                               max_length=max_seq_len, stride=doc_stride, return_overflowing_tokens=True)
            out = self._forward(enc)
            starts, ends = _numpy(out.start_logits), _numpy(out.end_logits)        # (W, T): W windows
            candidates = [[] for _ in range(sl.stop - sl.start)]                   # per question of the batch
            for w in range(starts.shape[0]):
                i = int(enc["overflow_to_sample_mapping"][w])
                for score, s, e in self._best_spans(starts[w], ends[w], enc["sequence_ids"][w] == 1, top_k,
                                                    max_answer_len):
                    c0, c1 = int(enc["offset_mapping"][w, s, 0]), int(enc["offset_mapping"][w, e, 1])
                    candidates[i].append({"score": score, "start": c0, "end": c1,
                                          "answer": contexts[sl.start + i][c0:c1]})
            for i, found in enumerate(candidates):
                if not found:
                    raise ValueError(f"context[{sl.start + i}]: no context token left after tokenisation")
                answers = sorted(found, key=lambda a: -a["score"])[:top_k]        # stable: windows in order
                results.append(answers[0] if top_k == 1 else answers)
        return results[0] if single else results

    @staticmethod
    def _best_spans(start_logits, end_logits, context_tok, top_k: int, max_answer_len: int):
        """The top_k spans (score, s, e) of one window; start/end_logits (T,), context_tok (T,) bool."""
        allowed = context_tok.copy()
        allowed[0] = True                                                          # [CLS] joins the softmax
        p_start = np.where(allowed, softmax(np.where(allowed, start_logits, -np.inf).astype(np.float64)), 0.0)
        p_end = np.where(allowed, softmax(np.where(allowed, end_logits, -np.inf).astype(np.float64)), 0.0)
        p_start[~context_tok] = 0.0                                                # ... but is never an answer
        p_end[~context_tok] = 0.0
        span = np.outer(p_start, p_end)                                            # (T, T) score of (s, e)
        span = np.triu(np.tril(span, max_answer_len - 1))                          # s <= e < s + max_answer_len
        spans = []
        for flat in np.argsort(-span.reshape(-1), kind="stable")[:top_k]:
            s, e = divmod(int(flat), span.shape[1])
            if span[s, e] <= 0:
                break
            spans.append((float(span[s, e]), s, e))
        return spans


class SentenceEmbeddingPipeline(Pipeline):
    """Sentence embeddings (N, C) as sentence-transformers computes them: encoder -> pooling -> (normalise)."""

    task, head = "feature-extraction", "Model"

    def __init__(self, model, tokenizer, batch_size: int = 32, max_length: int | None = None,
                 pooling: dict | None = None, normalize: bool = False):
        super().__init__(model, tokenizer, batch_size, max_length)
        self.pooling = pooling or {"pooling_mode_mean_tokens": True}
        modes = [k for k in ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                             "pooling_mode_mean_sqrt_len_tokens") if self.pooling.get(k)]
        if not modes:
            raise ValueError(f"pooling: no supported pooling mode is switched on in {self.pooling}")
        self.modes = modes
        self.normalize = bool(normalize)

    @classmethod
    def from_pretrained(cls, name_or_path, device: str | None = None, **kwargs) -> "SentenceEmbeddingPipeline":
        """Reads the sentence-transformers files when present: 1_Pooling/config.json (pooling; mean when absent),
        modules.json (Normalize), sentence_bert_config.json (max_seq_length)."""
        from .loading import from_pretrained, model_classes, resolve
        folder = resolve(name_or_path)
        model = from_pretrained(folder, cls=_class_for(folder, "Model", model_classes()), device=device)
        modules = _json(folder / "modules.json") or []
        pool_path = next((m.get("path") for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
        kwargs.setdefault("pooling", _json(folder / pool_path / "config.json"))
        kwargs.setdefault("normalize", any(m.get("type", "").endswith("Normalize") for m in modules))
        st = _json(folder / "sentence_bert_config.json") or {}
        if "max_length" not in kwargs and st.get("max_seq_length"):
            kwargs["max_length"] = st["max_seq_length"]
        return cls(model, Tokenizer.from_pretrained(folder), **kwargs)

    def __call__(self, texts) -> np.ndarray:
        """float32 (N, C) embeddings (C times the number of pooling modes); a single text gives (C,)."""
        texts, single = _as_list(texts)
        rows = []
        for sl in self._batches(len(texts)):
            enc = self._encode(texts[sl])
            out = self._forward(enc)
            h = _numpy(out.last_hidden_state).astype(np.float32)                  # (B, T, C)
            rows.append(self.pool(h, enc["attention_mask"]))
        emb = np.concatenate(rows, axis=0) if rows else np.zeros((0, self.model.config.hidden_size), np.float32)
        return emb[0] if single else emb

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
            emb /= np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), np.float32(1e-12))
        return emb


def _json(path: Path):
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


TASKS = {
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "sentiment-analysis": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "ner": TokenClassificationPipeline,
    "question-answering": QuestionAnsweringPipeline,
    "feature-extraction": SentenceEmbeddingPipeline,
    "sentence-embeddings": SentenceEmbeddingPipeline,
}


def pipeline(task: str, model, tokenizer: Tokenizer | None = None, device: str | None = None, **kwargs) -> Pipeline:
    """Build the pipeline for `task` from a checkpoint name / folder, or from a loaded model + tokenizer."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    cls = TASKS[task]
    if isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise ValueError("tokenizer: give it only with a loaded model (a checkpoint folder brings its own)")
        return cls.from_pretrained(model, device=device, **kwargs)
    if tokenizer is None:
        folder = getattr(model, "name_or_path", None)
        if folder is None:
            raise ValueError("tokenizer: required with a model that was not loaded from a checkpoint folder")
        tokenizer = Tokenizer.from_pretrained(folder)
    return cls(model, tokenizer, **kwargs)
