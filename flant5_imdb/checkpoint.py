"""Training progress and checkpoints that survive anything.

A checkpoint is a folder `OUTPUT_DIR/checkpoints/step-N/` holding `accelerator.save_state`
(model, optimizer, scheduler, one RNG file per process) and `train_state.json` (this module's
`TrainState`: step, epoch, sampler position, skip counters, the config that produced it).

Writes are atomic: everything goes into `step-N.tmp/`, every file is fsynced, a `COMPLETE`
marker is written last, and only then is the folder renamed to `step-N`. A crash at any moment
leaves either the previous checkpoints untouched or a `.tmp` folder that `latest_complete`
ignores (and the next save of that step clears). A checkpoint is never modified in place.

Checkpoints are taken between optimizer steps only (the sampler plans whole steps), so a
checkpoint can never fall inside a gradient-accumulation window.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from flant5_imdb.config import TrainConfig

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Options that do not change what is computed: a run may resume with other values for these.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "log_every", "eval_every", "eval_mode", "eval_batch_size", "eval_split", "max_eval_samples",
    "save_every", "keep_checkpoints", "resume", "force_resume", "max_bad_steps", "skip_bad_rows", "final_eval", "save_model",
    "report_to", "push_to_hub", "model_card_only",
    # The kernel path changes shapes and rounding, not the math (--bias-kernel drops attention
    # dropout, so it is not here).
    "compile", "cuda_graphs", "fused_norm", "bucket_multiple", "pad_to_multiple_of", "activation_checkpointing", "bias_lookup",
})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked; the message says why."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken (skipped non-finite updates included)
    epoch: int = 0  # the epoch in progress
    samples_seen: int = 0  # training examples, all processes
    target_tokens_seen: int = 0  # non-padding target tokens, all processes
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient norm
    sampler: dict = field(default_factory=dict)  # StepSampler.state_dict() at save time

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Partial (`.tmp`) or unmarked folders are ignored."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / COMPLETE).is_file()]
    return [p for _, p in sorted(found)]


def latest_complete(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: TrainState, config: dict, keep: int,
                    save_extra: Callable[[Path], None] | None = None) -> Path:
    """Write `step-N` atomically (every process takes part), then keep only the newest `keep`.

    `save_extra(folder)` runs on the main process before the folder is sealed (the loop uses it
    to add the model config, tokenizer and settings, so that a checkpoint loads like a model).
    """
    root = checkpoints_dir(output_dir)
    final = root / f"step-{state.step}"
    tmp = root / f"step-{state.step}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash during an earlier save of this step
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # model, optimizer, registered scheduler, random_states_{rank}.pkl
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if save_extra is not None:
            save_extra(tmp)
        payload = {"state": state.to_dict(), "config": config, "num_processes": accelerator.num_processes}
        _write_synced(tmp / STATE_FILE, json.dumps(payload, indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _write_synced(tmp / COMPLETE, "")
        _fsync(tmp)
        _commit(tmp, final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def _commit(tmp: Path, final: Path) -> None:
    """The atomic step: a rename. An existing `final` (same step, written by an earlier run) is replaced whole."""
    if final.exists():
        trash = final.with_name(final.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash)
    else:
        os.rename(tmp, final)
    _fsync(final.parent)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename is only durable once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`--resume auto`: the latest complete checkpoint or None (a fresh start); a path: that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = latest_complete(output_dir)
        if found is None:
            logger.info("--resume auto: no complete checkpoint in %s, starting fresh", checkpoints_dir(output_dir))
        return found
    path = Path(resume)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint (no {COMPLETE} marker)")
    return path


def read_checkpoint(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def check_compatible(saved: dict, config: dict, num_processes: int, force: bool) -> list[str]:
    """The differences that change the math; raises unless `force` (then they are returned and logged)."""
    # An option newer than the checkpoint counts as its default value then.
    before = {**TrainConfig().to_dict(), **saved["config"]}
    diffs = [f"--{k.replace('_', '-')} {before.get(k)!r} -> {v!r}"
             for k, v in config.items() if k not in RESUMABLE_CHANGES and before.get(k) != v]
    if saved["num_processes"] != num_processes:
        diffs.append(f"processes {saved['num_processes']} -> {num_processes}")
    if diffs and not force:
        raise CheckpointError(f"refusing to resume: the config changes the math ({'; '.join(diffs)}); pass --force-resume to resume anyway")
    if diffs:
        logger.warning("resuming with a changed config (--force-resume): %s", "; ".join(diffs))
    return diffs


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainState:
    """Restore model, optimizer, scheduler and this process's RNG states; return the TrainState.

    accelerate only logs when it cannot restore RNG states; here that is an error, since a
    resumed run would silently draw other dropout masks.
    """
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        raise CheckpointError(f"{path}: no RNG state for process {accelerator.process_index} ({rng_file.name}); cannot resume exactly")
    accelerator.load_state(str(path))
    saved = torch.load(rng_file, weights_only=False)
    if not torch.equal(torch.get_rng_state(), saved["torch_manual_seed"]):
        raise CheckpointError(f"{path}: the torch RNG state was not restored from {rng_file.name}")
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in saved:
        restored = torch.cuda.get_rng_state_all()
        if any(not torch.equal(a, b) for a, b in zip(restored, saved["torch_cuda_manual_seed"], strict=False)):
            raise CheckpointError(f"{path}: the CUDA RNG state was not restored from {rng_file.name}")
    return TrainState(**read_checkpoint(path)["state"])


def restore_sampler(sampler, saved: dict, force: bool) -> None:
    """Put the sampler where the checkpoint left it. With --force-resume and another batch geometry,
    the epoch in progress continues at the same fraction (its order within the epoch changes)."""
    try:
        sampler.load_state_dict(saved)
    except ValueError as e:
        if not force:
            raise CheckpointError(f"cannot resume the data order: {e}") from e
        fraction = saved["position"] * saved["global_batch"] / saved["n"]
        sampler.set_epoch(saved["epoch"])
        sampler.position = min(round(fraction * sampler.steps_per_epoch), sampler.steps_per_epoch)
        logger.warning("--force-resume: %s; continuing epoch %d at step %d of %d", e, saved["epoch"],
                       sampler.position, sampler.steps_per_epoch)
