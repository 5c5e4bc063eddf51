"""Training progress and checkpoints that survive anything.

A checkpoint is a folder `OUTPUT_DIR/checkpoints/step-N/` holding `accelerator.save_state`
(model, optimizer, scheduler, one RNG file per process), `train_state.json` (this module's
`TrainState`: step, epoch, sampler position, skip counters, the metrics window, the config that
produced it) and `MANIFEST.json` (every file with its size and CRC-32).

Writes are atomic: everything goes into `step-N.tmp/`, every file is fsynced, the manifest and
then a `COMPLETE` marker are written last, and only then is the folder renamed to `step-N`. A
crash at any moment leaves either the previous checkpoints untouched or a `.tmp` folder that
`latest_complete` ignores (and the next save of that step clears). A checkpoint is never
modified in place.

Checkpoints check themselves: loading one first compares every file with the manifest (a file
deleted, truncated or changed by a disk fault). `--resume auto` skips a damaged checkpoint with
one warning naming it and the file, and takes the newest intact one; `--resume PATH` on a damaged
one stops with one line naming the file. CRC-32 finds accidental damage (3.5 GB/s on the dev
CPU: about a second for flan-t5-base's 3 GB of weights and optimizer state); it is no defence
against deliberate tampering.

Checkpoints are taken between optimizer steps only (the sampler plans whole steps), so a
checkpoint can never fall inside a gradient-accumulation window.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from flant5_imdb.config import FIXED, FREE, TrainConfig, flag, resume_kind
from flant5_imdb.data.labels import LabelSpace, verbalize
from flant5_imdb.modeling import saved_settings

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.json"
MANIFEST = "MANIFEST.json"
COMPLETE = "COMPLETE"
FORMAT = 2  # 2: with a manifest (format 1 checkpoints have none, and load unverified)
_STEP_DIR = re.compile(r"^step-(\d+)$")


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
    train_seconds: float = 0.0  # time spent in training steps up to this state (the metrics' clock)
    # The metrics window since the last log line, so that a resumed run logs what an uninterrupted one would:
    window: list = field(
        default_factory=list
    )  # per process: [summed token loss (a float32 value, exactly), target tokens]
    last_log_step: int = 0
    last_log_samples: int = 0  # samples_seen at the last log line
    last_log_seconds: float = 0.0  # train_seconds at the last log line

    def to_dict(self) -> dict:
        return asdict(self)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. Partial (`.tmp`) or unmarked folders are ignored."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / COMPLETE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_complete(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | Path,
    state: TrainState,
    config: dict,
    keep: int,
    save_extra: Callable[[Path], None] | None = None,
    data_content: str | None = None,
) -> Path:
    """Write `step-N` atomically (every process takes part), then keep only the newest `keep`.

    `save_extra(folder)` runs on the main process before the folder is sealed (the loop uses it
    to add the model config, tokenizer and settings, so that a checkpoint loads like a model).
    `data_content` is the digest of the data trained on (`Prepared.content`), which a resume compares.
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
        payload = {
            "state": state.to_dict(),
            "config": config,
            "num_processes": accelerator.num_processes,
            "format": FORMAT,
            "data_content": data_content,
        }
        _write_synced(tmp / STATE_FILE, json.dumps(payload, indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        _write_synced(tmp / MANIFEST, json.dumps(manifest(tmp), indent=1))
        _write_synced(tmp / COMPLETE, "")
        _fsync(tmp)
        _commit(tmp, final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
        logger.info("checkpoint saved: %s", final)
    accelerator.wait_for_everyone()
    return final


def store_tied_once(models, weights: list[dict], output_dir) -> None:
    """accelerate's save-state hook: each tied weight once, under its source name (as save_pretrained does).

    T5's encoder and decoder embeddings are the shared embedding: left in, the state dict holds one
    tensor under three names, which accelerate then drops with a warning on every save.
    """
    for model, state in zip(models, weights, strict=True):
        for alias in getattr(getattr(model, "module", model), "all_tied_weights_keys", {}):
            state.pop(alias, None)


def _commit(tmp: Path, final: Path) -> None:
    """The atomic step: a rename. An existing `final` (same step, written by an earlier run) is replaced
    whole: moved aside to `final.old`, which goes once the new one is in place (and goes then too where a
    process stopped between the two renames left it, with no `final`).
    """
    trash = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
    os.rename(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)
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


def manifest(folder: Path) -> dict[str, list[int]]:
    """Every file under `folder` (its manifest and marker excepted): relative path -> [size, CRC-32]."""
    return {
        str(f.relative_to(folder)): [f.stat().st_size, _crc32(f)]
        for f in sorted(folder.rglob("*"))
        if f.is_file() and f.name not in (MANIFEST, COMPLETE)
    }


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def damage(path: Path) -> str | None:
    """What is wrong with checkpoint `path` (a file missing, truncated or altered), or None if intact."""
    state_file = path / STATE_FILE
    try:
        saved = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} is unreadable ({type(e).__name__})"
    listed = path / MANIFEST
    if not listed.is_file():
        return (
            f"{MANIFEST} is missing" if saved.get("format", 1) >= 2 else None
        )  # format 1: nothing to check against
    try:
        expected = json.loads(listed.read_text())
    except ValueError:
        return f"{MANIFEST} is unreadable"
    for name, (size, crc) in expected.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {size}"
        if _crc32(f) != crc:
            return f"{name} does not match its checksum"
    return None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`--resume auto`: the newest intact complete checkpoint, or None (a fresh start); a path: that one.

    Raises:
        CheckpointError: the named checkpoint is incomplete or damaged; or every checkpoint in
            `output_dir` is damaged (starting afresh would throw the run away unasked).
    """
    if resume is None:
        return None
    if resume != "auto":
        path = Path(resume)
        if not (path / COMPLETE).is_file():
            raise CheckpointError(f"--resume {resume}: not a complete checkpoint (no {COMPLETE} marker)")
        problem = damage(path)
        if problem:
            raise CheckpointError(f"--resume {resume}: damaged checkpoint: {problem}")
        return path
    found = complete_checkpoints(output_dir)
    root = checkpoints_dir(output_dir)
    unmarked = (
        sorted(p.name for p in root.iterdir() if _STEP_DIR.match(p.name) and not (p / COMPLETE).is_file())
        if root.is_dir()
        else []
    )
    if unmarked:  # a save cut short before its last step: never taken, always said
        logger.warning("--resume auto: skipping %s in %s: no %s marker (a save that did not finish)",
                       ", ".join(unmarked), root, COMPLETE)  # fmt: skip
    if not found:
        logger.info(
            "--resume auto: no complete checkpoint in %s, starting fresh", checkpoints_dir(output_dir)
        )
        return None
    problems = []
    for path in reversed(found):
        problem = damage(path)
        if problem is None:
            return path
        logger.warning("--resume auto: skipping damaged checkpoint %s: %s", path, problem)
        problems.append(f"{path.name}: {problem}")
    raise CheckpointError(
        f"--resume auto: every checkpoint in {checkpoints_dir(output_dir)} is damaged ({'; '.join(problems)})"
    )


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from: its folder, and what it saved (`train_state.json`). Each check
    is made where what it compares is first known, all of them before a byte is written."""

    path: Path
    saved: dict

    def check_classes(self, classes: LabelSpace, targets: list[str]) -> None:
        """Once the data's classes are known, before it is tokenized: see `check_same_classes`."""
        check_same_classes(self.path, classes, targets)

    def check_continues(self, cfg: TrainConfig, processes: int, sampler, data_content: str | None) -> None:
        """Once the sampler is built: options that change the math refused (`check_compatible`; applied with
        --force-resume), data whose content changed since the checkpoint too (`data_content`: the digest
        of what this run read; a checkpoint or data without one is not compared), and a data order this
        run cannot continue (tried on a copy of the sampler).

        Raises:
            CheckpointError: naming what differs.
        """
        before = self.saved.get("data_content")
        same_option = self.saved["config"].get("data") == cfg.data  # else that difference says it
        changed = same_option and before is not None and data_content is not None and before != data_content
        data = [f"the content of --data {cfg.data!r} changed since {self.path.name}"] if changed else []
        check_compatible(self.saved, cfg.to_dict(), processes, cfg.force_resume, also=data)
        if not cfg.force_resume:
            continue_order(copy.deepcopy(sampler), self.saved["state"]["sampler"], force=False)


def resume_point(resume: str | None, output_dir: str | Path) -> ResumePoint | None:
    """What a run resumes from: `--resume` resolved (see `resolve_resume`; None: a fresh start) and what
    the checkpoint saved. Read-only.

    Raises:
        CheckpointError: no usable checkpoint where one was named.
    """
    path = resolve_resume(resume, output_dir)
    return None if path is None else ResumePoint(path, read_checkpoint(path))


def continue_order(sampler, state: dict, force: bool) -> None:
    """The data order continued from a checkpoint's sampler `state` (see `StepSampler.restore`)."""
    try:
        sampler.restore(state, force)
    except ValueError as e:
        raise CheckpointError(f"cannot resume the data order: {e}") from e


def read_checkpoint(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def check_compatible(
    saved: dict, config: dict, num_processes: int, force: bool, also: list[str] = ()
) -> list[str]:
    """The differences that change the math (and `also`, what the caller found changed beside the
    options); raises unless `force` (then they are returned and logged).

    Whether an option may differ is declared on its field in `config.py` (FREE, MATH, FIXED).

    Raises:
        CheckpointError: a MATH difference without `force`, or a difference the checkpoint cannot take at all.
    """
    # An option newer than the checkpoint counts as its default value then.
    before = {**TrainConfig().to_dict(), **saved["config"]}
    changed = {
        k: (before.get(k), v)
        for k, v in config.items()
        if k in before and resume_kind(k) != FREE and before.get(k) != v
    }
    # A checkpoint from before label spaces held IMDB, where the `auto` verbalizer (the new default)
    # writes the `digits` it was trained with: the same targets, not a change.
    if "label_column" not in saved["config"] and set(changed.get("verbalizer", ())) == {"digits", "auto"}:
        del changed["verbalizer"]
    fixed = [k for k in changed if resume_kind(k) == FIXED]
    old_wd, new_wd = changed.get("weight_decay", (0, 0))
    # One parameter group without decay, two with: another optimizer state layout.
    if bool(old_wd) != bool(new_wd):
        fixed.append("weight_decay")
    if fixed:
        raise CheckpointError(
            "cannot resume: "
            + "; ".join(f"--{flag(k)} {changed[k][0]!r} -> {changed[k][1]!r}" for k in fixed)
            + " cannot be applied to a checkpoint (weights or optimizer state of another shape); "
            "start a new run in another --output-dir"
        )
    diffs = [f"--{flag(k)} {a!r} -> {b!r}" for k, (a, b) in changed.items()] + list(also)
    if saved["num_processes"] != num_processes:
        diffs.append(f"processes {saved['num_processes']} -> {num_processes}")
    if diffs and not force:
        raise CheckpointError(
            f"refusing to resume: this run changes the math ({'; '.join(diffs)}); "
            "pass --force-resume to resume with the new values"
        )
    if diffs:
        logger.warning("resuming with changes (--force-resume applies them): %s", "; ".join(diffs))
    return diffs


def check_same_classes(path: Path, classes: LabelSpace, targets: list[str]) -> None:
    """The classes, their order and the texts the model writes for them are what a checkpoint learned:
    a resume with others is refused, --force-resume or not (the learned "0" would mean another class).

    Raises:
        CheckpointError: naming each difference.
    """
    saved = saved_settings(path)
    before = LabelSpace.from_dict(saved.get("labels"))  # a checkpoint from before label spaces: IMDB's
    before_targets = saved.get("targets") or verbalize(saved.get("verbalizer", "digits"), before)
    diffs = []
    old, new = before.values, classes.values
    if set(old) != set(new):
        added, gone = [v for v in new if v not in old], [v for v in old if v not in new]
        if added:
            diffs.append(f"the data has class(es) the checkpoint does not: {', '.join(map(repr, added))}")
        if gone:
            diffs.append(f"the checkpoint has class(es) the data does not: {', '.join(map(repr, gone))}")
    elif old != new or before.kind != classes.kind:
        diffs.append(f"the classes' order changed: {', '.join(before.names)} -> {', '.join(classes.names)}")
    if before_targets != targets and not diffs:
        diffs.append(
            f"the texts the model writes changed: {', '.join(map(repr, before_targets))} -> "
            f"{', '.join(map(repr, targets))}"
        )
    if diffs:
        raise CheckpointError(
            f"cannot resume from {path}: {'; '.join(diffs)}. The model learned the checkpoint's classes "
            "(--force-resume cannot change that): start a new run in another --output-dir"
        )


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig) -> None:
    """Make a restored optimizer and schedule follow `cfg` (what --force-resume promises).

    The restored optimizer carries the old lr, betas, eps and weight decay in its parameter groups,
    and the restored schedule the old peak in `base_lrs`; its shape (warm-up, decay, length) is
    already the new config's, since it is rebuilt from the config and only its step is restored.
    Without --force-resume these are equal to the config's anyway, and this changes nothing.
    """
    groups = optimizer.param_groups
    decays = [cfg.weight_decay, 0.0] if len(groups) == 2 else [0.0]  # optim.param_groups: decayed group first
    for group, decay in zip(groups, decays, strict=True):
        group.update(
            initial_lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=decay
        )
    scheduler.base_lrs = [cfg.lr] * len(groups)
    # The lr of the next step: the schedule's factor at its restored step, times the new peak.
    lrs = [cfg.lr * fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas]
    for group, lr in zip(groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
    if not all(math.isfinite(lr) for lr in lrs):
        raise CheckpointError(
            f"--force-resume: the schedule gives a non-finite learning rate at step {scheduler.last_epoch}"
        )


def load_checkpoint(accelerator: Accelerator, path: Path) -> TrainState:
    """Restore model, optimizer, scheduler and this process's RNG states; return the TrainState.

    accelerate only logs when it cannot restore RNG states; here that is an error, since a
    resumed run would silently draw other dropout masks.
    """
    rng_file = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng_file.is_file():
        raise CheckpointError(
            f"{path}: no RNG state for process {accelerator.process_index} ({rng_file.name}); cannot resume "
            "exactly"
        )
    accelerator.load_state(str(path))
    saved = torch.load(rng_file, weights_only=False)
    if not torch.equal(torch.get_rng_state(), saved["torch_manual_seed"]):
        raise CheckpointError(f"{path}: the torch RNG state was not restored from {rng_file.name}")
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in saved:
        restored = torch.cuda.get_rng_state_all()
        if any(
            not torch.equal(a, b) for a, b in zip(restored, saved["torch_cuda_manual_seed"], strict=False)
        ):
            raise CheckpointError(f"{path}: the CUDA RNG state was not restored from {rng_file.name}")
    return TrainState(**read_checkpoint(path)["state"])


def save_final(accelerator: Accelerator, model, path: Path, export_to: Callable[[Path], None]) -> None:
    """save_pretrained of the unwrapped model (no DDP `module.` or compile `_orig_mod.` prefixes), then
    `export_to(folder)` (tokenizer, settings), written into `PATH.tmp` and renamed to `path` once whole: a
    save stopped part way leaves no `path` (weights without the settings beside them would load as a
    model of IMDB's two classes), and an earlier `path` is replaced only by a whole one.
    """
    tmp = path.with_name(path.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a save stopped part way
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(
        model
    )  # gathered from the shards under FSDP; a plain state dict otherwise
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    unwrapped.save_pretrained(
        tmp,
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
        state_dict=state_dict,
    )
    accelerator.wait_for_everyone()  # every process is done with the folder before it is renamed
    if accelerator.is_main_process:
        export_to(tmp)
        _commit(tmp, path)
    accelerator.wait_for_everyone()
