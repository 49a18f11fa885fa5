"""The package as a user installs it: the wheel, built from this checkout and installed into a fresh virtual
environment, run from a folder outside the checkout.

The wheel must carry everything the commands need (the mainline, `minidistil.kernels` from kernels/, the exercise
stubs as `minidistil.exercises` from tutorials/exercises/, the resources). Every command runs with the venv's
interpreter, cwd outside the checkout and no PYTHONPATH, and the test checks that `minidistil` was imported from the
venv's site-packages: a file missing from the wheel cannot be found in the checkout instead.

The venv uses --system-site-packages (numpy, numba, tokenizers come from the machine: fast and offline) and the
wheel goes in with --no-deps; the venv's own site-packages comes first on sys.path, ahead of any editable install of
the checkout in the system's.
"""
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ANSWERS = REPO / "tests" / "exercise_answers"
# what the wheel is built from: the files pyproject.toml maps (symlinks a checkout may add are left out)
SOURCES = ["pyproject.toml", "README.md", "minidistil", "kernels", "tutorials"]


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment, a working folder outside the checkout) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for rel in SOURCES:
        path = REPO / rel
        if path.is_dir():
            shutil.copytree(path, src / rel, ignore=lambda d, names: set(skip(d, names)) | {
                n for n in names if os.path.islink(os.path.join(d, n))})
        else:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NUMBA_ENABLE_CUDASIM")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    dist = tmp / "dist"
    rc, out, err = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                         str(dist), str(src)], tmp, env)
    wheels = sorted(dist.glob("minidistil-*.whl"))
    assert rc == 0 and len(wheels) == 1, f"building the wheel failed (exit {rc}):\n{out}\n{err}"
    venv_dir = tmp / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(venv_dir)
    bin_dir = venv_dir / ("Scripts" if os.name == "nt" else "bin")
    rc, out, err = _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                         str(wheels[0])], tmp, env)
    assert rc == 0, f"installing the wheel failed (exit {rc}):\n{out}\n{err}"
    work = tmp / "work"                               # outside the checkout: nothing there to import by accident
    work.mkdir()
    return bin_dir, env, work


def test_imports_come_from_the_venv(installed):
    bin_dir, env, work = installed
    code = ("import json, minidistil, minidistil.kernels.gelu, minidistil.exercises, minidistil.grading, "
            "minidistil.tutorial; print(json.dumps([m.__file__ for m in (minidistil, minidistil.kernels.gelu, "
            "minidistil.exercises, minidistil.grading, minidistil.tutorial)]))")
    rc, out, err = _run([str(bin_dir / "python"), "-c", code], work, env)
    assert rc == 0, err
    venv_dir = bin_dir.parent.resolve()
    for f in json.loads(out):
        assert Path(f).resolve().is_relative_to(venv_dir) and "site-packages" in f, (f, venv_dir)


def test_grade_list_copy_and_grade(installed):
    bin_dir, env, work = installed
    exe = str(bin_dir / "minidistil")
    rc, out, err = _run([exe, "grade", "--list"], work, env)
    assert rc == 0, err
    names = [line.split()[0] for line in out.splitlines()]
    assert len(names) >= 9 and "gelu_backward" in names and "adamw" in names, out

    rc, out, err = _run([exe, "exercises", "copy", "mine"], work, env)
    assert rc == 0, err
    copied = sorted(p.name for p in (work / "mine").iterdir())
    assert copied == sorted([f"{n}.py" for n in names] + ["README.md"]), copied

    # the untouched copy fails as a stub should; the reference answer in its place passes
    rc, out, err = _run([exe, "grade", "mine/gelu_backward.py"], work, env)
    assert rc == 1 and "not implemented yet" in out, out + err
    shutil.copy(ANSWERS / "gelu_backward.py", work / "mine" / "gelu_backward.py")
    rc, out, err = _run([exe, "grade", "mine/gelu_backward.py"], work, env)
    assert rc == 0 and "PASSED" in out, out + err
    rc, out, err = _run([exe, "grade", "--json", "mine/gelu_backward.py"], work, env)
    records = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and len(records) >= 3 and all(r["passed"] for r in records), out + err

    # a second copy refuses to overwrite the student's answer
    rc, out, err = _run([exe, "exercises", "copy", "mine"], work, env)
    assert rc == 1 and "would overwrite" in err, out + err
    assert (work / "mine" / "gelu_backward.py").read_text() == (ANSWERS / "gelu_backward.py").read_text()


def test_kernel_lab_runs(installed):
    bin_dir, env, work = installed
    rc, out, err = _run([str(bin_dir / "python"), "-m", "minidistil.kernels.gelu"], work, env)
    assert rc == 0, out + err
    assert "validate cpu" in out and "gelu: all validations passed" in out, out


# ----------------------------------------------------------------------------------------------------------------
# a student with only the wheel: the notebooks, the stubs, a chapter that runs, the grader finding their file

NOTEBOOK_RUNNER = """\
import sys, nbformat, nbclient
nb = nbformat.read(sys.argv[1], as_version=4)
nb.cells.append(nbformat.v4.new_code_cell("import minidistil; print('MINIDISTIL_FROM', minidistil.__file__)"))
nbclient.NotebookClient(nb, timeout=600, startup_timeout=120, kernel_name="minidistil-venv",
                        resources={"metadata": {"path": sys.argv[2]}}).execute()
print(nb.cells[-1].outputs[0]["text"].strip())
"""


def test_tutorials_copy_and_a_chapter_runs_from_the_copy(installed, tmp_path):
    """`minidistil tutorials copy`, then chapter 01 (the one before the first exercise) executes as a notebook in a
    Jupyter kernel running the venv's Python, from the copied folder."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    bin_dir, env, work = installed
    rc, out, err = _run([str(bin_dir / "minidistil"), "tutorials", "copy", "tut"], work, env)
    assert rc == 0, out + err
    copied = sorted(p.name for p in (work / "tut").iterdir())
    assert copied == sorted([p.name for p in (REPO / "tutorials").glob("*.ipynb")] + ["README.md"]), copied
    assert (work / "tut" / "01_gelu.ipynb").read_bytes() == (REPO / "tutorials" / "01_gelu.ipynb").read_bytes()
    # a kernel spec naming the venv's python, so the notebook cannot run on another interpreter
    spec = tmp_path / "jupyter" / "kernels" / "minidistil-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(bin_dir / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "minidistil venv", "language": "python"}))
    kenv = dict(env, JUPYTER_PATH=str(tmp_path / "jupyter"), MINIDISTIL_TUTORIAL_OUT=str(tmp_path / "figs"))
    rc, out, err = _run([str(bin_dir / "python"), "-c", NOTEBOOK_RUNNER, str(work / "tut" / "01_gelu.ipynb"),
                         str(work / "tut")], work / "tut", kenv, timeout=900)
    assert rc == 0, out[-3000:] + err[-3000:]
    where = out.strip().splitlines()[-1].split()[-1]
    assert Path(where).resolve().is_relative_to(bin_dir.parent.resolve()), where
    assert sorted((tmp_path / "figs").glob("01_*.png")), "chapter 01 saved no figure"


def test_exercises_copy_then_grade_in_the_folder(installed):
    """In the folder the stubs were copied to, `minidistil grade gelu_backward` grades ./gelu_backward.py (the
    student's file, not the stub inside site-packages) and says which file it graded."""
    bin_dir, env, work = installed
    exe = str(bin_dir / "minidistil")
    rc, out, err = _run([exe, "exercises", "copy", "class_ex"], work, env)
    assert rc == 0, out + err
    folder = work / "class_ex"
    rc, out, err = _run([exe, "grade", "gelu_backward"], folder, env)
    assert rc == 1 and out.startswith(f"grading gelu_backward: {folder / 'gelu_backward.py'}\n"), out + err
    assert "not implemented yet" in out and "site-packages" not in out, out
    shutil.copy(ANSWERS / "gelu_backward.py", folder / "gelu_backward.py")
    rc, out, err = _run([exe, "grade", "gelu_backward", "--timeout", "60"], folder, env)
    assert rc == 0 and out.startswith(f"grading gelu_backward: {folder / 'gelu_backward.py'}\n"), out + err
    assert "10 of 10 points: PASSED" in out, out
