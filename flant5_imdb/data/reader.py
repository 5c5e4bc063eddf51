"""One reader for every text file a user brings: training and evaluation data, and texts to predict.

Formats, by name (`.gz` after any of them, or gzip bytes under any name, are decompressed):
  * `.csv`: a header row, then one record per row; quoted fields may hold commas and newlines.
  * `.jsonl`: one JSON object per line; blank lines are skipped.
  * `.json`: a JSON array of objects, or JSON lines.
  * `.txt`: one text per line (a `text` column only, for prediction).
(`.parquet` is read through `datasets`, which caches it: see `source.py`.)

What every format gets: UTF-8 with or without a byte-order mark, LF, CRLF or CR line ends, fields of
any size, values kept as the text they are (`NA`, `None`, `null` in a CSV are texts, not
missing values; `0`/`1` and `neg`/`pos` labels in one file stay strings, whatever its size).

What goes wrong is said in one line naming the file and the line: a whole-file problem (missing,
empty, only a header, not UTF-8, not gzip) stops at once (`DataError`); a record that cannot be
taken (invalid JSON, not an object, a repeated field, the wrong number of CSV fields) is a
`BadRow`, which the caller reports or, with `--skip-bad-rows`, drops and lists.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".txt": "txt", ".parquet": "parquet"}
GZIP_MAGIC = b"\x1f\x8b"
STDIN = "<stdin>"
LINE_END = r"\r\n|\r|\n"  # as Python's text files and the csv module end a line


class DataError(ValueError):
    """A data source that cannot be used as given; the message names the file and rows."""


class MissingColumn(DataError):
    """A table whose header lacks a column asked for (the caller may name the option that chooses it)."""


@dataclass(frozen=True)
class BadRow:
    """One record that cannot be used. `row` is 1-based: a line of a text file, or a row of a table."""

    where: str  # the file (or folder, or Hub split) it is in
    row: int | None
    reason: str
    unit: str = "row"  # "line" for csv/jsonl/txt files: where the record starts
    split: str | None = None

    def __str__(self) -> str:
        return (
            f"{self.where} {self.unit} {self.row}: {self.reason}"
            if self.row is not None
            else f"{self.where}: {self.reason}"
        )

    def to_dict(self) -> dict:
        return {"split": self.split, "file": self.where, self.unit: self.row, "reason": self.reason}


@dataclass
class RawSplit:
    """A split as read: texts and labels as written (`places`: where each record starts, named by `unit`;
    else its row), and the records no reader could take. `ds` is the source's own dataset where it has
    one: selecting from it keeps `datasets`' cache for tokenization. Texts to predict have no labels."""

    texts: list
    labels: list
    where: str  # the file or folder named in error messages
    bad: list[BadRow] = field(default_factory=list)
    places: list[int] | None = None
    unit: str = "row"  # how a place is named: a table's row, or a text file's line
    ds: Dataset | None = None

    @classmethod
    def of(cls, ds: Dataset, where: str) -> RawSplit:
        return cls(list(ds["text"]), list(ds["label"]), where, ds=ds)  # plain lists: see labelled._validate


def file_format(path: Path) -> str | None:
    """csv, jsonl, json, txt or parquet from the name (a `.gz` after it allowed); None if none of these."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def file_kind(path: Path, allowed: tuple[str, ...], use: str) -> str:
    """`path`'s format (`file_format`) where it is one of `allowed`.

    Raises:
        DataError: any other, naming the file, its suffix and `use` (what to give instead).
    """
    kind = file_format(path)
    if kind not in allowed:
        raise DataError(f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}' ({use})")
    return kind


def read_table(path: str | Path, text_column: str, label_column: str | None = None) -> RawSplit:
    """Read a csv / jsonl / json / txt file's text and label columns (a .txt file: texts, one a line).

    Raises:
        DataError: the file is missing, of an unknown type, empty, only a header, not UTF-8, or lacks
            a column (a CSV's header; a JSON record without one is a bad row).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file; name a .csv, .jsonl, .json or .txt file in it")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = file_kind(path, ("csv", "jsonl", "json", "txt"), "use .csv, .jsonl, .json or .txt")
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    columns = (text_column,) if label_column is None else (text_column, label_column)
    table = RawSplit([], [], str(path), places=[], unit="line")
    if kind == "txt":
        if label_column is not None:
            raise DataError(
                f"{path}: a .txt file holds texts only, one a line; labelled data needs .csv, .jsonl or "
                ".parquet"
            )
        records = ((n, {columns[0]: t}) for n, t in enumerate(lines_of(text), start=1) if t.strip())
    elif kind == "csv":
        records = _csv_records(path, text, columns)
    elif kind == "json" and text.lstrip().startswith("["):
        table.unit, records = "row", _json_array(path, text)
    else:
        records = _json_lines(text)
    for number, record in records:
        problem = record if isinstance(record, str) else _record_problem(record, columns, table.unit)
        if problem:
            table.bad.append(BadRow(str(path), number, problem, table.unit))
            continue
        table.texts.append(record[text_column])
        if label_column is not None:
            table.labels.append(record[label_column])
        table.places.append(number)
    if not table.places and not table.bad:
        raise DataError(f"{path}: no records" + (" (only a header)" if kind == "csv" else ""))
    return table


def read_utf8(path: Path) -> str:
    """The file's text: gunzipped if it is gzip, decoded as UTF-8 (a byte-order mark dropped).

    Raises:
        DataError: not UTF-8 (naming the line and byte offset), or a damaged gzip file.
    """
    return decode(path.read_bytes(), str(path))


def decode(raw: bytes, where: str) -> str:
    """`raw` (a file's bytes, or stdin's) as `read_utf8` reads a file; errors name `where`."""
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{where}: a damaged gzip file ({e})") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = len(re.split(LINE_END.encode(), raw[: e.start]))  # counted as `lines_of` splits
        raise DataError(
            f"{where} line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            + ("give UTF-8 text" if where == STDIN else "save the file as UTF-8")
        ) from None


def lines_of(text: str) -> list[str]:
    """The lines of a text file, ended by LF, CRLF or CR only, as Python's text files and the csv module
    end them: `str.splitlines` would also split at characters a text or a JSON string may hold (U+2028,
    U+0085, a form feed), cutting one record in two."""
    return re.split(LINE_END, text)


Records = Iterator[tuple[int, "dict | str"]]  # (where a record starts, the record or why it is none)


def _csv_records(path: Path, text: str, columns) -> Records:
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a text may be longer than the module's 128 KiB default
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        names = [h.strip() for h in next((r for r in reader if any(f.strip() for f in r)), [])]
        if not names:
            raise DataError(f"{path}: empty file")
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if twice:
            where = "; ".join(
                f"{n!r} in columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}"
                for n in twice
            )
            raise DataError(
                f"{path}: the header names a column twice ({where}); give each column its own name"
            )
        missing = [c for c in columns if c not in names]
        if missing:
            other = next((d for d in ";\t|" if len(names) == 1 and d in names[0]), None)
            if other:
                raise DataError(
                    f"{path}: the header is one column, {names[0]!r}: the file looks separated by {other!r}, "
                    "and a .csv file's fields are separated by commas"
                )
            raise MissingColumn(
                f"{path}: no {' or '.join(map(repr, missing))} column (found: {', '.join(names)})"
            )
        start = reader.line_num + 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{path} line {start}: {e}") from None
            if len(record) > 1 or any(f.strip() for f in record):  # a blank line is no record
                yield (
                    start,
                    (
                        dict(zip(names, record, strict=True))
                        if len(record) == len(names)
                        else f"{len(record)} fields, the header has {len(names)} "
                        "(an unclosed quote, or a comma in an unquoted field?)"
                    ),
                )
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)


def _json_lines(text: str) -> Records:
    for number, line in enumerate(lines_of(text), start=1):
        if line.strip():
            try:
                yield number, json.loads(line, object_pairs_hook=_Object)
            except json.JSONDecodeError as e:
                yield number, f"invalid JSON ({e.msg} at column {e.colno})"


def _json_array(path: Path, text: str) -> Records:
    try:
        records = json.loads(text, object_pairs_hook=_Object)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: not a JSON array of objects")
    yield from enumerate(records, start=1)


def _record_problem(record, columns, unit: str) -> str | None:
    """Why a parsed record cannot be taken: not an object, a repeated field, a column missing."""
    if not isinstance(record, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(
            type(record), f"a {type(record).__name__}"
        )
        return f'not a JSON object ({kind}); one object per {unit}, like {{"text": "...", "label": 1}}'
    if getattr(record, "repeated", None):  # json.loads would keep the last of them, silently
        return f"the field(s) {', '.join(map(repr, record.repeated))} appear more than once"
    missing = [c for c in columns if c not in record]
    if missing:
        return f"no {' or '.join(map(repr, missing))} field (found: {', '.join(record) or 'none'})"
    return None


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once (a plain dict keeps the last)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        keys = [k for k, _ in pairs]
        self.repeated = sorted({k for k in keys if keys.count(k) > 1})


def text_problem(value) -> str | None:
    """Why `value` is no usable text (None if it is one)."""
    if isinstance(value, str):
        try:  # a command line's undecodable bytes arrive as lone surrogates, which no tokenizer takes
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"not UTF-8 (an undecodable byte at character {e.start + 1})"
        return None if value.strip() else "empty text"
    if value is None:
        return "no text (null)"
    if isinstance(value, bool):
        return "the text is a boolean, not a string"
    if isinstance(value, int | float):
        return f"the text is a number ({value!r}), not a string"
    if isinstance(value, dict | list | tuple):  # a JSON object or array, a parquet struct or list
        return f"the text is {'an object' if isinstance(value, dict) else 'a list'}, not a string"
    return f"the text is a {type(value).__name__}, not a string"


def read_texts(path: str | None, stdin: bytes = b"", *, skip_bad_rows: bool = False,
               text_column: str = "text") -> tuple[list[str], list[BadRow]]:  # fmt: skip
    """Texts to classify from a file (.txt one a line, .csv / .jsonl / .json with a `text_column`, any of
    them gzipped) or from `stdin`'s bytes (one a line, read as a .txt file is); blank lines are passed
    over. Returns (texts, records skipped). Everything is read and checked first, so a bad input
    produces no output.

    Raises:
        DataError: naming the file and line of the first problem (unless `skip_bad_rows`, for records
            that are no usable text).
    """
    if path is None:
        where, unit, bad = STDIN, "line", []
        numbered = [(n, t) for n, t in enumerate(lines_of(decode(stdin, STDIN)), start=1) if t.strip()]
    else:
        table = read_table(path, text_column)
        where, unit, bad = table.where, table.unit, list(table.bad)
        numbered = list(zip(table.places, table.texts, strict=True))
    texts = []
    for number, text in numbered:
        problem = text_problem(text)
        if problem:
            bad.append(BadRow(where, number, problem, unit))
        else:
            texts.append(text)
    bad.sort(key=lambda r: r.row or 0)
    if bad and not skip_bad_rows:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}; pass --skip-bad-rows to leave such records out")
    return texts, bad
