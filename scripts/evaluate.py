"""Evaluate a trained model, a checkpoint, or a Hub model (e.g. google/flan-t5-base zero-shot).

python scripts/evaluate.py --model runs/flant5-imdb/final --data stanfordnlp/imdb
python scripts/evaluate.py --model google/flan-t5-base --verbalizer words --prompt flan --eval-mode generate
"""

import argparse
import sys
from pathlib import Path

# The standard library and the options only: --help and a bad option answer before torch is imported.
from flant5_imdb.config import DATA_CACHE_HELP, THREADS_HELP, Parser, positive_int
from flant5_imdb.launch import closes_launch, speaker


def parse(argv: list[str] | None = None):
    p = Parser(
        description="Evaluate a model on labelled data: accuracy, macro-F1, per-class report, confusions."
    )
    p.add_argument("--model", required=True, help="a run's final/ folder, a checkpoint folder, or a Hub id")
    p.add_argument("--data", default="stanfordnlp/imdb", help="any --data source train.py takes")
    p.add_argument("--split", default="test", help="the split to evaluate; only it is read (default: test)")
    p.add_argument("--data-config", default=None, help="the configuration of a Hub dataset")
    p.add_argument("--text-column", default="text", help="the column holding the texts (default: text)")
    p.add_argument("--label-column", default="label", help="the column holding the labels (default: label)")
    p.add_argument(
        "--skip-bad-rows", action="store_true", help="drop (and list) invalid rows instead of stopping"
    )
    p.add_argument(
        "--eval-mode",
        choices=("score", "generate"),
        default="score",
        help="score = compare label log-likelihoods; generate = greedy decoding (default: score)",
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="texts per forward pass (default: 64)")
    p.add_argument(
        "--max-eval-samples",
        dest="max_samples",
        type=positive_int,
        default=None,
        help="a random subset of this many examples (as train.py's option of the same name)",
    )
    # The earlier spelling, still taken: the one line in main() points to the option's name.
    p.add_argument(
        "--max-samples", dest="old_max_samples", type=positive_int, default=None, help=argparse.SUPPRESS
    )
    p.add_argument("--verbalizer", default=None, help="default: the model's own (digits for a Hub model)")
    p.add_argument("--prompt", default=None, help="default: the model's own (none for a Hub model)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="(default: fp32)")
    p.add_argument(
        "--output-dir",
        default=None,
        help="write eval.json, eval.txt, eval_predictions.jsonl here (default: --model if it is a folder)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the evaluation --output-dir holds (else refused)"
    )
    p.add_argument("--data-cache", default=None, help=DATA_CACHE_HELP)
    p.add_argument("--threads", default="auto", help=THREADS_HELP)
    args = p.parse_args(argv)
    if args.old_max_samples is not None:
        print(
            "note: --max-samples is spelled --max-eval-samples (as in train.py); taken as that",
            file=sys.stderr,
        )
        args.max_samples = args.max_samples or args.old_max_samples
    return args


@closes_launch  # a launch's processes close their group before they exit
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import logging

    logging.basicConfig(level=logging.INFO if speaker() else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    from flant5_imdb.data.reader import DataError
    from flant5_imdb.data.source import parse_source
    from flant5_imdb.rundir import model_folder, refuse_held_evaluation

    try:  # what can be refused from the options and the files alone, before torch is imported
        model = model_folder(args.model)  # a run's folder: its final/
        out = args.output_dir or (model if Path(model).is_dir() else None)
        parse_source(args.data)
        if out is not None and not args.overwrite:
            refuse_held_evaluation(out)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from flant5_imdb.data import Columns
    from flant5_imdb.evaluate import evaluate_saved, format_report
    from flant5_imdb.guards import Interrupted

    try:
        result = evaluate_saved(
            model,
            args.data,
            split=args.split,
            mode=args.eval_mode,
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            verbalizer=args.verbalizer,
            prompt=args.prompt,
            precision=args.precision,
            output_dir=out,
            skip_bad_rows=args.skip_bad_rows,
            columns=Columns(args.text_column, args.label_column, args.data_config),
            threads=args.threads,
            overwrite=args.overwrite,
            data_cache=args.data_cache,
        )
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # Ctrl-C or SIGTERM mid-evaluation: one line, what was kept
        print(str(e), file=sys.stderr)
        return e.exit_code
    print(format_report(result))
    if out:
        print(f"written: {out}/eval.json, eval.txt, eval_predictions.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
