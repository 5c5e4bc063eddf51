"""`prepare(spec, ...)`: from `--data` to what a run needs, in one call (training, evaluation, the bench).

The splits named are checked before anything is read; the source is read and validated, the
tokenizer made (it may depend on the classes and the training texts), every split tokenized, and
the evaluation split chosen: `--eval-split`, else test, else validation, else a seeded,
label-stratified `--validation-split` of train held out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from datasets import Dataset

from flant5_imdb.config import NO_EVAL
from flant5_imdb.data.cache import cache_root, cached, digest, tokenizer_digest
from flant5_imdb.data.encode import (
    column,
    preprocess_workers,
    prompt_template,
    subset,
    target_ids,
    tokenize,
)
from flant5_imdb.data.labelled import Labelled, class_counts, load_labelled, own_labels
from flant5_imdb.data.labels import LabelSpace, parse_label_names, verbalize
from flant5_imdb.data.reader import BadRow, DataError
from flant5_imdb.data.source import Columns, Source, content_key, parse_source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """What a run asks of its data (the data options of `TrainConfig`, or an evaluation's)."""

    data: str
    columns: Columns = Columns()
    train_split: str | None = "train"  # None: evaluation only, in a saved model's label space
    eval_split: str | None = None  # None: test, else validation, else held out; "none": no evaluation
    eval_flag: str = "--eval-split"  # the option that named it, for messages
    validation_split: float = 0.0
    label_order: tuple[str, ...] | None = None
    skip_bad_rows: bool = False
    verbalizer: str = "auto"
    prompt: str | None = None
    max_source_length: int = 512
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    seed: int = 42
    evaluate: bool = True
    data_cache: str | None = None  # a folder; None: the user's cache folder; "none": keep nothing
    preprocess_workers: str = "auto"  # processes that tokenize: a number, or auto

    @classmethod
    def from_config(cls, cfg) -> DataSpec:
        """A run's data options: each field named as an option takes it; the others are made from options."""
        same = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(
            **same,
            columns=Columns(cfg.text_column, cfg.label_column, cfg.data_config),
            label_order=tuple(parse_label_names(cfg.labels)) if cfg.labels else None,
            evaluate=bool(cfg.final_eval or cfg.eval_every) and cfg.eval_split != NO_EVAL,
        )


@dataclass
class Prepared:
    """The tokenized splits a run trains and evaluates on, and what came with them."""

    source: Source
    tokenizer: object
    train: Dataset | None
    eval: Dataset | None
    eval_source: str | None  # the split evaluated on, or how it was held out of train
    classes: LabelSpace
    target_texts: list[str]  # each class's target text, index = class
    target_ids: list[list[int]]  # each class's target token ids (with EOS)
    skipped: list[BadRow]
    class_counts: list[int]  # training examples of each class, after any hold-out and subset
    example_text: str | None  # the first evaluation text (else training text): the model card's example
    content: str | None = None  # what was read, as a digest (`content_key`); None for generated data


def prepare(
    spec: DataSpec,
    make_tokenizer: Callable[[Labelled, list[str]], object],
    *,
    classes: LabelSpace | None = None,
    main_process_first: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Prepared:
    """Read, validate and tokenize `spec.data`; every process builds the same.

    `make_tokenizer(labelled, target_texts)` gives the tokenizer once the classes and their target texts
    are known; `classes` is a saved model's label space (else it is taken from the training split).

    Raises:
        DataError: a split named is not in the data, or the data is unusable (see `load_labelled`).
    """
    source = check_splits(spec)
    wanted = None  # the usual splits: every split read (and cached) as a whole
    if spec.train_split is None:
        wanted = {spec.eval_split}
    elif spec.train_split != "train" or spec.eval_split not in (None, "test", "validation"):
        others = (spec.eval_split, "test", "validation") if spec.evaluate else ()
        wanted = {spec.train_split, *(s for s in others if s)}
    root = cache_root(spec.data_cache)
    # What the files hold, hashed once: the cache's key, and what a checkpoint says it was trained on.
    needed = root is not None or spec.train_split is not None
    content = content_key(source, wanted, spec.columns) if needed else None
    # The main process prepares (and keeps in the cache) first; the others then read what it kept.
    with main_process_first():
        loaded, checked = _checked(spec, source, wanted, classes, None if root is None else content, root)
        _check_asked(spec, list(loaded.splits))
        target_texts = verbalize(spec.verbalizer, loaded.classes)
        tokenizer = make_tokenizer(loaded, target_texts)
        ids = target_ids(tokenizer, spec.verbalizer, loaded.classes)
        tokenized = _tokenized(spec, loaded.splits, tokenizer, ids, checked, root)
    train, evaluated, eval_source, raw_split = _choose_eval(spec, tokenized)
    n = len(loaded.classes)
    counts = class_counts(column(train, "label") if train is not None else [], n)
    if train is not None and spec.max_train_samples is not None:
        whole, train = counts, subset(train, spec.max_train_samples, spec.seed)
        counts = class_counts(column(train, "label"), n)
        # Classes the data has but the subset lost (a class the data never has is warned about on reading).
        lost = [name for name, a, b in zip(loaded.classes.names, whole, counts, strict=True) if a and not b]
        if lost:
            logger.warning("class(es) %s have no example among the --max-train-samples %d: the model cannot "
                           "learn them", ", ".join(map(repr, lost)), spec.max_train_samples)  # fmt: skip
    if train is not None:
        _log_classes(loaded.classes, target_texts, counts)
    first = evaluated if evaluated is not None else train
    example = loaded.splits[raw_split][int(first[0]["id"])]["text"] if first is not None else None
    trained_on = None if content is None else digest(content)  # what a checkpoint compares on resume
    return Prepared(source, tokenizer, train, evaluated, eval_source, loaded.classes, target_texts, ids,
                    loaded.skipped, counts, example, trained_on)  # fmt: skip


def _checked(
    spec: DataSpec, source: Source, wanted: set[str] | None, classes: LabelSpace | None, content, root
) -> tuple[Labelled, str | None]:
    """The splits read and validated (`load_labelled`), from the cache where an earlier run kept them
    (`content`: the source's `content_key`, None to keep nothing); and the cache entry's name (None where
    nothing is kept)."""

    def build(folder) -> tuple:
        loaded = load_labelled(source, skip_bad_rows=spec.skip_bad_rows, splits=wanted, classes=classes,
                               label_order=spec.label_order, columns=spec.columns,
                               train_split=spec.train_split or "train", eval_flag=spec.eval_flag,
                               folder=folder)  # fmt: skip
        return loaded.splits, {"labels": loaded.classes.to_dict(),
                               "skipped": [dataclasses.asdict(r) for r in loaded.skipped]}  # fmt: skip

    key = None if content is None else dict(
        content=content, columns=dataclasses.asdict(spec.columns), splits=sorted(wanted) if wanted else None,
        labels=classes.to_dict() if classes else None, label_order=spec.label_order,
        skip_bad_rows=spec.skip_bad_rows, train_split=spec.train_split or "train")  # fmt: skip
    splits, meta, entry = cached(root, "checked", key, build)
    skipped = [BadRow(**r) for r in meta["skipped"]]
    return Labelled(splits, LabelSpace.from_dict(meta["labels"]), skipped), entry


def _tokenized(spec: DataSpec, splits, tokenizer, ids: list[list[int]], checked: str | None, root):
    """`tokenize(...)` of the checked splits, from the cache where an earlier run tokenized them alike."""
    tok = tokenizer_digest(tokenizer)
    key = None
    if checked is not None and tok is not None:
        key = {"checked": checked, "tokenizer": tok, "prompt": prompt_template(spec.prompt), "targets": ids,
               "max_source_length": spec.max_source_length}  # fmt: skip

    def build(folder) -> tuple:
        workers = preprocess_workers(spec.preprocess_workers, max(map(len, splits.values()), default=0))
        out = tokenize(splits, tokenizer, ids, prompt=spec.prompt, max_source_length=spec.max_source_length,
                       folder=folder, workers=workers)  # fmt: skip
        return out, {}

    return cached(root, "tokenized", key, build)[0]


def check_splits(spec: DataSpec) -> Source:
    """The source, once the splits `spec` names are known to be in it (a Hub dataset's: once read).

    Raises:
        DataError: malformed `--data`, a path that does not exist, or a split named that is not there.
    """
    source = parse_source(spec.data)
    if source.splits is not None:
        _check_asked(spec, source.splits)
    return source


def _check_asked(spec: DataSpec, found: list[str]) -> None:
    """Raises DataError where a split `spec` names (to train on, to evaluate on) is not among `found`."""
    eval_split = None if spec.eval_split == NO_EVAL else spec.eval_split
    for flag, split in (("--train-split", spec.train_split), (spec.eval_flag, eval_split)):
        if split and split not in found:
            advice = "name one of these"
            if flag == "--eval-split":
                advice += (", add the split to --data (train=PATH,test=PATH), or leave --eval-split out to "
                           "hold out --validation-split of train")  # fmt: skip
            raise DataError(f"{flag} {split!r}: {spec.data} has only {', '.join(found)}; {advice}")


def _choose_eval(spec: DataSpec, tokenized) -> tuple[Dataset | None, Dataset | None, str | None, str]:
    """(train, eval split or None, its description, the split the evaluation rows come from)."""
    train = tokenized[spec.train_split] if spec.train_split else None
    if not spec.evaluate:
        return train, None, None, spec.train_split
    others = [s for s in ("test", "validation") if s in tokenized and s != spec.train_split]
    split = spec.eval_split or next(iter(others), None)
    if split:
        return train, subset(tokenized[split], spec.max_eval_samples, spec.seed), split, split
    if not spec.validation_split:
        logger.warning(
            "%s has no test or validation split and --validation-split is 0: no evaluation", spec.data
        )
        return train, None, None, spec.train_split
    train, held = hold_out(train, spec.validation_split, spec.seed)
    how = (f"{len(held)} examples held out of train (--validation-split {spec.validation_split:g}, "
           f"seed {spec.seed}, stratified by label)")  # fmt: skip
    logger.info("%s has no test or validation split: evaluating on %s; training on the other %d",
                spec.data, how, len(train))  # fmt: skip
    return train, subset(held, spec.max_eval_samples, spec.seed), how, spec.train_split


def _log_classes(space: LabelSpace, targets: list[str], counts: list[int]) -> None:
    """The classes with their training examples, in the log."""
    shown = [f"{n} ({c:,})" + (f" -> {t!r}" if t != n else "")
             for n, t, c in zip(space.names, targets, counts, strict=True)]  # fmt: skip
    more = f", and {len(shown) - 50} more (summary.json lists every one)" if len(shown) > 50 else ""
    logger.info("%d classes (training examples; -> the text the model writes, where not the name): %s%s",
                len(shown), ", ".join(shown[:50]), more)  # fmt: skip


def hold_out(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): a seeded, label-stratified `fraction` of `ds` held out for evaluation."""
    rng = random.Random(seed)
    labels = column(ds, "label")
    # Each class's rows in ascending order, classes in ascending order: one sort, not a scan per class.
    order = np.argsort(labels, kind="stable")
    starts = np.unique(labels[order], return_index=True)[1]
    held = []
    for rows in (group.tolist() for group in np.split(order, starts[1:])):
        rng.shuffle(rows)
        # At least one of each class held out, and at least one left to train on: a class moved wholly
        # into the validation set would be a class the model never sees.
        held += rows[: min(len(rows) - 1, max(1, round(fraction * len(rows))))]
    if not held or len(held) == len(ds):
        hint = (f"; every one of its {len(ds)} labels is a class of its own: are --text-column and "
                "--label-column swapped?") if own_labels(len(ds), len(starts)) else ""  # fmt: skip
        raise DataError(
            f"--validation-split {fraction}: {len(ds)} training rows are too few to hold out a validation "
            f"set{hint}"
        )
    if len(held) > 2 * fraction * len(ds) + 1:
        logger.warning(
            "--validation-split %g held out %d of %d training rows (%.0f%%): every class gives at least one "
            "and keeps one; with classes this small, name an evaluation split (--eval-split) or pass "
            "--validation-split 0", fraction, len(held), len(ds), 100 * len(held) / len(ds),
        )  # fmt: skip
    if len(ds) - len(held) < len(held):
        logger.warning(
            "--validation-split %g leaves %d of %d training rows to train on and holds out %d: the model "
            "learns from fewer rows than it is evaluated on; a split of 0.1 to 0.2 is usual",
            fraction, len(ds) - len(held), len(ds), len(held),
        )  # fmt: skip
    kept = np.ones(len(ds), dtype=bool)
    kept[held] = False
    return ds.select(np.flatnonzero(kept)), ds.select(sorted(held))
