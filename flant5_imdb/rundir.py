"""One run per output folder.

- A run holds an exclusive lock on `OUTPUT_DIR/.lock` (`fcntl.flock`) from the moment it starts
  writing there until it exits. It is an OS lock: the kernel drops it when the process ends,
  however it ends (SIGKILL included), so a stale lock file never blocks the next run. A second
  training into a locked folder stops at once, naming the holder's pid.
- A fresh run (no checkpoint to continue) into a folder that holds another run's metrics,
  checkpoints, summary or final model is refused, unless `--resume auto` (continue it, or start
  afresh where it has no checkpoint yet) or `--overwrite-output-dir` (delete it first, saying so).
- Nothing is written before every option, the data and the resume point have been checked: a
  start that fails leaves no folder behind, and a refused resume leaves the run as it was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from flant5_imdb.config import ConfigError

logger = logging.getLogger(__name__)

LOCK = ".lock"
METRICS = "metrics.jsonl"
RUN_FILES = (
    METRICS,
    "checkpoints",
    "summary.json",
    "final",
    "eval.json",
)  # any of these: the folder holds a run


class RunLock:
    """The exclusive lock of one output folder (see the module's doc)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self._fd: int | None = None

    def check(self) -> None:
        """Raise if another process holds the lock now; creates nothing (for a start that may still fail)."""
        if not self.path.is_file():
            return
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._try_lock(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def acquire(self) -> None:
        """Create the folder if need be and hold the lock until `release` (or the process's end).

        Raises:
            ConfigError: the folder cannot be created or written, or another training holds it.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(unwritable(self.folder, e)) from None
        try:
            self._try_lock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def _try_lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"--output-dir {self.folder} is in use by another training (pid {holder}); "
                "wait for it to end, or choose another --output-dir"
            ) from None


def unwritable(folder: Path, error: OSError) -> str:
    return (
        f"--output-dir {folder}: cannot create or write it ({error.strerror or error}); choose another folder"
    )


def check_writable(folder: str | Path) -> None:
    """Raise now, before any data is read, if `folder` (or the nearest folder above it that exists)
    cannot be written: the run would fail only after loading data and model otherwise.

    Raises:
        ConfigError: naming the folder.
    """
    folder = Path(folder).absolute()
    existing = next((f for f in (folder, *folder.parents) if f.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(unwritable(folder, PermissionError(13, f"{existing} is not writable")))


def preflight(cfg) -> None:
    """What a training run can be refused for from its options, its files and its output folder alone,
    checked before torch is imported (under a second): a missing or malformed `--data`, an output folder
    that cannot be written, that another training holds, or that holds an earlier run a fresh start
    would mix with. Called by scripts/train.py before torch is imported and again by `train.setup` (for
    callers of `train.run`, and for what changed since); `claim` checks the folder once more as it locks it.

    Raises:
        ConfigError: the output folder.
        DataError: the data source.
    """
    from flant5_imdb.data.source import parse_source

    parse_source(cfg.data)
    check_writable(cfg.output_dir)
    RunLock(cfg.output_dir).check()
    earlier = held_run(cfg.output_dir)
    if earlier and cfg.resume is None and not cfg.overwrite_output_dir:
        refuse_earlier_run(cfg.output_dir, earlier)


WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def model_folder(path: str) -> str:
    """`path`, or, where it is a run's folder (a `final/` inside, no weights of its own), that `final/`.

    Raises:
        ValueError: a folder that holds no weights and is no run's folder.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir() or any((folder / w).is_file() for w in WEIGHTS):
        return path
    if any((folder / "final" / w).is_file() for w in WEIGHTS):
        logger.info("%s is a run's folder: using its model, %s", path, folder / "final")
        return str(folder / "final")
    raise ValueError(
        f"--model {path}: a folder with no model weights in it; a run keeps its model in final/, a "
        "checkpoint in checkpoints/step-N/"
    )


REPORT_FILES = ("eval.json", "eval.txt", "eval_predictions.jsonl")  # what an evaluation writes


def refuse_held_evaluation(folder: str | Path) -> None:
    """Raise if `folder` holds an evaluation already (evaluate.py replaces one only with --overwrite).

    Raises:
        ValueError: naming the files and the two ways on.
    """
    held = [name for name in REPORT_FILES if (Path(folder) / name).exists()]
    if held:
        raise ValueError(
            f"{folder} holds an evaluation already ({', '.join(held)}); pass --overwrite to replace it, or "
            "--output-dir to write elsewhere"
        )


def held_run(folder: str | Path) -> list[str]:
    """What in `folder` belongs to an earlier run (empty if nothing does)."""
    folder = Path(folder)
    return [name for name in RUN_FILES if (folder / name).exists() and not _empty_dir(folder / name)]


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def claim(folder: str | Path, *, resuming: bool, resume_asked: bool, overwrite: bool) -> RunLock:
    """Lock `folder` for this run, after checking that a fresh run may start there.

    Raises:
        ConfigError: another training holds the folder, or a fresh run would mix with an earlier one.
    """
    if not resuming and not overwrite and not resume_asked and held_run(folder):
        refuse_earlier_run(
            folder, held_run(folder)
        )  # before the lock is touched: a refused start writes nothing
    lock = RunLock(folder)
    lock.acquire()
    try:
        earlier = [] if resuming else held_run(folder)
        if earlier and overwrite:
            logger.warning(
                "--overwrite-output-dir: deleting the earlier run in %s (%s)", folder, ", ".join(earlier)
            )
            for entry in Path(folder).iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        elif earlier and not resume_asked:  # an earlier run that appeared after the check above
            refuse_earlier_run(folder, earlier)
    except BaseException:
        lock.release()
        raise
    return lock


def claim_on_main(accelerator, folder: Path, **claim_args) -> RunLock | None:
    """The main process claims `folder` (`claim`) before the others go on.

    Raises:
        ConfigError: as `claim`, on the main process (the others raise `MainFailed`, and say nothing).
    """
    from flant5_imdb.accel import main_first  # torch: imported by training, not by the checks above

    lock = None
    with main_first(accelerator):
        if accelerator.is_main_process:
            lock = claim(folder, **claim_args)
    return lock


def refuse_earlier_run(folder, earlier: list[str]):
    raise ConfigError(
        f"--output-dir {folder} holds another run ({', '.join(earlier)}); continue it with "
        "--resume auto, or pass --overwrite-output-dir to delete it and start afresh"
    )


def truncate_metrics(folder: str | Path, step: int) -> int:
    """Keep the metrics.jsonl lines of steps up to `step` (what a resumed run has not redone); returns
    how many lines were dropped. Rewritten atomically: a crash leaves the old file or the new one."""
    path = Path(folder) / METRICS
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (row := _row(line)) is not None and row.get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(METRICS + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return len(lines) - len(kept)


def _row(line: str) -> dict | None:
    """A metrics line, or None for a line a kill cut short."""
    try:
        return json.loads(line)
    except ValueError:
        return None
