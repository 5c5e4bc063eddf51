"""Write an example of your own labelled data: `python scripts/example_data.py FOLDER`.

FOLDER/train.csv and FOLDER/test.csv: generated support tickets with a `message` column and a
`team` column of three labels (billing, bug, feature), the shape a CSV of your own would have.
"""

import argparse
import csv
import io
import random
import sys
from pathlib import Path

from datasets import Dataset, DatasetDict

# Support tickets for three teams: the README's "your own data" example.
TICKETS = {
    "billing": ["invoice", "charged", "refund", "payment", "billed", "card", "receipt", "price"],
    "bug": ["crash", "crashes", "error", "broken", "freezes", "fails", "bug", "exception"],
    "feature": ["add", "wish", "request", "support", "option", "would", "love", "suggest"],
}
_FILLER = ["the", "app", "my", "account", "i", "it", "when", "this", "month", "please", "again", "today",
           "team", "with", "on", "after", "login", "page", "and", "a", "to", "is", "for", "was"]  # fmt: skip


def make_topics(
    topics: dict[str, list[str]], n_train: int = 600, n_test: int = 150, seed: int = 0
) -> DatasetDict:
    """Texts of shared filler with two to four words of their class's own vocabulary; labels are the
    class names, balanced (any number of classes: the README's and the tests' N-class data)."""
    rng = random.Random(seed)
    names = list(topics)

    def split(n: int) -> Dataset:
        labels = [names[i % len(names)] for i in range(n)]
        rng.shuffle(labels)
        texts = []
        for y in labels:
            words = rng.choices(_FILLER, k=rng.randint(5, 25))
            for w in rng.choices(topics[y], k=rng.randint(2, 4)):
                words.insert(rng.randrange(len(words) + 1), w)
            texts.append(" ".join(words))
        return Dataset.from_dict({"text": texts, "label": labels})

    return DatasetDict({"train": split(n_train), "test": split(n_test)})


def parse(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="where train.csv and test.csv go (made if need be)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    folder = Path(args.folder)
    if folder.is_file():
        print(f"error: {folder} is a file, not a folder", file=sys.stderr)
        return 2
    files = {}
    for split, ds in make_topics(TICKETS).items():
        buffer = io.StringIO()  # the csv module: 750 rows need no progress bar of datasets' writer
        csv.writer(buffer, lineterminator="\n").writerows(
            [("message", "team"), *zip(ds["text"], ds["label"], strict=True)]
        )
        files[folder / f"{split}.csv"] = buffer.getvalue().encode()
    # A file of the user's own is never overwritten (the example's own, written before, may be).
    taken = [str(f) for f, data in files.items() if f.exists() and f.read_bytes() != data]
    if taken:
        hold = "hold" if len(taken) > 1 else "holds"
        print(
            f"error: {' and '.join(taken)} already {hold} other data; name an empty folder", file=sys.stderr
        )
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    for f, data in files.items():
        f.write_bytes(data)
    print(f"written: {folder / 'train.csv'}, {folder / 'test.csv'} (columns message, team)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
