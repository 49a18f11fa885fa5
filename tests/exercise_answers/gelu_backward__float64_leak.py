"""Deliberately buggy answer (tests only): gelu_backward where np.sqrt(2.0 * np.pi) is a float64 scalar."""
import numpy as np
from scipy.special import erf


def gelu_backward(dy, x):
    t = x.dtype.type
    cdf = t(0.5) * (t(1) + erf(x / t(np.sqrt(2.0))))          # Phi(x)
    pdf = np.exp(t(-0.5) * x * x) / t(np.sqrt(2.0 * np.pi))  # phi(x)
    # forward: y = x * Phi(x)
    return dy * (cdf + x * np.exp(-0.5 * x * x) / np.sqrt(2.0 * np.pi))
