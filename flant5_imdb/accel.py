"""The one place an `Accelerator` is made, with the two accelerate behaviours this project works around;
the main process first (`main_first`); CPU threads."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import os
import time
from pathlib import Path

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
IDLE_SAMPLE_S = 0.25  # how long the cores are watched to see which are idle
SPARE = 0.3  # a core's worth of idle time short by less than this (a light background task) still counts


def _cpu_times() -> dict[int, tuple[int, int]]:
    """(idle, total) jiffies of each core (/proc/stat's `cpuN` lines); empty where there is no /proc."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            times[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return times


def _usable_cores() -> set[int]:
    """The cores this process may run on (its CPU affinity; every core where the OS has no such call)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


CGROUP_LIMITS = (Path("/sys/fs/cgroup/cpu.max"), Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"))


def cpu_quota() -> int | None:
    """The whole CPUs a container's CPU limit allows this process (cgroup v2 `cpu.max`, or v1's quota and
    period), rounded up; None where there is no limit. /proc/stat and the affinity show the host's cores:
    threads beyond the quota are throttled, and spin-waiting threads stall on each other."""
    v2, v1 = CGROUP_LIMITS
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
        elif v1.is_file():
            quota, period = v1.read_text().strip(), (v1.parent / "cpu.cfs_period_us").read_text().strip()
        else:
            return None
        if quota in ("max", "-1"):
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def idle_cores(seconds: float = IDLE_SAMPLE_S) -> int:
    """How many of this process's cores other processes leave idle now: the idle time of its cores over
    `seconds` (/proc/stat), in whole cores. Summed, not counted core by core: one busy process the
    scheduler moves between two cores leaves each half idle, and still takes one.

    Why not the load average: it trails by a minute or more, so a run started right after a busy one
    (the bench's previous row, a test run) would count cores that are idle again as taken. Where
    /proc/stat cannot be read: the usable cores. Never more than a container's CPU limit (`cpu_quota`)."""
    usable = _usable_cores()
    quota = cpu_quota() or len(usable)
    before = _cpu_times()
    if not before:
        return min(len(usable), quota)
    time.sleep(seconds)
    after = _cpu_times()
    idle = 0.0
    for core in usable & before.keys() & after.keys():
        d_idle, d_total = after[core][0] - before[core][0], after[core][1] - before[core][1]
        idle += d_idle / d_total if d_total > 0 else 1.0  # no ticks at all: a core nothing ran on
    return min(int(idle + SPARE), quota)


def cpu_threads(setting: str | int, parameters: int, device: torch.device) -> int | None:
    """Set torch's intra-op CPU threads for a run of a model of `parameters` on `device`, and flush
    denormal numbers to zero (see below); returns the number of threads set (None: a GPU run, left
    alone).

    `setting` is a number, or `auto`: one thread for a small model, else the cores idle now
    (`idle_cores`) shared among this machine's processes of the launch, never more than torch had.
    Why: intra-op threads spin-wait for one another, so a thread whose core another process holds
    stalls every operator: on a 2-core machine beside one busy process, 40 steps of the tiny model
    took 26 s with 2 threads and 2.7 s with 1.

    Raises:
        ValueError: a setting that is neither `auto` nor a whole number of at least 1.
    """
    if device.type != "cpu":
        return None
    n = count_or_auto("--threads", setting)
    # Numbers below float32's normal range (1.2e-38) flushed to zero: the CPU's matrix products take a
    # slow path on them, and a T5 backward meets them (gradients that small): on flan-t5-small, fp32,
    # batch 8 x 512, one thread, the 4th step's backward took 46 s instead of 5 (aten::mm), and steps
    # like it come and go with the batches. A change below 1.2e-38 and nothing else.
    torch.set_flush_denormal(True)
    if n is None and parameters < SMALL_MODEL:
        n = 1
    elif n is None:
        share = idle_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        n = max(1, min(torch.get_num_threads(), share))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_TRIM = 2**31 - 1  # bytes free at the heap's top before glibc returns them: the most mallopt takes


@functools.cache  # process-wide, set once: a second call answers what the first did
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of returning it to the OS;
    True where it was set (Linux with glibc, the user's own malloc settings absent).

    Why: glibc serves each block over its mmap threshold (at most 32 MB: one attention score tensor of
    flan-t5-small at batch 8 x 512 is 50 MB) with a fresh mapping and unmaps it when freed, so a CPU
    training step faults every page of its large activations in again: 170,000 to 700,000 page faults
    a step, over a second of system time in a 6 s step of flan-t5-small. With no mappings and no
    trimming, the heap keeps what a step freed and the next step reuses it: no faults after the first
    steps, a 6-step run in 0.69 of the time, for a peak 0.86 GB (a fifth) higher: the heap holds its
    free blocks where the mappings were returned. A process-wide setting: made by training, not by a
    `Classifier` in someone else's process. `GLIBC_TUNABLES` or a `MALLOC_*` variable in the
    environment means the user chose their own: left as it is (the way to turn this off).
    """
    if os.environ.get("GLIBC_TUNABLES") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows): their allocators are left alone
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_TRIM))


def training_threads(setting: str | int, parameters: int, device: torch.device) -> int | None:
    """What a training process sets up on a CPU: its threads and denormals (`cpu_threads`, whose count it
    returns; None on a GPU) and malloc keeping freed memory for the next step (`keep_freed_memory`)."""
    threads = cpu_threads(setting, parameters, device)
    if threads:
        keep_freed_memory()
    return threads


def run_on(device: torch.device, threads: int | None, precision: str, processes: int = 1) -> str:
    """Where a command runs, in the words every script logs it with: "cpu, 2 CPU threads, fp32"."""
    parts = (
        [str(device.type)] + ([f"{threads} CPU thread{'s' * (threads > 1)}"] if threads else []) + [precision]
    )
    each = f"{processes} processes, each: " if processes > 1 else ""
    return each + ", ".join(parts)


def close_processes() -> None:
    """Close a launch's process group before the process exits (training does it in `end_training`).
    Left to the interpreter's exit, gloo's threads can abort a finished process ("terminate called
    without an active exception", exit -6: seen once with 2 CPU processes on a busy machine)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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
