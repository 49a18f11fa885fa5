"""minidistil.kernels: one file per op, each with a NumPy reference, Numba CPU and numba.cuda versions.

This folder sits at the repository root (`kernels/`) and is shipped inside the wheel as `minidistil.kernels`.
See kernels/README.md for the conventions every file follows. Run `python -m minidistil.kernels.<op>` to validate
every version of an op against its reference and print a benchmark.
"""
