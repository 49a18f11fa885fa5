"""Reference answer (tests only): linear layer backward."""


def linear_backward(dy, x, w):
    x2 = x.reshape(-1, x.shape[-1])          # (N, Cin)
    dy2 = dy.reshape(-1, dy.shape[-1])       # (N, Cout)
    dx = dy @ w                              # dx = dy W
    dw = dy2.T @ x2                          # dW = dy^T x
    db = dy2.sum(axis=0)                     # db = sum over the N rows
    return dx, dw, db
