"""How steady this machine's own speed is: one fixed piece of work (ten 1024 x 1024 float32 matrix
products) timed 40 times in a row, on N threads, its spread printed.

    python bench/steadiness.py --threads 1

Run it twice, seconds apart: where the medians of two runs differ by more than the ratio you want to
read, no bench statistic over whole rows will read it on this machine (its speed moves under both
rows between them); bench/NOTES.md, "Like with like on a CPU".
"""

from __future__ import annotations

import argparse
import time

import torch

from flant5_imdb.config import positive_int


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=positive_int, default=1, help="torch's intra-op threads (default 1)")
    p.add_argument("--repeats", type=positive_int, default=40, help="timings taken (default 40)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):  # warm-up: the first products pay for allocation and the library's set-up
        a @ b
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    got = dict(threads=args.threads, min=seconds[0], p50=seconds[len(seconds) // 2],
               p90=seconds[(9 * len(seconds)) // 10], max=seconds[-1])  # fmt: skip
    print(
        "{threads} thread(s): min {min:.3f} s, median {p50:.3f} s, p90 {p90:.3f} s, max {max:.3f} s".format(
            **got
        )
    )
    return got


if __name__ == "__main__":
    main()
