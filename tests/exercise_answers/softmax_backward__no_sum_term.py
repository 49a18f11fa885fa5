"""Deliberately buggy answer (tests only): softmax_backward where dx = y * dy."""


def softmax_backward(dy, y):
    return y * dy
