"""Reproduce every chapter's figures into a folder, with one command (the notebooks are kept without outputs).

    python tutorials/make_figures.py OUTDIR                        # every chapter, in order
    python tutorials/make_figures.py OUTDIR --chapters 01 03       # some of them
    python tutorials/make_figures.py OUTDIR --thumbnails tutorials/figures   # also the README's thumbnails

Each chapter runs as a script (`python NN_name.py`, in this folder, matplotlib's Agg backend) with
MINIDISTIL_TUTORIAL_OUT=OUTDIR, where it saves its figures as NN_*.png. --thumbnails also writes a small copy of each
figure (at most 640 pixels wide, 128 colours) into the given folder: the pictures tutorials/README.md shows.
Chapter 10 draws its figure only on a real GPU (on the CUDA simulator its timings would mean nothing).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THUMB_WIDTH = 640


def chapters(folder: Path = HERE) -> list[Path]:
    """The chapter sources, in order: NN_name.py."""
    return sorted(folder.glob("[0-9][0-9]_*.py"))


def run_chapter(py: Path, out: Path, timeout: float = 1800) -> list[Path]:
    """Run one chapter as a script with its figures going to `out`; return the figures it wrote."""
    env = dict(os.environ, MPLBACKEND="Agg", MINIDISTIL_TUTORIAL_OUT=str(out))
    before = {p: p.stat().st_mtime_ns for p in out.glob(f"{py.name[:2]}_*.png")}
    proc = subprocess.run([sys.executable, py.name], cwd=py.parent, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"make_figures: {py.name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return sorted(p for p in out.glob(f"{py.name[:2]}_*.png") if before.get(p) != p.stat().st_mtime_ns)


def thumbnail(png: Path, dest: Path, width: int = THUMB_WIDTH) -> Path:
    """A small copy of png in the folder dest: at most `width` pixels wide, 128 colours (a few tens of KB)."""
    from PIL import Image  # a dependency of matplotlib

    dest.mkdir(parents=True, exist_ok=True)
    with Image.open(png) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im = im.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        path = dest / png.name
        im.save(path, optimize=True)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the folder the figures go to (made if missing)")
    ap.add_argument("--chapters", nargs="*", metavar="NN", help="only these chapters (by number, e.g. 01 03)")
    ap.add_argument("--thumbnails", type=Path, metavar="DIR", help="also write small copies of the figures here")
    args = ap.parse_args(argv)
    selected = [p for p in chapters() if not args.chapters or p.name[:2] in args.chapters]
    if args.chapters and len(selected) != len(args.chapters):
        known = ", ".join(p.name[:2] for p in chapters())
        sys.exit(f"make_figures: --chapters {' '.join(args.chapters)}: the chapters are {known}")
    args.out.mkdir(parents=True, exist_ok=True)
    for py in selected:
        t0 = time.perf_counter()
        figures = run_chapter(py, args.out.resolve())
        took = f"{time.perf_counter() - t0:.0f} s"
        if not figures:
            print(f"{py.name}: no figure ({took})")
        for fig in figures:
            line = f"{py.name}: {fig}"
            if args.thumbnails:
                thumb = thumbnail(fig, args.thumbnails)
                line += f"  (thumbnail {thumb}, {thumb.stat().st_size // 1024} KB)"
            print(f"{line} ({took})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
