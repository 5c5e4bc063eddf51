"""The prepared data kept on disk as memory-mapped Arrow, so that a second run does not prepare it again
(docs/data.md says what is kept, keyed by what).

Each stage (`checked`: the splits read and validated; `tokenized`: the model inputs) is built once per
key, in a temporary folder renamed into place whole: a reader never sees half an entry, and two runs
building the same one both succeed (the copy renamed second is thrown away). The warnings a build
logged are kept with it and said again when the entry is used; errors are never kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import logging.handlers
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict, concatenate_datasets

import flant5_imdb

logger = logging.getLogger(__name__)

NONE = "none"  # --data-cache none: prepare in memory, keep nothing
ENV = "FLANT5_IMDB_DATA_CACHE"  # the default folder, where set
FORMAT = 2  # bumped when what an entry holds changes: older entries are then never read
META = "meta.json"
STALE_S = 24 * 3600  # a temporary folder this old was left by a build that was killed
WRITE_BATCH = 10_000  # rows per batch when a split held in memory is written to its Arrow file


def cache_root(option: str | None) -> Path | None:
    """The folder `--data-cache` names: `none` keeps nothing; unset, `$FLANT5_IMDB_DATA_CACHE`, else
    `flant5_imdb/data` in the user's cache folder (`$XDG_CACHE_HOME`, else `~/.cache`), as `datasets`
    keeps its own under `~/.cache/huggingface`."""
    if option == NONE:
        return None
    if option:
        return Path(option).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "flant5_imdb" / "data"


def digest(value) -> str:
    """The hash of `value`'s JSON (keys sorted): a short name for what it holds."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:32]


Build = Callable[[Path | None], tuple[DatasetDict, dict]]


def cached(
    root: Path | None, stage: str, key: dict | None, build: Build
) -> tuple[DatasetDict, dict, str | None]:
    """(splits, meta, the entry's digest): what `build(folder)` returns, or what it returned before under
    the same `key`, read memory-mapped. `build` may write its splits' Arrow files into `folder` (None: keep
    them in memory); a split it does not is written after it; `meta` must be JSON. With no `root` or no
    `key`, nothing is kept. A folder that cannot be written is warned about once and the run goes on in
    memory; a damaged entry is warned about and built again."""
    if root is None or key is None:
        return (*build(None), None)
    versions = {"flant5_imdb": flant5_imdb.__version__, "datasets": datasets.__version__}
    entry = digest({"format": FORMAT, **versions, **key})  # the entry's name: a new version makes new ones
    final = root / stage / entry
    if (final / META).is_file():
        try:
            splits, saved = _read(final)
        except Exception as e:  # a truncated file, a folder emptied by hand: build it again
            logger.warning("the data cache entry %s cannot be read (%s: %s): preparing the data again",
                           final, type(e).__name__, str(e)[:200])  # fmt: skip
            shutil.rmtree(final, ignore_errors=True)
        else:
            logger.info("%s data taken from the cache %s (prepared %s)", stage, final, saved["written"])
            for name, level, message in saved["logs"]:
                logging.getLogger(name).log(level, "%s", message)
            return splits, saved["meta"], entry
    _sweep(root / stage)
    tmp = root / stage / f".tmp-{entry}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        _unwritable(root, e)
        return (*build(None), None)
    try:
        with _recorded() as logs:
            splits, meta = build(tmp)
        try:
            written = time.strftime("%Y-%m-%d %H:%M")
            _write(tmp, splits, {"key": key, "meta": meta, "logs": logs, "written": written})
        except OSError as e:  # a full disk: the run goes on with what it built
            _unwritable(root, e)
            return splits, meta, None
        try:
            tmp.rename(final)
        except OSError:  # another run renamed the same entry first: its copy is as good as this one
            if not (final / META).is_file():
                raise
        splits, saved = _read(final)
        logger.info("%s data kept in the cache %s for the next run", stage, final)
        return splits, saved["meta"], entry
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep(folder: Path) -> None:
    """Temporary folders of builds killed part-way (a day old: none still being written) are removed."""
    if folder.is_dir():
        for tmp in folder.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > STALE_S:
                    shutil.rmtree(tmp, ignore_errors=True)


def _write(folder: Path, splits: DatasetDict, saved: dict) -> None:
    """Each split's Arrow files in `folder` (those `build` wrote there, in order: one, or one per worker
    process), else one file of its own, written here; then the meta, naming them."""
    saved["splits"] = {}
    for name, ds in splits.items():
        files = [Path(f["filename"]) for f in ds.cache_files]
        if not files or ds._indices is not None or any(f.parent != folder for f in files):
            file = folder / f"{name}.arrow"  # held in memory, selected from, or elsewhere: written whole
            ds.map(None, batched=True, batch_size=WRITE_BATCH, cache_file_name=str(file),
                   new_fingerprint=f"{folder.name}-{name}", desc=f"caching {name}")  # fmt: skip
            files = [file]
        saved["splits"][name] = [f.name for f in files]
    (folder / META).write_text(json.dumps(saved, indent=1))  # last: an entry with its meta is whole


def _read(folder: Path) -> tuple[DatasetDict, dict]:
    saved = json.loads((folder / META).read_text())
    splits = DatasetDict()
    for name, files in saved["splits"].items():
        parts = [Dataset.from_file(str(folder / f)) for f in files]
        splits[name] = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    return splits, saved


_warned: set[Path] = set()


def _unwritable(root: Path, e: OSError) -> None:
    if root not in _warned:
        _warned.add(root)
        logger.warning("the data cache %s cannot be written (%s): the data is prepared in memory and kept "
                       "nowhere; --data-cache DIR puts it elsewhere, --data-cache none turns it off", root,
                       e.strerror or e)  # fmt: skip


@contextlib.contextmanager
def _recorded() -> Iterator[list[tuple[str, int, str]]]:
    """The package's log records of INFO and above made while a stage is built, to say again when its entry
    is used."""
    records: list[tuple[str, int, str]] = []
    handler = logging.handlers.BufferingHandler(capacity=sys.maxsize)  # never flushed: read at the end
    handler.setLevel(logging.INFO)  # only what the run's logging level lets through is made, and kept
    package = logging.getLogger("flant5_imdb")
    package.addHandler(handler)
    try:
        yield records
    finally:
        package.removeHandler(handler)
        records += [(r.name, r.levelno, r.getMessage()) for r in handler.buffer if r.name != __name__]


def file_digest(path: Path) -> str:
    """The file's content hash, read a block at a time (memory does not grow with the file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def tokenizer_digest(tokenizer) -> str | None:
    """What decides how a fast tokenizer encodes: its class, its truncation side and its whole definition
    (vocabulary, normalizer, pre-tokenizer, post-processor), without the truncation and padding settings
    a call leaves on it. None for a tokenizer with no such definition: its tokenization is not kept."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    body = json.dumps(definition, sort_keys=True)
    head = f"{type(tokenizer).__name__}|{getattr(tokenizer, 'truncation_side', 'right')}|"
    return hashlib.sha256((head + body).encode()).hexdigest()[:32]
