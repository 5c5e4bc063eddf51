"""How sure a ratio between two rows is: a bootstrap interval over their timed steps.

One run's ratio is one draw: on a CPU, the steps of two rows that do the same work differ by a few
percent from run to run, so a ratio of 0.975 against a target of 0.98 says nothing by itself. The
interval says how far the ratio moves when the run's own steps are drawn again (with replacement,
`RESAMPLES` times, seeded: the same results give the same interval). It holds the steps' own spread,
not drift of the machine between rows measured at different times: with `--turns` the rows' steps
alternate, so a slow spell falls on both, and the steps are drawn in pairs (step i of each row, taken
at about the same time). Slow spells longer than a step make any such interval somewhat too narrow.
Where the two rows' steps take other batches (a length-grouped row beside a padded one), drawing the
steps again also draws other batch sizes, and the interval is the wider for it: it then also says how
far a few steps of such a row are from its whole job.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
MIN_STEPS = 5  # fewer timed steps than this: no interval (a handful of steps has no spread to read)


def _rates(ms: np.ndarray, examples: np.ndarray, draws: np.ndarray, turns: bool) -> np.ndarray:
    """Each draw's rate as `report.rate` takes it: every step's examples over their time with --turns,
    else the median step's."""
    if turns:
        return examples[draws].sum(axis=1) / ms[draws].sum(axis=1)
    return np.median(examples[draws] / ms[draws], axis=1)


def ratio_interval(row: dict, peer: dict, turns: bool) -> tuple[float, float] | None:
    """The `LEVEL` interval of `row`'s rate over `peer`'s, from their timed steps (`step_ms`,
    `step_examples`); None where either has fewer than `MIN_STEPS`."""
    steps = [(np.asarray(r.get("step_ms") or [], float), np.asarray(r.get("step_examples") or [], float))
             for r in (row, peer)]  # fmt: skip
    if min(len(ms) for ms, _ in steps) < MIN_STEPS:
        return None
    rng = np.random.default_rng(0)
    (ms, ex), (peer_ms, peer_ex) = steps
    draws = rng.integers(0, len(ms), size=(RESAMPLES, len(ms)))
    # Paired (the same steps of both) where the rows took turns step by step; else drawn apart.
    paired = turns and len(ms) == len(peer_ms)
    peer_draws = draws if paired else rng.integers(0, len(peer_ms), size=(RESAMPLES, len(peer_ms)))
    ratios = _rates(ms, ex, draws, turns) / _rates(peer_ms, peer_ex, peer_draws, turns)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def parse_args(argv: list[str] | None = None):
    import argparse

    p = argparse.ArgumentParser(description="Each row's ratio to each peer row of recorded bench runs, "
                                "with its interval (runs recorded before intervals were, too).")  # fmt: skip
    p.add_argument(
        "folders", nargs="+", metavar="RESULTS_FOLDER", help="a folder holding a run's results.json"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """`python bench/intervals.py RESULTS_FOLDER...`: each row's ratio to each peer row of a run, with its
    interval, from the run's results.json."""
    import json
    from pathlib import Path

    from bench.report import add_ratios, measured, peers, ratio_field

    for folder in parse_args(argv).folders:
        if not (Path(folder) / "results.json").is_file():
            raise SystemExit(f"error: {folder}: no results.json (name a folder a bench run wrote)")
        result = json.loads((Path(folder) / "results.json").read_text())
        rows = result["rows"]
        add_ratios(rows, documented=False, turns=bool(result.get("turns")))  # as the report sets them
        for peer in peers(rows):
            for row in (r for r in measured(rows) if r is not peer):
                field = ratio_field(peer["name"])
                ratio, interval = row[field], row[field + "_interval"]
                spread = f"{LEVEL:.0%}: {interval[0]:.3f}–{interval[1]:.3f}" if interval else "too few steps"
                print(f"{folder}: {row['name']} x {peer['name']} {ratio:.3f} ({spread})")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    # As in bench/profile.py: this folder must not shadow the standard library's `profile`.
    ROOT = Path(__file__).resolve().parents[1]
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
    main()
