"""Every reader of the data a user brings: training and evaluation splits, and texts to classify.

Files, by name (`.gz` after it, or gzip bytes under any name, decompressed): `.csv` (a header row;
quoted fields may hold commas and newlines), `.jsonl`, `.json` (an array of objects, or JSON lines),
`.txt` (one text a line, to classify), read as a stream: UTF-8 with or without a byte-order mark, LF,
CRLF or CR line ends, values kept as the text they are (a CSV's `NA` is a text, `0`/`neg` labels stay
strings); `.parquet` and `.arrow`. And two that are no file: a Hub dataset, and IMDB's `aclImdb/` folder.

A whole-file problem (missing, empty, only a header, not UTF-8, not gzip) stops at once (`DataError`,
naming the file and line); a record that cannot be taken is a `BadRow`, which the caller reports or,
with `--skip-bad-rows`, drops and lists.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import gzip
import io
import itertools
import json
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from datasets import Dataset


FORMATS = {f".{kind}": kind for kind in ("csv", "jsonl", "json", "txt", "parquet", "arrow")}  # by suffix
GZIP_MAGIC = b"\x1f\x8b"
STDIN = "<stdin>"
LINE_END = r"\r\n|\r|\n"  # as Python's text files and the csv module end a line


class DataError(ValueError):
    """A data source that cannot be used as given; the message names the file and rows."""


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


COLUMN_FLAGS = ("--text-column", "--label-column")  # the options that name the columns read, in order


def none_of(missing: list[str], found: Iterable[str], noun: str = "column") -> str:
    """ "no 'x' column (found: a, b)": what a record or a table lacks, beside what it has."""
    return f"no {' or '.join(map(repr, missing))} {noun} (found: {', '.join(found) or 'none'})"


def check_columns(where: str, columns: tuple[str, ...], found: list[str]) -> None:
    """Raises DataError where `found` (a table's column names) lacks one of `columns` (its text column,
    then its label column, if read), naming the options that name them."""
    missing = [c for c in columns if c not in found]
    if missing:
        flags = " / ".join(COLUMN_FLAGS[: len(columns)])
        raise DataError(f"{where}: {none_of(missing, found)}; name yours with {flags}")


def kind_of(value, array: str = "a list") -> str:
    """A value's type in words, for messages (`array`: what a list is called, "an array" in JSON)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, bytes | bytearray):  # a parquet or Arrow column of binary type
        return "binary data (store the column as strings)"
    return array if isinstance(value, list | tuple) else f"a {type(value).__name__}"


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


ROWS_BATCH = 10_000  # rows taken at a time from a dataset


@dataclass
class RawSplit:
    """A split as read: `rows()` gives its records once, as they are taken (a file or a folder read as it
    goes, a dataset a batch at a time). `unit` names a record's place (a table's row, a file's line)."""

    where: str  # the file or folder named in error messages
    stream: Iterator | None = None
    unit: str = "row"
    class_names: tuple[str, ...] | None = None  # a `ClassLabel`'s names, in its order: labels are these

    @classmethod
    def of(cls, ds: Dataset, where: str) -> RawSplit:
        """`ds`'s texts and labels, read a batch at a time by `rows()`. A `ClassLabel` column's integers
        become its names (a Hub dataset's, or a parquet file's that `datasets` wrote): `billing`, not `0`.
        An integer outside the names (a Hub test split's -1) stays as written, to be reported."""
        from datasets import ClassLabel

        feature = ds.features.get("label")
        names = tuple(feature.names) if isinstance(feature, ClassLabel) else None

        def records():
            row = 0
            for batch in ds.select_columns(["text", "label"]).iter(batch_size=ROWS_BATCH):
                labels = batch["label"]
                if names:
                    labels = [names[y] if isinstance(y, int) and 0 <= y < len(names) else y for y in labels]
                for text, label in zip(batch["text"], labels, strict=True):
                    row += 1
                    yield row, text, label

        return cls(where, records(), class_names=names)

    def rows(self) -> Iterator[tuple[int, object, object] | BadRow]:
        """Every record, in the order read: (its place, its text, its label as written), or the `BadRow`
        of one no reader could take."""
        return self.stream


def file_format(path: Path) -> str | None:
    """csv, jsonl, json, txt or parquet from the name (a `.gz` after it allowed); None if none of these."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def file_kind(path: Path, allowed: tuple[str, ...]) -> str:
    """`path`'s format (`file_format`), once it is known to be a file of one of the `allowed` formats.

    Raises:
        DataError: a folder, a missing file, or a file of another format (naming the formats to use).
    """
    names = ", ".join(f".{k}" for k in allowed[:-1]) + f" or .{allowed[-1]}"
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a file; name a {names} file in it")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = file_format(path)
    if kind not in allowed:
        raise DataError(
            f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}' (use {names})"
        )
    return kind


def read_table(path: str | Path, text_column: str, label_column: str | None = None) -> RawSplit:
    """A csv / jsonl / json / txt file's text and label columns, read as `rows()` takes them (once). A
    whole-file problem (see `table_records`) is raised here, before any record is taken (the first is
    read now), or, for a damaged end, where the records reach it."""
    path = Path(path)
    kind = file_kind(path, ("csv", "jsonl", "json", "txt"))
    if kind == "txt" and label_column is not None:
        raise DataError(
            f"{path}: a .txt file holds texts only, one a line; labelled data needs .csv, .jsonl or .parquet"
        )
    columns = (text_column,) if label_column is None else (text_column, label_column)
    split = RawSplit(str(path))

    def records():
        with open(path, "rb") as raw:
            split.unit, found = table_records(raw, str(path), kind, columns)
            seen = False
            for item in found:
                seen = True
                yield item if label_column or isinstance(item, BadRow) else (*item, None)
        if not seen:
            raise DataError(f"{path}: no records" + (" (only a header)" if kind == "csv" else ""))

    stream = records()
    first = next(stream)  # a file with no record raises before this returns
    split.stream = itertools.chain([first], stream)
    return split


def table_records(raw: BinaryIO, where: str, kind: str, columns) -> tuple[str, Iterator[tuple | BadRow]]:
    """(the unit a record's place is counted in, each record of `raw` as it is read: (its place, its
    `columns`' values), or the `BadRow` of one that cannot be taken). `raw` holds a text file's bytes,
    gzipped or not (a parquet file is read from its path, `where`); only a block of them and the record
    in hand are held.

    Raises (as the records are read):
        DataError: the file is empty, only a header, not UTF-8 or a damaged gzip file, unreadable as
            parquet, lacks a column (a CSV's header, a parquet schema), or a JSON array is malformed.
    """
    blocks, first = decoded_blocks(raw, where), None  # a generator: nothing is read until it is
    if kind == "json":  # an array, or JSON lines: a .json file may hold either
        first, blocks = _first_character(blocks)
    if kind == "parquet":
        unit, records = "row", _parquet_records(where, columns)
    elif first == "[":
        unit, records = "row", _json_array(where, blocks)
    elif kind == "csv":
        unit, records = "line", _csv_records(where, blocks, columns)
    else:
        parse = (lambda line: {columns[0]: line}) if kind == "txt" else _json_record
        unit, records = "line", _line_records(where, blocks, parse)
    return unit, _with_columns(records, columns, where, unit)


# Bytes read at a time. 64 KiB reads as fast as 1 MiB, and a process reading a file of any size stays at
# about 15 MiB: blocks of a size glibc serves from its heap reuse the memory the last one freed.
BLOCK = 1 << 16


def decoded_blocks(raw: BinaryIO, where: str) -> Iterator[str]:
    """`raw`'s bytes as UTF-8 text, a block at a time: gunzipped if they are gzip (whatever the name), a
    byte-order mark dropped, a character split between two blocks kept whole (the decoder holds its
    first bytes back).

    Raises:
        DataError: bytes that are not UTF-8 (naming the line, as `lines` counts them, and the byte's
            offset in the file, or in what gzip gave), or a damaged gzip file.
    """
    if not hasattr(raw, "peek"):
        raw = io.BufferedReader(raw)
    stream = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == GZIP_MAGIC else raw
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, ends, ended_cr, first = 0, 0, False, True  # offset: the bytes read before this block
    while True:
        try:
            block = stream.read(BLOCK)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{where}: a damaged gzip file ({e})") from None
        held = decoder.getstate()[0]  # the first bytes of a character the last block cut
        try:
            text = decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            data = held + block
            line = ends + _line_ends(data[: e.start].decode("utf-8"), ended_cr) + 1
            raise DataError(
                f"{where} line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset "
                f"{offset - len(held) + e.start}); "
                + ("give UTF-8 text" if where == STDIN else "save the file as UTF-8")
            ) from None
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            ends += _line_ends(text, ended_cr)
            ended_cr = text.endswith("\r")
            yield text
        offset += len(block)
        if not block:
            return


def _line_ends(text: str, after_cr: bool) -> int:
    """The line ends in `text` (LF, CRLF or CR), where the text before it ended with `after_cr`."""
    return text.count("\n") + text.count("\r") - text.count("\r\n") - (after_cr and text.startswith("\n"))


def lines(blocks: Iterable[str]) -> Iterator[str]:
    """The lines of decoded text, each with its end (LF, CRLF or CR, as Python's text files and the csv
    module end them: `str.splitlines` would also split at characters a text or a JSON string may hold,
    U+2028, U+0085 or a form feed, cutting one record in two). The last line may have no end.

    Each block is scanned once and a line longer than a block is joined once, from its pieces: reading
    a line of any length costs time in proportion to it (a line built up block by block, `rest + text`,
    is copied and scanned again at every block: time that grows with the square of its length)."""
    pending: list[str] = []  # the pieces of a line no block has ended yet
    for text in blocks:
        start = 0
        if pending and pending[-1].endswith("\r"):  # held back at the last block's end: a CRLF's first half?
            start = int(text.startswith("\n"))
            yield "".join([*pending, text[:start]])
            pending = []
        # A block whose every CR starts a CRLF (nearly every block of an LF or a CRLF file) is searched for
        # LF alone, 15 times faster than for all three ends.
        lone_cr = "\r" in text and text.count("\r") != text.count("\r\n")
        for m in (_LINE_END if lone_cr else _LF).finditer(text, start):
            if m.end() == len(text) and m.group() == "\r":
                break  # a CR at the end of a block may be the first half of a CRLF
            yield "".join([*pending, text[start : m.end()]])
            pending, start = [], m.end()
        if start < len(text):
            pending.append(text[start:])
    if pending:
        yield "".join(pending)


_LINE_END, _LF = re.compile(LINE_END), re.compile("\n")


def _without_end(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line[:-1] if line.endswith(("\n", "\r")) else line


class Unreadable(str):
    """Why a record could not be parsed at all (a type of its own: a JSON record may itself be a string)."""


Records = Iterator[tuple[int, object]]  # (where a record starts, the record parsed or why it is `Unreadable`)


def _first_character(blocks: Iterator[str]) -> tuple[str | None, Iterator[str]]:
    """The first character that is not white space (None: there is none), and the blocks, all of them."""
    read = []
    for text in blocks:
        read.append(text)
        if text.strip():
            return text.lstrip()[0], itertools.chain(read, blocks)
    return None, iter(read)


def _csv_records(where: str, blocks: Iterable[str], columns) -> Records:
    limit = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # a text may be longer than the module's 128 KiB default
    try:
        reader = csv.reader(lines(blocks))
        try:
            names = [h.strip() for h in next((r for r in reader if any(f.strip() for f in r)), [])]
        except csv.Error as e:
            raise DataError(f"{where} line {reader.line_num}: {e}") from None
        if not names:
            raise DataError(f"{where}: empty file")
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if twice:
            at = "; ".join(
                f"{n!r} in columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)}"
                for n in twice
            )
            raise DataError(f"{where}: the header names a column twice ({at}); give each column its own name")
        other = next((d for d in ";\t|" if len(names) == 1 and d in names[0]), None)
        if other and any(c not in names for c in columns):
            raise DataError(
                f"{where}: the header is one column, {names[0]!r}: the file looks separated by "
                f"{other!r}, and a .csv file's fields are separated by commas"
            )
        check_columns(where, columns, names)
        start = reader.line_num + 1
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(f"{where} line {start}: {e}") from None
            blank = len(record) < 2 and not any(f.strip() for f in record)  # a blank line is no record
            if not blank and len(record) == len(names):
                yield start, dict(zip(names, record, strict=True))
            elif not blank:
                yield start, Unreadable(f"{len(record)} fields, the header has {len(names)} (an unclosed "
                                        "quote, or a comma in an unquoted field?)")  # fmt: skip
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)


def _line_records(where: str, blocks: Iterable[str], parse) -> Records:
    """`parse(line)` of each line that is not blank (its end dropped), numbered from 1."""
    seen = False
    for number, line in enumerate(lines(blocks), start=1):
        line = _without_end(line)
        if line.strip():
            seen = True
            yield number, parse(line)
    if not seen:
        raise DataError(f"{where}: empty file")


def _json_record(line: str):
    try:
        return _DECODER.decode(line)
    except json.JSONDecodeError as e:
        return Unreadable(f"invalid JSON ({e.msg} at column {e.colno})")


NEAR_END = 1024  # characters: a JSON error this close to the end of what is read may be a value cut short


def _json_array(where: str, blocks: Iterator[str]) -> Records:
    """The elements of a JSON array, parsed one at a time as the blocks come (a file of any size, in
    memory bounded by a block and the element in hand); an error names the line and column of the file."""
    text = _JsonBlocks(where, blocks)
    text.skip_space()
    text.pos += 1  # the "[" that made this an array
    number, c = 0, text.skip_space()
    if c == "]":  # an empty array
        text.pos += 1
    while c != "]":
        number += 1
        yield number, text.value()
        c = text.skip_space()
        if c not in (",", "]"):
            text.fail("Expecting ',' delimiter", text.pos)
        text.pos += 1  # after a comma a value must follow: a "]" there is json's "Expecting value"
    if text.skip_space() is not None:
        text.fail("Extra data", text.pos)


class _JsonBlocks:
    """A JSON text read a block at a time: what is not parsed yet is `buf` from `pos`; `base_line` and
    `base_col` say where buf[0] is in the file, for the errors."""

    def __init__(self, where: str, blocks: Iterator[str]):
        self.where, self.blocks = where, blocks
        self.buf, self.pos, self.done = "", 0, False
        self.base_line, self.base_col = 1, 0

    def more(self, at_least: int = 1) -> bool:
        """Drop what is parsed, read `at_least` characters more (or to the end); False at the end of the
        file."""
        if self.done:
            return False
        consumed, pieces, got = self.buf[: self.pos], [self.buf[self.pos :]], 0
        if "\n" in consumed:  # lines counted as json counts them, by LF
            self.base_line += consumed.count("\n")
            self.base_col = len(consumed) - consumed.rfind("\n") - 1
        else:
            self.base_col += len(consumed)
        while got < at_least:
            text = next(self.blocks, None)
            if text is None:
                self.done = True
                break
            pieces.append(text)
            got += len(text)
        self.buf, self.pos = "".join(pieces), 0
        return got > 0

    def fail(self, msg: str, at: int):
        e = json.JSONDecodeError(msg, self.buf, at)
        line = self.base_line + e.lineno - 1
        col = e.colno + (self.base_col if e.lineno == 1 else 0)
        raise DataError(f"{self.where} line {line}: invalid JSON ({msg} at column {col})")

    def skip_space(self) -> str | None:
        """The next character that is not white space (None at the end of the file), reading on."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return None

    def value(self):
        """The JSON value after `pos` (and white space), read on across the ends of blocks."""
        self.skip_space()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                cut_short = e.msg.startswith("Unterminated string") or e.pos >= len(self.buf) - NEAR_END
                if cut_short and not self.done:
                    # Read as much again as the value holds so far, and parse again: a long value is parsed
                    # a few times, not once a block. (At the end of the file, the error is the file's.)
                    self.more(len(self.buf) - self.pos)
                    continue
                self.fail(e.msg, e.pos)
            if end == len(self.buf) and not self.done:
                self.more()  # a number or a word may go on in the next block
                continue
            self.pos = end
            return value


def _with_columns(records: Records, columns, where: str, unit: str) -> Iterator[tuple | BadRow]:
    """(the place, the `columns`' values) of each record that holds them; the `BadRow` of each that does not.

    Raises:
        DataError: the first record is a JSON object holding whole columns (`{"text": [...], ...}`, or
            pandas' default `to_json`, `{"text": {"0": ...}, ...}`): a table in one record, not a bad row.
    """
    first = True
    for number, record in records:
        if first and isinstance(record, _Object):
            sizes = {len(v) if isinstance(v, list | dict) else 0 for v in map(record.get, columns)}
            if len(sizes) == 1 and min(sizes) > 1:
                raise DataError(
                    f"{where}: one JSON object holds whole columns ({' and '.join(map(repr, columns))}, "
                    f"{min(sizes)} values each); give one object per row, as JSON lines or an array of "
                    "objects (pandas: to_json(path, orient='records', lines=True))"
                )
        first = False
        problem = _record_problem(record, columns, unit)
        yield BadRow(where, number, problem, unit) if problem else (number, *[record[c] for c in columns])


def _record_problem(record, columns, unit: str) -> str | None:
    """Why a record cannot be taken: unreadable, not an object, a repeated field, a column missing."""
    if isinstance(record, Unreadable):
        return str(record)
    if not isinstance(record, dict):
        kind = kind_of(record, array="an array")
        return f'not a JSON object ({kind}); one object per {unit}, like {{"text": "...", "label": 1}}'
    if getattr(record, "repeated", None):  # json.loads would keep the last of them, silently
        return f"the field(s) {', '.join(map(repr, record.repeated))} appear more than once"
    missing = [c for c in columns if c not in record]
    return none_of(missing, record, "field") if missing else None


class _Object(dict):
    """A JSON object that remembers the keys it was given more than once (a plain dict keeps the last)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        keys = [k for k, _ in pairs]
        self.repeated = sorted({k for k in keys if keys.count(k) > 1})


_DECODER = json.JSONDecoder(object_pairs_hook=_Object)  # made once: json.loads(..., hook) makes one a record


def text_problem(value) -> str | None:
    """Why `value` is no usable text (None if it is one)."""
    if isinstance(value, str):
        try:  # a command line's undecodable bytes arrive as lone surrogates, which no tokenizer takes
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"not UTF-8 (an undecodable byte at character {e.start + 1})"
        return None if value.strip() else "empty text"
    return "no text (null)" if value is None else f"the text is {kind_of(value)}, not a string"


TEXT_FORMATS = ("txt", "csv", "jsonl", "json", "parquet")  # what texts to classify may be read from


def check_text_file(path: str | Path) -> str:
    """The format of a file of texts to classify (`TEXT_FORMATS`), checked before anything is read."""
    return file_kind(Path(path), TEXT_FORMATS)


def texts_to_predict(path: str | Path | None, *, text_column: str = "text",
                     stdin: BinaryIO | None = None) -> Iterator[str | BadRow]:  # fmt: skip
    """Each record of a file of texts (`TEXT_FORMATS`, gzipped or not) or of `stdin` (one text a line, read
    as a .txt file is), in order, as it is read: its text, or a `BadRow` saying why it is none. Blank
    lines are no records. Raises `DataError` as the records are read (see `table_records`)."""
    if path is None:
        where, kind = STDIN, "txt"
        opened = contextlib.nullcontext(stdin if stdin is not None else sys.stdin.buffer)
    else:
        where, kind = str(path), check_text_file(path)
        opened = open(path, "rb")  # noqa: SIM115 - closed by the with below
    with opened as raw:
        unit, records = table_records(raw, where, kind, (text_column,))
        for item in records:
            if isinstance(item, BadRow):
                yield item
            elif problem := text_problem(item[1]):
                yield BadRow(where, item[0], problem, unit)
            else:
                yield item[1]


def _parquet_records(path: str, columns) -> Records:
    """A parquet file's `columns`, a batch of rows at a time (pyarrow, from the path: it reads a Python file
    object through Python, a sixth slower; rows counted from 1)."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        names = table.schema_arrow.names
    except Exception as e:
        raise _cannot_read(path, "parquet", e) from None
    check_columns(path, columns, names)
    number = 0
    for batch in table.iter_batches(batch_size=4096, columns=list(columns)):
        for values in zip(*(c.to_pylist() for c in batch.columns), strict=True):
            number += 1
            yield number, dict(zip(columns, values, strict=True))


def check_texts(records: Iterable[str | BadRow], *, skip_bad_rows: bool = False,
                on_skip=None) -> int:  # fmt: skip
    """The number of usable texts in `records` (from `texts_to_predict`), every record read; with
    `skip_bad_rows`, `on_skip(bad_row)` for each that is none, else a `DataError` naming the first."""
    usable, first, bad = 0, None, 0
    for record in records:
        if isinstance(record, str):
            usable += 1
            continue
        bad += 1
        first = first or record
        if skip_bad_rows and on_skip is not None:
            on_skip(record)
    if bad and not skip_bad_rows:
        more = f" (and {bad - 1} more)" if bad > 1 else ""
        raise DataError(f"{first}{more}; pass --skip-bad-rows to leave such records out")
    return usable


# --------------------------------------------------------------------------------------------
# A split's table: a file of any kind, a Hub dataset, an aclImdb/ folder

TABLE_FORMATS = ("parquet", "arrow", "csv", "jsonl", "json")  # a split's file (the last three also .gz)


def read_file(path: Path, columns: Columns) -> RawSplit:
    """A split's file. csv / jsonl / json (+ .gz) are read here, as the records are taken, not by
    `datasets`' loaders: those turn a CSV's `NA` into a missing value and `0`/`neg` labels into numbers
    or nulls, and name no line when a record is bad. Parquet and Arrow go through `datasets`
    (parquet cached, so tokenization is too; Arrow memory-mapped, its `ClassLabel` names kept).

    Raises:
        DataError: a file of another kind, unreadable, or without the columns.
    """
    kind = file_kind(path, TABLE_FORMATS)
    if kind not in ("parquet", "arrow"):
        return read_table(path, columns.text, columns.label)
    import datasets
    import pyarrow.parquet as pq

    try:
        if kind == "arrow":
            ds = datasets.Dataset.from_file(str(path))
        else:
            pq.ParquetFile(path).schema_arrow  # noqa: B018 - reads the footer: a damaged file fails here
            with _quiet_datasets():
                ds = datasets.load_dataset("parquet", data_files={"split": str(path)}, split="split")
    except Exception as e:
        raise _cannot_read(path, "Arrow" if kind == "arrow" else "parquet", e) from None
    return RawSplit.of(renamed(ds, str(path), columns), str(path))


def _cannot_read(path: Path, kind: str, e: Exception) -> DataError:
    return DataError(f"{path}: cannot be read as {kind} ({type(e).__name__}: {str(e).strip()[:200]})")


def renamed(ds: Dataset, where: str, columns: Columns) -> Dataset:
    """The source's text and label columns under the names this project reads (`text`, `label`)."""
    check_columns(where, (columns.text, columns.label), ds.column_names)
    names = {columns.text: "text", columns.label: "label"}
    ds = ds.remove_columns([c for c in ("text", "label") if c in ds.column_names and c not in names])
    return ds.rename_columns({k: v for k, v in names.items() if k != v})


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs an ERROR line of its own before raising; the error raised here says it all."""
    import datasets

    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


@functools.lru_cache(maxsize=1)  # one load a run: its fingerprints key the data cache, then its rows are read
def read_hub(name: str, config: str | None = None) -> dict[str, Dataset]:
    """Every split of a Hugging Face Hub dataset (`datasets` caches it)."""
    import datasets

    try:
        with _quiet_datasets():
            return dict(datasets.load_dataset(name, config))
    except Exception as e:  # the Hub raises many types; all mean "cannot use this source"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot load '{name}' from the Hugging Face Hub ({type(e).__name__}: {first[:200]}); "
            "offline, pass --data with a local folder or file (parquet, csv, jsonl, or aclImdb/)"
        ) from e


def read_aclimdb(folder: Path, split: str) -> RawSplit:
    """The original Large Movie Review Dataset layout (`neg/*.txt`, `pos/*.txt`), in (label, file id)
    order, one file at a time as the records are taken; a file that is not UTF-8 or holds no text is a
    bad row named by its path."""
    subs = [(label, folder / sub) for label, sub in ((0, "neg"), (1, "pos"))]
    for _, sub in subs:
        if not sub.is_dir():
            raise DataError(f"{sub}: missing folder (aclImdb layout needs {split}/neg and {split}/pos)")

    def records():
        place = 0
        for label, sub in subs:
            # Names, not Path objects: a listing of millions of files costs a tenth of the memory.
            for name in sorted(
                (n for n in os.listdir(sub) if n.endswith(".txt") and n[0] != "."), key=_file_id
            ):
                f = sub / name
                try:
                    text = f.read_bytes().decode("utf-8")
                except UnicodeDecodeError as e:
                    why = f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})"
                    yield BadRow(str(f), None, why)
                    continue
                if not text.strip():
                    yield BadRow(str(f), None, "empty text")
                    continue
                place += 1
                yield place, text, label

    return RawSplit(str(folder), records())


def _file_id(name: str) -> tuple[int, str]:
    m = re.match(r"(\d+)", name)
    return (int(m.group(1)) if m else -1, name)
