"""Evaluation: label scoring or greedy generation, then the metrics.

`score`: one encoder pass and one teacher-forced decoder pass over the true targets (2-3 tokens).
When the labels' first target tokens differ, the decoder's first position already holds the
decision: the log-probability of each label's first token (the first position's input is the
start token whatever the label). Otherwise every label's whole target is scored. Either way the
prediction is the label with the higher log-likelihood; for single-token labels this is the
decision greedy decoding makes whenever the model's top token is a label token.

`generate`: greedy decoding, as the baseline did; an output that is no label's text counts as wrong
and is reported as `unparseable`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from tqdm.auto import tqdm

from flant5_imdb import hub
from flant5_imdb.accel import make_accelerator
from flant5_imdb.data import Collator, DataError, load_imdb, source_splits, subset, target_ids, tokenize
from flant5_imdb.modeling import load_trained, source_mask

logger = logging.getLogger(__name__)
CLASS_NAMES = ("negative", "positive")


def _batches(ds: Dataset, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's share of the rows, longest first (padding is then small and memory peaks early)."""
    order = np.argsort(-np.asarray(ds["length"]), kind="stable")[rank::world]
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


@torch.no_grad()
def score_batch(model, batch: dict[str, torch.Tensor], targets: list[list[int]]):
    """Per-label log-likelihoods [B, n_labels], and the summed token loss and token count of the true targets.

    Without `labels` in the batch (prediction on new text) the decoder runs one position, and the
    loss and count are None.
    """
    mask = source_mask(model, batch["attention_mask"])  # the 4D form: no host sync inside transformers
    enc = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=mask)
    labels = batch.get("labels")
    if labels is None:  # the first decoder position's input is the start token, whatever the label
        start = torch.full(
            (len(batch["input_ids"]), 1),
            model.config.decoder_start_token_id,
            device=batch["input_ids"].device,
        )
        decoder_input_ids, loss_sum, n_tokens = start, None, None
    else:
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels)
    logits = model(
        encoder_outputs=enc, attention_mask=mask, decoder_input_ids=decoder_input_ids
    ).logits.float()
    logp = F.log_softmax(logits, dim=-1)
    if labels is not None:
        loss_sum = F.nll_loss(logp.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        n_tokens = (labels != -100).sum()
    first = [t[0] for t in targets]
    if len(set(first)) == len(first):
        return logp[:, 0, first], loss_sum, n_tokens
    scores = []
    for t in targets:  # labels share a first token: score each whole target
        tgt = torch.tensor(t, device=logits.device).expand(len(logits), -1)
        lg = model(
            encoder_outputs=enc,
            attention_mask=mask,
            decoder_input_ids=model.prepare_decoder_input_ids_from_labels(tgt),
        ).logits.float()
        scores.append(F.log_softmax(lg, dim=-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(-1))
    return torch.stack(scores, dim=1), loss_sum, n_tokens


@torch.no_grad()
def generate_batch(
    model, batch: dict[str, torch.Tensor], targets: list[list[int]], tokenizer
) -> torch.Tensor:
    """Greedy decoding; returns the label index per row, -1 where the output is no label's text."""
    texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in targets]
    out = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        max_new_tokens=max(len(t) for t in targets) + 2,
        do_sample=False,
        num_beams=1,
    )
    decoded = [s.strip() for s in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return torch.tensor([texts.index(s) if s in texts else -1 for s in decoded])


def evaluate(
    model,
    ds: Dataset,
    *,
    targets: list[list[int]],
    accelerator: Accelerator,
    mode: str = "score",
    batch_size: int = 64,
    tokenizer=None,
    collator: Collator | None = None,
) -> dict:
    """Evaluate on `ds` (tokenized, with `label` and `id`), sharded over the processes.

    Returns the metrics (see `metrics`) plus `predictions` (id, label, pred, prob_positive),
    `eval_seconds` and `reviews_per_s`. Every process returns the same dict.
    """
    collator = collator or Collator()
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    start = time.perf_counter()
    rows, loss_sum, n_tok = [], 0.0, 0
    batches = _batches(ds, batch_size, accelerator.process_index, accelerator.num_processes)
    for idx in tqdm(
        batches, desc=f"eval ({mode})", disable=not accelerator.is_local_main_process, leave=False
    ):
        ex = ds[idx]
        batch = collator.from_columns(ex)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            if mode == "score":
                scores, ls, nt = score_batch(unwrapped, batch, targets)
                pred = scores.argmax(-1).cpu()
                prob = torch.softmax(scores, -1)[:, 1].cpu()
                loss_sum, n_tok = loss_sum + ls.item(), n_tok + int(nt)
            else:
                pred = generate_batch(unwrapped, batch, targets, tokenizer)
                prob = pred.clamp(min=0).float()
        rows += [
            dict(id=int(i), label=int(y), pred=int(p), prob_positive=float(q))
            for i, y, p, q in zip(ex["id"], ex["label"], pred.tolist(), prob.tolist(), strict=True)
        ]
    rows = sorted(gather_object(rows), key=lambda r: r["id"])
    seconds = time.perf_counter() - start
    losses = gather_object([(loss_sum, n_tok)])
    total_tok = sum(n for _, n in losses)
    result = metrics([r["label"] for r in rows], [r["pred"] for r in rows])
    result.update(
        mode=mode,
        eval_loss=sum(s for s, _ in losses) / total_tok if total_tok else None,
        eval_seconds=seconds,
        reviews_per_s=len(rows) / seconds,
        predictions=rows,
    )
    if was_training:
        unwrapped.train()
    return result


def metrics(y_true: list[int], y_pred: list[int]) -> dict:
    """Accuracy, macro-F1 (the baseline's "F1"), per-class report, confusion matrix; -1 predictions count as
    wrong.
    """
    labels = [0, 1]
    return dict(
        n=len(y_true),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        unparseable=int(sum(p == -1 for p in y_pred)),
        report=classification_report(
            y_true, y_pred, labels=labels, target_names=CLASS_NAMES, output_dict=True, zero_division=0
        ),
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def format_report(result: dict) -> str:
    """A plain-text table of the metrics, for the terminal and for eval.txt."""
    r = result["report"]
    lines = [
        f"{result['n']} reviews, mode={result.get('mode')}: accuracy {result['accuracy']:.4f}, macro-F1 "
        f"{result['macro_f1']:.4f}"
        + (f", eval loss {result['eval_loss']:.4f}" if result.get("eval_loss") is not None else "")
        + (f", unparseable {result['unparseable']}" if result["unparseable"] else ""),
        f"{'':>10} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}",
    ]
    for name in CLASS_NAMES:
        c = r[name]
        lines.append(
            f"{name:>10} {c['precision']:9.4f} {c['recall']:9.4f} {c['f1-score']:9.4f} {int(c['support']):9d}"
        )
    cm = result["confusion_matrix"]
    lines += [
        "confusion (rows true, cols predicted):",
        f"{'':>10} {'neg':>7} {'pos':>7}",
        f"{'negative':>10} {cm[0][0]:7d} {cm[0][1]:7d}",
        f"{'positive':>10} {cm[1][0]:7d} {cm[1][1]:7d}",
    ]
    return "\n".join(lines)


def write_report(result: dict, out_dir: Path, name: str = "eval") -> None:
    """`name.json` (metrics, no per-row predictions), `name.txt` and `name_predictions.jsonl`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(
        json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=2)
    )
    (out_dir / f"{name}.txt").write_text(format_report(result) + "\n")
    with open(out_dir / f"{name}_predictions.jsonl", "w") as f:
        for row in result["predictions"]:
            f.write(json.dumps(row) + "\n")


def evaluate_saved(
    model_path: str,
    data: str,
    *,
    split: str = "test",
    mode: str = "score",
    batch_size: int = 64,
    max_samples: int | None = None,
    verbalizer: str | None = None,
    prompt: str | None = None,
    precision: str = "fp32",
    output_dir: str | Path | None = None,
    seed: int = 42,
    skip_bad_rows: bool = False,
) -> dict:
    """Evaluate a saved model (final/, a checkpoint, or a Hub id such as google/flan-t5-base zero-shot).

    Verbalizer, prompt and truncation default to those the model was trained with. Writes
    eval.json / eval.txt / eval_predictions.jsonl into `output_dir` if given.

    Raises:
        DataError: the data or split is unusable.
        ValueError: the model cannot be loaded.
    """
    for name, value in (("batch_size", batch_size), ("max_samples", max_samples)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    known = source_splits(data)  # only the split evaluated is read (and checked)
    hub.preflight(hub.needs(model=model_path, data=data))
    if known is not None and split not in known:
        raise DataError(f"--split {split!r}: {data} has only {', '.join(known)}")
    model, tokenizer, settings = load_trained(model_path, verbalizer=verbalizer, prompt=prompt)
    verbalizer, prompt = settings["verbalizer"], settings["prompt"]
    raw, skipped = load_imdb(data, splits=[split], skip_bad_rows=skip_bad_rows)
    if split not in raw:
        raise DataError(f"--split {split!r}: {data} has no such split")
    ds = tokenize(
        raw, tokenizer, verbalizer=verbalizer, prompt=prompt, max_source_length=settings["max_source_length"]
    )[split]
    ds = subset(ds, max_samples, seed)
    accelerator = make_accelerator(precision)
    model = model.to(accelerator.device)
    result = evaluate(
        model,
        ds,
        targets=target_ids(tokenizer, verbalizer),
        accelerator=accelerator,
        mode=mode,
        batch_size=batch_size,
        tokenizer=tokenizer,
        collator=Collator(tokenizer.pad_token_id),
    )
    result.update(
        model=model_path,
        data=data,
        split=split,
        verbalizer=verbalizer,
        prompt=prompt,
        skipped_rows=len(skipped),
    )
    if output_dir is not None and accelerator.is_main_process:
        write_report(result, Path(output_dir))
        if skipped:
            with open(Path(output_dir) / "skipped_rows.jsonl", "w") as f:
                f.writelines(json.dumps(r.to_dict()) + "\n" for r in skipped)
            logger.warning(
                "--skip-bad-rows: %d bad row(s) left out, each listed in %s",
                len(skipped),
                Path(output_dir) / "skipped_rows.jsonl",
            )
    return result
