"""What the commands of `minidistil` share: the error type, the parser, the model and text arguments, reading
texts, printing JSON. The command modules (cli, predict) import it; it imports none of them."""
from __future__ import annotations

import argparse
import json
import sys
from minidistil.core.argtypes import COUNT as COUNT, NON_NEGATIVE as NON_NEGATIVE, POSITIVE as POSITIVE
from minidistil.core.argtypes import POSITIVE_INT as POSITIVE_INT, SHARE as SHARE, WEIGHT as WEIGHT
from minidistil.core.argtypes import bounded as bounded, check_fields as check_fields, int_list as int_list
from minidistil.core.files import TEXT_LIMIT, check_unicode, decode_utf8, read_limited, read_text


class CLIError(ValueError):
    """An error to report in one line (no traceback)."""


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line as the other errors are: `PROG: error: WHAT`."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------------------------------------
# shared helpers


def _model_args(p: argparse.ArgumentParser, default: str | None = None):
    p.add_argument("--model", default=default, required=default is None,
                   help="checkpoint folder or name in the weights folder" + (f" (default: {default})" if default
                                                                              else ""))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=32, help="texts per forward pass (default: 32)")


def _text_args(p: argparse.ArgumentParser):
    p.add_argument("texts", nargs="*", help="texts (default: read --file, or standard input, one per line)")
    p.add_argument("--file", help="read texts from this file, one per line")


def _texts(args) -> list[str]:
    if args.texts:
        return [check_unicode(t, f"text argument {i}") for i, t in enumerate(args.texts, 1)]
    if args.file:
        lines = _read_file("--file", args.file).splitlines()
    else:
        if sys.stdin.isatty():
            raise CLIError("no texts: give them as arguments, with --file, or on standard input")
        raw = getattr(sys.stdin, "buffer", None)                             # bytes: a non-UTF-8 byte is named
        text = (decode_utf8(read_limited(raw, TEXT_LIMIT, "<stdin>"), "<stdin>") if raw is not None
                else sys.stdin.read(TEXT_LIMIT))
        lines = check_unicode(text, "<stdin>").splitlines()
    texts = [t for t in lines if t.strip()]
    if not texts:
        raise CLIError("no texts: the input is empty")
    return texts


def _read_file(flag: str, path: str) -> str:
    """The UTF-8 text of a file named on the command line; a CLIError naming the flag, the file and, for a
    non-UTF-8 file, the offset of the first bad byte."""
    try:
        return read_text(path)
    except OSError as e:
        raise CLIError(f"{flag}: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise CLIError(f"{flag}: {e}") from None


def text_or_file(value: str, flag: str) -> str:
    """The text given with a flag, or the contents of FILE when it is "@FILE" (e.g. --context @passage.txt)."""
    text = _read_file(flag, value[1:]) if value.startswith("@") else value
    check_unicode(text, flag)
    return text


def _pipeline(task: str, args, **kwargs):
    """The pipeline of --model for `task`; a task head without trained weights is refused, naming them."""
    from minidistil.apps.pipelines import pipeline
    if task != "sentence-embeddings":
        kwargs["require_head"] = True
    return pipeline(task, args.model, device=args.device, batch_size=args.batch_size, **kwargs)


NON_FINITE = ("the model's output is NaN or infinite, so nothing was written (are its weights finite? loading warns "
              "when they are not)")


def _print_json(obj):
    _print_json_lines([obj])


def _print_json_lines(results):
    """Print each result as a JSON line, or none of them (a CLIError) when one holds NaN or inf."""
    lines = []
    for i, r in enumerate(results, 1):
        try:
            lines.append(json.dumps(r, ensure_ascii=False, allow_nan=False))
        except ValueError:                                                  # JSON has no NaN nor Infinity
            raise CLIError(f"input {i}: {NON_FINITE}") from None
    for line in lines:
        print(line)


# ----------------------------------------------------------------------------------------------------------------
# commands
