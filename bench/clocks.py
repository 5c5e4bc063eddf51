"""The bench's clocks and gauges: step times that do not stall the GPU, peak memory, time limits, and
what the machine is (device, versions)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import re
import resource
import signal
import subprocess
import threading
import time

import torch

logger = logging.getLogger("bench")


class RowTimeout(Exception):
    """A row ran past --row-limit."""


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile counts as one more)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise RowTimeout in this (main) thread after `seconds`; no limit when None or off the main thread."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise RowTimeout(f"{what}: stopped by its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class StepClock:
    """End-of-step times that do not stall the GPU.

    On CUDA each mark records an event in the stream, and the events are read once, at the end:
    a synchronize per step would stop the host from queueing the next step while the GPU finishes
    this one, and add the host's time to every step's. Off CUDA the host clock is the clock.
    `host_too` also takes the host clock at that mark (after a synchronize): for the set-up time.
    """

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        self.marks: list = []
        self.host_mark: float | None = None
        self.waited = 0.0  # seconds spent waiting for this row's turn (`Turns`): on no step's clock

    def __len__(self) -> int:
        return len(self.marks)

    def mark(self, host_too: bool = False) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter() - self.waited)
        if host_too:
            sync()
            self.host_mark = time.perf_counter() - self.waited
        if Turns.current is not None:  # the other rows' steps run now; this row's clock stands still
            self.waited += Turns.current.pass_on()

    def seconds(self) -> list[float]:
        """Each mark's time in seconds after the first."""
        if not self.cuda:
            return [t - self.marks[0] for t in self.marks]
        sync()
        return [self.marks[0].elapsed_time(e) / 1000 for e in self.marks]


def pass_order(rows: list, n: int) -> list:
    """The rows in the order of the n-th pass over them (from 0): every pass the reverse of the one before
    (A B C, C B A, A B C), so that no row always comes first, or always right after the same other row.
    `--rounds` orders its rounds so, and `--turns` its passes."""
    return rows[::-1] if n % 2 else rows


class Turns:
    """Rows in processes of their own that compute one at a time, a step each in turn (`--turns`): a
    slow spell of the machine then falls on every row's steps alike, not on whichever row ran then;
    each pass over the rows goes in the reverse order of the one before (`_advance`).

    Made in the parent for `n` rows; each child process joins as row `index` (`join`, which waits for
    its turn: set-up is taken in turn too), passes the turn on at the end of each step (`StepClock.mark`,
    which leaves the wait off the row's clock) and leaves when its row is done. A row that has left is
    skipped; `leave(index)` from the parent stands in for a child that died.

    Each row waits on a semaphore of its own, released when the turn comes to it: a row killed while it
    waits (the OOM killer's -9; rows wait most of the time) holds nothing the others need. (A condition
    variable's notify waits for every sleeper to wake, a dead one too: the whole run hung.)"""

    current: Turns | None = None  # the one this process takes turns in (a child of a --turns run)

    def __init__(self, n: int, context):
        self.lock = context.Lock()  # held for a few assignments at a time, never while waiting
        self.turn = context.Value("i", 0, lock=False)  # guarded by lock, as the two below
        self.passes = context.Value("q", 0, lock=False)  # turns passed on so far, by every row
        self.active = context.Array("b", [1] * n, lock=False)
        self.go = [context.Semaphore(0) for _ in range(n)]  # row i's: released when the turn comes to it
        self.go[0].release()  # the first turn is row 0's
        self.index, self.passed_at, self.waited_s = -1, [], 0.0  # this process's

    def join(self, index: int) -> None:
        self.index, Turns.current = index, self
        self.go[index].acquire()

    def pass_on(self) -> float:
        """The turn passed on at the end of a step; back when it comes round again: the seconds waited."""
        started = time.perf_counter()
        with self.lock:
            self.passed_at.append(self.passes.value)
            self.passes.value += 1
            self._advance()
        self.go[self.index].acquire()
        waited = time.perf_counter() - started
        self.waited_s += waited
        return waited

    def leave(self, index: int | None = None) -> None:
        index = self.index if index is None else index
        with self.lock:
            self.active[index] = 0
            if self.turn.value == index:
                self._advance()
        if index == self.index:
            Turns.current = None

    def _advance(self) -> None:
        """The turn to the row whose step comes next: the rows still running take a step each, pass after
        pass (`pass_order`). Called with the lock held."""
        live = [j for j, running in enumerate(self.active) if running]
        if live:
            done, place = divmod(self.passes.value, len(live))
            self.turn.value = pass_order(live, done)[place]
            self.go[self.turn.value].release()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release_memory():
    """Free what the last row held: compiled graphs and their CUDA-graph pools belong to it.

    Never raises: a failure here (after a row that broke the CUDA context, say) is logged, and the
    next row finds out for itself.
    """
    try:
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        logger.exception("releasing memory after a row failed")


class PeakMemory:
    """Peak allocated/reserved (torch), and the process's usage as the driver reports it (nvidia-smi);
    and the host's side of the row: CPU seconds in user and kernel mode and the page faults served
    (a row whose kernel time is high spends it mapping memory: one place a row beside another differs)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.driver_mib, self._stop = interval, None, threading.Event()

    def __enter__(self):
        self._host = resource.getrusage(resource.RUSAGE_SELF)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            self._stop.set()
            self._thread.join()
            self._sample()

    def _sample(self):
        with contextlib.suppress(Exception):
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            mine = [
                int(m)
                for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)
                if int(p) == os.getpid()
            ]
            if mine:
                self.driver_mib = max(self.driver_mib or 0, mine[0])

    def _poll(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def report(self) -> dict:
        now, then = resource.getrusage(resource.RUSAGE_SELF), self._host
        host = dict(host_user_s=now.ru_utime - then.ru_utime, host_sys_s=now.ru_stime - then.ru_stime,
                    page_faults=now.ru_minflt - then.ru_minflt)  # fmt: skip
        if not torch.cuda.is_available():
            return dict(peak_allocated_gib=None, peak_reserved_gib=None, peak_driver_mib=None, **host)
        return dict(
            **host,
            peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            peak_driver_mib=self.driver_mib,
        )


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def versions() -> dict:
    import accelerate
    import datasets
    import transformers

    v = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        accelerate=accelerate.__version__,
        datasets=datasets.__version__,
        cuda=torch.version.cuda,
    )
    with contextlib.suppress(Exception):
        import bitsandbytes

        v["bitsandbytes"] = bitsandbytes.__version__
    return v


def cpu_threads_now() -> int | None:
    """The intra-op CPU threads torch runs with now (None on a GPU, where they are not what is timed)."""
    return None if torch.cuda.is_available() else torch.get_num_threads()
