"""The training loop: `run(cfg) -> summary`.

Read `run` top to bottom: data, model, optimizer, the loop, evaluation, saving. Side effects that
only happen now and then (logging, evaluation) live in small `maybe_*` helpers below it.

The loss is normalized by the number of target tokens in the whole effective batch (every
micro-batch of the accumulation window, on every process), so that 8 x 1, 4 x 2 and 2 processes x 4
give the same update. Two library behaviours are undone for that: `Accelerator.backward` divides
the loss by `gradient_accumulation_steps`, and DDP averages gradients over processes; the loss is
multiplied back by both before it is divided by the global token count.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel, gather_object, set_seed
from tqdm.auto import tqdm

from flant5_imdb.accel import make_accelerator
from flant5_imdb.card import publish
from flant5_imdb.checkpoint import (
    TrainState,
    check_compatible,
    latest_complete,
    load_checkpoint,
    read_checkpoint,
    resolve_resume,
    restore_sampler,
    save_checkpoint,
)
from flant5_imdb.config import TrainConfig
from flant5_imdb.data import DataError, load_imdb, subset, target_ids, texts_of, tokenize
from flant5_imdb.evaluate import evaluate, format_report, write_report
from flant5_imdb.guards import Preempted, StepCounters, StopSignal, oom_hint
from flant5_imdb.kernels.attention import use_bias_kernel
from flant5_imdb.kernels.graphs import cudagraph_skips, recorded_cuda_graphs
from flant5_imdb.kernels.norm import fuse_norms
from flant5_imdb.modeling import build_model, checkpoint_activations, save_settings, source_mask
from flant5_imdb.optim import build_optimizer, build_scheduler
from flant5_imdb.plots import plot_run
from flant5_imdb.sampler import Collator, Step, StepSampler
from flant5_imdb.tokenizer import TRAIN_HERE, load_tokenizer, train_word_tokenizer

logger = logging.getLogger(__name__)


def run(cfg: TrainConfig, on_step: Callable[[TrainState, Step, torch.nn.Module], None] | None = None) -> dict:
    """Train, evaluate and save as `cfg` says; returns the summary also written to summary.json.

    `on_step(state, step, model)` is called after every optimizer step with the examples that
    step saw on this process (tests use it to trace the data order and the weights).

    Raises:
        DataError: the data source is unusable (see `data.load_imdb`).
        ValueError: the model or tokenizer cannot be had.
        CheckpointError: `--resume` names an unusable checkpoint or one made by other math.
        Preempted: SIGTERM/SIGINT arrived; the step was finished and a checkpoint written.
        NonFiniteError: `--max-bad-steps` updates in a row had a non-finite loss or gradient norm.
        OutOfMemory: a micro-batch did not fit on the GPU.
    """
    started = time.perf_counter()
    accelerator = make_accelerator(
        cfg.precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
    )
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if cfg.report_to != "none":  # trackers take flat scalars and strings
        accelerator.init_trackers("flant5_imdb", config={k: "none" if v is None else v for k, v in cfg.to_dict().items()})

    # 1. Data: every process builds the same tokenized splits; the main process fills the cache first.
    with accelerator.main_process_first():
        raw, skipped = load_imdb(cfg.data, skip_bad_rows=cfg.skip_bad_rows)
        tokenizer = _tokenizer(cfg, raw)
        tokenized = tokenize(raw, tokenizer, verbalizer=cfg.verbalizer, prompt=cfg.prompt, max_source_length=cfg.max_source_length)
    evaluating = cfg.final_eval or cfg.eval_every
    if evaluating and cfg.eval_split not in tokenized:
        raise DataError(f"--eval-split {cfg.eval_split!r}: the data has only {', '.join(tokenized)}")
    if "train" not in tokenized:
        raise DataError(f"{cfg.data}: no 'train' split (found: {', '.join(tokenized)})")
    train_ds = subset(tokenized["train"], cfg.max_train_samples, cfg.seed)
    eval_ds = subset(tokenized[cfg.eval_split], cfg.max_eval_samples, cfg.seed) if evaluating else None
    targets = target_ids(tokenizer, cfg.verbalizer)
    if accelerator.is_main_process and skipped:
        with open(out / "skipped_rows.jsonl", "w") as f:
            f.writelines(json.dumps({"where": r.where, "row": r.row, "reason": r.reason}) + "\n" for r in skipped)

    # 2. Model and optimizer. Seeding right before init makes the weights independent of data loading.
    set_seed(cfg.seed)
    model = build_model(cfg.model, model_config=cfg.model_config, vocab_size=len(tokenizer),
                        attn_implementation=cfg.attn_implementation, dropout=cfg.dropout)
    if cfg.fused_norm:
        fuse_norms(model)
    if cfg.bias_kernel:
        use_bias_kernel(model, lookup=cfg.bias_lookup)
    if cfg.activation_checkpointing:
        checkpoint_activations(model)
    raw_optimizer = build_optimizer(model.to(accelerator.device), cfg)
    model, optimizer = accelerator.prepare(model, raw_optimizer)
    # Compiled after prepare: accelerate keeps tracking (and checkpointing) the plain module, whose
    # parameters the compiled one shares, so state dicts carry no `_orig_mod.` prefix.
    step_model = maybe_compile(model, cfg)
    compiled = step_model is not model
    graphed = compiled and cfg.cuda_graphs  # asked for; recorded_cuda_graphs() says whether it happened
    if graphed:
        allocate_grads(model)
        skips_before = cudagraph_skips()
    # The sampler shards the data itself (identical plan on every rank), so no dataloader is prepared.
    sampler = StepSampler(train_ds["length"], batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                          num_replicas=accelerator.num_processes, rank=accelerator.process_index,
                          seed=cfg.seed, group_by_length=cfg.group_by_length)
    total_steps = cfg.max_steps or cfg.epochs * sampler.steps_per_epoch
    # Not prepared by accelerate (a prepared scheduler steps once per process per step), but
    # registered, so that save_state/load_state carry it.
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    accelerator.register_for_checkpointing(scheduler)
    collate = Collator(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of,
                       buckets=length_buckets(cfg.bucket_multiple, cfg.max_source_length) if cfg.bucket_multiple else None,
                       max_length=cfg.max_source_length if cfg.pad_to_max_length else None)

    def export(path: Path) -> None:
        """What makes a folder (final/ or a checkpoint) loadable by from_pretrained, evaluate.py and predict.py."""
        accelerator.unwrap_model(model).config.save_pretrained(path)
        tokenizer.save_pretrained(path)
        save_settings(path, verbalizer=cfg.verbalizer, prompt=cfg.prompt, max_source_length=cfg.max_source_length)

    # 3. Resume, if asked: weights, optimizer, scheduler, RNG states, sampler position, counters.
    state = TrainState()
    resume_from = resolve_resume(cfg.resume, out)
    if resume_from is not None:
        check_compatible(read_checkpoint(resume_from), cfg.to_dict(), accelerator.num_processes, cfg.force_resume)
        state = load_checkpoint(accelerator, resume_from)
        restore_sampler(sampler, state.sampler, cfg.force_resume)
        logger.info("resumed from %s at step %d (epoch %d)", resume_from, state.step, state.epoch)
    else:
        sampler.set_epoch(0)
    logger.info("training %d steps (%d per epoch), effective batch %d, %d examples",
                total_steps, sampler.steps_per_epoch, sampler.global_batch, len(train_ds))

    def evaluate_now() -> dict:
        return evaluate(model, eval_ds, targets=targets, accelerator=accelerator, mode=cfg.eval_mode,
                        batch_size=cfg.eval_batch_size, tokenizer=tokenizer, collator=Collator(tokenizer.pad_token_id))

    # 4. The loop. One iteration = one optimizer step = `grad_accum` micro-batches on each process.
    model.train()
    log = MetricsLog(out / "metrics.jsonl", accelerator)
    window = Window(accelerator)
    counters = StepCounters(accelerator.device, state, cfg.max_bad_steps)
    # The fused AdamW kernel can skip a non-finite update on the device; other optimizers need the host to decide.
    skip_on_device = isinstance(raw_optimizer, torch.optim.AdamW) and bool(raw_optimizer.defaults.get("fused"))
    stop = StopSignal(accelerator)
    filler = train_ds[:1]  # the example behind an empty micro-batch slot (all labels masked)
    train_start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=state.step, desc="train", disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    with stop, bar:
        while state.step < total_steps:
            for step in sampler:
                batches = [_micro_batch(train_ds, idx, collate, filler) for idx in step.micro_batches]
                # Target tokens of the whole effective batch: counted on the host from the padded labels,
                # and with several processes summed on the device (a collective, not a host sync; the
                # count enters the device as a fill kernel's argument, not as a copy).
                counts = [target_tokens(b) for b in batches]
                n_tokens = sum(counts)
                if accelerator.num_processes > 1:
                    n_tokens = accelerator.reduce(torch.full((), n_tokens, dtype=torch.long, device=accelerator.device), "sum")
                scale = accelerator.num_processes * cfg.grad_accum / n_tokens
                lr = scheduler.get_last_lr()[0]
                for batch, count in zip(batches, counts, strict=True):
                    batch = to_device(batch, accelerator.device)
                    # The mask in the 4D form, which transformers takes as it is (no host sync testing it for padding).
                    batch["attention_mask"] = source_mask(model, batch["attention_mask"])
                    if compiled:
                        mark_length_dynamic(batch)
                    if graphed:  # outputs of the previous replay are no longer needed: the graphs may reuse their memory
                        torch.compiler.cudagraph_mark_step_begin()
                    with accelerator.accumulate(model), oom_hint(cfg, batch):
                        loss_sum = token_loss_sum(step_model, batch)
                        accelerator.backward(loss_sum * scale)
                    window.add(loss_sum.detach(), count)
                # accumulate() has now synchronised the gradients (the last micro-batch of the window).
                # The norm is always computed: a NaN/inf loss shows up in it, on every rank alike.
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or math.inf)
                bad = counters.update(n_tokens, grad_norm)
                if skip_on_device:
                    raw_optimizer.found_inf = bad  # read by the fused kernel: params and moments stay as they are
                    optimizer.step()
                elif not bad.item():  # the one host sync per step of the bitsandbytes optimizers
                    optimizer.step()
                scheduler.step()  # the schedule moves on over a skipped update, as with AMP's GradScaler
                optimizer.zero_grad(set_to_none=not graphed)  # graphed: see allocate_grads

                state.step += 1
                state.samples_seen += step.global_examples
                bar.update(1)
                maybe_log(cfg, state, window, counters, log, bar, lr=lr, grad_norm=grad_norm, seconds=time.perf_counter() - train_start)
                maybe_evaluate(cfg, state, evaluate_now, log)
                stopping = stop.requested()
                maybe_save(cfg, accelerator, state, sampler, counters, total_steps, export, force=stopping)
                if on_step is not None:
                    on_step(state, step, model)
                if stopping:
                    raise Preempted(stop.signum, state.step, latest_complete(out) if cfg.keep_checkpoints else None)
                if state.step >= total_steps:
                    break
            else:  # the epoch is done
                state.epoch += 1
                sampler.set_epoch(state.epoch)
    counters.sync(state)
    log.close()
    accelerator.wait_for_everyone()
    train_seconds = time.perf_counter() - train_start
    checksums = rank_param_checksums(accelerator, model)
    # While the compiled model is alive: the graph tree goes when its functions do.
    graphs = recorded_cuda_graphs() if graphed else 0
    graph_skips = cudagraph_skips() - skips_before if graphed else 0
    if graphed and graphs == 0:
        logger.warning("--cuda-graphs: no CUDA graph was recorded (%d skipped); the compiled step ran without graphs", graph_skips)

    # 5. Final evaluation, model, summary.
    result = evaluate_now() if cfg.final_eval else None
    if cfg.save_model:
        save_final(accelerator, model, out / "final", export)
    summary = dict(
        steps=state.step, samples_seen=state.samples_seen, epochs=state.samples_seen / len(train_ds),
        target_tokens_seen=state.target_tokens_seen, skipped_steps=state.skipped_steps,
        resumed_from=str(resume_from) if resume_from else None, train_seconds=train_seconds,
        wall_seconds=time.perf_counter() - started, samples_per_s=state.samples_seen / train_seconds,
        processes=accelerator.num_processes, distributed_type=str(accelerator.distributed_type), device=str(accelerator.device),
        precision=cfg.precision, compiled=compiled, cuda_graphs=None if graphs is None else graphs > 0, cuda_graphs_recorded=graphs,
        cuda_graph_skips=graph_skips,
        peak_gpu_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        skipped_rows=len(skipped), last_logged_loss=window.last_loss, rank_param_checksums=checksums,
        eval={k: v for k, v in result.items() if k != "predictions"} if result else None, config=cfg.to_dict(),
    )
    if accelerator.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if result:
            write_report(result, out)
            logger.info("evaluation:\n%s", format_report(result))
        plot_run(out)
        if cfg.save_model:
            publish(out / "final", summary, cfg.push_to_hub, upload=not cfg.model_card_only)
    accelerator.end_training()
    return summary


def maybe_compile(model, cfg: TrainConfig, backend="inductor", on_cpu: bool = False):
    """torch.compile on CUDA; elsewhere the same flags run eagerly (and say so).

    `backend` and `on_cpu` exist for the CPU tests, which trace the real model without inductor.
    """
    if not cfg.compile:
        return model
    if not (torch.cuda.is_available() or on_cpu):
        logger.info("--compile: no CUDA, running eagerly")
        return model
    # The source length is marked dynamic batch by batch (mark_length_dynamic); other dimensions
    # stay static. CUDA graphs are still recorded per shape (one per bucket).
    mode = "reduce-overhead" if cfg.cuda_graphs else None
    return torch.compile(model, backend=backend, mode=mode if backend == "inductor" else None)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copy a host batch to the device without making the host wait for the GPU.

    From pageable memory the driver stages the copy and may first wait for the stream's queued
    work: a host sync per micro-batch. From pinned memory (torch's caching host allocator, so
    pinning is cheap after the first steps) the copy is queued and the host moves on.
    """
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def mark_length_dynamic(batch: dict[str, torch.Tensor]) -> None:
    """One compiled graph for every source length instead of one compilation per length.

    Measured on the tiny T5 (dynamo + AOTAutograd, CPU): a static shape traces in 14 s, each new
    length again; the length alone symbolic, 18 s once; every dimension symbolic (dynamic=True), 55 s.
    `maybe_`: a graph that needs a fixed length recompiles instead of failing.
    """
    torch._dynamo.maybe_mark_dynamic(batch["input_ids"], 1)
    torch._dynamo.maybe_mark_dynamic(batch["attention_mask"], batch["attention_mask"].dim() - 1)  # 2D or source_mask's 4D


def allocate_grads(model) -> None:
    """Give every parameter a zeroed .grad before the first backward, for CUDA graphs.

    A graphed backward's outputs live in memory the next replay overwrites. When a parameter has
    no .grad, autograd adopts that output as the .grad, and a second micro-batch (gradient
    accumulation) or the next step then overwrites it in place (pytorch/pytorch#169545). With a
    .grad already allocated, autograd adds the output into it instead; the loop then zeroes the
    gradients in place rather than freeing them.
    """
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def length_buckets(multiple: int, max_length: int) -> tuple[int, ...]:
    """multiple, 2 x multiple, ... up to max_length (which is always a bucket)."""
    return tuple(sorted({*range(multiple, max_length, multiple), max_length}))


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy over the non-padding target tokens, in fp32 (`batch["attention_mask"]` as `source_mask` gives it).

    The model's own loss is a mean over this micro-batch's tokens, which would weigh a token in a
    short-target micro-batch more than one in a long-target micro-batch of the same window.
    """
    # use_cache=False: training has no use for the decoder's key/value cache (nor for building one each step).
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=_decoder_inputs(model, batch["labels"]), use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100, reduction="sum")


def _decoder_inputs(model, labels: torch.Tensor) -> torch.Tensor:
    """Labels shifted right behind the start token, -100 replaced by padding (T5's own rule)."""
    # The model may be wrapped (DDP, torch.compile); the method lives on the T5 model itself.
    return extract_model_from_parallel(model, keep_torch_compile=False).prepare_decoder_input_ids_from_labels(labels)


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Non-padding target tokens of a host batch, counted in numpy (never a read from the device)."""
    return int(np.count_nonzero(batch["labels"].numpy() != -100))


def _micro_batch(ds, indices: list[int], collate: Collator, filler) -> dict[str, torch.Tensor]:
    """Collate `indices`; an empty slot becomes one example with every label masked (zero loss, zero gradient)."""
    if not indices:
        return collate([{"input_ids": filler["input_ids"][0], "labels": filler["labels"][0]}], mask_labels=True)
    ex = ds[indices]
    return collate([{"input_ids": a, "labels": b} for a, b in zip(ex["input_ids"], ex["labels"], strict=True)])


def _tokenizer(cfg: TrainConfig, raw):
    if cfg.tokenizer == TRAIN_HERE:
        return train_word_tokenizer(texts_of({"train": raw["train"]}))
    return load_tokenizer(cfg.tokenizer or cfg.model)


class Window:
    """Loss and token totals since the last log line, kept on the device until a log asks for them."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.loss = torch.zeros((), device=accelerator.device)
        self.tokens = 0
        self.last_loss: float | None = None

    def add(self, loss_sum: torch.Tensor, tokens: int) -> None:
        self.loss += loss_sum
        self.tokens += tokens

    def drain(self) -> tuple[float, int]:
        """Mean token loss over the window, all processes (a host sync: call only when logging)."""
        totals = self.accelerator.reduce(torch.stack([self.loss, self.loss.new_tensor(float(self.tokens))]), "sum")
        loss, tokens = totals.tolist()
        self.loss.zero_()
        self.tokens = 0
        if tokens:
            self.last_loss = loss / tokens
        return loss / tokens if tokens else float("nan"), int(tokens)


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, main process only) and any --report-to tracker."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.accelerator = accelerator
        self.f = open(path, "a", buffering=1) if accelerator.is_main_process else None  # noqa: SIM115 - open for the whole run

    def write(self, **row) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def maybe_log(cfg, state: TrainState, window: Window, counters: StepCounters, log: MetricsLog, bar, *, lr, grad_norm, seconds) -> None:
    """Every `log_every` steps (and at step 1); the streak of non-finite updates is checked at least every `max_bad_steps`."""
    logging_now = state.step % cfg.log_every == 0 or state.step == 1
    if not logging_now and state.step % cfg.max_bad_steps:
        return
    skipped_before = state.skipped_steps
    counters.sync(state)  # raises NonFiniteError after max_bad_steps bad updates in a row
    if state.skipped_steps > skipped_before:
        logger.warning("skipped %d update(s) with a non-finite loss or gradient norm by step %d (%d in all)",
                       state.skipped_steps - skipped_before, state.step, state.skipped_steps)
    if not logging_now:
        return
    loss, _ = window.drain()
    row = dict(step=state.step, epoch=state.epoch, loss=loss, lr=lr, grad_norm=float(grad_norm),
               skipped_steps=state.skipped_steps, samples_per_s=state.samples_seen / max(seconds, 1e-9))
    log.write(**row)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{row['samples_per_s']:.1f}")


def maybe_save(cfg, accelerator, state: TrainState, sampler: StepSampler, counters: StepCounters, total_steps: int,
               export: Callable[[Path], None], force: bool) -> None:
    """Checkpoint every `save_every` steps, at each epoch end, at the last step, and when asked to stop."""
    if not cfg.keep_checkpoints:
        return
    epoch_end = len(sampler) == 0
    if not (force or epoch_end or state.step == total_steps or (cfg.save_every and state.step % cfg.save_every == 0)):
        return
    counters.sync(state)
    state.sampler = sampler.state_dict()
    save_checkpoint(accelerator, cfg.output_dir, state, cfg.to_dict(), keep=cfg.keep_checkpoints, save_extra=export)


def maybe_evaluate(cfg, state, evaluate_now: Callable[[], dict], log: MetricsLog) -> None:
    if not cfg.eval_every or state.step % cfg.eval_every:
        return
    r = evaluate_now()
    log.write(step=state.step, eval_accuracy=r["accuracy"], eval_macro_f1=r["macro_f1"], eval_loss=r["eval_loss"])


def rank_param_checksums(accelerator: Accelerator, model) -> list[float]:
    """The float64 sum of every parameter, one per process: equal on all ranks unless DDP went wrong."""
    params = accelerator.unwrap_model(model).parameters()
    # FSDP shards are DTensors: sum the full tensor, which every rank then holds alike.
    local = sum(float((p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().sum()) for p in params)
    sums = gather_object([local])
    if len(set(sums)) > 1:
        logger.warning("parameters differ across processes after training: checksums %s", sums)
    return sums


def save_final(accelerator: Accelerator, model, path: Path, export: Callable[[Path], None]) -> None:
    """save_pretrained of the unwrapped model (no DDP `module.` or compile `_orig_mod.` prefixes), tokenizer, settings."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)  # gathered from the shards under FSDP; a plain state dict otherwise
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    unwrapped.save_pretrained(path, is_main_process=accelerator.is_main_process, save_function=accelerator.save,
                              state_dict=state_dict)
    if accelerator.is_main_process:
        export(path)
