"""What can go wrong mid-run, and what the loop does about it.

- SIGTERM / SIGINT (`StopSignal`): the step in flight is finished, a checkpoint is written, and
  `Preempted` is raised; the script exits 128 + the signal number (143 for SIGTERM). With several
  processes the ranks agree on the stop at every step, so all of them stop after the same step.
  A second SIGINT interrupts at once. A process started by a launcher (`accelerate launch`,
  torchrun) whose launcher dies stops the same way, as on SIGTERM: torch's launcher starts its
  workers in a session of their own, so killing it does not kill them, and they would otherwise
  train on unwatched.
- A non-finite loss or gradient norm (`StepCounters`): that update is skipped (parameters and
  optimizer state unchanged), counted and logged; `--max-bad-steps` in a row raise `NonFiniteError`.
  A NaN or inf loss always makes the gradient norm non-finite, so the (global) norm is what is
  tested: it is the same number on every rank, so every rank skips the same updates. The counts stay
  on the device; the host reads them at log steps and every `--max-bad-steps` steps (one sync then).
- SIGTERM / SIGINT during an evaluation (`interruptible`): it stops at once with `Interrupted`, whose
  one line says what was kept (the trained model is saved before the final evaluation). With several
  processes, an evaluation during training stops where they agree (`StopSignal.check`, between two
  chunks of examples): one that stopped alone would leave the others waiting for it.
- SIGTERM / SIGINT while the data is prepared (`interruptible(PREPARING)`): one line, and the
  processes that tokenize are ended with it (a process killed outright would leave them behind).
- Out of GPU memory (`oom_hint`): `OutOfMemory` names the micro-batch and a smaller --batch-size
  with a larger --grad-accum that keeps the effective batch.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from flant5_imdb.checkpoint import TrainState

logger = logging.getLogger(__name__)


class Preempted(RuntimeError):
    def __init__(self, signum: int, step: int, checkpoint, reason: str | None = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        why = reason or f"preempted by {signal.Signals(signum).name}"
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint (--keep-checkpoints 0)"
        super().__init__(f"{why} after step {step}; {where}; continue with --resume auto")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class NonFiniteError(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM arrived during work that stops at once (an evaluation); the message says what
    was kept. The script exits 128 + the signal number, with that one line."""

    def __init__(self, signum: int, message: str):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} {message}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Signals:
    """A context manager that hands SIGTERM and SIGINT to `self._handle` inside its block and restores the
    handlers in place before after it; off the main thread (where Python allows no handler) it changes
    nothing."""

    _previous: dict

    def __enter__(self):
        self._previous, self._pid = {}, os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._dispatch)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _dispatch(self, signum, frame):
        if os.getpid() != self._pid:
            # A process forked inside the block (a worker that tokenizes) has the handler too: it reacts as
            # it would without it (ended by SIGTERM), or a pool that ends its workers would wait for good.
            signal.signal(signum, self._previous[signum])
            os.kill(os.getpid(), signum)
            return
        self._handle(signum, frame)

    def _handle(self, signum, frame):
        raise NotImplementedError


# What a stop while the data is read and tokenized says (a data cache entry is kept whole or not at all).
PREPARING = (
    "while preparing the data; the same command prepares it again, taking what was finished from the "
    "data cache"
)


class interruptible(_Signals):  # noqa: N801 - used as a context manager, like torch.no_grad
    """SIGINT/SIGTERM inside the block raise `Interrupted(signum, message)` at once: for an evaluation,
    which keeps nothing by running on (a Ctrl-C would otherwise end in a traceback, a SIGTERM in
    silence)."""

    def __init__(self, message: str):
        self.message, self.signum = message, 0

    def _handle(self, signum, frame):
        self.signum = signum
        raise Interrupted(signum, self.message)

    def __exit__(self, exc_type, exc, tb):
        super().__exit__(exc_type, exc, tb)
        # Code that cleans up on the way out may raise an error of its own in place of the stop (datasets'
        # worker pool, for one, a TimeoutError): the stop is what happened, and what is said.
        if self.signum and exc is not None and not isinstance(exc, Interrupted):
            raise Interrupted(self.signum, self.message) from exc
        return False


class OutOfMemory(RuntimeError):
    pass


class StopSignal(_Signals):
    """Context manager: SIGTERM/SIGINT set a flag that the loop reads between optimizer steps."""

    # Set in the environment of the processes a launcher starts: torch's elastic agent (accelerate
    # launch with several processes, torchrun) and accelerate's single-process launcher.
    LAUNCHED = ("TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        # Two values, so that no signal is lost: `received` is written only by the handler (and by the
        # loop for an interrupted evaluation), `signum` is what the processes agreed on. A signal that
        # lands while this process waits in the agreement is kept in `received` for the next step's
        # agreement; written into the agreed value, the agreement's result would overwrite it.
        self.received = 0
        self.signum = 0
        self.reason: str | None = None
        self._launcher = os.getppid() if any(k in os.environ for k in self.LAUNCHED) else None
        # A host-side group for the per-step agreement: on GPUs the default group is NCCL, whose
        # collectives would put a device sync into every step.
        self._group = None
        if accelerator.num_processes > 1:
            backend = torch.distributed.get_backend()
            self._group = None if backend == "gloo" else torch.distributed.new_group(backend="gloo")

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum

    def requested(self) -> bool:
        """Whether any process was signalled or lost its launcher (all processes return the same answer)."""
        if self._launcher is not None and not self.received and os.getppid() != self._launcher:
            self.received = signal.SIGTERM
            self.reason = f"stopped: the launcher (pid {self._launcher}) is gone"
        if self.accelerator.num_processes == 1:
            self.signum = self.received
            return self.signum != 0
        flag = torch.tensor([self.received], dtype=torch.int64)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        self.signum = int(flag.item())
        return self.signum != 0

    def check(self, message: str) -> None:
        """Raises `Interrupted(signum, message)` where any process was signalled: for work the processes
        share (an evaluation), called by every one at the same point, so that all of them stop there (one
        that stopped alone would leave the others waiting for it in the work's next gather)."""
        if self.requested():
            raise Interrupted(self.signum, message)


class StepCounters:
    """Per-step counts kept on the device (no host sync), copied into the TrainState when one is needed."""

    def __init__(self, device, state: TrainState, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.tokens = torch.tensor(float(state.target_tokens_seen), device=device, dtype=torch.float64)
        self.skipped = torch.tensor(float(state.skipped_steps), device=device)
        self.streak = torch.zeros((), device=device)
        self.worst_streak = torch.zeros((), device=device)

    def update(self, n_tokens: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """Count this step; returns 1.0 (as a device tensor) if its update must be skipped, else 0.0."""
        self.tokens += n_tokens
        bad = (~torch.isfinite(grad_norm)).float()
        self.skipped += bad
        self.streak = (self.streak + bad) * bad
        self.worst_streak = torch.maximum(self.worst_streak, self.streak)
        return bad

    def sync_and_check(self, state: TrainState) -> None:
        """Copy the counters to `state` (a host sync); raise after `max_bad_steps` bad updates in a row."""
        state.target_tokens_seen = int(self.tokens.item())
        state.skipped_steps = int(self.skipped.item())
        if self.max_bad_steps and self.worst_streak.item() >= self.max_bad_steps:
            raise NonFiniteError(
                f"{int(self.worst_streak.item())} updates in a row had a non-finite loss or gradient norm "
                f"(--max-bad-steps {self.max_bad_steps}) by step {state.step}; the last good checkpoint is "
                "kept. "
                "Try a lower --lr, --precision fp32, or --max-grad-norm 1.0"
            )


class oom_hint:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Turn a CUDA out-of-memory error on a micro-batch of `shape` into a message with the fix."""

    def __init__(self, shape, batch_size: int, grad_accum: int):
        self.shape, self.batch_size, self.grad_accum = tuple(shape), batch_size, grad_accum

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, torch.OutOfMemoryError):
            bs, acc = self.batch_size, self.grad_accum
            smaller = max(1, bs // 2)
            raise OutOfMemory(
                f"out of GPU memory on a micro-batch of {self.shape[0]} x {self.shape[1]} tokens "
                f"(--batch-size {bs}); "
                f"for the same effective batch try --batch-size {smaller} --grad-accum {acc * bs // smaller}"
            ) from exc
        return False


def rank_param_checksums(accelerator: Accelerator, model) -> list[float]:
    """The float64 sum of every parameter, one per process: equal on all ranks unless DDP went wrong."""
    params = accelerator.unwrap_model(model).parameters()
    # FSDP shards are DTensors: sum the full tensor, which every rank then holds alike.
    local = sum(
        float((p.full_tensor() if hasattr(p, "full_tensor") else p).detach().double().sum()) for p in params
    )
    sums = gather_object([local])
    if len(set(sums)) > 1:
        logger.warning("parameters differ across processes after training: checksums %s", sums)
    return sums
