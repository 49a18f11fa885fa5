"""Deliberately buggy answer (tests only): adamw where rebinds param instead of updating it."""
import numpy as np


def adamw_step(param, grad, m, v, *, lr, beta1, beta2, eps, weight_decay, step):
    param *= 1 - lr * weight_decay
    m[...] = beta1 * m + (1 - beta1) * grad
    v[...] = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    param = param - lr * m_hat / (np.sqrt(v_hat) + eps)
