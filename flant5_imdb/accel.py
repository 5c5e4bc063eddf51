"""The one place an `Accelerator` is made, with the two accelerate behaviours this project works around."""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

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
    accelerator = Accelerator(
        mixed_precision="bf16" if precision == "bf16" else "no",
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        **kwargs,
    )
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        logger.warning(
            "FSDP was asked for, but there is no CUDA: running as %s (gloo DDP) instead",
            accelerator.distributed_type,
        )
    return accelerator
