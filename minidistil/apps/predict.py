"""Predict with a fine-tuned checkpoint, `minidistil predict --model sentiment "I loved it."`, or measure it on
labelled data without training, `minidistil evaluate --model sentiment --data test.tsv --text-field sentence`.

The task comes from the checkpoint's head (config.json `architectures`):
    *ForSequenceClassification   {"label", "score"} per text (top_k > 1: a list, best first); softmax scores,
                                 sigmoid for multi-label, the raw value for regression ({"score"} only)
    *ForTokenClassification      the entities of each text, grouped as transformers' "simple" aggregation does
    *ForQuestionAnswering        {"score", "start", "end", "answer"} per question, over every window of a long
                                 context: the question-answering pipeline (minidistil.train.qa), as `minidistil qa`
    *ForMultipleChoice           {"choice", "index", "score", "scores"} per question

Inputs: texts as arguments, --file (one per line) or standard input. Sentence pairs: "first<TAB>second" with
--pair-sep '\\t'. Question answering takes questions with --context (text or @file), or JSON lines
{"question": ..., "context": ...}; multiple choice takes questions with --choices "a|b|c", or JSON lines
{"question": ..., "choices": [...]}. Results print as JSON lines, one per input.
"""
from __future__ import annotations

import json
import os

import numpy as np

from minidistil.train import qa as QA
from minidistil.apps.pipelines import softmax

HEADS = {"ForSequenceClassification": "classification", "ForTokenClassification": "token",
         "ForQuestionAnswering": "qa", "ForMultipleChoice": "choice"}


def task_of(model) -> str:
    name = type(model).__name__
    for suffix, task in HEADS.items():
        if name.endswith(suffix):
            return task
    raise ValueError(f"model: {name} has no task head to predict with (expected one of "
                     f"{', '.join('*' + h for h in HEADS)}); fine-tune it first with `minidistil finetune`")


def load(model_path, device: str | None = None):
    """(model, tokenizer) of a fine-tuned checkpoint (its own head class); a checkpoint that lacks weights of its
    head is refused, naming them."""
    from minidistil.io.loading import resolve
    from minidistil.io.loading import load_model
    from minidistil.io.tokenizer import Tokenizer
    folder = resolve(model_path)
    return load_model(folder, None, device, require_head=True), Tokenizer.from_pretrained(folder)


def predict(model, tokenizer, inputs: list, *, top_k: int = 1, batch_size: int = 32, max_length: int | None = None,
            stride: int | None = None, max_answer_len: int = QA.DEFAULTS["max_answer_len"]) -> list:
    """One result per input. inputs: texts or (text, text_pair) tuples (classification), texts (token),
    {"question", "context"} dicts (qa: max_length tokens per window, consecutive windows sharing `stride`),
    {"question", "choices"} dicts (choice)."""
    from minidistil.train import finetune as FT
    from minidistil.train import taskdata as TD
    from minidistil.apps.pipelines import (QuestionAnsweringPipeline, TextClassificationPipeline,
                            TokenClassificationPipeline)
    task = task_of(model)
    if task == "qa" and (not isinstance(max_answer_len, int) or max_answer_len < 1):
        raise ValueError(f"max_answer_len: expected an integer >= 1, got {max_answer_len!r}")
    max_length = int(min(max_length or tokenizer.model_max_length, model.config.max_position_embeddings))
    if task == "classification":
        cfg = model.config
        pipe = TextClassificationPipeline(model, tokenizer, batch_size=batch_size, max_length=max_length)
        texts = [x[0] if isinstance(x, tuple) else x for x in inputs]
        pairs = [x[1] for x in inputs] if inputs and isinstance(inputs[0], tuple) else None
        if cfg.problem_type == "regression" or cfg.num_labels == 1 and cfg.problem_type is None:
            res = pipe(texts, pairs, top_k=1, function_to_apply="none")
            return [{"score": r["score"]} for r in res]
        return pipe(texts, pairs, top_k=top_k or None)
    if task == "token":
        return TokenClassificationPipeline(model, tokenizer, batch_size=batch_size, max_length=max_length)(inputs)
    if task == "qa":
        pipe = QuestionAnsweringPipeline(model, tokenizer, batch_size=batch_size, max_length=max_length)
        return pipe([x["question"] for x in inputs], [x["context"] for x in inputs], top_k=top_k or 1,
                    max_answer_len=max_answer_len, doc_stride=stride)
    cfg = FT.FinetuneConfig(task=task, max_length=max_length, batch_size=batch_size)
    examples = [TD.ChoiceExample(x["question"], list(x["choices"])) for x in inputs]
    out = []
    for ex in examples:  # one question at a time: the number of choices may differ between questions
        logits = FT.predict_arrays(model, FT.encode("choice", [ex], tokenizer, None, cfg), 1)["logits"][0]
        p = softmax(np.asarray(logits, dtype=np.float64))
        k = int(np.argmax(p))
        out.append({"choice": ex.choices[k], "index": k, "score": float(p[k]), "scores": [float(v) for v in p]})
    return out


# ----------------------------------------------------------------------------------------------------------------
# evaluation of a saved model


def task_for_metrics(model) -> str:
    """The fine-tuning task whose metrics fit this model: its head, and for a classification head its problem type
    (regression, multilabel); "similarity" for a model without a task head (sentence-pair similarity)."""
    try:
        task = task_of(model)
    except ValueError:
        return "similarity"
    if task == "classification":
        cfg = model.config
        if cfg.problem_type == "regression" or cfg.num_labels == 1 and cfg.problem_type is None:
            return "regression"
        if cfg.problem_type == "multi_label_classification":
            return "multilabel"
    return task


def evaluate(model, data, *, task: str | None = None, held_out: float | None = None, device=None,
             compute_metrics=None, **settings) -> dict:
    """The metrics of a saved model on labelled data, without training, computed as fine-tuning computes them
    (minidistil.train.finetune.evaluate, minidistil.train.metrics).

    model:    a checkpoint folder or name (a task head without trained weights is refused)
    data:     a file (GLUE-style TSV, CSV, JSONL, CoNLL, SQuAD JSON, IMDb folder) or data in memory
    task:     default from the checkpoint's head ("similarity" for a bare encoder: Spearman and Pearson of the
              cosine similarity of the two sentences' embeddings against the pair's score)
    held_out: evaluate only the share of `data` that `finetune --held-out` (same seed and limit) held out
    settings: any FinetuneConfig field that reads or encodes the data (text_field, text_pair_field, label_field,
              max_length, stride, batch_size, seed, limit, ...), as the fine-tuning run had them
    """
    from minidistil.train import finetune as FT
    from minidistil.train import metrics as M
    from minidistil.train.evaluation import cosine
    from minidistil.io.loading import resolve
    from minidistil.io.loading import load_model
    from minidistil.apps.pipelines import SentenceEncoder
    from minidistil.io.tokenizer import Tokenizer
    if held_out is not None and not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out: expected a share between 0 and 1, got {held_out}")
    folder = resolve(model)
    if task is None:
        task = task_for_metrics(load_model(folder, None))
    if task not in (*FT.TASKS, "similarity"):
        raise ValueError(f"task: expected one of {sorted((*FT.TASKS, 'similarity'))}, got {task!r}")
    in_memory = not isinstance(data, (str, os.PathLike))
    cfg = FT.FinetuneConfig(task="regression" if task == "similarity" else task, model=str(folder),
                            train="<data in memory>" if in_memory else str(data), held_out=held_out or 0.0,
                            **settings)
    if held_out:
        _, examples, skipped = FT.load_data(cfg, {"train": data} if in_memory else None)
    else:
        cfg.train = FT.data_path(cfg.train)
        examples, skipped = FT.read_split(cfg, data if in_memory else cfg.train, "test")
        skipped = list(skipped)
    if not examples:
        raise ValueError(f"data: no usable examples in {cfg.train}" + (f" ({len(skipped)} rows skipped, first: "
                                                                       f"{skipped[0]})" if skipped else ""))
    if task == "similarity":
        if any(e.text_pair is None for e in examples):
            raise ValueError("data: sentence-pair similarity needs two texts per row (give --text-pair-field)")
        enc = SentenceEncoder.from_pretrained(folder, device=device, batch_size=cfg.batch_size)
        sim = cosine(enc.encode([e.text for e in examples], batch_size=cfg.batch_size),
                     enc.encode([e.text_pair for e in examples], batch_size=cfg.batch_size))     # (N,)
        gold = np.array([e.label for e in examples], dtype=np.float64)
        result = {"main": "spearman", "n": len(examples), "spearman": M.spearman(gold, sim),
                  "pearson": M.pearson(gold, sim)}
    else:
        model_ = load_model(folder, None, device, require_head=True)
        tokenizer = Tokenizer.from_pretrained(folder)
        names = None
        if task in ("classification", "multilabel", "token"):
            names = [model_.config.id2label[i] for i in range(model_.config.num_labels)]
            examples = FT.drop_unknown_labels(cfg, examples, names, skipped)
            if not examples:
                raise ValueError(f"data: no example of {cfg.train} has labels the model knows ({', '.join(names)}); "
                                 f"first: {skipped[-1]}")
        feats = FT.encode(task, examples, tokenizer, names, cfg)
        result = FT.evaluate_examples(task, model_, examples, feats, names, cfg, compute_metrics)
    return {"task": task, **result, "skipped_rows": len(skipped)}


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_command(sub, name: str = "predict", help: str = "predict with a fine-tuned checkpoint"):
    from minidistil.apps.cliargs import _model_args, _text_args
    from minidistil.core.argtypes import COUNT, POSITIVE_INT, bounded
    p = sub.add_parser(name, help=help, description=__doc__.split("\n\n")[0],
                       epilog="The task comes from the checkpoint's head. Inputs: arguments, --file or stdin.")
    _text_args(p)
    _model_args(p)
    p.add_argument("--top-k", type=COUNT, default=1, help="classification: labels per text (0: all); qa: answers "
                   "per question")
    p.add_argument("--pair-sep", help="classification: split each input into a sentence pair at this string")
    p.add_argument("--context", help="qa: the passage (or @file) every question is about")
    p.add_argument("--choices", help="choice: the choices of every question, separated by '|'")
    p.add_argument("--max-length", type=bounded(int, 3), help="tokens per sequence / window")
    p.add_argument("--stride", type=COUNT, help="qa: tokens shared by consecutive windows (default "
                   f"{QA.DEFAULTS['doc_stride']}, at most half a window, as `minidistil qa --doc-stride`)")
    p.add_argument("--max-answer-len", type=POSITIVE_INT, default=QA.DEFAULTS["max_answer_len"],
                   help="qa: tokens (default %(default)s)")
    p.set_defaults(run=run_cli)
    return p


def _json_inputs(texts: list[str], keys: tuple[str, str]) -> list[dict]:
    from minidistil.apps.cliargs import CLIError
    out = []
    for i, t in enumerate(texts, 1):
        try:
            obj = json.loads(t)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or any(k not in obj for k in keys):
            raise CLIError(f"input {i}: expected a JSON object with {' and '.join(map(repr, keys))} "
                           f"(or give --{'context' if keys[1] == 'context' else 'choices'}), got {t[:60]!r}")
        out.append(obj)
    return out


def run_cli(args) -> int:
    from minidistil.apps.cliargs import CLIError, _print_json_lines, _texts, text_or_file
    model, tokenizer = load(args.model, args.device)
    task = task_of(model)
    texts = _texts(args)
    if task == "classification" and args.pair_sep:
        sep = args.pair_sep.encode().decode("unicode_escape")              # "\t" typed on a shell
        bad = [i for i, t in enumerate(texts, 1) if sep not in t]
        if bad:
            raise CLIError(f"input {bad[0]}: no {args.pair_sep!r} separating the two texts of the pair")
        inputs = [tuple(t.split(sep, 1)) for t in texts]
    elif task == "qa":
        if args.context:
            context = text_or_file(args.context, "--context")
            inputs = [{"question": q, "context": context} for q in texts]
        else:
            inputs = _json_inputs(texts, ("question", "context"))
    elif task == "choice":
        if args.choices:
            inputs = [{"question": q, "choices": args.choices.split("|")} for q in texts]
        else:
            inputs = _json_inputs(texts, ("question", "choices"))
    else:
        inputs = texts
    _print_json_lines(predict(model, tokenizer, inputs, top_k=args.top_k, batch_size=args.batch_size,
                              max_length=args.max_length, stride=args.stride, max_answer_len=args.max_answer_len))
    return 0


def add_evaluate_command(sub, name: str = "evaluate", help: str = "metrics of a saved model on a labelled file"):
    from minidistil.core.argtypes import COUNT, POSITIVE_INT, SHARE
    from minidistil.apps.cliargs import _model_args
    from minidistil.apps.commands import add_data_args, add_length_args
    from minidistil.train.finetune import FinetuneConfig
    d = FinetuneConfig()
    p = sub.add_parser(name, help=help, description="The metrics of a saved model on a labelled file, computed as "
                       "fine-tuning computes them, without training. The task comes from the checkpoint's head "
                       "(sentence-pair similarity for a model without one).",
                       epilog="example: minidistil evaluate --model sentiment --data resource:sentiment_small.tsv "
                              "--text-field sentence --held-out 0.25   (the share `finetune --held-out 0.25` held out)")
    _model_args(p)
    p.add_argument("--data", required=True, help="labelled file (GLUE-style tsv, csv, jsonl, conll, squad json) or "
                   "IMDb folder; resource:NAME for a file shipped with minidistil")
    p.add_argument("--task", choices=["classification", "multilabel", "regression", "token", "qa", "choice",
                                      "similarity"], help="default: from the checkpoint's head")
    p.add_argument("--held-out", type=SHARE, help="evaluate only the share of --data that `finetune --held-out` "
                   "held out (give the run's --seed and --limit too)")
    p.add_argument("--seed", type=COUNT, default=d.seed, help="(default %(default)s)")
    p.add_argument("--limit", type=POSITIVE_INT, help="as the fine-tuning run's --limit")
    add_data_args(p, d)
    add_length_args(p, d)
    p.set_defaults(run=run_evaluate)
    return p


def run_evaluate(args) -> int:
    from minidistil.apps.cliargs import _print_json
    settings = {k: getattr(args, k) for k in ("seed", "limit", "data_format", "text_field", "text_pair_field",
                                              "label_field", "label_sep", "header", "question_field",
                                              "choices_field", "context_field", "tag_column", "on_error",
                                              "max_length", "stride", "max_answer_len", "batch_size")}
    _print_json(evaluate(args.model, args.data, task=args.task, held_out=args.held_out, device=args.device,
                         **settings))
    return 0
