"""Deliberately buggy answer (tests only): gelu_backward where the term x * phi(x) is dropped."""
import numpy as np
from scipy.special import erf


def gelu_backward(dy, x):
    t = x.dtype.type
    cdf = t(0.5) * (t(1) + erf(x / t(np.sqrt(2.0))))          # Phi(x)
    pdf = np.exp(t(-0.5) * x * x) / t(np.sqrt(2.0 * np.pi))  # phi(x)
    # forward: y = x * Phi(x)
    return (dy * cdf).astype(x.dtype)
