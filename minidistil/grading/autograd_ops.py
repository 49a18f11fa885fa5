"""Exercise autograd_ops: the backward closures of mul and tanh in a tiny Tensor class, checked on three
graphs (one reusing a node) against finite differences in float64.
"""
import contextlib
import io

import numpy as np

from minidistil.kernels import _checks

from minidistil.grading.engine import FD_TOL, CaseOver, Exercise, NotImplementedYet, Session, student_frame


def run(s: Session):
    mod = s.module
    r = np.random.default_rng(7)
    a0, b0 = r.standard_normal((2, 3)), r.standard_normal((2, 3))

    def graph(build):
        """Build a graph from fresh leaves, run backward, return (a.grad, b.grad) and the forward value."""
        a, b = mod.Tensor(a0.copy()), mod.Tensor(b0.copy())
        out = build(a, b)
        out.backward()
        return a.grad, b.grad, float(np.sum(out.data))

    def fd(f):
        """Finite differences of the numpy function f(a, b) -> scalar, wrt a and b."""
        a, b = a0.copy(), b0.copy()
        return (_checks.numerical_gradient(lambda: f(a, b), a), _checks.numerical_gradient(lambda: f(a, b), b))

    for label, build, f, extra in [
        ("mul: sum(a * b)", lambda a, b: mod.sum_(mod.mul(a, b)), lambda a, b: np.sum(a * b),
         {"mul's backward is swapped: d(a*b)/da = b, so a.grad += out.grad * b.data (and b.grad gets a.data)":
          lambda: (a0, b0)}),
        ("tanh: sum(tanh(a)) + sum(b)", lambda a, b: mod.add(mod.sum_(mod.tanh(a)), mod.sum_(b)),
         lambda a, b: np.sum(np.tanh(a)) + np.sum(b),
         {"tanh' = 1 - tanh(x)^2 = 1 - out.data**2, not 1 - x**2": lambda: (1 - a0 ** 2, np.ones_like(b0)),
          "tanh' = 1 - tanh(x)^2: the square is missing": lambda: (1 - np.tanh(a0), np.ones_like(b0)),
          "multiply by out.grad (the chain rule): a.grad += (1 - out.data**2) * out.grad":
              lambda: (1 - np.tanh(a0) ** 2, np.ones_like(b0))}),
        ("a node used twice: sum(a * a) + sum(tanh(a * b))",
         lambda a, b: mod.add(mod.sum_(mod.mul(a, a)), mod.sum_(mod.tanh(mod.mul(a, b)))),
         lambda a, b: np.sum(a * a) + np.sum(np.tanh(a * b)),
         {}),
    ]:
        with s.case(label):
            for name in ("Tensor", "mul", "tanh", "add", "sum_"):
                if not hasattr(mod, name):
                    s.check.fail(f"your file has no `{name}`", "keep the stub's Tensor class and functions")
                    raise CaseOver
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    ga, gb, value = graph(build)
            except NotImplementedError as e:
                raise NotImplementedYet("the _backward of mul or tanh",
                                        student_frame(e.__traceback__, s.report.path)[1]) from None
            except Exception as e:  # noqa: BLE001
                s.raised("building the graph or backward() raised", e)
            expect_value = float(f(a0, b0))
            if abs(value - expect_value) > FD_TOL * (1 + abs(expect_value)):
                s.check.fail(f"forward value {value:.8g}, expected {expect_value:.8g}",
                             "the forward lines of the stub compute the values: keep them as given")
            na, nb = fd(f)
            va = {h: (lambda v=v: v()[0]) for h, v in extra.items()}
            vb = {h: (lambda v=v: v()[1]) for h, v in extra.items()}
            # the graph with a reused node is the only one where overwriting .grad shows: when the simple graphs
            # passed and this one fails, that is the mistake
            otherwise = None
            if "twice" in label and all(c.passed for c in s.report.checks[:-1]):
                otherwise = ("a tensor used twice must ACCUMULATE its gradients: write a.grad += ..., never "
                             "a.grad = ... (the simple graphs pass, the one reusing `a` fails)")
            # finite differences in float64 (see FD_TOL): the truth for both leaves
            s.expect_array("a.grad", ga, na, FD_TOL, FD_TOL, dtype=np.float64, variants=va, otherwise=otherwise)
            s.expect_array("b.grad", gb, nb, FD_TOL, FD_TOL, dtype=np.float64, variants=vb, otherwise=otherwise)


EXERCISE = Exercise("autograd_ops", "autograd: the backward closures of mul and tanh in a tiny Tensor class",
                    ("mul", "tanh"), run)
