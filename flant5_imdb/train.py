"""The training loop: `run(cfg) -> summary`, as setup -> train -> finish.

`setup` checks everything that can be checked before a byte is written (options, data, model,
resume point), then claims the output folder and restores a checkpoint if asked. `train` is the
loop: read it top to bottom; one iteration is one optimizer step. `finish` evaluates, saves and
writes the summary. Side effects that only happen now and then (logging, evaluation,
checkpoints) live in small `maybe_*` helpers.

The loss is normalized by the number of target tokens in the whole effective batch (every
micro-batch of the accumulation window, on every process), so that 8 x 1, 4 x 2 and 2 processes x 4
give the same update. Two library behaviours are undone for that: `Accelerator.backward` divides
the loss by `gradient_accumulation_steps`, and DDP averages gradients over processes; the loss is
multiplied back by both before it is divided by the global token count.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel, gather_object, set_seed
from datasets import Dataset
from tqdm.auto import tqdm

from flant5_imdb import hub
from flant5_imdb.accel import make_accelerator
from flant5_imdb.card import publish
from flant5_imdb.checkpoint import (
    CheckpointError,
    TrainState,
    apply_hyperparameters,
    check_compatible,
    check_same_classes,
    latest_complete,
    load_checkpoint,
    read_checkpoint,
    resolve_resume,
    save_checkpoint,
    store_tied_once,
)
from flant5_imdb.config import NO_EVAL, ConfigError, TrainConfig
from flant5_imdb.data import (
    Collator,
    Columns,
    DataError,
    class_counts,
    hold_out,
    load_labelled,
    source_splits,
    subset,
    target_ids,
    tokenize,
)
from flant5_imdb.evaluate import evaluate, format_report, write_report
from flant5_imdb.guards import Preempted, StepCounters, StopSignal, oom_hint
from flant5_imdb.kernels.step import CompiledStep, apply_kernels, length_buckets
from flant5_imdb.labels import LabelSpace, parse_label_names, verbalize
from flant5_imdb.modeling import build_model, save_settings, source_mask
from flant5_imdb.optim import build_scheduler, optimizer_from
from flant5_imdb.plots import plot_run
from flant5_imdb.rundir import METRICS, RunLock, check_writable, claim, truncate_metrics
from flant5_imdb.sampler import Step, StepSampler
from flant5_imdb.tokenizer import TRAIN_HERE, load_tokenizer, train_word_tokenizer

logger = logging.getLogger(__name__)
SKIPPED = "skipped_rows.jsonl"


def run(cfg: TrainConfig, on_step: Callable[[TrainState, Step, torch.nn.Module], None] | None = None) -> dict:
    """Train, evaluate and save as `cfg` says; returns the summary also written to summary.json.

    `on_step(state, step, model)` is called after every optimizer step with the examples that
    step saw on this process (tests use it to trace the data order and the weights).

    Raises:
        ConfigError: an option that cannot work here (the output folder is in use, holds another run, ...).
        DataError: the data source is unusable (see `data.load_imdb`).
        ValueError: the model or tokenizer cannot be had.
        CheckpointError: `--resume` names an unusable checkpoint or one made by other math.
        Preempted: SIGTERM/SIGINT arrived, or the launcher died; the step was finished and a checkpoint
        written.
        NonFiniteError: `--max-bad-steps` updates in a row had a non-finite loss or gradient norm.
        OutOfMemory: a micro-batch did not fit on the GPU.
    """
    job = setup(cfg)
    try:
        train(job, on_step)
        return finish(job)
    finally:
        if job.lock is not None:
            job.lock.release()


@dataclass
class Job:
    """What a set-up run holds: everything `train` and `finish` work on."""

    cfg: TrainConfig
    accelerator: Accelerator
    out: Path
    lock: RunLock | None  # held by the main process
    tokenizer: object
    train_ds: Dataset
    eval_ds: Dataset | None
    eval_source: str | None  # the split evaluated on, or how it was held out of train
    labels: LabelSpace
    targets: list[list[int]]
    class_counts: list[int]  # training examples of each class
    skipped_rows: int
    model: torch.nn.Module  # as accelerate prepared it
    optimizer: torch.optim.Optimizer  # accelerate's wrapper
    raw_optimizer: torch.optim.Optimizer
    scheduler: object
    step: CompiledStep
    sampler: StepSampler
    collate: Collator
    state: TrainState
    resume_from: Path | None
    total_steps: int
    started: float  # host clock at setup
    samples_at_start: int = 0  # samples seen before this process started (a resumed run's)
    train_seconds: float = 0.0  # this process's time in the loop
    last_loss: float | None = None


# ---------------------------------------------------------------------------------------------------
# setup


def setup(cfg: TrainConfig) -> Job:
    """Everything before the first step. Nothing is written until options, data, model and the
    resume point have been checked: a start that fails leaves the output folder as it was."""
    started = time.perf_counter()
    accelerator = make_accelerator(
        cfg.precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
    )
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:  # stop now, not after loading the data
        check_writable(out)
        RunLock(out).check()  # another training there
    hub.preflight(
        hub.needs(
            model=None if cfg.model_config else cfg.model,
            tokenizer=cfg.tokenizer or cfg.model,
            data=cfg.data,
            model_instead="a local folder, or --model-config flan-t5-base for random init",
        )
    )
    # Read-only: the data may need the checkpoint's tokenizer, and a resume is checked before any write.
    resume_from = resolve_resume(cfg.resume, out)
    data = load_data(cfg, accelerator, resume_from)
    tokenizer, train_ds = data.tokenizer, data.train
    model, raw_optimizer, optimizer, step = build_trainable(cfg, accelerator, len(tokenizer))
    sampler = build_sampler(cfg, accelerator, train_ds)
    total_steps = cfg.max_steps or cfg.epochs * sampler.steps_per_epoch
    # Not prepared by accelerate (a prepared scheduler steps once per process per step), but
    # registered, so that save_state/load_state carry it.
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.warmup_steps, total_steps)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(store_tied_once)
    if resume_from is not None:
        saved = read_checkpoint(resume_from)
        check_compatible(saved, cfg.to_dict(), accelerator.num_processes, cfg.force_resume)
        if not cfg.force_resume:  # the data order: refused here, before a byte is written
            try:
                copy.deepcopy(sampler).load_state_dict(saved["state"]["sampler"])
            except ValueError as e:
                raise CheckpointError(f"cannot resume the data order: {e}") from e
    job = Job(
        cfg=cfg, accelerator=accelerator, out=out, lock=None, started=started,
        tokenizer=tokenizer, train_ds=train_ds, eval_ds=data.eval, eval_source=data.eval_source,
        labels=data.labels, targets=target_ids(tokenizer, cfg.verbalizer, data.labels),
        class_counts=data.class_counts,
        skipped_rows=len(data.skipped),
        model=model, optimizer=optimizer, raw_optimizer=raw_optimizer, scheduler=scheduler, step=step,
        sampler=sampler, collate=make_collator(cfg, tokenizer), total_steps=total_steps,
        state=TrainState(), resume_from=resume_from,
    )  # fmt: skip
    # Everything checked: from here on the run writes into its folder.
    job.lock = claim_output(job)
    write_run_files(job, data.skipped)
    restore(job)
    logger.info(
        "training %d steps (%d per epoch), effective batch %d, %d examples",
        total_steps,
        sampler.steps_per_epoch,
        sampler.global_batch,
        len(train_ds),
    )
    return job


def build_trainable(cfg: TrainConfig, accelerator: Accelerator, vocab_size: int):
    """(model as accelerate prepared it, the optimizer, accelerate's wrapper of it, the step to call)."""
    # Seeding right before init makes the weights independent of data loading.
    set_seed(cfg.seed)
    model = build_model(
        cfg.model,
        model_config=cfg.model_config,
        vocab_size=vocab_size,
        attn_implementation=cfg.attn_implementation,
        dropout=cfg.dropout,
        random_init_hint=True,
    )
    apply_kernels(model, cfg)
    raw_optimizer = optimizer_from(model.to(accelerator.device), cfg)
    model, optimizer = accelerator.prepare(model, raw_optimizer)
    # Compiled after prepare: accelerate keeps tracking (and checkpointing) the plain module, whose
    # parameters the compiled one shares, so state dicts carry no `_orig_mod.` prefix.
    return model, raw_optimizer, optimizer, CompiledStep(model, cfg)


def build_sampler(cfg: TrainConfig, accelerator: Accelerator, train_ds: Dataset) -> StepSampler:
    # The sampler shards the data itself (identical plan on every rank), so no dataloader is prepared.
    return StepSampler(
        train_ds["length"], batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=cfg.seed,
        num_replicas=accelerator.num_processes, rank=accelerator.process_index,
        group_by_length=cfg.group_by_length,
    )  # fmt: skip


def make_collator(cfg: TrainConfig, tokenizer) -> Collator:
    buckets = length_buckets(cfg.bucket_multiple, cfg.max_source_length) if cfg.bucket_multiple else None
    return Collator(
        pad_token_id=tokenizer.pad_token_id,
        pad_to_multiple_of=cfg.pad_to_multiple_of,
        buckets=buckets,
        max_length=cfg.max_source_length if cfg.pad_to_max_length else None,
    )


def write_run_files(job: Job, skipped: list) -> None:
    """config.json, the skipped rows and the trackers: the first writes into a claimed folder."""
    cfg, out = job.cfg, job.out
    if job.accelerator.is_main_process:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if skipped:
            with open(out / SKIPPED, "w") as f:
                f.writelines(json.dumps(r.to_dict()) + "\n" for r in skipped)
            logger.warning(
                "--skip-bad-rows: %d bad row(s) left out, each listed in %s", len(skipped), out / SKIPPED
            )
    if cfg.report_to != "none":  # trackers take flat scalars and strings
        flat = {k: "none" if v is None else v for k, v in cfg.to_dict().items()}
        job.accelerator.init_trackers("flant5_imdb", config=flat)


@dataclass
class Data:
    """The tokenized splits a run trains and evaluates on, and what came with them."""

    tokenizer: object
    train: Dataset
    eval: Dataset | None
    eval_source: str | None  # the split evaluated on, or how it was held out of train
    labels: LabelSpace
    skipped: list
    class_counts: list[int]  # training examples of each class, after any hold-out and subset


def load_data(cfg: TrainConfig, accelerator: Accelerator, resume_from: Path | None = None) -> Data:
    """The source read, validated and tokenized; every process builds the same.

    A resumed run with `--tokenizer word-level` takes the checkpoint's tokenizer: one built anew
    from the data would give the restored embeddings other words.
    """
    known = source_splits(cfg.data)  # before anything is read: a split that is not there fails now
    no_eval = cfg.eval_split == NO_EVAL
    for flag, split in (("--train-split", cfg.train_split), ("--eval-split", cfg.eval_split)):
        if split and not (flag == "--eval-split" and no_eval) and known is not None and split not in known:
            raise DataError(_no_such_split(cfg, flag, split, known))
    standard = cfg.train_split == "train" and cfg.eval_split in (None, "test", "validation")
    others = () if no_eval else (cfg.eval_split, "test", "validation")
    wanted = None if standard else {cfg.train_split, *(s for s in others if s)}
    columns = Columns(cfg.text_column, cfg.label_column, cfg.data_config)
    order = parse_label_names(cfg.labels) if cfg.labels else None
    with accelerator.main_process_first():  # the main process fills the datasets cache first
        loaded = load_labelled(cfg.data, skip_bad_rows=cfg.skip_bad_rows, splits=wanted, label_order=order,
                               columns=columns, train_split=cfg.train_split)  # fmt: skip
        if cfg.train_split not in loaded.splits:
            raise DataError(_no_such_split(cfg, "--train-split", cfg.train_split, list(loaded.splits)))
        targets = verbalize(cfg.verbalizer, loaded.labels)
        if resume_from is not None:  # first: --force-resume cannot help here
            check_same_classes(resume_from, loaded.labels, targets)
        if cfg.tokenizer == TRAIN_HERE and resume_from is not None:
            tokenizer = load_tokenizer(str(resume_from))
            logger.info("--tokenizer word-level: resuming with the tokenizer built for %s", resume_from)
        elif cfg.tokenizer == TRAIN_HERE:
            tokenizer = train_word_tokenizer(loaded.splits[cfg.train_split]["text"], targets=targets)
        else:
            hint = "; offline, pass --tokenizer with a local folder (or --tokenizer word-level)"
            tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, hint=hint)
        tokenized = tokenize(loaded.splits, tokenizer, verbalizer=cfg.verbalizer, prompt=cfg.prompt,
                             max_source_length=cfg.max_source_length, space=loaded.labels)  # fmt: skip
    train_ds, eval_ds, eval_source = choose_eval(cfg, tokenized)
    train_ds = subset(train_ds, cfg.max_train_samples, cfg.seed)
    counts = class_counts(train_ds["label"], len(loaded.labels))
    log_classes(loaded.labels, targets, counts)
    return Data(tokenizer, train_ds, eval_ds, eval_source, loaded.labels, loaded.skipped, counts)


def log_classes(space: LabelSpace, targets: list[str], counts: list[int]) -> None:
    """The classes with their training examples, in the log; a class left with none is warned about."""
    shown = [
        f"{n} ({c:,})" + (f" -> {t!r}" if t != n else "")
        for n, t, c in zip(space.names, targets, counts, strict=True)
    ]
    more = f", and {len(shown) - 50} more (summary.json lists every one)" if len(shown) > 50 else ""
    logger.info(
        "%d classes (training examples; -> the text the model writes, where not the name): %s%s",
        len(shown),
        ", ".join(shown[:50]),
        more,
    )
    empty = [n for n, c in zip(space.names, counts, strict=True) if not c]
    if empty and len(empty) < len(counts):
        logger.warning(
            "class(es) %s have no training example left: the model cannot learn them",
            ", ".join(map(repr, empty)),
        )


def choose_eval(cfg: TrainConfig, tokenized) -> tuple[Dataset, Dataset | None, str | None]:
    """(train, eval split or None, its description): --eval-split, else test, else validation, else a
    --validation-split of train held out (seeded, stratified by label)."""
    train_ds = tokenized[cfg.train_split]
    if not (cfg.final_eval or cfg.eval_every) or cfg.eval_split == NO_EVAL:
        return train_ds, None, None
    if cfg.eval_split and cfg.eval_split not in tokenized:
        raise DataError(_no_such_split(cfg, "--eval-split", cfg.eval_split, list(tokenized)))
    others = [s for s in ("test", "validation") if s in tokenized and s != cfg.train_split]
    split = cfg.eval_split or next(iter(others), None)
    if split:
        return train_ds, subset(tokenized[split], cfg.max_eval_samples, cfg.seed), split
    if not cfg.validation_split:
        logger.warning(
            "%s has no test or validation split and --validation-split is 0: no evaluation", cfg.data
        )
        return train_ds, None, None
    train_ds, held = hold_out(train_ds, cfg.validation_split, cfg.seed)
    source = (
        f"{len(held)} reviews held out of train (--validation-split {cfg.validation_split:g}, "
        f"seed {cfg.seed}, stratified by label)"
    )
    logger.info(
        "%s has no test or validation split: evaluating on %s; training on the other %d",
        cfg.data,
        source,
        len(train_ds),
    )
    return train_ds, subset(held, cfg.max_eval_samples, cfg.seed), source


def _no_such_split(cfg: TrainConfig, flag: str, split: str, found: list[str]) -> str:
    advice = "name one of these" + (
        ", add the split to --data (train=PATH,test=PATH), or leave --eval-split out to hold out "
        "--validation-split of train"
        if flag == "--eval-split"
        else ""
    )
    return f"{flag} {split!r}: {cfg.data} has only {', '.join(found)}; {advice}"


def claim_output(job: Job) -> RunLock | None:
    """The main process locks the output folder (see `rundir`); every process learns whether it could."""
    error, lock = None, None
    if job.accelerator.is_main_process:
        try:
            lock = claim(
                job.out,
                resuming=job.resume_from is not None,
                resume_asked=job.cfg.resume is not None,
                overwrite=job.cfg.overwrite_output_dir,
            )
        except ConfigError as e:
            error = str(e)
    if job.accelerator.num_processes > 1:
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise ConfigError(error)
    return lock


def restore(job: Job) -> None:
    """Weights, optimizer, scheduler, RNG states, sampler position, counters and the metrics window
    of the checkpoint to resume from (a fresh start: epoch 0). metrics.jsonl keeps the lines up to
    the resumed step: the steps after it are done again and logged again."""
    if job.resume_from is None:
        job.sampler.set_epoch(0)
    else:
        job.state = load_checkpoint(job.accelerator, job.resume_from)
        apply_hyperparameters(
            job.optimizer, job.scheduler, job.cfg
        )  # --force-resume's new values (or the same ones)
        try:
            job.sampler.restore(job.state.sampler, job.cfg.force_resume)
        except ValueError as e:
            raise CheckpointError(f"cannot resume the data order: {e}") from e
        logger.info("resumed from %s at step %d (epoch %d)", job.resume_from, job.state.step, job.state.epoch)
    job.samples_at_start = job.state.samples_seen
    if job.accelerator.is_main_process:
        dropped = truncate_metrics(job.out, job.state.step)
        if dropped:
            logger.info(
                "%s: dropped %d line(s) after step %d, which this run does again",
                METRICS,
                dropped,
                job.state.step,
            )


# ---------------------------------------------------------------------------------------------------
# train


def train(job: Job, on_step=None) -> None:
    """The loop. One iteration = one optimizer step = `grad_accum` micro-batches on each process."""
    cfg, state, sampler = job.cfg, job.state, job.sampler
    job.model.train()
    window = Window(job.accelerator, state)
    counters = StepCounters(job.accelerator.device, state, cfg.max_bad_steps)
    # The fused AdamW kernel can skip a non-finite update on the device; other optimizers need the host to
    # decide.
    skip_on_device = isinstance(job.raw_optimizer, torch.optim.AdamW) and bool(
        job.raw_optimizer.defaults.get("fused")
    )
    filler = job.train_ds[:1]  # the example behind an empty micro-batch slot (all labels masked)
    bar = tqdm(
        total=job.total_steps,
        initial=state.step,
        desc="train",
        disable=not job.accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    with StopSignal(job.accelerator) as stop, MetricsLog(job.out / METRICS, job.accelerator) as log, bar:
        while state.step < job.total_steps:
            for step in sampler:
                lr = job.scheduler.get_last_lr()[0]
                batches = [micro_batch(job.train_ds, idx, job.collate, filler) for idx in step.micro_batches]
                n_tokens, grad_norm = forward_backward(job, batches, window)
                bad = counters.update(n_tokens, grad_norm)
                if skip_on_device:
                    job.raw_optimizer.found_inf = (
                        bad  # read by the fused kernel: params and moments stay as they are
                    )
                    job.optimizer.step()
                elif not bad.item():  # the one host sync per step of the bitsandbytes optimizers
                    job.optimizer.step()
                job.scheduler.step()  # the schedule moves on over a skipped update, as with AMP's GradScaler
                job.step.zero_grad(job.optimizer)

                state.step += 1
                state.samples_seen += step.global_examples
                bar.update(1)
                maybe_log(cfg, state, window, counters, log, bar, lr=lr, grad_norm=grad_norm)
                maybe_evaluate(job, log)
                stopping = stop.requested()
                maybe_save(job, counters, window, force=stopping)
                if on_step is not None:
                    on_step(state, step, job.model)
                if stopping:
                    raise Preempted(
                        stop.signum,
                        state.step,
                        latest_complete(job.out) if cfg.keep_checkpoints else None,
                        reason=stop.reason,
                    )
                if state.step >= job.total_steps:
                    break
            else:  # the epoch is done
                state.epoch += 1
                sampler.set_epoch(state.epoch)
    counters.sync(state)
    job.train_seconds, job.last_loss = window.this_process_seconds(), window.last_loss


def forward_backward(job: Job, batches: list[dict], window: Window):
    """Forward and backward over the micro-batches of one step; returns (target tokens of the whole
    effective batch, gradient norm). Nothing here reads the device from the host."""
    acc = job.accelerator
    # Target tokens of the whole effective batch: counted on the host from the padded labels, and
    # with several processes summed on the device (a collective, not a host sync; the count enters
    # the device as a fill kernel's argument, not as a copy).
    counts = [target_tokens(b) for b in batches]
    n_tokens = sum(counts)
    if acc.num_processes > 1:
        n_tokens = acc.reduce(torch.full((), n_tokens, dtype=torch.long, device=acc.device), "sum")
    scale = acc.num_processes * job.cfg.grad_accum / n_tokens
    for batch, count in zip(batches, counts, strict=True):
        batch = to_device(batch, acc.device)
        # The mask in the 4D form, which transformers takes as it is (no host sync testing it for padding).
        batch["attention_mask"] = source_mask(job.model, batch["attention_mask"])
        job.step.prepare(batch)
        with (
            acc.accumulate(job.model),
            oom_hint(batch["input_ids"].shape, job.cfg.batch_size, job.cfg.grad_accum),
        ):
            loss_sum = token_loss_sum(job.step.model, batch)
            acc.backward(loss_sum * scale)
        window.add(loss_sum.detach(), count)
    # accumulate() has now synchronised the gradients (the last micro-batch of the window).
    # The norm is always computed: a NaN/inf loss shows up in it, on every rank alike.
    return n_tokens, acc.clip_grad_norm_(job.model.parameters(), job.cfg.max_grad_norm or math.inf)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a host batch to the device without making the host wait for the GPU.

    From pageable memory the driver stages the copy and may first wait for the stream's queued
    work: a host sync per micro-batch. From pinned memory (torch's caching host allocator, so
    pinning is cheap after the first steps) the copy is queued and the host moves on.
    """
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the non-padding target tokens, in fp32.

    `batch["attention_mask"]` is in the form `source_mask` gives it.

    The model's own loss is a mean over this micro-batch's tokens, which would weigh a token in a
    short-target micro-batch more than one in a long-target micro-batch of the same window.
    """
    # use_cache=False: training has no use for the decoder's key/value cache (nor for building one each step).
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=_decoder_inputs(model, batch["labels"]),
        use_cache=False,
    ).logits
    return F.cross_entropy(
        logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum"
    )


def _decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted right behind the start token, -100 replaced by padding (T5's own rule)."""
    # The model may be wrapped (DDP, torch.compile); the method lives on the T5 model itself.
    return extract_model_from_parallel(model, keep_torch_compile=False).prepare_decoder_input_ids_from_labels(
        labels
    )


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding target tokens of a host batch, counted in numpy (never a read from the device)."""
    return int(np.count_nonzero(batch["labels"].numpy() != -100))


def micro_batch(ds, indices: list[int], collate: Collator, filler) -> dict[str, torch.Tensor]:
    """Collate `indices`; an empty slot becomes one example with every label masked (zero loss, zero
    gradient).
    """
    if not indices:
        return collate(
            [{"input_ids": filler["input_ids"][0], "labels": filler["labels"][0]}], mask_labels=True
        )
    return collate.from_columns(ds[indices])


class Window:
    """What the next metrics line summarises: the loss and token totals since the last line (kept on
    the device until a log asks for them), the samples and the training clock at the last line.

    All of it is part of a checkpoint (`save_into`), per process, so that a resumed run logs the
    lines an uninterrupted one would, bit for bit. The clock counts time spent training, summed
    over the processes that did the run's steps: a resumed run's throughput leaves out the time
    between a kill and the restart.
    """

    def __init__(self, accelerator: Accelerator, state: TrainState):
        self.accelerator = accelerator
        loss, tokens = state.window[accelerator.process_index] if state.window else (0.0, 0)
        self.loss = torch.full((), loss, device=accelerator.device, dtype=torch.float32)
        self.tokens = tokens
        self.last_step, self.last_samples, self.last_seconds = (
            state.last_log_step,
            state.last_log_samples,
            state.last_log_seconds,
        )
        self.base_seconds = state.train_seconds
        self.started = time.perf_counter()
        self.last_loss: float | None = None

    def add(self, loss_sum: torch.Tensor, tokens: int) -> None:
        self.loss += loss_sum
        self.tokens += tokens

    def seconds(self) -> float:
        """Training time of the whole run so far (this process's plus what its checkpoint carried)."""
        return self.base_seconds + self.this_process_seconds()

    def this_process_seconds(self) -> float:
        return time.perf_counter() - self.started

    def drain(self, step: int, samples_seen: int) -> tuple[float, float]:
        """(mean token loss over the window on all processes, samples/s since the last line); a host sync."""
        totals = self.accelerator.reduce(
            torch.stack([self.loss, self.loss.new_tensor(float(self.tokens))]), "sum"
        )
        loss, tokens = totals.tolist()
        self.loss.zero_()
        self.tokens = 0
        if tokens:
            self.last_loss = loss / tokens
        now = self.seconds()
        rate = (samples_seen - self.last_samples) / max(now - self.last_seconds, 1e-9)
        self.last_step, self.last_samples, self.last_seconds = step, samples_seen, now
        return (loss / tokens if tokens else float("nan")), rate

    def save_into(self, state: TrainState) -> None:
        """Copy the window into `state` for a checkpoint: every process's loss and tokens (a host sync)."""
        state.window = gather_object([[self.loss.item(), self.tokens]])
        state.train_seconds = self.seconds()
        state.last_log_step, state.last_log_samples, state.last_log_seconds = (
            self.last_step,
            self.last_samples,
            self.last_seconds,
        )


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, main process only) and any --report-to tracker."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path, self.accelerator = path, accelerator
        self.f = None

    def __enter__(self):
        if self.accelerator.is_main_process:
            self.f = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()
            self.f = None
        return False

    def write(self, **row) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def maybe_log(
    cfg, state: TrainState, window: Window, counters: StepCounters, log: MetricsLog, bar, *, lr, grad_norm
) -> None:
    """Every `log_every` steps (and at step 1); the streak of non-finite updates is checked at least every
    `max_bad_steps`.
    """
    logging_now = state.step % cfg.log_every == 0 or state.step == 1
    if not logging_now and state.step % cfg.max_bad_steps:
        return
    skipped_before = state.skipped_steps
    counters.sync(state)  # raises NonFiniteError after max_bad_steps bad updates in a row
    if state.skipped_steps > skipped_before:
        logger.warning(
            "skipped %d update(s) with a non-finite loss or gradient norm by step %d (%d in all)",
            state.skipped_steps - skipped_before,
            state.step,
            state.skipped_steps,
        )
    if not logging_now:
        return
    loss, samples_per_s = window.drain(state.step, state.samples_seen)
    row = dict(
        step=state.step,
        epoch=state.epoch,
        loss=loss,
        lr=lr,
        grad_norm=float(grad_norm),
        skipped_steps=state.skipped_steps,
        samples_per_s=samples_per_s,
    )
    log.write(**row)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.1f}")


def maybe_save(job: Job, counters: StepCounters, window: Window, force: bool) -> None:
    """Checkpoint every `save_every` steps, at each epoch end, at the last step, and when asked to stop."""
    cfg, state = job.cfg, job.state
    if not cfg.keep_checkpoints:
        return
    epoch_end = len(job.sampler) == 0
    if not (
        force
        or epoch_end
        or state.step == job.total_steps
        or (cfg.save_every and state.step % cfg.save_every == 0)
    ):
        return
    counters.sync(state)
    window.save_into(state)
    state.sampler = job.sampler.state_dict()
    save_checkpoint(
        job.accelerator,
        cfg.output_dir,
        state,
        cfg.to_dict(),
        keep=cfg.keep_checkpoints,
        save_extra=functools.partial(export, job),
    )


def maybe_evaluate(job: Job, log: MetricsLog) -> None:
    if not job.cfg.eval_every or job.state.step % job.cfg.eval_every or job.eval_ds is None:
        return
    r = evaluate_now(job)
    log.write(
        step=job.state.step,
        eval_accuracy=r["accuracy"],
        eval_macro_f1=r["macro_f1"],
        eval_loss=r["eval_loss"],
    )


def evaluate_now(job: Job) -> dict:
    return evaluate(
        job.model,
        job.eval_ds,
        targets=job.targets,
        accelerator=job.accelerator,
        mode=job.cfg.eval_mode,
        batch_size=job.cfg.eval_batch_size,
        tokenizer=job.tokenizer,
        collator=Collator(job.tokenizer.pad_token_id),
        names=job.labels.names,
    )


def export(job: Job, path: Path) -> None:
    """What makes a folder (final/ or a checkpoint) loadable by from_pretrained, evaluate and predict."""
    job.accelerator.unwrap_model(job.model).config.save_pretrained(path)
    job.tokenizer.save_pretrained(path)
    save_settings(
        path,
        verbalizer=job.cfg.verbalizer,
        prompt=job.cfg.prompt,
        max_source_length=job.cfg.max_source_length,
        labels=job.labels,
    )


# ---------------------------------------------------------------------------------------------------
# finish


def finish(job: Job) -> dict:
    """Final evaluation, model, summary, plots and card."""
    cfg, acc, state, out = job.cfg, job.accelerator, job.state, job.out
    acc.wait_for_everyone()
    checksums = rank_param_checksums(acc, job.model)
    graphs, graph_skips = job.step.graphs()  # while the compiled model is alive: the graph tree goes with it
    result = evaluate_now(job) if cfg.final_eval and job.eval_ds is not None else None
    if cfg.save_model:
        save_final(acc, job.model, out / "final", functools.partial(export, job))
    summary = dict(
        model=f"{cfg.model_config} architecture, random init" if cfg.model_config else cfg.model,
        labels=list(job.labels.names),
        targets=verbalize(cfg.verbalizer, job.labels),
        classes=[
            dict(name=n, label=v, target=t, train_examples=c)
            for n, v, t, c in zip(
                job.labels.names,
                job.labels.values,
                verbalize(cfg.verbalizer, job.labels),
                job.class_counts,
                strict=True,
            )
        ],  # fmt: skip
        steps=state.step,
        samples_seen=state.samples_seen,
        epochs=state.samples_seen / len(job.train_ds),
        target_tokens_seen=state.target_tokens_seen,
        skipped_steps=state.skipped_steps,
        resumed_from=str(job.resume_from) if job.resume_from else None,
        train_seconds=job.train_seconds,
        wall_seconds=time.perf_counter() - job.started,
        samples_per_s=(state.samples_seen - job.samples_at_start) / max(job.train_seconds, 1e-9),
        processes=acc.num_processes,
        effective_batch=job.sampler.global_batch,
        distributed_type=str(acc.distributed_type),
        device=str(acc.device),
        precision=cfg.precision,
        compiled=job.step.compiled,
        cuda_graphs=None if graphs is None else graphs > 0,
        cuda_graphs_recorded=graphs,
        cuda_graph_skips=graph_skips,
        peak_gpu_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        skipped_rows=job.skipped_rows,
        last_logged_loss=job.last_loss,
        rank_param_checksums=checksums,
        eval_source=job.eval_source,
        eval={k: v for k, v in result.items() if k != "predictions"} if result else None,
        config=cfg.to_dict(),
    )
    if acc.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if result:
            write_report(result, out)
            logger.info("evaluation:\n%s", format_report(result))
        plot_run(out)
        if cfg.save_model:
            publish(out / "final", summary, cfg.push_to_hub, upload=not cfg.model_card_only)
    acc.end_training()
    return summary


def rank_param_checksums(accelerator: Accelerator, model) -> list[float]:
    """The float64 sum of every parameter, one per process: equal on all ranks unless DDP went wrong."""
    params = accelerator.unwrap_model(model).parameters()
    # FSDP shards are DTensors: sum the full tensor, which every rank then holds alike.
    local = sum(
        float((p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().sum()) for p in params
    )
    sums = gather_object([local])
    if len(set(sums)) > 1:
        logger.warning("parameters differ across processes after training: checksums %s", sums)
    return sums


def save_final(accelerator: Accelerator, model, path: Path, export_to: Callable[[Path], None]) -> None:
    """save_pretrained of the unwrapped model (no DDP `module.` or compile `_orig_mod.` prefixes), tokenizer,
    settings.
    """
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(
        model
    )  # gathered from the shards under FSDP; a plain state dict otherwise
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    unwrapped.save_pretrained(
        path,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    if accelerator.is_main_process:
        export_to(path)
