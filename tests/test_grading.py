"""The exercise grader (minidistil/grading/) on the reference answers (tests/exercise_answers/<exercise>.py), the
untouched stubs and deliberately buggy answers (the table of planted bugs in tests/exercise_answers/bugs.py).

- every reference answer passes (exit status 0), so the checks and their derived tolerances accept a correct
  float32 NumPy answer;
- every untouched stub of tutorials/exercises/ fails with "not implemented yet" and no other check;
- every buggy answer (a reference answer with one bug planted, written to a temporary file) fails AND its report
  carries the hint that names its bug (the hint text is asserted, so a grader that fails for the wrong reason does
  not pass this test);
- the command line: through the `grade` sub-parser in-process (the report, and --json: one object per check),
  `minidistil exercises copy`, and once as `python -m minidistil.grading` in a subprocess (exit status 1 on a
  failing answer, 0 on a passing one, --list);
- isolation: a class folder with an endless loop and an unbounded allocation per exercise grades completely
  within the time limits (gradebook CSV and JSON checked field by field); hostile answers (exits of every kind,
  tampering with the grader's classes, 10 MB of printing, os.system at import) each end as failed checks, and the
  --json output stays parseable; Gradescope's results.json has the schema's fields.
"""
import argparse
import csv
import importlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minidistil.apps import cli as main_cli
from minidistil import grading
from minidistil.grading import cli as grading_cli

from exercise_answers.bugs import BUGS, Bug   # tests/ is on sys.path: pytest puts each test module's folder there

REPO = Path(__file__).resolve().parents[1]
ANSWERS = REPO / "tests" / "exercise_answers"
STUBS = REPO / "tutorials" / "exercises"

BUG = {bug.id: bug for bug in BUGS}


def plant(bug: Bug, folder: Path) -> Path:
    """Write the reference answer with `bug` planted to folder/<exercise>__<name>.py and return its path; the
    docstring says which bug was planted. Each edit's old text must occur exactly once in the reference answer, so
    an edit that no longer applies fails here instead of grading a correct answer."""
    reference = (ANSWERS / f"{bug.exercise}.py").read_text(encoding="utf-8")
    docstring, source = reference.split("\n", 1)
    assert docstring.startswith('"""Reference answer (tests only):') and docstring.endswith('"""'), docstring
    for old, new in bug.edits:
        count = reference.count(old)
        assert count == 1, f"{bug.id}: {old!r} occurs {count} times in {bug.exercise}.py, not exactly once"
        assert source.count(old) == 1 and new != old, f"{bug.id}: the edits of {old!r} clash or change nothing"
        source = source.replace(old, new)
    path = folder / f"{bug.id}.py"
    path.write_text(f'"""Deliberately buggy answer (tests only): {bug.exercise}.py with the bug {bug.name!r} planted: '
                    f'{bug.what}."""\n{source}', encoding="utf-8")
    return path


def test_every_exercise_has_a_stub_and_a_reference_answer():
    assert len(grading.EXERCISES) >= 14
    assert grading.exercises_dir() == STUBS.resolve()             # the package minidistil.exercises is this folder
    for name, ex in grading.EXERCISES.items():
        assert (STUBS / f"{name}.py").is_file(), name
        assert ex.stub.resolve() == (STUBS / f"{name}.py").resolve(), name
        assert (ANSWERS / f"{name}.py").is_file(), name
    # every exercise has at least one buggy answer tested below, each under its own name
    assert {bug.exercise for bug in BUGS} == set(grading.EXERCISES)
    assert len(BUG) == len(BUGS)


# autograd_ops, wordpiece and cuda_row_max have no *_ref in minidistil.kernels (their truths are finite differences,
# the tokenizers library and NumPy)
@pytest.mark.parametrize("exercise", [n for n in grading.EXERCISES
                                      if n not in ("autograd_ops", "wordpiece", "cuda_row_max")])
def test_stub_names_a_reference_that_exists(exercise):
    """The docstring's "Reference" names a module of minidistil.kernels, its *_ref functions, and a command that
    prints the module's file (the same in a checkout and in an installed package)."""
    doc = (STUBS / f"{exercise}.py").read_text(encoding="utf-8")
    ref = doc[doc.index("Reference, to read once you are done:"):]
    module = re.search(r"in the module (minidistil\.kernels\.\w+)", ref).group(1)
    mod = importlib.import_module(module)
    functions = re.findall(r"\b(\w+_ref)\b", ref.split(" in the module ")[0])
    assert functions and all(callable(getattr(mod, f, None)) for f in functions), (module, functions)
    command = re.search(r'python -c "(.*)"', ref).group(1)
    assert command == f"import {module} as m; print(m.__file__)"


@pytest.mark.parametrize("exercise", list(grading.EXERCISES))
def test_reference_answer_passes(exercise):
    report = grading.grade(exercise, ANSWERS / f"{exercise}.py")
    assert report.passed, report.text()
    assert len(report.checks) >= 3 and not report.hints          # several cases really ran, no hint given


@pytest.mark.parametrize("exercise", list(grading.EXERCISES))
def test_untouched_stub_says_not_implemented(exercise):
    report = grading.grade(exercise, STUBS / f"{exercise}.py")
    assert not report.passed and report.not_implemented
    assert len(report.checks) == 1                                # one clear message, not a wall of failures
    text = report.text()
    assert "not implemented yet" in text and "raise NotImplementedError" in text, text


@pytest.mark.parametrize("bug", BUGS, ids=[bug.id for bug in BUGS])
def test_buggy_answer_fails_with_the_hint_that_names_the_bug(bug, tmp_path):
    """The bug is caught, named, and named only: every hint of the report (over all its checks) is the bug's own."""
    report = grading.grade(bug.exercise, plant(bug, tmp_path))
    assert not report.passed, report.text()
    assert not report.not_implemented
    assert report.hints and all(bug.hint in h for h in report.hints), report.text()


def test_the_bug_table_covers_three_slips_per_exercise():
    for name in grading.EXERCISES:
        assert sum(bug.exercise == name for bug in BUGS) >= 3, name


def test_failure_names_the_worst_element_and_the_tolerance(tmp_path):
    report = grading.grade("softmax_backward", plant(BUG["softmax_backward__no_sum_term"], tmp_path))
    failed = [c for c in report.checks if not c.passed][0]
    line = failed.lines[0]
    assert line.startswith("dx: largest error") and "at index (" in line and "tolerance" in line, line


def test_float64_leak_is_reported_as_a_dtype_error(tmp_path):
    report = grading.grade("gelu_backward", plant(BUG["gelu_backward__float64_leak"], tmp_path))
    lines = [ln for c in report.checks for ln in c.lines]
    assert any("dtype float64, expected float32 (float64 leaking out)" in ln for ln in lines), report.text()
    # the values themselves are right: only the dtype fails, and the float64 finite-difference case passes
    assert not any("largest error" in ln for ln in lines), report.text()
    assert [c.passed for c in report.checks][-1]


def test_an_exception_in_the_answer_points_at_its_line(tmp_path):
    bad = tmp_path / "answer.py"
    bad.write_text("import numpy as np\n\ndef softmax_backward(dy, y):\n    return y @ dy\n")
    report = grading.grade("softmax_backward", bad)
    text = report.text()
    assert not report.passed and "raised ValueError" in text and "line 4: return y @ dy" in text, text
    assert any("transpose" in h for h in report.hints), text


def test_syntax_error_and_missing_file_and_unknown_exercise(tmp_path):
    bad = tmp_path / "answer.py"
    bad.write_text("def softmax_backward(dy, y)\n    return dy\n")
    report = grading.grade("softmax_backward", bad)
    assert not report.passed and "SyntaxError on line 1" in report.text()
    with pytest.raises(FileNotFoundError):
        grading.grade("softmax_backward", tmp_path / "missing.py")
    with pytest.raises(ValueError, match="exercise: unknown exercise 'softmax'.*did you mean softmax_backward"):
        grading.grade("softmax", bad)


def test_a_wrong_shape_is_reported_with_both_shapes(tmp_path):
    bad = tmp_path / "answer.py"
    bad.write_text("def softmax_backward(dy, y):\n    return (y * (dy - (dy * y).sum(-1, keepdims=True))).T\n")
    report = grading.grade("softmax_backward", bad)
    assert "dx: shape (13, 3, 2), expected (2, 3, 13)" in report.text(), report.text()
    assert any("wrong order" in h for h in report.hints)


def _parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    grading_cli.add_command(sub, "grade", "grade an exercise answer")
    return parser.parse_args(argv)


def test_cli_in_process(capsys):
    args = _parse(["grade", "--list"])
    assert args.run(args) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in grading.EXERCISES)
    args = _parse(["grade", "adamw", str(ANSWERS / "adamw.py")])
    assert args.run(args) == 0 and "PASSED" in capsys.readouterr().out
    # the exercise name can come from the file name
    args = _parse(["grade", str(ANSWERS / "adamw.py")])
    assert args.run(args) == 0


def test_cli_subprocess_exit_status(tmp_path):
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "minidistil.grading", *argv], capture_output=True, text=True,
                              cwd=REPO, timeout=300)
    ok = run("softmax_backward", str(ANSWERS / "softmax_backward.py"))
    assert ok.returncode == 0 and "PASSED" in ok.stdout, ok.stdout + ok.stderr
    bad = run("softmax_backward", str(plant(BUG["softmax_backward__no_sum_term"], tmp_path)))
    assert bad.returncode == 1 and "HINT: your dx is y * dy" in bad.stdout, bad.stdout + bad.stderr
    missing = run("softmax_backward", "no/such/file.py")
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_cli_json_one_object_per_check(tmp_path, capsys):
    buggy = plant(BUG["softmax_backward__no_sum_term"], tmp_path)
    args = _parse(["grade", "--json", "softmax_backward", str(buggy)])
    assert args.run(args) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    report = grading.grade("softmax_backward", buggy)
    assert [r["name"] for r in records] == [c.name for c in report.checks]
    for r in records:
        assert set(r) == {"exercise", "student", "file", "name", "passed", "error", "where", "hint", "points",
                          "max_points"}
        assert r["exercise"] == "softmax_backward" and r["file"] == str(buggy) and r["student"] == buggy.stem
        assert r["max_points"] == pytest.approx(10 / len(records)) and r["points"] in (0, r["max_points"])
    failed = [r for r in records if not r["passed"]]
    assert failed and all(r["error"] and r["where"] for r in failed), failed
    first = failed[0]
    assert first["error"].startswith("dx: largest error") and first["where"].startswith("dx[")   # e.g. dx[0, 1, 4]
    assert "the sum over the row is missing" in first["hint"]
    args = _parse(["grade", "--json", "softmax_backward", str(ANSWERS / "softmax_backward.py")])
    assert args.run(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) >= 3 and all(r["passed"] and r["error"] is None and r["where"] is None for r in records)


def test_json_where_points_at_the_students_line(tmp_path, capsys):
    bad = tmp_path / "softmax_backward.py"
    bad.write_text("import numpy as np\n\ndef softmax_backward(dy, y):\n    return y @ dy\n")
    args = _parse(["grade", "--json", str(bad)])
    assert args.run(args) == 1
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first["where"] == f"{bad}:4" and "raised ValueError" in first["error"], first


def test_exercises_copy_then_grade(tmp_path, capsys):
    dest = tmp_path / "mine"
    assert main_cli.main(["exercises", "copy", str(dest)]) == 0
    out = capsys.readouterr().out
    copied = sorted(p.name for p in dest.iterdir())
    assert copied == sorted([f"{n}.py" for n in grading.EXERCISES] + ["README.md"]), copied
    assert f"minidistil grade {dest}" in out
    # the copy is a stub: "not implemented yet"; the reference answer in its place passes
    assert main_cli.main(["grade", str(dest / "adamw.py")]) == 1
    assert "not implemented yet" in capsys.readouterr().out
    (dest / "adamw.py").write_text((ANSWERS / "adamw.py").read_text())
    assert main_cli.main(["grade", str(dest / "adamw.py")]) == 0
    assert "PASSED" in capsys.readouterr().out
    # a second copy refuses to overwrite the student's work, names the file, and changes nothing
    assert main_cli.main(["exercises", "copy", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "would overwrite" in err and "adamw.py" in err and "--force" in err and len(err.splitlines()) == 1, err
    assert (dest / "adamw.py").read_text() == (ANSWERS / "adamw.py").read_text()
    assert main_cli.main(["exercises", "copy", str(dest), "--force"]) == 0
    assert (dest / "adamw.py").read_text() == (STUBS / "adamw.py").read_text()


# ----------------------------------------------------------------------------------------------------------------
# isolation, the class gradebook, Gradescope

TIMEOUT = "2"          # seconds per call: the answers take milliseconds, an endless loop costs this much once
MEMORY = "768"         # MiB of address space: NumPy and SciPy need ~200

LOOP = "    while True:\n        pass\n"
HOG = "    import numpy as np\n    hog = []\n    while True:\n        hog.append(np.zeros(1 << 25))\n"


def hostile(exercise: str, body: str) -> str:
    """The reference answer with every function the student writes replaced by one running `body`."""
    source = (ANSWERS / f"{exercise}.py").read_text(encoding="utf-8")
    names = " = ".join(grading.EXERCISES[exercise].functions)
    return f"{source}\n\ndef _hostile(*args, **kwargs):\n{body}\n\n{names} = _hostile\n"


def make_class(root: Path) -> dict:
    """class/<student>/<exercise>.py for every exercise: ada the reference answer, ben and cy the first two planted
    bugs, dan an endless loop, eve an unbounded allocation. Returns {student: {exercise: kind}}."""
    kinds: dict = {s: {} for s in ("ada", "ben", "cy", "dan", "eve")}
    for name in grading.EXERCISES:
        bugs = [b for b in BUGS if b.exercise == name][:2]
        texts = {"ada": (ANSWERS / f"{name}.py").read_text(encoding="utf-8"),
                 "dan": hostile(name, LOOP), "eve": hostile(name, HOG)}
        for student, bug in zip(("ben", "cy"), bugs):
            texts[student] = plant(bug, root).read_text(encoding="utf-8")
            kinds[student][name] = bug.hint
        for student, text in texts.items():
            (root / "class" / student).mkdir(parents=True, exist_ok=True)
            (root / "class" / student / f"{name}.py").write_text(text, encoding="utf-8")
            kinds[student].setdefault(name, student)
    return kinds


def test_a_class_with_endless_loops_and_unbounded_allocations_grades_completely(tmp_path, capsys):
    kinds = make_class(tmp_path)
    stem = tmp_path / "out" / "grades"
    start = time.monotonic()
    rc = main_cli.main(["grade", str(tmp_path / "class"), "--timeout", TIMEOUT, "--memory", MEMORY,
                        "--gradebook", str(stem)])
    elapsed = time.monotonic() - start
    out = capsys.readouterr()
    assert rc == 1, out.err
    n_ex = len(grading.EXERCISES)
    # each endless loop costs one time limit per function it replaces, not one per check
    calls = sum(len(e.functions) for e in grading.EXERCISES.values())
    assert elapsed < calls * float(TIMEOUT) + 5 * n_ex * 3, elapsed

    rows = list(csv.reader((stem.with_suffix(".csv")).read_text().splitlines()))
    assert rows[0] == ["student", *grading.EXERCISES, "total"]
    table = {r[0]: r[1:] for r in rows[1:]}
    assert sorted(table) == ["ada", "ben", "cy", "dan", "eve"]
    assert table["ada"] == ["10"] * n_ex + [f"{10 * n_ex}"]
    for student in ("dan", "eve"):
        assert table[student] == ["0"] * n_ex + ["0"], (student, table[student])
    for student in ("ben", "cy"):
        points = [float(p) for p in table[student][:-1]]
        assert all(0 <= p < 10 for p in points) and float(table[student][-1]) == pytest.approx(sum(points))

    book = json.loads(stem.with_suffix(".json").read_text())
    assert book["exercises"] == {n: {"max_points": 10.0} for n in grading.EXERCISES}
    by_name = {s["student"]: s for s in book["students"]}
    for student, s in by_name.items():
        assert s["max_total"] == 10 * n_ex and set(s["submissions"]) == set(grading.EXERCISES)
        assert s["total"] == pytest.approx(sum(sub["points"] for sub in s["submissions"].values()))
        for name, sub in s["submissions"].items():
            assert sub["file"] == str(tmp_path / "class" / student / f"{name}.py")
            assert sub["max_points"] == 10.0 and sub["passed"] == (student == "ada")
            assert sub["points"] == pytest.approx(sum(c["points"] for c in sub["checks"]), abs=1e-3)
            hints = [c["hint"] for c in sub["checks"] if c["hint"]]
            kind = kinds[student][name]
            if student == "dan":
                assert "ran past the time limit" in sub["checks"][0]["hint"], sub["checks"][0]
                assert "no answer within the time limit of 2 s" in sub["checks"][0]["error"]
            elif student == "eve":
                first = sub["checks"][0]
                assert "MemoryError" in first["error"] and "ran out of memory" in first["hint"], first
            elif student in ("ben", "cy"):
                assert hints and all(kind in h for h in hints), (student, name, hints)




def test_hostile_answers_fail_and_the_json_stays_parseable(tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    reference = (ANSWERS / "softmax_backward.py").read_text(encoding="utf-8")
    files = {
        "raises_systemexit": hostile("softmax_backward", "    raise SystemExit(0)\n"),
        "os_exit": hostile("softmax_backward", "    import os\n    os._exit(0)\n"),
        "kills_itself": hostile("softmax_backward",
                                "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n"),
        "segfaults": hostile("softmax_backward", "    import ctypes\n    ctypes.string_at(0)\n"),
        "exit_at_import": "import sys\nsys.exit(0)\n" + reference,
        "tampers": ("from minidistil.grading import engine\n"
                    "engine.GradeReport.passed = property(lambda self: True)\n"
                    "engine.Check.passed = True\n"
                    "def softmax_backward(dy, y):\n    return y * dy\n"),
        "prints_10mb": 'print("x" * (10 << 20))\nimport os\nos.system("echo PWNED; touch ran_in_child")\n'
                       + reference,
    }
    for name, text in files.items():
        (folder / f"{name}.py").write_text(text, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "minidistil.grading", "softmax_backward",
                           *[str(folder / f"{n}.py") for n in files], "--json", "--timeout", TIMEOUT, "--memory",
                           MEMORY], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "PWNED" not in proc.stdout and "PWNED" not in proc.stderr and len(proc.stdout) < 200_000
    records = [json.loads(line) for line in proc.stdout.splitlines()]        # every line is one JSON object
    by_file: dict = {}
    for r in records:
        by_file.setdefault(Path(r["file"]).stem, []).append(r)
    assert set(by_file) == set(files)
    for name in ("raises_systemexit", "os_exit", "kills_itself", "segfaults", "exit_at_import", "tampers"):
        assert not any(r["passed"] for r in by_file[name]), by_file[name]
        assert all(r["error"] for r in by_file[name])
    assert "raised SystemExit" in by_file["raises_systemexit"][0]["error"]
    assert "never ends the program" in by_file["raises_systemexit"][0]["hint"]
    assert "ended the process running it (exit status 0)" in by_file["os_exit"][0]["error"]
    assert "os._exit()" in by_file["os_exit"][0]["hint"]
    assert len(by_file["os_exit"]) == 5                       # a fresh process for each check: grading went on
    assert "killed by SIGKILL" in by_file["kills_itself"][0]["error"] and "memory" in by_file["kills_itself"][0]["hint"]
    assert "killed by SIGSEGV" in by_file["segfaults"][0]["error"] and "crashed" in by_file["segfaults"][0]["hint"]
    assert by_file["exit_at_import"][0]["name"] == "import your file" and \
        "SystemExit" in by_file["exit_at_import"][0]["error"]
    assert "the sum over the row is missing" in by_file["tampers"][0]["hint"]
    # printing 10 MB and os.system at import: contained in the child (its output never reaches the grader's), but
    # they run: the child is not a sandbox. The values are right; the printing is one failed check with its hint.
    *checks, printing = by_file["prints_10mb"]
    assert checks and all(r["passed"] for r in checks)
    assert not printing["passed"] and "printed 10485" in printing["error"] and "debug prints" in printing["hint"]
    assert (tmp_path / "ran_in_child").exists()


def test_gradescope_results_json_has_the_schema_fields(tmp_path, capsys):
    student = tmp_path / "submission"
    student.mkdir()
    (student / "softmax_backward.py").write_text((ANSWERS / "softmax_backward.py").read_text())
    plant(BUG["gelu_backward__missing_pdf_term"], tmp_path).rename(student / "gelu_backward.py")
    results = tmp_path / "results" / "results.json"
    assert main_cli.main(["grade", str(student), "--gradescope", str(results), "--timeout", TIMEOUT]) == 1
    data = json.loads(results.read_text())
    assert set(data) >= {"score", "tests"} and isinstance(data["score"], (int, float))
    assert data["visibility"] in ("visible", "hidden", "after_due_date", "after_published")
    tests = data["tests"]
    assert {t["name"].split(":")[0] for t in tests} == {"softmax_backward", "gelu_backward"}
    for t in tests:
        assert set(t) == {"name", "score", "max_score", "output", "visibility"}, t
        assert isinstance(t["name"], str) and isinstance(t["output"], str) and t["visibility"] == "visible"
        assert 0 <= t["score"] <= t["max_score"] and t["max_score"] > 0
    assert sum(t["max_score"] for t in tests) == pytest.approx(20)
    assert data["score"] == pytest.approx(sum(t["score"] for t in tests)) and data["score"] == pytest.approx(10)
    failed = [t for t in tests if t["score"] < t["max_score"]]
    assert failed and all(t["output"].startswith("dx: ") for t in failed)      # the failure, then its hints
    assert "HINT: " in failed[0]["output"] and "product rule" in failed[0]["output"]
    # a second run does not replace the file without --force; results for two students are refused
    assert main_cli.main(["grade", str(student), "--gradescope", str(results)]) == 1
    assert "exists" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "softmax_backward.py").write_text((ANSWERS / "softmax_backward.py").read_text())
    assert main_cli.main(["grade", str(student), str(other), "--gradescope", str(tmp_path / "r2.json")]) == 1
    assert "ONE submission" in capsys.readouterr().err and not (tmp_path / "r2.json").exists()


def test_grade_exercise_without_a_path_grades_the_file_in_this_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main_cli.main(["grade", "softmax_backward"]) == 1
    err = capsys.readouterr().err
    assert "no softmax_backward.py in this folder" in err and "minidistil exercises copy" in err, err
    (tmp_path / "softmax_backward.py").write_text((ANSWERS / "softmax_backward.py").read_text())
    assert main_cli.main(["grade", "softmax_backward"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"grading softmax_backward: {tmp_path / 'softmax_backward.py'}\n"), out
    assert "10 of 10 points: PASSED" in out


def test_a_class_folder_with_a_clash_or_nothing_in_it_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main_cli.main(["grade", str(tmp_path / "empty")]) == 1
    assert "no answer files" in capsys.readouterr().err
    odd = tmp_path / "my_answer.py"
    odd.write_text("def f():\n    pass\n")
    assert main_cli.main(["grade", "--json", str(odd)]) == 1
    out = capsys.readouterr()
    assert "not named after an exercise" in json.loads(out.out)["error"] and len(out.err.splitlines()) == 1
    assert main_cli.main(["grade", str(tmp_path / "nowhere")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_a_grader_written_in_process_style_runs_unchanged(tmp_path):
    """A new exercise's grader calls s.call / s.expect_* / s.module as if the answer were imported in the grader:
    in-place updates of a function that returns None reach the grader's arrays, a changed input of a function that
    returns a value is named, and objects of the student's module are used through attributes."""
    from minidistil.grading.engine import Exercise, grade_file

    def run(s):
        p, g = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
        with s.case("sgd step in place"):
            s.call("sgd_step", p, g, 0.1)
            s.expect_array("param", p, np.full(4, 0.95), 1e-6)
        with s.case("double, leaving x alone"):
            x = np.arange(3, dtype=np.float32)
            before = x.copy()
            got = s.call("double", x)
            s.expect_unchanged("x", before, x)
            s.expect_array("y", got, 2 * before, 0.0, variants={"you tripled": lambda: 3 * before})
        with s.case("a counter object"):
            counter = s.module.Counter(3)
            counter.add(np.float32(2))
            s.expect_scalar("count", counter.count, 5.0, 0.0)

    ex = Exercise("legacy", "a grader in the old style", ("sgd_step", "double"), run)
    answer = tmp_path / "legacy.py"
    answer.write_text("def sgd_step(p, g, lr):\n    p -= lr * g\n\ndef double(x):\n    x *= 2\n    return x\n\n"
                      "class Counter:\n    def __init__(self, n):\n        self.count = n\n"
                      "    def add(self, k):\n        self.count += float(k)\n")
    report = grade_file(ex, answer, timeout=10)
    assert [c.passed for c in report.checks] == [True, False, True], report.text()
    assert report.checks[1].lines == ["your function changed its input `x` in place"], report.text()
    assert report.hints == [report.checks[1].hints[0]] and "x.copy()" in report.hints[0]


def test_cuda_row_max_grades_with_no_simulator_setting(monkeypatch):
    """The answer's process chooses NUMBA_ENABLE_CUDASIM itself when the user has not set it (the simulator without
    /dev/nvidiactl, the GPU with it), so the CUDA exercise grades with no setting at all; the user's setting wins."""
    from minidistil.grading.child import cuda_simulator_setting
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    assert cuda_simulator_setting() == ("0" if Path("/dev/nvidiactl").exists() else "1")
    assert cuda_simulator_setting({"NUMBA_ENABLE_CUDASIM": "0"}) == "0"
    assert cuda_simulator_setting({"NUMBA_ENABLE_CUDASIM": "1"}) == "1"
    report = grading.grade("cuda_row_max", ANSWERS / "cuda_row_max.py")
    assert report.passed and len(report.checks) >= 3, report.text()
    if not Path("/dev/nvidiactl").exists():                      # no GPU and the simulator refused: one clear check
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
        report = grading.grade("cuda_row_max", ANSWERS / "cuda_row_max.py")
        assert not report.passed and "NUMBA_ENABLE_CUDASIM=0 is set" in report.hints[0], report.text()
