"""The one place an `Accelerator` is made, with the two accelerate behaviours this project works around;
the main process first (`main_first`); CPU threads."""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState

from flant5_imdb.config import count_or_auto

logger = logging.getLogger(__name__)


def make_accelerator(precision: str, **kwargs) -> Accelerator:
    """An Accelerator for `precision` (bf16 autocast or fp32); `kwargs` go to Accelerator.

    - accelerate keeps mixed precision in a process-wide singleton that refuses a second value;
      training, evaluation and the benchmark may each make one in the same process (benchmarks,
      tests), so the singleton is started afresh. The process group (PartialState) is kept.
    - Several processes and no CUDA (`accelerate launch --multi_gpu` on a CPU machine): accelerate
      only sets up gloo when told to use the CPU; otherwise each process would run alone. FSDP needs
      CUDA, so an FSDP config on such a machine runs as gloo DDP, and says so.
    """
    AcceleratorState._reset_state()
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=_gloo(), **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        logger.warning(
            "FSDP was asked for, but there is no CUDA: running as %s (gloo DDP) instead",
            accelerator.distributed_type,
        )
    return accelerator


def _gloo() -> bool:
    """Whether this is one of several processes on a machine without CUDA (see `make_accelerator`)."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state() -> PartialState:
    """This process's place among those of a launch (or the only one), for work that needs no Accelerator
    (prediction): its index, their number, its device, accelerate's split and gathers."""
    return PartialState(cpu=_gloo())


SMALL_MODEL = 30_000_000  # parameters: below this, one CPU thread is as fast as several, and never slower


def cpu_threads(setting: str | int, parameters: int, device: torch.device) -> int | None:
    """Set torch's intra-op CPU threads for a run of a model of `parameters` on `device`; returns the
    number set (None: a GPU run, left alone).

    `setting` is a number, or `auto`: one thread for a small model, else as many as the cores other
    processes leave idle (the 1-minute load average), never more than torch had. Why: intra-op threads
    spin-wait for one another, so a thread whose core another process holds stalls every operator:
    on a 2-core machine beside one busy process, 40 steps of the tiny model took 26 s with 2 threads
    and 2.7 s with 1.

    Raises:
        ValueError: a setting that is neither `auto` nor a whole number of at least 1.
    """
    if device.type != "cpu":
        return None
    n = count_or_auto("--threads", setting)
    if n is None and parameters < SMALL_MODEL:
        n = 1
    elif n is None:
        others = max(0.0, os.getloadavg()[0] - 1.0)  # this process is one of the runnable ones
        n = max(1, min(torch.get_num_threads(), int((os.cpu_count() or 1) - others)))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


class MainFailed(RuntimeError):
    """The main process failed in a block every process runs after it (`main_first`); it says why."""


@contextlib.contextmanager
def main_first(accelerator: Accelerator):
    """The main process runs the block first, then the others (it fills the datasets cache, or checks the
    output folder, before they read it). If it fails there, the others raise `MainFailed` instead of
    running the block: the error is reported once, by the main process, and no process is left waiting
    at a barrier for a peer that is gone (gloo: a traceback from every other process; NCCL: a hang
    until its timeout)."""
    if accelerator.num_processes == 1:
        yield
        return
    box: list[str | None] = [None]
    if accelerator.is_main_process:
        try:
            yield
        except BaseException as e:
            box = [f"{type(e).__name__}: {e}"]
            raise
        finally:
            torch.distributed.broadcast_object_list(box, src=0)
    else:
        torch.distributed.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise MainFailed(f"the main process stopped: {box[0]}")
        yield
