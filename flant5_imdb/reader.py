"""One reader for every text file a user brings: training and evaluation data, and reviews to predict.

Formats, by name (`.gz` after any of them, or gzip bytes under any name, are decompressed):
  * `.csv`: a header row, then one record per row; quoted fields may hold commas and newlines.
  * `.jsonl`: one JSON object per line; blank lines are skipped.
  * `.json`: a JSON array of objects, or JSON lines.
  * `.txt`: one review per line (a `text` column only, for prediction).
(`.parquet` is read by `data.py` through `datasets`, which caches it.)

What every format gets: UTF-8 with or without a byte-order mark, CRLF or LF line ends, fields of
any size, values kept as the text they are (`NA`, `None`, `null` in a CSV are reviews, not
missing values; `0`/`1` and `neg`/`pos` labels in one file stay strings, whatever its size).

What goes wrong is said in one line naming the file and the line: a whole-file problem (missing,
empty, only a header, not UTF-8, not gzip) stops at once (`DataError`); a record that cannot be
taken (invalid JSON, not an object, the wrong number of CSV fields, a text that is no string) is a
`BadRow`, which the caller reports or, with `--skip-bad-rows`, drops and lists.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".txt": "txt", ".parquet": "parquet"}
GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data source that cannot be used as given; the message names the file and rows."""


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
class Table:
    """Columns of a text file as read: strings (and, from JSON, whatever the file held), one entry per good
    record.
    """

    path: str
    columns: dict[str, list] = field(default_factory=dict)
    lines: list[int] = field(
        default_factory=list
    )  # where each good record starts (its line, or row in a JSON array)
    bad: list[BadRow] = field(default_factory=list)
    unit: str = "line"  # what `lines` counts

    def __len__(self) -> int:
        return len(self.lines)


def looks_like_path(name: str) -> bool:
    """A folder or file meant, not a Hub id (`org/name`): it starts like a path or has more than one slash."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def file_format(path: Path) -> str | None:
    """csv, jsonl, json, txt or parquet from the name (a `.gz` after it allowed); None if none of these."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def read_table(path: str | Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> Table:
    """Read a csv / jsonl / json / txt file into `columns` (each required) and `optional` ones.

    Raises:
        DataError: the file is missing, of an unknown type, empty, only a header, not UTF-8, or
            lacks a required column.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = file_format(path)
    if kind in (None, "parquet"):
        raise DataError(
            f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}' (use .csv, .jsonl, .json "
            "or .txt)"
        )
    text = read_utf8(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "json": _read_json, "txt": _read_txt}[kind]
    table = reader(path, text, columns, optional)
    if not len(table) and not table.bad:
        raise DataError(f"{path}: no records" + (" (only a header)" if kind == "csv" else ""))
    return table


def read_utf8(path: Path) -> str:
    """The file's text: gunzipped if it is gzip, decoded as UTF-8 (a byte-order mark dropped).

    Raises:
        DataError: not UTF-8 (naming the line and byte offset), or a damaged gzip file.
    """
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: a damaged gzip file ({e})") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path} line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save the file as UTF-8"
        ) from None


def _read_csv(path: Path, text: str, columns, optional) -> Table:
    table = Table(str(path))
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a review may be longer than the module's 128 KiB default
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = _next_record(reader, path)
        names = [h.strip() for h in header]
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if twice:
            where = "; ".join(
                f"{n!r} in columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}"
                for n in twice
            )
            raise DataError(
                f"{path}: the header names a column twice ({where}); give each column its own name"
            )
        wanted = _columns_present(path, names, columns, optional)
        index = {c: names.index(c) for c in wanted}
        table.columns = {c: [] for c in wanted}
        start = reader.line_num + 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataError(f"{path} line {start}: {e}") from None
            if record and any(f.strip() for f in record) or len(record) > 1:
                if len(record) != len(names):
                    table.bad.append(
                        BadRow(
                            str(path),
                            start,
                            f"{len(record)} fields, the header has {len(names)} "
                            "(an unclosed quote, or a comma in an unquoted field?)",
                            "line",
                        )
                    )
                else:
                    for c, i in index.items():
                        table.columns[c].append(record[i])
                    table.lines.append(start)
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)
    return table


def _next_record(reader, path: Path) -> list[str]:
    for record in reader:
        if any(f.strip() for f in record):
            return record
    raise DataError(f"{path}: empty file")


def _columns_present(path: Path, names: list[str], columns, optional) -> list[str]:
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(repr(c) for c in missing)} column (found: {', '.join(names)})"
        )
    return [*columns, *(c for c in optional if c in names)]


def _read_jsonl(path: Path, text: str, columns, optional) -> Table:
    table = Table(str(path), {c: [] for c in (*columns, *optional)})
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, object_pairs_hook=_Object)
        except json.JSONDecodeError as e:
            table.bad.append(BadRow(str(path), number, f"invalid JSON ({e.msg} at column {e.colno})", "line"))
            continue
        _add_record(table, record, number, columns, optional)
    return _drop_absent_optional(table, optional)


def _read_json(path: Path, text: str, columns, optional) -> Table:
    if not text.lstrip().startswith("["):
        return _read_jsonl(path, text, columns, optional)
    try:
        records = json.loads(text, object_pairs_hook=_Object)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: not a JSON array of objects")
    table = Table(str(path), {c: [] for c in (*columns, *optional)}, unit="row")
    for number, record in enumerate(records, start=1):
        _add_record(table, record, number, columns, optional, unit="row")
    return _drop_absent_optional(table, optional)


def _add_record(table: Table, record, number: int, columns, optional, unit: str = "line") -> None:
    if not isinstance(record, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(
            type(record), f"a {type(record).__name__}"
        )
        table.bad.append(
            BadRow(
                table.path,
                number,
                f'not a JSON object ({kind}); one object per {unit}, like {{"text": "...", "label": 1}}',
                unit,
            )
        )
        return
    if record.repeated:  # json.loads would keep the last of them, silently
        fields = ", ".join(repr(k) for k in record.repeated)
        table.bad.append(BadRow(table.path, number, f"the field(s) {fields} appear more than once", unit))
        return
    missing = [c for c in columns if c not in record]
    if missing:
        table.bad.append(
            BadRow(
                table.path,
                number,
                f"no {' or '.join(repr(c) for c in missing)} field (found: {', '.join(record) or 'none'})",
                unit,
            )
        )
        return
    for c in (*columns, *optional):
        table.columns[c].append(record.get(c, _ABSENT))
    table.lines.append(number)


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once (a plain dict keeps the last)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        keys = [k for k, _ in pairs]
        self.repeated = sorted({k for k in keys if keys.count(k) > 1})


_ABSENT = object()  # an optional column a record does not have


def _drop_absent_optional(table: Table, optional) -> Table:
    """An optional column that no record has is no column; one that some records lack keeps None there."""
    for c in optional:
        values = table.columns[c]
        if all(v is _ABSENT for v in values):
            del table.columns[c]
        else:
            table.columns[c] = [None if v is _ABSENT else v for v in values]
    return table


def _read_txt(path: Path, text: str, columns, optional) -> Table:
    if len(columns) != 1:
        raise DataError(
            f"{path}: a .txt file holds reviews only, one a line; labelled data needs .csv, .jsonl or "
            ".parquet"
        )
    table = Table(str(path), {columns[0]: []})  # one column: whatever the caller calls the texts
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            table.columns[columns[0]].append(line)
            table.lines.append(number)
    return table


def text_problem(value) -> str | None:
    """Why `value` is no usable review text (None if it is one)."""
    if isinstance(value, str):
        return None if value.strip() else "empty text"
    if value is None:
        return "no text (null)"
    if isinstance(value, bool):
        return "the text is a boolean, not a string"
    if isinstance(value, int | float):
        return f"the text is a number ({value!r}), not a string"
    return f"the text is {type(value).__name__}, not a string"
