"""Where a training step's time goes: torch.profiler over steady-state steps of one bench configuration.

    python bench/step_profile.py --config kernels          # flan-t5-base, one GPU
    python bench/step_profile.py --config fast --model-config tiny --data synthetic:200 --tokenizer word-level
    # CPU

Runs the real loop (`flant5_imdb.train.run`; for a Trainer row, `hf-trainer`, the Trainer itself) for
--warmup untimed steps, then profiles --steps
steps and writes --out (default step_profile-<config>.txt): per step, the wall time (CUDA events), the time
the GPU was busy (the sum of its kernels' durations), and the kernel launches; then the top
operators by device time and by host time. Busy time well under wall time means the GPU waits
on the host (Python, launches, batch assembly); busy time near wall time means the kernels
themselves are what to make faster.
"""

from __future__ import annotations

import sys
from pathlib import Path

# As in bench/profile.py: this folder must not shadow the standard library's `profile`.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import dataclasses
import logging
import statistics
import tempfile

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

from bench.clocks import StepClock
from bench.harness import train_config
from bench.rows import ROWS
from bench.sources import BenchData, add_source_args, bench_threads, check_sources
from bench.trainer_row import measure_trainer
from flant5_imdb.train import run


def main(argv=None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = BenchData(args)
    # train_config reads warmup + steps as the run's length; one more step warms the profiler up.
    args.warmup += 1
    args.threads = bench_threads(args, data)
    cfg = train_config(ROWS[args.config], args, data, Path(tempfile.mkdtemp(prefix="step-profile-")))
    if args.batch_size:
        cfg = dataclasses.replace(cfg, batch_size=args.batch_size)
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    clock = StepClock()
    # repeat=1 and acc_events: one profiled window, whose events stay readable after the run.
    window = schedule(skip_first=args.warmup - 1, wait=0, warmup=1, active=args.steps, repeat=1)
    with profile(activities=activities, schedule=window, acc_events=True) as prof:

        def on_step(*_):
            clock.mark()
            prof.step()

        if ROWS[args.config].measures == "trainer":  # the Trainer's step, profiled the same way
            args.full = False
            measure_trainer(cfg, args, data, timed=lambda *_: {}, on_step=on_step)
        else:
            run(cfg, on_step=on_step)
    summary, lines = report(args, cfg, prof, clock.seconds())
    path = Path(args.out or f"step_profile-{args.config}.txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4]), flush=True)
    print(f"written: {path}")
    return summary


def report(args, cfg, prof, seconds: list[float]) -> tuple[dict, list[str]]:
    """The profiled steps' summary (wall and device time, kernels and graph launches per step) and the
    report's lines: the summary, then the top operators by device and by host time."""
    cuda = torch.cuda.is_available()
    wall_ms = [
        1000 * (b - a) for a, b in zip(seconds[args.warmup - 1 :], seconds[args.warmup :], strict=False)
    ]
    events = prof.events()
    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    busy_ms = sum(e.self_device_time_total for e in device_events) / 1000 / args.steps
    summary = dict(
        config=args.config,
        batch_size=cfg.batch_size,
        steps=args.steps,
        wall_ms_median=statistics.median(wall_ms),
        device_busy_ms=busy_ms if cuda else None,
        kernels_per_step=len(device_events) / args.steps if cuda else None,
        graph_launches_per_step=sum(e.name == "cudaGraphLaunch" for e in events) / args.steps,
        # Operator calls per step, by name: the work a step asks for, which no machine's speed changes.
        op_calls={e.key: e.count / args.steps for e in prof.key_averages() if e.key.startswith("aten::")},
    )
    lines = [
        f"{args.config}: batch {cfg.batch_size}, {args.steps} profiled steps after {args.warmup} "
        f"({torch.cuda.get_device_name() if cuda else 'CPU'})",
        f"wall per step (median): {summary['wall_ms_median']:.2f} ms",
        f"operator calls per step: {sum(summary['op_calls'].values()):.0f}",
    ]
    if cuda:
        lines += [
            f"GPU busy per step: {busy_ms:.2f} ms ({100 * busy_ms / summary['wall_ms_median']:.0f}% of wall)",
            f"kernels per step: {summary['kernels_per_step']:.0f}; CUDA graph launches per step: "
            f"{summary['graph_launches_per_step']:.0f}",
        ]
    table = prof.key_averages()
    if cuda:
        lines += [
            "",
            "top operators by self device time:",
            table.table(sort_by="self_device_time_total", row_limit=25),
        ]
    lines += [
        "",
        "top operators by self host time:",
        table.table(sort_by="self_cpu_time_total", row_limit=25),
    ]
    return summary, lines


def parse(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default="kernels",
        choices=[n for n, r in ROWS.items() if r.measures in ("loop", "trainer")],
    )
    add_source_args(p)
    p.add_argument("--batch-size", type=int, default=None, help="override the configuration's batch")
    p.add_argument(
        "--warmup",
        type=int,
        default=40,
        help="steps before profiling (compilation, one CUDA graph per bucket)",
    )
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--out", default=None, help="the report's file (default: step_profile-<config>.txt)")
    args = p.parse_args(argv)
    args.full = False
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    check_sources(p, args)
    return args


if __name__ == "__main__":
    main()
