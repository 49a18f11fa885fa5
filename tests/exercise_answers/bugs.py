"""The deliberately buggy exercise answers that tests/test_grading.py grades, as a table of planted bugs.

Each bug is the reference answer `<exercise>.py` of this folder with a few exact pieces of text replaced: read
`edits` as a diff (reference text -> buggy text). The test writes the buggy answer to a temporary file (its docstring
says which bug was planted), grades it, and asserts that the answer fails AND that the grader's hint contains `hint`,
so a grader that fails for the wrong reason does not pass. Every `old` text must occur exactly once in the reference
answer: an edit that no longer applies fails the test instead of grading an unchanged, correct answer.

To add a bug a student is likely to make: add a row; the hint it asserts is the one the grader (minidistil/grading/)
must give for it.
"""
from typing import NamedTuple


class Bug(NamedTuple):
    exercise: str                        # the reference answer <exercise>.py the bug is planted in
    name: str                            # short name; the test's id is <exercise>__<name>
    what: str                            # what the buggy answer does wrong (its docstring)
    edits: tuple[tuple[str, str], ...]   # (old, new): text of the reference answer, found once, and its replacement
    hint: str                            # a piece of the hint that must name the bug

    @property
    def id(self) -> str:
        return f"{self.exercise}__{self.name}"


BUGS = [
    Bug("gelu_backward", "missing_pdf_term", "drops the x * phi(x) term of the product rule",
        (("(dy * (cdf + x * pdf)).astype(x.dtype)", "(dy * cdf).astype(x.dtype)"),),
        hint="product rule"),
    Bug("gelu_backward", "float64_leak",
        "converts x to float64 'for accuracy', so every step, and the final .astype(x.dtype), is float64: the values "
        "are right but the result is float64 (under NumPy 1 and 2 alike)",
        (("    t = x.dtype.type\n", "    x = x.astype(np.float64)                              # in double\n"
                                   "    t = x.dtype.type\n"),),
        hint="float64 leaked out"),

    Bug("layernorm_forward", "unbiased_var", "divides the variance by C - 1 instead of C",
        (("((x2 - mean[:, None]) ** 2).mean(axis=1)", "((x2 - mean[:, None]) ** 2).sum(axis=1) / (C - 1)"),),
        hint="unbiased variance"),
    Bug("layernorm_forward", "one_pass_var", "var = E[x^2] - E[x]^2 in float32 (cancels on rows with a large mean)",
        (("((x2 - mean[:, None]) ** 2).mean(axis=1)", "(x2 * x2).mean(axis=1) - mean * mean"),),
        hint="one-pass variance"),

    Bug("layernorm_backward", "missing_proj_term", "the - xhat * mean(dxhat * xhat) term of dx is missing",
        (("(dxhat - dxhat.mean(axis=1, keepdims=True)\n"
          "                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))",
          "(dxhat - dxhat.mean(axis=1, keepdims=True))"),),
        hint="missing the term - xhat * mean(dxhat * xhat)"),
    Bug("layernorm_backward", "forgot_w", "uses dy where dxhat = dy * w belongs",
        (("dxhat = dy2 * w", "dxhat = dy2"),),
        hint="dxhat = dy * w"),

    Bug("softmax_backward", "no_sum_term", "dx = y * dy: the sum over the row is left out",
        (("y * (dy - (dy * y).sum(axis=-1, keepdims=True))", "y * dy"),),
        hint="the sum over the row is missing"),
    Bug("softmax_backward", "log_softmax_formula", "uses the log-softmax backward, dx = dy - y * sum(dy)",
        (("y * (dy - (dy * y).sum(axis=-1, keepdims=True))", "dy - y * dy.sum(axis=-1, keepdims=True)"),),
        hint="log-softmax backward"),

    Bug("attention_backward", "dv_not_transposed", "dV = P dO instead of P^T dO",
        (("dV = P.swapaxes(-1, -2) @ dO", "dV = P @ dO"),),
        hint="TRANSPOSE of P"),
    Bug("attention_backward", "dk_not_transposed", "dK = dS Q instead of dS^T Q",
        (("dK = dS.swapaxes(-1, -2) @ Q", "dK = dS @ Q"),),
        hint="TRANSPOSE of dS"),
    Bug("attention_backward", "no_scale", "drops the 1/sqrt(D) from dQ and dK",
        (("q.dtype.type(1 / np.sqrt(D))", "q.dtype.type(1)"),),
        hint="1/sqrt(D)"),
    Bug("attention_backward", "mask_not_zeroed", "does not zero dS on the masked keys",
        (("np.where((mask == 0)[:, None, None, :], 0, dS).astype(q.dtype)", "dS.astype(q.dtype)"),),
        hint="masked keys pass no gradient"),

    Bug("cross_entropy", "divide_by_N", "divides by all N rows instead of the rows counted (loss and gradient)",
        ((".sum() / n)", ".sum() / len(targets))"),
         ("logits.dtype.type(max(n, 1))", "logits.dtype.type(len(targets))")),
        hint="not by all N"),
    Bug("cross_entropy", "no_ignore", "keeps every row: target -100 is taken as a class index",
        (("keep = t != ignore_index", "keep = np.ones(len(t), bool)"),),
        hint="ignore_index (-100) must be skipped"),
    Bug("cross_entropy", "no_max_shift", "takes exp of the logits without subtracting each row's max",
        (("m = x.max(axis=1, keepdims=True)", "m = np.zeros((x.shape[0], 1), x.dtype)"),),
        hint="subtract each row's max"),
    Bug("cross_entropy", "zero_rows_nan", "divides by n = 0 when every row is ignored (loss and gradient)",
        (("    if n == 0:\n"
          "        return 0.0\n", ""),
         ("logits.dtype.type(max(n, 1))", "logits.dtype.type(n)")),
        hint="every row is ignored n = 0"),

    Bug("distill_kl", "no_T2", "the loss is not multiplied by T^2",
        (("float(T * T * (np.exp(lpt)", "float((np.exp(lpt)"),),
        hint="multiplied by T^2"),
    Bug("distill_kl", "T_not_T2", "the loss is multiplied by T, not T^2",
        (("float(T * T * (np.exp(lpt)", "float(T * (np.exp(lpt)"),),
        hint="multiply by T^2, not T"),
    Bug("distill_kl", "reversed_kl", "computes KL(student || teacher) instead of KL(teacher || student)",
        (("(np.exp(lpt) * (lpt - lps))", "(np.exp(lps) * (lps - lpt))"),),
        hint="KL(student || teacher)"),
    Bug("distill_kl", "grad_T2", "the gradient carries T^2 (the chain rule's 1/T forgotten)",
        (("return T * (ps - pt)", "return T * T * (ps - pt)"),),
        hint="yours has T^2"),

    Bug("adamw", "no_bias_correction", "uses m and v without bias correction",
        (("m_hat = m / (1 - beta1 ** step)", "m_hat = m"),
         ("v_hat = v / (1 - beta2 ** step)", "v_hat = v")),
        hint="no bias correction"),
    Bug("adamw", "l2_decay", "adds weight_decay * param to the gradient (Adam + L2) instead of decaying param",
        (("param *= 1 - lr * weight_decay", "grad = grad + weight_decay * param"),),
        hint="L2 regularisation"),
    Bug("adamw", "not_in_place", "rebinds the local name param instead of updating the array in place",
        (("param -= lr * m_hat", "param = param - lr * m_hat"),),
        hint="only rebinds the local name"),

    Bug("autograd_ops", "overwrite_grad", "assigns .grad in mul's and tanh's backward instead of accumulating",
        (("a.grad += out.grad * b.data", "a.grad = out.grad * b.data"),
         ("b.grad += out.grad * a.data", "b.grad = out.grad * a.data"),
         ("a.grad += out.grad * (1 - out.data ** 2)", "a.grad = out.grad * (1 - out.data ** 2)")),
        hint="must ACCUMULATE"),
    Bug("autograd_ops", "mul_swapped", "mul's backward gives each input its own data instead of the other's",
        (("a.grad += out.grad * b.data", "a.grad += out.grad * a.data"),
         ("b.grad += out.grad * a.data", "b.grad += out.grad * b.data")),
        hint="mul's backward is swapped"),
    Bug("autograd_ops", "tanh_of_input", "tanh's backward uses 1 - x^2 (the input) instead of 1 - tanh(x)^2",
        (("(1 - out.data ** 2)", "(1 - a.data ** 2)"),),
        hint="not 1 - x**2"),

    Bug("gemm_packing", "strided_panels", "fills panel p with every P-th column of b instead of its contiguous run",
        (("        cols = b[:, p * nr:(p + 1) * nr]                     # (K, <= nr) the panel's columns\n",
          "        cols = b[:, p::P][:, :nr]                            # every P-th column\n"),),
        hint="CONTIGUOUS columns"),
    Bug("gemm_packing", "floor_panels", "counts N // nr panels, dropping the partial last one",
        (("    P = -(-N // nr)                                          # ceil(N / nr) panels\n",
          "    P = N // nr                                              # whole panels only\n"),),
        hint="the last, partial panel"),
    Bug("gemm_packing", "no_crop", "returns all the panels' columns, padding included",
        (("    return c[:, :n]                                          # drop the padding columns\n",
          "    return c\n"),),
        hint="crop the padding columns"),
]
