"""What the bench measures: one table of rows, each a configuration and what it measures.

A row is a `Row`: its name, what runs it (`loop`: this project's training loop; `trainer`:
transformers' Seq2SeqTrainer driven by the same configuration; `eval`: evaluation timings), the
preset and overrides it runs with, and what the report does with it (a peer the others are set
beside, a pair whose faster member is named, targets its figures are held to). The measured row in
results.json carries these fields, so the report reads fields, never names.

`ROWS` is in the order of a whole run: every eager row (and the eager evaluation timing) before the
first compilation, since one cold compile can take minutes; within each group, most valuable first,
so that a run cut short loses the least.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.intervals import LEVEL
from flant5_imdb.config import preset


@dataclass(frozen=True)
class Target:
    """A figure a row's measurement is held to: `field` of the measured row against `limit`."""

    what: str
    field: str
    limit: float
    unit: str
    higher_is_better: bool = False
    gpu_only: bool = True  # a CPU run is measured, not graded, except for targets that hold anywhere

    def check(self, row: dict) -> dict | None:
        """Wanted, measured, and met or missed by how much; None where the row has no such figure. Where
        the row also has the figure's interval (`FIELD_interval`, see `bench/intervals.py`), the verdict
        is the interval's: met or missed only where all of it is on one side of the limit, else
        undecided (`met` None): one run's figure alone cannot say."""
        value = row.get(self.field)
        if value is None:
            return None

        def meets(x: float) -> bool:
            return x >= self.limit if self.higher_is_better else x <= self.limit

        shown = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
        interval = row.get(f"{self.field}_interval")
        if interval is None:
            met, shown = meets(value), f"{shown} {self.unit}"
        else:
            # Decided where the figure and all of its interval are on one side of the limit.
            met = meets(value) if {meets(x) for x in interval} == {meets(value)} else None
            shown = f"{shown} {self.unit} ({LEVEL:.0%} interval {interval[0]:.3g}–{interval[1]:.3g})"
        verdict = {True: "yes", False: f"no: {value / self.limit:.2f}x the target"}.get(
            met, "undecided: the interval spans the target"
        )
        return dict(
            target=self.what.format(**row),
            wanted=f"{'≥' if self.higher_is_better else '≤'} {self.limit:g} {self.unit}",
            measured=shown,
            met=met,
            verdict=verdict,
        )


@dataclass(frozen=True)
class Row:
    name: str
    measures: str  # "loop", "trainer" or "eval" (see the module's doc)
    preset: str = "fast"
    overrides: dict = field(default_factory=dict)
    about: str = ""
    largest_batch: bool = False  # the largest batch that fits (--throughput-batch, else tried down)
    eval_modes: tuple[tuple[str, int, bool], ...] = ()  # eval rows: (mode, batch, kernel path)
    peer: bool = False  # every other row's samples/s is reported as a ratio to this row's
    pair: str | None = None  # rows of one pair are compared, and the faster named by `pair_field`
    pair_field: str | None = None
    targets: tuple[Target, ...] = ()

    def config(self, **extra):
        """The row's TrainConfig (`extra`: the bench's own settings: data, steps, output folder)."""
        return preset(self.preset, **{**self.overrides, **extra})

    def compiles(self) -> bool:
        """Whether the row compiles on CUDA (torch.compile, or the compiled flex bias kernel)."""
        if self.measures == "eval":
            return any(kernels for _, _, kernels in self.eval_modes)
        cfg = self.config()
        return bool(cfg.compile or cfg.bias_kernel)

    def described(self) -> dict:
        """The fields the report reads, as the measured row carries them."""
        keep = ("measures", "about", "peer", "pair", "pair_field")
        targets = [dataclasses.asdict(t) for t in self.targets]
        return {k: getattr(self, k) for k in keep} | {"targets": targets}


KERNELS_ABOUT = "the kernel path: buckets of 64, fused RMSNorm, flex bias attention, compiled, CUDA graphs"
PARITY = Target(
    "our loop with the baseline's recipe vs the Trainer, same run and threads", "ratio_vs_hf_trainer", 0.98,
    "x", higher_is_better=True, gpu_only=False,
)  # fmt: skip
LEAN = dict(optim="adamw8bit", activation_checkpointing=True, optimizer_in_backward=True, max_grad_norm=None)
ROWS = {
    r.name: r
    for r in (
        Row("hf-trainer", "trainer", "baseline", peer=True,
            about="transformers' Seq2SeqTrainer with the baseline recipe: fp32, batch 8, padded to 512"),
        Row("hf-trainer-tuned", "trainer", "baseline",
            dict(precision="bf16", group_by_length=True, pad_to_max_length=False), peer=True,
            about="the same Trainer as its docs offer a user: bf16, length-grouped, padded to a multiple "
            "of 8, fused AdamW"),
        Row("fast", "loop", about="the recommended configuration: the baseline's math, bf16, length-grouped"),
        Row("baseline-loop", "loop", "baseline", targets=(PARITY,),
            about="our loop with the baseline recipe: the Trainer's math, step for step"),
        Row("fast-8bit", "loop", overrides=dict(optim="adamw8bit"), about="`fast` with 8-bit AdamW"),
        Row("lean", "loop", overrides=LEAN,
            about="the least memory: `fast` with 8-bit AdamW, activation checkpointing and "
            "each parameter updated in the backward (no clipping)",
            targets=(Target("peak allocated, lean (adamw8bit, checkpointing, optimizer in backward)",
                            "peak_allocated_gib", 2.5, "GiB"),)),
        Row("throughput", "loop", largest_batch=True, about="`fast` at the largest batch that fits"),
        Row("eval", "eval", eval_modes=(("score", 64, False), ("generate", 64, False)),
            about="evaluation: one scoring forward vs greedy generation"),
        Row("kernels", "loop", "kernels", about=KERNELS_ABOUT, pair="bias lookup", pair_field="bias_lookup",
            targets=(
                Target("baseline-recipe step (kernels, batch 8; no attention-probability dropout in the "
                       "encoder)", "ms_per_step", 15.0, "ms"),
                Target("speed-up over hf-trainer (same run)", "ratio_vs_hf_trainer", 11.0, "x", True),
                Target("2 epochs incl. compilation (projected: set-up and warm-up + the rest at the timed "
                       "rate)", "projected_minutes_with_warmup", 3.0, "min"),
                Target("peak allocated, AdamW (kernels)", "peak_allocated_gib", 5.0, "GiB"),
            )),
        Row("eval-kernels", "eval", eval_modes=(("score", 256, True),), about="scoring on the kernel path",
            targets=(Target("score evaluation of 25,000 examples (kernels, projected)",
                            "projected_25k_seconds", 15.0, "s"),)),
        Row("kernels-gathered", "loop", "kernels", dict(bias_lookup="gathered"), pair="bias lookup",
            pair_field="bias_lookup", about="the kernel path reading T5's bias by gathering"),
        Row("kernels-8bit-ckpt", "loop", "kernels", dict(optim="adamw8bit", activation_checkpointing=True),
            about="the kernel path with 8-bit AdamW and activation checkpointing",
            targets=(Target("peak allocated, adamw8bit (kernels-8bit-ckpt)", "peak_allocated_gib", 3.0,
                            "GiB"),)),
        Row("kernels-throughput", "loop", "kernels", largest_batch=True,
            about="the kernel path at the largest batch that fits",
            targets=(Target("throughput (kernels-throughput, batch {batch_size})", "samples_per_s", 1500.0,
                            "samples/s", True),)),
    )
}  # fmt: skip
PLAN = tuple(ROWS)


def compiles(name: str) -> bool:
    return ROWS[name].compiles()
