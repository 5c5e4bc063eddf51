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

from bench.memory_model import Setup, predict
from flant5_imdb.config import positive_int
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
        attention="sdpa" if fused else cfg.attn_implementation, sdpa_kernel="efficient" if fused else "math",
        loss="model" if trainer else "loop", grad_accum=cfg.grad_accum,
        vocab=architecture_config(arch, vocab_size).vocab_size,
        dropout=0.1 if cfg.dropout is None else cfg.dropout,
    )  # fmt: skip


# The four configurations measured on an H200 (torch.cuda.max_memory_allocated, random-init
# flan-t5-base, 6,000 IMDB reviews, the longest batch 512 tokens): what, setup, GiB measured.
ANCHORS = (
    ("Seq2SeqTrainer, fp32, batch 8, padded to 512, eager attention", Setup(loss="model"), 10.05),
    ("the same with bf16=True", Setup(loss="model", precision="bf16"), 8.93),
    ("plain loop, bf16, batch 8, length-grouped, eager attention", Setup(precision="bf16"), 9.76),
    ("the same at batch 64 with sdpa attention", Setup(precision="bf16", batch=64, attention="sdpa"), 56.0),
)


def anchors_table() -> str:
    rows = ["| configuration | measured (GiB) | predicted (GiB) | off by | weights / grads / optimizer / "
            "activations / temporaries at the peak (GiB) |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for what, setup, measured in ANCHORS:
        r = predict(setup)
        parts = " / ".join(f"{v:.2f}" for v in r["parts_gib"].values())
        off = 100 * (r["peak_gib"] / measured - 1)
        rows.append(f"| {what} | {measured:.2f} | {r['peak_gib']:.2f} | {off:+.1f}% | {parts} |")
        print(rows[-1], flush=True)
    return "\n".join(rows)


SIZES = ("flan-t5-small", "flan-t5-base", "flan-t5-large", "flan-t5-xl")


def fits_table(lengths: tuple[int, ...], batches: tuple[int, ...] = (8, 32)) -> str:
    """The fits table of docs/benchmarks.md: each size x optimizer x checkpointing, at each batch and
    source length, as the `fast` preset trains (bf16 autocast, sdpa attention)."""
    cols = [(b, n) for b in batches for n in lengths]
    head = " | ".join(f"batch {b} x {n} tokens (GiB)" for b, n in cols)
    rows = [f"| size | optimizer | activation checkpointing | {head} |", "|" + " --- |" * (3 + len(cols))]
    for size in SIZES:
        for optim in ("adamw", "adamw8bit"):
            for ckpt in (False, True):
                like = dict(model=size, precision="bf16", optim=optim, checkpointing=ckpt, attention="sdpa")
                got = [predict(Setup(**like, batch=b, source_len=n))["peak_gib"] for b, n in cols]
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
    "sdpa_kernel": ("math", "efficient"),
    "loss": ("loop", "model"),
}


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(
        description="Predict the peak GPU memory of a training step on the CPU (no GPU, weights or data)."
    )
    p.add_argument("--anchors", action="store_true", help="the configurations measured on an H200, predicted")
    for f in dataclasses.fields(Setup):  # one option per field of a Setup, its default the same
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", help="(off by default)")
        else:
            kind = positive_int if isinstance(f.default, int) else type(f.default)
            p.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                           help=f"(default: {f.default})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the whole prediction as JSON")
    p.add_argument(
        "--fits-table",
        metavar="LENGTHS",
        help="the fits table of docs/benchmarks.md at these source lengths (e.g. 208,512)",
    )
    args = p.parse_args(argv)
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout:g}")
    if args.model not in ARCHITECTURES:
        p.error(f"--model {args.model!r}: choose from {', '.join(ARCHITECTURES)}")
    if args.fits_table and not re.fullmatch(r"\d+(,\d+)*", args.fits_table):
        p.error(f"--fits-table {args.fits_table!r}: source lengths separated by commas (e.g. 208,512)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.anchors:
        anchors_table()
        return 0
    if args.fits_table:
        fits_table(tuple(int(n) for n in args.fits_table.split(",")))
        return 0
    setup = Setup(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Setup)})
    r = predict(setup)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["parts_gib"].items())
        print(f"{setup.describe()}: {r['peak_gib']:.2f} GiB at the peak ({parts}; workspace 0.03)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
