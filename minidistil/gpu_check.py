"""`python -m minidistil.gpu_check`: the GPU acceptance check (its code: minidistil.apps.gpu_check)."""
import sys

from minidistil.apps.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
