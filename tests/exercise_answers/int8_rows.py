"""Reference answer (tests only): asymmetric uint8 quantisation of each row."""
import numpy as np


def quantize_rows(x):
    lo = np.minimum(x.min(axis=1), 0).astype(np.float64)            # the range holds 0
    hi = np.maximum(x.max(axis=1), 0).astype(np.float64)
    s = (hi - lo) / 255
    s = np.where(s > 0, s, 1.0)                                     # an all-zero row: any positive scale
    z = np.clip(np.floor(-lo / s + 0.5), 0, 255)
    q = np.clip(np.floor(x / s[:, None] + 0.5) + z[:, None], 0, 255)
    return q.astype(np.uint8), s.astype(np.float32), z.astype(np.int32)
