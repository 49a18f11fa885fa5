"""The exercise stubs and the tutorial notebooks: where they are, and `minidistil exercises copy DIR` /
`minidistil tutorials copy DIR`.

The stubs live in `tutorials/exercises/` in the repository and ship inside the package as `minidistil.exercises`
(pyproject.toml maps that folder there, for the wheel and for an editable install alike), so a student who
installed minidistil with pip has them too; the notebooks (`tutorials/*.ipynb`) ship as the package data of
`minidistil.tutorials` (the folder `minidistil/tutorials` of a checkout is a link to `tutorials/`). The copy
commands give a student their own copies to edit, run and grade:

    minidistil tutorials copy my_tutorials        # the notebooks and their README
    minidistil exercises copy my_exercises        # the stubs and their README; refuses to overwrite without --force
    cd my_exercises && minidistil grade gelu_backward
"""
from __future__ import annotations

import importlib
from pathlib import Path


def exercises_dir() -> Path:
    """The folder of the installed stubs (the package `minidistil.exercises`)."""
    try:
        pkg = importlib.import_module("minidistil.exercises")
    except ImportError:
        raise FileNotFoundError("the exercise stubs are not installed (no package minidistil.exercises): reinstall "
                                "minidistil, from a checkout with `pip install -e .`") from None
    return Path(pkg.__file__).resolve().parent


def stub_files() -> list[Path]:
    """The files a student gets: every stub and the README (not the package's __init__.py)."""
    folder = exercises_dir()
    return sorted(p for p in folder.iterdir() if p.suffix in (".py", ".md") and p.name != "__init__.py")


def copy_exercises(dest, force: bool = False) -> list[Path]:
    """Copy the stubs and their README into the folder `dest` (made if missing); return the files written.
    Refuses (ValueError, before writing anything) when a file would be overwritten, unless force=True."""
    return _copy(stub_files(), dest, force, "fresh stubs")


def tutorials_dir() -> Path:
    """The folder of the installed notebooks (minidistil/tutorials: package data in a wheel, a link to tutorials/
    in a checkout)."""
    folder = Path(__file__).resolve().parent.parent / "tutorials"
    if not any(folder.glob("*.ipynb")):
        raise FileNotFoundError("the tutorial notebooks are not installed (no minidistil/tutorials/*.ipynb): "
                                "reinstall minidistil, from a checkout with `pip install -e .`")
    return folder.resolve()


def tutorial_files() -> list[Path]:
    """The notebooks and the tutorials' README."""
    folder = tutorials_dir()
    return sorted(folder.glob("*.ipynb")) + [p for p in [folder / "README.md"] if p.is_file()]


def copy_tutorials(dest, force: bool = False) -> list[Path]:
    """Copy the notebooks and their README into `dest`, as copy_exercises does the stubs."""
    return _copy(tutorial_files(), dest, force, "fresh notebooks")


def _copy(files: list[Path], dest, force: bool, what: str) -> list[Path]:
    from minidistil.core.files import atomic_write

    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest}: exists and is not a folder")
    clash = [f.name for f in files if (dest / f.name).exists()]
    if clash and not force:
        raise ValueError(f"{dest}: would overwrite {', '.join(clash)} (your own work?); pass --force to replace "
                         f"them with {what}, or copy into another folder")
    return [atomic_write(dest / f.name, f.read_bytes()) for f in files]


def add_command(sub, name: str, help: str):
    """The hook of minidistil/apps/cli.py's COMMANDS registry: adds `minidistil exercises copy DIR`."""
    p = sub.add_parser(name, help=help, description="Copy the exercise stubs (and their README) into a folder of "
                       "your own, to fill in and grade with `minidistil grade DIR/EXERCISE.py`.")
    p.add_argument("action", choices=["copy"], help="copy: write the stubs into DEST")
    p.add_argument("dest", help="the folder to copy into (made if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files of the same names in DEST")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    written = copy_exercises(args.dest, force=args.force)
    for path in written:
        print(path)
    first = next(p for p in written if p.suffix == ".py")
    print(f"{len(written)} files in {args.dest}; fill one in, then grade it: minidistil grade {first}")
    return 0


def add_tutorials_command(sub, name: str, help: str):
    """The hook of minidistil/apps/cli.py's COMMANDS registry: adds `minidistil tutorials copy DIR`."""
    p = sub.add_parser(name, help=help, description="Copy the tutorial notebooks (and their README) into a folder "
                       "of your own, to open with Jupyter (`pip install jupyterlab matplotlib`, then `jupyter lab "
                       "DIR`).")
    p.add_argument("action", choices=["copy"], help="copy: write the notebooks into DEST")
    p.add_argument("dest", help="the folder to copy into (made if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files of the same names in DEST")
    p.set_defaults(run=run_tutorials)
    return p


def run_tutorials(args) -> int:
    written = copy_tutorials(args.dest, force=args.force)
    for path in written:
        print(path)
    print(f"{len(written)} files in {args.dest}; open them with Jupyter: jupyter lab {args.dest} (start with "
          "00_quick_tour.ipynb; 01_gelu.ipynb holds the maths of the gelu_backward exercise)")
    return 0
