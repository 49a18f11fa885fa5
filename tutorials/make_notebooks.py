"""Generate the tutorial notebooks (.ipynb) from the chapters (.py, jupytext "percent" format), or check them.

    python tutorials/make_notebooks.py            # (re)write NN_name.ipynb where it is missing or out of date
    python tutorials/make_notebooks.py --check    # exit 1 if any notebook is missing or out of date

The .py files are the source of truth: edit them, then regenerate. The notebooks are written without outputs
(run them in Jupyter or Colab). Needs `pip install jupytext`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


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
    jupytext = _jupytext()
    nb = jupytext.read(py, fmt="py:percent")
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    return nb


def out_of_date(py: Path) -> str | None:
    """None when py's notebook exists and has the same cells, else the reason."""
    import nbformat  # a jupytext dependency
    ipynb = py.with_suffix(".ipynb")
    if not ipynb.is_file():
        return f"{ipynb.name} is missing"
    want = cells(notebook_for(py))
    have = cells(nbformat.read(ipynb, as_version=4))
    if want != have:
        n = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
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
