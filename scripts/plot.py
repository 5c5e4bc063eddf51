"""Plot a training run: `python scripts/plot.py RUN_DIR` writes loss_lr.png, throughput.png,
confusion_matrix.png.
"""

import argparse
import sys

from flant5_imdb.plots import plot_run


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("run_dir", help="a training run's --output-dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        for path in plot_run(args.run_dir):
            print(path)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
