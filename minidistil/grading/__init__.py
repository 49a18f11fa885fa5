"""The exercise grader: `minidistil grade EXERCISE path/to/answer.py`.

A student fills in one stub of the exercises (`tutorials/exercises/` in a checkout, shipped in the package as
`minidistil.exercises`; `minidistil exercises copy DIR` gives a student their own copies) and runs the grader on it.
The grader imports the file by its path (a fresh, private module each time), calls the student's functions on
random and awkward inputs (T=1, C=13, a fully padded row, repeated ids, ignored rows, large logits), and compares
every output with the NumPy reference of the matching kernel in `minidistil.kernels` run in float64, which is the
ground truth. Backward exercises are also checked against central finite differences in float64 (the maths itself,
independent of any reference). Each failed check prints what a student can act on:

    FAIL  random (2, 3, 13)
          dx: largest error 2.1e-01 at index (0, 1, 4): got 0.51, expected 0.72 (tolerance 3.5e-06)
          HINT: your dx equals dy * Phi(x): d/dx [x Phi(x)] also has the term x * phi(x) (product rule)

Hints come from comparing a wrong answer with known-wrong VARIANTS of the formula (the layer-norm backward without
its mean(dxhat * xhat) term, the softmax backward without the sum, a transposed matrix in attention, the KL loss
without T^2, AdamW with L2 instead of decoupled decay, ...): when the student's output matches a variant within the
tolerance, the grader names that mistake. A stub that still raises NotImplementedError is reported as "not
implemented yet". `grade()` returns a GradeReport; the command exits 0 only when every check passes, so a classroom
CI can run it, and `--json` prints one object per check (name, passed, error, where, hint) for autograders.

Tolerances are the kernels' own derived bounds (each kernel file's `tolerances()`, built from `_checks.f32_tol`
with the reduction lengths and the data's magnitudes): a float32 answer that rounds like a careful float32 kernel
passes, anything further off fails. Finite differences use h = 1e-6 in float64 (truncation ~ h^2, rounding
~ eps64 |L| / h ~ 1e-10): they are compared with atol = rtol = 1e-6, a 1000x margin over that error.

Layout: `engine.py` (loading an answer, the cases, the comparisons and hints, the report), one module per exercise
(its inputs, its truth, its known-wrong variants, and its `EXERCISE`), `cli.py` (the `grade` command and
`python -m minidistil.grading`), `stubs.py` (where the stubs are, and the `exercises` command).

API: `grade(exercise, path) -> GradeReport`, `EXERCISES` (name -> Exercise), `list_exercises()`.
"""
from __future__ import annotations

from . import (adamw, attention_backward, autograd_ops, cross_entropy, distill_kl, gelu_backward, gemm_packing,
               layernorm_backward, layernorm_forward, softmax_backward)
from .engine import Check, Exercise, GradeReport, grade_file, load_answer
from .stubs import copy_exercises, exercises_dir

__all__ = ["EXERCISES", "Check", "Exercise", "GradeReport", "copy_exercises", "exercises_dir", "grade",
           "list_exercises", "load_answer"]

EXERCISES: dict[str, Exercise] = {m.EXERCISE.name: m.EXERCISE for m in [
    gelu_backward, layernorm_forward, layernorm_backward, softmax_backward, attention_backward, cross_entropy,
    distill_kl, adamw, autograd_ops, gemm_packing]}


def list_exercises() -> list[tuple[str, str]]:
    return [(e.name, e.title) for e in EXERCISES.values()]


def grade(exercise: str, path) -> GradeReport:
    """Grade the answer file at `path` for `exercise`; never raises for a student's mistake (an unknown exercise
    raises ValueError, a missing file FileNotFoundError)."""
    if exercise not in EXERCISES:
        close = [n for n in EXERCISES if exercise.replace("-", "_") in n or n in exercise]
        raise ValueError(f"exercise: unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}"
                         + (f" (did you mean {close[0]}?)" if close else ""))
    return grade_file(EXERCISES[exercise], path)
