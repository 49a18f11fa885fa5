"""Deliberately buggy answer (tests only): softmax_backward where the log-softmax backward."""


def softmax_backward(dy, y):
    return dy - y * dy.sum(axis=-1, keepdims=True)
