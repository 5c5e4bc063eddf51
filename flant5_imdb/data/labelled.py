"""Raw splits to validated ones: every row checked, labels turned into class indices of one label space.

A row is bad when its text is empty or no string, or its label is no label or none of the classes;
bad rows stop the run with one line naming the first of them, or with `--skip-bad-rows` are dropped
and listed. What a label space may get wrong without being an error is warned about by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, Value
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable

from flant5_imdb.data.encode import column
from flant5_imdb.data.labels import POLARITY_SPELLINGS, LabelSpace, canonical, infer_labels, is_number
from flant5_imdb.data.reader import BadRow, DataError, RawSplit, text_problem
from flant5_imdb.data.source import Columns, Source, parse_source, read_splits

logger = logging.getLogger(__name__)
MAX_REPORTED_ROWS = 5
SKIPPED = "skipped_rows.jsonl"


@dataclass
class Labelled:
    """A source's validated splits (`text`, `label` = class index), its classes, the rows dropped."""

    splits: DatasetDict
    classes: LabelSpace
    skipped: list[BadRow]


def load_labelled(
    source: Source | str,
    *,
    skip_bad_rows: bool = False,
    splits: Iterable[str] | None = None,
    classes: LabelSpace | None = None,
    label_order: Iterable[str] | None = None,
    columns: Columns = Columns(),
    train_split: str = "train",
    eval_flag: str = "--eval-split",
    folder: Path | None = None,
) -> Labelled:
    """Read `source` (a `Source`, or `--data` as written; only `splits`, if given) and validate every row,
    each split once, a batch of rows at a time, into Arrow: `folder/SPLIT.arrow` where a folder is given
    (memory-mapped: memory bounded by a batch), else in memory.

    The classes are `classes` (a saved model's), or taken from the labels of the `train_split`'s rows
    with a usable text (in `label_order`, else a `ClassLabel`'s; see `labels.infer_labels`): a row
    `--skip-bad-rows` drops makes no class. `eval_flag` names the option that picks another split to
    evaluate on. Raises `DataError` for a source that cannot be read, or a bad row (unless skipped).
    """
    source = parse_source(source) if isinstance(source, str) else source
    raws = read_splits(source, None if splits is None else set(splits), columns)
    staged = {split: _stage(raw, folder, split) for split, raw in raws.items()}
    if classes is None:
        first = staged.get(train_split) or next(iter(staged.values()), None)
        classes = infer_labels(list(first.label_texts) if first else [], label_order or _named_order(first))
    out, dropped = {}, []
    for split, rows in staged.items():
        out[split], bad = _validate(
            rows, skip_bad_rows, split, classes, None if split == train_split else eval_flag, folder
        )
        dropped += bad
    if dropped:
        logger.warning("--skip-bad-rows: dropped %d bad row(s): %s", len(dropped), _some(dropped))
    if train_split in out:
        _warn_about_classes(source.text, out[train_split], classes, columns, staged[train_split].few_texts)
    return Labelled(DatasetDict(out), classes, dropped)


def _named_order(staged: _Staged | None) -> tuple[str, ...] | None:
    """A `ClassLabel`'s names as the classes, in its order (class i is its integer i), unless they are
    polarity's spellings (`neg`, `pos`: IMDB's label space, whose targets the seed recipe fixed)."""
    names = staged.class_names if staged is not None else None
    if not names or all(str(n).lower() in POLARITY_SPELLINGS for n in names):
        return None
    return names


def write_skipped(rows: list[BadRow], folder: Path) -> None:
    """`folder/skipped_rows.jsonl`: each row `--skip-bad-rows` left out (split, file, line or row, why)."""
    if rows:
        path = folder / SKIPPED
        path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
        logger.warning("--skip-bad-rows: %d bad row(s) left out, each listed in %s", len(rows), path)


def _some(rows: list[BadRow], count_the_rest: bool = True) -> str:
    more = len(rows) - MAX_REPORTED_ROWS if count_the_rest else 0
    return "; ".join(map(str, rows[:MAX_REPORTED_ROWS])) + (f" (and {more} more)" if more > 0 else "")


BATCH = 10_000  # rows written (and checked against the classes) at a time
STAGED = Features({"text": Value("string"), "label": Value("string"), "written": Value("string"),
                   "place": Value("int64")})  # fmt: skip
CHECKED = Features({"text": Value("string"), "label": Value("int64")})
KNOWN = 10_000  # distinct label values remembered (a column of mostly distinct values is not labels)
FEW = (10, 20)  # a text column of at most 10 distinct values of at most 20 characters looks like labels


@dataclass
class _Staged:
    """A split after one pass over its records: the rows with a usable text and a label (the label's
    canonical text, how it was written where that differs, where the record starts), the bad rows, and
    what the next steps need without another pass: each label text's count, and a text column's few
    distinct values where it has only a few short ones."""

    rows: Path | pa.Table  # an Arrow file, read a batch at a time (`_batches`), or a table in memory
    where: str
    unit: str
    bad: list[BadRow]
    label_texts: Counter
    labelless: int  # bad rows whose text is fine: their label is none
    class_names: tuple[str, ...] | None
    few_texts: set[str] | None


def _stage(raw: RawSplit, folder: Path | None, split: str) -> _Staged:
    """Read `raw`'s records once, a batch at a time, checking each text and label as it comes."""
    writer = _Writer(None if folder is None else folder / f"{split}.read.arrow", STAGED)
    bad, counts, labelless, few = [], Counter(), 0, set()
    known: dict = {}  # label values seen, with their canonical text: a split repeats a few of them
    for item in raw.rows():
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        place, text, value = item
        bad_text = text_problem(text)
        if type(value) is str and value in known:  # exactly str: 1, 1.0 and True are equal keys
            shown, problem = known[value]
        else:
            shown, problem = canonical(value)
            if type(value) is str and len(known) < KNOWN:
                known[value] = shown, problem
        if bad_text or problem:
            bad.append(BadRow(raw.where, place, bad_text or problem, raw.unit))
            labelless += bad_text is None
            continue
        counts[shown] += 1
        if few is not None:
            few.add(text)
            if len(text) > FEW[1] or len(few) > FEW[0]:
                few = None
        # How the label was written, where it reads otherwise (for the message if it is no class).
        written = value if isinstance(value, str) and value.strip() != shown else None
        writer.add(text=text, label=shown, written=written, place=place)
    return _Staged(writer.close(), raw.where, raw.unit, bad, counts, labelless, raw.class_names, few)


def _batches(rows: Path | pa.Table) -> Iterator[pa.RecordBatch]:
    """The staged rows a batch at a time, read from the file (not memory-mapped: a mapped file's pages
    stay resident as they are read, and a process would hold the whole corpus's)."""
    if isinstance(rows, pa.Table):
        yield from rows.to_batches(max_chunksize=BATCH)
        return
    with pa.OSFile(str(rows)) as f:
        yield from pa.ipc.open_stream(f)


class _Writer:
    """Rows written a batch at a time into an Arrow file, read back memory-mapped; or, with no file,
    kept in memory."""

    def __init__(self, path: Path | None, features: Features):
        self.path, self.rows = path, {name: [] for name in features}
        self.stream = None if path is not None else pa.BufferOutputStream()
        where = None if path is None else str(path)
        self.writer = ArrowWriter(features=features, path=where, stream=self.stream)

    def add(self, **row) -> None:
        for name, value in row.items():
            self.rows[name].append(value)
        if len(self.rows["text"]) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.rows["text"]:
            self.writer.write_batch(self.rows)
            self.rows = {name: [] for name in self.rows}

    def close(self) -> Path | pa.Table:
        """The file written, or the table held."""
        self._flush()
        if self.path is not None:
            self.writer.finalize()
            return self.path
        self.writer.finalize(close_stream=False)
        return pa.ipc.open_stream(self.stream.getvalue()).read_all()

    def finish(self) -> Dataset:
        """The rows as a dataset: the file memory-mapped, or the table."""
        rows = self.close()
        return Dataset.from_file(str(rows)) if isinstance(rows, Path) else Dataset(InMemoryTable(rows))


def _validate(
    staged: _Staged,
    skip: bool,
    split: str,
    space: LabelSpace,
    eval_flag: str | None = None,
    folder: Path | None = None,
) -> tuple[Dataset, list[BadRow]]:
    """Labels become class indices in `space`; only text and label are kept (in `folder/SPLIT.arrow` where
    a folder is given). `eval_flag` names another split to evaluate on, where this one may hold no labels
    (None for training)."""
    index = {text: space.index_of(text) for text in staged.label_texts}
    bad, labelless = list(staged.bad), staged.labelless
    writer = _Writer(None if folder is None else folder / f"{split}.arrow", CHECKED)
    for batch in _batches(staged.rows):
        texts, labels = (batch.column(name).to_pylist() for name in ("text", "label"))
        for i, (text, shown) in enumerate(zip(texts, labels, strict=True)):
            if index[shown] is not None:
                writer.add(text=text, label=index[shown])
            else:  # none of the classes: a bad row, named where it starts
                written, place = (batch.column(name)[i].as_py() for name in ("written", "place"))
                bad.append(BadRow(staged.where, place, not_a_class(shown, written, space), staged.unit))
                labelless += 1
    checked = writer.finish()
    if isinstance(staged.rows, Path):  # the rows as read are not needed once checked
        with contextlib.suppress(OSError):
            staged.rows.unlink()
    good = sum(n for text, n in staged.label_texts.items() if index[text] is not None)
    bad = [
        dataclasses.replace(r, split=split) for r in sorted(bad, key=lambda r: (r.row is None, r.row or 0))
    ]
    if not good:  # said before --skip-bad-rows is advised: it would leave nothing
        alike = len(bad) > 1 and len({r.reason for r in bad}) == 1
        why = (
            f"every one of its {len(bad)} rows: {bad[0].reason}"
            if alike
            else f"every row is bad: {_some(bad, False)}"
        )
        # One label value on every row, none of the classes: a Hub test split's -1, say. (Several values
        # are more likely another task's classes: the reason already lists the classes.)
        unlabelled = eval_flag and alike and labelless == len(bad)
        hint = f"; is the split unlabelled? name another with {eval_flag}" if unlabelled else ""
        raise DataError(f"{staged.where}: no usable rows" + (f" ({why})" if bad else "") + hint)
    if bad and not skip:
        raise DataError(
            f"{staged.where}: {len(bad)} bad row(s): {_some(bad, False)}; pass --skip-bad-rows to drop them"
        )
    return checked, bad


def not_a_class(shown: str, written: str | None, space: LabelSpace) -> str:
    """Why a label (canonical text `shown`; `written`: as the file wrote it, where that reads otherwise) is
    none of the classes (with a hint for a comma)."""
    text = f"label {shown!r} is not one of {space.describe()}"
    text += f" (written {written!r})" if written else ""
    if "," in shown and space.kind == "name":
        text += "; a class whose name holds a comma is written with \\, in --labels ('a\\, b,c')"
    return text


def class_counts(labels, n_classes: int) -> list[int]:
    """Examples of each class index 0..n_classes-1."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()


def _warn_about_classes(
    source: str, ds: Dataset, space: LabelSpace, columns: Columns, few_texts: set[str] | None
) -> None:
    """What a label space may get wrong without being an error, warned about by name at any data size:
    one class only; a class so rare beside another that it may be a typo; a class named by --labels
    that training never shows; most classes with one example each (scores or ids, not classes); columns
    that look swapped (`few_texts`: the text column's values, where it holds only a few short ones)."""
    labels = column(ds, "label")
    counts = class_counts(labels, len(space))
    present = [i for i, c in enumerate(counts) if c]
    swap = "(name the columns with --text-column and --label-column)"
    if len(present) == 1:
        i = present[0]  # polarity's by its value and name: a file may spell it 1, pos or positive
        only = space.values[i] if space.kind != "polarity" else f"{space.values[i]} ({space.names[i]})"
        logger.warning("%s: every training example has label %s: a classifier cannot learn from one class",
                       source, only)  # fmt: skip
    single = [space.values[i] for i, c in enumerate(counts) if c == 1]
    own = own_labels(len(labels), len(present))
    one_each = not own and len(present) > 10 and 2 * len(single) >= len(present)  # scores or ids as classes
    most = max(counts, default=0)
    rare = [f"{space.values[i]!r} ({c})" for i, c in enumerate(counts) if 0 < c <= 3 and most >= 10 * c]
    if rare and space.kind != "polarity" and not one_each:  # not typos: said below
        logger.warning(
            "%s: class(es) %s have 3 training examples or fewer beside one with %d: a typo? Name the classes "
            "with --labels to make any other value an error", source, _listed(rare), most,
        )  # fmt: skip
    absent = [space.values[i] for i, c in enumerate(counts) if not c]
    if absent and space.kind == "name" and len(present) > 1:
        logger.warning("%s: class(es) %s (from --labels) have no training example: the model cannot learn "
                       "them", source, _listed(list(map(repr, absent))))  # fmt: skip
    if own:
        logger.warning("%s: %d of %d training rows have a label of their own: is --label-column %r a text "
                       "column? %s", source, len(present), len(labels), columns.label, swap)  # fmt: skip
    if one_each:
        shown = _listed(list(map(repr, single)), 5)
        what = "scores" if all(map(is_number, single)) else "ids or free text"
        logger.warning(
            "%s: %d of the %d classes have one training example each (%s): a classifier cannot learn a "
            "class from one example; if the labels are %s rather than classes, turn them into classes first",
            source, len(single), len(present), shown, what,
        )  # fmt: skip
    if few_texts and len(labels) >= 20:  # (staging kept them only while they were few and short)
        shown = ", ".join(map(repr, sorted(few_texts)[:5]))
        logger.warning("%s: --text-column %r holds only %d distinct short values (%s): is it a label "
                       "column? %s", source, columns.text, len(few_texts), shown, swap)  # fmt: skip


def _listed(items: list[str], most: int = 10) -> str:
    """The first `most` of `items`, and how many more: a warning about a thousand classes stays a line."""
    return ", ".join(items[:most]) + (f" (and {len(items) - most} more)" if len(items) > most else "")


def own_labels(rows: int, classes: int) -> bool:
    """Nearly every one of `rows` a label of its own (`classes` distinct ones): a text column read as the
    labels (the columns swapped?)."""
    return rows >= 10 and classes >= 0.9 * rows
