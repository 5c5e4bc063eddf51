"""A training row measured: W warm-up and N timed optimizer steps, contained, with its predicted memory.

A `loop` row runs the real training code (`flant5_imdb.train.run`, batches drawn by the real sampler
from the real length distribution); a `trainer` row runs transformers' Seq2SeqTrainer on the same
configuration (`bench/trainer_row.py`). `bench/rows.py` says what each row is, `bench/profile.py`
runs them in order and `bench/report.py` turns them into tables; `bench/step_profile.py` reuses the
same rows under torch.profiler.

Every row is contained: an error (SystemExit included) or a per-row time limit becomes a row that
says so, and the next row runs. A kernel-path row that fails is tried again without CUDA graphs,
then without the bias kernel; the row records which variant ran and the first line of each error.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.clocks import (
    PeakMemory,
    RowTimeout,
    StepClock,
    cpu_threads_now,
    first_line,
    graphs_compiled,
    release_memory,
    slug,
    sync,
    time_limit,
)  # fmt: skip
from bench.flops import train_flops
from bench.rows import ROWS, Row
from bench.sources import BenchData
from bench.trainer_row import measure_trainer
from flant5_imdb.guards import OutOfMemory, Preempted
from flant5_imdb.kernels.graphs import recorded_cuda_graphs
from flant5_imdb.sampler import StepSampler
from flant5_imdb.train import make_collator, run

logger = logging.getLogger("bench")

SEED_JOB_SAMPLES = 50_000  # 2 epochs x 25,000 reviews
# How many steps past --compiled-warmup a compiled row may warm up to meet every shape its timed steps use.
MAX_EXTRA_WARMUP = 200
# What a failing kernel-path row is tried again with, in order (each from the row's own config).
FALLBACKS = (("no CUDA graphs", dict(cuda_graphs=False)), ("no bias kernel", dict(bias_kernel=False)))


def compiles_here(cfg) -> bool:
    """Whether this row's training step is compiled on this machine (on CUDA only; eager elsewhere)."""
    return bool(cfg.compile) and torch.cuda.is_available()


def train_config(row: Row, args, data: BenchData, out_dir: Path, **extra):
    """The row's TrainConfig on the bench's model, data, steps and threads (`extra`: a row's own change)."""
    model = dict(model=args.model, model_config=None) if args.model else dict(model_config=args.model_config)
    return row.config(
        **model,
        tokenizer=str(data.tok_dir),
        data=data.data,
        output_dir=str(out_dir),
        final_eval=False,
        save_model=False,
        keep_checkpoints=0,
        log_every=10**9,
        max_steps=None if args.full else args.warmup + args.steps,
        **({"threads": str(args.threads)} if getattr(args, "threads", None) else {}),
        **extra,
    )


def measure_row(row: Row, args, data: BenchData, peak, out_dir: Path, progress=None) -> dict:
    """One training row, contained: measured, or naming what failed; either way with the row's fields.

    `progress(**fields)` is called the moment a row gets somewhere worth keeping should it be cut
    short (its first step done, compilation included; a CUDA graph recorded; the timed steps begun):
    the caller writes it out at once. Preempted (the time guard's SIGTERM arrived mid-step) is not
    contained: the caller stops.
    """
    base = train_config(row, args, data, out_dir)
    kernel_row = base.compile or base.bias_kernel
    variants = [("as configured", {})] + (
        [v for v in FALLBACKS if any(getattr(base, k) != x for k, x in v[1].items())] if kernel_row else []
    )
    errors, described = [], dict(name=row.name, **row.described())
    for variant, change in variants:
        try:
            with time_limit(args.row_limit, row.name):
                got = measure(row, args, data, peak, out_dir / slug(variant), progress=progress, **change)
            got.update(predicted_memory(row, base, data, got["batch_size"]))
            return {**described, **got, "variant": variant, **({"errors": errors} if errors else {})}
        except Preempted:
            raise
        except RowTimeout as e:  # a retry would spend another limit on what just hung
            errors.append(str(e))
            break
        except (Exception, SystemExit) as e:
            logger.exception("%s (%s) failed", row.name, variant)
            errors.append(f"{variant}: {first_line(e)}" if len(variants) > 1 else first_line(e))
        finally:
            release_memory()
    return dict(**described, error="; ".join(errors), errors=errors, **predicted_memory(row, base, data))


def row_setups(args, data: BenchData) -> list:
    """The memory setups of `args.configs`' training rows (each batch a largest-batch row may try on a
    GPU), for `bench/profile.py --save-predictions`."""
    setups = []
    for row in (ROWS[n] for n in args.configs if ROWS[n].measures != "eval"):
        cfg = train_config(row, args, data, Path(tempfile.gettempdir()))
        sizes = throughput_sizes(args, gpu=True) if row.largest_batch else [cfg.batch_size]
        setups += [memory_setup(row, cfg, data, batch) for batch in sizes]
    return setups


def memory_setup(row: Row, cfg, data: BenchData, batch: int | None = None):
    """The row's `bench.memory.Setup`: its configuration at the longest batch of the data."""
    from bench import memory

    source_len = make_collator(cfg, data.tokenizer).source_length(max(data.lengths))
    shape = dict(batch=batch or cfg.batch_size, source_len=source_len, target_len=data.target_len)
    return memory.setup_for(cfg, **shape, vocab_size=len(data.tokenizer), trainer=row.measures == "trainer")


def predicted_memory(row: Row, cfg, data: BenchData, batch: int | None = None) -> dict:
    """The row's peak memory as `bench/memory.py` predicts it (at the longest batch of the data), to set
    beside the measured peak; never a reason for a row to fail."""
    from bench import memory

    try:
        setup = memory_setup(row, cfg, data, batch)
        got = memory.predicted(setup)
    except Exception as e:  # a prediction that cannot be made is said, and the row stands
        return {"predicted_peak_gib": None, "predicted_error": first_line(e)}
    return {"predicted_peak_gib": got["peak_gib"], "predicted_parts_gib": got["parts_gib"],
            "predicted_setup": setup.describe(), "predicted_from": got["from"]}  # fmt: skip


def throughput_sizes(args, gpu: bool | None = None) -> list[int]:
    """The batches a largest-batch row tries, largest first, until one fits (on a GPU, or by default here)."""
    if args.throughput_batch:
        return [args.throughput_batch]
    return [128, 96, 64, 32] if (torch.cuda.is_available() if gpu is None else gpu) else [16]


def measure(row: Row, args, data: BenchData, peak, out_dir: Path, progress=None, **change) -> dict:
    def timed(cfg):
        return lambda marks, *counts: timing_row(row.name, cfg, marks, *counts, args.warmup, peak)

    if row.measures == "trainer":
        cfg = train_config(row, args, data, out_dir, **change)
        return measure_trainer(cfg, args, data, timed(cfg))
    for bs in throughput_sizes(args) if row.largest_batch else [None]:
        cfg = train_config(
            row, args, data, out_dir / str(bs or ""), **change, **({"batch_size": bs} if bs else {})
        )
        try:
            return measure_loop(row.name, cfg, args, data, peak, progress)
        except OutOfMemory:
            if bs is None:
                raise
            print(f"{row.name}: batch {bs} does not fit, trying a smaller one", flush=True)
            release_memory()
    raise RuntimeError(f"{row.name}: no batch size of {throughput_sizes(args)} fits")


def measure_loop(name, cfg, args, data: BenchData, peak, progress=None) -> dict:
    clock, examples, tokens, flops = StepClock(), [], [], []
    progress = progress or (lambda **fields: None)
    warmup, unseen = warmup_steps(cfg, args, data)
    cfg = dataclasses.replace(cfg, max_steps=cfg.max_steps and warmup + args.steps)
    first_step, window, graphs = [], {}, [0]

    def on_step(state, step, model):
        if not len(clock):  # set-up and the first step, compilation included
            sync()
            first_step.append(time.perf_counter() - started)
            progress(steps_done=1, compiled_after_s=first_step[0] if compiles_here(cfg) else None)
        clock.mark(host_too=len(clock) + 1 == warmup)
        idx = [i for mb in step.micro_batches for i in mb]
        examples.append(step.global_examples)
        tokens.append(step.global_tokens)
        flops.append(sum(train_flops(model_config(model), data.lengths[i], data.target_len) for i in idx))
        # During warm-up only (the timed steps are not to pay for a look at the graph tree; what they
        # record is counted at their end): a new graph recorded is worth keeping should the row be cut short.
        graphed = cfg.cuda_graphs and compiles_here(cfg) and len(clock) <= warmup
        if graphed and (recorded := recorded_cuda_graphs()) != graphs[0]:
            graphs[0] = recorded
            progress(steps_done=len(clock), cuda_graphs_recorded=recorded)
        # The timed window: what compiles or records in it would be timed as if it were a training step.
        if len(clock) in (warmup, warmup + args.steps):
            window[len(clock)] = (graphs_compiled(), recorded_cuda_graphs())
            if len(clock) == warmup:
                progress(steps_done=warmup, timed_steps_begun_after_s=clock.host_mark - started)

    with PeakMemory() as mem:
        started = time.perf_counter()
        summary = run(cfg, on_step=on_step)
    row = timing_row(name, cfg, clock.seconds(), examples, tokens, flops, warmup, peak)
    # Set-up (model build, data from the cache) and warm-up, compilation and graph recording included.
    warm_s = clock.host_mark - started
    (c0, g0), (c1, g1) = window[warmup], window.get(warmup + args.steps, window[warmup])
    row.update(
        mem.report(),
        compiled=summary["compiled"],
        cuda_graphs=summary["cuda_graphs"],
        cuda_graphs_recorded=summary["cuda_graphs_recorded"],
        bias_kernel=cfg.bias_kernel,
        bias_lookup=cfg.bias_lookup if cfg.bias_kernel else None,
        warmup_steps=warmup,
        seconds_to_first_step=first_step[0],
        warmup_seconds=warm_s,
        warmup_examples=sum(examples[:warmup]),
        new_shapes_in_timed_window=unseen,
        compiles_in_timed_window=c1 - c0,
        cuda_graphs_recorded_in_timed_window=None if None in (g0, g1) else g1 - g0,
    )
    row["projected_minutes_with_warmup"] = with_warmup(row, row["samples_per_s"])
    if args.full:
        row["full_minutes"] = summary["train_seconds"] / 60
    return row


def warmup_steps(cfg, args, data: BenchData) -> tuple[int, int]:
    """(warm-up steps, batch shapes the timed steps meet that warm-up did not).

    A compiled row warms up for --compiled-warmup steps (its first step compiles), and then for as
    many more as it takes for every batch shape its timed steps will use to have come up once:
    CUDA graphs are recorded per shape, and a shape met first inside the timed window would be
    timed as a recording (or, for a static dimension, a recompilation). The data order is known in
    advance: it is the sampler's plan, which depends only on the seed and the lengths.
    """
    if not compiles_here(cfg):
        return args.warmup, 0
    base = max(args.warmup, args.compiled_warmup)
    if args.full:
        return base, 0
    plan = step_shapes(cfg, data, base + MAX_EXTRA_WARMUP + args.steps)
    best = (base, None)
    for w in range(base, base + MAX_EXTRA_WARMUP + 1):
        seen = set().union(*plan[:w])
        unseen = len(set().union(*plan[w : w + args.steps]) - seen)
        if not unseen:
            return w, 0
        if best[1] is None or unseen < best[1]:
            best = (w, unseen)
    return best


def step_shapes(cfg, data: BenchData, steps: int) -> list[set[tuple[int, int]]]:
    """The (rows, padded source length) of each micro-batch of the first `steps` optimizer steps, as
    `run(cfg)` on one process will collate them (an empty slot is a one-row filler of row 0)."""
    sampler = StepSampler(
        data.lengths, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=cfg.seed,
        group_by_length=cfg.group_by_length,
    )  # fmt: skip
    collate = make_collator(cfg, data.tokenizer)
    shapes, epoch = [], 0
    while len(shapes) < steps:
        sampler.set_epoch(epoch)
        for step in sampler:
            batches = [mb or [0] for mb in step.micro_batches]
            shapes.append(
                {(len(mb), collate.source_length(max(data.lengths[i] for i in mb))) for mb in batches}
            )
            if len(shapes) == steps:
                break
        epoch += 1
    return shapes


def timing_row(name, cfg, marks, examples, tokens, flops, warmup, peak) -> dict:
    if len(marks) <= warmup:
        raise RuntimeError(f"{name}: only {len(marks)} steps ran; need more than --warmup {warmup}")
    # marks[i] is the end of step i + 1; a step's time runs from the end of the one before it, so
    # the first step (which has no mark before it) is always a warm-up step.
    step_s = [marks[i] - marks[i - 1] for i in range(warmup, len(marks))]
    timed = slice(warmup, len(marks))
    return dict(
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        precision=cfg.precision,
        optim=cfg.optim,
        padding=padding(cfg),
        **step_figures(step_s, examples[timed], tokens[timed], flops[timed], peak),
        cpu_threads=cpu_threads_now(),
    )


def step_figures(step_s, examples, tokens, flops, peak) -> dict:
    """What a row's timed steps say: step-time percentiles, rates, MFU, the projected job; each step
    kept (its time, examples, tokens and FLOPs), so that rounds of one row can be pooled."""
    seconds = sum(step_s)
    samples_per_s = sum(examples) / seconds
    tflops = sum(flops) / seconds / 1e12
    ms = sorted(1000 * s for s in step_s)
    # The ratios between rows use the median step's rate: a step slowed by another process (a row takes
    # minutes on a CPU) moves a mean, not a median.
    per_step = [n / s for n, s in zip(examples, step_s, strict=True)]
    return dict(
        timed_steps=len(step_s),
        ms_per_step=statistics.median(ms),
        ms_p10=ms[len(ms) // 10],
        ms_p90=ms[(9 * len(ms)) // 10],
        ms_per_step_mean=statistics.fmean(ms),
        samples_per_s=samples_per_s,
        samples_per_s_median=statistics.median(per_step),
        step_ms=[round(1000 * x, 3) for x in step_s],  # each timed step, in order: the spread behind a median
        step_examples=list(examples),
        step_tokens=list(tokens),
        step_flops=list(flops),
        tokens_per_s=sum(tokens) / seconds,
        model_tflops=tflops,
        mfu=tflops / peak if peak else None,
        projected_minutes=SEED_JOB_SAMPLES / samples_per_s / 60,
    )


# What each round of a row keeps in the pooled row's `rounds`: enough to see the drift between rounds.
ROUND_FIELDS = ("samples_per_s_median", "ms_per_step", "ms_p10", "ms_p90", "host_user_s", "host_sys_s",
                "page_faults", "peak_allocated_gib", "cpu_threads")  # fmt: skip


def pooled(rounds: list[dict], peak) -> dict:
    """One row measured in several rounds (`--rounds`, interleaved with the other rows) as one row: every
    round's timed steps pooled into one set of figures; set-up and warm-up as the first round measured
    them; peak memory the highest; each round's own figures under `rounds`, in order."""
    if len(rounds) == 1:
        return rounds[0]
    steps = {k: [x for r in rounds for x in r[f"step_{k}"]] for k in ("ms", "examples", "tokens", "flops")}
    figures = step_figures([ms / 1000 for ms in steps.pop("ms")], *steps.values(), peak)
    peaks = {
        k: max(r[k] for r in rounds) if all(r.get(k) is not None for r in rounds) else None
        for k in ("peak_allocated_gib", "peak_reserved_gib", "peak_driver_mib")
    }
    row = {**rounds[0], **figures, **peaks, "rounds": [{k: r.get(k) for k in ROUND_FIELDS} for r in rounds]}
    if "warmup_examples" in row:
        row["projected_minutes_with_warmup"] = with_warmup(row, row["samples_per_s"])
    return row


def with_warmup(row: dict, samples_per_s: float) -> float:
    """The 2-epoch job projected: set-up and warm-up as measured, the rest at the timed rate."""
    return (row["warmup_seconds"] + (SEED_JOB_SAMPLES - row["warmup_examples"]) / samples_per_s) / 60


def padding(cfg) -> str:
    if cfg.pad_to_max_length:
        return f"to {cfg.max_source_length}"
    size = (
        f"buckets of {cfg.bucket_multiple}"
        if cfg.bucket_multiple
        else f"multiple of {cfg.pad_to_multiple_of}"
    )
    return f"length-grouped, {size}" if cfg.group_by_length else size


def model_config(model):
    return getattr(model, "module", model).config
