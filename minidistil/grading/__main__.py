"""`python -m minidistil.grading EXERCISE FILE` (or `--list`): the `grade` command without the entry point."""
import sys

from minidistil.grading.cli import main

sys.exit(main())
