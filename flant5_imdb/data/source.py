"""`--data`, parsed once into a `Source`, and read into raw splits (texts and labels as written).

Kinds of source: a Hugging Face Hub id; a parquet / arrow / csv / jsonl / json file (csv, jsonl and json
also gzipped); a folder holding `train.*`, `test.*` and/or `validation.*`; an explicit mapping
`train=PATH,test=PATH`; the original `aclImdb/` folder (`train/pos/*.txt`, `train/neg/*.txt`,
`test/...`; `train/unsup/` is unlabelled and not read); `synthetic[:N]`, the generated sentiment
set of the offline walkthrough. `parse_source` knows a source's splits without reading it (a Hub
dataset's only the Hub knows), so a missing split or file fails before anything is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flant5_imdb.data.reader import (
    BadRow,
    DataError,
    MissingColumn,
    RawSplit,
    file_format,
    file_kind,
    stream_table,
)

if TYPE_CHECKING:
    from datasets import Dataset

# `datasets` (and what reads with it) is imported where a split is read, not here: parsing `--data`
# answers before any of it is loaded (a missing file is refused at once).

SPLITS = ("train", "test", "validation")
SYNTHETIC_MIN = 10


def looks_like_path(name: str) -> bool:
    """A file or folder meant, not a Hub id (`org/name`): the one rule for every option that takes either.

    It starts like a path, has a backslash or more than one slash, or ends in a file's suffix (letters
    after a dot: `train.cvs` is a misspelt file, not a Hub id; `gpt-neo-1.3B` is a Hub id).
    """
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or file_format(Path(name)) is not None
        or re.search(r"\.[A-Za-z]{2,5}(\.gz)?$", name) is not None
    )


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


@dataclass(frozen=True)
class Source:
    """What `--data` names: `kind` is hub, files, aclimdb or synthetic; `files` maps each split to its
    file (aclimdb: its folder); `size` is a synthetic set's number of training texts."""

    text: str  # as the user wrote it: every message names the source so
    kind: str
    files: dict[str, Path] = field(default_factory=dict)
    size: int = 0

    @property
    def splits(self) -> list[str] | None:
        """The splits it holds (None for a Hub dataset: the Hub knows)."""
        return None if self.kind == "hub" else list(self.files)

    @property
    def hub_id(self) -> str | None:
        return self.text if self.kind == "hub" else None


def parse_source(text: str) -> Source:
    """`--data` as a `Source`, checked as far as it can be without reading it.

    Raises:
        DataError: malformed `synthetic:N` or `SPLIT=PATH` syntax, a path that does not exist, a folder
            with no data files (or two for one split).
    """
    if text == "synthetic" or text.startswith("synthetic:"):
        n = text.partition(":")[2] or "2000"
        if not n.isdigit() or int(n) < SYNTHETIC_MIN:
            raise DataError(
                f"--data {text!r}: after 'synthetic:' comes the number of training reviews, a whole number "
                f"of at least {SYNTHETIC_MIN} (e.g. synthetic:2000)"
            )
        return Source(text, "synthetic", {"train": Path("train"), "test": Path("test")}, int(n))
    path = Path(text).expanduser()
    if "=" in text and not path.exists():
        return Source(text, "files", _parse_mapping(text))
    if path.is_dir():
        if any((path / s / "pos").is_dir() or (path / s / "neg").is_dir() for s in ("train", "test")):
            return Source(text, "aclimdb", {s: path / s for s in ("train", "test") if (path / s).is_dir()})
        return Source(text, "files", _split_files(path))
    if path.is_file():
        stem = path.name.split(".")[0]
        return Source(text, "files", {stem if stem in SPLITS else "train": path})
    if looks_like_path(text):
        raise DataError(f"--data {text}: no such file or folder")
    return Source(text, "hub")


def _parse_mapping(text: str) -> dict[str, Path]:
    """`train=PATH,test=PATH` (any of train, test, validation), each split once."""
    files = {}
    for part in text.split(","):
        split, sep, path = (s.strip() for s in part.partition("="))
        if not sep or not split or not path:
            raise DataError(
                f"--data {text!r}: {part.strip()!r} is not SPLIT=PATH; write e.g. "
                "train=train.csv,test=test.csv" + (" (no comma at the end)" if not part.strip() else "")
            )
        if split not in SPLITS:
            raise DataError(f"--data {text!r}: unknown split {split!r} (use {', '.join(SPLITS)})")
        if split in files:
            raise DataError(f"--data {text!r}: split {split!r} given twice")
        files[split] = Path(path).expanduser()
        if not files[split].is_file():
            raise DataError(f"{files[split]}: no such file (split '{split}')")
    return files


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
            f"{folder}: no train.* / test.* file (parquet, arrow, csv, jsonl, json; the last three optionally"
            " .gz) and no aclImdb layout (train/pos/, train/neg/)"
        )
    return files


# --------------------------------------------------------------------------------------------
# Reading


def read_splits(source: Source, wanted: set[str] | None, columns: Columns = Columns()) -> dict[str, RawSplit]:
    """The `wanted` splits of `source` (all if None; a Hub dataset's unlabelled extra splits are not read)."""
    keep = set(SPLITS) if wanted is None else wanted
    if source.kind == "synthetic":
        from flant5_imdb.data.synthetic import make_synthetic

        made = make_synthetic(n_train=source.size, n_test=max(source.size // 4, 50))
        return {k: RawSplit.of(v, f"synthetic/{k}") for k, v in made.items() if k in keep}
    if source.kind == "hub":
        where = f"{source.text}[{{}}]"
        return {k: RawSplit.of(_renamed(v, where.format(k), columns), where.format(k))
                for k, v in _read_hub(source.text, columns.config).items() if k in keep}  # fmt: skip
    if source.kind == "aclimdb":
        return {k: _read_aclimdb(folder, k) for k, folder in source.files.items() if k in keep}
    out = {}
    for split, path in ((k, v) for k, v in source.files.items() if k in keep):
        kind = file_kind(path, ("parquet", "arrow", "csv", "jsonl", "json"),
                         "use parquet, arrow, csv, jsonl or json, the last three optionally .gz")  # fmt: skip
        if kind == "arrow":
            out[split] = _read_arrow(path, columns)
        else:
            out[split] = _read_parquet(path, columns) if kind == "parquet" else _read_table(path, columns)
    return out


def content_key(source: Source, wanted: set[str] | None, columns: Columns = Columns()) -> dict | None:
    """What identifies the content `read_splits(source, wanted, columns)` reads, for the data cache: each
    file's path, size and content hash; an aclImdb folder's files' names, sizes and modification times;
    a Hub dataset's own fingerprints (`datasets` keeps it). None for a synthetic set: it is made in
    memory, in less time than a cache entry takes to read."""
    keep = set(SPLITS) if wanted is None else wanted
    if source.kind == "synthetic":
        return None
    if source.kind == "hub":
        found = _read_hub(source.text, columns.config)
        return {"hub": source.text, "splits": {k: v._fingerprint for k, v in found.items() if k in keep}}
    out = {}
    for split, path in sorted((k, v) for k, v in source.files.items() if k in keep):
        if source.kind == "aclimdb":
            listing = hashlib.sha256()
            subs = [path / sub for sub in ("neg", "pos") if (path / sub).is_dir()]
            for f in sorted(p for sub in subs for p in sub.iterdir()):
                st = f.stat()
                listing.update(f"{f.relative_to(path)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            out[split] = {"folder": str(path.resolve()), "files": listing.hexdigest()[:32]}
        else:
            from flant5_imdb.data.cache import file_digest

            size = path.stat().st_size
            out[split] = {"file": str(path.resolve()), "size": size, "content": file_digest(path)}
    return {"kind": source.kind, "splits": out}


def _renamed(ds: Dataset, where: str, columns: Columns) -> Dataset:
    """The source's text and label columns under the names this project reads (`text`, `label`)."""
    missing = [c for c in (columns.text, columns.label) if c not in ds.column_names]
    if missing:
        flags = [
            f for f, c in (("--text-column", columns.text), ("--label-column", columns.label)) if c in missing
        ]
        raise DataError(
            f"{where}: no {' or '.join(map(repr, missing))} column (found: {', '.join(ds.column_names)}); "
            f"name yours with {' / '.join(flags)}"
        )
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


def _read_hub(name: str, config: str | None = None) -> dict[str, Dataset]:
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


def _read_parquet(path: Path, columns: Columns) -> RawSplit:
    """Through `datasets` (cached, so tokenization is too); checked with pyarrow first for a clear error."""
    import datasets
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).schema_arrow  # noqa: B018 - reads the footer: a damaged or non-parquet file fails here
        with _quiet_datasets():
            ds = datasets.load_dataset("parquet", data_files={"split": str(path)}, split="split")
    except Exception as e:
        raise DataError(
            f"{path}: cannot be read as parquet ({type(e).__name__}: {str(e).strip()[:200]})"
        ) from None
    return RawSplit.of(_renamed(ds, str(path), columns), str(path))


def _read_arrow(path: Path, columns: Columns) -> RawSplit:
    """An Arrow file as `datasets` writes one (a split's cache file; its `ClassLabel` names kept),
    memory-mapped."""
    from datasets import Dataset

    try:
        ds = Dataset.from_file(str(path))
    except Exception as e:
        raise DataError(
            f"{path}: cannot be read as Arrow ({type(e).__name__}: {str(e).strip()[:200]})"
        ) from None
    return RawSplit.of(_renamed(ds, str(path), columns), str(path))


def _read_table(path: Path, columns: Columns) -> RawSplit:
    """csv / jsonl / json (+ .gz) through the project's reader (as the records are taken), not `datasets`'
    loaders: those turn a CSV's `NA` into a missing value and `0`/`neg` labels into numbers or nulls, and
    name no line when a record is bad; here values stay what the file holds and every bad record is named
    by its line."""
    try:
        return stream_table(path, columns.text, columns.label)
    except MissingColumn as e:
        if (columns.text, columns.label) == ("text", "label"):
            raise DataError(f"{e}; name yours with --text-column / --label-column") from None
        raise


def _read_aclimdb(folder: Path, split: str) -> RawSplit:
    """The original Large Movie Review Dataset layout, in (label, file id) order."""
    texts, labels, bad = [], [], []
    for label, sub in ((0, "neg"), (1, "pos")):
        if not (folder / sub).is_dir():
            raise DataError(
                f"{folder / sub}: missing folder (aclImdb layout needs {split}/neg and {split}/pos)"
            )
        for f in sorted((folder / sub).glob("*.txt"), key=_file_id):
            try:
                text = f.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                why = f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})"
                bad.append(BadRow(str(f), None, why))
                continue
            if not text.strip():  # named by its path, not by a row number in a folder
                bad.append(BadRow(str(f), None, "empty text"))
                continue
            texts.append(text)
            labels.append(label)
    return RawSplit(texts, labels, str(folder), bad)


def _file_id(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)", path.stem)
    return (int(m.group(1)) if m else -1, path.name)
