"""The exercise stubs, shipped inside the package as `minidistil.exercises` (see README.md beside this file).

`minidistil exercises copy DIR` copies them into a folder of your own; `minidistil grade DIR/EXERCISE.py` grades one.
"""
