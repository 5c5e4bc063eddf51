"""What the loop reports as it goes: the metrics window (loss and throughput since the last line) and
`metrics.jsonl` with any `--report-to` tracker; `maybe_log` writes a line every `--log-every` steps."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from flant5_imdb.checkpoint import TrainState
from flant5_imdb.guards import StepCounters

logger = logging.getLogger(__name__)


class Window:
    """What the next metrics line summarises: the loss and token totals since the last line (kept on
    the device until a log asks for them), the samples and the training clock at the last line.

    All of it is part of a checkpoint (`save_into`), per process, so that a resumed run logs the
    lines an uninterrupted one would, bit for bit. The clock counts time spent training, summed
    over the processes that did the run's steps: a resumed run's throughput leaves out the time
    between a kill and the restart.
    """

    def __init__(self, accelerator: Accelerator, state: TrainState):
        self.accelerator = accelerator
        loss, tokens = state.window[accelerator.process_index] if state.window else (0.0, 0)
        self.loss = torch.full((), loss, device=accelerator.device, dtype=torch.float32)
        self.tokens = tokens
        self.last_step, self.last_samples, self.last_seconds = (
            state.last_log_step,
            state.last_log_samples,
            state.last_log_seconds,
        )
        self.base_seconds = state.train_seconds
        self.started = time.perf_counter()
        self.last_loss: float | None = None

    def add(self, loss_sum: torch.Tensor, tokens: int) -> None:
        self.loss += loss_sum
        self.tokens += tokens

    def seconds(self) -> float:
        """Training time of the whole run so far (this process's plus what its checkpoint carried)."""
        return self.base_seconds + self.this_process_seconds()

    def this_process_seconds(self) -> float:
        return time.perf_counter() - self.started

    def drain(self, step: int, samples_seen: int) -> tuple[float, float]:
        """(mean token loss over the window on all processes, samples/s since the last line); a host sync."""
        totals = self.accelerator.reduce(
            torch.stack([self.loss, self.loss.new_tensor(float(self.tokens))]), "sum"
        )
        loss, tokens = totals.tolist()
        self.loss.zero_()
        self.tokens = 0
        if tokens:
            self.last_loss = loss / tokens
        now = self.seconds()
        rate = (samples_seen - self.last_samples) / max(now - self.last_seconds, 1e-9)
        self.last_step, self.last_samples, self.last_seconds = step, samples_seen, now
        return (loss / tokens if tokens else float("nan")), rate

    def save_into(self, state: TrainState) -> None:
        """Copy the window into `state` for a checkpoint: every process's loss and tokens (a host sync)."""
        state.window = gather_object([[self.loss.item(), self.tokens]])
        state.train_seconds = self.seconds()
        state.last_log_step, state.last_log_samples, state.last_log_seconds = (
            self.last_step,
            self.last_samples,
            self.last_seconds,
        )


class MetricsLog:
    """`metrics.jsonl` (one JSON object per line, main process only) and any --report-to tracker."""

    def __init__(self, path: Path, accelerator: Accelerator):
        self.path, self.accelerator = path, accelerator
        self.f = None

    def __enter__(self):
        if self.accelerator.is_main_process:
            self.f = open(self.path, "a", buffering=1)  # noqa: SIM115 - open for the whole run
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()
            self.f = None
        return False

    def write(self, **row) -> None:
        if self.f is not None:
            self.f.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def logging_due(cfg, state: TrainState, last: bool = False) -> bool:
    """Whether this step writes a line: every `log_every` steps, at step 1, and with `last` (a run's end)."""
    return last or state.step % cfg.log_every == 0 or state.step == 1


def maybe_check_updates(cfg, state: TrainState, counters: StepCounters, last: bool = False) -> None:
    """The non-finite updates counted on the device, read (a host sync) where a line is logged and at
    least every `max_bad_steps` steps; newly skipped ones warned about.

    Raises:
        NonFiniteError: `max_bad_steps` updates in a row were skipped.
    """
    if not (logging_due(cfg, state, last) or state.step % cfg.max_bad_steps == 0):
        return
    skipped_before = state.skipped_steps
    counters.sync_and_check(state)
    if state.skipped_steps > skipped_before:
        logger.warning(
            "skipped %d update(s) with a non-finite loss or gradient norm by step %d (%d in all)",
            state.skipped_steps - skipped_before,
            state.step,
            state.skipped_steps,
        )


def maybe_log(cfg, state: TrainState, window: Window, log: MetricsLog, bar, *, lr, grad_norm,
              last: bool = False) -> None:  # fmt: skip
    """A metrics line (and the progress bar's figures) where one is due (`logging_due`); with `last`, the
    steps since the last line (a run's end: the last window, however short). Call after
    `maybe_check_updates`, whose count of skipped updates the line carries."""
    if (last and window.last_step == state.step) or not logging_due(cfg, state, last):
        return
    loss, samples_per_s = window.drain(state.step, state.samples_seen)
    row = dict(
        step=state.step,
        epoch=state.epoch,
        loss=loss,
        lr=lr,
        grad_norm=float(grad_norm),
        skipped_steps=state.skipped_steps,
        samples_per_s=samples_per_s,
    )
    log.write(**row)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.1f}")


class StreamProgress:
    """How far a long job over a stream of items has got, on stderr: redrawn in place on a terminal, and
    elsewhere (a file, a pipe, a job's log) a line every `every` seconds, so that a log shows it too.

    `predict: 12,288 / 1,000,000 texts (1.2%), 210 texts/s, about 1 h 18 min left`
    """

    def __init__(self, what: str, total: int | None = None, *, done: int = 0, unit: str = "texts",
                 stream=None, every: float = 30.0, enabled: bool = True):  # fmt: skip
        self.what, self.total, self.unit, self.enabled = what, total, unit, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = 0.5 if self.tty else every
        self.done, self.start_done = done, done
        self.started = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self._show(end="\r" if self.tty else "\n")

    def close(self) -> None:
        if self.enabled:
            self._show(end="\n")

    def line(self) -> str:
        seconds = time.perf_counter() - self.started
        rate = (self.done - self.start_done) / seconds if seconds > 0 else 0.0
        text = f"{self.what}: {self.done:,}"
        if self.total:
            text += f" / {self.total:,} {self.unit} ({100 * self.done / self.total:.1f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:,.0f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {duration((self.total - self.done) / rate)} left"
        return text

    def _show(self, end: str) -> None:
        print(self.line().ljust(79) if self.tty else self.line(), end=end, file=self.stream, flush=True)


def duration(seconds: float, tenths: bool = False) -> str:
    """`42 s` (`41.7 s` with `tenths`), `3 min 5 s`, `1 h 18 min`."""
    if tenths and seconds < 59.95:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
