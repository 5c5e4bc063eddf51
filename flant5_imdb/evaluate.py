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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers.modeling_outputs import BaseModelOutput

from flant5_imdb import hub
from flant5_imdb.accel import cpu_threads, main_first, make_accelerator, run_on
from flant5_imdb.data import IMDB, Collator, Columns
from flant5_imdb.guards import PREPARING, interruptible
from flant5_imdb.modeling import load_trained, source_mask
from flant5_imdb.rundir import refuse_held_evaluation

if TYPE_CHECKING:  # an annotation only: prediction imports this module and needs no datasets
    from datasets import Dataset

logger = logging.getLogger(__name__)


CHUNK = 4096  # examples (or texts) in hand at a time: sorted by length, dealt out, gathered, written


def deal(lengths, batch_size: int, state) -> list[list[int]]:
    """This process's batches of a chunk: its positions sorted longest first (little padding; within a
    chunk, memory peaks early), cut into batches, and the batches dealt to the processes in turn
    (accelerate's split over that order). The batches are the same whatever the number of
    processes, so many processes compute, bit for bit, what one does."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    dealt = [b for rank in range(state.num_processes) for b in batches[rank :: state.num_processes]]
    with state.split_between_processes(dealt) as mine:
        return list(mine)


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


SCORE_BYTES = 1 << 28  # the most one decoder pass over (example, class) rows may hold: 256 MiB


def whole_target_scores(
    model, hidden: torch.Tensor, mask: torch.Tensor, targets: list[list[int]]
) -> torch.Tensor:
    """[B, N]: the summed log-probability of each of the N targets (any lengths), in as few decoder passes
    as memory allows.

    Row b * N + n is example b with target n, under example b's encoder output. The rows go through
    the decoder in slices sized so that a slice's copies of the encoder output and its logits stay
    within SCORE_BYTES: 2 classes or 10,000, the memory is that of one slice.
    """
    batch, n = hidden.shape[0], len(targets)
    width = max(len(t) for t in targets)
    table = torch.full((n, width), -100, dtype=torch.long, device=hidden.device)
    for i, t in enumerate(targets):
        table[i, : len(t)] = torch.tensor(t, device=hidden.device)
    # Per row: the encoder output it is given, and its logits with their log-softmax (float32).
    row_bytes = hidden[0].numel() * 4 * 2 + width * model.config.vocab_size * 4 * 3
    per_pass = max(1, SCORE_BYTES // row_bytes)
    out = torch.empty(batch * n, device=hidden.device)
    for start in range(0, batch * n, per_pass):
        rows = torch.arange(start, min(start + per_pass, batch * n), device=hidden.device)
        example, labels = rows // n, table[rows % n]
        logits = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden[example]),
            attention_mask=mask[example],
            decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels),
        ).logits.float()
        token_logp = F.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out[rows] = token_logp.masked_fill(labels == -100, 0.0).sum(-1)
        del logits, token_logp
    return out.reshape(batch, n)


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
    names: tuple[str, ...],
    predictions: Path | None = None,
    between_chunks: Callable[[], None] | None = None,
) -> dict:
    """Evaluate on `ds` (tokenized, with `label` and `id`), sharded over the processes, CHUNK rows at a
    time: the metrics are counted as the chunks come and nothing grows with the number of rows.

    `predictions`: a JSON-lines file the main process writes as it goes, one row per example in the
    order of `ds` (`prediction_row`), under a temporary name until the last row is in. Returns the
    metrics (see `metrics`) plus `eval_seconds` and `examples_per_s`. Every process returns the same.
    `between_chunks`: called by every process between two chunks, at the same point (where several
    processes can agree to stop: it may raise).
    """
    collator = collator or Collator()
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    start = time.perf_counter()
    counts, loss_sum, n_tok, out = Counter(), 0.0, 0, None
    # The main process writes; where that fails, every process stops (main_first), none waits for it.
    with main_first(accelerator):
        if predictions is not None and accelerator.is_main_process:
            out = _Lines(predictions)
    try:
        with tqdm(total=len(ds), desc=f"eval ({mode})", unit="ex", leave=False,
                  disable=not accelerator.is_local_main_process) as bar:  # fmt: skip
            for first in range(0, len(ds), CHUNK):
                if first and between_chunks is not None:
                    between_chunks()
                chunk = ds[first : first + CHUNK]
                mine, ls, nt = predict_chunk(unwrapped, chunk, mode=mode, batch_size=batch_size,
                                             targets=targets, tokenizer=tokenizer, collator=collator,
                                             names=names, accelerator=accelerator)  # fmt: skip
                loss_sum, n_tok = loss_sum + ls, n_tok + nt
                rows = [row for _, row in sorted(gather_object(mine), key=lambda r: r[0])]
                counts.update((r["label"], r["pred"]) for r in rows)
                with main_first(accelerator):
                    if out is not None:
                        out.write(rows)
                bar.update(len(rows))
        with main_first(accelerator):
            if out is not None:
                out.close()
    finally:
        if out is not None:
            out.discard()  # a no-op once closed
    result = _result(counts, names, loss_sum, n_tok, mode, time.perf_counter() - start)
    if was_training:
        unwrapped.train()
    return result


def _result(counts: Counter, names, loss_sum: float, n_tok: int, mode: str, seconds: float) -> dict:
    """The metrics of the (label, prediction) `counts`, and the loss over every process's targets."""
    losses = gather_object([(loss_sum, n_tok)])
    total_tok = sum(n for _, n in losses)
    result = metrics_from_counts(counts, names)
    eval_loss = sum(s for s, _ in losses) / total_tok if total_tok else None
    result.update(mode=mode, eval_loss=eval_loss, eval_seconds=seconds, examples_per_s=result["n"] / seconds)
    return result


def predict_chunk(model, chunk: dict, *, mode, batch_size, targets, tokenizer, collator, names, accelerator):
    """This process's share of one chunk of rows: [(position in the chunk, prediction row)], and (score
    mode) the chunk's summed target loss and target tokens."""
    mine, loss_sum, n_tok = [], 0.0, 0
    for idx in deal(chunk["length"], batch_size, accelerator):
        rows = {k: [chunk[k][i] for i in idx] for k in ("input_ids", "labels")}
        batch = {k: v.to(accelerator.device) for k, v in collator.from_columns(rows).items()}
        with accelerator.autocast():
            if mode == "score":
                scores, ls, nt = score_batch(model, batch, targets)
                pred = scores.argmax(-1).cpu()
                probs = torch.softmax(scores.float(), -1).cpu()
                loss_sum, n_tok = loss_sum + ls.item(), n_tok + int(nt)
            else:  # greedy decoding gives no distribution: all of it on what was written
                pred = generate_batch(model, batch, targets, tokenizer)
                probs = F.one_hot(pred.clamp(min=0), len(targets)).float()
                probs *= (pred >= 0).float()[:, None]
        mine += [
            (i, prediction_row(int(chunk["id"][i]), int(chunk["label"][i]), p, q, names))
            for i, p, q in zip(idx, pred.tolist(), probs.tolist(), strict=True)
        ]
    return mine, loss_sum, n_tok


class _Lines:
    """A JSON-lines file written as it goes under `NAME.partial`, renamed to NAME once complete: a file
    under its own name is never half-written."""

    def __init__(self, path: Path):
        self.path, self.partial = Path(path), Path(f"{path}.partial")
        self.file = open(self.partial, "w")  # noqa: SIM115 - closed by close() or discard()

    def write(self, rows: list[dict]) -> None:
        self.file.write("".join(json.dumps(r) + "\n" for r in rows))
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        self.partial.replace(self.path)

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
            self.partial.unlink(missing_ok=True)


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


def metrics(y_true: list[int], y_pred: list[int], names: tuple[str, ...]) -> dict:
    """The metrics of `metrics_from_counts` from the labels and predictions themselves."""
    return metrics_from_counts(Counter(zip(y_true, y_pred, strict=True)), names)


def metrics_from_counts(counts: Counter, names: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1 (the baseline's "F1"), per-class report and confusion counts, from how many
    examples of each true class got each prediction (`counts[true, predicted]`): what an evaluation of
    any size keeps. A prediction of -1 (generated text that is no class's target) counts as wrong.

    The values are scikit-learn's, given each (true, predicted) pair once with its count as the sample
    weight: integer weights sum exactly, so they equal what the examples one by one would give.
    Per-class scores and macro-F1 are over the classes present: in the true labels or in the
    predictions. A class of the model that the evaluation data never holds (and the model never
    predicts) has no F1 to average: it is named in `classes_not_in_data`, not counted as 0.
    The N x N `confusion_matrix` is kept up to MAX_MATRIX_CLASSES classes; beyond that it is None,
    and `confusion_counts` ([true, predicted, count] for every nonzero cell) and `top_confusions`
    say the same in a size that grows with the examples, not with N squared.
    """
    # Here, not at the top: prediction imports this module, and scikit-learn costs it ~130 MB and 2 s.
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    pairs = sorted(counts.items())
    y_true, y_pred, weight = [t for (t, _), _ in pairs], [p for (_, p), _ in pairs], [n for _, n in pairs]
    in_data = set(y_true)
    present = sorted(in_data | {p for p in y_pred if p >= 0})
    cells = {(t, p): n for (t, p), n in pairs if p >= 0}
    confusions = sorted(
        ((n, t, p) for (t, p), n in cells.items() if t != p), key=lambda c: (-c[0], c[1], c[2])
    )
    matrix = None
    if len(names) <= MAX_MATRIX_CLASSES:  # a -1 prediction is in no cell
        matrix = [[cells.get((t, p), 0) for p in range(len(names))] for t in range(len(names))]
    report = classification_report(
        y_true, y_pred, labels=present, target_names=[names[i] for i in present], sample_weight=weight,
        output_dict=True, zero_division=0,
    )  # fmt: skip
    for scores in report.values():  # weighted supports come back as floats: they are counts
        if isinstance(scores, dict) and "support" in scores:
            scores["support"] = int(scores["support"])
    n = sum(weight)
    return dict(
        names=list(names),
        n=n,
        accuracy=float(accuracy_score(y_true, y_pred, sample_weight=weight)) if n else 0.0,
        macro_f1=float(f1_score(y_true, y_pred, labels=present, average="macro", sample_weight=weight,
                                zero_division=0)) if n else 0.0,
        unparseable=sum(c for (_, p), c in pairs if p == -1),
        classes_not_in_data=[names[i] for i in range(len(names)) if i not in in_data],
        report=report,
        confusion_matrix=matrix,
        confusion_counts=[[t, p, c] for (t, p), c in sorted(cells.items())],
        top_confusions=[dict(true=names[t], predicted=names[p], count=c) for c, t, p in confusions[:20]],
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
    """`name.json` (the metrics) and `name.txt` (the table); `evaluate` writes `name_predictions.jsonl`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{name}.txt").write_text(format_report(result) + "\n")


def load_for_evaluation(model_path: str, data: str, *, split, columns, skip_bad_rows, max_samples, seed,
                        data_cache, verbalizer, prompt):  # fmt: skip
    """(model, tokenizer, data spec, prepared split) of `evaluate_saved`: the split checked before the model
    is loaded, then read in the model's label space with its verbalizer, prompt and truncation."""
    # The data pipeline (datasets, pyarrow) is imported here: prediction imports this module, not it.
    from flant5_imdb.data import DataSpec, check_splits, prepare

    spec = DataSpec(data, columns, train_split=None, eval_split=split, eval_flag="--split",
                    skip_bad_rows=skip_bad_rows, max_eval_samples=max_samples, seed=seed,
                    data_cache=data_cache)  # fmt: skip
    check_splits(spec)  # before the model is loaded: a split that is not there fails now
    hub.preflight(hub.needs(model=model_path, data=data))
    model, tokenizer, settings = load_trained(model_path, verbalizer=verbalizer, prompt=prompt)
    spec = dataclasses.replace(spec, verbalizer=settings["verbalizer"], prompt=settings["prompt"],
                               max_source_length=settings["max_source_length"])  # fmt: skip
    # Only the split evaluated is read, in the model's label space.
    with interruptible(PREPARING):  # unwound, so that the tokenizing processes are ended too
        return model, tokenizer, spec, prepare(spec, lambda *_: tokenizer, classes=settings["classes"])


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
    overwrite: bool = False,
    data_cache: str | None = None,
) -> dict:
    """Evaluate a saved model (final/, a checkpoint, or a Hub id such as google/flan-t5-base zero-shot).

    Verbalizer, prompt and truncation default to those the model was trained with. Writes
    eval.json / eval.txt / eval_predictions.jsonl into `output_dir` if given: a folder that holds an
    evaluation already is refused unless `overwrite`.

    Raises:
        DataError: the data or split is unusable.
        ValueError: the model cannot be loaded, or `output_dir` holds an evaluation.
    """
    refuse_before_loading(batch_size, max_samples, output_dir, overwrite)
    model, tokenizer, spec, prepared = load_for_evaluation(
        model_path, data, split=split, columns=columns, skip_bad_rows=skip_bad_rows, max_samples=max_samples,
        seed=seed, data_cache=data_cache, verbalizer=verbalizer, prompt=prompt,
    )  # fmt: skip
    ds, space, skipped = prepared.eval, prepared.classes, prepared.skipped
    accelerator = make_accelerator(precision)
    n = cpu_threads(threads, sum(p.numel() for p in model.parameters()), accelerator.device)
    logger.info("evaluating %d examples on %s", len(ds), run_on(accelerator.device, n, precision,
                                                                accelerator.num_processes))  # fmt: skip
    model = model.to(accelerator.device)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    predictions = out / "eval_predictions.jsonl" if out is not None else None
    # An evaluation does not resume: what it wrote so far goes (a report is written whole or not at all).
    stopped = "during the evaluation; nothing was written (--max-eval-samples N evaluates a part)"
    with interruptible(stopped):
        result = evaluate(model, ds, targets=prepared.target_ids, accelerator=accelerator, mode=mode,
                          batch_size=batch_size, tokenizer=tokenizer, names=space.names,
                          collator=Collator(tokenizer.pad_token_id), predictions=predictions)  # fmt: skip
    result.update(model=model_path, data=data, split=split, verbalizer=spec.verbalizer, prompt=spec.prompt,
                  skipped_rows=len(skipped))  # fmt: skip
    if out is not None and accelerator.is_main_process:
        from flant5_imdb.data import write_skipped

        write_report(result, out)
        write_skipped(skipped, out)
    return result


def refuse_before_loading(batch_size: int, max_samples: int | None, output_dir, overwrite: bool) -> None:
    """`evaluate_saved`'s arguments refused before anything is loaded: a size under 1, or an output folder
    that holds an evaluation already (unless `overwrite`)."""
    for name, value in (("--batch-size", batch_size), ("--max-eval-samples", max_samples)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if output_dir is not None and not overwrite:
        refuse_held_evaluation(output_dir)
