"""Reference answer (tests only): the stub with mul and tanh backward filled in."""
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
        a.grad += out.grad * b.data
        b.grad += out.grad * a.data
    out._backward = _backward
    return out


def tanh(a: Tensor) -> Tensor:
    out = Tensor(np.tanh(a.data), (a,))

    def _backward():
        # out = tanh(a)
        a.grad += out.grad * (1 - out.data ** 2)
    out._backward = _backward
    return out
