"""Inference on new text: `Classifier(model_dir).predict(texts)`.

Texts are length-sorted into batches and scored as in `evaluate`'s `score` mode: the class with
the highest log-likelihood wins; `probs` is the softmax over the classes' scores. The classes,
verbalizer, prompt and truncation are those the model was trained with (read from the
`flant5_imdb.json` saved beside it) unless given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flant5_imdb import hub
from flant5_imdb.accel import cpu_threads
from flant5_imdb.data import Collator, prompt_template, target_ids, text_problem
from flant5_imdb.evaluate import score_batch
from flant5_imdb.modeling import load_trained


class InputError(ValueError):
    """Input texts that cannot be classified; the message names the file and line."""


@dataclass(frozen=True)
class Prediction:
    label: int  # the class's index
    label_name: str
    probs: dict[str, float]  # every class's probability, by name

    @property
    def prob(self) -> float:
        """The probability of the predicted class."""
        return self.probs[self.label_name]


class Classifier:
    def __init__(
        self,
        model: str,
        *,
        verbalizer: str | None = None,
        prompt: str | None = None,
        max_source_length: int | None = None,
        batch_size: int = 32,
        device: str | None = None,
        threads: str = "auto",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        hub.preflight(hub.needs(model=model))
        self.model, self.tokenizer, settings = load_trained(
            model, verbalizer=verbalizer, prompt=prompt, max_source_length=max_source_length
        )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cpu_threads(threads, sum(p.numel() for p in self.model.parameters()), self.device)
        self.model.to(self.device).eval()
        self.labels = settings["labels"]
        self.targets = target_ids(self.tokenizer, settings["verbalizer"], self.labels)
        self.template = prompt_template(settings["prompt"])
        self.max_source_length = settings["max_source_length"]
        self.batch_size = batch_size
        self.collate = Collator(pad_token_id=self.tokenizer.pad_token_id)

    @torch.no_grad()
    def predict(self, texts: str | list[str]) -> Prediction | list[Prediction]:
        """One prediction per text, in input order; a single string gives a single Prediction.

        Raises:
            InputError: a text is empty or not a string (named by its 1-based position).
        """
        if isinstance(texts, str):
            return self.predict([texts])[0]
        for i, t in enumerate(texts):
            problem = text_problem(t)
            if problem:
                raise InputError(f"text {i + 1}: {problem}")
        enc = self.tokenizer(
            [self.template.format(text=t) for t in texts], truncation=True, max_length=self.max_source_length
        )
        order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
        out: list[Prediction | None] = [None] * len(texts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.collate([{"input_ids": enc["input_ids"][i], "labels": [0]} for i in idx])
            batch = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
            scores, _, _ = score_batch(self.model, batch, self.targets)
            probs = torch.softmax(scores.float(), -1).tolist()
            names = self.labels.names
            for i, p, y in zip(idx, probs, scores.argmax(-1).tolist(), strict=True):
                out[i] = Prediction(label=y, label_name=names[y], probs=dict(zip(names, p, strict=True)))
        return out
