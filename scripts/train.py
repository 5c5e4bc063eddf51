"""Fine-tune FLAN-T5 to classify text: `accelerate launch scripts/train.py [--preset NAME] [options]`.

Also runs under plain `python`. `--help` lists every option.
"""

import logging
import sys

# The standard library only (torch comes after the checks): --help and a bad option answer at once.
from flant5_imdb.config import ConfigError, parse_args
from flant5_imdb.data.reader import DataError
from flant5_imdb.launch import speaker
from flant5_imdb.rundir import preflight


def main(argv: list[str] | None = None) -> int:
    # One process speaks for all: the others log errors only, and print nothing that the first prints too.
    speaks = speaker()
    try:
        cfg = parse_args(argv)  # options, files and the output folder checked before torch is imported
        preflight(cfg)
    except (ConfigError, DataError) as e:
        if speaks:  # every process parses the same command line
            print(f"error: {e}", file=sys.stderr)
        return 2
    from flant5_imdb.accel import MainFailed
    from flant5_imdb.checkpoint import CheckpointError
    from flant5_imdb.evaluate import format_report
    from flant5_imdb.guards import Interrupted, NonFiniteError, OutOfMemory, Preempted
    from flant5_imdb.train import run

    logging.basicConfig(level=logging.INFO if speaks else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    logging.getLogger("accelerate").setLevel(logging.WARNING if speaks else logging.ERROR)
    try:
        summary = run(cfg)
    except MainFailed:  # the main process failed first and has said why
        return 1
    except (ConfigError, DataError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Preempted, Interrupted) as e:  # one line: what was kept, and how to go on
        if speaks:
            print(str(e), file=sys.stderr)
        return e.exit_code  # 143 for SIGTERM, 130 for SIGINT
    except (NonFiniteError, OutOfMemory) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not speaks:
        return 0
    if summary["eval"]:
        print(format_report(summary["eval"]))
    print(f"done: {summary['steps']} steps in {summary['train_seconds']:.1f} s; outputs in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
