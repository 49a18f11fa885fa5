"""`minidistil grade`: grade answer files (one, several, or a class folder), print the reports (or, with --json, one
JSON object per check), write a gradebook (--gradebook) or Gradescope's results.json (--gradescope), exit 0 only
when every check passes. Also `python -m minidistil.grading EXERCISE FILE`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from minidistil.grading.remote import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT


def _positive(kind):
    def parse(value):
        try:
            v = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {value!r}") from None
        if not v > 0 or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
        return v
    return parse


def add_command(sub, name: str = "grade", help: str = "grade an exercise answer"):
    """The hook of minidistil/apps/cli.py's COMMANDS registry: adds the `grade` sub-parser."""
    p = sub.add_parser(name, help=help, description="Grade answers to the exercises (`minidistil exercises copy DIR` "
                       "gives you the stubs): checks shapes, dtypes, values against the kernels' references and "
                       "finite differences, and prints hints. Each answer file runs in its own process with a time "
                       "and memory limit. Exit status 0 only when every check passes.",
                       epilog="examples: `minidistil grade gelu_backward` (grades ./gelu_backward.py), `minidistil "
                       "grade mine/gelu_backward.py`, `minidistil grade class/ --gradebook grades` (class/<student>/"
                       "<exercise>.py: writes grades.csv and grades.json), `minidistil grade --gradescope "
                       "/autograder/results/results.json gelu_backward /autograder/submission/gelu_backward.py`")
    p.add_argument("targets", nargs="*", metavar="[EXERCISE] PATH",
                   help="an exercise name (see --list), then answer files or folders; with only the exercise, "
                   "./EXERCISE.py; a file named after its exercise needs no name; a folder: the answers in it and "
                   "in its sub-folders, one per student (class/<student>/<exercise>.py)")
    p.add_argument("--list", action="store_true", help="list the exercises and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object per check (exercise, student, file, "
                   "name, passed, error, where, hint, points, max_points) instead of the reports")
    p.add_argument("--gradebook", metavar="STEM", help="write the gradebook as STEM.csv (one row per student, one "
                   "column of points per exercise, the total) and STEM.json (every check with its hints)")
    p.add_argument("--gradescope", metavar="FILE", help="write Gradescope's results.json for one student's "
                   "submission to FILE")
    p.add_argument("--force", action="store_true", help="replace existing --gradebook / --gradescope files")
    p.add_argument("--timeout", type=_positive(float), default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds each call of the answer may take (default {DEFAULT_TIMEOUT:g}; importing the file "
                   "gets 5x that, at least 20)")
    p.add_argument("--memory", type=_positive(int), default=DEFAULT_MEMORY_MB, metavar="MB",
                   help=f"address space of the answer's process in MiB, where the OS supports the limit "
                   f"(default {DEFAULT_MEMORY_MB})")
    p.set_defaults(run=run)
    return p


def _submissions(targets: list[str]):
    """(exercise or None, submissions) from the positional arguments."""
    from minidistil.grading import EXERCISES, grade_check_name
    from minidistil.grading.gradebook import Submission, find_submissions
    exercise = None
    first = targets[0]
    looks_like_path = first.endswith(".py") or "/" in first or os.sep in first or Path(first).exists()
    if first in EXERCISES or not looks_like_path:
        exercise = grade_check_name(first)
        targets = targets[1:]
    if exercise and not targets:
        default = Path.cwd() / f"{exercise}.py"
        if not default.is_file():
            raise FileNotFoundError(f"no {exercise}.py in this folder ({Path.cwd()}): copy the stubs with `minidistil "
                                    f"exercises copy DIR` and run this in DIR, or name your file: minidistil grade "
                                    f"{exercise} path/to/answer.py")
        return exercise, [Submission(default.parent.name, exercise, default)]
    return exercise, find_submissions(targets, EXERCISES, exercise)


def run(args) -> int:
    from minidistil.grading import EXERCISES, grade, list_exercises
    from minidistil.grading.gradebook import check_records, dumps, gradebook, gradebook_csv, gradescope, write_new
    if args.list or not args.targets:
        width = max(len(n) for n in EXERCISES)
        for name, title in list_exercises():
            print(f"{name:<{width}}  {title}")
        if not args.list:
            print("usage: minidistil grade EXERCISE [path/to/answer.py ... | class folder]")
            return 2
        return 0
    try:
        exercise, subs = _submissions(args.targets)
    except (ValueError, FileNotFoundError) as e:
        if args.json:    # an autograder reading stdout gets the error as JSON too (and the one line on stderr)
            print(json.dumps({"error": str(e)}, ensure_ascii=False), flush=True)
        raise
    inputs = [s.path for s in subs]
    if args.gradescope and len({s.student for s in subs}) != 1:
        raise ValueError("--gradescope writes the results of ONE submission: give one student's files")
    results = []
    for s in subs:
        report = grade(s.exercise, s.path, timeout=args.timeout, memory_mb=args.memory)
        results.append((s, report))
        if args.json:
            for record in check_records(report, s.student):
                print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(report.text() + ("\n" if len(subs) > 1 else ""), flush=True)
    if len(subs) > 1 and not args.json:
        width = max(len(s.student) for s in subs)
        print(f"{'student':<{width}}  exercise            points")
        for s, r in results:
            print(f"{s.student:<{width}}  {s.exercise:<18}  {r.points:g} of {r.max_points:g}"
                  + ("" if r.passed else "  (failed checks)"))
    if args.gradebook:
        book = gradebook(results, EXERCISES)
        written = [write_new(Path(args.gradebook + ".csv"), gradebook_csv(book), args.force, inputs),
                   write_new(Path(args.gradebook + ".json"), dumps(book), args.force, inputs)]
        print(f"gradebook: {written[0]} and {written[1]} ({len(book['students'])} students)", file=sys.stderr)
    if args.gradescope:
        path = write_new(Path(args.gradescope), dumps(gradescope(results)), args.force, inputs)
        print(f"gradescope results: {path}", file=sys.stderr)
    return 0 if all(r.passed for _, r in results) else 1


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
