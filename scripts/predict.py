"""Classify texts with a trained model, into the classes it was trained on.

python scripts/predict.py --model runs/flant5-imdb/final "A wonderful film." "Two hours I will not get back."
python scripts/predict.py --model runs/flant5-imdb --file reviews.csv --output predictions.jsonl
cat reviews.txt | python scripts/predict.py --model runs/flant5-imdb/final
accelerate launch --config_file configs/multi_gpu.yaml --num_processes 4 scripts/predict.py \
    --model runs/imdb --file reviews.parquet --output predictions.parquet
"""

import sys

from flant5_imdb.config import THREADS_HELP, Parser, positive_int
from flant5_imdb.launch import closes_launch, speaker


def parse(argv: list[str] | None = None):
    p = Parser(description="Classify texts with a trained model, into the classes it was trained on.")
    p.add_argument("texts", nargs="*", help="texts (if none and no --file: one text a line on stdin)")
    p.add_argument("--model", required=True, help="a run's final/ folder, a checkpoint folder, or a Hub id")
    p.add_argument(
        "--file",
        help=".txt (one text a line), .csv, .jsonl, .json or .parquet with a 'text' column (all but parquet "
        "may be .gz); read as it goes, of any size",
    )
    p.add_argument(
        "--text-column",
        default="text",
        help="with --file (csv, jsonl, json, parquet): the column of the texts (default: text)",
    )
    p.add_argument(
        "--output",
        help="write the predictions to this .csv, .jsonl or .parquet file (default: a table on stdout); a "
        "stopped job run again with the same --output continues where it stopped",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output, or start its stopped job over")
    p.add_argument("--jsonl", action="store_true", help="on stdout: JSON lines instead of a table")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        default=4096,
        help="texts in hand at a time: sorted by length, predicted, then written (default: 4096)",
    )
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="leave out records that are no usable text (each named on stderr) instead of stopping",
    )
    p.add_argument("--verbalizer", default=None, help="default: the one the model was trained with")
    p.add_argument("--prompt", default=None, help="default: the one the model was trained with")
    p.add_argument("--threads", default="auto", help=THREADS_HELP)
    return p.parse_args(argv)


@closes_launch  # a launch's processes close their group before they exit
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    speaks = speaker()  # under a launch, one process speaks (and writes) for all
    from flant5_imdb.data.reader import DataError, check_text_file

    try:  # a file that is not there, or of no format read here: refused before torch is imported
        if args.file:
            check_text_file(args.file)
    except DataError as e:
        if speaks:
            print(f"error: {e}", file=sys.stderr)
        return 2
    from flant5_imdb.accel import MainFailed
    from flant5_imdb.predict import Interrupted, PredictJob, run_job

    try:
        line = run_job(PredictJob(**{**vars(args), "texts": tuple(args.texts)}))
    except MainFailed:  # the main process failed first and has said why
        return 1
    except Interrupted as e:
        if speaks:
            print(f"\n{e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:  # the input, an option or the output, said in one line
        if speaks:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if speaks:
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
