"""Run configuration: one frozen dataclass, presets, and a CLI generated from its fields.

The dataclass defaults are the `fast` preset, the recommended way to train. `baseline` is the
documented HF Seq2SeqTrainer recipe, exactly; `smoke` trains a tiny model on generated data
offline in about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """An option value that cannot work; the message names the option."""


# What a resume may do with an option whose value differs from the checkpoint's
# (`checkpoint.check_compatible`):
FREE = "free"  # it does not change what is computed: any value, no questions asked
MATH = "math"  # it changes the math: refused unless --force-resume, which then applies the new value
# the checkpoint cannot take another value (weights or optimizer state of another shape): always refused
FIXED = "fixed"


def _opt(default, help: str, choices: tuple | None = None, resume: str = MATH, none_is_a_value: bool = False):
    """A field with its --help text, accepted choices and resume rule. On the command line 'none' sets an
    optional field to None (its default behaviour), unless `none_is_a_value` (then it is the text 'none')."""
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "resume": resume, "none_is_a_value": none_is_a_value},
    )


THREADS_HELP = ("CPU threads per process (CPU runs only): auto = 1 for a small model, else the cores other "
                "processes leave idle; or a number (default: auto)")  # fmt: skip
DATA_CACHE_HELP = ("where the read, checked and tokenized data is kept for the next run, keyed by the data "
                   "and the settings that shape it: a folder, or 'none' (default: $FLANT5_IMDB_DATA_CACHE, "
                   "else ~/.cache/flant5_imdb/data)")  # fmt: skip
NO_EVAL = "none"  # --eval-split none: no evaluation at all


def count_or_auto(option: str, setting: str | int) -> int | None:
    """`setting` of `option` (`--threads`, `--preprocess-workers`) as a count, or None for `auto`.

    Raises:
        ConfigError: neither `auto` nor a whole number of at least 1.
    """
    if str(setting) == "auto":
        return None
    if not str(setting).isdigit() or int(setting) < 1:
        raise ConfigError(f"{option} {setting!r}: auto, or a whole number of at least 1")
    return int(setting)


@dataclass(frozen=True)
class TrainConfig:
    # Model
    model: str = _opt("google/flan-t5-base", "Hub id or local folder for from_pretrained", resume=FIXED)
    model_config: str | None = _opt(
        None,
        "named architecture with random init instead of --model weights",
        ("flan-t5-small", "flan-t5-base", "flan-t5-large", "flan-t5-xl", "tiny"),
        resume=FIXED,
    )
    tokenizer: str | None = _opt(
        None,
        "tokenizer (Hub id or folder; default: --model); 'word-level' trains one on the training texts",
        resume=FIXED,
    )
    attn_implementation: str = _opt("sdpa", "attention implementation", ("eager", "sdpa", "flex_attention"))
    dropout: float | None = _opt(None, "dropout rate (default: the model's own, 0.1 for flan-t5)")
    # Data
    data: str = _opt(
        "stanfordnlp/imdb",
        "Hub id, parquet/csv/jsonl file or folder, train=PATH,test=PATH, aclImdb/, or synthetic[:N]",
    )
    data_config: str | None = _opt(
        None, "the configuration of a Hub dataset (load_dataset's second argument)"
    )
    text_column: str = _opt("text", "the column holding the texts")
    label_column: str = _opt("label", "the column holding the labels")
    train_split: str = _opt("train", "the split to train on")
    labels: str | None = _opt(None, "the classes, in order, as the label column writes them ('a,b,c'; a "
                              "comma inside a name is written \\,); any other label is then an error "
                              "(default: taken from the training split)")  # fmt: skip
    skip_bad_rows: bool = _opt(
        False, "drop (and report) invalid rows instead of stopping with an error", resume=FREE
    )
    data_cache: str | None = _opt(None, DATA_CACHE_HELP, resume=FREE)
    preprocess_workers: str = _opt(
        "auto", "processes that tokenize the data: a number, or auto = the CPU cores this process may use, "
        "one per 10,000 rows at most", resume=FREE,
    )  # fmt: skip
    verbalizer: str = _opt("auto", "the text the model writes for each class: auto = digits for IMDB and "
                           "integer labels, the label names otherwise; digits ('0'/'1' for IMDB, the "
                           "baseline's); words ('negative'/'positive' for IMDB, the names otherwise); or "
                           "'T1,T2,...'")  # fmt: skip
    prompt: str | None = _opt(None, "prompt: 'none', 'flan', or a template containing {text}")
    max_source_length: int = _opt(512, "truncate texts to this many tokens")
    pad_to_max_length: bool = _opt(False, "pad every source to --max-source-length (the baseline's padding)")
    pad_to_multiple_of: int = _opt(
        8, "dynamic padding rounds the batch length up to a multiple of this", resume=FREE
    )
    group_by_length: bool = _opt(True, "length-grouped batches (less padding); off = plain shuffle")
    max_train_samples: int | None = _opt(None, "train on a random subset of this many examples")
    max_eval_samples: int | None = _opt(
        None, "evaluate on a random subset of this many examples", resume=FREE
    )
    eval_split: str | None = _opt(
        None,
        "split to evaluate on, one the data has (default: test, else validation, else "
        "--validation-split of train); 'none': no evaluation",
        resume=FREE,
        none_is_a_value=True,
    )
    validation_split: float = _opt(
        0.1,
        "where the data has no test or validation split: the fraction of train held out "
        "(seeded, stratified by label) to evaluate on; 0 = no evaluation",
    )
    # Optimisation
    batch_size: int = _opt(8, "micro-batch per process")
    grad_accum: int = _opt(
        1, "micro-batches per optimizer step (effective batch = batch-size x grad-accum x processes)"
    )
    lr: float = _opt(3e-4, "peak learning rate")
    epochs: int = _opt(2, "passes over the training set")
    max_steps: int | None = _opt(
        None, "stop after this many optimizer steps (overrides --epochs for the schedule)"
    )
    optim: str = _opt("adamw", "optimizer", ("adamw", "adamw8bit", "paged_adamw8bit"), resume=FIXED)
    adam_beta1: float = _opt(0.9, "Adam beta1")
    adam_beta2: float = _opt(0.999, "Adam beta2")
    adam_eps: float = _opt(1e-8, "Adam epsilon")
    weight_decay: float = _opt(0.0, "decoupled weight decay (not applied to layer norms)")
    schedule: str = _opt("linear", "learning-rate schedule", ("linear", "constant"))
    warmup_steps: int = _opt(0, "linear warm-up steps")
    max_grad_norm: float | None = _opt(
        1.0, "clip the gradient norm to this (the Trainer's default, 1.0); 'none' to turn off"
    )
    # Free: the same update as the standard step (see optim.UpdateInBackward), so a resume may switch it.
    optimizer_in_backward: bool = _opt(
        False, "update each parameter the moment its gradient is complete and free that gradient, so the "
        "model's gradients are never all held at once (one process, --grad-accum 1, --max-grad-norm none, "
        "no --compile)", resume=FREE,
    )  # fmt: skip
    precision: str = _opt(
        "bf16", "bf16 autocast or fp32 (fp16 is refused: T5 overflows in fp16)", ("bf16", "fp32")
    )
    seed: int = _opt(42, "seed for initialisation, data order and dropout")
    # Evaluation, logging, output
    # The kernel path (flant5_imdb.kernels): each flag runs eagerly, with the same results, off CUDA
    compile: bool = _opt(
        False, "torch.compile the training forward/backward (CUDA; eager elsewhere)", resume=FREE
    )
    cuda_graphs: bool = _opt(False, "with --compile: replay the compiled forward/backward as CUDA graphs, "
                             "one per length bucket (torch.compile mode reduce-overhead; needs "
                             "--bucket-multiple)", resume=FREE)  # fmt: skip
    bucket_multiple: int | None = _opt(
        None,
        "pad sources to a multiple of N up to --max-source-length: a fixed set of shapes for compiled graphs",
        resume=FREE,
    )
    fused_norm: bool = _opt(
        False, "T5 RMSNorm as one fused kernel (CUDA; the reference elsewhere)", resume=FREE
    )
    activation_checkpointing: bool = _opt(
        False,
        "recompute each T5 block's activations in the backward instead of keeping them: "
        "about a third more compute, far less activation memory (same results)",
        resume=FREE,
    )
    bias_kernel: bool = _opt(
        False,
        "encoder self-attention through flex_attention with T5's relative-position bias read inside "
        "the kernel (CUDA; the reference elsewhere); no attention-probability dropout there",
    )
    bias_lookup: str = _opt(
        "table",
        "with --bias-kernel: how the kernel reads T5's bias: 'table' = the bucket table per score "
        "(backward: atomics onto the table), 'gathered' = the [heads, L, L] bias gathered once per forward",
        ("table", "gathered"),
        resume=FREE,
    )
    eval_mode: str = _opt(
        "score",
        "score = compare label log-likelihoods in one pass; generate = greedy decoding as the baseline did",
        ("score", "generate"),
        resume=FREE,
    )
    eval_batch_size: int = _opt(64, "evaluation batch per process", resume=FREE)
    eval_every: int | None = _opt(None, "also evaluate every N optimizer steps", resume=FREE)
    log_every: int = _opt(
        50, "write a line to metrics.jsonl (and sync the loss to the host) every N steps", resume=FREE
    )
    output_dir: str = _opt(
        "runs/flant5-imdb",
        "where metrics, evaluation, checkpoints, the final model and summary go",
        resume=FREE,
    )
    report_to: str = _opt(
        "none", "also log metrics to accelerate's tracker", ("none", "tensorboard", "wandb"), resume=FREE
    )
    push_to_hub: str | None = _opt(
        None, "upload the final model and a generated model card to this Hub repo", resume=FREE
    )
    model_card_only: bool = _opt(
        False, "with --push-to-hub: write final/README.md but upload nothing", resume=FREE
    )
    final_eval: bool = _opt(True, "evaluate at the end of training", resume=FREE)
    save_model: bool = _opt(True, "save the final model and tokenizer to OUTPUT_DIR/final", resume=FREE)
    # Checkpoints and faults
    save_every: int | None = _opt(
        None,
        "also checkpoint every N optimizer steps (always at each epoch end, at the end, and on "
        "SIGTERM/SIGINT)",
        resume=FREE,
    )
    keep_checkpoints: int = _opt(2, "keep the newest K complete checkpoints; 0 writes none", resume=FREE)
    resume: str | None = _opt(
        None,
        "'auto' = the latest complete checkpoint in --output-dir (fresh start if none), or a checkpoint "
        "folder",
        resume=FREE,
    )
    force_resume: bool = _opt(
        False,
        "resume even where the config changes the math (batch size, lr, seed, data, ...), "
        "applying the new values",
        resume=FREE,
    )
    overwrite_output_dir: bool = _opt(
        False,
        "start afresh in an --output-dir that holds another run: its contents are deleted first",
        resume=FREE,
    )
    max_bad_steps: int = _opt(
        10,
        "stop after this many updates in a row with a non-finite loss or gradient norm (each is skipped)",
        resume=FREE,
    )
    threads: str = _opt("auto", THREADS_HELP, resume=FREE)

    def __post_init__(self):
        if self.precision == "fp16":
            raise ConfigError(
                "--precision fp16 is refused: T5 overflows in fp16 (transformers #5651, #14189); use bf16 or "
                "fp32"
            )
        for name in ("threads", "preprocess_workers"):
            count_or_auto(f"--{flag(name)}", str(getattr(self, name)))
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"--{flag(f.name)} {value!r}: choose from {', '.join(choices)}")
        for name in (
            "batch_size",
            "grad_accum",
            "epochs",
            "eval_batch_size",
            "log_every",
            "pad_to_multiple_of",
            "max_bad_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in (
            "max_steps",
            "max_train_samples",
            "max_eval_samples",
            "eval_every",
            "save_every",
            "bucket_multiple",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.keep_checkpoints < 0:
            raise ConfigError(f"--keep-checkpoints must be 0 or more, got {self.keep_checkpoints}")
        if self.max_source_length < 2:  # the EOS takes one: at 1 the model would see no text at all
            raise ConfigError(
                f"--max-source-length must be at least 2 (a token of text and the end of it), got "
                f"{self.max_source_length}"
            )
        if not 0 <= self.seed < 2**32:  # numpy's and torch's seeds are 32-bit
            raise ConfigError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.cuda_graphs and not (self.compile and self.bucket_multiple):
            raise ConfigError(
                "--cuda-graphs needs --compile and --bucket-multiple (one graph per length bucket)"
            )
        self._check_optimizer_in_backward()
        if self.bias_kernel and self.attn_implementation == "flex_attention":
            raise ConfigError(
                "--bias-kernel replaces the encoder's attention: use it with --attn-implementation sdpa or "
                "eager"
            )
        _check_range("lr", self.lr, low=0.0, low_open=True)
        _check_range("adam_eps", self.adam_eps, low=0.0, low_open=True)
        _check_range("weight_decay", self.weight_decay, low=0.0)
        _check_range("warmup_steps", self.warmup_steps, low=0)
        _check_range("validation_split", self.validation_split, low=0.0, high=1.0)
        _check_range("adam_beta1", self.adam_beta1, low=0.0, high=1.0)
        _check_range("adam_beta2", self.adam_beta2, low=0.0, high=1.0)
        if self.dropout is not None:
            _check_range("dropout", self.dropout, low=0.0, high=1.0)
        if self.max_grad_norm is not None:
            _check_range(
                "max_grad_norm", self.max_grad_norm, low=0.0, low_open=True, also="or 'none' for no clipping"
            )
        out = Path(self.output_dir)
        for folder in (out, *out.parents):
            if folder.exists():
                if not folder.is_dir():
                    raise ConfigError(f"--output-dir {self.output_dir}: {folder} is a file, not a folder")
                break

    def _check_optimizer_in_backward(self) -> None:
        """What --optimizer-in-backward cannot do with the standard step's math, refused by name (more than
        one process is refused at set-up, where the launch is known)."""
        if not self.optimizer_in_backward:
            return
        if self.grad_accum > 1:
            raise ConfigError(
                f"--optimizer-in-backward with --grad-accum {self.grad_accum}: each parameter is updated "
                "as its gradient arrives, before a window's micro-batches could be summed; use "
                "--grad-accum 1 (a larger --batch-size for a larger batch)"
            )
        if self.max_grad_norm is not None:
            raise ConfigError(
                f"--optimizer-in-backward with --max-grad-norm {self.max_grad_norm:g}: clipping by the "
                "global norm needs every gradient before the first update; add --max-grad-norm none"
            )
        if self.compile:
            raise ConfigError(
                "--optimizer-in-backward with --compile: the compiled backward hands over every gradient at "
                "once, so nothing would be saved; drop one of the two"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1, or an error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def resume_kind(name: str) -> str:
    """FREE, MATH or FIXED: what a resume may do with another value of option `name` (see the constants)."""
    return TrainConfig.__dataclass_fields__[name].metadata["resume"]


def _check_range(name: str, value, *, low, high=None, low_open=False, also=""):
    """A finite number >= low (> low if low_open) and < high: else a ConfigError naming the flag."""
    ok = (
        math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (high is None or value < high)
    )
    if not ok:
        want = (
            f"in [{low:g}, {high:g})"
            if high is not None
            else ("a positive finite number" if low_open else f"{low:g} or more")
        )
        raise ConfigError(f"--{flag(name)} must be {want}{' ' + also if also else ''}, got {value}")


# fmt: off
PRESETS: dict[str, dict] = {
    # The recommended configuration: the baseline's math, in bf16 with length-grouped dynamic padding.
    "fast": {},
    # The documented HF Seq2SeqTrainer recipe, exactly (Trainer defaults included: fused AdamW,
    # clipping at 1.0, no warm-up, no weight decay); its evaluation used greedy generation.
    "baseline": dict(
        lr=3e-4, batch_size=8, grad_accum=1, seed=42, epochs=2, schedule="linear", warmup_steps=0,
        optim="adamw", adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, weight_decay=0.0, max_grad_norm=1.0,
        precision="fp32", pad_to_max_length=True, max_source_length=512, group_by_length=False,
        verbalizer="digits", prompt=None, eval_mode="generate", output_dir="runs/baseline",
    ),
    # `fast` plus the kernel path (flant5_imdb.kernels): length buckets of 64, fused RMSNorm, the
    # relative-bias attention kernel, torch.compile with CUDA graphs. Off CUDA every flag falls
    # back to eager PyTorch. Not the default until the GPU bench has measured it (bench/NOTES.md).
    "kernels": dict(bucket_multiple=64, fused_norm=True, bias_kernel=True, compile=True, cuda_graphs=True,
                    output_dir="runs/kernels"),
    # A tiny random-init T5 on generated reviews: trains offline on a laptop CPU in about a minute.
    "smoke": dict(
        model_config="tiny", tokenizer="word-level", data="synthetic:2000", precision="fp32", batch_size=16,
        lr=2e-3, epochs=3, max_source_length=128, eval_batch_size=128, log_every=25, output_dir="runs/smoke",
    ),
}
# fmt: on


def flag(name: str) -> str:
    return name.replace("_", "-")


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


TRAINER_SPELLINGS = {  # the HF Trainer's names (and a few others') for this project's options
    "--learning-rate": "--lr",
    "--per-device-train-batch-size": "--batch-size",
    "--train-batch-size": "--batch-size",
    "--per-device-eval-batch-size": "--eval-batch-size",
    "--num-train-epochs": "--epochs",
    "--gradient-accumulation-steps": "--grad-accum",
    "--lr-scheduler-type": "--schedule",
    "--adam-epsilon": "--adam-eps",
    "--logging-steps": "--log-every",
    "--save-steps": "--save-every",
    "--eval-steps": "--eval-every",
    "--save-total-limit": "--keep-checkpoints",
    "--gradient-checkpointing": "--activation-checkpointing",
    "--resume-from-checkpoint": "--resume",
    "--model-name-or-path": "--model",
    "--dataset-name": "--data",
    "--train-file": "--data",
    "--max-seq-length": "--max-source-length",
    "--bf16": "--precision bf16",
    "--fp16": "--precision bf16 (fp16 overflows in T5)",
    "--tf32": "nothing: TF32 matmuls are on where the GPU has them",
}


class Parser(argparse.ArgumentParser):
    """argparse, with a one-line error: an unknown option is answered with the option meant (a typo, an
    underscore for a dash, or the HF Trainer's name for it), any other mistake without the whole usage."""

    def error(self, message: str):
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            given = next(
                (a for a in unknown.group(1).split() if a.startswith("-")), unknown.group(1).split()[0]
            )
            message = f"unknown option {given}" if given.startswith("-") else f"unexpected argument {given!r}"
            if given.startswith("-"):
                message += meant(given.split("=")[0], [s for a in self._actions for s in a.option_strings])
        # Every process of a launch parses the same command line: the first one says it for all.
        self.exit(2, f"error: {message} ({self.prog} --help lists every option)\n" if speaker() else None)


def speaker() -> bool:
    """Whether this process speaks for all: the first of a launch (a launcher sets RANK), or the only one."""
    return int(os.environ.get("RANK", "0")) == 0


def closes_launch(main):
    """A script's `main(argv)` that may run as one process of `accelerate launch`: the launch's process
    group is closed before the process exits, as training's `end_training` does (left to the
    interpreter's exit, gloo's threads can abort a finished process). Nothing is imported for it where
    torch never was (an option refused before the heavy imports)."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        finally:
            if "torch" in sys.modules:
                from flant5_imdb.accel import close_processes

                close_processes()

    return run


def meant(given: str, known: list[str]) -> str:
    """'; did you mean --x?' for an unknown option, or '' where nothing is close."""
    dashed = given.replace("_", "-")
    if dashed in known:
        return f"; did you mean {dashed}?"
    if dashed in TRAINER_SPELLINGS:
        return f"; this project calls it {TRAINER_SPELLINGS[dashed]}"
    close = difflib.get_close_matches(dashed, known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


# --help's sections, in order: every TrainConfig field is in exactly one (a test checks).
GROUPS = {
    "data": ("data", "data_config", "text_column", "label_column", "labels", "train_split", "eval_split",
             "validation_split", "skip_bad_rows", "data_cache", "preprocess_workers", "max_train_samples",
             "max_eval_samples"),
    "model and targets": ("model", "model_config", "tokenizer", "attn_implementation", "dropout",
                          "verbalizer", "prompt", "max_source_length"),
    "training": ("batch_size", "grad_accum", "lr", "epochs", "max_steps", "optim", "adam_beta1", "adam_beta2",
                 "adam_eps", "weight_decay", "schedule", "warmup_steps", "max_grad_norm",
                 "optimizer_in_backward", "precision", "seed", "group_by_length", "pad_to_max_length",
                 "pad_to_multiple_of", "max_bad_steps", "threads"),
    "evaluation": ("eval_mode", "eval_batch_size", "eval_every", "final_eval"),
    "output and checkpoints": ("output_dir", "log_every", "report_to", "save_model", "save_every",
                               "keep_checkpoints", "resume", "force_resume", "overwrite_output_dir"),
    "kernel path (GPU)": ("compile", "cuda_graphs", "bucket_multiple", "fused_norm",
                          "activation_checkpointing", "bias_kernel", "bias_lookup"),
    "Hugging Face Hub": ("push_to_hub", "model_card_only"),
}  # fmt: skip


def build_parser(defaults: TrainConfig | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one --flag per TrainConfig field (and --preset)."""
    defaults = defaults or TrainConfig()
    p = Parser(
        description="Fine-tune FLAN-T5 to classify text (IMDB sentiment by default, or any labelled data)."
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="fast",
        help="starting values for every option (default: fast)",
    )
    hints = typing.get_type_hints(TrainConfig)
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    sections = {name: groups[title] for title, names in GROUPS.items() for name in names}
    for f in dataclasses.fields(TrainConfig):
        group = sections[f.name]
        kind = hints[f.name]
        optional = isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind)
        base = next(a for a in typing.get_args(kind) if a is not type(None)) if optional else kind
        default = getattr(defaults, f.name)
        text = f.metadata["help"]
        if "default" not in text and default is not None:  # each default said once; none where there is none
            text += " (default: %(default)s)"
        kw = dict(default=default, help=text, dest=f.name)
        if base is bool:
            group.add_argument(f"--{flag(f.name)}", action=argparse.BooleanOptionalAction, **kw)
            continue
        if f.metadata.get("choices"):
            # Shown, not enforced here: TrainConfig refuses other values with a reason (fp16 with why).
            kw["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
        none_is_none = optional and not f.metadata.get("none_is_a_value")
        group.add_argument(f"--{flag(f.name)}", type=_parse_optional(base) if none_is_none else base, **kw)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Preset first, then explicit flags on top of it.

    Raises:
        ConfigError: a value that cannot work (fp16, an unknown choice, a non-positive size).
    """
    pre = Parser(add_help=False)
    pre.add_argument("--preset", choices=tuple(PRESETS), default="fast")
    known, _ = pre.parse_known_args(argv)
    defaults = preset(known.preset)
    args = vars(build_parser(defaults).parse_args(argv))
    args.pop("preset")
    return TrainConfig(**args)


def preset(name: str, **overrides) -> TrainConfig:
    """The named preset's config, with `overrides` on top."""
    if name not in PRESETS:
        raise ConfigError(f"--preset {name!r}: choose from {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})
