"""Peak GPU memory of a training step, predicted on the CPU: `python bench/memory.py`.

The prediction itself (a real step on fake tensors, and what CUDA does differently) is
`bench/memory_model.py`; here: the setup of a training configuration, the predictions kept for the GPU
run's rows, the anchors measured on a GPU, the fits table, and the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/memory.py`, bench/ comes first on sys.path, where profile.py would shadow the
# standard library's (torch imports it): the checkout's root instead (as bench/profile.py does).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import dataclasses
import json
import re

from bench.attention_kernel import CARDS
from bench.memory_model import VOCAB, Setup, predict
from flant5_imdb.config import PRESETS, ConfigError, positive_int, preset
from flant5_imdb.modeling import ARCHITECTURES, architecture_config

PREDICTIONS = ROOT / "bench" / "predicted_memory.json"  # predictions made here, for the GPU run's rows


def save_predictions(setups) -> None:
    """Predict each of `setups` now and keep them in PREDICTIONS (beside what it holds already)."""
    saved = json.loads(PREDICTIONS.read_text()) if PREDICTIONS.is_file() else {}
    for setup in setups:
        r = predict(setup)
        saved[key(setup)] = {"peak_gib": r["peak_gib"], "parts_gib": r["parts_gib"]}
        print(f"{setup.describe()}: {r['peak_gib']:.2f} GiB", flush=True)
    PREDICTIONS.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")


def key(setup: Setup) -> str:
    return json.dumps(dataclasses.asdict(setup), sort_keys=True)


def predicted(setup: Setup) -> dict:
    """`predict(setup)`'s peak and parts, read from PREDICTIONS where it holds them (a GPU run spends no
    time on them there), else computed now; `from` says which."""
    saved = json.loads(PREDICTIONS.read_text()) if PREDICTIONS.is_file() else {}
    if key(setup) in saved:
        return {**saved[key(setup)], "from": PREDICTIONS.name}
    r = predict(setup)
    return {"peak_gib": r["peak_gib"], "parts_gib": r["parts_gib"], "from": "computed at run time"}


def setup_for(cfg, *, batch: int, source_len: int, target_len: int, vocab_size: int, trainer: bool) -> Setup:
    """The Setup of a training configuration (`TrainConfig`) at its longest batch.

    The kernel path (compiled step, flex attention or the bias kernel) is predicted as the eager step with
    a fused attention, which keeps no attention matrix; its compiled fusions are not modelled.

    Raises:
        ValueError: the model is no architecture this project names (its shapes are not known here).
    """
    arch = cfg.model_config or next(
        (a for a in ARCHITECTURES if (cfg.model or "").rstrip("/").endswith(a)), None
    )
    if arch is None:
        raise ValueError(f"{cfg.model}: not one of the named architectures ({', '.join(ARCHITECTURES)})")
    fused = cfg.compile or cfg.bias_kernel or cfg.attn_implementation == "flex_attention"
    return Setup(
        model=arch, batch=batch, source_len=source_len, target_len=target_len, precision=cfg.precision,
        optim=cfg.optim, checkpointing=cfg.activation_checkpointing,
        attention="sdpa" if fused else cfg.attn_implementation, sdpa_kernel="efficient" if fused else "auto",
        loss="model" if trainer else "loop", grad_accum=cfg.grad_accum,
        optimizer_in_backward=cfg.optimizer_in_backward, cuda_graphs=cfg.cuda_graphs and cfg.compile,
        vocab=architecture_config(arch, vocab_size).vocab_size,
        dropout=0.1 if cfg.dropout is None else cfg.dropout,
    )  # fmt: skip


# The four configurations measured on an H200 (torch.cuda.max_memory_allocated, random-init
# flan-t5-base built as transformers' own T5, whose lm_head is tied to the embedding; 6,000 IMDB
# reviews, the longest batch 512 tokens): what, setup, GiB measured, GiB of it not the row's own.
ANCHOR = dict(model="flan-t5-base", tied=True, card="H200", attention="eager")
LEAKED = 0.830  # the bf16 Trainer row's model, alive through a reference cycle (no gc.collect() between rows)
ANCHORS = (
    ("Seq2SeqTrainer, fp32, batch 8, padded to 512, eager attention",
     Setup(**ANCHOR, loss="model", precision="fp32"), 10.05, 0.0),
    ("the same with bf16=True", Setup(**ANCHOR, loss="model", precision="bf16"), 8.93, 0.0),
    ("plain loop, bf16, batch 8, length-grouped, eager attention (measured beside the Trainer row's "
     "leaked model)", Setup(**ANCHOR, precision="bf16"), 9.76, LEAKED),
    ("the same at batch 64 with sdpa attention", Setup(**{**ANCHOR, "attention": "sdpa"}, batch=64), 56.0,
     0.0),
)  # fmt: skip


def anchors_table() -> str:
    rows = ["| configuration | measured (GiB) | the row's own (GiB) | predicted (GiB) | off by | sdpa kernel "
            "| weights / grads / optimizer / activations / temporaries at the peak (GiB) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for what, setup, measured, leaked in ANCHORS:
        r = predict(setup)
        parts = " / ".join(f"{v:.2f}" for v in r["parts_gib"].values())
        own = measured - leaked
        choice = setup.kernel()
        kernel = choice.kernel if choice else "–"
        rows.append(f"| {what} | {measured:.2f} | {own:.2f} | {r['peak_gib']:.2f} | "
                    f"{100 * (r['peak_gib'] / own - 1):+.1f}% | {kernel} | {parts} |")  # fmt: skip
        print(rows[-1], flush=True)
    return "\n".join(rows)


SIZES = ("flan-t5-small", "flan-t5-base", "flan-t5-large", "flan-t5-xl")


def fits_table(lengths: tuple[int, ...], batches: tuple[int, ...] = (8, 32), card: str = "H100") -> str:
    """The fits table of docs/benchmarks.md: each size x optimizer x checkpointing, at each batch and
    source length, as the `fast` preset trains (bf16 autocast, sdpa attention, the kernel torch picks on
    `card`); the last column the same with --optimizer-in-backward (and --max-grad-norm none) at the
    first batch and the longest length."""
    cols = [(b, n) for b in batches for n in lengths]
    lean = (batches[0], max(lengths))
    head = " | ".join(f"batch {b} x {n} tokens (GiB)" for b, n in cols)
    rows = [f"| size | optimizer | activation checkpointing | {head} | optimizer in backward, batch "
            f"{lean[0]} x {lean[1]} (GiB) |", "|" + " --- |" * (4 + len(cols))]  # fmt: skip
    for size in SIZES:
        for optim in ("adamw", "adamw8bit"):
            for ckpt in (False, True):
                like = dict(model=size, optim=optim, checkpointing=ckpt, card=card)
                got = [predict(Setup(**like, batch=b, source_len=n))["peak_gib"] for b, n in cols]
                got.append(
                    predict(Setup(**like, batch=lean[0], source_len=lean[1], optimizer_in_backward=True))[
                        "peak_gib"
                    ]
                )
                rows.append(
                    f"| {size} | {optim} | {'yes' if ckpt else 'no'} | "
                    + " | ".join(f"{g:.1f}" for g in got)
                    + " |"
                )
                print(rows[-1], flush=True)
    return "\n".join(rows)


# The values each text field of a Setup is read with: any other would be predicted as the default
# silently (an unknown optimizer as AdamW, fp16 as fp32) under the name asked for.
CHOICES = {
    "precision": ("fp32", "bf16"),
    "optim": ("adamw", "adamw8bit", "paged_adamw8bit"),
    "attention": ("eager", "sdpa"),
    "sdpa_kernel": ("auto", "math", "efficient"),
    "card": tuple(CARDS),
    "loss": ("loop", "model"),
}
# train.py's spelling of a Setup field, taken as well: the options of a run answer "will it fit".
TRAIN_SPELLING = {"batch": "--batch-size", "source_len": "--max-source-length",
                  "checkpointing": "--activation-checkpointing",
                  "attention": "--attn-implementation"}  # fmt: skip


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(
        description="Predict the peak GPU memory of a training step on the CPU (no GPU, weights or data). "
        "Without options: train.py's defaults (the `fast` preset: flan-t5-base, batch 8 x 512, bf16, sdpa)."
    )
    p.add_argument("--anchors", action="store_true", help="the configurations measured on an H200, predicted")
    p.add_argument("--preset", choices=[n for n in PRESETS if n != "smoke"], default="fast",
                   help="start from this train.py preset (default: fast, train.py's defaults)")  # fmt: skip
    for f in dataclasses.fields(Setup):  # one option per field of a Setup; unset, the preset decides
        flags = [
            f"--{f.name.replace('_', '-')}",
            *([TRAIN_SPELLING[f.name]] if f.name in TRAIN_SPELLING else []),
        ]
        if isinstance(f.default, bool):
            p.add_argument(
                *flags, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS
            )
        else:
            kind = positive_int if isinstance(f.default, int) else type(f.default)
            p.add_argument(*flags, dest=f.name, type=kind, default=argparse.SUPPRESS,
                           choices=CHOICES.get(f.name),
                           help=f"(default: the preset's; {f.default} where it has none)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the whole prediction as JSON")
    p.add_argument(
        "--fits-table",
        metavar="LENGTHS",
        help="the fits table of docs/benchmarks.md at these source lengths (e.g. 208,512)",
    )
    args = p.parse_args(argv)
    if not 0 <= getattr(args, "dropout", 0) < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout:g}")
    if getattr(args, "model", "flan-t5-base") not in ARCHITECTURES:
        p.error(f"--model {args.model!r}: choose from {', '.join(ARCHITECTURES)}")
    if args.fits_table and not re.fullmatch(r"\d+(,\d+)*", args.fits_table):
        p.error(f"--fits-table {args.fits_table!r}: source lengths separated by commas (e.g. 208,512)")
    return args


def setup_of(args) -> Setup:
    """The Setup the command line asks about: the preset's training configuration (train.py's defaults
    without --preset), then every option given. Refusals are train.py's (`TrainConfig`)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Setup) if hasattr(args, f.name)}
    cfg = preset(args.preset, **({"max_grad_norm": None} if given.get("optimizer_in_backward") else {}))
    base = setup_for(cfg, batch=cfg.batch_size, source_len=cfg.max_source_length, target_len=2,
                     vocab_size=VOCAB, trainer=False)  # fmt: skip
    return dataclasses.replace(base, **given)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.anchors:
        anchors_table()
        return 0
    if args.fits_table:
        fits_table(tuple(int(n) for n in args.fits_table.split(",")), card=getattr(args, "card", "H100"))
        return 0
    try:
        setup = setup_of(args)
        r = predict(setup)
    except (ConfigError, ValueError) as e:
        print(f"memory.py: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["parts_gib"].items())
        print(f"{setup.describe()}: {r['peak_gib']:.2f} GiB at the peak ({parts}; workspace 0.03)")
        print(f"attention kernel: {r['attention_kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
