"""`python -m minidistil.distill ARGS` is `minidistil distill ARGS` (the library: minidistil.train.distill)."""
import sys

from minidistil.apps.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
