"""Throughput and memory of each training configuration, side by side with the baseline's Trainer.

    python bench/profile.py                                    # all configurations, flan-t5-base, one GPU
    python bench/profile.py --configs hf-trainer,fast --steps 50
    python bench/profile.py --model-config tiny --data synthetic:400 --tokenizer word-level   # CPU, < 1
    minute

Every row of bench/rows.py (or of --configs) runs in this one process, in that order: the eager rows
and the eager evaluation timing first, then the compiled ones (a cold compilation can take minutes);
each for W warm-up and N timed optimizer steps of the real training code, or of
`transformers.Seq2SeqTrainer` itself for the Trainer rows. Every row runs on the same CPU threads,
decided once at the start (--threads) and recorded. Weights are random unless --model names real
ones: time and memory do not depend on weight values (generation length does: see the eval note).

Reported per row: step times, samples/s, tokens/s, MFU, the projected 2-epoch job, set-up seconds,
peak GPU memory beside its prediction, and the ratio to each Trainer row (docs/benchmarks.md).

results.json and results.md are rewritten after every row, each atomically, so a run stopped at
any moment keeps what it measured. SIGTERM (a time guard) stops the run after the training step
in flight; the results then say where it stopped. --append adds rows to an existing results.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/profile.py`, bench/ comes first on sys.path, where this file shadows the standard
# library's `profile` (torch imports it): bench/ off the path before torch, the checkout's root on it.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import datetime as dt
import logging
import signal

import torch

from bench.clocks import device_name, slug
from bench.harness import SEED_JOB_SAMPLES, row_setups
from bench.report import PEAK_TFLOPS, start_results, write_results
from bench.rows import PLAN, ROWS
from bench.runner import Stopped, measure_plan
from bench.sources import BenchData, add_source_args, bench_threads, check_sources
from flant5_imdb.accel import keep_freed_memory
from flant5_imdb.config import positive_int
from flant5_imdb.guards import Preempted


def main(argv=None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.save_predictions:
        from bench import memory

        memory.save_predictions(row_setups(args, BenchData(args)))
        return {"runs": [{"complete": True}]}
    device = device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    # A local run goes where git ignores it; a GPU run worth keeping is copied into bench/results/.
    out = Path(args.out or ROOT / "runs" / "bench" / f"{slug(device)}-{dt.date.today().isoformat()}")
    out.mkdir(parents=True, exist_ok=True)
    result = start_results(args, out, device, peak, SEED_JOB_SAMPLES)
    command = "python bench/profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    this_run = dict(command=command, configs=args.configs, complete=False, stopped=None)
    result["runs"].append(this_run)
    write_results(result, out, with_chart=False)  # there from the start: a guard that fires early leaves it

    def stop(signum, frame):
        raise Stopped(f"stopped by {signal.Signals(signum).name} (its time guard)")

    signal.signal(signal.SIGTERM, stop)
    try:
        data = BenchData(args)
        args.threads = this_run["cpu_threads"] = bench_threads(args, data)
        this_run["flush_denormal"] = bool(args.threads)  # set with the threads, for every row (accel.py)
        this_run["keep_freed_memory"] = bool(args.threads) and keep_freed_memory()  # set with them (accel.py)
        measure_plan(args, data, peak, result, out)
        this_run["complete"] = True
    except (Stopped, Preempted) as e:
        this_run["stopped"] = str(e)
        print(f"{e}; what was measured is in {out}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        table = write_results(result, out)
    print(f"{table}\n\nwritten: {out}/results.json, results.md, chart.png")
    return result


# flag, type, default, help: the options besides --configs and the sources
OPTIONS = [
    ("--warmup", positive_int, 5, "untimed optimizer steps first (default 5, at least 1)"),
    ("--steps", positive_int, 20, "timed optimizer steps (default 20)"),
    ("--rounds", positive_int, 1, "measure the training rows this many times, interleaved (A B, B A, ...), "
     "each row's timed steps pooled: drift of the machine falls on every row alike (default 1)"),
    ("--turns", bool, False, "CPU: every training row in a process of its own, all at once, computing one "
     "at a time a step each in turn (A B, B A, ...): the machine's drift falls on every row's steps alike"),
    ("--compiled-warmup", int, 40, "warm-up steps of compiled rows on a GPU (default 40: compilation and "
     "one CUDA graph per length bucket)"),
    ("--throughput-batch", int, None, "batch of the throughput rows (default: the largest of 128/96/64/32 "
     "that fits; 16 on CPU)"),
    ("--eval-samples", int, 1000, "examples timed for score vs generate (default 1000; 0: skip)"),
    ("--row-limit", float, None, "seconds one configuration (or one evaluation mode) may take, retries "
     "included, before it is recorded as timed out (default: none)"),
    ("--peak-tflops", float, None, "peak for MFU (default: the card's dense bf16 peak, if known)"),
    ("--out", str, None, "results folder (default runs/bench/<device>-<date>/)"),
    ("--full", bool, False, "also run each configuration's whole 2-epoch job end to end"),
    ("--append", bool, False, "add to the results.json in --out instead of starting anew"),
    ("--json-rows", bool, False, "print each row's JSON as it is measured"),
    ("--save-predictions", bool, False, "measure nothing: predict the peak memory of every row "
     "(bench/memory.py) on this CPU and keep it in bench/predicted_memory.json, where a GPU run reads it"),
]  # fmt: skip


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs",
        default=",".join(PLAN),
        help=f"comma-separated, from: {', '.join(PLAN)} (run in that order; `eval` and `eval-kernels` "
        "are the evaluation timings)",
    )
    add_source_args(p)
    for flag, kind, default, text in OPTIONS:
        how = dict(action="store_true") if kind is bool else dict(type=kind, default=default)
        p.add_argument(flag, help=text, **how)
    args = p.parse_args(argv)
    if args.eval_samples < 0:
        p.error(f"--eval-samples must be 0 (no evaluation timing) or more, got {args.eval_samples}")
    if args.turns and (args.rounds > 1 or torch.cuda.is_available()):
        p.error("--turns is for a CPU run, in place of --rounds (on a GPU, rows in processes of their own "
                "would share its memory)")  # fmt: skip
    if args.row_limit is not None and not args.row_limit > 0:
        p.error(f"--row-limit must be a positive number of seconds, got {args.row_limit:g}")
    check_sources(p, args)
    asked = [c for c in args.configs.split(",") if c]
    if unknown := [n for n in asked if n not in ROWS]:
        p.error(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(PLAN)})")
    # The bench's order, whatever the order asked; evaluation rows only with examples to time.
    args.configs = [n for n in PLAN if n in asked and (ROWS[n].measures != "eval" or args.eval_samples)]
    return args


if __name__ == "__main__":
    sys.exit(0 if main()["runs"][-1]["complete"] else 3)
