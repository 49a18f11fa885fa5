"""The exercise grader: `minidistil grade EXERCISE path/to/answer.py`.

A student fills in one stub of the exercises (`tutorials/exercises/` in a checkout, shipped in the package as
`minidistil.exercises`; `minidistil exercises copy DIR` gives a student their own copies) and runs the grader on it.
The file runs in a child process of its own (`child.py`, started and spoken to by `remote.py`): the grader's
checks call the student's functions through a proxy of the module, on random and awkward inputs (T=1, C=13, a
fully padded row, repeated ids, ignored rows, large logits), and compare every output with the NumPy reference of
the matching kernel in `minidistil.kernels` run in float64, which is the ground truth. Backward exercises are also
checked against central finite differences in float64 (the maths itself, independent of any reference). Each failed
check prints what a student can act on:

    FAIL  random (2, 3, 13)
          dx: largest error 2.1e-01 at index (0, 1, 4): got 0.51, expected 0.72 (tolerance 3.5e-06)
          HINT: your dx equals dy * Phi(x): d/dx [x Phi(x)] also has the term x * phi(x) (product rule)

Hints come from comparing a wrong answer with known-wrong VARIANTS of the formula (the layer-norm backward without
its mean(dxhat * xhat) term, the softmax backward without the sum, a transposed matrix in attention, the KL loss
without T^2, AdamW with L2 instead of decoupled decay, ...): when the student's output matches a variant within the
tolerance, the grader names that mistake (the closest variant only, when several match). Every array input is
compared after the call with what was sent, so changing `x` or `dy` in place is named too. A stub that still raises
NotImplementedError is reported as "not implemented yet". `grade()` returns a GradeReport (with points); the
command exits 0 only when every check passes, `--json` prints one object per check, `--gradebook` writes a class's
CSV and JSON, `--gradescope` Gradescope's results.json (`gradebook.py`).

Isolation: every verdict is computed here, in the grader's process, from the values the child sends back (JSON and
.npy, never pickle); a time-out, an exit, a crash or a MemoryError in the child is a failed check with a hint. The
per-exercise modules are unchanged by this: `s.call(name, *args)` and `s.module.X` look as if the module were
imported here (in-place updates included, for the exercises whose `in_place` names them). A child process is not a
sandbox: the answer can still touch the user's files, the network and other processes (see the exercises README).

Tolerances are the kernels' own derived bounds (each kernel file's `tolerances()`, built from `_checks.f32_tol`
with the reduction lengths and the data's magnitudes): a float32 answer that rounds like a careful float32 kernel
passes, anything further off fails. Finite differences use h = 1e-6 in float64 (truncation ~ h^2, rounding
~ eps64 |L| / h ~ 1e-10): they are compared with atol = rtol = 1e-6, a 1000x margin over that error. (The layer-norm
backward derives its own per-row bound, beside its code: its truth is the backward of the forward it hands out.)

Layout: `engine.py` (the cases, the comparisons and hints, the report, grade_file), `remote.py` (the child process
and the module proxy), `child.py` (the child's side and the wire format), one module per exercise (its inputs, its
truth, its known-wrong variants, and its `EXERCISE`), `gradebook.py` (finding a class's submissions, the CSV, JSON
and Gradescope outputs), `cli.py` (the `grade` command and `python -m minidistil.grading`), `stubs.py` (where the
stubs and the notebooks are, and the `exercises` and `tutorials` commands).

API: `grade(exercise, path, *, timeout, memory_mb) -> GradeReport`, `EXERCISES` (name -> Exercise),
`list_exercises()`.
"""
from __future__ import annotations

from minidistil.grading import (adamw, attention_backward, autograd_ops, cross_entropy, cuda_row_max, distill_kl,
                                fused_bias_gelu,
               gelu_backward, gemm_packing, int8_rows, layernorm_backward, layernorm_forward, linear_backward,
               softmax_backward, wordpiece)
from minidistil.grading.engine import Check, Exercise, GradeReport, grade_file, load_answer
from minidistil.grading.remote import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT
from minidistil.grading.stubs import copy_exercises, exercises_dir

__all__ = ["EXERCISES", "Check", "Exercise", "GradeReport", "copy_exercises", "exercises_dir", "grade",
           "grade_check_name", "list_exercises", "load_answer"]

EXERCISES: dict[str, Exercise] = {m.EXERCISE.name: m.EXERCISE for m in [
    gelu_backward, layernorm_forward, layernorm_backward, softmax_backward, attention_backward, cross_entropy,
    distill_kl, adamw, autograd_ops, wordpiece, fused_bias_gelu, cuda_row_max, int8_rows, gemm_packing,
    linear_backward]}


def list_exercises() -> list[tuple[str, str]]:
    return [(e.name, e.title) for e in EXERCISES.values()]


def grade_check_name(exercise: str) -> str:
    """The exercise's name, or ValueError naming the known ones (and the closest)."""
    if exercise not in EXERCISES:
        close = [n for n in EXERCISES if exercise.replace("-", "_") in n or n in exercise]
        raise ValueError(f"exercise: unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}"
                         + (f" (did you mean {close[0]}?)" if close else ""))
    return exercise


def grade(exercise: str, path, *, timeout: float = DEFAULT_TIMEOUT, memory_mb: int = DEFAULT_MEMORY_MB) -> GradeReport:
    """Grade the answer file at `path` for `exercise`, running it in a child process with `timeout` seconds per call
    and `memory_mb` MiB of address space; never raises for a student's mistake (an unknown exercise raises
    ValueError, a missing file FileNotFoundError)."""
    return grade_file(EXERCISES[grade_check_name(exercise)], path, timeout=timeout, memory_mb=memory_mb)
