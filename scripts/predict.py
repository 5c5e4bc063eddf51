"""Classify texts with a trained model, into the classes it was trained on.

python scripts/predict.py --model runs/flant5-imdb/final "A wonderful film." "Two hours I will not get back."
python scripts/predict.py --model runs/flant5-imdb/final --file reviews.csv --jsonl > predictions.jsonl
cat reviews.txt | python scripts/predict.py --model runs/flant5-imdb/final
"""

import json
import sys

from flant5_imdb.config import THREADS_HELP, Parser, positive_int
from flant5_imdb.data import DataError, read_texts, text_problem
from flant5_imdb.modeling import model_folder
from flant5_imdb.predict import Classifier, InputError


def parse(argv: list[str] | None = None):
    p = Parser(description="Classify texts with a trained model, into the classes it was trained on.")
    p.add_argument("texts", nargs="*", help="texts (if none and no --file: one text a line on stdin)")
    p.add_argument("--model", required=True, help="a run's final/ folder, a checkpoint folder, or a Hub id")
    p.add_argument(
        "--file",
        help=".txt (one text a line), .csv, .jsonl or .json with a 'text' column (any of them .gz)",
    )
    p.add_argument("--jsonl", action="store_true", help="JSON lines instead of a table")
    p.add_argument(
        "--text-column",
        default="text",
        help="with --file (csv, jsonl): the column of the texts (default: text)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward pass (default: 32)")
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="leave out records that are no usable text (each named on stderr) instead of stopping",
    )
    p.add_argument("--verbalizer", default=None, help="default: the one the model was trained with")
    p.add_argument("--prompt", default=None, help="default: the one the model was trained with")
    p.add_argument("--threads", default="auto", help=THREADS_HELP)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.texts and args.file:
            raise InputError("give texts as arguments or --file, not both")
        if args.texts:
            texts, skipped = args.texts, []
            problems = [f"text {i + 1}: {p}" for i, t in enumerate(texts) if (p := text_problem(t))]
            if problems:
                raise InputError(problems[0])
        else:
            source = b"" if args.file else sys.stdin.buffer.read()
            texts, skipped = read_texts(
                args.file, source, skip_bad_rows=args.skip_bad_rows, text_column=args.text_column
            )
        for row in skipped:
            print(f"skipped {row}", file=sys.stderr)
        if not texts:
            raise InputError(
                "no texts given" + (f" (all {len(skipped)} records were skipped)" if skipped else "")
            )
        model = model_folder(args.model)  # a run's folder: its final/
        clf = Classifier(model, verbalizer=args.verbalizer, prompt=args.prompt, batch_size=args.batch_size,
                         threads=args.threads)  # fmt: skip
        preds = clf.predict(texts)
    except (InputError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.jsonl:
        for text, pred in zip(texts, preds, strict=True):
            print(
                json.dumps(
                    {"text": text, "label": pred.label, "label_name": pred.label_name, "probs": pred.probs}
                )
            )
        return 0
    # One line per text: its class, that class's probability, and the text on one line, cut at 100 characters.
    width = max(len("class"), *(len(p.label_name) for p in preds))
    print(f"{'class':<{width}}  {'prob':>6}  text")
    for text, pred in zip(texts, preds, strict=True):
        line = " ".join(text.split())
        print(
            f"{pred.label_name:<{width}}  {pred.prob:6.4f}  {line if len(line) <= 100 else line[:97] + '...'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
