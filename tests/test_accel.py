"""CPU threads: decided from the cores idle now, never from the trailing load average."""

import subprocess
import sys
import time

import pytest
import torch

from flant5_imdb import accel

CPU = torch.device("cpu")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
    torch.set_flush_denormal(False)


def stat(*cores):
    """A /proc/stat reading: (idle, total) jiffies per core."""
    return dict(enumerate(cores))


def fake_proc(monkeypatch, before, after, usable):
    readings = iter([before, after])
    monkeypatch.setattr(accel, "_cpu_times", lambda: next(readings))
    monkeypatch.setattr(accel, "_usable_cores", lambda: set(usable))
    monkeypatch.setattr(accel.time, "sleep", lambda s: None)


def test_idle_cores_sums_idle_time_over_the_usable_cores(monkeypatch):
    # 4 cores over 100 jiffies each: idle 100%, 0% (a busy process), 95% (a light task), 50%.
    before = stat((0, 0), (0, 0), (0, 0), (0, 0))
    after = stat((100, 100), (0, 100), (95, 100), (50, 100))
    fake_proc(monkeypatch, before, after, usable=range(4))
    assert accel.idle_cores() == 2  # 1 + 0 + 0.95 + 0.5 = 2.45 cores
    fake_proc(monkeypatch, before, after, usable={1, 2})  # affinity: only cores 1 and 2
    assert accel.idle_cores() == 1  # 0 + 0.95, the light task's share within the slack
    # One busy process moved between two cores by the scheduler: each half idle, one core taken.
    fake_proc(monkeypatch, stat((0, 0), (0, 0)), stat((50, 100), (50, 100)), usable={0, 1})
    assert accel.idle_cores() == 1
    fake_proc(monkeypatch, {}, {}, usable={0, 1, 2})  # no /proc/stat: every usable core
    assert accel.idle_cores() == 3


def test_auto_is_one_thread_for_a_small_model_and_the_idle_cores_for_a_large_one(monkeypatch, threads):
    """torch's threads spin-wait for one another: a thread whose core another process holds stalls every
    operator, so `auto` never asks for a core that is taken now."""
    torch.set_num_threads(8)
    assert accel.cpu_threads("auto", 1_000_000, CPU) == 1 == torch.get_num_threads()
    torch.set_num_threads(8)
    monkeypatch.setattr(accel, "idle_cores", lambda: 6)
    assert accel.cpu_threads("auto", 250_000_000, CPU) == 6 == torch.get_num_threads()
    monkeypatch.setattr(accel, "idle_cores", lambda: 0)  # every core taken: still one thread
    assert accel.cpu_threads("auto", 250_000_000, CPU) == 1
    torch.set_num_threads(4)
    monkeypatch.setattr(accel, "idle_cores", lambda: 16)  # never more than torch had
    assert accel.cpu_threads("auto", 250_000_000, CPU) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of one launch share the idle cores
    monkeypatch.setattr(accel, "idle_cores", lambda: 4)
    assert accel.cpu_threads("auto", 250_000_000, CPU) == 2
    assert accel.cpu_threads("3", 1_000, CPU) == 3 == torch.get_num_threads()
    assert accel.cpu_threads("auto", 1_000, torch.device("cuda")) is None  # a GPU run: left alone
    with pytest.raises(ValueError, match=r"--threads 'many': auto, or a whole number of at least 1"):
        accel.cpu_threads("many", 1_000, CPU)
    from flant5_imdb.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=r"--threads '0': auto, or a whole number of at least 1"):
        TrainConfig(threads="0")  # refused when parsed, before anything is read


def test_right_after_a_busy_minute_the_idle_cores_count(monkeypatch, threads):
    """A run started just after another (the bench's previous row, a test run) gets the cores that are
    idle again, not what the trailing load average remembers."""
    monkeypatch.setattr(accel.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    before = stat(*[(0, 0)] * 4)
    fake_proc(monkeypatch, before, stat(*[(100, 100)] * 4), usable=range(4))
    torch.set_num_threads(4)
    assert accel.cpu_threads("auto", 250_000_000, CPU) == 4


@pytest.mark.skipif(not accel._cpu_times(), reason="needs /proc/stat")
def test_a_busy_core_beside_it_is_not_counted(threads):
    """The real /proc/stat, with a process spinning on one core: at most the other cores are counted,
    however recently that process started (the load average would not have seen it yet)."""
    usable = len(accel._usable_cores())
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started
        assert 0 <= accel.idle_cores() <= usable - 1
    finally:
        spinner.kill()
        spinner.wait()


def test_a_cpu_run_flushes_denormal_numbers_and_a_gpu_run_is_left_alone(threads):
    """A float32 below 1.2e-38 sends the CPU's matrix products down a slow path (a T5 backward on
    flan-t5-small: 46 s for a step of 5); a CPU run reads it as zero."""
    tiny = torch.tensor([1e-39])  # a denormal float32
    torch.set_flush_denormal(False)
    assert accel.cpu_threads("1", 1_000, torch.device("cuda")) is None
    assert (tiny * 1.0).item() != 0.0  # a GPU run did not change the CPU's arithmetic
    accel.cpu_threads("1", 1_000, CPU)
    assert (tiny * 1.0).item() == 0.0


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs -> 2 threads at most
        ({"cpu.max": "max 100000\n"}, None),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # not in a container
    ],
)
def test_a_containers_cpu_limit_caps_the_idle_cores(tmp_path, monkeypatch, files, expected):
    """A container sees the host's cores in /proc/stat and its affinity; its CPU limit is what it gets."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(accel, "CGROUP_LIMITS", (tmp_path / "cpu.max", tmp_path / "cpu" / "cpu.cfs_quota_us"))
    assert accel.cpu_quota() == expected
    before, after = stat(*[(0, 0)] * 8), stat(*[(100, 100)] * 8)  # 8 host cores, all idle
    fake_proc(monkeypatch, before, after, usable=range(8))
    assert accel.idle_cores() == (expected or 8)


FAULTS_AFTER_FREE = """
import json, resource, sys
import torch
from flant5_imdb import accel
kept = accel.keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(5):  # a 64 MB block, freed and asked for again, as a step's activations are
    before = faults()
    block = torch.ones(16 * 1024 * 1024)
    del block
    counts.append(faults() - before)
print(json.dumps({"kept": kept, "faults": counts}))
"""


def _faults_after_free(mode: str, **env) -> dict:
    import json
    import os

    done = subprocess.run([sys.executable, "-c", FAULTS_AFTER_FREE, mode], capture_output=True, text=True,
                          check=True, env={**os.environ, **env})  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_cpu_training_process_keeps_freed_memory_for_the_next_step():
    """glibc maps a 64 MB block afresh each time and unmaps it when freed: every page faults in again
    (16,384 of them), five times out of five. Kept (`keep_freed_memory`), the heap grows to hold the
    block and the small objects made beside it, and then keeps it: the last blocks fault nothing. The
    user's own malloc settings in the environment are left as they are."""
    plain = _faults_after_free("plain")
    assert all(n >= 16_000 for n in plain["faults"]), plain
    kept = _faults_after_free("keep")
    assert kept["kept"] is True and kept["faults"][0] >= 16_000, kept
    assert all(n < 1_000 for n in kept["faults"][3:]), kept
    theirs = _faults_after_free("keep", GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")
    assert theirs["kept"] is False and all(n >= 16_000 for n in theirs["faults"]), theirs
