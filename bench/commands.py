"""A whole command measured from outside, as `bench/scale.py` runs its rows: its wall time, its peak
resident memory and the largest anonymous part of it, and the prediction loop's own time where the
command says it.

A command's peak RSS is the operating system's count, which starts at the peak of the process that
started it (Linux keeps a process's peak across exec): a row that reads no more than this process's own
peak says so (`<= N`), and a command smaller than this process says its own (`SAY_PEAK`).
"""

import contextlib
import os
import re
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def own_peak_kib() -> int | None:
    """This process's peak resident memory since it started (VmHWM), in KiB: not its parent's, which
    `ru_maxrss` starts at. None where there is no /proc."""
    try:
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


# Code that ends a `python -c` command: its own peak (`own_peak_kib`, written out: a peer row imports
# nothing of this project), on stderr, where `measure` reads it.
SAY_PEAK = (
    "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], 'KiB at the most', "
    "file=sys.stderr)"
)


def measure(name: str, command: list[str], n: int, env: dict) -> dict:
    """One whole command: its wall time and its peak resident memory (the operating system's count for the
    process and the children it waited for, or what the command says, `SAY_PEAK`), printed as it ends."""
    print(f"== {name}, {n:,}: {' '.join(command)}", flush=True)
    # stderr into a file, not a pipe: a pipe read only at the end fills (64 KiB of progress bars) and
    # stops the command at its next write, for ever.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        anon = AnonPeak(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        anon.stop()
        log.seek(0)
        err = log.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{err[-3000:]}")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # counted in the command's own peak
    said = re.findall(r"^(\d+) KiB at the most$", err, re.M)  # a command that says its own peak (SAY_PEAK)
    peak = int(said[-1]) if said else usage.ru_maxrss
    row = dict(
        name=name,
        texts=n,
        seconds=round(seconds, 1),
        texts_per_s=round(n / seconds, 1),
        peak_rss_mib=round(peak / 1024) if said or peak > own else f"<= {round(own / 1024)}",
        peak_anon_mib=round(anon.peak / 1024),
        command=" ".join(os.path.relpath(a, ROOT) if a.startswith(str(ROOT)) else a for a in command[1:]),
    )
    loop = loop_seconds(err)
    if loop:  # the prediction loop alone, as the command timed it: no start-up, no model load
        row.update(loop_seconds=round(loop, 1), loop_texts_per_s=round(n / loop, 1))
    predicting = f" (predicting: {row['loop_texts_per_s']})" if loop else ""
    print(f"   {row['seconds']} s, {row['texts_per_s']} a second{predicting}, peak {row['peak_rss_mib']} MiB "
          f"({row['peak_anon_mib']} MiB anonymous)", flush=True)  # fmt: skip
    return row


class AnonPeak:
    """The largest anonymous resident set (`RssAnon`: memory the process holds, not the pages of files it
    maps, which the kernel drops when it needs them) of a process or any of its children, sampled every
    0.2 s while it runs, in KiB. The peak RSS beside it counts a memory-mapped dataset's pages as they
    are read."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.2):
            for pid in self._tree():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    status = Path(f"/proc/{pid}/status").read_text()
                    kib = int(re.search(r"RssAnon:\s+(\d+)", status).group(1))
                    self.peak = max(self.peak, kib)

    def _tree(self) -> list[int]:
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
        tree, found = [self.pid], True
        while found:
            found = [p for p, parent in parents.items() if parent in tree and p not in tree]
            tree += found
        return tree

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def loop_seconds(stderr: str) -> float | None:
    """The seconds of `N texts predicted in 41.7 s` (or `3 min 5 s`, `1 h 18 min`), the last line both
    predict.py and plain_predict.py print; None where there is none (a training command)."""
    found = re.findall(r"texts predicted in ((?:[\d.]+ (?:h|min|s)\b ?)+)", stderr)
    if not found:
        return None
    units = {"h": 3600, "min": 60, "s": 1}
    return sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+) (h|min|s)\b", found[-1]))
