"""Write an example of your own labelled data: `python scripts/example_data.py FOLDER`.

FOLDER/train.csv and FOLDER/test.csv: generated support tickets with a `message` column and a
`team` column of three labels (billing, bug, feature), the shape a CSV of your own would have.
"""

import argparse
import sys
from pathlib import Path

from flant5_imdb.data import TICKETS, make_topics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folder", help="where train.csv and test.csv go (made if need be)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if folder.is_file():
        print(f"error: {folder} is a file, not a folder", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    for split, ds in make_topics(TICKETS).items():
        ds.rename_columns({"text": "message", "label": "team"}).to_csv(
            str(folder / f"{split}.csv"), index=False
        )
    print(f"written: {folder / 'train.csv'}, {folder / 'test.csv'} (columns message, team)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
