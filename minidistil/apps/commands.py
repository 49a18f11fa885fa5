"""The sub-parsers of the training and int8 commands: `minidistil distill`, `finetune`, `quantize`.

The library (distill, finetune, quantization) takes plain values; this module turns the command line into them.
Each add_* receives (subparsers, name, help) from minidistil/apps/cli.py's COMMANDS and sets `run` to its run_*.
The data flags of `finetune` and `evaluate` (minidistil/apps/predict.py) are declared once, in add_data_args.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict

from minidistil.train import distill as distill_mod
from minidistil.train import finetune as finetune_mod
from minidistil.core.argtypes import NON_NEGATIVE, POSITIVE, bounded, int_list
from minidistil.core.config import config_from_json_file
from minidistil.train.distill import FIELD_TYPES as DISTILL_FIELDS
from minidistil.train.distill import DistillConfig, LossWeights, distill
from minidistil.train.finetune import FIELD_TYPES as FINETUNE_FIELDS
from minidistil.train.finetune import FORMATS, TASKS, FinetuneConfig, metrics_summary, finetune
from minidistil.io.loading import resolve
from minidistil.io.quantization import quantize_folder


# ----------------------------------------------------------------------------------------------------------------
# data flags: how a labelled file is read (finetune and evaluate)


def add_data_args(p: argparse.ArgumentParser, d: FinetuneConfig) -> None:
    """The flags that say how a labelled file is read, with FinetuneConfig's defaults `d`."""
    p.add_argument("--data-format", choices=FORMATS, help="default: from the file suffix and the task")
    p.add_argument("--text-field", default=d.text_field, help="(default %(default)s)")
    p.add_argument("--text-pair-field", help="second text of a sentence pair")
    p.add_argument("--label-field", default=d.label_field, help="(default %(default)s)")
    p.add_argument("--label-sep", default=d.label_sep, help="multilabel separator (default %(default)r)")
    p.add_argument("--no-header", dest="header", action="store_false",
                   help="the table has no header row: fields are column numbers from 0")
    p.add_argument("--question-field", default=d.question_field, help="choice (default %(default)s)")
    p.add_argument("--choices-field", default=d.choices_field,
                   help="choice: a list field, or comma-separated columns such as ending0,ending1,ending2,ending3")
    p.add_argument("--context-field", help="choice: text put before the question")
    p.add_argument("--tag-column", type=bounded(int), default=d.tag_column, help="conll: column number, -1 the last "
                   "(default: the last)")
    p.add_argument("--on-error", choices=("skip", "fail"), default=d.on_error,
                   help="malformed rows: skip them (listed) or stop (default %(default)s)")


def add_length_args(p: argparse.ArgumentParser, d: FinetuneConfig) -> None:
    """The window flags: tokens per example, QA's window overlap and answer length."""
    rule = FINETUNE_FIELDS
    p.add_argument("--max-length", type=rule["max_length"], default=d.max_length, help="tokens (default %(default)s)")
    p.add_argument("--stride", type=rule["stride"], default=d.stride,
                   help="qa window overlap, tokens; None: min(128, half of --max-length) (default %(default)s)")
    p.add_argument("--max-answer-len", type=rule["max_answer_len"], default=d.max_answer_len,
                   help="qa, tokens (default %(default)s)")


# ----------------------------------------------------------------------------------------------------------------
# minidistil distill


def add_distill(subparsers, name: str = "distill", help: str | None = None) -> argparse.ArgumentParser:
    """The `minidistil distill` sub-parser."""
    p = subparsers.add_parser(name, help=help or "distil a smaller DistilBERT student from a BERT/DistilBERT teacher",
                              description=distill_mod.__doc__.split("\n\n")[0],
                              epilog="Output: OUT holds the student (config.json, model.safetensors, tokenizer) and "
                                     "small logs (metrics.jsonl, loss_curve.png, report.json); the training state "
                                     "(checkpoints, the last two kept) lives apart in OUT.training, which --resume "
                                     "reads. One run at a time per folder (a lock).")
    d = DistillConfig()
    rule = DISTILL_FIELDS
    p.add_argument("--teacher", default=d.teacher, help=f"checkpoint folder or name (default {d.teacher})")
    p.add_argument("--out", dest="out_dir", default=d.out_dir, help="output folder (default %(default)s)")
    p.add_argument("--student-layers", type=rule["student_layers"], default=None,
                   help="student depth (default: half the teacher's with an MLM head; two thirds of a sentence "
                        "encoder's, rounded up)")
    p.add_argument("--layer-map", type=int_list, default=None,
                   help="teacher layers to copy, comma-separated, e.g. 0,2,4 (overrides --student-layers)")
    p.add_argument("--hidden-size", type=rule["hidden_size"], default=None,
                   help="student width H, at most the teacher's (default: the teacher's with an MLM head; two "
                        "thirds of a sentence encoder's heads, e.g. 256 for all-MiniLM-L6-v2). Narrower: every copied "
                        "weight is projected onto the teacher's H leading principal directions of its hidden states, "
                        "heads and FFN neurons with the largest projected norms kept; the embeddings are H wide")
    p.add_argument("--num-heads", type=rule["num_heads"], default=None,
                   help="student attention heads (default: H / the teacher's head width)")
    p.add_argument("--intermediate-size", type=rule["intermediate_size"], default=None,
                   help="student FFN width (default: the teacher's ratio to H)")
    p.add_argument("--width-loss", choices=("pca", "learned"), default=d.width_loss,
                   help="a narrow student's hidden-state and pooled terms: pca compares with the teacher's states "
                        "projected onto the basis; learned maps the student's to the teacher's width by a Linear "
                        "trained with it and not saved (default %(default)s)")
    p.add_argument("--pca-weighting", choices=("all", "equal", "last"), default=d.pca_weighting,
                   help="the hidden states whose principal directions give the basis: all (every layer's, as they "
                        "are), equal (every layer's, each scaled to count the same), last (the last layer's, which "
                        "the embeddings are pooled from) (default %(default)s)")
    p.add_argument("--pca-texts", type=rule["pca_texts"], default=d.pca_texts,
                   help="corpus sequences whose teacher hidden states give the basis (default %(default)s)")
    p.add_argument("--freeze-embeddings", action="store_true",
                   help="keep the student's word embeddings as copied from the teacher (projected when narrower): "
                        "no gradient, no update, so the tokens the corpus never shows stay consistent with the rest")
    p.add_argument("--teacher-int8", action=argparse.BooleanOptionalAction, default=None,
                   help="compute the training targets with an int8 copy of the teacher (minidistil quantize's "
                        "kernels, CPU only): a faster teacher forward, more updates in the time budget; the student "
                        "is still copied from the float32 weights and compared with the float32 teacher (default: "
                        "on where the CPU has AVX-512 VNNI and --device is cpu)")
    p.add_argument("--random-words", type=rule["random_words"], default=d.random_words,
                   help="share of each batch's sequences replaced by sequences of random whole words of the "
                        "vocabulary, so that the student sees the teacher on every word, not only the corpus' "
                        "(default %(default)s)")
    p.add_argument("--corpus", nargs="+", default=None,
                   help="text files, folders or .jsonl files (default: Python's help topics and stdlib docstrings "
                        "and the classic Unix fortune files)")
    p.add_argument("--text-field", default=d.text_field, help="JSONL field holding the text (default %(default)s)")
    p.add_argument("--held-out", type=rule["held_out"], default=d.held_out,
                   help="share of documents held out, in [0, 1) (default %(default)s)")
    p.add_argument("--max-len", type=rule["max_len"], default=None,
                   help="sequence length in tokens (default 128 with an MLM head, 64 for a sentence encoder)")
    p.add_argument("--batch-size", type=rule["batch_size"], default=d.batch_size,
                   help="sequences per batch (default %(default)s)")
    p.add_argument("--grad-accum", type=rule["grad_accum"], default=d.grad_accum,
                   help="batches per update (default %(default)s)")
    p.add_argument("--steps", type=rule["steps"], default=None, help="number of updates (default: fill --time-budget)")
    p.add_argument("--time-budget", type=rule["time_budget"], default=d.time_budget / 60,
                   help="minutes of training when --steps is not given: the updates and checkpoints; loading, the "
                        "corpus and the evaluation come on top (the report gives each). The number of updates is "
                        "re-planned as the speed changes, so the learning-rate decay ends with the budget "
                        "(default %(default)s)")
    p.add_argument("--lr", type=rule["lr"], default=None,
                   help=f"peak learning rate (default {distill_mod.LR:g}, {distill_mod.NARROW_LR:g} for a student "
                        "narrower than its teacher)")
    p.add_argument("--warmup", type=rule["warmup"], default=d.warmup,
                   help="warm-up share of the steps, in [0, 1) (default %(default)s)")
    p.add_argument("--weight-decay", type=rule["weight_decay"], default=d.weight_decay, help="(default %(default)s)")
    p.add_argument("--max-grad-norm", type=rule["max_grad_norm"], default=d.max_grad_norm, help="(default %(default)s)")
    for name, help_ in [("alpha-ce", "KL on softened MLM logits"), ("alpha-mlm", "masked-token cross-entropy"),
                        ("alpha-cos", "1 - cos of hidden states"), ("alpha-mse", "MSE of hidden states"),
                        ("alpha-pool-cos", "1 - cos of mean-pooled embeddings"),
                        ("alpha-pool-mse", "MSE of mean-pooled embeddings"),
                        ("alpha-sim", "KL between in-batch similarity rows of mean-pooled embeddings"),
                        ("alpha-layers", "layer-wise 1 - cos (the embedding output, and every student layer but "
                                         "the last against the teacher layer it copies)")]:
        p.add_argument(f"--{name}", type=NON_NEGATIVE, default=None,
                       help=f"weight of the {help_} term (default: {_alpha_defaults(True)} with an MLM head, else "
                            f"{_alpha_defaults(False)}, in the order of these flags)")
    p.add_argument("--temperature", type=POSITIVE, default=2.0, help="softmax temperature (default %(default)s)")
    p.add_argument("--sim-temperature", type=POSITIVE, default=LossWeights.sim_temperature,
                   help="temperature of the similarity term (default %(default)s)")
    p.add_argument("--kl-masked-only", action="store_true", help="KL on the masked positions only")
    p.add_argument("--seed", type=rule["seed"], default=d.seed, help="(default %(default)s)")
    p.add_argument("--checkpoint-every", type=rule["checkpoint_every"], default=d.checkpoint_every,
                   help="steps between checkpoints, 0: at the end only (default %(default)s)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in OUT from its newest sound checkpoint in OUT.training (a damaged one "
                            "is named and the one before it used)")
    again.add_argument("--overwrite", action="store_true",
                       help="start again in an OUT that holds a run (its checkpoints and logs are deleted)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the final comparison")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: teacher, student and optimiser on the GPU (numba.cuda kernels; default %(default)s)")
    p.set_defaults(run=run_distill)
    return p


ALPHAS = ("alpha_ce", "alpha_mlm", "alpha_cos", "alpha_mse", "alpha_pool_cos", "alpha_pool_mse", "alpha_sim",
          "alpha_layers")


def _alpha_defaults(mlm: bool) -> str:
    w = LossWeights.defaults(mlm)
    return "/".join(f"{getattr(w, k):g}" for k in ALPHAS)


def run_distill(args) -> int:
    """`minidistil distill`: errors (a diverged run included) reach minidistil.apps.cli.main, which prints them."""
    alphas = {k: getattr(args, k) for k in ALPHAS}
    weights = None
    if (any(v is not None for v in alphas.values()) or args.temperature != 2.0 or args.kl_masked_only
            or args.sim_temperature != LossWeights.sim_temperature):
        arch = (config_from_json_file(resolve(args.teacher) / "config.json").architectures or [""])[0]
        base = LossWeights.defaults(mlm=arch.endswith("ForMaskedLM"))
        weights = LossWeights(**{**asdict(base), **{k: v for k, v in alphas.items() if v is not None},
                                 "temperature": args.temperature, "kl_masked_only": args.kl_masked_only,
                                 "sim_temperature": args.sim_temperature})
    cfg = DistillConfig(teacher=args.teacher, out_dir=args.out_dir, student_layers=args.student_layers,
                        layer_map=args.layer_map, hidden_size=args.hidden_size, num_heads=args.num_heads,
                        intermediate_size=args.intermediate_size, width_loss=args.width_loss,
                        freeze_embeddings=args.freeze_embeddings, teacher_int8=args.teacher_int8,
                        random_words=args.random_words, pca_texts=args.pca_texts, pca_weighting=args.pca_weighting,
                        corpus=args.corpus, text_field=args.text_field,
                        held_out=args.held_out, max_len=args.max_len, batch_size=args.batch_size,
                        grad_accum=args.grad_accum, steps=args.steps, time_budget=args.time_budget * 60,
                        lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
                        max_grad_norm=args.max_grad_norm, weights=weights, seed=args.seed,
                        checkpoint_every=args.checkpoint_every, resume=args.resume, overwrite=args.overwrite,
                        progress=args.progress, evaluate=args.evaluate, device=args.device)
    distill(cfg.teacher, cfg.out_dir, config=cfg)
    return 0


# ----------------------------------------------------------------------------------------------------------------
# minidistil finetune


def add_finetune(sub, name: str = "finetune", help: str = "fine-tune on a task"):
    """The `minidistil finetune` sub-parser."""
    p = sub.add_parser(name, help=help, description=finetune_mod.__doc__.split("\n\n")[0],
                       epilog="example: minidistil finetune --task classification --model student --train "
                              "reviews.csv --text-field review --label-field stars --out sentiment. Output: OUT "
                              "holds the best model (config.json, model.safetensors, tokenizer) and small logs "
                              "(metrics.jsonl, training_curve.png, report.json); the training state (checkpoints, "
                              "the last two kept) lives apart in OUT.training, which --resume reads. One run at a "
                              "time per folder (a lock).")
    d = FinetuneConfig()
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--model", required=True, help="checkpoint folder or name to start from")
    p.add_argument("--train", required=True, help="training file (csv/tsv/jsonl/conll/squad) or IMDb folder; "
                   "resource:sentiment_small.tsv is the small sentiment set shipped with minidistil")
    p.add_argument("--validation", help="validation file (default: IMDb's test split, else 10%% of --train)")
    p.add_argument("--out", dest="out_dir", default=d.out_dir, help="output folder (default %(default)s)")
    add_data_args(p, d)
    p.add_argument("--labels", type=lambda s: s.split(","), help="label names in id order, comma-separated")
    rule = FINETUNE_FIELDS
    p.add_argument("--held-out", type=rule["held_out"], default=d.held_out,
                   help="share of --train held out for validation when there is no --validation (default %(default)s)")
    p.add_argument("--limit", type=rule["limit"], help="use N training examples (a sample chosen by --seed)")
    p.add_argument("--eval-limit", type=rule["eval_limit"],
                   help="evaluate on N validation examples (a fixed random sample)")
    add_length_args(p, d)
    for flag, help_ in (("epochs", ""), ("batch-size", ""),
                        ("lr", "peak learning rate"), ("warmup", "warm-up share of updates, in [0, 1)"),
                        ("weight-decay", ""), ("max-grad-norm", ""), ("seed", ""),
                        ("alpha", "weight of the teacher term, in [0, 1]"),
                        ("temperature", "distillation temperature"),
                        ("checkpoint-every", "updates between checkpoints (0: per epoch)")):
        dest = flag.replace("-", "_")
        p.add_argument(f"--{flag}", type=rule[dest], default=getattr(d, dest), help=f"{help_} (default %(default)s)")
    p.add_argument("--early-stopping", type=rule["early_stopping"], help="stop after N epochs without improvement")
    p.add_argument("--teacher", help="a checkpoint fine-tuned on the same task: task-level distillation")
    p.add_argument("--stop-after", type=rule["stop_after"],
                   help="end after N updates in all (continue later with --resume)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the run in OUT from its newest sound checkpoint in OUT.training")
    again.add_argument("--overwrite", action="store_true",
                       help="start again in an OUT that holds a run (its checkpoints and logs are deleted)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--device", default=d.device, choices=["cpu", "cuda"],
                   help="cuda: model, teacher and optimiser on the GPU (numba.cuda kernels; default %(default)s)")
    p.set_defaults(run=run_finetune)
    return p


def run_finetune(args) -> int:
    names = {f.name for f in FinetuneConfig.__dataclass_fields__.values()}
    cfg = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names})
    report = finetune(config=cfg)  # (minidistil.apps.cli.main has checked --device cuda: no GPU -> exit status 2)
    best = report.get("best_eval") or {}
    print(f"{report['task']}: {report['updates']} updates in {report['train_seconds']} s; best epoch "
          f"{report['best_epoch']}: {metrics_summary(best) if best else 'no validation'}; model in {report['out_dir']}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# minidistil quantize


def add_quantize(subparsers, name: str, help: str):
    """The `minidistil quantize` sub-parser."""
    p = subparsers.add_parser(name, help=help, description="Quantise a checkpoint to int8 for CPU inference: Linear "
                              "weights int8 per output channel, word embeddings int8 per row, activations quantised "
                              "per row at run time. OUT loads with --model like any checkpoint folder.")
    p.add_argument("src", metavar="SRC", help="checkpoint folder or name in the weights folder")
    p.add_argument("out", metavar="OUT", help="folder to write the quantised checkpoint to (new or empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files, "
                   "replacing the model's files there")
    p.set_defaults(run=run_quantize)
    return p


def run_quantize(args) -> int:
    r = quantize_folder(args.src, args.out, overwrite=args.overwrite)
    n = ", ".join(f"{v} {k}" for k, v in sorted(r["quantized"].items()))
    print(f"{r['out']}: {r['architecture']} with {n} layers int8; model.safetensors "
          f"{r['int8_bytes'] / 1e6:.1f} MB (float32: {r['float32_bytes'] / 1e6:.1f} MB, "
          f"{r['int8_bytes'] / max(r['float32_bytes'], 1):.2f}x)")
    return 0
