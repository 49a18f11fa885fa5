"""Grading a class: find the submissions, grade each in its own process, write the gradebook (CSV and JSON) and
Gradescope's results.json.

A class folder holds one folder per student with the answer files named after their exercises
(`class/<student>/<exercise>.py`); a single student's folder (`mine/<exercise>.py`) and explicit files work too. The
student of a file named after its exercise is the name of the folder it is in; of a file named otherwise (graded
as the exercise named on the command line: `minidistil grade gelu_backward submissions/*.py`), its own name.

Points: each exercise is worth `Exercise.points` (10 unless it says otherwise), shared equally by its checks, so a
submission's points are points * passed checks / checks; a file that does not import, or is still the stub, scores 0.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from minidistil.grading.engine import GradeReport


@dataclass
class Submission:
    student: str
    exercise: str
    path: Path


def find_submissions(targets: list[str], exercises: dict, only: str | None = None) -> list[Submission]:
    """The answer files named by `targets` (files, a student's folder, a class folder of student folders), as
    Submissions; `only` keeps one exercise (and names the exercise of files not named after one). ValueError for
    a target that does not exist, a folder without answers, or two files for one student and exercise."""
    found: list[Submission] = []
    for target in targets:
        path = Path(target)
        if path.is_file():
            exercise = only or path.stem
            if exercise not in exercises:
                raise ValueError(f"{path}: the file is not named after an exercise; name the exercise first: "
                                 f"minidistil grade EXERCISE {path}")
            # named after its exercise: the student is the folder (class/alice/gelu_backward.py); else the file's
            # own name is (submissions/alice.py graded as one exercise)
            found.append(Submission(_student(path) if path.stem in exercises else path.stem, exercise, path))
        elif path.is_dir():
            names = [only] if only else list(exercises)
            subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
            here = [Submission(_student(d / f"{n}.py"), n, d / f"{n}.py") for d in [path, *subs] for n in names
                    if (d / f"{n}.py").is_file()]
            if not here:
                raise ValueError(f"{path}: no answer files in this folder or its sub-folders (expected files named "
                                 f"after an exercise, such as {path}/alice/{names[0]}.py)")
            found += here
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: dict = {}
    for s in found:
        key = (s.student, s.exercise)
        if key in seen and seen[key].resolve() != s.path.resolve():
            raise ValueError(f"two answers for student {s.student!r}, exercise {s.exercise}: {seen[key]} and "
                             f"{s.path}")
        seen[key] = s.path
    unique = {(s.student, s.exercise): s for s in found}
    return list(unique.values())


def _student(path: Path) -> str:
    return path.resolve().parent.name or "student"


def check_records(report: GradeReport, student: str) -> list[dict]:
    """One JSON-ready object per check, with the student, the file and the check's points."""
    each = report.check_points()
    return [{"exercise": report.exercise, "student": student, "file": report.path, **c.record(),
             "points": round(each if c.passed else 0.0, 4), "max_points": round(each, 4)} for c in report.checks]


def gradebook(results: list[tuple[Submission, GradeReport]], exercises: dict) -> dict:
    """The class as one JSON-ready object: the exercises graded (with their points) and, per student, each
    submission's points, verdict and checks (with their hints), and the student's total."""
    graded = [n for n in exercises if any(s.exercise == n for s, _ in results)]
    out = {"exercises": {n: {"max_points": exercises[n].points} for n in graded}, "students": []}
    max_total = sum(exercises[n].points for n in graded)
    for student in sorted({s.student for s, _ in results}):
        subs = {s.exercise: r for s, r in results if s.student == student}
        out["students"].append({
            "student": student,
            "total": round(sum(r.points for r in subs.values()), 4),
            "max_total": max_total,
            "submissions": {n: {"file": r.path, "points": r.points, "max_points": r.max_points,
                                "passed": r.passed, "not_implemented": r.not_implemented,
                                "checks": check_records(r, student)} for n, r in subs.items()},
        })
    return out


def gradebook_csv(book: dict) -> str:
    """One row per student, one column per exercise (points; empty: no submission), then the total."""
    names = list(book["exercises"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", *names, "total"])
    for s in book["students"]:
        w.writerow([s["student"], *[f"{s['submissions'][n]['points']:g}" if n in s["submissions"] else ""
                                    for n in names], f"{s['total']:g}"])
    return buf.getvalue()


def gradescope(results: list[tuple[Submission, GradeReport]]) -> dict:
    """Gradescope's results.json for one submission (one student's files): a test per check with name, score,
    max_score, output (the failure and its hints) and visibility, and the submission's score."""
    students = {s.student for s, _ in results}
    if len(students) != 1:
        raise ValueError(f"--gradescope writes the results of ONE submission; these files belong to "
                         f"{len(students)} students ({', '.join(sorted(students))})")
    tests = []
    for _, r in results:
        each = r.check_points()
        for c in r.checks:
            output = "\n".join(c.lines + [f"HINT: {h}" for h in c.hints]) or "passed"
            tests.append({"name": f"{r.exercise}: {c.name}", "score": round(each if c.passed else 0.0, 4),
                          "max_score": round(each, 4), "output": output, "visibility": "visible"})
    score = round(sum(r.points for _, r in results), 4)
    maximum = sum(r.max_points for _, r in results)
    return {"score": score, "output": f"{score:g} of {maximum:g} points", "visibility": "visible",
            "stdout_visibility": "hidden", "tests": tests}


def write_new(path: Path, text: str, force: bool, inputs: list[Path]) -> Path:
    """Write text to path, refusing to replace an existing file without force and never writing over an input."""
    from minidistil.io.safetensors_io import atomic_write
    path = Path(path)
    if any(path.resolve() == p.resolve() for p in inputs):
        raise ValueError(f"{path}: is one of the answer files being graded; choose another output name")
    if path.exists() and not force:
        raise ValueError(f"{path}: exists; pass --force to replace it, or choose another name")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: exists and is not a file")
    return atomic_write(path, text.encode())


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
