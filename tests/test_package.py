"""The package as a user installs it: the wheel, built from this checkout and installed into a fresh virtual
environment, run from a folder outside the checkout; and the checkout itself, which must not get in the way of other
installed distributions.

The wheel must carry everything the commands need (the mainline, `minidistil.kernels` from kernels/, the exercise
stubs as `minidistil.exercises` from tutorials/exercises/, the resources). Every command runs with the venv's
interpreter, cwd outside the checkout and no PYTHONPATH, and the test checks that `minidistil` was imported from the
venv's site-packages: a file missing from the wheel cannot be found in the checkout instead.

The wheel goes in with --no-deps, offline; numpy, numba and tokenizers come from the interpreter running the tests:
the venv is made without system site-packages, and a .pth file in its site-packages appends the folders that hold
this interpreter's installed packages (its import path, less anything inside the checkout). That is right whether
the tests run in the machine's own Python, in a virtual environment (whose "system" site-packages would be the base
interpreter's, without the user's packages) or in conda. Folders named in a .pth line are not scanned for .pth files
of their own, so an editable install of the checkout stays invisible in the venv.
"""
import importlib.metadata
import importlib.util
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


def package_dirs(python=None):
    """The folders on `python`'s import path (this interpreter's by default) that hold installed packages: every
    existing folder on sys.path, less anything inside the checkout and the current folder."""
    if python is None:
        entries = sys.path
    else:
        out = subprocess.run([str(python), "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
                             capture_output=True, text=True, check=True, timeout=120).stdout
        entries = json.loads(out)
    dirs = []
    for entry in entries:
        path = Path(entry or ".").resolve()
        if entry and path.is_dir() and not path.is_relative_to(REPO) and str(path) not in dirs:
            dirs.append(str(path))
    return dirs


def make_venv(venv_dir, parent_python=None, with_pip=True):
    """A venv at `venv_dir` whose own site-packages comes first and which also sees the packages installed for
    `parent_python` (this interpreter by default), through one .pth file. Returns the venv's bin folder."""
    venv.EnvBuilder(system_site_packages=False, with_pip=with_pip).create(venv_dir)
    bin_dir = Path(venv_dir) / ("Scripts" if os.name == "nt" else "bin")
    purelib = subprocess.run([str(bin_dir / "python"), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    Path(purelib, "_minidistil_test_parent.pth").write_text("".join(d + "\n" for d in package_dirs(parent_python)))
    return bin_dir


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
    bin_dir = make_venv(tmp / "venv")
    rc, out, err = _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                         str(wheels[0])], tmp, env)
    assert rc == 0, f"installing the wheel failed (exit {rc}):\n{out}\n{err}"
    work = tmp / "work"                               # outside the checkout: nothing there to import by accident
    work.mkdir()
    return bin_dir, env, work


def test_imports_come_from_the_venv(installed):
    bin_dir, env, work = installed
    code = ("import json, minidistil, minidistil.kernels.gelu, minidistil.exercises, minidistil.grading, "
            "minidistil.apps.tutorial; print(json.dumps([m.__file__ for m in (minidistil, minidistil.kernels.gelu, "
            "minidistil.exercises, minidistil.grading, minidistil.apps.tutorial)]))")
    rc, out, err = _run([str(bin_dir / "python"), "-c", code], work, env)
    assert rc == 0, err
    venv_dir = bin_dir.parent.resolve()
    for f in json.loads(out):
        assert Path(f).resolve().is_relative_to(venv_dir) and "site-packages" in f, (f, venv_dir)
    # the dependencies are the ones this interpreter uses (from a user's venv too, not its base interpreter's)
    deps = ["numpy", "numba", "tokenizers"] + [m for m in os.environ.get("MINIDISTIL_TEST_MARKERS", "").split(",") if m]
    code = f"import importlib, json; print(json.dumps([importlib.import_module(m).__file__ for m in {deps!r}]))"
    rc, out, err = _run([str(bin_dir / "python"), "-c", code], work, env)
    assert rc == 0, err
    for name, f in zip(deps, json.loads(out)):
        mine = importlib.util.find_spec(name).origin
        assert Path(f).resolve() == Path(mine).resolve(), (name, f, mine)


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


def test_package_tests_pass_inside_a_virtual_environment(tmp_path):
    """The installed-wheel test run as most users run the suite: from inside a virtual environment whose packages
    are its own. A module that only that venv has must be visible in the wheel's venv (a venv made with
    --system-site-packages from inside it would see the base interpreter's packages instead, and miss it)."""
    outer = make_venv(tmp_path / "outer", with_pip=False)
    purelib = subprocess.run([str(outer / "python"), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_minidistil_venv_marker.py").write_text("# only the outer venv has this module\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env["MINIDISTIL_TEST_MARKERS"] = "_minidistil_venv_marker"
    rc, out, err = _run([str(outer / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         f"--basetemp={tmp_path / 'inner'}", "tests/test_package.py::test_imports_come_from_the_venv"],
                        REPO, env)
    assert rc == 0 and "1 passed" in out, out[-3000:] + err[-3000:]


def _root_entries():
    """The names a Python started at the checkout's root could import from it: its folders and .py files."""
    return sorted(p.stem for p in REPO.iterdir()
                  if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".py"))


def test_the_checkout_root_shadows_no_distribution():
    """`python -m pytest`, `python -c` and notebooks started at the root put it first on sys.path. Nothing there may
    import as a regular package or module: `kernels/` with an __init__.py hid the `kernels` distribution that
    transformers imports. A folder without one is at most a namespace package, which any installed package of the
    same name outranks."""
    code = ("import importlib.util, json, sys; out = {}\n"
            "for name in sys.argv[1:]:\n"
            "    spec = importlib.util.find_spec(name)\n"
            "    out[name] = spec.origin if spec is not None and spec.has_location else None\n"
            "print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code, *_root_entries()], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert "kernels" in found and "minidistil" in found, found
    shadowing = {name: origin for name, origin in found.items()
                 if name != "minidistil" and origin and Path(origin).resolve().is_relative_to(REPO)}
    assert not shadowing, f"importable from the checkout's root, hiding any distribution of that name: {shadowing}"
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return
    origin = found["kernels"]                        # installed (transformers 5.25 needs it): that one is imported
    assert origin and not Path(origin).resolve().is_relative_to(REPO), origin


def test_a_transformers_model_builds_at_the_checkout_root(oracle):
    """What failed when kernels/ shadowed the `kernels` distribution: transformers imports it to build a model."""
    oracle("transformers")
    code = ("import transformers as t\n"
            "c = t.DistilBertConfig(dim=8, hidden_dim=16, n_layers=1, n_heads=2, vocab_size=10)\n"
            "print(type(t.DistilBertModel(c)).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "DistilBertModel" in proc.stdout, proc.stderr[-3000:]


def test_ci_runs_the_readme_test_command():
    """What users run is what CI proves: .ci/run holds the README's test command character for character."""
    readme = (REPO / "README.md").read_text()
    lines = [line.strip() for line in readme.splitlines() if line.startswith("pip install torch==2.13.0 && ")]
    command = next(line for line in lines if line.endswith("&& pytest"))
    assert command in [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()], command


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
