"""Texts and classes to model inputs: the prompt, each class's target ids, tokenization and the `Collator`.

`tokenize(...)` gives every split `input_ids`, `labels` (the class's target ids), `length` (source
tokens, for the length-grouped sampler), `id` (the row in its split) and `label` (the class index).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from flant5_imdb.config import count_or_auto
from flant5_imdb.data.labels import LabelSpace, verbalize
from flant5_imdb.data.reader import DataError

# datasets and pyarrow are imported by the functions that tokenize: prediction needs neither.
if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

# Named prompt templates; anything else containing `{text}` is used as given.
PROMPTS = {
    "none": "{text}",
    "flan": "{text}\n\nIs the sentiment of this text negative or positive?",
}
# What a name meant before its wording changed: a model saved with the name alone (and no template beside
# it) was trained on these inputs, and is read with them.
FORMER_PROMPTS = {"flan": "{text}\n\nIs the sentiment of this movie review negative or positive?"}


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


def trained_prompt(saved: dict) -> str | None:
    """The prompt a saved model was trained with (`saved`: its settings): the name it was saved with,
    where the name still means the template it saw; else that template."""
    name = saved.get("prompt")
    template = saved.get("prompt_template") or FORMER_PROMPTS.get(name)
    return name if template is None or template == PROMPTS.get(name or "none", name) else template


def target_ids(tokenizer, verbalizer: str, space: LabelSpace) -> list[list[int]]:
    """Token ids (with EOS) of each class's target text, index = class.

    Raises:
        DataError: two classes' targets tokenize alike (the tokenizer cannot tell them apart).
    """
    texts = verbalize(verbalizer, space)
    ids = [tokenizer(t).input_ids for t in texts]
    seen: dict[tuple, str] = {}
    for text, i in zip(texts, ids, strict=True):
        if tuple(i) in seen:
            unknown = getattr(tokenizer, "unk_token_id", None) in i
            raise DataError(
                f"the tokenizer maps the targets {seen[tuple(i)]!r} and {text!r} to the same ids {i}"
                + (" (its unknown token: it does not know these words)" if unknown else "")
            )
        seen[tuple(i)] = text
    return ids


def tokenize(
    dsd: DatasetDict,
    tokenizer,
    targets: list[list[int]],
    *,
    prompt: str | None = None,
    max_source_length: int = 512,
    folder: Path | None = None,
    workers: int = 1,
) -> DatasetDict:
    """Tokenize every split with `datasets.map` (batched; in `workers` processes, each a share of the rows),
    into `folder/SPLIT*.arrow` where a folder is given (memory-mapped: memory does not grow with the
    rows), else in memory.

    `labels` are the target ids of each row's class (`targets[class]`, from `target_ids`). Sources
    longer than `max_source_length` are truncated (EOS kept); the count is logged.
    """
    template = prompt_template(prompt)

    def encode(batch: dict, idx: list[int]) -> dict:
        texts = batch["text"] if template == "{text}" else [template.format(text=t) for t in batch["text"]]
        enc = tokenizer(texts, truncation=True, max_length=max_source_length)
        return {
            "input_ids": enc["input_ids"],
            "labels": [targets[y] for y in batch["label"]],
            "length": [len(x) for x in enc["input_ids"]],
            "id": idx,
        }

    files = {split: str(folder / f"{split}.arrow") for split in dsd} if folder is not None else None
    out = dsd.map(encode, batched=True, with_indices=True, remove_columns=["text"], desc="tokenizing",
                  cache_file_names=files, num_proc=workers if workers > 1 else None)  # fmt: skip
    import pyarrow.compute as pc

    for split, ds in out.items():  # counted by Arrow on the column, not in a list of every row's length
        cut = pc.sum(pc.greater_equal(ds.data.column("length"), max_source_length)).as_py() or 0
        most = cut > len(ds) / 2  # worth a warning: the model then learns from their beginnings only
        note = " (most of them: the model sees only their beginning; see --max-source-length)" if most else ""
        if cut:
            logger.log(logging.WARNING if most else logging.INFO, "%s: %d of %d sources truncated to %d "
                       "tokens%s", split, cut, len(ds), max_source_length, note)  # fmt: skip
    return out


WORKER_ROWS = 10_000  # rows worth a process of their own (one takes about a second to start)


def preprocess_workers(setting: str | int, rows: int) -> int:
    """The processes that tokenize `rows` rows: `setting` as a number, or `auto`: the CPU cores this process
    may use (its affinity), one per `WORKER_ROWS` rows at most.

    Raises:
        ValueError: a setting that is neither `auto` nor a whole number of at least 1.
    """
    n = count_or_auto("--preprocess-workers", setting)
    if n is not None:
        return n
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, rows // WORKER_ROWS))


def column(ds: Dataset, name: str) -> np.ndarray:
    """One numeric column as an array, read by Arrow (in a dataset's own row order): a plain list of a
    million rows costs seconds of Python objects."""
    return ds.with_format("numpy", columns=[name])[:][name]


def subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """A random subset of `n` rows (IMDB files are sorted by label, so never take the first n)."""
    if n is None or n >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(n))


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
