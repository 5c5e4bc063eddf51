"""A `trainer` row: transformers.Seq2SeqTrainer itself, driven by the row's configuration.

The row's TrainConfig says what the Trainer runs with, as our loop would: the baseline recipe (fp32,
batch 8, padded to 512, random sampler), or, for `hf-trainer-tuned`, what the Trainer's documentation
offers a user without code of their own, the math unchanged (bf16, length-grouped sampling,
DataCollatorForSeq2Seq(pad_to_multiple_of=8)). Its optimizer is the Trainer's default, fused AdamW.
Timings come from the Trainer's own step callback, clocked as the loop rows are.
"""

from __future__ import annotations

import time

import torch

from bench.clocks import PeakMemory, StepClock
from bench.flops import train_flops
from flant5_imdb.data import Collator
from flant5_imdb.modeling import build_model


def measure_trainer(cfg, args, data, timed, on_step=None) -> dict:
    """Warm-up and timed steps of the Trainer on `cfg`; `timed(marks, examples, tokens, flops)` turns
    the step clock's marks into the row's timing fields. `on_step()` is called at the end of each
    step, as the loop's is (bench/step_profile.py profiles the Trainer's step with it)."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback
    from transformers.trainer_utils import set_seed

    started = time.perf_counter()
    set_seed(cfg.seed)
    model = build_model(cfg.model, model_config=cfg.model_config, vocab_size=len(data.tokenizer))
    arch = model.config
    clock, examples, tokens, flops, pending = StepClock(), [], [], [], []
    if cfg.pad_to_max_length:
        collate = Collator(pad_token_id=data.tokenizer.pad_token_id, max_length=cfg.max_source_length)
    else:
        collate = DataCollatorForSeq2Seq(
            data.tokenizer, model=model, pad_to_multiple_of=cfg.pad_to_multiple_of, label_pad_token_id=-100
        )
    collator = CountingCollator(collate, pending)

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            clock.mark(host_too=len(clock) + 1 == args.warmup)
            lens = pending.pop(0)
            examples.append(len(lens))
            tokens.append(sum(lens))
            flops.append(sum(train_flops(arch, n, data.target_len) for n in lens))
            if on_step is not None:
                on_step()

    bf16 = cfg.precision == "bf16"
    targs = Seq2SeqTrainingArguments(
        output_dir=str(cfg.output_dir), per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        seed=cfg.seed, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_eps,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, lr_scheduler_type=cfg.schedule,
        warmup_steps=cfg.warmup_steps, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps or -1,
        logging_steps=10**9, save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, bf16=bf16, optim="adamw_torch_fused",
        # transformers 5 spells group_by_length=True as train_sampling_strategy="group_by_length".
        **(dict(train_sampling_strategy="group_by_length") if cfg.group_by_length else {}),
    )  # fmt: skip
    train = data.splits["train"].select_columns(["input_ids", "labels"])
    with PeakMemory() as mem:
        trainer = Seq2SeqTrainer(
            model=model, args=targs, train_dataset=train, data_collator=collator, callbacks=[Timer()]
        )
        train_started = time.perf_counter()
        trainer.train()
        full_seconds = time.perf_counter() - train_started
    row = timed(clock.seconds(), examples, tokens, flops)
    row.update(mem.report(), warmup_steps=args.warmup, warmup_seconds=clock.host_mark - started,
               trainer_args=trainer_settings(trainer))  # fmt: skip
    if args.full:
        row["full_minutes"] = full_seconds / 60
    del trainer, model
    return row


class CountingCollator:
    """The Trainer's collator, noting each batch's source lengths (the Trainer fetches one batch per step)."""

    def __init__(self, inner, pending: list):
        self.inner, self.pending = inner, pending

    def __call__(self, rows):
        self.pending.append([len(r["input_ids"]) for r in rows])
        return self.inner([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


def trainer_settings(trainer) -> dict:
    """What the Trainer actually ran with, read back from it (not from what was asked)."""
    a, inner = trainer.args, trainer.data_collator.inner
    return dict(
        bf16=a.bf16, sampling=str(getattr(a.train_sampling_strategy, "value", a.train_sampling_strategy)),
        optim=str(getattr(a.optim, "value", a.optim)),
        per_device_train_batch_size=a.per_device_train_batch_size, learning_rate=a.learning_rate,
        lr_scheduler_type=str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type)), seed=a.seed,
        warmup_steps=a.warmup_steps, weight_decay=a.weight_decay, max_grad_norm=a.max_grad_norm,
        collator=type(inner).__name__, pad_to_multiple_of=getattr(inner, "pad_to_multiple_of", None),
        pad_to=getattr(inner, "max_length", None), torch_threads=torch.get_num_threads(),
    )  # fmt: skip
