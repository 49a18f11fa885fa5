"""Predict with a fine-tuned checkpoint: `minidistil predict --model sentiment "I loved it."`.

The task comes from the checkpoint's head (config.json `architectures`):
    *ForSequenceClassification   {"label", "score"} per text (top_k > 1: a list, best first); softmax scores,
                                 sigmoid for multi-label, the raw value for regression ({"score"} only)
    *ForTokenClassification      the entities of each text, grouped as transformers' "simple" aggregation does
    *ForQuestionAnswering        {"answer", "start", "end", "score"} per question, over EVERY window of a long
                                 context (minidistil.taskdata.qa_windows / best_span, as fine-tuning evaluates)
    *ForMultipleChoice           {"choice", "index", "score", "scores"} per question

Inputs: texts as arguments, --file (one per line) or standard input. Sentence pairs: "first<TAB>second" with
--pair-sep '\\t'. Question answering takes questions with --context (text or @file), or JSON lines
{"question": ..., "context": ...}; multiple choice takes questions with --choices "a|b|c", or JSON lines
{"question": ..., "choices": [...]}. Results print as JSON lines, one per input.
"""
from __future__ import annotations

import json

import numpy as np

from .pipelines import softmax

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
    """(model, tokenizer) of a fine-tuned checkpoint (its own head class)."""
    from .loading import from_pretrained, resolve
    from .tokenizer import Tokenizer
    folder = resolve(model_path)
    return from_pretrained(folder, device=device), Tokenizer.from_pretrained(folder)


def predict(model, tokenizer, inputs: list, *, top_k: int = 1, batch_size: int = 32, max_length: int | None = None,
            stride: int | None = None, max_answer_len: int = 30) -> list:
    """One result per input. inputs: texts or (text, text_pair) tuples (classification), texts (token),
    {"question", "context"} dicts (qa), {"question", "choices"} dicts (choice)."""
    from . import finetune as FT
    from . import taskdata as TD
    from .pipelines import TextClassificationPipeline, TokenClassificationPipeline
    task = task_of(model)
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
    stride = max_length // 4 if stride is None else stride              # qa: windows overlap by a quarter
    cfg = FT.FinetuneConfig(task=task, max_length=max_length, stride=stride, batch_size=batch_size,
                            max_answer_len=max_answer_len)
    if task == "qa":
        examples = [TD.QAExample(str(i), x["question"], x["context"]) for i, x in enumerate(inputs)]
        feats = FT.encode("qa", examples, tokenizer, None, cfg)
        return FT.qa_predictions(FT.predict_arrays(model, feats, batch_size), feats, examples, max_answer_len)
    examples = [TD.ChoiceExample(x["question"], list(x["choices"])) for x in inputs]
    out = []
    for ex in examples:  # one question at a time: the number of choices may differ between questions
        logits = FT.predict_arrays(model, FT.encode("choice", [ex], tokenizer, None, cfg), 1)["logits"][0]
        p = softmax(np.asarray(logits, dtype=np.float64))
        k = int(np.argmax(p))
        out.append({"choice": ex.choices[k], "index": k, "score": float(p[k]), "scores": [float(v) for v in p]})
    return out


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_command(sub, name: str = "predict", help: str = "predict with a fine-tuned checkpoint"):
    from .cli import _model_args, _text_args
    p = sub.add_parser(name, help=help, description=__doc__.split("\n\n")[0],
                       epilog="The task comes from the checkpoint's head. Inputs: arguments, --file or stdin.")
    _text_args(p)
    _model_args(p)
    p.add_argument("--top-k", type=int, default=1, help="classification: labels per text (0: all)")
    p.add_argument("--pair-sep", help="classification: split each input into a sentence pair at this string")
    p.add_argument("--context", help="qa: the passage (or @file) every question is about")
    p.add_argument("--choices", help="choice: the choices of every question, separated by '|'")
    p.add_argument("--max-length", type=int, help="tokens per sequence / window")
    p.add_argument("--stride", type=int, help="qa: tokens shared by consecutive windows (default: a quarter of "
                   "--max-length)")
    p.add_argument("--max-answer-len", type=int, default=30, help="qa: tokens")
    p.set_defaults(run=run_cli)
    return p


def _json_inputs(texts: list[str], keys: tuple[str, str]) -> list[dict]:
    from .cli import CLIError
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
    from .cli import CLIError, _print_json, _texts
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
            context = args.context
            if context.startswith("@"):
                try:
                    with open(context[1:], encoding="utf-8") as f:
                        context = f.read()
                except OSError as e:
                    raise CLIError(f"--context: cannot read {context[1:]}: {e.strerror}") from None
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
    for r in predict(model, tokenizer, inputs, top_k=args.top_k, batch_size=args.batch_size,
                     max_length=args.max_length, stride=args.stride, max_answer_len=args.max_answer_len):
        _print_json(r)
    return 0
