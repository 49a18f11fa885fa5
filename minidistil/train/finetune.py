"""Fine-tune a BERT / DistilBERT checkpoint on your own labelled data, with evaluation and task-level distillation.

    from minidistil.train.finetune import finetune
    report = finetune(task="classification", model="student", train="reviews.csv", out_dir="sentiment",
                      text_field="review", label_field="stars", epochs=3)

Tasks and the head each one trains (the head of a checkpoint without it, e.g. a student that `minidistil distill`
wrote, starts from fresh random weights: the loader lists them as missing keys, which is expected):
    classification   *ForSequenceClassification, one label per text (or text pair), cross-entropy
    multilabel       *ForSequenceClassification, any number of labels per text, BCE with logits
    regression       *ForSequenceClassification with one output, MSE (e.g. STS-B scores)
    token            *ForTokenClassification (NER, POS), CoNLL files; the first word piece of a word carries its tag
    qa               *ForQuestionAnswering, SQuAD v1.1 files; long contexts cut into overlapping windows
    choice           *ForMultipleChoice, each (question, choice) encoded apart, softmax over the choices

The run (one epoch = one pass over the shuffled training examples):
    AdamW (minidistil.core.optim) with linear warm-up and decay, gradient clipping; evaluation on the validation set
    after each epoch (10% of the training set is held out when none is given); the best model so far (by the
    task's main metric) saved to out_dir as a Hugging Face checkpoint that `transformers` loads; early stopping
    after `early_stopping` epochs without improvement; metrics.jsonl (one line per update and one per evaluation),
    training_curve.png, report.json (its "schedule" says whether the run ended early); an atomic training
    checkpoint at the end of each epoch and every `checkpoint_every` updates, kept apart from the model in
    out_dir.training (minidistil.train.run: the last two kept, a lock against a second run on the folder), which
    `resume=True` continues from exactly (the batch order of an epoch depends only on (seed, epoch), the dropout
    masks only on (seed, update)). A non-finite loss or gradient norm, or exploded parameters, stop the run
    (minidistil.train.run.Diverged) naming the update; nothing diverged is saved.
    device="cuda" (--device cuda): the model, a teacher, the gradients and AdamW's moments live in GPU memory
    (minidistil.core.device); each batch's ids and labels are copied over, evaluation logits come back, and the
    losses and gradient norm stay on the device until the log reads them every READ_EVERY updates (an update whose
    gradient norm is not finite is skipped on the device; the read stops the run, naming it).

Task-level distillation (DistilBERT's "(D)" runs): with `teacher=` a checkpoint already fine-tuned on the same task,
the loss becomes
    (1 - alpha) * task loss  +  alpha * T^2 KL(softmax(teacher / T) || softmax(student / T))
over the class logits (classification, choice), every real token's tag logits (token), and the start and end
logits (qa, the mean of the two); MSE to the teacher's outputs for regression and BCE to sigmoid(teacher / T) for
multilabel. The teacher runs in eval mode under no_grad on the same batch.

Shapes: B batch, T tokens, K labels or choices, N examples.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minidistil.core import functional as F
from minidistil.core import losses as L
from minidistil.train import metrics as M
from minidistil.train import qa as QA
from minidistil.train import taskdata as TD
from minidistil.core.autograd import no_grad
from minidistil.core.argtypes import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, SHARE, WEIGHT, bounded, check_fields
from minidistil.core.device import check_device
from minidistil.kernels import _cuda
from minidistil.kernels import gemm as _gemm
from minidistil.core.optim import AdamW, LinearWarmupDecay
from minidistil.train.run import (READ_EVERY, Run, RunState, StepRows, models_to, open_run, plot_curves, resume,
                                  schedule_summary, schedule_text,
                  step_seed, update)
from minidistil.core.files import atomic_write

TASKS = {  # task -> (head class suffix, problem_type, main metric)
    "classification": ("ForSequenceClassification", "single_label_classification", "accuracy"),
    "multilabel": ("ForSequenceClassification", "multi_label_classification", "f1_micro"),
    "regression": ("ForSequenceClassification", "regression", "pearson"),
    "token": ("ForTokenClassification", None, "f1"),
    "qa": ("ForQuestionAnswering", None, "f1"),
    "choice": ("ForMultipleChoice", None, "accuracy"),
}
FORMATS = ("csv", "tsv", "jsonl", "imdb", "conll", "squad")
# "resource:sentiment_small.tsv" names a file shipped in the package's resources/ folder
RESOURCES = Path(str(resources.files("minidistil"))) / "resources"


def data_path(path: str) -> str:
    """A data path, with "resource:NAME" meaning minidistil/resources/NAME (the worked example's data)."""
    if path and str(path).startswith("resource:"):
        p = RESOURCES / str(path)[len("resource:"):]
        if not p.is_file():
            raise FileNotFoundError(f"{path}: no such file among {sorted(x.name for x in RESOURCES.iterdir())}")
        return str(p)
    return path


@dataclass
class FinetuneConfig:
    task: str = "classification"
    model: str = ""                      # checkpoint folder or name (minidistil.io.loading.resolve)
    train: str = ""                      # training file (or IMDb folder)
    validation: str | None = None        # validation file; None: the IMDb test split, else 10% of train held out
    out_dir: str = "finetuned"
    data_format: str | None = None       # csv / tsv / jsonl / imdb / conll / squad (default: from the suffix)
    text_field: str = "text"             # tables: fields by name, or column numbers with header=False
    text_pair_field: str | None = None
    label_field: str = "label"
    labels: list[str] | None = None      # label names in id order (default: the training labels, sorted)
    label_sep: str = ","                 # multilabel labels in one string: "sports,politics"
    header: bool = True
    question_field: str = "question"     # choice
    choices_field: list[str] | str = "choices"
    context_field: str | None = None
    tag_column: int = -1                 # conll
    on_error: str = "skip"               # malformed rows: "skip" (listed and counted) or "fail"
    held_out: float = 0.1
    limit: int | None = None             # use `limit` training examples (a sample chosen by the seed)
    eval_limit: int | None = None        # and the first `eval_limit` validation examples
    max_length: int = 128
    stride: int | None = None            # qa: tokens shared by consecutive windows (None: min(128, max_length // 2))
    max_answer_len: int = QA.DEFAULTS["max_answer_len"]  # qa: tokens (evaluation: minidistil.train.qa's decoding)
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    early_stopping: int | None = None    # stop after this many epochs without a better validation score
    teacher: str | None = None           # a checkpoint fine-tuned on the same task: task-level distillation
    alpha: float = 0.5                   # weight of the teacher term
    temperature: float = 2.0
    checkpoint_every: int = 0            # also checkpoint every N updates (0: at the end of each epoch only)
    stop_after: int | None = None        # end this session after N updates in all (resume=True continues)
    resume: bool = False                 # continue the run in out_dir (its state in out_dir.training)
    overwrite: bool = False              # start again in a folder that holds a run (its checkpoints and logs go)
    progress: bool = True
    device: str = "cpu"                  # "cuda": model, teacher, gradients and AdamW state in GPU memory


# the range of each numeric setting, checked at parse time on the command line and when finetune() starts
FIELD_TYPES = {"held_out": SHARE, "limit": POSITIVE_INT, "eval_limit": POSITIVE_INT, "max_length": bounded(int, 3),
               "stride": COUNT, "max_answer_len": POSITIVE_INT, "epochs": POSITIVE_INT, "batch_size": POSITIVE_INT,
               "lr": POSITIVE, "warmup": SHARE, "weight_decay": NON_NEGATIVE, "max_grad_norm": POSITIVE,
               "seed": COUNT, "early_stopping": POSITIVE_INT, "alpha": WEIGHT, "temperature": POSITIVE,
               "checkpoint_every": COUNT, "stop_after": POSITIVE_INT}


# ----------------------------------------------------------------------------------------------------------------
# data


def _format(cfg: FinetuneConfig, path) -> str:
    if TD.is_in_memory(path):
        return "memory"
    if cfg.data_format:
        if cfg.data_format not in FORMATS:
            raise ValueError(f"data_format: expected one of {FORMATS}, got {cfg.data_format!r}")
        return cfg.data_format
    if Path(path).is_dir():
        return "imdb"
    if cfg.task == "token":
        return "conll"
    if cfg.task == "qa":
        return "squad"
    return TD.table_format(Path(path))


def read_split(cfg: FinetuneConfig, path, split: str = "train") -> TD.Loaded:
    """The examples of one file (or IMDb split, or data in memory: see taskdata.in_memory) for cfg.task."""
    fmt = _format(cfg, path)
    if fmt == "memory":
        fmt = None
    kind = {"regression": "regression", "multilabel": "multi"}.get(cfg.task, "class")
    if cfg.task in ("classification", "multilabel", "regression"):
        if fmt == "imdb":
            return TD.read_imdb(path, split, on_error=cfg.on_error)
        return TD.read_table(path, cfg.text_field, cfg.label_field, cfg.text_pair_field, fmt=fmt, header=cfg.header,
                             label_kind=kind, label_sep=cfg.label_sep, on_error=cfg.on_error)
    if cfg.task == "token":
        return TD.read_conll(path, cfg.tag_column, on_error=cfg.on_error)
    if cfg.task == "qa":
        return TD.read_squad(path, on_error=cfg.on_error)
    if cfg.task == "choice":
        fields = cfg.choices_field
        if isinstance(fields, str) and "," in fields:
            fields = fields.split(",")
        return TD.read_choice(path, cfg.question_field, fields, cfg.label_field, cfg.context_field,
                              fmt=None if fmt == "imdb" else fmt, header=cfg.header, on_error=cfg.on_error)
    raise ValueError(f"task: expected one of {sorted(TASKS)}, got {cfg.task!r}")


def load_data(cfg: FinetuneConfig, data: dict | None = None) -> tuple[list, list, list[str]]:
    """(train examples, validation examples, skipped rows) as cfg says; data["train"] / data["validation"], when
    given, hold data in memory that replaces cfg.train / cfg.validation (see taskdata.in_memory)."""
    data = data or {}
    cfg.train, cfg.validation = data_path(cfg.train), data_path(cfg.validation)
    train, skipped = read_split(cfg, data.get("train", cfg.train), "train")
    skipped = list(skipped)
    if cfg.limit and cfg.limit < len(train):  # a seeded sample, in file order (a file may be sorted by label)
        pick = np.sort(np.random.default_rng([cfg.seed, 9]).permutation(len(train))[: cfg.limit])
        train = [train[i] for i in pick]
    if "validation" in data or cfg.validation:
        val, s = read_split(cfg, data.get("validation", cfg.validation), "test")
        skipped += s
    elif "train" not in data and _format(cfg, cfg.train) == "imdb" and (Path(cfg.train) / "test").is_dir():
        val, s = read_split(cfg, cfg.train, "test")
        skipped += s
    else:  # hold out a fixed share of the training examples, chosen by the seed
        order = np.random.default_rng([cfg.seed, 7]).permutation(len(train))
        n_val = max(1, int(round(cfg.held_out * len(train)))) if len(train) > 1 else 0
        keep = set(order[:n_val].tolist())
        val = [e for i, e in enumerate(train) if i in keep]
        train = [e for i, e in enumerate(train) if i not in keep]
    if cfg.eval_limit:
        pick = np.sort(np.random.default_rng([cfg.seed, 8]).permutation(len(val))[: cfg.eval_limit])
        val = [val[i] for i in pick]
    if not train:
        raise ValueError(f"train: no usable examples in {cfg.train}" + (f" ({len(skipped)} rows skipped, first: "
                                                                        f"{skipped[0]})" if skipped else ""))
    return train, val, skipped


def _sorted_names(names) -> list[str]:
    names = sorted(set(names))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)                                     # "2" before "10"
    return names


def label_names(cfg: FinetuneConfig, train: list) -> list[str] | None:
    """Label names in id order; None for tasks without named labels (regression, qa, choice)."""
    if cfg.labels:
        return list(cfg.labels)
    if cfg.task == "classification":
        names = _sorted_names(e.label for e in train)
        if len(names) < 2:
            raise ValueError(f"train: classification needs at least two labels, but the {len(train)} training "
                             f"examples{' (--limit ' + str(cfg.limit) + ')' if cfg.limit else ''} all have "
                             f"{names or 'no label'}; check --label-field, or use more rows")
        return names
    if cfg.task == "multilabel":
        return _sorted_names(x for e in train for x in e.label)
    if cfg.task == "token":
        return _sorted_names(t for e in train for t in e.tags)
    return None


def drop_unknown_labels(cfg: FinetuneConfig, examples: list, names: list[str] | None, skipped: list[str]) -> list:
    """Examples whose labels are all in `names`; the others recorded in `skipped` (or refused with on_error=fail)."""
    if names is None:
        return examples
    known, keep = set(names), []
    for e in examples:
        labs = [e.label] if cfg.task == "classification" else e.label if cfg.task == "multilabel" else e.tags
        bad = sorted({x for x in labs if x not in known})
        if bad:
            msg = f"{e.where}: label(s) {bad} not among the model's labels {names}"
            if cfg.on_error == "fail":
                raise TD.DataError(msg)
            skipped.append(msg)
            continue
        keep.append(e)
    return keep


# ----------------------------------------------------------------------------------------------------------------
# encoding: examples -> padded arrays (batches are trimmed to their longest row)


def _pad(rows: list[np.ndarray], value: int) -> np.ndarray:
    T = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), T), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def encode(task: str, examples: list, tokenizer, names: list[str] | None, cfg: FinetuneConfig) -> dict:
    """Model inputs for every example: {"input_ids", "attention_mask", "token_type_ids", label arrays ...}."""
    L_ = cfg.max_length
    if task in ("classification", "multilabel", "regression"):
        pairs = [e.text_pair for e in examples]
        has_pair = any(p is not None for p in pairs)
        if has_pair and any(p is None for p in pairs):
            raise ValueError("text_pair: some examples have a text pair and some do not")
        enc = tokenizer([e.text for e in examples], pairs if has_pair else None, truncation=True, max_length=L_,
                        return_token_type_ids=True, return_attention_mask=True)
        feats = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        if examples and examples[0].label is not None:
            if task == "classification":
                feats["labels"] = np.array([names.index(e.label) for e in examples], dtype=np.int64)
            elif task == "multilabel":
                y = np.zeros((len(examples), len(names)), dtype=np.float32)     # (N, K) 0/1 targets
                for i, e in enumerate(examples):
                    y[i, [names.index(x) for x in e.label]] = 1.0
                feats["labels"] = y
            else:
                feats["labels"] = np.array([e.label for e in examples], dtype=np.float32)
        return feats
    if task == "token":
        ids, labels, word_ids = [], [], []
        for e in examples:
            tag_ids = None if e.tags is None else [names.index(t) for t in e.tags]
            i, lab, w = TD.align_word_labels(e.words, tag_ids, tokenizer, L_)
            ids.append(i), labels.append(lab), word_ids.append(w)
        input_ids = _pad(ids, tokenizer.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": _pad([np.ones(len(i), np.int64) for i in ids], 0),
                "token_type_ids": np.zeros_like(input_ids), "labels": _pad(labels, TD.IGNORE_INDEX),
                "word_ids": _pad(word_ids, -1)}
    if task == "qa":  # the windows and targets of minidistil.train.qa; the first answer is the training target
        max_seq_len, stride = QA.resolve(L_, cfg.stride, L_)
        enc = QA.windows(tokenizer, [e.question for e in examples], [e.context for e in examples], max_seq_len,
                         stride)
        spans = [(e.answers[0][1], e.answers[0][1] + len(e.answers[0][0])) if e.answers else None for e in examples]
        starts, ends = QA.answer_positions(enc, spans)
        return {**{k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                "start_positions": starts, "end_positions": ends, "windows": enc}
    if task == "choice":
        K = {len(e.choices) for e in examples}
        if len(K) > 1:
            raise ValueError(f"choices: every question needs the same number of choices, got {sorted(K)}")
        K = K.pop() if K else 2
        encs = [tokenizer([e.question] * K, e.choices, truncation=True, max_length=L_, return_token_type_ids=True,
                          return_attention_mask=True) for e in examples]
        T = max((x["input_ids"].shape[1] for x in encs), default=0)
        feats = {}
        for key, pad in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            arr = np.full((len(encs), K, T), pad, dtype=np.int64)                 # (N, K, T)
            for i, x in enumerate(encs):
                arr[i, :, : x[key].shape[1]] = x[key]
            feats[key] = arr
        if examples and examples[0].label is not None:
            feats["labels"] = np.array([e.label for e in examples], dtype=np.int64)
        return feats
    raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")


def n_rows(feats: dict) -> int:
    return feats["input_ids"].shape[0]


def batch(feats: dict, idx: np.ndarray) -> dict:
    """The rows idx of every array, trimmed to the longest real row among them."""
    mask = feats["attention_mask"][idx]
    T = max(1, int(mask.reshape(-1, mask.shape[-1]).sum(-1).max()))
    out = {}
    for k, v in feats.items():
        if not isinstance(v, np.ndarray):
            continue
        v = v[idx]
        per_token = k in ("input_ids", "attention_mask", "token_type_ids", "word_ids") or (
            k == "labels" and v.ndim == 2 and v.dtype == np.int64)                  # token tags (N, T)
        out[k] = np.ascontiguousarray(v[..., :T]) if per_token else v
    return out


def forward(model, b: dict, with_labels: bool = True):
    """The model on one batch (labels / positions passed when present and with_labels)."""
    kwargs = {"attention_mask": b["attention_mask"], "token_type_ids": b["token_type_ids"]}   # DistilBERT ignores
    if with_labels:
        for k in ("labels", "start_positions", "end_positions"):
            if k in b:
                kwargs[k] = b[k]
    return model(b["input_ids"], **kwargs)


def _target(t) -> np.ndarray:
    """A teacher output as a C-contiguous array left where it is (numpy, or a numba.cuda device array)."""
    return t.data if _cuda.is_device_array(t.data) else np.ascontiguousarray(t.data)


def teacher_loss(task: str, s_out, t_out, b: dict, temperature: float):
    """The student-to-teacher term on one batch (see the module docstring). The teacher's logits stay on the
    device they were computed on (the student's)."""
    tau = float(temperature)                     # the distillation temperature (T is the token count below)
    if task in ("classification", "choice"):
        return L.distill_kl(s_out.logits, _target(t_out.logits), tau)
    if task == "regression":
        return L.mse(s_out.logits, _target(t_out.logits))
    if task == "multilabel":
        soft = 1.0 / (1.0 + np.exp(-t_out.logits.numpy().astype(np.float64) / tau))      # (B, K) soft targets
        soft = np.ascontiguousarray(soft, dtype=np.float32)
        if _cuda.is_device_array(s_out.logits.data):
            soft = _cuda.to_device(soft)                                              # (B*K floats: one copy)
        return L.bce_with_logits(s_out.logits * (1.0 / tau), soft) * (tau * tau)
    if task == "token":
        B, T, K = s_out.logits.shape
        rows = np.ascontiguousarray(b["attention_mask"].reshape(-1) != 0)            # (B*T,) real tokens
        t = _target(t_out.logits.reshape(B * T, K))
        return L.distill_kl(s_out.logits.reshape(B * T, K), t, tau, rows)
    if task == "qa":
        start = L.distill_kl(s_out.start_logits, _target(t_out.start_logits), tau)
        end = L.distill_kl(s_out.end_logits, _target(t_out.end_logits), tau)
        return (start + end) * 0.5
    raise ValueError(f"task: unknown {task!r}")


# ----------------------------------------------------------------------------------------------------------------
# prediction and evaluation


def predict_arrays(model, feats: dict, batch_size: int = 32) -> dict[str, list[np.ndarray]]:
    """Raw outputs row by row: {"logits": [...]} or {"start_logits": [...], "end_logits": [...]} (each row trimmed
    to its batch's length)."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {}
    for i in range(0, n_rows(feats), batch_size):
        idx = np.arange(i, min(n_rows(feats), i + batch_size))
        with no_grad():
            o = forward(model, batch(feats, idx), with_labels=False)
        for key in ("logits", "start_logits", "end_logits"):
            val = getattr(o, key, None)
            if val is not None:
                out.setdefault(key, []).extend(list(val.numpy()))
    return out


def word_predictions(logits_rows, feats: dict, examples: list, names: list[str]) -> list[list[str]]:
    """Token classification: each word's tag is the prediction at its first piece ("O" for a word that was cut)."""
    preds = []
    for i, e in enumerate(examples):
        tags = ["O"] * len(e.words)
        wid = feats["word_ids"][i]
        row = logits_rows[i]
        seen = set()
        for t in range(min(len(row), len(wid))):
            w = int(wid[t])
            if w >= 0 and w not in seen:
                seen.add(w)
                tags[w] = names[int(np.argmax(row[t]))]
        preds.append(tags)
    return preds


def qa_predictions(out: dict, feats: dict, examples: list, max_answer_len: int) -> list[dict]:
    """The best answer of each question over its windows (minidistil.train.qa.decode, as the pipeline decodes)."""
    answers = QA.decode(feats["windows"], out["start_logits"], out["end_logits"], [e.context for e in examples],
                        max_answer_len=max_answer_len)
    return [a[0] for a in answers]


class EvalPrediction(NamedTuple):
    """What compute_metrics receives, as in transformers: predictions are the logits (N, K) (token: (N, T, K),
    padded; qa: the decoded answers, {"answer", ...} per question), label_ids the gold labels (N,) or (N, K)
    (token: (N, T) with -100 where no label is scored; qa: the gold answer texts of each question)."""
    predictions: object
    label_ids: object


def evaluate_examples(task: str, model, examples: list, feats: dict, names: list[str] | None, cfg: FinetuneConfig,
             compute_metrics=None) -> dict:
    """The task's metrics on labelled examples (see minidistil.train.metrics); "main" names the one that picks the
    best epoch. compute_metrics(EvalPrediction) -> {name: number} adds metrics of the caller's own."""
    if not examples:
        return {"main": TASKS[task][2], TASKS[task][2]: float("nan"), "n": 0}
    out = predict_arrays(model, feats, cfg.batch_size)
    r = _task_metrics(task, out, examples, feats, names, cfg)
    if compute_metrics is not None:
        extra = compute_metrics(_eval_prediction(task, out, examples, feats, cfg))
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise ValueError(f"compute_metrics: expected a dict {{name: value}}, got {type(extra).__name__}")
        clash = sorted(set(extra) & {"main", "n"})
        if clash:
            raise ValueError(f"compute_metrics: {clash} are names the evaluation itself uses; rename them")
        r.update({k: float(v) if isinstance(v, (int, float, np.number)) else v for k, v in extra.items()})
    return {"main": TASKS[task][2], "n": len(examples), **r}


def _eval_prediction(task: str, out: dict, examples: list, feats: dict, cfg: FinetuneConfig) -> EvalPrediction:
    if task == "qa":
        answers = qa_predictions(out, feats, examples, cfg.max_answer_len)
        return EvalPrediction(answers, [[t for t, _ in e.answers] for e in examples])
    if task == "token":
        labels = feats["labels"]                                                   # (N, T)
        logits = np.zeros((*labels.shape, out["logits"][0].shape[-1]), dtype=np.float32)   # (N, T, K)
        for i, row in enumerate(out["logits"]):
            logits[i, : len(row)] = row
        return EvalPrediction(logits, labels)
    return EvalPrediction(np.stack(out["logits"]), feats["labels"])


def _task_metrics(task: str, out: dict, examples: list, feats: dict, names, cfg: FinetuneConfig) -> dict:
    if task == "classification":
        pred = np.argmax(np.stack(out["logits"]), axis=-1)
        r = M.classification_report(feats["labels"], pred, names)
    elif task == "multilabel":
        pred = (np.stack(out["logits"]) > 0).astype(np.int64)                     # sigmoid > 0.5
        r = M.multilabel_report(feats["labels"], pred, names)
    elif task == "regression":
        r = M.regression_report(feats["labels"], np.stack(out["logits"])[:, 0])
    elif task == "token":
        r = M.entity_report([e.tags for e in examples], word_predictions(out["logits"], feats, examples, names))
    elif task == "qa":
        answers = qa_predictions(out, feats, examples, cfg.max_answer_len)
        scored = [(a["answer"], [t for t, _ in e.answers]) for a, e in zip(answers, examples) if e.answers]
        r = M.squad_report([p for p, _ in scored], [g for _, g in scored])   # questions with a gold answer
    else:
        r = {"accuracy": M.accuracy(feats["labels"], np.argmax(np.stack(out["logits"]), axis=-1))}
    return r


# ----------------------------------------------------------------------------------------------------------------
# the model


def head_class(model_path, task: str):
    from minidistil.io.loading import class_for, resolve  # the checkpoint's own head class, else model type + head
    return class_for(resolve(model_path), TASKS[task][0])


def reinit(model, names: list[str], seed: int):
    """Fresh, seeded weights for the parameters the checkpoint lacked (the new head): as PreTrainedModel.init_weights
    does (normal(0, initializer_range) matrices, zero biases, LayerNorm weight 1), but reproducible."""
    rng = np.random.default_rng([seed, 11])
    std = float(model.config.initializer_range)
    for n in names:
        p = model.get_parameter(n)
        if n.endswith(".bias"):
            p.data[...] = 0.0
        elif "norm" in n.lower():
            p.data[...] = 1.0
        else:
            p.data[...] = rng.normal(0.0, std, p.shape)
        _gemm.weights_changed()  # written in place: packed copies are stale


def load_student(cfg: FinetuneConfig, names: list[str] | None, say=print):
    """The checkpoint in cfg.model with the task's head; returns (model, tokenizer, missing keys)."""
    import warnings

    from minidistil.io.loading import from_pretrained, resolve
    from minidistil.io.tokenizer import Tokenizer
    folder = resolve(cfg.model)
    cls = head_class(folder, cfg.task)
    overrides = {}
    if cfg.task in ("classification", "multilabel", "token"):
        overrides = {"num_labels": len(names), "id2label": {str(i): n for i, n in enumerate(names)},
                     "label2id": {n: i for i, n in enumerate(names)}}
    elif cfg.task == "regression":
        overrides = {"num_labels": 1, "id2label": None, "label2id": None}
    elif cfg.task == "qa":
        overrides = {"num_labels": 2, "id2label": None, "label2id": None}
    if TASKS[cfg.task][1]:
        overrides["problem_type"] = TASKS[cfg.task][1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                     # the missing head is reported below, in plain words
        model, info = from_pretrained(folder, cls=cls, output_loading_info=True, config_overrides=overrides)
    missing = info["missing_keys"]
    if missing:
        reinit(model, missing, cfg.seed)
        say(f"{cls.__name__}: {len(missing)} weights were not in {folder} and start from fresh random values "
            f"(the new task head; expected when the checkpoint has none): {missing}")
    if info["unexpected_keys"]:
        say(f"{cls.__name__}: {len(info['unexpected_keys'])} weights of {folder} are not used (e.g. a pre-training "
            f"head): {info['unexpected_keys'][:6]}{' ...' if len(info['unexpected_keys']) > 6 else ''}")
    return model, Tokenizer.from_pretrained(folder), missing


def load_teacher(cfg: FinetuneConfig, student, tokenizer, names):
    from minidistil.io.loading import from_pretrained, resolve
    from minidistil.io.tokenizer import Tokenizer
    folder = resolve(cfg.teacher)
    teacher, info = from_pretrained(folder, cls=head_class(folder, cfg.task), output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(f"teacher: {folder} lacks {info['missing_keys'][:4]}: a teacher must already be fine-tuned "
                         f"on the task (its head trained)")
    if names is not None and [teacher.config.id2label[i] for i in range(teacher.config.num_labels)] != names:
        raise ValueError(f"teacher: its labels {teacher.config.id2label} differ from the student's {names}")
    if Tokenizer.from_pretrained(folder).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"teacher: {folder} has another vocabulary than the student; both must read the same ids")
    return teacher.eval()


# ----------------------------------------------------------------------------------------------------------------
# the run


def _better(new: float, old: float | None) -> bool:
    return old is None or (math.isfinite(new) and (not math.isfinite(old) or new > old))


def finetune(task: str | None = None, model: str | None = None, train=None, out_dir: str | None = None, *,
             config: FinetuneConfig | None = None, compute_metrics=None, **overrides) -> dict:
    """Run a fine-tuning; returns the report (also out_dir/report.json). Any FinetuneConfig field is a keyword.

    train, validation: a file or folder, or data in memory (taskdata.in_memory: rows, columns, a (texts, labels)
    pair, a datasets.Dataset). compute_metrics(EvalPrediction(predictions, label_ids)) -> {name: value}: more
    metrics for each evaluation, as transformers' Trainer takes them (see `evaluate`).

    The best model and the small logs go to out_dir, the training state to out_dir.training (minidistil.train.run); a
    folder that holds a run is refused unless resume=True or overwrite=True, and one that another run is using
    is refused."""
    from minidistil.io.loading import save_pretrained
    given = {k: v for k, v in dict(task=task, model=model, train=train, out_dir=out_dir).items() if v is not None}
    data = {}                                   # data in memory stays out of the config (and its checkpoint copy)
    for key, source in (("train", given), ("validation", overrides)):
        if TD.is_in_memory(source.get(key)):
            data[key] = source[key]
            source[key] = f"<{type(data[key]).__name__} in memory>"
    cfg = FinetuneConfig(**{**asdict(config or FinetuneConfig()), **given, **overrides})
    if cfg.task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {cfg.task!r}")
    if not cfg.model or not cfg.train:
        raise ValueError("model, train: both are required (a checkpoint folder and a training file)")
    check_fields(cfg, FIELD_TYPES)
    cfg.device = check_device(cfg.device)  # before any work: no GPU -> a clear RuntimeError now
    say = print if cfg.progress else (lambda *a, **k: None)
    notice = print   # the run's notices (a lock taken over, a damaged checkpoint passed over): even without progress
    from minidistil.train.runchecks import check_output
    check_output(cfg.out_dir, model=cfg.model, teacher=cfg.teacher, train=None if "train" in data else cfg.train,
                 validation=None if "validation" in data else cfg.validation)
    refusal = ("data parallelism on MPI: fine-tuning runs on the CPU and without a teacher"
               if cfg.device != "cpu" or cfg.teacher else None)
    with open_run(cfg, say, notice, mpi_refusal=refusal) as (world, run, say):   # rank 0 prints, logs and saves
        return _finetune(cfg, data, compute_metrics, run, world, say, save_pretrained)


def _share(task: str, b: dict, lo: int, hi: int) -> float:
    """The share of the batch's loss positions in examples [lo, hi): tagged tokens (token), answers inside the
    window (qa), else examples."""
    if task == "token":
        counted = np.asarray(b["labels"]) != -100
    elif task == "qa":
        counted = np.asarray(b["start_positions"]) < b["input_ids"].shape[-1]
    else:
        counted = np.ones(len(b["input_ids"]), dtype=bool)
    return float(np.count_nonzero(counted[lo:hi])) / max(1, int(np.count_nonzero(counted)))


def _finetune(cfg, data, compute_metrics, run: Run, world, say, save_pretrained) -> dict:
    out = run.out
    train_ex, val_ex, skipped = load_data(cfg, data)
    names = label_names(cfg, train_ex)
    from minidistil.train.runchecks import check_examples, check_labels
    check_labels(cfg, train_ex, names)
    train_ex = drop_unknown_labels(cfg, train_ex, names, skipped)
    val_ex = drop_unknown_labels(cfg, val_ex, names, skipped)
    check_examples(cfg, train_ex, val_ex, bool(cfg.validation) or "validation" in data)
    if skipped:
        say(f"skipped {len(skipped)} malformed row(s):")
        for s in skipped[:10]:
            say(f"  {s}")
        if len(skipped) > 10:
            say(f"  ... and {len(skipped) - 10} more (all listed in {out / 'skipped.txt'})")
        if run.writer:
            atomic_write(out / "skipped.txt", "".join(s + "\n" for s in skipped))
    say(f"{cfg.task}: {len(train_ex)} training and {len(val_ex)} validation examples"
        + (f", labels {names}" if names else ""))

    model_, tokenizer, missing = load_student(cfg, names, say)
    teacher = load_teacher(cfg, model_, tokenizer, names) if cfg.teacher else None
    tr = encode(cfg.task, train_ex, tokenizer, names, cfg)
    va = encode(cfg.task, val_ex, tokenizer, names, cfg) if val_ex else None

    N = n_rows(tr)
    per_epoch = math.ceil(N / cfg.batch_size)
    total = per_epoch * cfg.epochs
    sched = LinearWarmupDecay(cfg.lr, total, cfg.warmup)
    opt = AdamW(model_.named_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    params = dict(model_.named_parameters())
    from minidistil.train.runchecks import finetune_identity
    run.expect(**finetune_identity(cfg, params, names, tr, va, teacher))   # --resume: the same run only
    state = resume(run, world, params, opt)
    if state is None:
        state = RunState(total_steps=total)
    else:
        say(f"continuing with epoch {state.epoch + 1}, update {state.step + 1}")
    models_to(cfg.device, say, model_, teacher)

    def save_state():  # the parameters as Tensors: np.asarray copies device arrays to the host
        run.save(state.step, model=params, optimizer=opt.state_dict(), state=state, config=cfg)

    def show(r):  # a written row on the epoch's bar
        if bar is not None:
            bar.set_postfix(loss=f"{r['loss']:.4f}", refresh=False)

    # the rows of metrics.jsonl: read at once on the CPU; on the GPU every READ_EVERY updates, before a checkpoint
    # and at the end of an epoch (a non-finite update was skipped on the device; the read stops the run there)
    rows = StepRows(run, READ_EVERY, show=show, detail=lambda r: f" (lr {cfg.lr}; check the labels)")
    bar = None
    t0 = time.perf_counter()
    stopped, done_early, lr = None, False, None
    while state.epoch < cfg.epochs and not done_early:
        epoch = state.epoch
        order = np.random.default_rng(step_seed(cfg.seed, epoch)).permutation(N)
        bar = _bar(cfg, per_epoch, state.batch, f"epoch {epoch + 1}/{cfg.epochs}")
        model_.train()
        while state.batch < per_epoch:
            if cfg.stop_after is not None and state.step >= cfg.stop_after:
                stopped = state.step
                break
            idx = order[state.batch * cfg.batch_size:(state.batch + 1) * cfg.batch_size]
            b = batch(tr, idx)                                  # the global batch, on every rank
            lo, hi = world.shard(len(idx))                      # this rank's examples [lo, hi)
            share = 1.0
            if world.size > 1:  # the loss: this rank's partial sum over the GLOBAL count
                share = _share(cfg.task, b, lo, hi)
                b = {k: v[lo:hi] for k, v in b.items()}
            per_example = b["input_ids"].shape[1] if cfg.task == "choice" else 1   # (B, K, T): K rows each
            F.manual_seed(step_seed(cfg.seed, 1, state.step), first_example=lo * per_example)  # dropout masks
            s_out = forward(model_, b)
            on_device = _cuda.is_device_array(s_out.loss.data)    # then the losses stay there until the next read
            read = (lambda t: t.data) if on_device else float
            loss, row = s_out.loss, {"step": state.step + 1, "epoch": epoch + 1, "task_loss": read(s_out.loss)}
            if teacher is not None:
                with no_grad():
                    t_out = forward(teacher, b, with_labels=False)
                kd = teacher_loss(cfg.task, s_out, t_out, b, cfg.temperature)
                loss = loss * (1.0 - cfg.alpha) + kd * cfg.alpha
                row["teacher_loss"] = read(kd)
            value = read(loss)
            if world.size > 1:  # the global loss: the sum of the ranks' shares
                loss = loss * share
                value, row["task_loss"] = (float(x) for x in world.sum([value * share, row["task_loss"] * share]))
            if not on_device:
                run.check_step(state.step + 1, loss=value, detail=f" (lr {cfg.lr}; check the labels)")
            loss.backward()
            lr = sched(state.step)
            norm = update(run, world, opt, state.step, cfg.max_grad_norm, lr)   # the global batch's gradient
            state.step += 1
            state.batch += 1
            rows.add({**row, "loss": value, "lr": lr, "grad_norm": norm})
            if bar is not None:
                bar.update(1)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                rows.flush()
                save_state()
        rows.flush()
        if bar is not None:
            bar.close()
        if stopped is not None:
            break
        # end of the epoch: evaluate, keep the best, maybe stop
        model_.eval()
        r = (evaluate_examples(cfg.task, model_, val_ex, va, names, cfg, compute_metrics) if va is not None
             else {"main": None})
        score = r.get(r["main"]) if r["main"] else None
        run.log({"step": state.step, "epoch": epoch + 1, "eval": r})
        state.history.append({"epoch": epoch + 1, "step": state.step, "score": score,
                              **({"metric": r["main"]} if r["main"] else {})})
        if score is None or _better(score, state.best):
            state.best, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
            run.check_parameters(state.step, params)
            if run.writer:
                save_pretrained(model_, out, tokenizer=tokenizer)
            say(f"epoch {epoch + 1}: {metrics_summary(r)}  -> best so far, saved to {out}")
        else:
            state.bad_epochs += 1
            say(f"epoch {epoch + 1}: {metrics_summary(r)}  (best {state.best:.4f} at epoch {state.best_epoch})")
            if cfg.early_stopping and state.bad_epochs >= cfg.early_stopping:
                say(f"early stopping: {state.bad_epochs} epoch(s) without improvement")
                done_early = True
        state.epoch += 1
        state.batch = 0
        state.seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        save_state()
    if stopped is not None:
        state.seconds += time.perf_counter() - t0
        save_state()
        say(f"stopped after {stopped} updates (stop_after); continue with resume=True / --resume")

    why = (f"stop_after {cfg.stop_after}: continue with --resume" if stopped is not None else
           f"early stopping after {state.bad_epochs} epochs without improvement" if done_early else "")
    report = {"task": cfg.task, "model": cfg.model, "out_dir": str(out), "labels": names,
              "train_examples": len(train_ex), "validation_examples": len(val_ex), "skipped_rows": len(skipped),
              "new_head_weights": missing, "updates": state.step, "epochs_done": state.epoch,
              "train_seconds": round(state.seconds, 1), "best_epoch": state.best_epoch,
              "best_score": state.best, "metric": TASKS[cfg.task][2], "history": state.history,
              "finished": stopped is None, "teacher": cfg.teacher, "curve": None,
              "schedule": schedule_summary(state.step, total, lr, cfg.lr, why), "state_dir": str(run.state_dir)}
    if stopped is None and run.writer:
        report["curve"] = plot_curves(run.metrics, out / "training_curve.png", ("loss",), "fine-tuning", say)
        if state.history and state.history[-1].get("score") is not None:
            final = [json.loads(x) for x in run.metrics.read_text().splitlines() if '"eval"' in x]
            best_row = next((r["eval"] for r in final if r["epoch"] == state.best_epoch), None)
            report["best_eval"] = best_row
    if not report["schedule"]["complete"]:
        say(schedule_text(report["schedule"]))
    run.write_report(report)
    return report


def metrics_summary(r: dict) -> str:
    keys = ("accuracy", "f1_macro", "f1_micro", "pearson", "spearman", "precision", "recall", "f1", "exact_match")
    undefined = [k for k in keys if k in r and r[k] is None]     # a correlation over one validation example
    return "  ".join([f"{k} {r[k]:.4f}" for k in keys if isinstance(r.get(k), float)]
                     + [f"{k} undefined (one validation example)" for k in undefined]
                     + ([f"mse {r['mse']:.4f}"] if undefined and isinstance(r.get("mse"), float) else [])
                     ) or "no validation set"


def _bar(cfg: FinetuneConfig, total: int, initial: int, desc: str):
    if not cfg.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
