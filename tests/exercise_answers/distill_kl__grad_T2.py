"""Deliberately buggy answer (tests only): distill_kl where the gradient carries T^2 (the chain rule's 1/T
forgotten)."""
import numpy as np


def _log_softmax(y):
    m = y.max(axis=-1, keepdims=True)
    return y - m - np.log(np.exp(y - m).sum(axis=-1, keepdims=True))


def distill_kl_loss(student, teacher, temperature):
    T = temperature
    lps, lpt = _log_softmax(student / T), _log_softmax(teacher / T)
    return float(T * T * (np.exp(lpt) * (lpt - lps)).sum() / student.shape[0])


def distill_kl_grad(student, teacher, temperature):
    T = student.dtype.type(temperature)
    ps, pt = np.exp(_log_softmax(student / T)), np.exp(_log_softmax(teacher / T))
    return T * T * (ps - pt) / student.dtype.type(student.shape[0])
