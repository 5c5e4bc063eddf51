"""Training progress. Kept here, never on the config: the config says what to do, this says how far we got."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch in progress (the sampler holds the position inside it)
    samples_seen: int = 0  # training examples, all processes
    target_tokens_seen: int = 0  # non-padding target tokens, all processes

    def to_dict(self) -> dict:
        return asdict(self)
