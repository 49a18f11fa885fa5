"""Exercise: write the backward closures of two autograd ops.   Grade it:  minidistil grade autograd_ops FILE

Below is a complete tiny reverse-mode autograd (float64, no broadcasting: both inputs of an op have one shape).
Each op computes its output, then defines `_backward()`, which reads `out.grad` (dL/dout, filled in by the time it
runs) and ADDS each input's share to that input's `.grad`. `backward()` sorts the graph (iteratively: no recursion
limit) and calls every `_backward` from the output down to the leaves. `add` and `sum_` are done: read them first.

Your job: the two `_backward` closures marked TODO.
    mul:   out = a * b           ->  dL/da = dL/dout * b,   dL/db = dL/dout * a
    tanh:  out = tanh(a)         ->  dL/da = dL/dout * (1 - tanh(a)^2)   (tanh(a) is out.data: reuse it)
Use `+=`, never `=`: a tensor used twice (a * a, or a in two branches) receives the sum of both contributions.

The grader builds small graphs with these functions (one with a node used twice), runs backward() and compares
every leaf's .grad with central finite differences in float64. Keep the names, the Tensor class and the forward
lines as they are.
"""
import numpy as np


class Tensor:
    def __init__(self, data, _parents=()):
        self.data = np.asarray(data, dtype=np.float64)
        self.grad = np.zeros_like(self.data)       # dL/d(this tensor), accumulated by the ops that use it
        self._parents = _parents                   # the tensors this one was computed from
        self._backward = lambda: None              # adds this tensor's grad into its parents' grads

    def backward(self):
        # topological order without recursion: a node comes after every node it depends on
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
            elif id(node) not in visited:
                visited.add(id(node))
                stack.append((node, True))
                stack.extend((p, False) for p in node._parents if id(p) not in visited)
        self.grad = np.ones_like(self.data)        # dL/dL = 1
        for node in reversed(order):
            node._backward()


def add(a: Tensor, b: Tensor) -> Tensor:
    out = Tensor(a.data + b.data, (a, b))

    def _backward():
        # out = a + b
        a.grad += out.grad
        b.grad += out.grad
    out._backward = _backward
    return out


def sum_(a: Tensor) -> Tensor:
    out = Tensor(np.sum(a.data), (a,))

    def _backward():
        # out = sum(a): every element of a contributes with weight 1
        a.grad += out.grad * np.ones_like(a.data)
    out._backward = _backward
    return out


def mul(a: Tensor, b: Tensor) -> Tensor:
    out = Tensor(a.data * b.data, (a, b))

    def _backward():
        # out = a * b
        raise NotImplementedError  # TODO: add dL/da into a.grad and dL/db into b.grad
    out._backward = _backward
    return out


def tanh(a: Tensor) -> Tensor:
    out = Tensor(np.tanh(a.data), (a,))

    def _backward():
        # out = tanh(a)
        raise NotImplementedError  # TODO: add dL/da into a.grad
    out._backward = _backward
    return out
