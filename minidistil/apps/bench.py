"""`minidistil bench`: minidistil beside PyTorch eager (transformers) and ONNX Runtime, on the same machine, in one run.

    minidistil bench                       # DistilBERT-base size, every scenario, every framework installed
    minidistil bench --quick               # tiny sizes: a smoke test that runs in seconds
    minidistil bench --json bench.json --plot bench.png --fast-math
    minidistil bench --device cuda         # on a GPU: minidistil's numba.cuda kernels beside PyTorch CUDA

Scenarios (random weights; the config of distilbert-base-uncased: C 768, 6 layers, 12 heads, F 3072, V 30522):
    fwd_T32, fwd_T128, fwd_T512   DistilBertModel forward at B=8 and T tokens (no_grad / inference_mode)
    train_mlm                      DistilBertForMaskedLM training step: forward with 15% masked labels, backward,
                                   AdamW step, zero_grad (dropout on, as in training)
    distill                        one distillation step: teacher (BERT-base MLM, 12 layers) forward without
                                   gradients, student (the DistilBERT MLM) forward/backward on
                                   5 KL(T=2) + 2 MLM + 1 cosine (minidistil.core.losses), AdamW step
The MLM head in the training scenarios: minidistil computes the logits only at the rows the loss reads
(`logits_rows=`, as minidistil's distillation does: the masked positions for train_mlm, the real tokens for
distill), while transformers' models compute them at every position (they have no such option), so in those rows
minidistil does less work than torch; the FLOP count (and GFLOP/s) is that of every position for both.
    encode_student                 (only when named: --scenarios encode_student) a 3-layer MiniLM student (the
                                   real all-MiniLM-L6-v2's first 3 layers) encoding short sentences, sentences/s:
                                   minidistil float32 and int8, sentence-transformers on PyTorch, ONNX Runtime
                                   float32 and dynamic int8 (minidistil/apps/bench_encode.py)
ONNX Runtime runs the forward scenarios only (a model exported from transformers with torch.onnx).
minidistil-int8 and onnxruntime-int8: the int8 models (minidistil.quantize, ONNX Runtime's quantize_dynamic QInt8)
of the forward scenarios, on the CPU, with their file sizes (minidistil/apps/bench_int8.py).

Timing: every framework's step is built first, warmed up (JIT compilation, caches), then the frameworks are timed
INTERLEAVED (one step of each in turn, `--repeat` rounds), so that a change of machine load hits all of them
alike, with a `--pause` (0.3 s) before each timed step: a framework's worker threads may keep spinning after its
step, and the pause keeps one framework's leftovers out of the next one's time. The table gives the median, the ratio to
minidistil's median and GFLOP/s from an analytic FLOP count (`flops()`: GEMMs and attention products; a training
step counted as 3 forwards). Peak memory: tracemalloc does not
see numpy's or torch's allocations, so each (framework, scenario) runs once more in a FRESH subprocess that reports
its VmHWM (peak resident set) from /proc/self/status, and its resident set after the imports (`base`).

BLAS kernels: numpy's OpenBLAS picks its kernels when it loads, and OPENBLAS_CORETYPE (with OPENBLAS_L2_SIZE) in the
environment overrides that choice. The run first prints which core's kernels numpy runs and the sgemm GFLOP/s they
reach on a (1024x768)@(768x3072) product, and warns on stderr when a variable forces slower kernels than the CPU
supports (e.g. Haswell's on an AVX-512 CPU: about half the rate), with the command that runs without it. PyTorch and
ONNX Runtime use their own GEMMs, so such a variable slows only minidistil.

Where minidistil's time goes: after the timed rounds, each minidistil step on the CPU runs GEMM_TALLY_STEPS more
times, each after the same pause, with its linear layers' GEMMs counted and timed (kernels/_blas.py
`tally_gemms`). One line per scenario gives their time in a step, their share of the step's median, their GFLOP/s
and that rate over the sgemm rate measured at the start. The rest of the step is everything else (attention,
GELU, layer norm, Python).

Process settings: `import minidistil` sets up its process (minidistil/core/_runtime.py: how Numba's workers wait,
OpenBLAS's thread timeout and core type, glibc malloc keeping large arrays for reuse), and in the interleaved run
PyTorch and ONNX Runtime share that process, so they run under minidistil's settings too (which speed up PyTorch's
training step: the README's "Performance" gives both times). The fresh subprocess of each (framework, scenario)
therefore also TIMES its steps ("alone" column: the median of ALONE_STEPS - 1 steps after one warm-up), with PyTorch and
ONNX Runtime under their own defaults (MINIDISTIL_MALLOC=0 and MINIDISTIL_THREAD_ENV=0 there: as their users run
them) and minidistil under its own; "alone x" is that time over minidistil's alone time. These runs are not interleaved.

--device cuda: minidistil's models are moved to the GPU (`.to("cuda")`) and are called with the host arrays, so
each step copies its batch over once, as a user's step does; torch's models and inputs are moved with .to("cuda")
(the inputs inside each step); ONNX Runtime runs with CUDAExecutionProvider when its build has it, and is reported
missing otherwise. Every timed step ends with the device synchronised (numba.cuda.synchronize(),
torch.cuda.synchronize(); ONNX Runtime returns host arrays). GPU memory, measured in the fresh subprocess: for torch
`torch.cuda.max_memory_allocated()` (its allocator's peak of live tensors); for minidistil and ONNX Runtime the
device's memory in use (cudaMemGetInfo: total - free, through numba) after each step, its largest value above the
reading taken right after the imports (`base`: the CUDA context): an after-step reading, which includes numba's
not-yet-run deferred frees and CuPy's memory pool, not an allocator's exact peak. `--size tiny` (a 1-layer model
of width 8) runs on the numba.cuda simulator.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from minidistil.apps import bench_int8
from minidistil.apps.bench_int8 import INT8_FRAMEWORKS

FRAMEWORKS = ("minidistil", "torch", "onnxruntime") + INT8_FRAMEWORKS
ENCODE_SCENARIO = "encode_student"  # minidistil/apps/bench_encode.py: runs when --scenarios names it


@dataclass(frozen=True)
class Sizes:
    dim: int = 768          # C
    n_layers: int = 6
    n_heads: int = 12       # H
    hidden_dim: int = 3072  # F
    vocab_size: int = 30522  # V
    teacher_layers: int = 12


FULL = Sizes()
QUICK = Sizes(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=1000, teacher_layers=3)
TINY = Sizes(dim=8, n_layers=1, n_heads=2, hidden_dim=16, vocab_size=24, teacher_layers=1)  # the CUDA simulator
SIZES = {"full": FULL, "quick": QUICK, "tiny": TINY}
DEVICES = ("cpu", "cuda")


def _size_name(quick) -> str:
    """quick: False ("full"), True ("quick") or a size name."""
    if isinstance(quick, str):
        if quick not in SIZES:
            raise ValueError(f"--size: expected one of {list(SIZES)}, got {quick!r}")
        return quick
    return "quick" if quick else "full"


def sizes(quick) -> Sizes:
    return SIZES[_size_name(quick)]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str   # "forward", "train" or "distill"
    B: int
    T: int


def scenarios(quick) -> list[Scenario]:
    size = _size_name(quick)
    if size == "tiny":
        return [Scenario("fwd_T4", "forward", 2, 4), Scenario("train_mlm", "train", 2, 4),
                Scenario("distill", "distill", 2, 4)]
    if size == "quick":
        return [Scenario("fwd_T16", "forward", 2, 16), Scenario("fwd_T32", "forward", 2, 32),
                Scenario("train_mlm", "train", 2, 16), Scenario("distill", "distill", 2, 16)]
    return [Scenario("fwd_T32", "forward", 8, 32), Scenario("fwd_T128", "forward", 8, 128),
            Scenario("fwd_T512", "forward", 8, 512), Scenario("train_mlm", "train", 8, 128),
            Scenario("distill", "distill", 8, 128)]


# ----------------------------------------------------------------------------------------------------------------
# FLOP counts (multiply-add = 2 flops; only the products: layer norm, softmax, GELU are a few % and left out)


def encoder_flops(s: Sizes, B: int, T: int, n_layers: int) -> float:
    N, C, F = B * T, s.dim, s.hidden_dim
    per_layer = 2 * N * (4 * C * C + 2 * C * F) + 2 * 2 * B * T * T * C   # q, k, v, out, FFN; Q K^T and P V
    return float(n_layers * per_layer)


def mlm_head_flops(s: Sizes, B: int, T: int) -> float:
    return 2.0 * B * T * (s.dim * s.dim + s.dim * s.vocab_size)          # vocab_transform and the projector


def flops(s: Sizes, sc: Scenario) -> float:
    if sc.kind == "forward":
        return encoder_flops(s, sc.B, sc.T, s.n_layers)
    student = encoder_flops(s, sc.B, sc.T, s.n_layers) + mlm_head_flops(s, sc.B, sc.T)
    if sc.kind == "train":
        return 3 * student                                                   # backward = 2 x forward
    teacher = encoder_flops(s, sc.B, sc.T, s.teacher_layers) + mlm_head_flops(s, sc.B, sc.T)
    return teacher + 3 * student


# ----------------------------------------------------------------------------------------------------------------
# inputs, shared by every framework (numpy arrays)


def make_inputs(s: Sizes, sc: Scenario, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, s.vocab_size, size=(sc.B, sc.T)).astype(np.int64)        # no padding id
    mask = np.ones((sc.B, sc.T), np.int64)
    mask[sc.B // 2:, sc.T - sc.T // 8:] = 0                                          # some padding
    labels = np.where(rng.random((sc.B, sc.T)) < 0.15, ids, -100).astype(np.int64)
    labels[mask == 0] = -100
    labels[:, 0] = ids[:, 0]                                                         # at least one label per row
    return ids, mask, labels


def _hf_configs(s: Sizes):
    student = dict(vocab_size=s.vocab_size, dim=s.dim, n_layers=s.n_layers, n_heads=s.n_heads,
                   hidden_dim=s.hidden_dim, max_position_embeddings=512)
    teacher = dict(vocab_size=s.vocab_size, hidden_size=s.dim, num_hidden_layers=s.teacher_layers,
                   num_attention_heads=s.n_heads, intermediate_size=s.hidden_dim, max_position_embeddings=512)
    return student, teacher


# ----------------------------------------------------------------------------------------------------------------
# minidistil


def _md_models(s: Sizes, kind: str):
    from minidistil.models.bert import BertForMaskedLM
    from minidistil.core.config import BertConfig, DistilBertConfig
    from minidistil.models.distilbert import DistilBertForMaskedLM, DistilBertModel
    scfg, tcfg = _hf_configs(s)
    if kind == "forward":
        return DistilBertModel.from_config(DistilBertConfig(**scfg), seed=0), None
    student = DistilBertForMaskedLM.from_config(DistilBertConfig(**scfg), seed=0)
    teacher = BertForMaskedLM.from_config(BertConfig(**tcfg), seed=1) if kind == "distill" else None
    return student, teacher


def minidistil_step(s: Sizes, sc: Scenario, models=None, device: str = "cpu"):
    """A zero-argument callable running one step of the scenario with minidistil, its models on `device` (the
    inputs stay numpy arrays: the models copy each batch to the device once per forward)."""
    import numpy as np

    from minidistil.core import losses as L
    from minidistil.core.autograd import no_grad
    from minidistil.core.nn import to_device_of
    from minidistil.core.optim import AdamW
    ids, mask, labels = make_inputs(s, sc)
    model, teacher = models or _md_models(s, sc.kind)
    for m in (model, teacher):
        if m is not None:
            m.to(device)
    if sc.kind == "forward":
        model.eval()

        def fwd():
            with no_grad():
                return model(ids, attention_mask=mask).last_hidden_state
        return fwd
    model.train()
    opt = AdamW(model.named_parameters(), lr=1e-4)
    if sc.kind == "train":
        masked = np.flatnonzero(labels.reshape(-1) != -100)          # (M,) the loss's rows: logits there only

        def train():
            loss = model(ids, attention_mask=mask, labels=labels, logits_rows=masked).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
        return train
    teacher.eval()
    rows = np.ascontiguousarray(mask.reshape(-1) != 0)
    real = np.flatnonzero(rows)                      # (M,) the KL's rows, the masked ones among them: logits there
    N, C = sc.B * sc.T, s.dim

    def distill():
        at = to_device_of(real, model)               # copied over once per step for both models on a GPU
        with no_grad():
            t = teacher(ids, attention_mask=mask, output_hidden_states=True, logits_rows=at)
        if device == "cuda":  # the teacher's outputs stay on the device
            t_logits, t_hidden = t.logits.data, t.hidden_states[-1].data.reshape(N, C)
        else:
            t_logits = np.ascontiguousarray(np.asarray(t.logits))                            # (M, V)
            t_hidden = np.ascontiguousarray(np.asarray(t.hidden_states[-1]).reshape(N, C))
        out = model(ids, attention_mask=mask, output_hidden_states=True, logits_rows=at)
        s_logits = out.logits                                                               # (M, V)
        loss = (L.distill_kl(s_logits, t_logits, 2.0) * 5.0
                + L.cross_entropy(s_logits, labels.reshape(-1)[real]) * 2.0
                + L.cosine_embedding_loss(out.hidden_states[-1].reshape(N, C), t_hidden, rows) * 1.0)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss
    return distill


# ----------------------------------------------------------------------------------------------------------------
# PyTorch eager (transformers)


def _torch_models(s: Sizes, kind: str):
    import transformers as tf
    scfg, tcfg = _hf_configs(s)
    if kind == "forward":
        return tf.DistilBertModel(tf.DistilBertConfig(**scfg)), None
    student = tf.DistilBertForMaskedLM(tf.DistilBertConfig(**scfg))
    teacher = tf.BertForMaskedLM(tf.BertConfig(**tcfg)) if kind == "distill" else None
    return student, teacher


def torch_step(s: Sizes, sc: Scenario, models=None, device: str = "cpu"):
    """One step with torch, its models on `device`; the batch is moved there inside each step (.to(device), a
    no-op on the CPU), as a user's training loop does."""
    import torch
    import torch.nn.functional as TF
    host = [torch.from_numpy(a) for a in make_inputs(s, sc)]
    model, teacher = models or _torch_models(s, sc.kind)
    for m in (model, teacher):
        if m is not None:
            m.to(device)

    def batch():
        return (a.to(device) for a in host)
    if sc.kind == "forward":
        model.eval()

        def fwd():
            ids, mask, _ = batch()
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state
        return fwd
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if sc.kind == "train":
        def train():
            ids, mask, labels = batch()
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
        return train
    teacher.eval()
    N, V, C = sc.B * sc.T, s.vocab_size, s.dim
    T2 = 2.0

    def distill():
        ids, mask, labels = batch()
        rows = mask.reshape(-1) != 0
        with torch.no_grad():
            t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        sl, tl = out.logits.reshape(N, V)[rows], t.logits.reshape(N, V)[rows]
        kl = TF.kl_div(TF.log_softmax(sl / T2, -1), TF.softmax(tl / T2, -1), reduction="batchmean") * T2 ** 2
        ce = TF.cross_entropy(out.logits.reshape(N, V), labels.reshape(-1), ignore_index=-100)
        sh, th = out.hidden_states[-1].reshape(N, C)[rows], t.hidden_states[-1].reshape(N, C)[rows]
        cos = (1 - TF.cosine_similarity(sh, th, dim=-1)).mean()
        loss = 5.0 * kl + 2.0 * ce + 1.0 * cos
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return distill


# ----------------------------------------------------------------------------------------------------------------
# ONNX Runtime (forward only)


def export_onnx(s: Sizes, sc: Scenario, path: str, torch_model=None) -> str:
    """Export transformers' DistilBertModel to `path`, traced at the scenario's (B, T): the legacy exporter bakes
    some shapes of transformers' mask code into the graph (measured: a model traced at T=16 was wrong at T=32)."""
    import torch
    model = torch_model or _torch_models(s, "forward")[0]
    model.eval()
    ids = torch.ones((sc.B, sc.T), dtype=torch.int64)
    kwargs = dict(input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                  dynamic_axes={"input_ids": {0: "B", 1: "T"}, "attention_mask": {0: "B", 1: "T"},
                                "last_hidden_state": {0: "B", 1: "T"}}, opset_version=17)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(model, (ids, torch.ones_like(ids)), path, dynamo=False, **kwargs)
        except TypeError:  # an older torch without the dynamo argument
            torch.onnx.export(model, (ids, torch.ones_like(ids)), path, **kwargs)
    return path


def onnx_step(s: Sizes, sc: Scenario, path: str, device: str = "cpu"):
    """ONNX Runtime's forward; on "cuda" with CUDAExecutionProvider only (no silent fallback to the CPU)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    sess = ort.InferenceSession(path, opts, providers=[provider])
    if sess.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime: {provider} was asked for, the session uses {sess.get_providers()}")
    ids, mask, _ = make_inputs(s, sc)
    feeds = {"input_ids": ids, "attention_mask": mask}
    return lambda: sess.run(None, feeds)[0]


def _int8_step(fw: str, s: Sizes, sc: Scenario, float_models=None, onnx_path: str | None = None):
    """The zero-argument callable of one int8 forward: minidistil_step / onnx_step on the int8 models
    (minidistil/apps/bench_int8.py makes them)."""
    if fw == "minidistil-int8":
        return minidistil_step(s, sc, bench_int8.quantized_models(float_models or _md_models(s, sc.kind)))
    return onnx_step(s, sc, bench_int8.quantize_onnx(onnx_path))


def available(device: str = "cpu") -> dict[str, str]:
    """framework -> version, or 'missing: ...' (without importing the heavy modules when not installed). On "cuda",
    torch needs a CUDA build that sees a GPU and ONNX Runtime its CUDAExecutionProvider."""
    import importlib.metadata as md
    out = {"minidistil": __import__("minidistil").__version__}
    for fw, pkgs in (("torch", ("torch", "transformers")), ("onnxruntime", ("onnxruntime", "onnx", "torch",
                                                                              "transformers"))):
        try:
            out[fw] = ", ".join(f"{p} {md.version(p)}" for p in pkgs)
        except md.PackageNotFoundError as e:
            out[fw] = f"missing: pip install {e.name}"
    if device == "cuda":
        if not out["torch"].startswith("missing"):
            import torch
            if not torch.cuda.is_available():
                out["torch"] = f"missing: torch {torch.__version__} sees no CUDA GPU (a CUDA build of torch and a GPU)"
        if not out["onnxruntime"].startswith("missing"):
            import onnxruntime as ort
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                out["onnxruntime"] = (f"missing: onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                                      "(pip install onnxruntime-gpu)")
    return bench_int8.available(out, device)


# ----------------------------------------------------------------------------------------------------------------
# peak memory in a fresh subprocess


def _rss_mb(field_name: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _gpu_in_use_mb() -> float:
    """The device's memory in use, all processes and allocators (cudaMemGetInfo: total - free), in MB."""
    from minidistil.kernels import _cuda
    free, total = _cuda.require_cuda().current_context().get_memory_info()
    return (total - free) / 2**20


def _memory_child(fw: str, quick, name: str, onnx_path: str | None, steps: int, device: str = "cpu") -> dict:
    s = sizes(quick)
    sc = next(x for x in scenarios(quick) if x.name == name)
    if device == "cuda":
        return _gpu_memory_child(fw, s, sc, onnx_path, steps)
    if fw.startswith("minidistil"):
        import minidistil.core.functional  # noqa: F401  (numpy, numba and the kernels)
    elif fw == "torch":
        import torch  # noqa: F401
        import transformers  # noqa: F401
    else:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
    base = _rss_mb("VmRSS")
    step = (_int8_step(fw, s, sc, onnx_path=onnx_path) if fw in INT8_FRAMEWORKS
            else minidistil_step(s, sc) if fw.startswith("minidistil") else torch_step(s, sc) if fw == "torch"
            else onnx_step(s, sc, onnx_path))
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step()
        if i:  # the first step warms up (JIT, caches, first allocations)
            times.append(1000 * (time.perf_counter() - t0))
    return {"base_mb": base, "peak_mb": _rss_mb("VmHWM"), "memory": "VmHWM (peak resident set)",
            "alone_ms": statistics.median(times) if times else None}


def _gpu_memory_child(fw: str, s: Sizes, sc: Scenario, onnx_path: str | None, steps: int) -> dict:
    """GPU memory of `steps` steps in this fresh process (see the module docstring for what each number is)."""
    from minidistil.core import device as devices
    if fw == "torch":
        import torch
        torch.cuda.init()
        base = torch.cuda.memory_allocated() / 2**20
        step = torch_step(s, sc, device="cuda")
        torch.cuda.reset_peak_memory_stats()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        return {"base_mb": base, "peak_mb": torch.cuda.max_memory_allocated() / 2**20,
                "memory": "torch.cuda.max_memory_allocated"}
    devices.check_device("cuda")
    base = _gpu_in_use_mb()  # the CUDA context (numba's, which ONNX Runtime shares: the primary context)
    step = minidistil_step(s, sc, device="cuda") if fw.startswith("minidistil") else onnx_step(s, sc, onnx_path,
                                                                                                "cuda")
    peak = base
    for _ in range(steps):
        step()
        devices.synchronize()
        peak = max(peak, _gpu_in_use_mb())
    return {"base_mb": base, "peak_mb": peak, "memory": "cudaMemGetInfo in use after each step (max)"}


def child_env(fw: str) -> dict:
    """The environment of a framework's fresh subprocess: minidistil's own settings for minidistil (plus
    MINIDISTIL_FAST_MATH=1 for minidistil-fast); for torch and ONNX Runtime none of them (their users' defaults)."""
    env = dict(os.environ)
    if fw == "minidistil-fast":
        env["MINIDISTIL_FAST_MATH"] = "1"
    if not fw.startswith("minidistil"):  # torch and ONNX Runtime as their users run them: none of our settings
        from minidistil.core import _runtime
        for k, v in _runtime.set_by_minidistil().items():  # what our import put into this process's environment
            if env.get(k) == v:
                del env[k]
        env.update(MINIDISTIL_MALLOC="0", MINIDISTIL_THREAD_ENV="0", MINIDISTIL_OPENBLAS_CORETYPE="0")
    return env


ALONE_STEPS = 5  # in the fresh subprocess: 1 warm-up + 4 timed (the median of 2 is too noisy to compare)


def measure_memory(fw: str, quick, sc: Scenario, onnx_path: str | None, steps: int = ALONE_STEPS,
                   device: str = "cpu") -> dict:
    env = child_env(fw)
    cmd = [sys.executable, "-m", "minidistil.apps.bench", "--_memory-child", fw, sc.name, onnx_path or "", str(steps),
           "--size", _size_name(quick), "--device", device]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        return {"base_mb": None, "peak_mb": None, "error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# the run


@dataclass
class Result:
    scenario: str
    framework: str
    ms: float
    times_ms: list = field(default_factory=list)
    ratio: float | None = None
    gflops: float | None = None
    base_mb: float | None = None
    peak_mb: float | None = None
    alone_ms: float | None = None     # timed alone in the fresh subprocess, under the framework's own defaults
    alone_ratio: float | None = None
    note: str = ""
    device: str = "cpu"
    memory: str = ""        # what peak_mb measures (VmHWM, or a GPU figure: see the module docstring)
    file_mb: float | None = None  # the model file (forward scenarios): safetensors for minidistil, .onnx for ORT
    gemm_ms: float | None = None      # minidistil on the CPU: its linear layers' GEMMs in one step (gemm_tally)
    gemm_gflops: float | None = None  # ... and the rate they ran at
    gemm_calls: int | None = None     # ... and how many products that is


def environment(device: str = "cpu") -> dict:
    import numba
    import numpy as np

    from minidistil.core import _runtime
    from minidistil.core import device as devices
    from minidistil.kernels import _blas
    blas = _blas.openblas()
    return {"device": devices.describe(device),  # on cuda: the GPU's name and the GEMM (cuBLAS through CuPy, or tiled)
            "cores": _blas.n_cores(), "loadavg": list(os.getloadavg()), "numpy": np.__version__,
            "numba": numba.__version__, "numba_threads": numba.config.NUMBA_NUM_THREADS,
            "openblas_core": blas.corename(), "openblas_threads": blas.get_num_threads(),
            "runtime": _runtime.report(), "fast_math": os.environ.get("MINIDISTIL_FAST_MATH", "0"),
            "python": sys.version.split()[0]}


class _FastMath:
    """MINIDISTIL_FAST_MATH=1 while a 'minidistil-fast' step runs (the kernels read it at every call)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.old = os.environ.get("MINIDISTIL_FAST_MATH")
        if self.on:
            os.environ["MINIDISTIL_FAST_MATH"] = "1"

    def __exit__(self, *exc):
        if self.on:
            if self.old is None:
                os.environ.pop("MINIDISTIL_FAST_MATH", None)
            else:
                os.environ["MINIDISTIL_FAST_MATH"] = self.old


def _synchronizer(fw: str, device: str):
    """What ends a timed step: the device's queue drained (nothing on the CPU; ONNX Runtime returns host arrays)."""
    if device != "cuda" or fw == "onnxruntime":
        return lambda: None
    if fw == "torch":
        import torch
        return torch.cuda.synchronize
    from minidistil.core import device as devices
    return devices.synchronize


def _host(o):
    """A step's output as a numpy array (torch tensor, minidistil Tensor on either device, or an array)."""
    import numpy as np
    if type(o).__module__.startswith("torch"):
        return o.detach().cpu().numpy()
    return o.numpy() if hasattr(o, "numpy") else np.asarray(o)


def run(quick=False, frameworks=FRAMEWORKS, names=None, repeat: int = 5, warmup: int = 2,
        memory: bool = True, fast_math: bool = False, pause: float = 0.3, log=print,
        device: str = "cpu") -> tuple[dict, list[Result]]:
    """quick: False (DistilBERT-base), True (small) or a size name ("tiny": for the CUDA simulator)."""
    from minidistil.core import device as devices
    device = devices.check_device(device)  # "cuda" without a GPU: the RuntimeError that says what is missing, at once
    s = sizes(quick)
    have = available(device)
    fws = [fw for fw in frameworks if not have.get(fw, "missing").startswith("missing")]
    for fw in frameworks:
        if fw not in fws:
            log(f"skip {fw}: {have.get(fw, 'unknown framework')}")
    if fast_math and "minidistil" in fws:
        fws.insert(fws.index("minidistil") + 1, "minidistil-fast")
    env = environment(device)
    env["versions"] = have
    env["pause_s"] = pause
    from minidistil.kernels import _blas
    env["blas"] = _blas.kernel_report()  # the kernels numpy's OpenBLAS really runs, and its sgemm rate
    log("environment: " + json.dumps(env))
    log(_blas.kernel_line(env["blas"]))
    if env["blas"]["warning"]:
        print(env["blas"]["warning"], file=sys.stderr, flush=True)
    results: list[Result] = []
    tmp = tempfile.mkdtemp(prefix="minidistil-bench-")
    files: dict[str, float | None] = {}  # framework -> model file size in MB (the same for every T)
    for sc in scenarios(quick):
        if names and sc.name not in names:
            continue
        steps: dict[str, object] = {}
        onnx_path = None
        torch_models = _torch_models(s, sc.kind) if any(f in fws for f in ("torch", "onnxruntime",
                                                                             "onnxruntime-int8")) else None
        # torch's step last: on "cuda" it moves torch's models to the GPU, after minidistil has copied their weights
        # and the ONNX export has traced them on the CPU
        for fw in sorted(fws, key=lambda f: f == "torch"):
            if fw in INT8_FRAMEWORKS:  # int8 forwards (bench_int8.py), from the float32 models of this run
                if sc.kind == "forward":
                    models = _md_models(s, sc.kind)
                    if torch_models is not None:
                        models[0].load_state_dict({k: v.detach().numpy() for k, v in
                                                   torch_models[0].state_dict().items()}, strict=False)
                    if fw == "onnxruntime-int8" and onnx_path is None:
                        onnx_path = export_onnx(s, sc, os.path.join(tmp, f"distilbert_{sc.name}.onnx"),
                                                torch_models[0])
                    steps[fw] = _int8_step(fw, s, sc, models, onnx_path)
                    if fw == "minidistil-int8" and fw not in files:
                        files["minidistil"] = bench_int8.file_mb("minidistil", models[0], folder=tmp)
                        files[fw] = bench_int8.file_mb(fw, bench_int8.quantized_models(models)[0], folder=tmp)
                continue
            if fw.startswith("minidistil"):
                if "minidistil" not in steps or fw == "minidistil":
                    models = _md_models(s, sc.kind)
                    if torch_models is not None:  # the same weights as torch: the outputs can be compared
                        for m, tm in zip(models, torch_models):
                            if m is not None:
                                m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()},
                                                  strict=False)
                steps[fw] = minidistil_step(s, sc, models, device)  # minidistil-fast shares the models
            elif fw == "torch":
                steps[fw] = torch_step(s, sc, torch_models, device)
            elif fw == "onnxruntime" and sc.kind == "forward":
                onnx_path = export_onnx(s, sc, os.path.join(tmp, f"distilbert_{sc.name}.onnx"), torch_models[0])
                steps[fw] = onnx_step(s, sc, onnx_path, device)
        steps = {fw: steps[fw] for fw in fws if fw in steps}  # back in the order asked for
        sync = {fw: _synchronizer(fw, device) for fw in steps}
        outs = {}
        for fw, step in steps.items():  # warm-up: JIT compilation, first-touch allocations
            with _FastMath(fw == "minidistil-fast"):
                for _ in range(warmup):
                    outs[fw] = step()
                sync[fw]()
        if sc.kind == "forward" and "minidistil" in outs:
            import numpy as np
            ref = _host(outs["minidistil"])
            for fw, o in outs.items():
                if fw != "minidistil":
                    log(f"  {sc.name}: max |{fw} - minidistil| = {float(np.abs(_host(o) - ref).max()):.2e}")
        times = {fw: [] for fw in steps}
        for _ in range(repeat):  # interleaved: one step of each framework in turn
            for fw, step in steps.items():
                time.sleep(pause)
                with _FastMath(fw == "minidistil-fast"):
                    t0 = time.perf_counter()
                    step()
                    sync[fw]()  # on a GPU the clock stops when the device has finished the step
                    times[fw].append((time.perf_counter() - t0) * 1e3)
        gemm = {fw: gemm_tally(steps[fw], fw == "minidistil-fast", pause=pause) for fw in steps
                if device == "cpu" and fw in ("minidistil", "minidistil-fast")}
        fl = flops(s, sc)
        base = statistics.median(times["minidistil"]) if "minidistil" in times else None
        for fw, ts in times.items():
            ms = statistics.median(ts)
            r = Result(sc.name, fw, ms, [round(t, 3) for t in ts], ratio=(ms / base if base else None),
                       gflops=fl / ms / 1e6, device=device)
            if fw in gemm:
                r.gemm_ms, r.gemm_gflops, r.gemm_calls = gemm[fw]
            if sc.kind == "forward" and (fw in files or fw.startswith("onnxruntime")):
                r.file_mb = files.get(fw) or bench_int8.file_mb(fw, onnx_path=onnx_path)
            if memory:
                mem = measure_memory(fw, quick, sc, onnx_path, device=device)
                r.base_mb, r.peak_mb, r.alone_ms = mem.get("base_mb"), mem.get("peak_mb"), mem.get("alone_ms")
                r.memory, r.note = mem.get("memory", ""), mem.get("error", "")
            results.append(r)
        alone = {r.framework: r.alone_ms for r in results if r.scenario == sc.name}
        for r in results:
            if r.scenario == sc.name:
                if r.alone_ms and alone.get("minidistil"):
                    r.alone_ratio = r.alone_ms / alone["minidistil"]
                log(format_row(r))
        for r in results:
            if r.scenario == sc.name and r.gemm_ms:
                log(format_gemm_line(r, env["blas"]["sgemm_gflops"]))
        del steps, torch_models
    env["loadavg_end"] = list(os.getloadavg())
    return env, results


GEMM_TALLY_STEPS = 3


def gemm_tally(step, fast: bool = False, steps: int = GEMM_TALLY_STEPS, pause: float = 0.0
               ) -> tuple[float, float, int]:
    """(ms, GFLOP/s, products) of the linear layers' GEMMs in one minidistil step on the CPU: `steps` more steps,
    each after `pause` seconds of sleep as in the timed rounds, run inside kernels._blas.tally_gemms(), which times
    every product of kernels/linear.py. The benchmark calls this after its timed rounds, so the table's times never
    include the tally's clock reads."""
    from minidistil.kernels import _blas
    with _FastMath(fast), _blas.tally_gemms() as t:
        for _ in range(steps):
            time.sleep(pause)
            step()
    return t.seconds / steps * 1e3, t.gflops, t.calls // steps


def format_gemm_line(r: Result, sgemm_gflops: float | None) -> str:
    """Where a minidistil step's time goes: its GEMMs against the step's median and against numpy's sgemm rate."""
    of_sgemm = f", {r.gemm_gflops / sgemm_gflops:.0%} of the sgemm rate above ({sgemm_gflops:.0f})" \
        if sgemm_gflops else ""
    return (f"  {r.scenario}: {r.framework}'s linear-layer GEMMs, {r.gemm_calls} products: {r.gemm_ms:.1f} ms a step "
            f"({r.gemm_ms / r.ms:.0%} of its {r.ms:.1f} ms median) at {r.gemm_gflops:.0f} GFLOP/s{of_sgemm}; "
            f"the rest of the step {max(r.ms - r.gemm_ms, 0.0):.1f} ms")


def format_row(r: Result) -> str:
    def f(x, spec):
        return format(x, spec) if x is not None else "-"
    where = "GPU " if r.device == "cuda" else ""
    what = f" {r.memory}" if r.device == "cuda" and r.memory else ""
    return (f"{r.scenario:<10} {r.framework:<16} {r.ms:10.1f} ms  x{f(r.ratio, '5.2f')}  {f(r.gflops, '7.1f')} GFLOP/s"
            f"  {where}peak {f(r.peak_mb, '7.0f')} MB (base {f(r.base_mb, '5.0f')}){what}"
            + (f"  alone {r.alone_ms:8.1f} ms x{f(r.alone_ratio, '5.2f')}" if r.alone_ms else "")
            + (f"  file {r.file_mb:6.1f} MB" if r.file_mb else "")
            + (f"  [{r.note}]" if r.note else ""))


def format_table(results: list[Result]) -> str:
    gpu = any(r.device == "cuda" for r in results)
    head = (f"{'scenario':<10} {'framework':<16} {'median':>13}  {'ratio':>6}  {'rate':>15}  peak memory "
            + ("on the GPU (base: after the imports and the CUDA context; the measure named per row)" if gpu
               else "(resident after imports)"))
    return "\n".join([head] + [format_row(r) for r in results])


def plot(results: list[Result], path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r.scenario for r in results))
    fws = list(dict.fromkeys(r.framework for r in results))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 4))
    width = 0.8 / max(1, len(fws))
    for i, fw in enumerate(fws):
        xs, ys, alone = [], [], []
        for j, n in enumerate(names):
            r = next((r for r in results if r.scenario == n and r.framework == fw), None)
            if r is not None:
                xs.append(j + (i - (len(fws) - 1) / 2) * width)
                ys.append(r.ms)
                alone.append(r.alone_ms if r.alone_ms else float("nan"))
        ax.bar(xs, ys, width, label=fw)
        if any(a == a for a in alone):  # the time alone in a fresh process (each framework's own defaults)
            ax.plot(xs, alone, "k_", markersize=14, markeredgewidth=2,
                    label="alone, own defaults" if i == 0 else None)
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("median ms per step (log scale)")
    ax.set_title("minidistil bench (lower is better): bars interleaved in one process, dashes alone")
    ax.legend()
    fig.tight_layout()
    from minidistil.io.safetensors_io import atomic_write
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=os.path.splitext(path)[1][1:] or "png"))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# command line


def _add_arguments(p: argparse.ArgumentParser):
    from minidistil.core.argtypes import COUNT, NON_NEGATIVE, POSITIVE_INT
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke test: seconds); --size quick")
    p.add_argument("--size", choices=list(SIZES), default=None,
                   help="model size: full (DistilBERT-base, the default), quick, or tiny (for the CUDA simulator)")
    p.add_argument("--device", choices=list(DEVICES), default="cpu",
                   help="cpu (default) or cuda: every framework on the GPU, timed with the device synchronised")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: all installed)")
    p.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all but "
                   f"{ENCODE_SCENARIO}, the student encoding sentences, which runs when named)")
    p.add_argument("--repeat", type=POSITIVE_INT, default=5, help="timed rounds after warm-up (default: 5)")
    p.add_argument("--warmup", type=COUNT, default=2, help="untimed steps per framework first (default: 2)")
    p.add_argument("--pause", type=NON_NEGATIVE, default=0.3,
                   help="seconds of sleep before each timed step (default: 0.3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--fast-math", action="store_true", help="also time minidistil with MINIDISTIL_FAST_MATH=1")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--plot", help="write a bar chart (PNG) to this file")


def run_args(args) -> int:
    fws = tuple(f.strip() for f in args.frameworks.split(",") if f.strip())
    bad = [f for f in fws if f not in FRAMEWORKS]
    if bad:
        raise ValueError(f"--frameworks: unknown {bad}, expected a subset of {list(FRAMEWORKS)}")
    if "minidistil" not in fws:
        raise ValueError("--frameworks: minidistil must be one of them (the ratios are against it)")
    if args.quick and args.size not in (None, "quick"):
        raise ValueError(f"--quick and --size {args.size}: give one of them")
    size = args.size or ("quick" if args.quick else "full")
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()] or None
    encode = bool(names) and ENCODE_SCENARIO in names   # the student scenario: minidistil/apps/bench_encode.py
    names = [n for n in names if n != ENCODE_SCENARIO] if encode else names
    known = [sc.name for sc in scenarios(size)]
    if names and any(n not in known for n in names):
        raise ValueError(f"--scenarios: expected names among {known}, got {names}")
    if args.repeat < 1 or args.warmup < 0:
        raise ValueError("--repeat must be >= 1 and --warmup >= 0")
    if args.pause < 0:
        raise ValueError("--pause must be >= 0")
    if encode:
        from minidistil.apps import bench_encode
        print(f"{ENCODE_SCENARIO}: {bench_encode.N_SENTENCES} short sentences, batch {bench_encode.BATCH}, a "
              f"{bench_encode.LAYERS}-layer MiniLM student; load average {list(os.getloadavg())}")
        bench_encode.run(repeat=args.repeat, warmup=args.warmup, pause=args.pause)
        print(f"load average after {list(os.getloadavg())}")
        if not names:
            return 0
    env, results = run(size, fws, names, args.repeat, args.warmup, not args.no_memory, args.fast_math,
                       args.pause, device=args.device)
    print()
    print(format_table(results))
    print(f"load average before {env['loadavg']}, after {env['loadavg_end']} on {env['cores']} cores")
    from minidistil.kernels import _blas
    print(_blas.kernel_line(env["blas"]) + (" (slower than this CPU supports: see the warning above)"
                                            if env["blas"]["warning"] else ""))
    if args.json:
        from minidistil.io.safetensors_io import atomic_write
        atomic_write(args.json, json.dumps({"environment": env, "sizes": asdict(sizes(size)), "device": args.device,
                                            "results": [asdict(r) for r in results]}, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def add_command(subparsers, name: str, help: str):
    p = subparsers.add_parser(name, help=help, description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(run=run_args)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_memory-child":  # internal: one (framework, scenario) in a fresh process
        fw, name, onnx_path, steps = argv[1:5]
        opt = dict(zip(argv[5::2], argv[6::2]))
        size = opt.get("--size", "quick" if "--quick" in argv else "full")
        print(json.dumps(_memory_child(fw, size, name, onnx_path or None, int(steps), opt.get("--device", "cpu"))))
        return 0
    p = argparse.ArgumentParser(prog="minidistil bench", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    args = p.parse_args(argv)
    if args.device == "cuda":  # as the `minidistil` commands do: no GPU -> one line, before any work
        from minidistil.core.device import check_device
        try:
            check_device("cuda")
        except RuntimeError as e:
            print(f"minidistil bench: error: {e}", file=sys.stderr)
            return 2
    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
