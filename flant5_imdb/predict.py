"""Inference on new text: `Classifier(model_dir).predict(texts)`.

Reviews are length-sorted into batches and scored as in `evaluate`'s `score` mode: the label with
the higher log-likelihood wins; `prob_positive` is the softmax over the two labels' scores.
The verbalizer, prompt and truncation are those the model was trained with (read from the
`flant5_imdb.json` saved beside it) unless given.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from flant5_imdb.data import prompt_template, target_ids
from flant5_imdb.evaluate import CLASS_NAMES, score_batch
from flant5_imdb.modeling import load_trained
from flant5_imdb.sampler import Collator


class InputError(ValueError):
    """Input texts that cannot be classified; the message names the file and line."""


@dataclass(frozen=True)
class Prediction:
    label: int
    label_name: str
    prob_positive: float


class Classifier:
    def __init__(self, model: str, *, verbalizer: str | None = None, prompt: str | None = None,
                 max_source_length: int | None = None, batch_size: int = 32, device: str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, settings = load_trained(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        self.targets = target_ids(self.tokenizer, verbalizer or settings.get("verbalizer", "digits"))
        self.template = prompt_template(prompt if prompt is not None else settings.get("prompt"))
        self.max_source_length = max_source_length or settings.get("max_source_length", 512)
        self.batch_size = batch_size
        self.collate = Collator(pad_token_id=self.tokenizer.pad_token_id)

    @torch.no_grad()
    def predict(self, texts: list[str]) -> list[Prediction]:
        """One prediction per text, in input order.

        Raises:
            InputError: a text is empty or not a string (named by its 1-based position).
        """
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"text {i + 1} is empty")
        enc = self.tokenizer([self.template.format(text=t) for t in texts], truncation=True, max_length=self.max_source_length)
        order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
        out: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.collate([{"input_ids": enc["input_ids"][i], "labels": [0]} for i in idx])
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
            scores, _, _ = score_batch(self.model, batch, self.targets)
            probs = torch.softmax(scores, -1)[:, 1].tolist()
            for i, p, y in zip(idx, probs, scores.argmax(-1).tolist(), strict=True):
                out[i] = Prediction(label=y, label_name=CLASS_NAMES[y], prob_positive=p)
        return out


def read_texts(path: str | None, lines: Iterable[str] | None = None) -> list[str]:
    """Reviews from a .txt (one a line), .csv or .jsonl (a `text` column) file, or from `lines` (stdin).

    Everything is read and checked before anything is predicted, so a bad input produces no output.

    Raises:
        InputError: naming the file and line of the first problem.
    """
    name = path or "<stdin>"
    if path is not None and not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    suffix = Path(path).suffix if path else ".txt"
    if suffix in (".txt", ""):
        rows = list(lines) if lines is not None else Path(path).read_text(encoding="utf-8").splitlines()
        texts = [r.rstrip("\n") for r in rows]
        for i, t in enumerate(texts):
            if not t.strip():
                raise InputError(f"{name} line {i + 1}: empty review")
        return texts
    if suffix == ".jsonl":
        texts = []
        for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{name} line {i + 1}: not JSON ({e.msg})") from e
            texts.append(_text_of(row, name, f"line {i + 1}"))
        return texts
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "text" not in (reader.fieldnames or []):
                raise InputError(f"{name}: no 'text' column (found: {', '.join(reader.fieldnames or [])})")
            return [_text_of(row, name, f"row {i + 1}") for i, row in enumerate(reader)]
    raise InputError(f"{name}: unsupported file type '{suffix}' (use .txt, .csv or .jsonl)")


def _text_of(row, name: str, where: str) -> str:
    if not isinstance(row, dict) or "text" not in row:
        raise InputError(f"{name} {where}: no 'text' field")
    if not isinstance(row["text"], str) or not row["text"].strip():
        raise InputError(f"{name} {where}: empty review")
    return row["text"]
