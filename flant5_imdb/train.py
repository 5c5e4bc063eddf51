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
from accelerate.utils import extract_model_from_parallel, set_seed
from datasets import Dataset
from tqdm.auto import tqdm

from flant5_imdb import hub
from flant5_imdb.accel import main_first, make_accelerator, run_on, training_threads
from flant5_imdb.card import publish, run_summary
from flant5_imdb.checkpoint import (
    ResumePoint,
    TrainState,
    apply_hyperparameters,
    continue_order,
    latest_complete,
    load_checkpoint,
    resume_point,
    save_checkpoint,
    save_final,
    store_tied_once,
)
from flant5_imdb.config import ConfigError, TrainConfig
from flant5_imdb.data import Collator, DataSpec, Prepared, column, prepare, vocabulary_targets, write_skipped
from flant5_imdb.evaluate import evaluate, write_report
from flant5_imdb.guards import (
    PREPARING,
    Interrupted,
    Preempted,
    StepCounters,
    StopSignal,
    interruptible,
    oom_hint,
    rank_param_checksums,
)  # fmt: skip
from flant5_imdb.kernels.step import StepModel, apply_kernels, length_buckets
from flant5_imdb.modeling import build_model, save_settings, source_mask
from flant5_imdb.optim import UpdateInBackward, build_scheduler, on_device_skip, optimizer_from
from flant5_imdb.plots import plot_run
from flant5_imdb.progress import MetricsLog, Window, maybe_check_updates, maybe_log
from flant5_imdb.rundir import METRICS, RunLock, claim_on_main, preflight, truncate_metrics
from flant5_imdb.sampler import StepPlan, StepSampler
from flant5_imdb.tokenizer import TRAIN_HERE, load_tokenizer, train_word_tokenizer

logger = logging.getLogger(__name__)


def run(
    cfg: TrainConfig, on_step: Callable[[TrainState, StepPlan, torch.nn.Module], None] | None = None
) -> dict:
    """Train, evaluate and save as `cfg` says; returns the summary also written to summary.json.

    `on_step(state, plan, model)` is called after every optimizer step with the examples that
    step saw on this process (tests use it to trace the data order and the weights).

    Raises:
        ConfigError: an option that cannot work here (the output folder is in use, holds another run, ...).
        DataError: the data source is unusable (see `data.prepare`).
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
    lock: RunLock | None  # held by the main process
    data: Prepared  # tokenizer, train and evaluation splits, classes
    model: torch.nn.Module  # as accelerate prepared it
    optimizer: torch.optim.Optimizer  # accelerate's wrapper (the optimizer itself: `.optimizer`)
    scheduler: object
    step_model: StepModel  # the model the step calls (compiled where asked)
    sampler: StepSampler
    collate: Collator
    state: TrainState
    resume: ResumePoint | None  # the checkpoint the run continues from (None: a fresh start)
    total_steps: int
    started: float  # host clock at setup
    samples_at_start: int = 0  # samples seen before this process started (a resumed run's)
    train_seconds: float = 0.0  # this process's time in the loop
    last_loss: float | None = None
    update_in_backward: UpdateInBackward | None = None  # --optimizer-in-backward: the update's hooks

    @property
    def out(self) -> Path:
        return Path(self.cfg.output_dir)


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
    refuse_in_backward_across_processes(cfg, accelerator.num_processes)
    with main_first(accelerator):  # stop now, not after loading the data (the script checked it too)
        if accelerator.is_main_process:
            preflight(cfg)
    hub.preflight(
        hub.needs(
            model=None if cfg.model_config else cfg.model,
            tokenizer=cfg.tokenizer or cfg.model,
            data=cfg.data,
            model_instead="a local folder, or --model-config flan-t5-base for random init",
        )
    )
    # What the run resumes from (read-only): its classes are checked as soon as the data's are known,
    # and a word-level tokenizer is the checkpoint's.
    resume = resume_point(cfg.resume, out)
    with interruptible(PREPARING):  # unwound, so that the tokenizing processes are ended too
        data = prepare(DataSpec.from_config(cfg), functools.partial(make_tokenizer, cfg, resume),
                       main_process_first=functools.partial(main_first, accelerator))  # fmt: skip
    tokenizer, train_ds = data.tokenizer, data.train
    model, raw_optimizer, optimizer, step_model = build_trainable(cfg, accelerator, len(tokenizer))
    threads = training_threads(cfg.threads, sum(p.numel() for p in model.parameters()), accelerator.device)
    logger.info(
        "running on %s", run_on(accelerator.device, threads, cfg.precision, accelerator.num_processes)
    )
    sampler = build_sampler(cfg, accelerator, train_ds)
    total_steps = cfg.max_steps or cfg.epochs * sampler.steps_per_epoch
    # Not prepared by accelerate (a prepared scheduler steps once per process per step), but
    # registered, so that save_state/load_state carry it.
    scheduler = build_scheduler(optimizer, cfg.schedule, cfg.warmup_steps, total_steps)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(store_tied_once)
    if resume is not None:
        resume.check_continues(cfg, accelerator.num_processes, sampler, data.content)
    job = Job(
        cfg=cfg, accelerator=accelerator, lock=None, started=started, data=data,
        model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
        step_model=step_model, collate=make_collator(cfg, tokenizer), total_steps=total_steps,
        state=TrainState(), resume=resume,
        update_in_backward=UpdateInBackward(raw_optimizer) if cfg.optimizer_in_backward else None,
    )  # fmt: skip
    # Everything checked: from here on the run writes into its folder.
    resuming = dict(resuming=resume is not None, resume_asked=cfg.resume is not None)
    job.lock = claim_on_main(accelerator, out, overwrite=cfg.overwrite_output_dir, **resuming)
    write_run_files(job, data.skipped)
    restore(job)
    logger.info("training %d steps (%d per epoch), effective batch %d, %d examples",
                total_steps, sampler.steps_per_epoch, sampler.global_batch, len(train_ds))  # fmt: skip
    return job


def refuse_in_backward_across_processes(cfg: TrainConfig, processes: int) -> None:
    """--optimizer-in-backward on one process only (the options alone cannot say how many there are)."""
    if cfg.optimizer_in_backward and processes > 1:
        raise ConfigError(
            f"--optimizer-in-backward runs on one process, not {processes}: each parameter would be "
            "updated before its gradient is averaged across processes"
        )


def build_trainable(cfg: TrainConfig, accelerator: Accelerator, vocab_size: int):
    """(model as accelerate prepared it, the optimizer, accelerate's wrapper of it, the step's model)."""
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
    return model, raw_optimizer, optimizer, StepModel(model, cfg)


def build_sampler(cfg: TrainConfig, accelerator: Accelerator, train_ds: Dataset) -> StepSampler:
    # The sampler shards the data itself (identical plan on every rank), so no dataloader is prepared.
    return StepSampler(
        column(train_ds, "length"), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, seed=cfg.seed,
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
        write_skipped(skipped, out)
    if cfg.report_to != "none":  # trackers take flat scalars and strings
        flat = {k: "none" if v is None else v for k, v in cfg.to_dict().items()}
        job.accelerator.init_trackers("flant5_imdb", config=flat)


def make_tokenizer(cfg: TrainConfig, resume: ResumePoint | None, labelled, target_texts: list[str]):
    """The run's tokenizer, once the classes are known. A resumed run is first checked to have the
    checkpoint's classes; with `--tokenizer word-level` it takes the checkpoint's tokenizer: one built anew
    from the data would give the restored embeddings other words."""
    if resume is not None:
        resume.check_classes(labelled.classes, target_texts)
    if cfg.tokenizer == TRAIN_HERE and resume is not None:
        logger.info("--tokenizer word-level: resuming with the tokenizer built for %s", resume.path)
        return load_tokenizer(str(resume.path))
    if cfg.tokenizer == TRAIN_HERE:
        words = vocabulary_targets(target_texts, labelled.classes)
        return train_word_tokenizer(labelled.splits[cfg.train_split]["text"], targets=words)
    hint = "; offline, pass --tokenizer with a local folder (or --tokenizer word-level)"
    return load_tokenizer(cfg.tokenizer or cfg.model, hint=hint)


def restore(job: Job) -> None:
    """Weights, optimizer, scheduler, RNG states, sampler position, counters and the metrics window
    of the checkpoint to resume from (a fresh start: epoch 0). metrics.jsonl keeps the lines up to
    the resumed step: the steps after it are done again and logged again."""
    if job.resume is None:
        job.sampler.set_epoch(0)
    else:
        job.state = load_checkpoint(job.accelerator, job.resume.path)
        # --force-resume's new values (or the same ones)
        apply_hyperparameters(job.optimizer, job.scheduler, job.cfg)
        continue_order(job.sampler, job.state.sampler, job.cfg.force_resume)
        logger.info("resumed from %s at step %d (epoch %d)", job.resume.path, job.state.step, job.state.epoch)
    job.samples_at_start = job.state.samples_seen
    if job.accelerator.is_main_process:
        dropped = truncate_metrics(job.out, job.state.step)
        if dropped:
            logger.info("%s: dropped %d line(s) after step %d, which this run does again",
                        METRICS, dropped, job.state.step)  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# train


def train(job: Job, on_step=None) -> None:
    """The loop. One iteration = one optimizer step = `grad_accum` micro-batches on each process."""
    cfg, state, sampler = job.cfg, job.state, job.sampler
    job.model.train()
    window = Window(job.accelerator, state)
    counters = StepCounters(job.accelerator.device, state, cfg.max_bad_steps)
    filler = job.data.train[:1]  # the example behind an empty micro-batch slot (all labels masked)
    bar = tqdm(total=job.total_steps, initial=state.step, desc="train", dynamic_ncols=True,
               disable=not job.accelerator.is_local_main_process)  # fmt: skip
    lr = grad_norm = None  # of the last step this process ran
    with StopSignal(job.accelerator) as stop, MetricsLog(job.out / METRICS, job.accelerator) as log, bar:
        while state.step < job.total_steps:
            for plan in sampler:  # this process's examples of one optimizer step
                lr = job.scheduler.get_last_lr()[0]
                batches = [micro_batch(job.data.train, i, job.collate, filler) for i in plan.micro_batches]
                n_tokens, grad_norm = forward_backward(job, batches, window)
                bad = counters.update(n_tokens, grad_norm)
                if job.update_in_backward is None:
                    optimizer_step(job, bad)
                else:  # each gradient was applied and freed in the backward: this step finds none and
                    job.optimizer.step()  # changes nothing, but the schedule sees the step it expects
                job.scheduler.step()  # the schedule moves on over a skipped update, as with AMP's GradScaler
                job.step_model.zero_grad(job.optimizer)

                state.step += 1
                state.samples_seen += plan.global_examples
                bar.update(1)
                maybe_check_updates(cfg, state, counters)
                maybe_log(cfg, state, window, log, bar, lr=lr, grad_norm=grad_norm)
                try:
                    maybe_evaluate(job, log, stop)
                except Interrupted as e:  # the step is done: checkpointed and stopped as for any signal
                    stop.received = e.signum
                stopping = stop.requested()
                maybe_save(job, counters, window, force=stopping)
                if on_step is not None:
                    on_step(state, plan, job.model)
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
        if grad_norm is not None:  # the steps after the last line, logged too: a short run keeps its end
            maybe_check_updates(cfg, state, counters, last=True)
            maybe_log(cfg, state, window, log, bar, lr=lr, grad_norm=grad_norm, last=True)
    counters.sync_and_check(state)
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
        job.step_model.prepare(batch)
        with (
            acc.accumulate(job.model),
            oom_hint(batch["input_ids"].shape, job.cfg.batch_size, job.cfg.grad_accum),
        ):
            loss_sum = token_loss_sum(job.step_model.model, batch)
            if job.update_in_backward is not None:
                job.update_in_backward.begin(loss_sum)
            acc.backward(loss_sum * scale)
        window.add(loss_sum.detach(), count)
    # accumulate() has now synchronised the gradients (the last micro-batch of the window).
    # The norm is always computed: a NaN/inf loss shows up in it, on every rank alike.
    if job.update_in_backward is not None:  # the gradients are gone: the norm was taken as each arrived
        return n_tokens, job.update_in_backward.grad_norm()
    return n_tokens, acc.clip_grad_norm_(job.model.parameters(), job.cfg.max_grad_norm or math.inf)


def optimizer_step(job: Job, bad: torch.Tensor) -> None:
    """The update, unless `bad` (1.0: a non-finite loss or gradient norm), where it is skipped."""
    raw = job.optimizer.optimizer
    if on_device_skip(raw):  # the fused kernel reads found_inf: params and moments stay as they are
        raw.found_inf = bad
        job.optimizer.step()
    elif not bad.item():  # the one host sync per step of the bitsandbytes optimizers
        job.optimizer.step()


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
    counters.sync_and_check(state)
    window.save_into(state)
    state.sampler = job.sampler.state_dict()
    save_checkpoint(
        job.accelerator,
        cfg.output_dir,
        state,
        cfg.to_dict(),
        keep=cfg.keep_checkpoints,
        save_extra=functools.partial(save_loading_files, job),
        data_content=job.data.content,
    )


def maybe_evaluate(job: Job, log: MetricsLog, stop: StopSignal) -> None:
    """The evaluation every `--eval-every` steps. A signal stops it (`Interrupted`; the loop then
    checkpoints this step and stops): at once in a single process; with several, where they all agree,
    between two chunks of examples (a process that left alone would leave the others waiting for it in
    the evaluation's next gather, for good)."""
    if not job.cfg.eval_every or job.state.step % job.cfg.eval_every or job.data.eval is None:
        return
    why = "during an evaluation"
    if job.accelerator.num_processes == 1:
        with interruptible(why):
            r = evaluate_now(job)
    else:  # the loop's handler stays: it notes the signal for the agreement
        r = evaluate_now(job, between_chunks=functools.partial(stop.check, why))
    log.write(
        step=job.state.step,
        eval_accuracy=r["accuracy"],
        eval_macro_f1=r["macro_f1"],
        eval_loss=r["eval_loss"],
    )


def evaluate_now(job: Job, predictions: Path | None = None, between_chunks=None) -> dict:
    """The evaluation split evaluated now; `predictions`: the file its rows are written to as they come;
    `between_chunks`: see `evaluate`."""
    return evaluate(
        job.model,
        job.data.eval,
        targets=job.data.target_ids,
        accelerator=job.accelerator,
        mode=job.cfg.eval_mode,
        batch_size=job.cfg.eval_batch_size,
        tokenizer=job.data.tokenizer,
        collator=Collator(job.data.tokenizer.pad_token_id),
        names=job.data.classes.names,
        predictions=predictions,
        between_chunks=between_chunks,
    )


def save_loading_files(job: Job, path: Path) -> None:
    """What makes a folder (final/ or a checkpoint) loadable by from_pretrained, evaluate and predict."""
    job.accelerator.unwrap_model(job.model).config.save_pretrained(path)
    job.data.tokenizer.save_pretrained(path)
    save_settings(
        path,
        verbalizer=job.cfg.verbalizer,
        prompt=job.cfg.prompt,
        max_source_length=job.cfg.max_source_length,
        classes=job.data.classes,
    )


# ---------------------------------------------------------------------------------------------------
# finish


def finish(job: Job) -> dict:
    """Final evaluation, model, summary, plots and card."""
    cfg, acc, out = job.cfg, job.accelerator, job.out
    acc.wait_for_everyone()
    checksums = rank_param_checksums(acc, job.model)
    # Read while the compiled model is alive: the graph tree goes with it.
    graphs, graph_skips = job.step_model.graphs()
    # The model is saved before the final evaluation, which can take hours on a CPU: stopping it
    # (Ctrl-C, SIGTERM) loses no training.
    if cfg.save_model:
        # Saved whole or not at all (see `save_final`): a save stopped part way says how to get the model.
        rest = "the same command with --resume auto saves it from the last checkpoint"
        if not cfg.keep_checkpoints:
            rest = "with --keep-checkpoints 0 there is no checkpoint to save it from"
        with interruptible(f"while saving the trained model; {out / 'final'} was not written; {rest}"):
            save_final(acc, job.model, out / "final", functools.partial(save_loading_files, job))
    kept = f"the trained model is saved in {out / 'final'}" if cfg.save_model else f"checkpoints are in {out}"
    final_eval = cfg.final_eval and job.data.eval is not None
    with interruptible(f"during the final evaluation; {kept}"):
        result = evaluate_now(job, out / "eval_predictions.jsonl") if final_eval else None
    summary = run_summary(job, result, graphs, graph_skips, checksums)
    if acc.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if result:  # the report itself is the caller's to show (scripts/train.py prints it): once
            write_report(result, out)
        plot_run(out)
        if cfg.save_model:
            publish(out / "final", summary, cfg.push_to_hub, upload=not cfg.model_card_only)
    acc.end_training()
    return summary
