"""Generate the tutorial notebooks (.ipynb) from the chapters (.py, jupytext "percent" format), or check them.

    python tutorials/make_notebooks.py            # (re)write NN_name.ipynb where it is missing or out of date
    python tutorials/make_notebooks.py --check    # exit 1 if any notebook is missing or out of date

The .py files are the source of truth: edit them, then regenerate. The notebooks are written without outputs
(run them in Jupyter or Colab). Needs `pip install jupytext`.

Every notebook's first code cell is the same Colab set-up cell, written here (COLAB_CELL) with the version and the
repository URL read from pyproject.toml. The chapters (.py) do not carry it: they run in a checkout, where it has
nothing to do; the notebooks get it when they are written, and --check reports a notebook whose copy differs.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"

COLAB_MARKER = "# Set-up for Colab, the same in every notebook"
# The first code cell of every notebook. Outside Colab it only checks that minidistil can be imported; in Colab it
# installs minidistil (the index's release of this version, else the repository) and says whether the runtime must
# restart: when pip replaced a package the runtime had already imported, the old one stays loaded until a restart.
COLAB_CELL = """\
# %%
{marker} (written by tutorials/make_notebooks.py). In a checkout or after
# `pip install minidistil` it does nothing; in Colab it installs minidistil and says whether to restart the runtime.
import importlib.metadata
import importlib.util
import sys

MINIDISTIL = {{"version": "{version}", "repository": "{repository}"}}
found = importlib.util.find_spec("minidistil")
installed = found is not None and found.origin is not None           # not a bare folder that pip uninstall left
if not installed and "google.colab" not in sys.modules:
    raise ModuleNotFoundError("minidistil is not installed for this kernel's Python: run `pip install -e .` in the "
                              "repository's folder (see tutorials/README.md), then restart the kernel")
if not installed:
    import os
    import subprocess

    def _version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    MODULE_OF = {{"numpy": "numpy", "numba": "numba", "numba-cuda": "numba", "scipy": "scipy",
                 "tokenizers": "tokenizers", "safetensors": "safetensors", "tqdm": "tqdm"}}
    before = {{d: _version(d) for d in MODULE_OF}}
    extra = "[gpu]" if os.path.exists("/dev/nvidiactl") else ""        # a GPU runtime: numba-cuda as well
    for spec in (f"minidistil{{extra}}=={{MINIDISTIL['version']}}",           # the package index, once published there
                 f"minidistil{{extra}} @ git+{{MINIDISTIL['repository']}}"):  # else the repository
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], capture_output=True, text=True)
        if pip.returncode == 0:
            break
    else:
        raise RuntimeError(f"pip could not install minidistil:\\n{{pip.stderr[-3000:]}}")
    importlib.invalidate_caches()
    stale = sorted({{MODULE_OF[d] for d in MODULE_OF if _version(d) != before[d] and MODULE_OF[d] in sys.modules}})
    print(f"installed minidistil {{importlib.metadata.version('minidistil')}} with: pip install '{{spec}}'")
    if stale:
        raise RuntimeError(f"restart needed: pip replaced {{', '.join(stale)}}, already imported by this runtime. "
                           "Runtime > Restart session, then run the notebook again (this cell will do nothing).")
    print("no restart needed")

"""


def project_metadata(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """The project's version and repository URL, read from pyproject.toml (the one place that names them)."""
    text = pyproject.read_text(encoding="utf-8")
    version = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    repository = re.search(r'^Repository\s*=\s*"([^"]+)"', text, re.M)
    if not (version and repository):
        sys.exit(f"make_notebooks: {pyproject} has no version or no [project.urls] Repository")
    return {"version": version.group(1), "repository": repository.group(1)}


def colab_cell() -> str:
    return COLAB_CELL.format(marker=COLAB_MARKER, **project_metadata())


def with_colab_cell(text: str) -> str:
    """The chapter source `text` with the Colab set-up cell as its first code cell (inserted; or replaced, when a
    notebook editor synced it into the chapter)."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.rstrip("\n") == "# %%")
    end = first
    if first + 1 < len(lines) and lines[first + 1].startswith(COLAB_MARKER):
        end = next((i for i in range(first + 1, len(lines)) if lines[i].startswith("# %%")), len(lines))
    return "".join(lines[:first]) + colab_cell() + "".join(lines[end:])


def chapters(folder: Path = HERE) -> list[Path]:
    """The chapter sources, in order: NN_name.py."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.py"))


def _jupytext():
    try:
        import jupytext
    except ImportError:
        sys.exit("make_notebooks: jupytext is not installed (pip install jupytext)")
    return jupytext


def cells(nb) -> list[tuple[str, str]]:
    """(cell type, source) of every cell: what must agree between a chapter and its notebook."""
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def notebook_for(py: Path):
    """The notebook of chapter py: its cells, after the Colab set-up cell."""
    jupytext = _jupytext()
    nb = jupytext.reads(with_colab_cell(py.read_text(encoding="utf-8")), fmt="py:percent")
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    return nb


def out_of_date(py: Path) -> str | None:
    """None when py's notebook exists and has the same cells (the Colab cell, then the chapter's), else the
    reason."""
    import nbformat  # a jupytext dependency
    ipynb = py.with_suffix(".ipynb")
    if not ipynb.is_file():
        return f"{ipynb.name} is missing"
    want = cells(notebook_for(py))
    have = cells(nbformat.read(ipynb, as_version=4))
    if want != have:
        n = next((i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), min(len(want), len(have)))
        return f"{ipynb.name} differs from {py.name} at cell {n} ({len(have)} cells vs {len(want)})"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that every notebook is up to date")
    args = ap.parse_args(argv)
    jupytext = _jupytext()
    bad = 0
    for py in chapters():
        if args.check:
            why = out_of_date(py)
            if why:
                print("out of date:", why)
                bad += 1
            continue
        if out_of_date(py) is None:  # rewriting would only churn the random cell ids
            continue
        jupytext.write(notebook_for(py), py.with_suffix(".ipynb"), fmt="ipynb")
        print("wrote", py.with_suffix(".ipynb").name)
    if args.check:
        print(f"{len(chapters()) - bad} of {len(chapters())} notebooks up to date")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
