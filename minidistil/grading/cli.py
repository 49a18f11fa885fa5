"""`minidistil grade`: grade an answer file, print the report (or, with --json, one JSON object per check), exit 0
only when every check passes. Also `python -m minidistil.grading EXERCISE FILE`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_command(sub, name: str = "grade", help: str = "grade an exercise answer"):
    """The hook of minidistil/cli.py's COMMANDS registry: adds the `grade` sub-parser."""
    p = sub.add_parser(name, help=help, description="Grade your answer to an exercise (`minidistil exercises copy "
                       "DIR` gives you the stubs): checks shapes, dtypes, values against the kernels' references "
                       "and finite differences, and prints hints. Exit status 0 only when every check passes.")
    p.add_argument("exercise", nargs="?", help="exercise name (see --list), or the answer file if it is named "
                   "after its exercise")
    p.add_argument("path", nargs="?", help="your answer file (default: the untouched stub EXERCISE.py)")
    p.add_argument("--list", action="store_true", help="list the exercises and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object per check (name, passed, error, "
                   "where, hint) instead of the report, for autograders")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from . import EXERCISES, grade, list_exercises
    if args.list or not args.exercise:
        width = max(len(n) for n in EXERCISES)
        for name, title in list_exercises():
            print(f"{name:<{width}}  {title}")
        if not args.list:
            print("usage: minidistil grade EXERCISE [path/to/answer.py]")
            return 2
        return 0
    exercise, path = args.exercise, args.path
    if path is None and exercise.endswith(".py"):
        exercise, path = Path(exercise).stem, exercise
    if path is None:
        path = EXERCISES[exercise].stub if exercise in EXERCISES else exercise
    report = grade(exercise, path)
    if args.json:
        for check in report.checks:
            print(json.dumps({"exercise": report.exercise, **check.record()}, ensure_ascii=False))
    else:
        print(report.text())
    return 0 if report.passed else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidistil.grading")
    sub = parser.add_subparsers(dest="command")
    add_command(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["grade", *argv])
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"minidistil grade: error: {e}", file=sys.stderr)
        return 1
