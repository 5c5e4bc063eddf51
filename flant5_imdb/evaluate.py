"""Evaluation: label scoring or greedy generation, then the metrics.

`score`: one encoder pass and one teacher-forced decoder pass over the true targets (2-3 tokens).
When the classes' first target tokens differ, the decoder's first position already holds the
decision: the log-probability of each class's first token (the first position's input is the
start token whatever the class). Otherwise (targets that share a first token, of any lengths)
every class's whole target is scored, all N of them in one more decoder pass over N copies of the
encoder's output. Either way the prediction is the class with the highest log-likelihood; for
single-token targets this is the decision greedy decoding makes whenever the model's top token
is a target token.

`generate`: greedy decoding, as the baseline did; an output that is no label's text counts as wrong
and is reported as `unparseable`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from sklearn.metrics import accuracy_score, classification_report, f1_score
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from flant5_imdb import hub
from flant5_imdb.accel import cpu_threads, make_accelerator
from flant5_imdb.data import IMDB, Collator, Columns, DataSpec, check_splits, prepare, write_skipped
from flant5_imdb.modeling import load_trained, source_mask

logger = logging.getLogger(__name__)


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
    return whole_target_scores(model, enc.last_hidden_state, mask, targets), loss_sum, n_tokens


def whole_target_scores(
    model, hidden: torch.Tensor, mask: torch.Tensor, targets: list[list[int]]
) -> torch.Tensor:
    """[B, N]: the summed log-probability of each of the N targets (any lengths), in one decoder pass.

    Row b * N + n of the pass is example b with target n, under example b's encoder output.
    """
    batch, n = hidden.shape[0], len(targets)
    width = max(len(t) for t in targets)
    table = torch.full((n, width), -100, dtype=torch.long, device=hidden.device)
    for i, t in enumerate(targets):
        table[i, : len(t)] = torch.tensor(t, device=hidden.device)
    labels = table.repeat(batch, 1)
    logits = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden.repeat_interleave(n, dim=0)),
        attention_mask=mask.repeat_interleave(n, dim=0),
        decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels),
    ).logits.float()
    token_logp = F.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return token_logp.masked_fill(labels == -100, 0.0).sum(-1).reshape(batch, n)


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
    names: tuple[str, ...] = IMDB.names,
) -> dict:
    """Evaluate on `ds` (tokenized, with `label` and `id`), sharded over the processes.

    Returns the metrics (see `metrics`) plus `predictions` (id, label, pred, and `probs`, the
    probability of each class by name, or beyond 30 classes `top_probs`, the 10 most probable),
    `eval_seconds` and `examples_per_s`. Every process returns the same dict.
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
                probs = torch.softmax(scores, -1).cpu()
                loss_sum, n_tok = loss_sum + ls.item(), n_tok + int(nt)
            else:  # greedy decoding gives no distribution: all of it on what was written
                pred = generate_batch(unwrapped, batch, targets, tokenizer)
                probs = F.one_hot(pred.clamp(min=0), len(targets)).float() * (pred >= 0).float()[:, None]
        rows += [
            prediction_row(int(i), int(y), int(p), q, names)
            for i, y, p, q in zip(ex["id"], ex["label"], pred.tolist(), probs.tolist(), strict=True)
        ]
    rows = sorted(gather_object(rows), key=lambda r: r["id"])
    seconds = time.perf_counter() - start
    losses = gather_object([(loss_sum, n_tok)])
    total_tok = sum(n for _, n in losses)
    result = metrics([r["label"] for r in rows], [r["pred"] for r in rows], names)
    result.update(
        mode=mode,
        eval_loss=sum(s for s, _ in losses) / total_tok if total_tok else None,
        eval_seconds=seconds,
        examples_per_s=len(rows) / seconds,
        predictions=rows,
    )
    if was_training:
        unwrapped.train()
    return result


TOP_PROBS = 10  # with more than MAX_MATRIX_CLASSES classes, a prediction row keeps the 10 most probable


def prediction_row(example: int, label: int, pred: int, probs: list[float], names: tuple[str, ...]) -> dict:
    """One evaluated example: `probs` holds every class's probability, or, with more than
    MAX_MATRIX_CLASSES classes, `top_probs` the TOP_PROBS most probable (25,000 rows x 1,000 classes
    would be gigabytes of predictions)."""
    if len(names) > MAX_MATRIX_CLASSES:
        top = sorted(range(len(names)), key=lambda i: -probs[i])[:TOP_PROBS]
        return dict(id=example, label=label, pred=pred, top_probs={names[i]: float(probs[i]) for i in top})
    return dict(
        id=example, label=label, pred=pred, probs={n: float(p) for n, p in zip(names, probs, strict=True)}
    )


# Beyond this many classes a confusion matrix is summarised: its nonzero cells, the top confusions.
MAX_MATRIX_CLASSES = 30


def metrics(y_true: list[int], y_pred: list[int], names: tuple[str, ...] = IMDB.names) -> dict:
    """Accuracy, macro-F1 (the baseline's "F1"), per-class report and confusion counts; -1
    predictions (generated text that is no class's target) count as wrong.

    Per-class scores and macro-F1 are over the classes present: in the true labels or in the
    predictions. A class of the model that the evaluation data never holds (and the model never
    predicts) has no F1 to average: it is named in `classes_not_in_data`, not counted as 0.
    The N x N `confusion_matrix` is kept up to MAX_MATRIX_CLASSES classes; beyond that it is None,
    and `confusion_counts` ([true, predicted, count] for every nonzero cell) and `top_confusions`
    say the same in a size that grows with the examples, not with N squared.
    """
    in_data = set(y_true)
    present = sorted(in_data | {p for p in y_pred if p >= 0})
    counts = Counter((t, p) for t, p in zip(y_true, y_pred, strict=True) if p >= 0)
    confusions = sorted(
        ((n, t, p) for (t, p), n in counts.items() if t != p), key=lambda c: (-c[0], c[1], c[2])
    )
    matrix = None
    if len(names) <= MAX_MATRIX_CLASSES:  # from the same counts: a -1 prediction is in no cell
        matrix = [[counts[t, p] for p in range(len(names))] for t in range(len(names))]
    return dict(
        names=list(names),
        n=len(y_true),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        unparseable=int(sum(p == -1 for p in y_pred)),
        classes_not_in_data=[names[i] for i in range(len(names)) if i not in in_data],
        report=classification_report(
            y_true, y_pred, labels=present, target_names=[names[i] for i in present], output_dict=True,
            zero_division=0,
        ),
        confusion_matrix=matrix,
        confusion_counts=[[t, p, n] for (t, p), n in sorted(counts.items())],
        top_confusions=[dict(true=names[t], predicted=names[p], count=n) for n, t, p in confusions[:20]],
    )  # fmt: skip


def format_report(result: dict) -> str:
    """A plain-text table of the metrics, for the terminal and for eval.txt."""
    r = result["report"]
    lines = [
        f"{result['n']} examples, mode={result.get('mode')}: accuracy {result['accuracy']:.4f}, macro-F1 "
        f"{result['macro_f1']:.4f}"
        + (f", eval loss {result['eval_loss']:.4f}" if result.get("eval_loss") is not None else "")
        + (f", unparseable {result['unparseable']}" if result["unparseable"] else ""),
    ]
    absent = result.get("classes_not_in_data") or []
    if absent:
        shown = ", ".join(absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
        lines.append(
            f"note: {len(absent)} class(es) of the model are not in this data and not in macro-F1: {shown}"
        )
    names = result.get("names", list(IMDB.names))
    reported = [n for n in names if n in r]
    width = max(10, *(len(n) for n in reported))
    lines.append(f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>9}")
    for name in reported:
        c = r[name]
        scores = f"{c['precision']:9.4f} {c['recall']:9.4f} {c['f1-score']:9.4f}"
        lines.append(f"{name:>{width}} {scores} {int(c['support']):9d}")
    cm = result.get("confusion_matrix")
    if cm is None:
        lines.append(f"{len(names)} classes: the most frequent confusions (true -> predicted: count):")
        lines += [
            f"  {c['true']} -> {c['predicted']}: {c['count']}" for c in result.get("top_confusions", [])
        ]
        return "\n".join(lines)
    cell = max(7, *(len(n[:12]) for n in names))
    lines.append("confusion (rows true, cols predicted):")
    lines.append(f"{'':>{width}} " + " ".join(f"{n[:12]:>{cell}}" for n in names))
    lines += [
        f"{n:>{width}} " + " ".join(f"{v:{cell}d}" for v in row) for n, row in zip(names, cm, strict=True)
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
    columns: Columns = Columns(),
    threads: str = "auto",
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
    spec = DataSpec(data, columns, train_split=None, eval_split=split, eval_flag="--split",
                    skip_bad_rows=skip_bad_rows, max_eval_samples=max_samples, seed=seed)  # fmt: skip
    check_splits(spec)  # before the model is loaded: a split that is not there fails now
    hub.preflight(hub.needs(model=model_path, data=data))
    model, tokenizer, settings = load_trained(model_path, verbalizer=verbalizer, prompt=prompt)
    spec = dataclasses.replace(spec, verbalizer=settings["verbalizer"], prompt=settings["prompt"],
                               max_source_length=settings["max_source_length"])  # fmt: skip
    # Only the split evaluated is read, in the model's label space.
    prepared = prepare(spec, lambda *_: tokenizer, labels=settings["labels"])
    ds, space, skipped = prepared.eval, prepared.labels, prepared.skipped
    accelerator = make_accelerator(precision)
    cpu_threads(threads, sum(p.numel() for p in model.parameters()), accelerator.device)
    model = model.to(accelerator.device)
    result = evaluate(
        model,
        ds,
        targets=prepared.targets,
        accelerator=accelerator,
        mode=mode,
        batch_size=batch_size,
        tokenizer=tokenizer,
        collator=Collator(tokenizer.pad_token_id),
        names=space.names,
    )
    result.update(
        model=model_path,
        data=data,
        split=split,
        verbalizer=spec.verbalizer,
        prompt=spec.prompt,
        skipped_rows=len(skipped),
    )
    if output_dir is not None and accelerator.is_main_process:
        write_report(result, Path(output_dir))
        write_skipped(skipped, Path(output_dir))
    return result
