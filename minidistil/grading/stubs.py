"""The exercise stubs: where they are, and `minidistil exercises copy DIR`.

The stubs live in `tutorials/exercises/` in the repository and ship inside the package as `minidistil.exercises`
(pyproject.toml maps that folder there, for the wheel and for an editable install alike), so a student who
installed minidistil with pip has them too. `copy_exercises` gives a student their own copies to edit and grade:

    minidistil exercises copy my_exercises        # the stubs and their README; refuses to overwrite without --force
    minidistil grade my_exercises/gelu_backward.py
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
    from minidistil.files import atomic_write

    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest}: exists and is not a folder")
    files = stub_files()
    clash = [f.name for f in files if (dest / f.name).exists()]
    if clash and not force:
        raise ValueError(f"{dest}: would overwrite {', '.join(clash)} (your own work?); pass --force to replace "
                         "them with fresh stubs, or copy into another folder")
    return [atomic_write(dest / f.name, f.read_bytes()) for f in files]


def add_command(sub, name: str, help: str):
    """The hook of minidistil/cli.py's COMMANDS registry: adds `minidistil exercises copy DIR`."""
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
