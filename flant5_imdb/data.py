"""From a data source to tokenized examples.

`load_imdb(source)` turns any supported source into a validated `DatasetDict` whose splits have
exactly two columns, `text` (str) and `label` (int 0 = negative, 1 = positive).
`tokenize(...)` turns that into model inputs: `input_ids`, `labels` (the verbalized target),
`length` (source tokens, for the length-grouped sampler), `id` (the row in its split) and `label`.

Sources:
  * a Hugging Face Hub id (default `stanfordnlp/imdb`);
  * a parquet / csv / jsonl file, a folder holding `train.*` and `test.*`, or an explicit
    mapping `train=PATH,test=PATH`;
  * the original `aclImdb/` folder (`train/pos/*.txt`, `train/neg/*.txt`, `test/...`);
    `train/unsup/` (unlabelled) is not read;
  * `synthetic` or `synthetic:N`: a small generated sentiment set for the offline demo and tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Dataset, DatasetDict

from flant5_imdb.labels import IMDB, LabelSpace, canonical, infer_labels, verbalize
from flant5_imdb.reader import BadRow, DataError, file_format, read_table, text_problem

__all__ = [
    "Columns",
    "Loaded",
    "load_labelled",
    "verbalize",
    "BadRow",
    "Collator",
    "DataError",
    "load_imdb",
    "source_splits",
    "hold_out",
    "tokenize",
    "target_ids",
    "make_synthetic",
]

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "stanfordnlp/imdb"
SPLITS = ("train", "test", "validation")
# Named prompt templates; anything else containing `{text}` is used as given.
PROMPTS = {
    "none": "{text}",
    "flan": "{text}\n\nIs the sentiment of this movie review negative or positive?",
}
MAX_REPORTED_ROWS = 5
SYNTHETIC_MIN = 10


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class Loaded:
    """A source's validated splits (`text`, `label` = class index), its label space, the rows dropped."""

    splits: DatasetDict
    labels: LabelSpace
    skipped: list[BadRow]


@dataclass(frozen=True)
class Columns:
    """Where a source keeps its texts and labels, and (for a Hub dataset) which configuration."""

    text: str = "text"
    label: str = "label"
    config: str | None = None

    def __post_init__(self):
        if self.text == self.label:
            raise DataError(
                f"--text-column and --label-column both name {self.text!r}: the texts and the labels must "
                "be two different columns"
            )


def load_labelled(
    source: str = DEFAULT_SOURCE,
    *,
    skip_bad_rows: bool = False,
    splits: Iterable[str] | None = None,
    labels: LabelSpace | None = None,
    label_order: Iterable[str] | None = None,
    columns: Columns = Columns(),
    train_split: str = "train",
) -> Loaded:
    """Load `source` (only `splits`, if given) into validated splits with class-index labels.

    The label space is `labels` (a saved model's), or taken from the `train_split`'s labels
    (`label_order`: the classes by name, in order; see `labels.infer_labels`).

    Raises:
        DataError: the source is missing, unreadable or malformed (`--data` syntax), a split lacks a
            column, or a row is bad (empty text, a label outside the label space, a record the
            reader cannot take) and `skip_bad_rows` is off.
    """
    raws = _read_source(source, None if splits is None else set(splits), columns)
    if labels is None:
        first = raws.get(train_split) or next(iter(raws.values()), None)
        labels = infer_labels(first.ds["label"] if first is not None else [], label_order)
    out, dropped = {}, []
    for split, raw in raws.items():
        ds, rows = _validate(raw, skip_bad_rows, split, labels)
        out[split], dropped = ds, dropped + rows
    if dropped:
        shown = "; ".join(str(r) for r in dropped[:MAX_REPORTED_ROWS])
        more = f" (and {len(dropped) - MAX_REPORTED_ROWS} more)" if len(dropped) > MAX_REPORTED_ROWS else ""
        logger.warning("--skip-bad-rows: dropped %d bad row(s): %s%s", len(dropped), shown, more)
    if train_split in out:
        _warn_about_classes(source, out[train_split], labels, columns)
    return Loaded(DatasetDict(out), labels, dropped)


def load_imdb(
    source: str = DEFAULT_SOURCE, *, skip_bad_rows: bool = False, splits: Iterable[str] | None = None
) -> tuple[DatasetDict, list[BadRow]]:
    """`load_labelled` for a source whose label space is its own: (splits, rows dropped)."""
    loaded = load_labelled(source, skip_bad_rows=skip_bad_rows, splits=splits)
    return loaded.splits, loaded.skipped


def _warn_about_classes(source: str, ds: Dataset, space: LabelSpace, columns: Columns) -> None:
    """What a label space may get wrong without being an error, warned about by name at any data size:
    one class only; a class so rare beside another that it may be a typo; a class named by --labels
    that training never shows; columns that look swapped."""
    labels = list(ds["label"])  # a plain list: a datasets Column re-reads Arrow on every pass
    counts = class_counts(labels, len(space))
    present = [i for i, c in enumerate(counts) if c]
    if len(present) == 1:
        logger.warning(
            "%s: every training example has label %s: a classifier cannot learn from one class",
            source,
            space.values[present[0]] if space.kind != "imdb" else present[0],
        )
    most = max(counts, default=0)
    rare = [f"{space.values[i]!r} ({c})" for i, c in enumerate(counts) if 0 < c <= 3 and most >= 10 * c]
    if rare and space.kind != "imdb":
        logger.warning(
            "%s: class(es) %s have 3 training examples or fewer beside one with %d: a typo? Name the classes "
            "with --labels to make any other value an error",
            source,
            ", ".join(rare),
            most,
        )
    absent = [space.values[i] for i, c in enumerate(counts) if not c]
    if absent and space.kind == "name" and len(present) > 1:
        logger.warning(
            "%s: class(es) %s (from --labels) have no training example: the model cannot learn them",
            source,
            ", ".join(map(repr, absent)),
        )
    if len(labels) >= 10 and len(present) >= 0.9 * len(labels):
        logger.warning(
            "%s: %d of %d training rows have a label of their own: is --label-column %r a text column? "
            "(name the columns with --text-column and --label-column)",
            source,
            len(present),
            len(labels),
            columns.label,
        )
    if len(labels) >= 20:
        texts = set(ds["text"])
        if len(texts) <= 10 and max(map(len, texts)) <= 20:
            logger.warning(
                "%s: --text-column %r holds only %d distinct short values (%s): is it a label column? "
                "(name the columns with --text-column and --label-column)",
                source,
                columns.text,
                len(texts),
                ", ".join(map(repr, sorted(texts)[:5])),
            )


def class_counts(labels, n_classes: int) -> list[int]:
    """Examples of each class index 0..n_classes-1."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


def source_splits(source: str) -> list[str] | None:
    """The splits a source holds, known without reading it (None for a Hub id: the Hub knows).

    Raises:
        DataError: malformed `--data` syntax, or a path that does not exist.
    """
    if _is_synthetic(source):
        _synthetic_size(source)
        return ["train", "test"]
    if _is_mapping(source):
        return list(_parse_mapping(source))
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_aclimdb(path):
            return [s for s in ("train", "test") if (path / s).is_dir()]
        return list(_split_files(path))
    if path.is_file():
        return [_split_of(path)]
    if _looks_like_path(source):
        raise DataError(f"--data {source}: no such file or folder")
    return None


@dataclass
class _RawSplit:
    ds: Dataset
    where: str  # the file or folder named in error messages
    bad: list[BadRow]  # records that could not even be read
    unit: str = (
        "row"  # how a record's place is named: a table's row, or a text file's line (a `_line` column)
    )


def _read_source(source: str, wanted: set[str] | None, columns: Columns = Columns()) -> dict[str, _RawSplit]:
    """Dispatch on the kind of source; read only the `wanted` splits (all if None)."""
    keep = (lambda split: True) if wanted is None else (lambda split: split in wanted)
    if _is_synthetic(source):
        n = _synthetic_size(source)
        return {
            k: _RawSplit(v, f"synthetic/{k}", [])
            for k, v in make_synthetic(n_train=n, n_test=max(n // 4, 50)).items()
            if keep(k)
        }
    if _is_mapping(source):
        return _read_files({k: v for k, v in _parse_mapping(source).items() if keep(k)}, columns)
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_aclimdb(path):
            return _read_aclimdb(path, keep)
        return _read_files({k: v for k, v in _split_files(path).items() if keep(k)}, columns)
    if path.is_file():
        split = _split_of(path)
        return _read_files({split: path} if keep(split) else {}, columns)
    if _looks_like_path(source):
        raise DataError(f"--data {source}: no such file or folder")
    hub = _read_hub(source, columns.config)
    # IMDB on the Hub also has an unlabelled `unsupervised` split (label -1): only named splits are read.
    named = set(SPLITS) if wanted is None else wanted
    return {
        k: _RawSplit(_renamed(v, f"{source}[{k}]", columns), f"{source}[{k}]", [])
        for k, v in hub.items()
        if k in named
    }


def _renamed(ds: Dataset, where: str, columns: Columns) -> Dataset:
    """The source's text and label columns under the names this project reads (`text`, `label`)."""
    missing = [c for c in (columns.text, columns.label) if c not in ds.column_names]
    if missing:
        flags = " / ".join(
            f for f, c in (("--text-column", columns.text), ("--label-column", columns.label)) if c in missing
        )
        raise DataError(
            f"{where}: no {' or '.join(repr(c) for c in missing)} column "
            f"(found: {', '.join(ds.column_names)}); name yours with {flags}"
        )
    names = {columns.text: "text", columns.label: "label"}
    ds = ds.remove_columns([c for c in ("text", "label") if c in ds.column_names and c not in names])
    return ds.rename_columns({k: v for k, v in names.items() if k != v})


def _is_synthetic(source: str) -> bool:
    return source == "synthetic" or source.startswith("synthetic:")


def _synthetic_size(source: str) -> int:
    if ":" not in source:
        return 2000
    n = source.split(":", 1)[1]
    if not n.isdigit() or int(n) < SYNTHETIC_MIN:
        raise DataError(
            f"--data {source!r}: after 'synthetic:' comes the number of training reviews, a whole number of "
            "at "
            f"least {SYNTHETIC_MIN} (e.g. synthetic:2000)"
        )
    return int(n)


def _is_mapping(source: str) -> bool:
    return "=" in source and not Path(source).exists()


def _parse_mapping(source: str) -> dict[str, Path]:
    """`train=PATH,test=PATH` (any of train, test, validation), each split once."""
    files = {}
    for part in source.split(","):
        split, sep, path = part.partition("=")
        split, path = split.strip(), path.strip()
        if not sep or not split or not path:
            raise DataError(
                f"--data {source!r}: {part.strip()!r} is not SPLIT=PATH; write e.g. "
                "train=train.csv,test=test.csv" + (" (no comma at the end)" if not part.strip() else "")
            )
        if split not in SPLITS:
            raise DataError(f"--data {source!r}: unknown split {split!r} (use {', '.join(SPLITS)})")
        if split in files:
            raise DataError(f"--data {source!r}: split {split!r} given twice")
        files[split] = Path(path).expanduser()
    return files


def _is_aclimdb(path: Path) -> bool:
    return any((path / s / "pos").is_dir() or (path / s / "neg").is_dir() for s in ("train", "test"))


def _split_files(folder: Path) -> dict[str, Path]:
    """train.* / test.* / validation.* in a folder (one per split)."""
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        split = p.name.split(".")[0]
        if p.is_file() and split in SPLITS and file_format(p) not in (None, "txt"):
            if split in files:
                raise DataError(
                    f"{folder}: two files for split '{split}' ({files[split].name}, {p.name}); keep one"
                )
            files[split] = p
    if not files:
        raise DataError(
            f"{folder}: no train.* / test.* file (parquet, csv, jsonl, json, optionally .gz) "
            "and no aclImdb layout (train/pos/, train/neg/)"
        )
    return files


def _split_of(path: Path) -> str:
    stem = path.name.split(".")[0]
    return stem if stem in SPLITS else "train"


def _looks_like_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or file_format(Path(source)) is not None
        or os.sep + os.sep in source
    )


def _read_hub(name: str, config: str | None = None) -> dict[str, Dataset]:
    try:
        with _quiet_datasets():
            dsd = datasets.load_dataset(name, config)
    except Exception as e:  # the Hub raises many types; all mean "cannot use this source"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot load '{name}' from the Hugging Face Hub ({type(e).__name__}: {first[:200]}); "
            "offline, pass --data with a local folder or file (parquet, csv, jsonl, or aclImdb/)"
        ) from e
    return dict(dsd)


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs an ERROR line of its own before raising; the error this module raises says it all."""
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


def _read_files(files: dict[str, Path], columns: Columns = Columns()) -> dict[str, _RawSplit]:
    out = {}
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"{path}: no such file (split '{split}')")
        kind = file_format(path)
        if kind is None or kind == "txt":
            raise DataError(
                f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}' "
                "(use parquet, csv, jsonl or json, optionally .gz)"
            )
        out[split] = _read_parquet(path, columns) if kind == "parquet" else _read_text_file(path, columns)
    return out


def _read_parquet(path: Path, columns: Columns = Columns()) -> _RawSplit:
    """Through `datasets` (cached, so tokenization is too); checked with pyarrow first for a clear error."""
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).schema_arrow  # noqa: B018 - reads the footer: a damaged or non-parquet file fails here
        with _quiet_datasets():
            ds = datasets.load_dataset("parquet", data_files={"split": str(path)}, split="split")
    except Exception as e:
        raise DataError(
            f"{path}: cannot be read as parquet ({type(e).__name__}: {str(e).strip()[:200]})"
        ) from None
    return _RawSplit(_renamed(ds, str(path), columns), str(path), [])


def _read_text_file(path: Path, columns: Columns = Columns()) -> _RawSplit:
    """csv / jsonl / json (+ .gz) through the project's reader: values stay the text they are."""
    try:
        table = read_table(path, (columns.text, columns.label))
    except DataError as e:
        if "column" in str(e) and (columns.text, columns.label) == ("text", "label"):
            raise DataError(f"{e}; name yours with --text-column / --label-column") from None
        raise
    bad = list(table.bad)
    texts, labels, lines = [], [], []
    for text, label, line in zip(
        table.columns[columns.text], table.columns[columns.label], table.lines, strict=True
    ):
        problem = text_problem(text)
        if problem and problem != "empty text":  # not a string at all: the reader's to report
            bad.append(BadRow(str(path), line, problem, "line"))
            continue
        as_text, problem = canonical(label)  # null, a list, an object, empty: a bad row, never a class
        if problem:
            bad.append(BadRow(str(path), line, problem, table.unit))
            continue
        texts.append(text)
        # Kept as written (messages quote it); JSON's numbers as text: 1.0 is "1", as a CSV's "1.0" will be.
        labels.append(label if isinstance(label, str) else as_text)
        lines.append(line)
    ds = Dataset.from_dict(
        {"text": texts, "label": labels, "_line": lines},
        features=datasets.Features(
            text=datasets.Value("string"), label=datasets.Value("string"), _line=datasets.Value("int64")
        ),
    )
    return _RawSplit(ds, str(path), bad, table.unit)


def _read_aclimdb(root: Path, keep) -> dict[str, _RawSplit]:
    """Read the original Large Movie Review Dataset layout, in (label, file id) order."""
    out = {}
    for split in ("train", "test"):
        if not (root / split).is_dir() or not keep(split):
            continue
        texts, labels, bad = [], [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            folder = root / split / sub
            if not folder.is_dir():
                raise DataError(
                    f"{folder}: missing folder (aclImdb layout needs {split}/neg and {split}/pos)"
                )
            for f in sorted(folder.glob("*.txt"), key=_file_id):
                try:
                    text = f.read_bytes().decode("utf-8")
                except UnicodeDecodeError as e:
                    bad.append(
                        BadRow(
                            str(f),
                            None,
                            f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                            split=split,
                        )
                    )
                    continue
                if not text.strip():  # named by its path, not by a row number in a folder
                    bad.append(BadRow(str(f), None, "empty text", split=split))
                    continue
                texts.append(text)
                labels.append(label)
        out[split] = _RawSplit(Dataset.from_dict({"text": texts, "label": labels}), str(root / split), bad)
    return out


def _file_id(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)", path.stem)
    return (int(m.group(1)) if m else -1, path.name)


# --------------------------------------------------------------------------------------------
# Validation


def _validate(
    raw: _RawSplit, skip: bool, split: str, space: LabelSpace = IMDB
) -> tuple[Dataset, list[BadRow]]:
    """Check columns and every row; labels become class indices in `space`; only text and label are kept."""
    ds, where = raw.ds, raw.where
    missing = [c for c in ("text", "label") if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{where}: missing column {', '.join(repr(c) for c in missing)} (found: "
            f"{', '.join(ds.column_names)})"
        )
    # Plain lists: a datasets Column formats a row per item read, and every row is read here.
    lines = list(ds["_line"]) if "_line" in ds.column_names else None
    texts, raw_labels = list(ds["text"]), list(ds["label"])
    labels, bad, good = [], [], []
    for i, (text, value) in enumerate(zip(texts, raw_labels, strict=True)):
        place = lines[i] if lines is not None else i + 1
        canonical_label, label_issue = canonical(value)
        problem = text_problem(text) or label_issue
        label = None if problem else space.index_of(canonical_label)
        if problem:
            bad.append(BadRow(where, place, problem, raw.unit))
        elif label is None:
            bad.append(BadRow(where, place, not_a_class(value, canonical_label, space), raw.unit))
        else:
            good.append(i)
            labels.append(label)
    bad = sorted(raw.bad + bad, key=lambda r: (r.row is None, r.row or 0))
    bad = [dataclasses.replace(r, split=split) for r in bad]
    if bad and not skip:
        shown = "; ".join(str(r) for r in bad[:MAX_REPORTED_ROWS])
        raise DataError(f"{where}: {len(bad)} bad row(s): {shown}; pass --skip-bad-rows to drop them")
    if not good:
        reasons = "; ".join(str(r) for r in bad[:MAX_REPORTED_ROWS])
        raise DataError(f"{where}: no usable rows" + (f" (every row is bad: {reasons})" if bad else ""))
    if len(good) != len(ds):
        ds = ds.select(good)
    ds = ds.select_columns(["text", "label"])
    if getattr(ds.features["label"], "dtype", None) != "int64" or list(ds["label"]) != labels:
        ds = ds.remove_columns("label").add_column("label", labels)
    return ds.cast_column("label", datasets.Value("int64")), bad


def not_a_class(value, shown: str, space: LabelSpace) -> str:
    """Why a label (`value`, canonical text `shown`) is none of the classes (with a hint for a name
    holding a comma)."""
    text = f"label {shown!r} is not one of {space.describe()}"
    if shown != value and isinstance(value, str) and value.strip() != shown:
        text += f" (written {value!r})"
    if "," in shown and space.kind == "name":
        text += "; a class whose name holds a comma is written with \\, in --labels ('a\\, b,c')"
    return text


def hold_out(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded, label-stratified `fraction` of `ds` held out for evaluation."""
    rng = random.Random(seed)
    labels = list(ds["label"])  # a plain list: a datasets Column re-reads Arrow on every pass
    held = []
    for label in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(rows)
        # At least one of each class held out, and at least one left to train on: a class moved wholly
        # into the validation set would be a class the model never sees.
        held += rows[: min(len(rows) - 1, max(1, round(fraction * len(rows))))]
    held_set = set(held)
    if not held or len(held_set) == len(ds):
        singletons = len(set(labels)) == len(ds)
        hint = (
            f"; every one of its {len(ds)} labels is a class of its own: are --text-column and "
            "--label-column swapped?"
            if singletons and len(ds) >= 10
            else ""
        )
        raise DataError(
            f"--validation-split {fraction}: {len(ds)} training rows are too few to hold out a validation "
            f"set{hint}"
        )
    if len(held) > 2 * fraction * len(ds) + 1:
        logger.warning(
            "--validation-split %g held out %d of %d training rows (%.0f%%): every class gives at least one "
            "and keeps one; with classes this small, name an evaluation split (--eval-split) or pass "
            "--validation-split 0",
            fraction,
            len(held),
            len(ds),
            100 * len(held) / len(ds),
        )
    return ds.select([i for i in range(len(ds)) if i not in held_set]), ds.select(sorted(held))


# --------------------------------------------------------------------------------------------
# Synthetic data for the offline demo and tests

_POS = [
    "great",
    "excellent",
    "wonderful",
    "loved",
    "superb",
    "brilliant",
    "enjoyable",
    "fantastic",
    "moving",
    "delightful",
]
_NEG = ["terrible", "awful", "boring", "hated", "worst", "dull", "poor", "disappointing", "painful", "mess"]
_NEUTRAL = [
    "the",
    "movie",
    "film",
    "plot",
    "actor",
    "actress",
    "scene",
    "story",
    "director",
    "camera",
    "music",
    "was",
    "and",
    "it",
    "a",
    "of",
    "in",
    "to",
    "this",
    "that",
    "with",
    "for",
    "as",
    "on",
    "script",
    "ending",
    "character",
    "screen",
    "cast",
    "minutes",
    "watch",
    "saw",
    "time",
    "show",
]


def make_synthetic(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> DatasetDict:
    """Balanced reviews of neutral filler with sentiment words; the majority class gives the label.

    Lengths vary (8 to 120 words) so that length grouping and truncation have work to do.
    """
    rng = random.Random(seed)

    def review(label: int) -> str:
        major, minor = (_POS, _NEG) if label == 1 else (_NEG, _POS)
        words = rng.choices(_NEUTRAL, k=rng.randint(8, 120))
        k_major = rng.randint(2, 4)
        sentiment = rng.choices(major, k=k_major) + rng.choices(minor, k=rng.randint(0, k_major - 2))
        for w in sentiment:
            words.insert(rng.randrange(len(words) + 1), w)
        return " ".join(words) + "."

    def split(n: int) -> Dataset:
        labels = [i % 2 for i in range(n)]
        rng.shuffle(labels)
        return Dataset.from_dict({"text": [review(y) for y in labels], "label": labels})

    return DatasetDict({"train": split(n_train), "test": split(n_test)})


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
    class names, balanced (any number of classes: the tests' and the README's N-class data)."""
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


# --------------------------------------------------------------------------------------------
# Verbalizer, prompt, tokenization


def prompt_template(prompt: str | None) -> str:
    """Resolve a prompt name (`none`, `flan`) or a template containing `{text}` exactly once."""
    template = PROMPTS.get(prompt or "none", prompt)
    if template.count("{text}") != 1:
        raise DataError(
            f"prompt {prompt!r} must contain '{{text}}' exactly once (or be one of {', '.join(PROMPTS)})"
        )
    try:
        template.format(text="")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(
            f"prompt {prompt!r} has a placeholder other than {{text}} ({e}); double other braces"
        ) from e
    return template


def target_ids(tokenizer, verbalizer: str, space: LabelSpace = IMDB) -> list[list[int]]:
    """Token ids (with EOS) of each class's target text, index = class.

    Raises:
        DataError: two classes' targets tokenize alike (the tokenizer cannot tell them apart).
    """
    texts = verbalize(verbalizer, space)
    ids = [tokenizer(t).input_ids for t in texts]
    seen: dict[tuple, str] = {}
    for text, i in zip(texts, ids, strict=True):
        if tuple(i) in seen:
            raise DataError(
                f"the tokenizer maps the targets {seen[tuple(i)]!r} and {text!r} to the same ids {i}"
            )
        seen[tuple(i)] = text
    return ids


def tokenize(
    dsd: DatasetDict,
    tokenizer,
    *,
    verbalizer: str = "digits",
    prompt: str | None = None,
    max_source_length: int = 512,
    space: LabelSpace = IMDB,
) -> DatasetDict:
    """Tokenize every split with `datasets.map` (batched, cached where the source is on disk).

    `labels` are the target ids of each row's class (`verbalizer` over `space`). Sources longer than
    `max_source_length` are truncated (EOS kept); the count is logged.
    """
    template = prompt_template(prompt)
    targets = target_ids(tokenizer, verbalizer, space)

    def encode(batch: dict, idx: list[int]) -> dict:
        texts = batch["text"] if template == "{text}" else [template.format(text=t) for t in batch["text"]]
        enc = tokenizer(texts, truncation=True, max_length=max_source_length)
        return {
            "input_ids": enc["input_ids"],
            "labels": [targets[y] for y in batch["label"]],
            "length": [len(x) for x in enc["input_ids"]],
            "id": idx,
        }

    out = dsd.map(encode, batched=True, with_indices=True, remove_columns=["text"], desc="tokenizing")
    for split, ds in out.items():
        n_trunc = sum(1 for n in ds["length"] if n >= max_source_length)
        if n_trunc:
            logger.info(
                "%s: %d of %d sources truncated to %d tokens", split, n_trunc, len(ds), max_source_length
            )
    return out


def subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A random subset of `n` rows (IMDB files are sorted by label, so never take the first n)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def texts_of(dsd: DatasetDict) -> Iterable[str]:
    for ds in dsd.values():
        yield from ds["text"]


@dataclass(frozen=True)
class Collator:
    """Pads a list of tokenized examples into a batch of tensors.

    Sources are padded to the longest in the batch rounded up to `pad_to_multiple_of`, or to the
    smallest of `buckets` that fits, or (`max_length`) always to that length, as the baseline recipe
    did with 512. Labels are padded with -100, which the loss ignores; `mask_labels` sets them all
    to -100 (a filler micro-batch that contributes nothing to the gradient).
    """

    pad_token_id: int = 0
    pad_to_multiple_of: int | None = 8
    buckets: tuple[int, ...] | None = None
    max_length: int | None = None

    def source_length(self, longest: int) -> int:
        if self.max_length is not None:
            if longest > self.max_length:
                raise ValueError(f"a source of {longest} tokens does not fit max_length={self.max_length}")
            return self.max_length
        if self.buckets:
            for b in sorted(self.buckets):
                if b >= longest:
                    return b
            raise ValueError(
                f"a source of {longest} tokens is longer than the largest bucket {max(self.buckets)}"
            )
        m = self.pad_to_multiple_of or 1
        return -(-longest // m) * m

    def from_columns(self, rows: dict) -> dict[str, torch.Tensor]:
        """A batch of dataset rows as `ds[indices]` returns them (a dict of columns)."""
        return self(
            [{"input_ids": a, "labels": b} for a, b in zip(rows["input_ids"], rows["labels"], strict=True)]
        )

    def __call__(self, examples: list[dict], mask_labels: bool = False) -> dict[str, torch.Tensor]:
        src_len = self.source_length(max(len(e["input_ids"]) for e in examples))
        tgt_len = max(len(e["labels"]) for e in examples)
        # Filled in numpy, then shared with torch: row assignment from Python lists costs a third of
        # what torch's per-row indexing does, and this runs on the host once per micro-batch.
        input_ids = np.full((len(examples), src_len), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(examples), src_len), dtype=np.int64)
        labels = np.full((len(examples), tgt_len), -100, dtype=np.int64)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            input_ids[i, :n] = e["input_ids"]
            attention_mask[i, :n] = 1
            if not mask_labels:
                labels[i, : len(e["labels"])] = e["labels"]
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
        }
