"""Throughput and memory of each training configuration, side by side with the baseline's Trainer.

    python bench/profile.py                                    # all configurations, flan-t5-base, one GPU
    python bench/profile.py --configs hf-trainer,fast --steps 50
    python bench/profile.py --model-config tiny --data synthetic:400 --tokenizer word-level   # CPU, < 1
    minute

Every configuration runs in this one process, one after another, in the bench's order: every
eager row and the eager evaluation timing first (hf-trainer, hf-trainer-tuned, fast, ..., eval),
then the compiled ones (kernels, eval-kernels, ...), since one cold compilation can take minutes;
each for W warm-up and N timed optimizer steps of the real training code; `hf-trainer`
runs `transformers.Seq2SeqTrainer` itself with the baseline recipe. Weights are random unless --model
names real ones: time and memory do not depend on weight values (generation length does: see the
eval note in the output).

Reported per configuration: ms per optimizer step (median, 10th-90th percentile), samples/s, real
(non-padding) source tokens/s, model TFLOP/s and MFU against --peak-tflops (formula in
bench/flops.py), the projected time of the baseline's job (2 epochs x 25,000 = 50,000 samples), the
seconds of set-up and warm-up (compilation included), peak GPU memory (allocated, reserved, and
the process's usage as the driver reports it), and ratios to `hf-trainer` measured in the same
run and to the documented 26 minutes / 11500 MiB.

results.json and results.md are rewritten after every row, each atomically, so a run stopped at
any moment keeps what it measured. SIGTERM (a time guard) stops the run after the training step
in flight; the results then say where it stopped. --append adds rows to an existing results.json.
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
import datetime as dt
import json
import logging
import signal
import tempfile

from bench.harness import (
    CONFIGS,
    EVAL_MODES,
    EVAL_NOTE,
    PLAN,
    RANDOM_WEIGHTS_NOTE,
    SEED_JOB_SAMPLES,
    BenchData,
    add_source_args,
    check_sources,
    device_name,
    measure_eval,
    measure_row,
    row_setups,
    slug,
    versions,
)
from bench.report import DOCUMENTED, PEAK_TFLOPS, write_results
from flant5_imdb.guards import Preempted


class Stopped(BaseException):
    """SIGTERM arrived outside a training step: stop measuring and keep what was measured.

    A BaseException, so that no row's error handling mistakes it for that row's failure.
    """


def main(argv=None) -> dict:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.save_predictions:
        from bench import memory

        memory.save_predictions(row_setups(args, BenchData(args)))
        return {"runs": [{"complete": True}]}
    device = device_name()
    peak = args.peak_tflops
    if peak is None:
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    # A local run goes where git ignores it; a GPU run worth keeping is copied into bench/results/.
    out = Path(args.out or ROOT / "runs" / "bench" / f"{slug(device)}-{dt.date.today().isoformat()}")
    out.mkdir(parents=True, exist_ok=True)
    result = start_results(args, out, device, peak)
    command = "python bench/profile.py " + " ".join(argv if argv is not None else sys.argv[1:])
    this_run = dict(command=command, configs=args.configs, complete=False, stopped=None)
    result["runs"].append(this_run)
    write_results(
        result, out, with_chart=False
    )  # there from the start: a guard that fires early leaves a file

    def stop(signum, frame):
        raise Stopped(f"stopped by {signal.Signals(signum).name} (its time guard)")

    signal.signal(signal.SIGTERM, stop)
    try:
        measure_plan(args, BenchData(args), peak, result, out)
        this_run["complete"] = True
    except (Stopped, Preempted) as e:
        this_run["stopped"] = str(e)
        print(f"{e}; what was measured is in {out}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        table = write_results(result, out)
    print(table)
    print(f"\nwritten: {out}/results.json, results.md, chart.png")
    return result


def start_results(args, out: Path, device: str, peak) -> dict:
    """The results document: the one in --out with --append, else a new one."""
    weights = f"from {args.model}" if args.model else f"random init of {args.model_config}"
    print(f"device: {device}; weights: {weights}; data: {args.data}; tokenizer: {args.tokenizer}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per configuration", flush=True)  # fmt: skip
    if args.append and (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    if not args.model:
        weights += " (time and memory do not depend on weight values)"
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return dict(device=device, date=now, versions=versions(), weights=weights, data=args.data,
                examples=args.examples, tokenizer=args.tokenizer, model_config=args.model_config,
                warmup_steps=args.warmup, timed_steps=args.steps, peak_tflops=peak,
                seed_job_samples=SEED_JOB_SAMPLES, documented_baseline=DOCUMENTED,
                runs=[], rows=[], eval=[])  # fmt: skip


def measure_plan(args, data: BenchData, peak, result: dict, out: Path) -> None:
    """Each selected row (and evaluation timing) in the bench's order, results saved after each."""
    for name in [n for n in PLAN if n in args.configs and (n not in EVAL_MODES or args.eval_samples)]:
        print(f"--- {name}", flush=True)
        if name in EVAL_MODES:
            measure_evals(name, args, data, result, out)
        else:
            measure_one(name, args, data, peak, result, out)


def measure_evals(group: str, args, data: BenchData, result: dict, out: Path) -> None:
    """One group of evaluation timings, added to those already in the results."""
    earlier = [e for e in result["eval"] if "mode" in e]
    note = dict(note=EVAL_NOTE + ("" if args.model else RANDOM_WEIGHTS_NOTE))
    rows = measure_eval(args, data, group, on_row=lambda rows: save(result, earlier + rows + [note], out))
    result["eval"] = earlier + rows + [note]


def measure_one(name: str, args, data: BenchData, peak, result: dict, out: Path) -> None:
    """One row. It is in results.json from the moment it starts (`running`), with how far it got as
    it gets there: a row cut short by a guard's SIGKILL still says so."""
    live = dict(name=name, running=True)
    result["rows"].append(live)
    write_results(result, out, with_chart=False)

    def progress(**fields):
        live.update(fields)
        write_results(result, out, with_chart=False)

    try:
        row = measure_row(name, args, data, peak, Path(tempfile.mkdtemp(prefix=f"bench-{name}-")), progress)
    except Preempted as e:  # SIGTERM inside a training step: the step finished, the run stopped
        finish_row(live, dict(error=f"stopped by the time guard after step {e.step}"))
        raise
    except Stopped:
        finish_row(live, dict(error="stopped by the time guard before it finished"))
        raise
    finish_row(live, row)
    if args.json_rows:
        print(json.dumps(live), flush=True)
    write_results(result, out)  # after every row: a run stopped by its time guard keeps what it measured


def finish_row(live: dict, row: dict) -> None:
    """The row as measured (or failed), keeping how far it got (steps, compile time, graphs) beside it."""
    live.pop("running")
    live.update(row)


def save(result: dict, eval_rows: list[dict], out: Path) -> None:
    result["eval"] = eval_rows
    write_results(result, out, with_chart=False)


# flag, type, default, help: the options besides --configs and the sources
OPTIONS = [
    ("--warmup", int, 5, "untimed optimizer steps first (default 5, at least 1)"),
    ("--steps", int, 20, "timed optimizer steps (default 20)"),
    ("--compiled-warmup", int, 40, "warm-up steps of compiled rows on a GPU (default 40: compilation and "
     "one CUDA graph per length bucket)"),
    ("--throughput-batch", int, None, "batch of the throughput rows (default: the largest of 128/96/64/32 "
     "that fits; 16 on CPU)"),
    ("--eval-samples", int, 1000, "examples timed for score vs generate (default 1000; 0: skip)"),
    ("--row-limit", float, None, "seconds one configuration (or one evaluation mode) may take, retries "
     "included, before it is recorded as timed out (default: none)"),
    ("--peak-tflops", float, None, "peak for MFU (default: the card's dense bf16 peak, if known)"),
    ("--out", str, None, "results folder (default runs/bench/<device>-<date>/)"),
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
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument(
        "--full", action="store_true", help="also run each configuration's whole 2-epoch job end to end"
    )
    p.add_argument(
        "--append", action="store_true", help="add to the results.json in --out instead of starting anew"
    )
    p.add_argument("--json-rows", action="store_true", help="print each row's JSON as it is measured")
    p.add_argument(
        "--save-predictions",
        action="store_true",
        help="measure nothing: predict the peak memory of every row (bench/memory.py) on this CPU and keep "
        "it in bench/predicted_memory.json, where a GPU run reads it instead of spending its time on it",
    )
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    if args.eval_samples < 0:
        p.error(f"--eval-samples must be 0 (no evaluation timing) or more, got {args.eval_samples}")
    if args.row_limit is not None and not args.row_limit > 0:
        p.error(f"--row-limit must be a positive number of seconds, got {args.row_limit:g}")
    check_sources(p, args)
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = [n for n in args.configs if n not in CONFIGS and n not in EVAL_MODES]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(PLAN)})")
    return args


if __name__ == "__main__":
    sys.exit(0 if main()["runs"][-1]["complete"] else 3)
