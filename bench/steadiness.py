"""How steady this machine's own speed is: one fixed piece of work (ten 1024 x 1024 float32 matrix
products) timed 40 times in a row, on N threads, its spread printed.

    python bench/steadiness.py --threads 1
    python bench/steadiness.py --threads 2 --beside flan-t5-small --lengths 128,512

Run it twice, seconds apart: where the medians of two runs differ by more than the ratio you want to
read, no bench statistic over whole rows will read it on this machine (its speed moves under both
rows between them); bench/NOTES.md, "Like with like on a CPU".

With --beside, a reference (four of those products and a pass over 64 MB) is timed before each
training step of a random-init model (forward and backward of 8 random sequences, the lengths taken in
turn), and the steps' spread is printed raw and divided by the reference beside them: a reference that
tracks the machine's speed would make the second narrower than the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# As in bench/profile.py: this folder must not shadow the standard library's `profile` (transformers
# imports it, through torch._dynamo, for --beside's model).
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch

from flant5_imdb.config import positive_int


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=positive_int, default=1, help="torch's intra-op threads (default 1)")
    p.add_argument("--repeats", type=positive_int, default=40, help="timings taken (default 40)")
    p.add_argument("--beside", metavar="ARCH", help="time the reference beside training steps of this "
                   "architecture (--model-config's names: tiny, flan-t5-small, ...)")  # fmt: skip
    p.add_argument("--lengths", default="128,512", help="--beside: the steps' sequence lengths, in turn")
    return p.parse_args(argv)


def spread(seconds: list[float]) -> dict:
    s = sorted(seconds)
    mean = statistics.fmean(s)
    return dict(min=s[0], p50=s[len(s) // 2], p90=s[(9 * len(s)) // 10], max=s[-1],
                cv=statistics.pstdev(s) / mean if mean else 0.0)  # fmt: skip


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    if args.beside:
        return beside(args, a, b)
    for _ in range(3):  # warm-up: the first products pay for allocation and the library's set-up
        a @ b
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        seconds.append(time.perf_counter() - started)
    got = dict(threads=args.threads, **spread(seconds))
    print(
        "{threads} thread(s): min {min:.3f} s, median {p50:.3f} s, p90 {p90:.3f} s, max {max:.3f} s".format(
            **got
        )
    )
    return got


def beside(args, a, b) -> dict:
    """The reference timed before each of --repeats training steps; per length: the steps' coefficient of
    variation raw and divided by their reference, and the correlation of the two."""
    from flant5_imdb.modeling import T5ForConditionalGeneration, architecture_config

    torch.set_flush_denormal(True)  # as every CPU run of this project
    model = T5ForConditionalGeneration(architecture_config(args.beside, 128)).train()
    vocab, big = model.config.vocab_size, torch.randn(16_000_000)

    def reference() -> float:
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        big.mul(1.0001)
        return time.perf_counter() - started

    def step(length: int) -> float:
        x, y = torch.randint(2, vocab, (8, length)), torch.randint(2, vocab, (8, 2))
        started = time.perf_counter()
        model(input_ids=x, labels=y).loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    lengths = [int(n) for n in args.lengths.split(",")]
    for n in lengths:  # warm-up
        reference(), step(n)
    timed = {n: ([], []) for n in lengths}
    for i in range(args.repeats):
        n = lengths[i % len(lengths)]
        ref = reference()
        timed[n][0].append(step(n))
        timed[n][1].append(ref)
    got = {}
    for n, (steps, refs) in timed.items():
        raw, ratio = spread(steps), spread([s / r for s, r in zip(steps, refs, strict=True)])
        correlation = statistics.correlation(steps, refs) if len(steps) > 1 else 0.0
        got[n] = dict(steps=len(steps), raw_cv=raw["cv"], normalised_cv=ratio["cv"],
                      reference_cv=spread(refs)["cv"], step_p50=raw["p50"],
                      correlation=correlation)  # fmt: skip
        print(
            "length {}: step median {step_p50:.3f} s; spread (CV) raw {raw_cv:.3f}, divided by the "
            "reference {normalised_cv:.3f}; the reference's own {reference_cv:.3f}; correlation "
            "{correlation:.2f}".format(n, **got[n])
        )
    return got


if __name__ == "__main__":
    main()
