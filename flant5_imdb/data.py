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

import logging
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "stanfordnlp/imdb"
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
LABEL_VALUES = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
ALLOWED_LABELS = "0/1/neg/pos/negative/positive"
# Targets the model learns to emit for label 0 and label 1. `digits` is the seed recipe's.
VERBALIZERS = {"digits": ("0", "1"), "words": ("negative", "positive")}
# Named prompt templates; anything else containing `{text}` is used as given.
PROMPTS = {
    "none": "{text}",
    "flan": "{text}\n\nIs the sentiment of this movie review negative or positive?",
}
MAX_REPORTED_ROWS = 5


class DataError(ValueError):
    """A data source that cannot be used as given; the message names the file and rows."""


@dataclass(frozen=True)
class BadRow:
    """One row that failed validation. `row` is 1-based within `where` (header excluded)."""

    where: str
    row: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.where} row {self.row}: {self.reason}" if self.row is not None else f"{self.where}: {self.reason}"


# --------------------------------------------------------------------------------------------
# Loading


def load_imdb(source: str = DEFAULT_SOURCE, *, skip_bad_rows: bool = False) -> tuple[DatasetDict, list[BadRow]]:
    """Load `source` into a validated `DatasetDict(text, label)`.

    Returns the data and the rows dropped (always empty unless `skip_bad_rows`).

    Raises:
        DataError: the source is missing or unreadable, a split lacks a column, or a row is bad
            (empty text, a label outside 0/1/neg/pos/negative/positive, text that is not UTF-8)
            and `skip_bad_rows` is off.
    """
    out, dropped = {}, []
    for split, raw in _read_source(source).items():
        ds, rows = _validate(raw.ds, raw.where, raw.bad, skip_bad_rows)
        out[split], dropped = ds, dropped + rows
    if dropped:
        shown = "; ".join(str(r) for r in dropped[:20])
        more = f" (and {len(dropped) - 20} more)" if len(dropped) > 20 else ""
        logger.warning("skipped %d bad rows: %s%s", len(dropped), shown, more)
    return DatasetDict(out), dropped


@dataclass
class _RawSplit:
    ds: Dataset
    where: str  # the file or folder named in error messages
    bad: list[BadRow]  # rows that could not even be read (aclImdb files that are not UTF-8)


def _read_source(source: str) -> dict[str, _RawSplit]:
    """Dispatch on the kind of source."""
    if source == "synthetic" or source.startswith("synthetic:"):
        n = int(source.split(":", 1)[1]) if ":" in source else 2000
        return {k: _RawSplit(v, f"synthetic/{k}", []) for k, v in make_synthetic(n_train=n, n_test=max(n // 4, 50)).items()}
    if "=" in source and not Path(source).exists():
        files = dict(part.split("=", 1) for part in source.split(","))
        return _read_files({split.strip(): Path(p.strip()) for split, p in files.items()})
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "train" / "pos").is_dir() or (path / "test" / "pos").is_dir():
            return _read_aclimdb(path)
        files = {p.stem: p for p in sorted(path.iterdir()) if p.suffix in FILE_BUILDERS and p.stem in {"train", "test", "validation"}}
        if not files:
            raise DataError(f"{path}: no train.* / test.* file (parquet, csv, jsonl) and no aclImdb layout (train/pos/)")
        return _read_files(files)
    if path.is_file():
        split = path.stem if path.stem in {"train", "test", "validation"} else "train"
        return _read_files({split: path})
    if _looks_like_path(source):
        raise DataError(f"{source}: no such file or folder")
    return {k: _RawSplit(v, f"{source}[{k}]", []) for k, v in _read_hub(source).items()}


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).suffix in FILE_BUILDERS or os.sep + os.sep in source


def _read_hub(name: str) -> dict[str, Dataset]:
    try:
        dsd = datasets.load_dataset(name)
    except Exception as e:  # the Hub raises many types; all mean "cannot use this source"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"cannot load '{name}' from the Hugging Face Hub ({type(e).__name__}: {first[:200]}); "
            "offline, pass --data with a local folder or file (parquet, csv, jsonl, or aclImdb/)"
        ) from e
    # IMDB on the Hub also has an unlabelled `unsupervised` split (label -1): not for training here.
    return {k: v for k, v in dsd.items() if k in {"train", "test", "validation"}}


def _read_files(files: dict[str, Path]) -> dict[str, _RawSplit]:
    out = {}
    for split, path in files.items():
        if not path.is_file():
            raise DataError(f"{path}: no such file (split '{split}')")
        builder = FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise DataError(f"{path}: unsupported file type '{path.suffix}' (use parquet, csv or jsonl)")
        try:
            ds = datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        except Exception as e:
            raise DataError(f"{path}: cannot be read as {builder} ({type(e).__name__}: {str(e)[:200]})") from e
        out[split] = _RawSplit(ds, str(path), [])
    return out


def _read_aclimdb(root: Path) -> dict[str, _RawSplit]:
    """Read the original Large Movie Review Dataset layout, in (label, file id) order."""
    out = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        texts, labels, bad = [], [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            folder = root / split / sub
            if not folder.is_dir():
                raise DataError(f"{folder}: missing folder (aclImdb layout needs {split}/neg and {split}/pos)")
            for f in sorted(folder.glob("*.txt"), key=_file_id):
                try:
                    texts.append(f.read_bytes().decode("utf-8"))
                except UnicodeDecodeError as e:
                    bad.append(BadRow(str(f), None, f"not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})"))
                    continue
                labels.append(label)
        out[split] = _RawSplit(Dataset.from_dict({"text": texts, "label": labels}), str(root / split), bad)
    return out


def _file_id(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)", path.stem)
    return (int(m.group(1)) if m else -1, path.name)


# --------------------------------------------------------------------------------------------
# Validation


def _validate(ds: Dataset, where: str, known_bad: list[BadRow], skip: bool) -> tuple[Dataset, list[BadRow]]:
    """Check columns and every row; normalize labels to int 0/1 and keep only text and label."""
    missing = [c for c in ("text", "label") if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: missing column {', '.join(repr(c) for c in missing)} (found: {', '.join(ds.column_names)})")
    texts, raw_labels = ds["text"], ds["label"]
    labels, bad, good = [], list(known_bad), []
    for i, (text, raw) in enumerate(zip(texts, raw_labels, strict=True)):
        label = _parse_label(raw)
        if not isinstance(text, str) or not text.strip():
            bad.append(BadRow(where, i + 1, "empty text" if isinstance(text, str) or text is None else f"text is {type(text).__name__}"))
        elif label is None:
            bad.append(BadRow(where, i + 1, f"label {raw!r} is not one of {ALLOWED_LABELS}"))
        else:
            good.append(i)
            labels.append(label)
    if bad and not skip:
        shown = "; ".join(str(r) for r in bad[:MAX_REPORTED_ROWS])
        raise DataError(f"{where}: {len(bad)} bad row(s): {shown}; pass --skip-bad-rows to drop them")
    if len(good) != len(ds):
        ds = ds.select(good)
    ds = ds.select_columns(["text", "label"])
    if getattr(ds.features["label"], "dtype", None) != "int64" or list(ds["label"]) != labels:
        ds = ds.remove_columns("label").add_column("label", labels)
    if not len(ds):
        raise DataError(f"{where}: no usable rows")
    return ds.cast_column("label", datasets.Value("int64")), bad


def _parse_label(raw) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float) and raw in (0, 1):
        return int(raw)
    if isinstance(raw, str):
        return LABEL_VALUES.get(raw.strip().lower())
    return None


# --------------------------------------------------------------------------------------------
# Synthetic data for the offline demo and tests

_POS = ["great", "excellent", "wonderful", "loved", "superb", "brilliant", "enjoyable", "fantastic", "moving", "delightful"]
_NEG = ["terrible", "awful", "boring", "hated", "worst", "dull", "poor", "disappointing", "painful", "mess"]
_NEUTRAL = ["the", "movie", "film", "plot", "actor", "actress", "scene", "story", "director", "camera", "music", "was", "and", "it", "a", "of", "in", "to", "this", "that", "with", "for", "as", "on", "script", "ending", "character", "screen", "cast", "minutes", "watch", "saw", "time", "show"]


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


# --------------------------------------------------------------------------------------------
# Verbalizer, prompt, tokenization


def prompt_template(prompt: str | None) -> str:
    """Resolve a prompt name (`none`, `flan`) or a template containing `{text}` exactly once."""
    template = PROMPTS.get(prompt or "none", prompt)
    if template.count("{text}") != 1:
        raise DataError(f"prompt {prompt!r} must contain '{{text}}' exactly once (or be one of {', '.join(PROMPTS)})")
    try:
        template.format(text="")
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"prompt {prompt!r} has a placeholder other than {{text}} ({e}); double other braces") from e
    return template


def verbalize(verbalizer: str) -> tuple[str, str]:
    """Target texts of labels 0 and 1: a named verbalizer, or `NEGATIVE,POSITIVE` given as is."""
    if verbalizer in VERBALIZERS:
        return VERBALIZERS[verbalizer]
    parts = [p.strip() for p in verbalizer.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise DataError(f"verbalizer {verbalizer!r}: use {', '.join(VERBALIZERS)} or two different texts 'NEG,POS'")
    return parts[0], parts[1]


def target_ids(tokenizer, verbalizer: str) -> list[list[int]]:
    """Token ids (with EOS) of each label's target text, index = label."""
    ids = [tokenizer(t).input_ids for t in verbalize(verbalizer)]
    if ids[0] == ids[1]:
        raise DataError(f"the tokenizer maps both targets of verbalizer {verbalizer!r} to the same ids {ids[0]}")
    return ids


def tokenize(
    dsd: DatasetDict,
    tokenizer,
    *,
    verbalizer: str = "digits",
    prompt: str | None = None,
    max_source_length: int = 512,
) -> DatasetDict:
    """Tokenize every split with `datasets.map` (batched, cached where the source is on disk).

    Sources longer than `max_source_length` are truncated (EOS kept); the count is logged.
    """
    template = prompt_template(prompt)
    targets = target_ids(tokenizer, verbalizer)

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
            logger.info("%s: %d of %d sources truncated to %d tokens", split, n_trunc, len(ds), max_source_length)
    return out


def subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A random subset of `n` rows (IMDB files are sorted by label, so never take the first n)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


def texts_of(dsd: DatasetDict) -> Iterable[str]:
    for ds in dsd.values():
        yield from ds["text"]
