"""minidistil: DistilBERT built from scratch in NumPy and Numba.

The readable mainline lives in this package; the hand-written kernels in `minidistil.kernels`.
"""
__version__ = "0.1.0"
