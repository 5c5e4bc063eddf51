"""The bench's measuring parts: data, configurations, one row per configuration, clocks, memory.

A row is W warm-up and N timed optimizer steps of the real training code (`flant5_imdb.train.run`,
batches drawn by the real sampler from the real length distribution); `hf-trainer` runs
`transformers.Seq2SeqTrainer` itself with the baseline recipe. `bench/profile.py` runs the rows in
order and `bench/report.py` turns them into tables; `bench/step_profile.py` reuses the same rows
under torch.profiler.

Every row is contained: an error (SystemExit included) or a per-row time limit becomes a row that
says so, and the next row runs. A kernel-path row that fails is tried again without CUDA graphs,
then without the bias kernel; the row records which variant ran and the first line of each error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import platform
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench.flops import train_flops
from flant5_imdb.config import positive_int, preset
from flant5_imdb.data import Collator, DataError, DataSpec, column, load_labelled, parse_source, prepare
from flant5_imdb.evaluate import evaluate
from flant5_imdb.guards import OutOfMemory, Preempted
from flant5_imdb.kernels.graphs import recorded_cuda_graphs
from flant5_imdb.kernels.step import apply_kernels
from flant5_imdb.modeling import build_model
from flant5_imdb.sampler import StepSampler
from flant5_imdb.tokenizer import TRAIN_HERE, load_tokenizer, train_word_tokenizer
from flant5_imdb.train import make_collator, run

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parents[1]

SEED_JOB_SAMPLES = 50_000  # 2 epochs x 25,000 reviews
# name -> (preset, overrides). `hf-trainer` is the HF Trainer, not our loop.
CONFIGS = {
    "hf-trainer": ("baseline", {}),
    # The same Trainer as a user who reads its docs would run it: bf16, length-grouped batches,
    # dynamic padding to a multiple of 8, fused AdamW (measure_trainer sets these on the Trainer).
    "hf-trainer-tuned": ("baseline", dict(precision="bf16", group_by_length=True, pad_to_max_length=False)),
    "fast": ("fast", {}),
    # The kernel path (the `kernels` preset: buckets of 64, fused RMSNorm, flex bias attention,
    # torch.compile with CUDA graphs; eager off CUDA): the baseline's batch; 8-bit AdamW with activation
    # checkpointing, for the smallest memory; large batches; the other way of reading T5's bias.
    "kernels": ("kernels", {}),
    "kernels-8bit-ckpt": ("kernels", dict(optim="adamw8bit", activation_checkpointing=True)),
    "kernels-throughput": ("kernels", {}),  # batch as for `throughput`
    "kernels-gathered": ("kernels", dict(bias_lookup="gathered")),
    "baseline-loop": ("baseline", {}),
    "bf16": ("fast", dict(precision="bf16", batch_size=8, group_by_length=True, optim="adamw")),
    "bf16-8bit": ("fast", dict(precision="bf16", batch_size=8, group_by_length=True, optim="adamw8bit")),
    "throughput": ("fast", dict(group_by_length=True)),  # batch: --throughput-batch, or the largest that fits
}
EVAL, EVAL_KERNELS = "eval", "eval-kernels"  # the evaluation timings' places in PLAN
# mode, batch, kernel path: the eager timings, then the kernel path's (what a `kernels` run evaluates with)
EVAL_MODES = {
    EVAL: (("score", 64, False), ("generate", 64, False)),
    EVAL_KERNELS: (("score", 256, True),),
}
# The order of a whole run: every eager row (and the eager evaluation timing) before the first
# compilation, since one cold compile can take minutes; within each group, most valuable first, so
# that a run cut short loses the least.
PLAN = (
    "hf-trainer",
    "hf-trainer-tuned",
    "fast",
    "baseline-loop",
    "bf16",
    "bf16-8bit",
    "throughput",
    EVAL,
    "kernels",
    EVAL_KERNELS,
    "kernels-gathered",
    "kernels-8bit-ckpt",
    "kernels-throughput",
)
THROUGHPUT_ROWS = ("throughput", "kernels-throughput")
# How many steps past --compiled-warmup a compiled row may warm up to meet every shape its timed steps use.
MAX_EXTRA_WARMUP = 200
# What a failing kernel-path row is tried again with, in order (each from the row's own config).
FALLBACKS = (("no CUDA graphs", dict(cuda_graphs=False)), ("no bias kernel", dict(bias_kernel=False)))


class RowTimeout(Exception):
    """A row ran past --row-limit."""


def compiles(name: str) -> bool:
    """Whether a PLAN entry compiles on CUDA (torch.compile, or the compiled flex bias kernel)."""
    if name in EVAL_MODES:
        return any(kernels for _, _, kernels in EVAL_MODES[name])
    base, overrides = CONFIGS[name]
    cfg = preset(base, **overrides)
    return cfg.compile or cfg.bias_kernel


def compiles_here(cfg) -> bool:
    """Whether this row's training step is compiled on this machine (on CUDA only; eager elsewhere)."""
    return bool(cfg.compile) and torch.cuda.is_available()


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile counts as one more)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def add_source_args(p: argparse.ArgumentParser) -> None:
    """--model, --model-config, --data, --tokenizer, --examples: what a bench script trains on."""
    shared = ROOT.parent / "shared" / "data"
    p.add_argument(
        "--model",
        default=None,
        help="real weights (Hub id or folder); default: random init of --model-config",
    )
    p.add_argument(
        "--model-config",
        default="flan-t5-base",
        help="architecture for random init (flan-t5-small, ..., -xl, tiny)",
    )
    p.add_argument(
        "--data", default=str(shared / "imdb") if (shared / "imdb").is_dir() else "stanfordnlp/imdb"
    )
    p.add_argument(
        "--tokenizer",
        default=str(shared / "tokenizer" / "imdb-unigram-32k")
        if (shared / "tokenizer").is_dir()
        else "google/flan-t5-base",
    )
    p.add_argument(
        "--examples",
        type=positive_int,
        default=None,
        help="a seeded random subset of this many examples per split (default: all): less tokenizing, the "
        "same length distribution",
    )


def check_sources(p: argparse.ArgumentParser, args) -> None:
    """--data checked as training checks it, before anything is read: a missing file or a malformed
    value is one argparse-style line (exit 2), not a traceback from the first row."""
    try:
        parse_source(args.data)
    except DataError as e:
        p.error(str(e))


class BenchData:
    """The tokenized splits, once, through the package's own data path: for FLOPs and eval timing.

    The tokenizer (and, with --examples, the subset) are written to a folder named after their
    sources, so that every row, and every bench process of one machine, reads the same files: the
    datasets cache then tokenizes once for all of them.
    """

    def __init__(self, args):
        key = hashlib.sha256(repr((args.data, args.tokenizer, args.examples)).encode()).hexdigest()[:12]
        self.folder = Path(tempfile.gettempdir()) / f"flant5-bench-{key}"
        self.tok_dir = self.folder / "tokenizer"
        self.data = str(self.folder / "data") if args.examples else args.data
        if not (
            self.folder / "ready"
        ).is_file():  # written once: rewritten files would defeat the datasets cache
            raw = load_labelled(args.data).splits
            if args.examples:
                raw = type(raw)(
                    {s: d.shuffle(seed=0).select(range(min(args.examples, len(d)))) for s, d in raw.items()}
                )
                for split, ds in raw.items():
                    ds.to_parquet(str(Path(self.data) / f"{split}.parquet"))
            tokenizer = (
                train_word_tokenizer(raw["train"]["text"])
                if args.tokenizer == TRAIN_HERE
                else load_tokenizer(args.tokenizer)
            )
            tokenizer.save_pretrained(self.tok_dir)
            (self.folder / "ready").write_text("")
        self.tokenizer = load_tokenizer(str(self.tok_dir))
        spec = DataSpec(self.data, verbalizer="digits", max_source_length=512)
        prepared = prepare(spec, lambda *_: self.tokenizer)
        self.targets = prepared.targets
        self.splits = {
            "train": prepared.train,
            **({prepared.eval_source: prepared.eval} if prepared.eval else {}),
        }
        self.lengths = column(self.splits["train"], "length").tolist()
        self.target_len = len(self.splits["train"][0]["labels"])


def train_config(name: str, args, data: BenchData, out_dir: Path, **extra):
    base, overrides = CONFIGS[name]
    model = dict(model=args.model, model_config=None) if args.model else dict(model_config=args.model_config)
    return preset(
        base,
        **{
            **overrides,
            **model,
            "tokenizer": str(data.tok_dir),
            "data": data.data,
            "output_dir": str(out_dir),
            "final_eval": False,
            "save_model": False,
            "keep_checkpoints": 0,
            "log_every": 10**9,
            "max_steps": None if args.full else args.warmup + args.steps,
            **extra,
        },
    )


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise RowTimeout in this (main) thread after `seconds`; no limit when None or off the main thread."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise RowTimeout(f"{what}: stopped by its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def measure_row(name: str, args, data: BenchData, peak, out_dir: Path, progress=None) -> dict:
    """One configuration, contained: a measured row, or one that names what failed.

    `progress(**fields)` is called the moment a row gets somewhere worth keeping should it be cut
    short (its first step done, compilation included; a CUDA graph recorded; the timed steps begun):
    the caller writes it out at once. Preempted (the time guard's SIGTERM arrived mid-step) is not
    contained: the caller stops.
    """
    _, overrides = CONFIGS[name]
    base = train_config(name, args, data, out_dir)
    kernel_row = base.compile or base.bias_kernel
    variants = [("as configured", {})] + (
        [v for v in FALLBACKS if any(getattr(base, k) != x for k, x in v[1].items())] if kernel_row else []
    )
    errors = []
    for variant, change in variants:
        try:
            with time_limit(args.row_limit, name):
                row = measure(name, args, data, peak, out_dir / slug(variant), progress=progress, **change)
            row.update(predicted_memory(name, base, data, row["batch_size"]))
            return {**row, "variant": variant, **({"errors": errors} if errors else {})}
        except Preempted:
            raise
        except RowTimeout as e:  # a retry would spend another limit on what just hung
            errors.append(str(e))
            break
        except (Exception, SystemExit) as e:
            logger.exception("%s (%s) failed", name, variant)
            errors.append(f"{variant}: {first_line(e)}" if len(variants) > 1 else first_line(e))
        finally:
            release_memory()
    return dict(name=name, error="; ".join(errors), errors=errors, **predicted_memory(name, base, data))


def row_setups(args, data: BenchData) -> list:
    """The memory setups of `args.configs`' rows (each batch a throughput row may try on a GPU), for
    `bench/profile.py --save-predictions`."""
    setups = []
    for name in (n for n in args.configs if n in CONFIGS):
        cfg = train_config(name, args, data, Path(tempfile.gettempdir()))
        sizes = throughput_sizes(args, gpu=True) if name in THROUGHPUT_ROWS else [cfg.batch_size]
        setups += [memory_setup(name, cfg, data, batch) for batch in sizes]
    return setups


def memory_setup(name: str, cfg, data: BenchData, batch: int | None = None):
    """The row's `bench.memory.Setup`: its configuration at the longest batch of the data."""
    from bench import memory

    longest = max(data.lengths)
    if name == "hf-trainer":
        source_len = cfg.max_source_length  # the recipe pads every batch to 512
    elif name == "hf-trainer-tuned":
        source_len = -(-longest // 8) * 8  # DataCollatorForSeq2Seq(pad_to_multiple_of=8)
    else:
        source_len = make_collator(cfg, data.tokenizer).source_length(longest)
    shape = dict(batch=batch or cfg.batch_size, source_len=source_len, target_len=data.target_len)
    return memory.setup_for(
        cfg, **shape, vocab_size=len(data.tokenizer), trainer=name.startswith("hf-trainer")
    )


def predicted_memory(name: str, cfg, data: BenchData, batch: int | None = None) -> dict:
    """The row's peak memory as `bench/memory.py` predicts it (at the longest batch of the data), to set
    beside the measured peak; never a reason for a row to fail."""
    from bench import memory

    try:
        setup = memory_setup(name, cfg, data, batch)
        got = memory.predicted(setup)
    except Exception as e:  # a prediction that cannot be made is said, and the row stands
        return {"predicted_peak_gib": None, "predicted_error": first_line(e)}
    return {"predicted_peak_gib": got["peak_gib"], "predicted_parts_gib": got["parts_gib"],
            "predicted_setup": setup.describe(), "predicted_from": got["from"]}  # fmt: skip


def throughput_sizes(args, gpu: bool | None = None) -> list[int]:
    """The batches a throughput row tries, largest first, until one fits (on a GPU, or, by default, here)."""
    if args.throughput_batch:
        return [args.throughput_batch]
    return [128, 96, 64, 32] if (torch.cuda.is_available() if gpu is None else gpu) else [16]


def measure(name: str, args, data: BenchData, peak, out_dir: Path, progress=None, **change) -> dict:
    if name.startswith("hf-trainer"):
        return measure_trainer(args, data, peak, out_dir, tuned=name == "hf-trainer-tuned")
    if name not in THROUGHPUT_ROWS:
        cfg = train_config(name, args, data, out_dir, **change)
        return measure_loop(name, cfg, args, data, peak, progress)
    for bs in throughput_sizes(args):
        try:
            return measure_loop(
                name,
                train_config(name, args, data, out_dir / str(bs), batch_size=bs, **change),
                args,
                data,
                peak,
                progress,
            )
        except OutOfMemory:
            print(f"{name}: batch {bs} does not fit, trying a smaller one", flush=True)
            release_memory()
    raise RuntimeError(f"{name}: no batch size of {throughput_sizes(args)} fits")


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
        projected_minutes_with_warmup=(
            warm_s + (SEED_JOB_SAMPLES - sum(examples[:warmup])) / row["samples_per_s"]
        )
        / 60,
        new_shapes_in_timed_window=unseen,
        compiles_in_timed_window=c1 - c0,
        cuda_graphs_recorded_in_timed_window=None if None in (g0, g1) else g1 - g0,
    )
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


def measure_trainer(args, data: BenchData, peak, out_dir: Path, tuned: bool = False) -> dict:
    """transformers.Seq2SeqTrainer itself, with the baseline recipe: fp32, batch 8, padded to 512,
    random sampler. `tuned`: what its documentation offers a user without code of their own, the
    math unchanged: bf16, length-grouped sampling, DataCollatorForSeq2Seq(pad_to_multiple_of=8) and
    fused AdamW."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback
    from transformers.trainer_utils import set_seed

    name = "hf-trainer-tuned" if tuned else "hf-trainer"
    cfg = train_config(name, args, data, out_dir)
    started = time.perf_counter()
    set_seed(cfg.seed)
    model = build_model(cfg.model, model_config=cfg.model_config, vocab_size=len(data.tokenizer))
    arch = model.config
    clock, examples, tokens, flops, pending = StepClock(), [], [], [], []
    if tuned:
        collate = DataCollatorForSeq2Seq(
            data.tokenizer, model=model, pad_to_multiple_of=8, label_pad_token_id=-100
        )
    else:
        collate = Collator(pad_token_id=data.tokenizer.pad_token_id, max_length=cfg.max_source_length)

    collator = CountingCollator(collate, pending)

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            clock.mark(host_too=len(clock) + 1 == args.warmup)
            lens = pending.pop(0)
            examples.append(len(lens))
            tokens.append(sum(lens))
            flops.append(sum(train_flops(arch, n, data.target_len) for n in lens))

    targs = Seq2SeqTrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        seed=cfg.seed,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_eps, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, num_train_epochs=cfg.epochs,
        max_steps=-1 if args.full else args.warmup + args.steps, logging_steps=10**9, save_strategy="no",
        report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        # transformers 5 spells group_by_length=True as train_sampling_strategy="group_by_length".
        **(dict(bf16=True, train_sampling_strategy="group_by_length", optim="adamw_torch_fused")
           if tuned else {}),
    )  # fmt: skip
    train = data.splits["train"].select_columns(["input_ids", "labels"])
    with PeakMemory() as mem:
        trainer = Seq2SeqTrainer(
            model=model, args=targs, train_dataset=train, data_collator=collator, callbacks=[Timer()]
        )
        train_started = time.perf_counter()
        trainer.train()
        full_seconds = time.perf_counter() - train_started
    row = timing_row(name, cfg, clock.seconds(), examples, tokens, flops, args.warmup, peak)
    row.update(mem.report(), warmup_steps=args.warmup, warmup_seconds=clock.host_mark - started,
               trainer_args=trainer_settings(trainer))  # fmt: skip
    if args.full:
        row["full_minutes"] = full_seconds / 60
    del trainer, model
    return row


class CountingCollator:
    """The Trainer's collator, noting each batch's source lengths (the Trainer fetches one batch per step)."""

    def __init__(self, inner, pending: list):
        self.inner, self.pending = inner, pending

    def __call__(self, rows):
        self.pending.append([len(r["input_ids"]) for r in rows])
        return self.inner([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


def trainer_settings(trainer) -> dict:
    """What the Trainer actually ran with, read back from it (not from what was asked)."""
    a, inner = trainer.args, trainer.data_collator.inner
    return dict(
        bf16=a.bf16, sampling=str(getattr(a.train_sampling_strategy, "value", a.train_sampling_strategy)),
        optim=str(getattr(a.optim, "value", a.optim)),
        per_device_train_batch_size=a.per_device_train_batch_size, learning_rate=a.learning_rate,
        lr_scheduler_type=str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)), seed=a.seed,
        warmup_steps=a.warmup_steps, weight_decay=a.weight_decay, collator=type(inner).__name__,
        pad_to_multiple_of=getattr(inner, "pad_to_multiple_of", None),
        pad_to=getattr(inner, "max_length", None),
    )  # fmt: skip


def timing_row(name, cfg, marks, examples, tokens, flops, warmup, peak) -> dict:
    if len(marks) <= warmup:
        raise RuntimeError(f"{name}: only {len(marks)} steps ran; need more than --warmup {warmup}")
    # marks[i] is the end of step i + 1; a step's time runs from the end of the one before it, so
    # the first step (which has no mark before it) is always a warm-up step.
    step_s = [marks[i] - marks[i - 1] for i in range(warmup, len(marks))]
    timed = slice(warmup, len(marks))
    seconds = sum(step_s)
    samples_per_s = sum(examples[timed]) / seconds
    tflops = sum(flops[timed]) / seconds / 1e12
    ms = sorted(1000 * s for s in step_s)
    return dict(
        name=name,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        precision=cfg.precision,
        optim=cfg.optim,
        padding=padding(cfg),
        timed_steps=len(step_s),
        ms_per_step=statistics.median(ms),
        ms_p10=ms[len(ms) // 10],
        ms_p90=ms[(9 * len(ms)) // 10],
        ms_per_step_mean=statistics.fmean(ms),
        samples_per_s=samples_per_s,
        tokens_per_s=sum(tokens[timed]) / seconds,
        model_tflops=tflops,
        mfu=tflops / peak if peak else None,
        projected_minutes=SEED_JOB_SAMPLES / samples_per_s / 60,
    )


def padding(cfg) -> str:
    if cfg.pad_to_max_length:
        return f"to {cfg.max_source_length}"
    size = (
        f"buckets of {cfg.bucket_multiple}"
        if cfg.bucket_multiple
        else f"multiple of {cfg.pad_to_multiple_of}"
    )
    return f"length-grouped, {size}" if cfg.group_by_length else size


def measure_eval(args, data: BenchData, group: str = EVAL, on_row=None) -> list[dict]:
    """Examples/s of each of `group`'s modes (EVAL_MODES) on the first --eval-samples evaluation examples,
    bf16 on a GPU.

    Each mode first runs once over the same examples untimed: every batch shape the timed pass will
    meet (the partial last batch too) has then been compiled, so no compilation is timed. The row
    says how many graphs were compiled inside the timed pass all the same (0 expected).
    Each mode is contained like a row: one that fails or runs past --row-limit is recorded as such.
    `on_row(rows)` is called after each mode (the caller saves the results).
    """
    from flant5_imdb.accel import make_accelerator

    acc = make_accelerator("bf16" if torch.cuda.is_available() else "fp32")
    split = next((s for s in data.splits if s != "train"), "train")
    ds = data.splits[split].select(range(min(args.eval_samples, len(data.splits[split]))))
    if args.model:
        model = build_model(args.model)
    else:
        model = build_model("x", model_config=args.model_config, vocab_size=len(data.tokenizer))
    model = model.to(acc.device)
    targets = data.targets
    rows = []
    for mode, batch, kernels in EVAL_MODES[group]:
        what = dict(mode=mode, batch_size=batch, kernels=kernels, split=split, examples=len(ds))
        try:
            with time_limit(args.row_limit, f"eval {mode}"):
                if kernels:  # the kernel path's attention and norms: what a `kernels` run evaluates with
                    apply_kernels(model, preset("kernels"))
                kw = dict(
                    targets=targets, accelerator=acc, mode=mode, batch_size=batch, tokenizer=data.tokenizer
                )
                evaluate(model, ds, **kw)  # warm-up: every shape of the timed pass, compiled where it is
                sync()
                compiled_before = graphs_compiled()
                r = evaluate(model, ds, **kw)
            rows.append(
                {
                    **what,
                    "seconds": r["eval_seconds"],
                    "examples_per_s": r["examples_per_s"],
                    "projected_25k_seconds": 25_000 / r["examples_per_s"],
                    "compiles_in_timed_window": graphs_compiled() - compiled_before,
                }
            )
        except (Exception, SystemExit) as e:
            logger.exception("eval %s failed", mode)
            rows.append({**what, "error": first_line(e)})
        print(rows[-1], flush=True)
        if on_row:
            on_row(rows)
    del model
    release_memory()
    return rows


EVAL_NOTE = "length-sorted batches, each mode timed on its second pass over the same examples"
RANDOM_WEIGHTS_NOTE = (
    " (random weights never emit EOS: generate runs its full max_new_tokens, an upper bound)"
)


def model_config(model):
    return getattr(model, "module", model).config


class StepClock:
    """End-of-step times that do not stall the GPU.

    On CUDA each mark records an event in the stream, and the events are read once, at the end:
    a synchronize per step would stop the host from queueing the next step while the GPU finishes
    this one, and add the host's time to every step's. Off CUDA the host clock is the clock.
    `host_too` also takes the host clock at that mark (after a synchronize): for the set-up time.
    """

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.marks: list = []
        self.host_mark: float | None = None

    def __len__(self) -> int:
        return len(self.marks)

    def mark(self, host_too: bool = False) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        if host_too:
            sync()
            self.host_mark = time.perf_counter()

    def seconds(self) -> list[float]:
        """Each mark's time in seconds after the first."""
        if not self.cuda:
            return [t - self.marks[0] for t in self.marks]
        sync()
        return [self.marks[0].elapsed_time(e) / 1000 for e in self.marks]


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release_memory():
    """Free what the last row held: compiled graphs and their CUDA-graph pools belong to it.

    Never raises: a failure here (after a row that broke the CUDA context, say) is logged, and the
    next row finds out for itself.
    """
    try:
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        logger.exception("releasing memory after a row failed")


class PeakMemory:
    """Peak allocated/reserved (torch), and the process's usage as the driver reports it (nvidia-smi)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.driver_mib, self._stop = interval, None, threading.Event()

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            self._stop.set()
            self._thread.join()
            self._sample()

    def _sample(self):
        with contextlib.suppress(Exception):
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            mine = [
                int(m)
                for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)
                if int(p) == os.getpid()
            ]
            if mine:
                self.driver_mib = max(self.driver_mib or 0, mine[0])

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def report(self) -> dict:
        if not torch.cuda.is_available():
            return dict(peak_allocated_gib=None, peak_reserved_gib=None, peak_driver_mib=None)
        return dict(
            peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            peak_driver_mib=self.driver_mib,
        )


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def versions() -> dict:
    import accelerate
    import datasets
    import transformers

    v = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        accelerate=accelerate.__version__,
        datasets=datasets.__version__,
        cuda=torch.version.cuda,
    )
    with contextlib.suppress(Exception):
        import bitsandbytes

        v["bitsandbytes"] = bitsandbytes.__version__
    return v
