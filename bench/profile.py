"""Throughput and memory of each training configuration, side by side with the seed's Trainer.

    python bench/profile.py                                    # all configurations, flan-t5-base, one GPU
    python bench/profile.py --configs seed-trainer,fast --steps 50
    python bench/profile.py --model-config tiny --data synthetic:400 --tokenizer word-level   # CPU, < 1 minute

Every configuration runs in this one process, one after another, for W warm-up and N timed
optimizer steps of the real training code (`flant5_imdb.train.run`, batches drawn by the real
sampler from the real length distribution); `seed-trainer` runs `transformers.Seq2SeqTrainer`
itself with the seed recipe. Weights are random unless --model names real ones: time and memory
do not depend on weight values (generation length does: see the eval note in the output).

Reported per configuration: ms per optimizer step (median, 10th-90th percentile), samples/s, real
(non-padding) source tokens/s, model TFLOP/s and MFU against --peak-tflops (formula in
bench/flops.py), the projected time of the seed's job (2 epochs x 25,000 = 50,000 samples), peak
GPU memory (allocated, reserved, and the process's usage as the driver reports it), and ratios
to `seed-trainer` measured in the same run and to the documented 26 minutes / 11500 MiB.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/profile.py`, this file's folder comes first on sys.path, and this file is
# named like the standard library's `profile`, which torch imports (through cProfile): take the
# folder off the path before anything imports torch, and put the checkout's root on it instead.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import tempfile
import threading
import time
import traceback

import torch

from bench.flops import train_flops
from flant5_imdb.config import preset
from flant5_imdb.data import load_imdb, target_ids, tokenize
from flant5_imdb.evaluate import evaluate
from flant5_imdb.guards import OutOfMemory
from flant5_imdb.kernels.attention import use_bias_kernel
from flant5_imdb.kernels.norm import fuse_norms
from flant5_imdb.modeling import build_model
from flant5_imdb.sampler import Collator
from flant5_imdb.tokenizer import TRAIN_HERE, load_tokenizer, train_word_tokenizer
from flant5_imdb.train import run

logger = logging.getLogger("bench")

SEED_JOB_SAMPLES = 50_000  # 2 epochs x 25,000 reviews
DOCUMENTED = {"minutes": 26.0, "driver_mib": 11500, "note": "HF Seq2SeqTrainer seed recipe, as documented"}
# name -> (preset, overrides). `seed-trainer` is the HF Trainer, not our loop.
# In order of what matters most, so that a run cut short by its time guard loses the least.
CONFIGS = {
    "seed-trainer": ("seed", {}),
    "fast": ("fast", {}),
    # The kernel path (the `kernels` preset: buckets of 64, fused RMSNorm, flex bias attention,
    # torch.compile with CUDA graphs; eager off CUDA): the seed's batch; 8-bit AdamW with activation
    # checkpointing, for the smallest memory; large batches.
    "kernels": ("kernels", {}),
    "kernels-8bit-ckpt": ("kernels", dict(optim="adamw8bit", activation_checkpointing=True)),
    "kernels-throughput": ("kernels", {}),  # batch as for `throughput`
    "seed-loop": ("seed", {}),
    "bf16": ("fast", dict(precision="bf16", batch_size=8, group_by_length=True, optim="adamw")),
    "bf16-8bit": ("fast", dict(precision="bf16", batch_size=8, group_by_length=True, optim="adamw8bit")),
    "throughput": ("fast", dict(group_by_length=True)),  # batch: --throughput-batch, or the largest that fits
}
AFTER_EVAL = ("seed-loop", "bf16", "bf16-8bit", "throughput")  # evaluation timing runs before these
THROUGHPUT_ROWS = ("throughput", "kernels-throughput")
# Issue 6's targets, checked against the rows of the same run (see `targets`).
TARGETS = dict(kernels_ms=15.0, kernels_x_seed=11.0, two_epochs_minutes=3.0, kernels_8bit_gib=3.0, kernels_gib=5.0,
               throughput_samples_s=1500.0, score_eval_25k_s=15.0)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks from the data sheets


def main(argv=None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"error: --configs: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    device = device_name()
    peak = args.peak_tflops if args.peak_tflops is not None else next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    out = Path(args.out or ROOT / "bench" / "results" / f"{slug(device)}-{dt.date.today().isoformat()}")
    out.mkdir(parents=True, exist_ok=True)
    weights = f"from {args.model}" if args.model else f"random init of {args.model_config} (time and memory do not depend on weight values)"
    print(f"device: {device}; weights: {weights}; data: {args.data}; tokenizer: {args.tokenizer}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per configuration", flush=True)

    data = BenchData(args)
    result = dict(
        device=device, date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), versions=versions(),
        command="python bench/profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        weights=weights, data=args.data, tokenizer=args.tokenizer, model_config=args.model_config,
        warmup_steps=args.warmup, timed_steps=args.steps, peak_tflops=peak, seed_job_samples=SEED_JOB_SAMPLES,
        documented_seed=DOCUMENTED, complete=False, rows=[], eval=[],
    )
    def evaluation():
        try:
            result["eval"] = measure_eval(args, data) if args.eval_samples else []
        except Exception as e:
            traceback.print_exc()
            result["eval"] = [dict(error=f"{type(e).__name__}: {e}"[:300])]
        write_results(result, out)

    for name in names:
        if name in AFTER_EVAL and not result["eval"]:
            evaluation()  # before the rows that matter least: a time guard that fires then costs only those
        print(f"--- {name}", flush=True)
        try:
            row = measure(name, args, data, peak, Path(tempfile.mkdtemp(prefix=f"bench-{name}-")))
        except Exception as e:  # one failing configuration must not cost the others their measurement
            traceback.print_exc()
            row = dict(name=name, error=f"{type(e).__name__}: {e}"[:300])
        result["rows"].append(row)
        add_ratios(result["rows"])
        print(json.dumps(row), flush=True)
        write_results(result, out)  # after every row: a run stopped by its time guard keeps what it measured
        release_memory()
    if not result["eval"]:
        evaluation()
    result["complete"] = True
    table = write_results(result, out)
    chart(result["rows"], out / "chart.png")
    print(table)
    print(f"\nwritten: {out}/results.json, results.md, chart.png")
    return result


def write_results(result: dict, out: Path) -> str:
    result["targets"] = targets(result)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "results.md").write_text(table + "\n")
    return table


def add_source_args(p: argparse.ArgumentParser) -> None:
    """--model, --model-config, --data, --tokenizer: what a bench script trains (the shared IMDB files where present)."""
    shared = ROOT.parent / "shared" / "data"
    p.add_argument("--model", default=None, help="real weights (Hub id or folder); default: random init of --model-config")
    p.add_argument("--model-config", default="flan-t5-base", help="architecture for random init (flan-t5-base, tiny)")
    p.add_argument("--data", default=str(shared / "imdb") if (shared / "imdb").is_dir() else "stanfordnlp/imdb")
    p.add_argument("--tokenizer", default=str(shared / "tokenizer" / "imdb-unigram-32k") if (shared / "tokenizer").is_dir() else "google/flan-t5-base")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ", ".join(CONFIGS))
    add_source_args(p)
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first (default 5, at least 1)")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps (default 20)")
    p.add_argument("--compiled-warmup", type=int, default=40,
                   help="warm-up steps of compiled rows on a GPU (default 40: compilation and one CUDA graph per length bucket)")
    p.add_argument("--throughput-batch", type=int, default=None, help="batch of the throughput row (default: the largest of 128/96/64/32 that fits; 16 on CPU)")
    p.add_argument("--eval-samples", type=int, default=1000, help="test reviews for the score-vs-generate timing (0: skip)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: the card's dense bf16 peak, if known)")
    p.add_argument("--full", action="store_true", help="also run each configuration's whole 2-epoch job end to end")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>-<date>/)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    return args


class BenchData:
    """The tokenized splits, once, through the package's own data path: for FLOPs and eval timing."""

    def __init__(self, args):
        raw, _ = load_imdb(args.data)
        tokenizer = train_word_tokenizer(raw["train"]["text"]) if args.tokenizer == TRAIN_HERE else load_tokenizer(args.tokenizer)
        self.tok_dir = Path(tempfile.mkdtemp(prefix="bench-tok-"))
        tokenizer.save_pretrained(self.tok_dir)
        # Every run() loads this same folder; loading it here too gives the same cache fingerprint,
        # so the splits are tokenized once for the whole suite.
        self.tokenizer = load_tokenizer(str(self.tok_dir))
        self.splits = tokenize(raw, self.tokenizer, max_source_length=512)
        self.lengths = list(self.splits["train"]["length"])
        self.target_len = len(self.splits["train"][0]["labels"])


def train_config(name: str, args, data: BenchData, out_dir: Path, **extra):
    base, overrides = CONFIGS[name]
    model = dict(model=args.model, model_config=None) if args.model else dict(model_config=args.model_config)
    return preset(base, **{**overrides, **model, "tokenizer": str(data.tok_dir), "data": args.data,
                           "output_dir": str(out_dir), "final_eval": False, "save_model": False, "keep_checkpoints": 0,
                           "log_every": 10**9, "max_steps": None if args.full else args.warmup + args.steps, **extra})


def measure(name: str, args, data: BenchData, peak, out_dir: Path) -> dict:
    if name == "seed-trainer":
        return measure_trainer(args, data, peak, out_dir)
    if name not in THROUGHPUT_ROWS:
        return measure_loop(name, train_config(name, args, data, out_dir), args, data, peak)
    sizes = [args.throughput_batch] if args.throughput_batch else ([128, 96, 64, 32] if torch.cuda.is_available() else [16])
    for bs in sizes:
        try:
            return measure_loop(name, train_config(name, args, data, out_dir / str(bs), batch_size=bs), args, data, peak)
        except OutOfMemory:
            print(f"throughput: batch {bs} does not fit, trying a smaller one", flush=True)
            release_memory()
    raise SystemExit("error: throughput: no batch size fits")


def measure_loop(name, cfg, args, data: BenchData, peak) -> dict:
    clock, examples, tokens, flops = StepClock(), [], [], []
    # Compiled rows warm up longer on a GPU: the first step compiles, and each length bucket records
    # its CUDA graph the first time it comes up; none of that is steady state.
    warmup = max(args.warmup, args.compiled_warmup) if cfg.compile and torch.cuda.is_available() else args.warmup
    cfg = dataclasses.replace(cfg, max_steps=cfg.max_steps and warmup + args.steps)

    def on_step(state, step, model):
        clock.mark(host_too=len(clock) + 1 == warmup)
        idx = [i for mb in step.micro_batches for i in mb]
        examples.append(step.global_examples)
        tokens.append(step.global_tokens)
        flops.append(sum(train_flops(model_config(model), data.lengths[i], data.target_len) for i in idx))

    with PeakMemory() as mem:
        started = time.perf_counter()
        summary = run(cfg, on_step=on_step)
    row = timing_row(name, cfg, clock.seconds(), examples, tokens, flops, warmup, peak)
    # Set-up (model build, data from the cache) and warm-up, compilation and graph recording included.
    warm_s = clock.host_mark - started
    row.update(mem.report(), compiled=summary["compiled"], cuda_graphs=summary["cuda_graphs"], warmup_steps=warmup, warmup_seconds=warm_s,
               projected_minutes_with_warmup=(warm_s + (SEED_JOB_SAMPLES - sum(examples[:warmup])) / row["samples_per_s"]) / 60)
    if args.full:
        row["full_minutes"] = summary["train_seconds"] / 60
    return row


def measure_trainer(args, data: BenchData, peak, out_dir: Path) -> dict:
    """The seed recipe in transformers.Seq2SeqTrainer: fp32, batch 8, padded to 512, random sampler."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback
    from transformers.trainer_utils import set_seed

    cfg = train_config("seed-trainer", args, data, out_dir)
    set_seed(cfg.seed)
    model = build_model(cfg.model, model_config=cfg.model_config, vocab_size=len(data.tokenizer))
    arch = model.config
    clock, examples, tokens, flops, pending = StepClock(), [], [], [], []
    collate = Collator(pad_token_id=data.tokenizer.pad_token_id, max_length=cfg.max_source_length)

    def collator(rows):
        pending.append([len(r["input_ids"]) for r in rows])  # the Trainer fetches one batch per step here
        return collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            clock.mark()
            lens = pending.pop(0)
            examples.append(len(lens))
            tokens.append(sum(lens))
            flops.append(sum(train_flops(arch, n, data.target_len) for n in lens))

    targs = Seq2SeqTrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr, seed=cfg.seed,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_eps, weight_decay=0.0,
        lr_scheduler_type="linear", warmup_steps=0, num_train_epochs=cfg.epochs, max_steps=-1 if args.full else args.warmup + args.steps,
        logging_steps=10**9, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )
    train = data.splits["train"].select_columns(["input_ids", "labels"])
    with PeakMemory() as mem:
        trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=train, data_collator=collator, callbacks=[Timer()])
        started = time.perf_counter()
        trainer.train()
        full_seconds = time.perf_counter() - started
    row = timing_row("seed-trainer", cfg, clock.seconds(), examples, tokens, flops, args.warmup, peak)
    row.update(mem.report())
    if args.full:
        row["full_minutes"] = full_seconds / 60
    del trainer, model
    return row


def timing_row(name, cfg, marks, examples, tokens, flops, warmup, peak) -> dict:
    if len(marks) <= warmup:
        raise SystemExit(f"error: {name}: only {len(marks)} steps ran; need more than --warmup {warmup}")
    # marks[i] is the end of step i + 1; a step's time runs from the end of the one before it, so
    # the first step (which has no mark before it) is always a warm-up step.
    step_s = [marks[i] - marks[i - 1] for i in range(warmup, len(marks))]
    timed = slice(warmup, len(marks))
    seconds = sum(step_s)
    samples_per_s = sum(examples[timed]) / seconds
    tflops = sum(flops[timed]) / seconds / 1e12
    ms = sorted(1000 * s for s in step_s)
    return dict(
        name=name, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, precision=cfg.precision, optim=cfg.optim,
        padding=padding(cfg),
        timed_steps=len(step_s), ms_per_step=statistics.median(ms), ms_p10=ms[len(ms) // 10], ms_p90=ms[(9 * len(ms)) // 10],
        ms_per_step_mean=statistics.fmean(ms),
        samples_per_s=samples_per_s, tokens_per_s=sum(tokens[timed]) / seconds, model_tflops=tflops,
        mfu=tflops / peak if peak else None, projected_minutes=SEED_JOB_SAMPLES / samples_per_s / 60,
    )


def padding(cfg) -> str:
    if cfg.pad_to_max_length:
        return f"to {cfg.max_source_length}"
    size = f"buckets of {cfg.bucket_multiple}" if cfg.bucket_multiple else f"multiple of {cfg.pad_to_multiple_of}"
    return f"length-grouped, {size}" if cfg.group_by_length else size


def measured(rows: list[dict]) -> list[dict]:
    """The rows that did not fail."""
    return [r for r in rows if "error" not in r]


def add_ratios(rows: list[dict]) -> None:
    """Speed-up over the same-run seed-trainer (samples/s over samples/s) and over the documented job."""
    seed = next((r for r in measured(rows) if r["name"] == "seed-trainer"), None)
    for r in measured(rows):
        r["ratio_vs_seed_trainer"] = r["samples_per_s"] / seed["samples_per_s"] if seed else None
        r["ratio_vs_documented_time"] = DOCUMENTED["minutes"] / r["projected_minutes"]
        r["driver_vs_documented_memory"] = r["peak_driver_mib"] / DOCUMENTED["driver_mib"] if r.get("peak_driver_mib") else None


def measure_eval(args, data: BenchData) -> list[dict]:
    """Reviews/s of `score` and `generate` on the first --eval-samples test reviews, bf16 on a GPU."""
    from flant5_imdb.accel import make_accelerator

    acc = make_accelerator("bf16" if torch.cuda.is_available() else "fp32")
    split = "test" if "test" in data.splits else "train"
    ds = data.splits[split].select(range(min(args.eval_samples, len(data.splits[split]))))
    if args.model:
        model = build_model(args.model)
    else:
        model = build_model("x", model_config=args.model_config, vocab_size=len(data.tokenizer))
    model = model.to(acc.device)
    targets = target_ids(data.tokenizer, "digits")
    rows = []
    # The last row runs the kernel path's attention and norms (what a `kernels` run evaluates with).
    for mode, batch, kernels in (("score", 64, False), ("generate", 64, False), ("score", 256, True)):
        if kernels:
            use_bias_kernel(model)
            fuse_norms(model)
        run_eval = functools.partial(evaluate, targets=targets, accelerator=acc, mode=mode, batch_size=batch, tokenizer=data.tokenizer)
        run_eval(model, ds.select(range(min(2 * batch, len(ds)))))  # warm-up (and compilation)
        sync()
        r = run_eval(model, ds)
        rows.append(dict(mode=mode, batch_size=batch, kernels=kernels, split=split, reviews=len(ds), seconds=r["eval_seconds"],
                         reviews_per_s=r["reviews_per_s"], projected_25k_seconds=25_000 / r["reviews_per_s"]))
        print(json.dumps(rows[-1]), flush=True)
    note = "" if args.model else " (random weights never emit EOS: generate runs its full max_new_tokens, an upper bound)"
    rows.append(dict(note="length-sorted batches" + note))
    del model
    release_memory()
    return rows


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
    # Compiled graphs and their CUDA-graph memory pools belong to the row that made them.
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class PeakMemory:
    """Peak allocated/reserved (torch) and the process's usage as the driver reports it (nvidia-smi, polled)."""

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
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            mine = [int(m) for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line) if int(p) == os.getpid()]
            if mine:
                self.driver_mib = max(self.driver_mib or 0, mine[0])

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def report(self) -> dict:
        if not torch.cuda.is_available():
            return dict(peak_allocated_gib=None, peak_reserved_gib=None, peak_driver_mib=None)
        return dict(peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                    peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30, peak_driver_mib=self.driver_mib)


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

    v = dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
             accelerate=accelerate.__version__, datasets=datasets.__version__, cuda=torch.version.cuda)
    with contextlib.suppress(Exception):
        import bitsandbytes

        v["bitsandbytes"] = bitsandbytes.__version__
    return v


def fmt(x, spec=".1f", none="–"):
    return none if x is None else format(x, spec)


def markdown(result: dict) -> str:
    lines = [
        f"**{result['device']}** · {result['weights']} · {result['timed_steps']} timed steps after {result['warmup_steps']} warm-up · "
        f"MFU against {fmt(result['peak_tflops'], '.0f')} TFLOP/s · `{result['command']}`",
        *(["", "**Incomplete**: the run stopped before every configuration was measured."] if not result["complete"] else []),
        "",
        "| config | batch | precision | optim | padding | ms/step (p10–p90) | samples/s | tokens/s | MFU | 2 epochs (projected) | peak alloc GiB | driver MiB | × seed-trainer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'].replace('|', '/')} |" + " |" * 11)
            continue
        full = f" (full run {r['full_minutes']:.1f} min)" if r.get("full_minutes") else ""
        lines.append(
            f"| {r['name']} | {r['batch_size']} | {r['precision']} | {r['optim']} | {r['padding']} | "
            f"{r['ms_per_step']:.1f} ({r['ms_p10']:.1f}–{r['ms_p90']:.1f}) | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
            f"{fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | {r['projected_minutes']:.1f} min{full} | "
            f"{fmt(r['peak_allocated_gib'], '.2f')} | {fmt(r['peak_driver_mib'], 'd')} | {fmt(r['ratio_vs_seed_trainer'], '.2f')} |"
        )
    doc = result["documented_seed"]
    lines += ["", f"Documented seed: {doc['minutes']:.0f} minutes for 2 epochs, {doc['driver_mib']} MiB ({doc['note']})."]
    evals = [e for e in result["eval"] if "mode" in e]
    lines += [f"\nEvaluation timing failed: {e['error']}" for e in result["eval"] if "error" in e]
    if evals:
        lines += ["", "| eval mode | batch | kernels | reviews (split) | reviews/s | 25,000 reviews (projected) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {e['mode']} | {e['batch_size']} | {'yes' if e['kernels'] else 'no'} | {e['reviews']} ({e['split']}) | "
                  f"{e['reviews_per_s']:.1f} | {e['projected_25k_seconds']:.0f} s |" for e in evals]
        lines += ["", next(e["note"] for e in result["eval"] if "note" in e)]
    checks = targets(result)
    if checks:
        lines += ["", "Kernel-path targets (issue 6), from the rows above:", "",
                  "| target | wanted | measured | met |", "| --- | --- | --- | --- |"]
        lines += [f"| {c['target']} | {c['wanted']} | {c['measured']} | {c['verdict']} |" for c in checks]
    return "\n".join(lines)


def targets(result: dict) -> list[dict]:
    """Each issue-6 target whose row was measured: wanted, measured, and met or missed by how much."""
    rows = {r["name"]: r for r in measured(result["rows"])}
    score = next((e for e in result["eval"] if e.get("mode") == "score" and e.get("kernels")), None)
    checks = []

    def check(target, value, limit, unit, higher_is_better=False):
        met = value >= limit if higher_is_better else value <= limit
        verdict = "yes" if met else f"no: {value / limit:.2f}x the target"
        checks.append(dict(target=target, wanted=f"{'≥' if higher_is_better else '≤'} {limit:g} {unit}",
                           measured=f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}", met=met, verdict=verdict))

    k = rows.get("kernels")
    if k:
        check("seed-recipe step (kernels, batch 8; no attention-probability dropout in the encoder)", k["ms_per_step"], TARGETS["kernels_ms"], "ms")
        if k.get("ratio_vs_seed_trainer"):
            check("speed-up over seed-trainer (same run)", k["ratio_vs_seed_trainer"], TARGETS["kernels_x_seed"], "x", True)
        check("2 epochs incl. compilation (projected: set-up and warm-up + the rest at the timed rate)", k["projected_minutes_with_warmup"],
              TARGETS["two_epochs_minutes"], "min")
        if k["peak_allocated_gib"] is not None:
            check("peak allocated, AdamW (kernels)", k["peak_allocated_gib"], TARGETS["kernels_gib"], "GiB")
    k8 = rows.get("kernels-8bit-ckpt")
    if k8 and k8["peak_allocated_gib"] is not None:
        check("peak allocated, adamw8bit (kernels-8bit-ckpt)", k8["peak_allocated_gib"], TARGETS["kernels_8bit_gib"], "GiB")
    kt = rows.get("kernels-throughput")
    if kt:
        check(f"throughput (kernels-throughput, batch {kt['batch_size']})", kt["samples_per_s"], TARGETS["throughput_samples_s"],
              "samples/s", True)
    if score:
        check("score evaluation of 25,000 reviews (kernels, projected)", score["projected_25k_seconds"], TARGETS["score_eval_25k_s"], "s")
    return checks


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured(rows)
    names = [r["name"] for r in rows]
    colors = ["#c0392b" if n == "seed-trainer" else "#2e86c1" for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.6 * len(rows) + 1.8))
    a.barh(names, [r["projected_minutes"] for r in rows], color=colors)
    a.axvline(DOCUMENTED["minutes"], ls="--", color="gray", label="documented seed: 26 min")
    a.set_xlabel("2 epochs of IMDB (minutes, projected)")
    a.legend(loc="lower right", fontsize=8)
    mem = [r.get("peak_allocated_gib") or 0 for r in rows]
    b.barh(names, mem, color=colors)
    b.axvline(DOCUMENTED["driver_mib"] / 1024, ls="--", color="gray", label="documented seed: 11500 MiB")
    b.set_xlabel("peak GPU memory allocated (GiB)" if any(mem) else "peak GPU memory (no GPU in this run)")
    b.legend(loc="lower right", fontsize=8)
    for ax in (a, b):
        ax.invert_yaxis()
    fig.suptitle("flant5_imdb bench (red: seed-trainer, measured in the same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
