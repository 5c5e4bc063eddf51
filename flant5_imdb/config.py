"""Run configuration: one frozen dataclass, presets, and a CLI generated from its fields.

The dataclass defaults are the `fast` preset, the recommended way to train. `baseline` is the
documented HF Seq2SeqTrainer recipe, exactly; `smoke` trains a tiny model on generated data
offline in about a minute.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from flant5_imdb.launch import speaker


class ConfigError(ValueError):
    """An option value that cannot work; the message names the option."""


# What a resume may do with an option whose value differs from the checkpoint's
# (`checkpoint.check_compatible`):
FREE = "free"  # it does not change what is computed: any value, no questions asked
MATH = "math"  # it changes the math: refused unless --force-resume, which then applies the new value
# the checkpoint cannot take another value (weights or optimizer state of another shape): always refused
FIXED = "fixed"


# --help's sections, in this order; each option names its own (`group`).
DATA, MODEL, TRAINING, EVALUATION = "data", "model and targets", "training", "evaluation"
OUTPUT, KERNELS, HUB = "output and checkpoints", "kernel path (GPU)", "Hugging Face Hub"
SECTIONS = (DATA, MODEL, TRAINING, EVALUATION, OUTPUT, KERNELS, HUB)


@dataclass(frozen=True)
class Bounds:
    """The values a numeric option takes: from `low` (above it if `low_open`) to below `high`; `why` is said
    after the range in the refusal. None (an optional option's default behaviour) is always taken."""

    low: float
    high: float | None = None
    low_open: bool = False
    why: str = ""

    def check(self, name: str, value) -> None:
        """Raises ConfigError naming the flag, the range and the value given, where `value` is outside."""
        if value is None or (
            math.isfinite(value)
            and (value > self.low if self.low_open else value >= self.low)
            and (self.high is None or value < self.high)
        ):
            return
        raise ConfigError(f"--{flag(name)} must be {self.wanted(isinstance(value, int))}, got {value}")

    def wanted(self, integer: bool) -> str:
        """The range in words ('at least 1', 'in [0, 1)', 'a positive finite number', ...), and why."""
        if self.high is not None:
            high = f"2**{int(math.log2(self.high))}" if self.high >= 2**16 else f"{self.high:g}"
            want = f"in [{self.low:g}, {high})"
        elif self.low_open:
            want = "a positive finite number"
        elif integer and self.low >= 1:
            want = f"at least {self.low:g}"
        else:
            want = f"{self.low:g} or more"
        return f"{want} {self.why}" if self.why else want


def _opt(default, help: str, choices: tuple | None = None, resume: str = MATH, none_is_a_value: bool = False,
         *, group: str, bounds: Bounds | None = None):  # fmt: skip
    """A field with its --help text and section, accepted choices or bounds, and resume rule. On the
    command line 'none' sets an optional field to None (its default behaviour), unless `none_is_a_value`
    (then it is the text 'none')."""
    return field(default=default, metadata=dict(help=help, choices=choices, resume=resume, group=group,
                                                bounds=bounds, none_is_a_value=none_is_a_value))  # fmt: skip


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
    model: str = _opt(
        "google/flan-t5-base",
        "Hub id or local folder for from_pretrained",
        resume=FIXED,
        group=MODEL,
    )
    model_config: str | None = _opt(
        None,
        "named architecture with random init instead of --model weights",
        ("flan-t5-small", "flan-t5-base", "flan-t5-large", "flan-t5-xl", "tiny"),
        resume=FIXED,
        group=MODEL,
    )
    tokenizer: str | None = _opt(
        None,
        "tokenizer (Hub id or folder; default: --model); 'word-level' trains one on the training texts",
        resume=FIXED,
        group=MODEL,
    )
    attn_implementation: str = _opt(
        "sdpa", "attention implementation", ("eager", "sdpa", "flex_attention"), group=MODEL
    )
    dropout: float | None = _opt(
        None,
        "dropout rate (default: the model's own, 0.1 for flan-t5)",
        group=MODEL,
        bounds=Bounds(0.0, 1.0),
    )
    data: str = _opt(
        "stanfordnlp/imdb",
        "Hub id, parquet/csv/jsonl file or folder, train=PATH,test=PATH, aclImdb/, or synthetic[:N]",
        group=DATA,
    )
    data_config: str | None = _opt(
        None, "the configuration of a Hub dataset (load_dataset's second argument)", group=DATA
    )
    text_column: str = _opt("text", "the column holding the texts", group=DATA)
    label_column: str = _opt("label", "the column holding the labels", group=DATA)
    train_split: str = _opt("train", "the split to train on", group=DATA)
    labels: str | None = _opt(None, "the classes, in order, as the label column writes them ('a,b,c'; a "
                              "comma inside a name is written \\,); any other label is then an error "
                              "(default: taken from the training split)", group=DATA)  # fmt: skip
    skip_bad_rows: bool = _opt(
        False, "drop (and report) invalid rows instead of stopping with an error", resume=FREE, group=DATA
    )
    data_cache: str | None = _opt(None, DATA_CACHE_HELP, resume=FREE, none_is_a_value=True, group=DATA)
    preprocess_workers: str = _opt(
        "auto", "processes that tokenize the data: a number, or auto = the CPU cores this process may use, "
        "one per 10,000 rows at most", resume=FREE, group=DATA,
    )  # fmt: skip
    verbalizer: str = _opt("auto", "the text the model writes for each class: auto = digits for 0/1 "
                           "(negative/positive) labels such as IMDB's and for integer labels, the label "
                           "names otherwise; digits ('0'/'1' there, the baseline's); words "
                           "('negative'/'positive' there, the names otherwise); or 'T1,T2,...'",
                           group=MODEL)  # fmt: skip
    prompt: str | None = _opt(
        None,
        "prompt: 'none', 'flan' (asks the text's sentiment, negative or positive), or a template "
        "containing {text}",
        group=MODEL,
    )
    max_source_length: int = _opt(
        512,
        "truncate texts to this many tokens",
        group=MODEL,
        bounds=Bounds(2, why="(a token of text and the end of it)"),
    )
    pad_to_max_length: bool = _opt(
        False, "pad every source to --max-source-length (the baseline's padding)", group=TRAINING
    )
    pad_to_multiple_of: int = _opt(
        8,
        "dynamic padding rounds the batch length up to a multiple of this",
        resume=FREE,
        group=TRAINING,
        bounds=Bounds(1),
    )
    group_by_length: bool = _opt(
        True, "length-grouped batches (less padding); off = plain shuffle", group=TRAINING
    )
    max_train_samples: int | None = _opt(
        None, "train on a random subset of this many examples", group=DATA, bounds=Bounds(1)
    )
    max_eval_samples: int | None = _opt(
        None, "evaluate on a random subset of this many examples", resume=FREE, group=DATA, bounds=Bounds(1)
    )
    eval_split: str | None = _opt(
        None,
        "split to evaluate on, one the data has (default: test, else validation, else "
        "--validation-split of train); 'none': no evaluation",
        resume=FREE,
        none_is_a_value=True,
        group=DATA,
    )
    validation_split: float = _opt(
        0.1,
        "where the data has no test or validation split: the fraction of train held out "
        "(seeded, stratified by label) to evaluate on; 0 = no evaluation",
        group=DATA,
        bounds=Bounds(0.0, 1.0),
    )
    batch_size: int = _opt(8, "micro-batch per process", group=TRAINING, bounds=Bounds(1))
    grad_accum: int = _opt(
        1,
        "micro-batches per optimizer step (effective batch = batch-size x grad-accum x processes)",
        group=TRAINING,
        bounds=Bounds(1),
    )
    lr: float = _opt(3e-4, "peak learning rate", group=TRAINING, bounds=Bounds(0.0, low_open=True))
    epochs: int = _opt(2, "passes over the training set", group=TRAINING, bounds=Bounds(1))
    max_steps: int | None = _opt(
        None,
        "stop after this many optimizer steps (overrides --epochs for the schedule)",
        group=TRAINING,
        bounds=Bounds(1),
    )
    optim: str = _opt(
        "adamw", "optimizer", ("adamw", "adamw8bit", "paged_adamw8bit"), resume=FIXED, group=TRAINING
    )
    adam_beta1: float = _opt(0.9, "Adam beta1", group=TRAINING, bounds=Bounds(0.0, 1.0))
    adam_beta2: float = _opt(0.999, "Adam beta2", group=TRAINING, bounds=Bounds(0.0, 1.0))
    adam_eps: float = _opt(1e-8, "Adam epsilon", group=TRAINING, bounds=Bounds(0.0, low_open=True))
    weight_decay: float = _opt(
        0.0, "decoupled weight decay (not applied to layer norms)", group=TRAINING, bounds=Bounds(0.0)
    )
    schedule: str = _opt("linear", "learning-rate schedule", ("linear", "constant"), group=TRAINING)
    warmup_steps: int = _opt(0, "linear warm-up steps", group=TRAINING, bounds=Bounds(0))
    max_grad_norm: float | None = _opt(
        1.0,
        "clip the gradient norm to this (the Trainer's default, 1.0); 'none' to turn off",
        group=TRAINING,
        bounds=Bounds(0.0, low_open=True, why="or 'none' for no clipping"),
    )
    # Free: the same update as the standard step (see optim.UpdateInBackward), so a resume may switch it.
    optimizer_in_backward: bool = _opt(
        False, "update each parameter the moment its gradient is complete and free that gradient, so the "
        "model's gradients are never all held at once (one process, --grad-accum 1, --max-grad-norm none, "
        "no --compile)", resume=FREE, group=TRAINING,
    )  # fmt: skip
    precision: str = _opt(
        "bf16",
        "bf16 autocast or fp32 (fp16 is refused: T5 overflows in fp16)",
        ("bf16", "fp32"),
        group=TRAINING,
    )
    seed: int = _opt(  # numpy's and torch's seeds are 32-bit
        42, "seed for initialisation, data order and dropout", group=TRAINING, bounds=Bounds(0, 2**32)
    )
    # The kernel path (flant5_imdb.kernels): each flag runs eagerly, with the same results, off CUDA
    compile: bool = _opt(
        False,
        "torch.compile the training forward/backward (CUDA; eager elsewhere)",
        resume=FREE,
        group=KERNELS,
    )
    cuda_graphs: bool = _opt(False, "with --compile: replay the compiled forward/backward as CUDA graphs, "
                             "one per length bucket (torch.compile mode reduce-overhead; needs "
                             "--bucket-multiple)", resume=FREE, group=KERNELS)  # fmt: skip
    bucket_multiple: int | None = _opt(
        None,
        "pad sources to a multiple of N up to --max-source-length: a fixed set of shapes for compiled graphs",
        resume=FREE,
        group=KERNELS,
        bounds=Bounds(1),
    )
    fused_norm: bool = _opt(
        False,
        "T5 RMSNorm as one fused kernel (CUDA; the reference elsewhere)",
        resume=FREE,
        group=KERNELS,
    )
    activation_checkpointing: bool = _opt(
        False,
        "recompute each T5 block's activations in the backward instead of keeping them: "
        "about a third more compute, far less activation memory (same results)",
        resume=FREE,
        group=KERNELS,
    )
    bias_kernel: bool = _opt(
        False,
        "encoder self-attention through flex_attention with T5's relative-position bias read inside "
        "the kernel (CUDA; the reference elsewhere); no attention-probability dropout there",
        group=KERNELS,
    )
    bias_lookup: str = _opt(
        "table",
        "with --bias-kernel: how the kernel reads T5's bias: 'table' = the bucket table per score "
        "(backward: atomics onto the table), 'gathered' = the [heads, L, L] bias gathered once per forward",
        ("table", "gathered"),
        resume=FREE,
        group=KERNELS,
    )
    eval_mode: str = _opt(
        "score",
        "score = compare label log-likelihoods in one pass; generate = greedy decoding as the baseline did",
        ("score", "generate"),
        resume=FREE,
        group=EVALUATION,
    )
    eval_batch_size: int = _opt(
        64, "evaluation batch per process", resume=FREE, group=EVALUATION, bounds=Bounds(1)
    )
    eval_every: int | None = _opt(
        None, "also evaluate every N optimizer steps", resume=FREE, group=EVALUATION, bounds=Bounds(1)
    )
    log_every: int = _opt(
        50,
        "write a line to metrics.jsonl (and sync the loss to the host) every N steps",
        resume=FREE,
        group=OUTPUT,
        bounds=Bounds(1),
    )
    output_dir: str = _opt(
        "runs/flant5-imdb",
        "where metrics, evaluation, checkpoints, the final model and summary go",
        resume=FREE,
        group=OUTPUT,
    )
    report_to: str = _opt(
        "none",
        "also log metrics to accelerate's tracker",
        ("none", "tensorboard", "wandb"),
        resume=FREE,
        group=OUTPUT,
    )
    push_to_hub: str | None = _opt(
        None,
        "upload the final model and a generated model card to this Hub repo",
        resume=FREE,
        group=HUB,
    )
    model_card_only: bool = _opt(
        False,
        "with --push-to-hub: write final/README.md but upload nothing",
        resume=FREE,
        group=HUB,
    )
    final_eval: bool = _opt(True, "evaluate at the end of training", resume=FREE, group=EVALUATION)
    save_model: bool = _opt(
        True,
        "save the final model and tokenizer to OUTPUT_DIR/final",
        resume=FREE,
        group=OUTPUT,
    )
    save_every: int | None = _opt(
        None,
        "also checkpoint every N optimizer steps (always at each epoch end, at the end, and on "
        "SIGTERM/SIGINT)",
        resume=FREE,
        group=OUTPUT,
        bounds=Bounds(1),
    )
    keep_checkpoints: int = _opt(
        2,
        "keep the newest K complete checkpoints; 0 writes none",
        resume=FREE,
        group=OUTPUT,
        bounds=Bounds(0),
    )
    resume: str | None = _opt(
        None,
        "'auto' = the latest complete checkpoint in --output-dir (fresh start if none), or a checkpoint "
        "folder",
        resume=FREE,
        group=OUTPUT,
    )
    force_resume: bool = _opt(
        False,
        "resume even where the config or the data's content changes the math (batch size, lr, seed, "
        "data, ...), applying the new values",
        resume=FREE,
        group=OUTPUT,
    )
    overwrite_output_dir: bool = _opt(
        False,
        "start afresh in an --output-dir that holds another run: its contents are deleted first",
        resume=FREE,
        group=OUTPUT,
    )
    max_bad_steps: int = _opt(
        10,
        "stop after this many updates in a row with a non-finite loss or gradient norm (each is skipped)",
        resume=FREE,
        group=TRAINING,
        bounds=Bounds(1),
    )
    threads: str = _opt("auto", THREADS_HELP, resume=FREE, group=TRAINING)

    def __post_init__(self):
        if self.precision == "fp16":
            raise ConfigError(
                "--precision fp16 is refused: T5 overflows in fp16 (transformers #5651, #14189); use bf16 or "
                "fp32"
            )
        for name in ("threads", "preprocess_workers"):
            count_or_auto(f"--{flag(name)}", str(getattr(self, name)))
        for f in dataclasses.fields(self):  # each option's own choices or bounds (its field's metadata)
            choices, bounds, value = f.metadata["choices"], f.metadata["bounds"], getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"--{flag(f.name)} {value!r}: choose from {', '.join(choices)}")
            if bounds is not None:
                bounds.check(f.name, value)
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


# fmt: off
PRESETS: dict[str, dict] = {
    # The recommended configuration: the baseline's math, in bf16 with length-grouped dynamic padding.
    "fast": {},
    # The documented HF Seq2SeqTrainer recipe, exactly, stated as where it differs from the defaults
    # (which are the recipe's math: lr 3e-4, batch 8, seed 42, 2 epochs, linear schedule without
    # warm-up, fused AdamW(0.9, 0.999, 1e-8) without decay, clipping at 1.0; a test holds every value).
    # It trained in fp32 on sources padded to 512, shuffled, with "0"/"1" targets and no prompt, and
    # evaluated with greedy generation.
    "baseline": dict(precision="fp32", pad_to_max_length=True, group_by_length=False, verbalizer="digits",
                     eval_mode="generate", output_dir="runs/baseline"),
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


def meant(given: str, known: list[str]) -> str:
    """'; did you mean --x?' for an unknown option, or '' where nothing is close."""
    dashed = given.replace("_", "-")
    if dashed in known:
        return f"; did you mean {dashed}?"
    if dashed in TRAINER_SPELLINGS:
        return f"; this project calls it {TRAINER_SPELLINGS[dashed]}"
    close = difflib.get_close_matches(dashed, known, n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def options_table() -> str:
    """docs/options.md's table of every option, by --help's sections, from the fields themselves
    (`python -m flant5_imdb.config` prints it)."""
    rows = ["| option | default | what it does |", "| --- | --- | --- |"]
    defaults = TrainConfig()
    for section in SECTIONS:
        rows.append(f"| **{section}** | | |")
        for f in dataclasses.fields(TrainConfig):
            if f.metadata["group"] == section:
                default = getattr(defaults, f.name)
                shown = "–" if default is None else f"`{default}`"
                what = " ".join(f.metadata["help"].split()).replace("|", "\\|")
                choices, bounds = f.metadata["choices"], f.metadata["bounds"]
                what += f" (one of: {', '.join(choices)})" if choices else ""
                what += f" ({bounds.wanted(isinstance(default, int))})" if bounds else ""
                rows.append(f"| `--{flag(f.name)}` | {shown} | {what} |")
    return "\n".join(rows)


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
    groups = {title: p.add_argument_group(title) for title in SECTIONS}
    for f in dataclasses.fields(TrainConfig):
        group = groups[f.metadata["group"]]
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


if __name__ == "__main__":
    print(options_table())
