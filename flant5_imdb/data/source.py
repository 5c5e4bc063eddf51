"""`--data`, parsed once into a `Source`, and read into raw splits (texts and labels as written).

Kinds of source: a Hugging Face Hub id; a parquet / arrow / csv / jsonl / json file (csv, jsonl and json
also gzipped); a folder holding `train.*`, `test.*` and/or `validation.*`; an explicit mapping
`train=PATH,test=PATH`; the original `aclImdb/` folder (`train/pos/*.txt`, `train/neg/*.txt`,
`test/...`; `train/unsup/` is unlabelled and not read); `synthetic[:N]`, the generated sentiment
set of the offline walkthrough. `parse_source` knows a source's splits without reading it (a Hub
dataset's only the Hub knows), so a missing split or file fails before anything is read.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from flant5_imdb.data.reader import (
    TABLE_FORMATS,
    Columns,
    DataError,
    RawSplit,
    file_format,
    read_aclimdb,
    read_file,
    read_hub,
    renamed,
)

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
        if p.is_file() and split in SPLITS and file_format(p) in TABLE_FORMATS:
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
        return {k: RawSplit.of(renamed(v, where.format(k), columns), where.format(k))
                for k, v in read_hub(source.text, columns.config).items() if k in keep}  # fmt: skip
    if source.kind == "aclimdb":
        return {k: read_aclimdb(folder, k) for k, folder in source.files.items() if k in keep}
    return {k: read_file(path, columns) for k, path in source.files.items() if k in keep}


def content_key(source: Source, wanted: set[str] | None, columns: Columns = Columns()) -> dict | None:
    """What identifies the content `read_splits(source, wanted, columns)` reads, for the data cache: each
    file's path, size and content hash; an aclImdb folder's files' names, sizes and modification times;
    a Hub dataset's own fingerprints (`datasets` keeps it). None for a synthetic set: it is made in
    memory, in less time than a cache entry takes to read."""
    keep = set(SPLITS) if wanted is None else wanted
    if source.kind == "synthetic":
        return None
    if source.kind == "hub":
        found = read_hub(source.text, columns.config)
        return {"hub": source.text, "splits": {k: v._fingerprint for k, v in found.items() if k in keep}}
    out = {}
    for split, path in sorted((k, v) for k, v in source.files.items() if k in keep):
        if source.kind == "aclimdb":
            listing = hashlib.sha256()
            # Each folder's names in order, one at a time (not every Path of the split held at once).
            for sub in (s for s in ("neg", "pos") if (path / s).is_dir()):
                for name in sorted(os.listdir(path / sub)):
                    st = os.stat(path / sub / name)
                    listing.update(f"{sub}/{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
            out[split] = {"folder": str(path.resolve()), "files": listing.hexdigest()[:32]}
        else:
            from flant5_imdb.data.cache import file_digest

            size = path.stat().st_size
            out[split] = {"file": str(path.resolve()), "size": size, "content": file_digest(path)}
    return {"kind": source.kind, "splits": out}
