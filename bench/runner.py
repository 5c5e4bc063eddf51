"""The bench's plan run: each selected row in the bench's order, with --rounds the training rows again
in alternating order, each row's rounds pooled; results.json and results.md rewritten after every row.

`bench/profile.py` is the command; `bench/harness.py` measures one training row, `bench/eval_timing.py`
one evaluation row.
"""

from __future__ import annotations

import json
import multiprocessing
import queue
import signal
import tempfile
from pathlib import Path

import torch

from bench.clocks import Turns, pass_order
from bench.commands import own_peak_kib
from bench.eval_timing import EVAL_NOTE, RANDOM_WEIGHTS_NOTE, measure_eval
from bench.harness import measure_row, pooled
from bench.report import write_results
from bench.rows import ROWS
from bench.sources import BenchData
from flant5_imdb.guards import Preempted


class Stopped(BaseException):  # not an Exception: no row's error handling mistakes it for its failure
    """SIGTERM arrived outside a training step: stop measuring and keep what was measured."""


def measure_plan(args, data: BenchData, peak, result: dict, out: Path) -> None:
    """Each selected row (and evaluation timing) in the bench's order, results saved after each; with
    --rounds R, the training rows R times over, each round in the reverse order of the one before (A B,
    B A, A B...): a machine that drifts slows every row alike, and each row's rounds are pooled."""
    rows = [ROWS[n] for n in args.configs]
    training, so_far = [r for r in rows if r.measures != "eval"], {}
    if args.turns:
        measure_in_turns(training, args, peak, result, out)
        rows, training = [r for r in rows if r.measures == "eval"], []
    for n in range(args.rounds):
        for row in rows if n == 0 else pass_order(training, n):
            if n and "error" in so_far[row.name][0]:
                continue  # a row that failed in its first round is not run again
            print(f"--- {row.name}" + (f" (round {n + 1} of {args.rounds})" if n else ""), flush=True)
            if row.measures == "eval":
                measure_evals(row, args, data, result, out)
            else:
                so_far[row.name] = measure_one(row, args, data, peak, result, out, so_far.get(row.name))


def measure_evals(row, args, data: BenchData, result: dict, out: Path) -> None:
    """One row of evaluation timings, added to those already in the results."""
    earlier = [e for e in result["eval"] if "mode" in e]
    note = dict(note=EVAL_NOTE + ("" if args.model else RANDOM_WEIGHTS_NOTE))

    def save(rows):
        result["eval"] = earlier + rows + [note]
        write_results(result, out, with_chart=False)

    save(measure_eval(row, args, data, on_row=save))


def measure_one(row, args, data: BenchData, peak, result: dict, out: Path, so_far=None) -> tuple:
    """One round of a row; returns (its entry in the results, every round it measured). The entry is in
    results.json from the moment the row starts (`running`), with how far it got as it gets there
    (steps, compile time, graphs), kept beside what it measured: a row cut short by a guard's SIGKILL
    still says so. After a later round it holds the rounds pooled (`harness.pooled`); a later round that
    fails or is stopped leaves the rounds before it standing and says so (`round_errors`)."""
    live, rounds = so_far or (dict(name=row.name, **row.described()), [])
    if not rounds:
        result["rows"].append(live)
    live["running"] = True
    write_results(result, out, with_chart=False)

    def progress(**fields):
        live.update(fields)
        write_results(result, out, with_chart=False)

    folder, got = (
        Path(tempfile.mkdtemp(prefix=f"bench-{row.name}-")),
        dict(error="stopped before it finished"),
    )
    try:
        got = measure_row(row, args, data, peak, folder, progress)
    except Preempted as e:  # SIGTERM inside a training step: the step finished, the run stopped
        got = dict(error=f"stopped by the time guard after step {e.step}")
        raise
    except Stopped:
        got = dict(error="stopped by the time guard before it finished")
        raise
    finally:
        live.pop("running")
        if not rounds:  # the first round: the row is what it measured (or its error)
            rounds.append(got)
            live.update(got)
        elif "error" in got:
            live.setdefault("round_errors", []).append(f"round {len(rounds) + 1}: {got['error']}")
        else:
            rounds.append(got)
            live.update(pooled(rounds, peak))
    if args.json_rows:
        print(json.dumps(live), flush=True)
    write_results(result, out)  # after every row: a run stopped by its time guard keeps what it measured
    return live, rounds


def measure_in_turns(rows: list, args, peak, result: dict, out: Path) -> None:
    """`--turns`: each training row in a process of its own, all started at once, computing one at a time
    a step each in turn (each pass the reverse of the one before; `clocks.Turns`), so that the machine's
    drift falls on every row's steps alike. Each row's entry is written when every row is done."""
    # Fresh interpreters (no state of this one's), not daemons: a row may start processes of its own.
    context = multiprocessing.get_context("spawn")
    turns, results = Turns(len(rows), context), context.Queue()
    children = [
        context.Process(target=_row_in_turn, args=(i, row.name, args, peak, turns, results))
        for i, row in enumerate(rows)
    ]
    got: dict[int, dict] = {}
    try:
        for child in children:
            child.start()
        print(f"--- {', '.join(r.name for r in rows)}: a step each in turn", flush=True)
        while len(got) < len(rows):
            try:
                index, row = results.get(timeout=1)
                got[index] = row
            except queue.Empty:
                for i, child in enumerate(children):  # one that died without a word: the others go on
                    # (One that ended well put its row on the queue before it ended: that row comes.)
                    if i not in got and not child.is_alive() and child.exitcode not in (None, 0):
                        turns.leave(i)
                        got[i] = dict(error=process_ended(child.exitcode))
    finally:
        for i, child in enumerate(c for c in children if c.pid is not None):  # the ones started
            child.join(timeout=60 if i in got else 0)  # a row done: let its process end (and clean up)
            if child.is_alive():
                child.terminate()
                child.join()
        results.close()
        for i, row in enumerate(rows):
            ended = dict(error="stopped before it finished")
            entry = {**dict(name=row.name, **row.described()), **got.get(i, ended)}
            result["rows"].append(entry)
            if args.json_rows:
                print(json.dumps(entry), flush=True)
        write_results(result, out)


def process_ended(code: int) -> str:
    """Why a row's process ended without its row, in words (`code`: its exit code, minus the signal's number
    where a signal ended it)."""
    if code == -signal.SIGKILL:  # most often the kernel's, when memory runs out
        return ("its process was killed (SIGKILL: the kernel's out-of-memory killer sends it; --turns holds "
                "every row's process at once)")  # fmt: skip
    return f"its process ended (exit code {code})"


def _row_in_turn(index: int, name: str, args, peak, turns: Turns, results) -> None:
    """A child of `measure_in_turns`: its row measured as `measure_one` would, taking its turns."""
    from flant5_imdb.accel import training_threads

    training_threads(args.threads, 0, torch.device("cpu"))  # as the parent (`bench_threads`), its count
    data = BenchData(args)
    turns.join(index)
    try:
        row = measure_row(ROWS[name], args, data, peak, Path(tempfile.mkdtemp(prefix=f"bench-{name}-")))
    except BaseException as e:  # the parent is told whatever ended the row
        row = dict(error=f"{type(e).__name__}: {e}")
    finally:
        turns.leave()
    # Where this row's steps ended among every row's (0, 1, 2...: the order they computed in), and how
    # long its clock stood still while the others computed.
    row.update(
        turns_passed_at=turns.passed_at, turns_waited_s=turns.waited_s, process_peak_rss_gib=own_peak_gib()
    )
    results.put((index, row))


def own_peak_gib() -> float | None:
    """A --turns row's own peak memory (its data, model and steps), in GiB: the rows' sum is what the run
    needs at once."""
    kib = own_peak_kib()
    return None if kib is None else kib / 2**20
