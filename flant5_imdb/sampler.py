"""Which examples each optimizer step sees, on each rank.

`StepSampler` plans a whole epoch at once, identically on every rank (it depends only on the
seed, the epoch and the lengths), then hands each rank its share of every optimizer step:
`grad_accum` micro-batches of at most `batch_size` examples. Planning by optimizer step rather
than by micro-batch means an accumulation window never straddles an epoch or a checkpoint.

Length grouping: shuffle, cut into mega-batches of `mega_batch_steps` optimizer steps, sort each
by length, cut into steps, shuffle the full steps. Micro-batches of similar length are dealt out
round-robin, so at each micro-step every rank holds examples of about the same length.

The last step of an epoch may be short. Its examples are spread over the `world * grad_accum`
slots as evenly as possible; a slot can be empty (fewer examples than slots), and the training
loop then runs a zero-weight filler so that every rank still takes part in every collective.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepPlan:
    """One optimizer step for one rank."""

    micro_batches: list[list[int]]  # len == grad_accum; a list may be empty (see module doc)
    global_examples: int  # examples in this step across all ranks and micro-batches
    global_tokens: int  # their source tokens (no padding): what a benchmark counts as real work


class StepSampler:
    """Deterministic, distributed, resumable plan of optimizer steps.

    Every example is seen exactly once per epoch across all ranks (nothing dropped, nothing
    repeated). `state_dict()` taken after k steps of an epoch resumes at step k + 1 exactly.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        batch_size: int,
        grad_accum: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        group_by_length: bool = True,
        mega_batch_steps: int = 50,
    ):
        if batch_size < 1 or grad_accum < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"bad sampler geometry: batch_size={batch_size} grad_accum={grad_accum} "
                f"rank={rank}/{num_replicas}"
            )
        if not len(lengths):
            raise ValueError("cannot sample from an empty dataset")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.grad_accum = batch_size, grad_accum
        self.num_replicas, self.rank = num_replicas, rank
        self.seed, self.group_by_length = seed, group_by_length
        self.mega_batch_steps = mega_batch_steps
        self.epoch, self.position = 0, 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.num_replicas

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.lengths) // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first step."""
        self.epoch, self.position = epoch, 0

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The global index list of every optimizer step of `epoch` (the same on all ranks)."""
        n, g = len(self.lengths), self.global_batch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        if self.group_by_length:
            mega = g * self.mega_batch_steps
            chunks = [order[i : i + mega] for i in range(0, n, mega)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        steps = [order[i : i + g] for i in range(0, n, g)]
        if self.group_by_length:
            # Shuffle the full steps so that lengths do not drift across the epoch; the short one stays last.
            full = len(steps) if len(steps[-1]) == g else len(steps) - 1
            perm = rng.permutation(full)
            steps = [steps[i] for i in perm] + steps[full:]
        return steps

    def split_step(self, step: np.ndarray) -> StepPlan:
        """This rank's micro-batches of one global step: slot j goes to rank j % world, micro j // world."""
        slots = self.num_replicas * self.grad_accum
        if len(step) == self.global_batch:
            bounds = np.arange(0, len(step) + 1, self.batch_size)
        else:  # the short last step: slot sizes differ by at most one
            sizes = [len(step) // slots + (1 if j < len(step) % slots else 0) for j in range(slots)]
            bounds = np.concatenate([[0], np.cumsum(sizes)])
        micro = [step[bounds[j] : bounds[j + 1]].tolist() for j in range(slots)]
        mine = [micro[m * self.num_replicas + self.rank] for m in range(self.grad_accum)]
        return StepPlan(mine, len(step), int(self.lengths[step].sum()))

    def __iter__(self) -> Iterator[StepPlan]:
        plan = self.epoch_plan(self.epoch)
        while self.position < len(plan):
            step = plan[self.position]
            self.position += (
                1  # counted as consumed once handed out: a checkpoint after it resumes at the next
            )
            yield self.split_step(step)

    def __len__(self) -> int:
        """Steps left in the current epoch."""
        return self.steps_per_epoch - self.position

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "n": len(self.lengths),
            "global_batch": self.global_batch,
            "group_by_length": self.group_by_length,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "n", "global_batch", "group_by_length"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"sampler state was saved with {key}={state[key]}, this run has {key}={mine[key]}"
                )
        self.epoch, self.position = state["epoch"], state["position"]

    def restore(self, state: dict, force: bool) -> None:
        """Continue where `state` (a checkpoint's) left off. With `force` and another batch geometry
        (--force-resume), the epoch in progress continues at the same fraction (its order within the
        epoch changes).

        Raises:
            ValueError: the geometry differs and `force` is off.
        """
        try:
            self.load_state_dict(state)
        except ValueError as e:
            if not force:
                raise
            fraction = state["position"] * state["global_batch"] / state["n"]
            self.set_epoch(state["epoch"])
            self.position = min(round(fraction * self.steps_per_epoch), self.steps_per_epoch)
            logger.warning(
                "--force-resume: %s; continuing epoch %d at step %d of %d",
                e,
                state["epoch"],
                self.position,
                self.steps_per_epoch,
            )
