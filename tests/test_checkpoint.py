"""Checkpoints: bitwise resume, data order, crashes, preemption, NaN, OOM, config changes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from flant5_imdb import train as train_module
from flant5_imdb.checkpoint import (
    COMPLETE,
    CheckpointError,
    check_compatible,
    complete_checkpoints,
    latest_complete,
    resolve_resume,
)
from flant5_imdb.config import TrainConfig, preset
from flant5_imdb.guards import Interrupted, NonFiniteError, OutOfMemory, StopSignal, interruptible
from flant5_imdb.train import run
from tests.conftest import ROOT, accelerate_launch, flags

TWO_PROCESSES = ("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no")  # fmt: skip
# 160 examples, batch 16: 10 steps per epoch; 12 steps cross one epoch boundary.
STEPS, PER_EPOCH = 12, 10
LEAN = dict(optimizer_in_backward=True, max_grad_norm=None)  # each parameter updated in the backward

ENCODE_LOG = "flant5_imdb.data.encode"  # its truncation warning: the tiny runs here cut most texts


def cfg_for(tmp_path, tokenizer_dir, name, **kw):
    """Tiny model, fp32, dropout on (so RNG restoration matters), a checkpoint every 5 steps."""
    base = dict(tokenizer=str(tokenizer_dir), data="synthetic:160", dropout=0.1, max_source_length=64,
                log_every=1, max_eval_samples=32, max_steps=STEPS, save_every=5, keep_checkpoints=5,
                output_dir=str(tmp_path / name))  # fmt: skip
    return preset("smoke", **{**base, **kw})


def wait_for_metrics(out: Path, lines: int, seconds: float) -> None:
    """Until a run in another process has logged `lines` metrics lines (or `seconds` have passed)."""
    deadline = time.time() + seconds
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and len(metrics(out)) >= lines):
        time.sleep(0.05)


def metrics(out) -> list[dict]:
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def step_losses(out) -> dict[int, float]:
    """step -> loss; a resumed run's lines come later in the file and win."""
    return {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}


def tensors(obj, prefix=""):
    """Every tensor in a nested state dict, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}")


def assert_same_run(a: Path, b: Path, from_step: int):
    la, lb = step_losses(a), step_losses(b)
    assert [lb[s] for s in range(from_step + 1, STEPS + 1)] == [
        la[s] for s in range(from_step + 1, STEPS + 1)
    ]
    pa, pb = (
        load_file(str(a / "final" / "model.safetensors")),
        load_file(str(b / "final" / "model.safetensors")),
    )
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    oa = dict(tensors(torch.load(a / "checkpoints" / f"step-{STEPS}" / "optimizer.bin", weights_only=False)))
    ob = dict(tensors(torch.load(b / "checkpoints" / f"step-{STEPS}" / "optimizer.bin", weights_only=False)))
    assert len(oa) > 10 and oa.keys() == ob.keys()
    assert all(torch.equal(oa[k], ob[k]) for k in oa)


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "resume_at, optim, lean",
    [(5, "adamw", {}), (PER_EPOCH, "adamw", {}), (5, "adamw8bit", {}), (5, "adamw8bit", LEAN)],
    ids=["mid-epoch", "epoch-boundary", "adamw8bit", "adamw8bit-in-backward"],
)
def test_bitwise_resume_and_data_order(tmp_path, tokenizer_dir, resume_at, optim, lean):
    ids_straight, ids_resumed = {}, {}

    def record(into):
        return lambda state, step, model: into.__setitem__(
            state.step, sorted(i for mb in step.micro_batches for i in mb)
        )

    straight = cfg_for(tmp_path, tokenizer_dir, "straight", optim=optim, **lean)
    run(straight, on_step=record(ids_straight))

    def crash_a_step_later(state, step, model):
        if state.step == resume_at + 1:
            raise Crash

    broken = cfg_for(tmp_path, tokenizer_dir, "broken", optim=optim, **lean)
    with pytest.raises(Crash):
        run(broken, on_step=crash_a_step_later)
    assert latest_complete(broken.output_dir).name == f"step-{resume_at}"
    summary = run(
        cfg_for(tmp_path, tokenizer_dir, "broken", optim=optim, resume="auto", **lean),
        on_step=record(ids_resumed),
    )

    assert summary["resumed_from"].endswith(f"step-{resume_at}") and summary["steps"] == STEPS
    assert sorted(ids_resumed) == list(range(resume_at + 1, STEPS + 1))
    assert all(ids_resumed[s] == ids_straight[s] for s in ids_resumed)  # no repeat, no gap
    assert_same_run(Path(straight.output_dir), Path(broken.output_dir), resume_at)


def launch(args, env=None, timeout=300, two_processes=False):
    prefix = [sys.executable]
    if two_processes:
        prefix = accelerate_launch(*TWO_PROCESSES)
    return subprocess.run(
        prefix + args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def cli(tokenizer_dir, out, *extra):
    """scripts/train.py's arguments for the runs `cfg_for` makes in-process."""
    common = flags(tokenizer=tokenizer_dir, data="synthetic:160", dropout=0.1, max_source_length=64,
                   log_every=1, max_eval_samples=32, max_steps=STEPS, save_every=5, keep_checkpoints=5,
                   output_dir=out)  # fmt: skip
    return ["--preset", "smoke", *common, *extra]


def test_bitwise_resume_with_two_processes(tmp_path, tokenizer_dir):
    script, faulty = str(ROOT / "scripts" / "train.py"), str(ROOT / "tests" / "helpers" / "faulty_train.py")
    ok = launch([script, *cli(tokenizer_dir, tmp_path / "straight", "--batch-size", "8")], two_processes=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    crashed = launch(
        [faulty, "crash-after-step", "7", *cli(tokenizer_dir, tmp_path / "broken", "--batch-size", "8")],
        two_processes=True,
    )
    assert crashed.returncode != 0
    assert latest_complete(tmp_path / "broken").name == "step-5"
    resumed = launch(
        [script, *cli(tokenizer_dir, tmp_path / "broken", "--batch-size", "8", "--resume", "auto")],
        two_processes=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((tmp_path / "broken" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["resumed_from"].endswith("step-5")
    assert len(set(summary["rank_param_checksums"])) == 1
    assert_same_run(tmp_path / "straight", tmp_path / "broken", 5)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, tokenizer_dir):
    straight = cfg_for(tmp_path, tokenizer_dir, "straight")
    run(straight)
    out = tmp_path / "killed"
    killed = launch(
        [str(ROOT / "tests" / "helpers" / "faulty_train.py"), "kill-in-save", "10", *cli(tokenizer_dir, out)]
    )
    assert killed.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "step-10.tmp").is_dir()  # the torn write is there ...
    assert latest_complete(out).name == "step-5"  # ... and ignored
    summary = run(cfg_for(tmp_path, tokenizer_dir, "killed", resume="auto"))
    assert summary["resumed_from"].endswith("step-5")
    assert not (out / "checkpoints" / "step-10.tmp").exists()  # cleared by the next save of step 10
    assert_same_run(Path(straight.output_dir), out, 5)


def test_sigterm_finishes_the_step_checkpoints_and_exits_143(tmp_path, tokenizer_dir):
    out = tmp_path / "preempted"
    args = [str(ROOT / "scripts" / "train.py"), *cli(tokenizer_dir, out)]
    args[args.index("--max-steps") + 1] = "150"
    args[args.index("--save-every") + 1] = "1000"
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_metrics(out, lines=3, seconds=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("preempted by SIGTERM after step ") and "--resume auto" in last
    stopped_at = int(last.split("after step ")[1].split(";")[0])
    assert 3 <= stopped_at < 150
    assert latest_complete(out).name == f"step-{stopped_at}"

    resumed = run(
        cfg_for(tmp_path, tokenizer_dir, "preempted", max_steps=150, save_every=1000, resume="auto")
    )
    run(cfg_for(tmp_path, tokenizer_dir, "straight", max_steps=150, save_every=1000))
    assert resumed["resumed_from"].endswith(f"step-{stopped_at}")
    a, b = step_losses(tmp_path / "straight"), step_losses(out)
    assert [b[s] for s in range(stopped_at + 1, 151)] == [a[s] for s in range(stopped_at + 1, 151)]


def worker_pids(out: Path) -> dict[int, int]:
    """rank -> pid of the training processes writing to `out` (read from /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if str(out) not in (proc / "cmdline").read_bytes().decode(errors="replace"):
                continue
            env = dict(
                kv.split("=", 1)
                for kv in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in kv
            )
        except OSError:
            continue
        if "RANK" in env and "LOCAL_RANK" in env:
            found[int(env["RANK"])] = int(proc.name)
    return found


def start_two_process_run(tokenizer_dir, out: Path, max_steps: int):
    """A 2-process CPU run of `max_steps` (no periodic checkpoint), once it has logged 3 lines: (launcher,
    rank -> pid).
    """
    args = cli(tokenizer_dir, out, "--batch-size", "8")
    args[args.index("--max-steps") + 1] = str(max_steps)
    args[args.index("--save-every") + 1] = "1000"
    proc = subprocess.Popen(
        [
            *accelerate_launch(*TWO_PROCESSES),
            str(ROOT / "scripts" / "train.py"),
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_metrics(out, lines=3, seconds=180)
    pids = worker_pids(out)
    assert sorted(pids) == [0, 1]
    return proc, pids


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path, tokenizer_dir):
    out = tmp_path / "ddp"
    proc, pids = start_two_process_run(tokenizer_dir, out, max_steps=150)
    os.kill(pids[1], signal.SIGTERM)  # only rank 1 is told
    _, err = proc.communicate(timeout=180)
    # Two processes share stderr: a rank's progress bar may run into the other's message on one line.
    # One process speaks for both: the stop is said once (rank 0's, though only rank 1 was told).
    reported = re.findall(r"preempted by SIGTERM after step (\d+);", err)
    assert len(reported) == 1, err[-3000:]
    # Both ranks stopped after that same step: its checkpoint holds both ranks' states, and it is the last.
    ckpt = latest_complete(out)
    assert ckpt.name == f"step-{reported[0]}" and 3 <= int(reported[0]) < 150
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()


def test_sigterm_to_one_rank_in_an_evaluation_stops_every_rank_there(tmp_path, tokenizer_dir):
    """An evaluation during training is shared work: a rank told alone stops it where all agree, between
    two chunks (it used to leave it at once, and the other rank waited for it in the next gather for good)."""
    out, faulty = tmp_path / "ddp", str(ROOT / "tests" / "helpers" / "faulty_train.py")
    argv = cli(tokenizer_dir, out, "--batch-size", "8", "--eval-every", "2", "--no-final-eval")
    proc = launch([faulty, "sigterm-in-eval", "1", *argv], two_processes=True, timeout=180)
    assert proc.returncode != 0
    assert re.findall(r"preempted by SIGTERM after step (\d+);", proc.stderr) == ["2"], proc.stderr[-3000:]
    assert latest_complete(out).name == "step-2"
    assert [m["step"] for m in metrics(out)] == [1, 2]  # no evaluation line: it stopped part way


def test_a_folder_is_replaced_whole_and_a_stop_between_the_renames_leaves_no_copy_behind(tmp_path):
    """`final/` (or a step's folder) replaced: the new one in, the old one gone; where a process stopped
    between the two renames (no `final/`, the old one aside as `final.old/`), the next save removes it."""
    from flant5_imdb.checkpoint import _commit

    def written(name: str, text: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights").write_text(text)
        return tmp_path / name

    final = written("final", "first")
    _commit(written("final.tmp", "second"), final)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["final"]
        and (final / "weights").read_text() == "second"
    )
    final.rename(tmp_path / "final.old")  # stopped between the renames
    _commit(written("final.tmp", "third"), final)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["final"] and (final / "weights").read_text() == "third"
    )


def test_a_stop_while_worker_processes_run_ends_them_and_says_the_stop():
    """Workers forked inside a guarded block (datasets' tokenizing pool) inherit its handler: on the pool's
    SIGTERM they must end as they would without it, or the pool waits for them for good (it did: a run
    stopped while tokenizing hung, or, killed outright, left its workers behind)."""
    code = (
        "import os, signal, sys, time\n"
        "import multiprocess\n"
        "from flant5_imdb.guards import Interrupted, interruptible\n"
        "def work(i):\n"
        "    if i == 0:\n"
        "        os.kill(os.getppid(), signal.SIGTERM)\n"
        "    time.sleep(60)\n"
        "try:\n"
        "    with interruptible('while working'):\n"
        "        with multiprocess.get_context('fork').Pool(2) as pool:\n"
        "            pool.map(work, range(2))\n"
        "except Interrupted as e:\n"
        "    print(e, flush=True)\n"
        "    sys.exit(e.exit_code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert (proc.returncode, proc.stdout.strip()) == (143, "stopped by SIGTERM while working"), proc.stderr


def test_a_stop_is_what_is_said_though_cleaning_up_raised_another_error():
    """datasets' pool, stopped, raises a TimeoutError of its own on the way out: the stop is what happened."""
    with (
        pytest.raises(Interrupted, match="^stopped by SIGTERM while working$"),
        interruptible("while working"),
    ):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here
        finally:
            raise TimeoutError  # noqa: B012 - what the pool's clean-up raises


def test_a_signal_that_lands_during_the_ranks_agreement_stops_the_next_step(monkeypatch):
    """The processes agree on a stop with an all-reduce at every step, and a process spends much of its
    step waiting in it for the others. A signal handled there must survive the agreement's result (zero:
    the others were not told), and stop every process after the next step."""
    for name in StopSignal.LAUNCHED:
        monkeypatch.delenv(name, raising=False)
    sent = []

    def all_reduce(flag, op, group):  # this process alone: MAX over one value leaves it as it is
        sent.append(int(flag.item()))
        if len(sent) == 1:
            stop._handle(signal.SIGTERM, None)  # the handler runs as the wait returns

    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "gloo")
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    stop = StopSignal(SimpleNamespace(num_processes=2))
    assert [stop.requested(), stop.requested()] == [False, True]
    assert sent == [0, signal.SIGTERM] and stop.signum == signal.SIGTERM


def nan_at(monkeypatch, steps: set[int]):
    """Make the loss NaN at the given optimizer steps (grad_accum 1: one loss call per step)."""
    real = train_module.token_loss_sum
    calls = {"n": 0}

    def patched(model, batch):
        calls["n"] += 1
        loss = real(model, batch)
        return loss * float("nan") if calls["n"] in steps else loss

    monkeypatch.setattr(train_module, "token_loss_sum", patched)


@pytest.mark.parametrize("optim", ["adamw", "adamw8bit"])  # fused kernel skip vs host-side skip
@pytest.mark.parametrize("lean", [{}, LEAN], ids=["standard", "in-backward"])
def test_a_nan_loss_skips_that_update(tmp_path, tokenizer_dir, monkeypatch, optim, lean):
    nan_at(monkeypatch, {4})
    snapshots = {}

    def snap(state, step, model):
        snapshots[state.step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    summary = run(
        cfg_for(tmp_path, tokenizer_dir, "nan", optim=optim, max_steps=6, dropout=0.0, **lean), on_step=snap
    )
    assert all(torch.equal(snapshots[3][k], snapshots[4][k]) for k in snapshots[3])
    assert not all(torch.equal(snapshots[4][k], snapshots[5][k]) for k in snapshots[4])
    assert summary["steps"] == 6 and summary["skipped_steps"] == 1
    rows = metrics(tmp_path / "nan")
    assert [r["skipped_steps"] for r in rows if "loss" in r] == [0, 0, 0, 1, 1, 1]


def test_nan_in_a_row_stops_with_a_clear_error(tmp_path, tokenizer_dir, monkeypatch):
    nan_at(monkeypatch, {5, 6, 7})
    cfg = cfg_for(tmp_path, tokenizer_dir, "nan", max_bad_steps=3, save_every=4, max_steps=12)
    with pytest.raises(
        NonFiniteError, match=r"3 updates in a row had a non-finite loss .*--max-bad-steps 3.* by step 7"
    ):
        run(cfg)
    assert latest_complete(cfg.output_dir).name == "step-4"


def test_out_of_memory_names_the_micro_batch_and_the_fix(tmp_path, tokenizer_dir, monkeypatch):
    def oom(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(train_module, "token_loss_sum", oom)
    with pytest.raises(
        OutOfMemory,
        match=r"micro-batch of 16 x \d+ tokens \(--batch-size 16\); .*--batch-size 8 --grad-accum 2",
    ):
        run(cfg_for(tmp_path, tokenizer_dir, "oom"))


def test_resume_refuses_other_math_unless_forced(tmp_path, tokenizer_dir):
    run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5))
    with pytest.raises(
        CheckpointError, match=r"changes the math \(--lr 0.002 -> 0.001\); pass --force-resume"
    ):
        run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5, lr=1e-3, resume="auto"))
    # Options that do not change the math may differ.
    assert run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5, log_every=3, resume="auto"))["steps"] == 5
    forced = run(
        cfg_for(tmp_path, tokenizer_dir, "r", max_steps=7, batch_size=8, resume="auto", force_resume=True)
    )
    assert forced["steps"] == 7


def test_data_whose_content_changed_is_refused_unless_forced(tmp_path, tokenizer_dir, caplog):
    """The same --data with one label edited and as many rows (the data order would continue as if
    nothing had changed): refused by name, as an option that changes the math is; --force-resume trains
    on the new data and says so. Unchanged data resumes without a word."""
    data = tmp_path / "train.jsonl"

    def write(flipped: int | None = None):
        rows = [{"text": f"a {'good' if i % 2 else 'bad'} film {i}", "label": (i % 2) ^ (i == flipped)}
                for i in range(160)]  # fmt: skip
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write()
    run(cfg_for(tmp_path, tokenizer_dir, "d", data=str(data)))
    with caplog.at_level("WARNING"):
        run(cfg_for(tmp_path, tokenizer_dir, "d", data=str(data), resume="auto"))
    assert "resuming with changes" not in caplog.text
    write(flipped=3)
    with pytest.raises(CheckpointError) as refused:
        run(cfg_for(tmp_path, tokenizer_dir, "d", data=str(data), resume="auto"))
    assert str(refused.value) == (
        f"refusing to resume: this run changes the math (the content of --data {str(data)!r} changed since "
        f"step-{STEPS}); pass --force-resume to resume with the new values"
    )
    other = tmp_path / "other.jsonl"  # another --data: that difference alone is named
    other.write_bytes(data.read_bytes())
    with pytest.raises(CheckpointError, match=r"math \(--data '[^;]*' -> '[^;]*other.jsonl'\); pass"):
        run(cfg_for(tmp_path, tokenizer_dir, "d", data=str(other), resume="auto"))
    with caplog.at_level("WARNING"):
        forced = run(cfg_for(tmp_path, tokenizer_dir, "d", data=str(data), resume="auto", force_resume=True))
    assert forced["steps"] == STEPS
    assert (
        f"resuming with changes (--force-resume applies them): the content of --data {str(data)!r}"
        in caplog.text
    )


def test_kernel_path_flags_may_change_on_resume_and_new_options_count_as_defaults():
    saved = {"config": TrainConfig().to_dict(), "num_processes": 1}
    kernels = preset("kernels").to_dict() | {"output_dir": saved["config"]["output_dir"]}
    # Buckets, compile, graphs and fused norms change shapes and rounding; the bias kernel drops attention
    # dropout.
    with pytest.raises(CheckpointError, match=r"\(--bias-kernel False -> True\)"):
        check_compatible(saved, kernels, 1, force=False)
    assert check_compatible(saved, kernels | {"bias_kernel": False}, 1, force=False) == []
    older = {"config": {k: v for k, v in saved["config"].items() if k != "bias_kernel"}, "num_processes": 1}
    assert check_compatible(older, TrainConfig().to_dict(), 1, force=False) == []


def test_a_checkpoint_from_before_label_spaces_resumes_with_the_new_default_verbalizer():
    """It held IMDB, trained on the `digits` targets that `auto` now gives IMDB: no difference to refuse."""
    old = {k: v for k, v in preset("smoke", verbalizer="digits").to_dict().items()
           if k not in ("label_column", "text_column", "labels", "train_split", "data_config")}  # fmt: skip
    assert (
        check_compatible({"config": old, "num_processes": 1}, preset("smoke").to_dict(), 1, force=False) == []
    )
    new = {"config": preset("smoke", verbalizer="digits").to_dict(), "num_processes": 1}
    with pytest.raises(
        CheckpointError, match=r"--verbalizer 'digits' -> 'auto'"
    ):  # a new one may hold any labels
        check_compatible(new, preset("smoke").to_dict(), 1, force=False)


def test_resume_auto_without_checkpoint_starts_fresh_and_bad_paths_fail(tmp_path, tokenizer_dir):
    assert run(cfg_for(tmp_path, tokenizer_dir, "fresh", max_steps=3, resume="auto"))["resumed_from"] is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        run(cfg_for(tmp_path, tokenizer_dir, "x", resume=str(tmp_path / "nowhere")))


def test_missing_rng_state_is_an_error(tmp_path, tokenizer_dir):
    run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5))
    (latest_complete(tmp_path / "r") / "random_states_0.pkl").unlink()
    with pytest.raises(
        CheckpointError, match=r"every checkpoint .* is damaged \(step-5: random_states_0.pkl is missing\)"
    ):
        run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5, resume="auto"))


def test_keeps_the_newest_k(tmp_path, tokenizer_dir):
    run(cfg_for(tmp_path, tokenizer_dir, "k", max_steps=12, save_every=2, keep_checkpoints=2))
    assert [p.name for p in complete_checkpoints(tmp_path / "k")] == ["step-10", "step-12"]
    assert sorted(p.name for p in (tmp_path / "k" / "checkpoints").iterdir()) == ["step-10", "step-12"]
    run(cfg_for(tmp_path, tokenizer_dir, "none", max_steps=3, keep_checkpoints=0))
    assert not (tmp_path / "none" / "checkpoints").exists()


# --- metrics across a resume --------------------------------------------------------------------


def test_a_resumed_runs_metrics_equal_the_uninterrupted_runs(tmp_path, tokenizer_dir):
    """Killed at step 7 (not a log step; the last checkpoint is step 5, the last log line step 6):
    the resumed run drops the line of step 6, which it does again, and its metrics.jsonl then equals
    the uninterrupted run's in every field but the wall-clock one, eval lines included."""
    kw = dict(log_every=3, eval_every=4, max_eval_samples=16)
    run(cfg_for(tmp_path, tokenizer_dir, "straight", **kw))

    def crash_at_7(state, step, model):
        if state.step == 7:
            raise Crash

    with pytest.raises(Crash):
        run(cfg_for(tmp_path, tokenizer_dir, "broken", **kw), on_step=crash_at_7)
    assert [r["step"] for r in metrics(tmp_path / "broken")] == [
        1,
        3,
        4,
        6,
    ]  # logged past the checkpoint at 5
    run(cfg_for(tmp_path, tokenizer_dir, "broken", resume="auto", **kw))

    def without_clock(rows):
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]

    straight, resumed = metrics(tmp_path / "straight"), metrics(tmp_path / "broken")
    assert [r["step"] for r in resumed] == [1, 3, 4, 6, 8, 9, 12, 12]
    assert without_clock(resumed) == without_clock(straight)
    # The throughput clock carries on from the checkpoint: no jump from counting earlier samples over the new
    # clock.
    rate = {r["step"]: r["samples_per_s"] for r in resumed if "samples_per_s" in r}
    assert rate[9] < 10 * rate[3]


# --- checkpoints that check themselves ----------------------------------------------------------


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tokenizer_dir):
    """A run with checkpoints at steps 5 and 10, made once for the damage tests (which copy it)."""
    out = tmp_path_factory.mktemp("saved") / "run"
    run(cfg_for(out.parent, tokenizer_dir, "run", max_steps=10))
    return out


def copy_run(saved: Path, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(saved, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def test_the_manifest_lists_every_file_with_size_and_checksum(saved_run):
    from flant5_imdb.checkpoint import MANIFEST, damage

    ckpt = saved_run / "checkpoints" / "step-10"
    listed = json.loads((ckpt / MANIFEST).read_text())
    on_disk = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()} - {MANIFEST, "COMPLETE"}
    assert set(listed) == on_disk and len(on_disk) >= 8
    assert all(size == (ckpt / name).stat().st_size for name, (size, _) in listed.items())
    assert damage(ckpt) is None


@pytest.mark.parametrize("how", ["delete", "truncate", "flip"])
def test_every_kind_of_file_is_checked(saved_run, tmp_path, how):
    """Each file of a checkpoint (weights, optimizer, scheduler, RNG state, train state, model config,
    tokenizer, settings, the manifest itself), deleted, truncated or with one byte changed, is found
    and named."""
    from flant5_imdb.checkpoint import MANIFEST, damage

    out = copy_run(saved_run, tmp_path)
    ckpt = out / "checkpoints" / "step-10"
    names = sorted(json.loads((ckpt / MANIFEST).read_text())) + [MANIFEST]
    for name in (
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "train_state.json",
        "config.json",
        MANIFEST,
    ):
        assert name in names
    for name in names:
        f = ckpt / name
        original = f.read_bytes()
        if how == "delete":
            f.unlink()
        elif how == "truncate":
            f.write_bytes(original[: len(original) // 2])
        else:
            f.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        problem = damage(ckpt)
        if name == "train_state.json" and how != "flip":
            assert problem.startswith("train_state.json is unreadable"), problem
        elif name == MANIFEST and how != "delete":
            assert problem is not None and MANIFEST in problem, problem
        else:
            assert problem is not None and problem.startswith(name), (name, problem)
        f.write_bytes(original)
        assert damage(ckpt) is None


def test_resume_auto_skips_a_damaged_checkpoint_and_resume_path_names_the_file(
    saved_run, tmp_path, tokenizer_dir, caplog
):
    import logging

    out = copy_run(saved_run, tmp_path)
    (out / "checkpoints" / "step-10" / "optimizer.bin").write_bytes(b"torn")
    with pytest.raises(
        CheckpointError,
        match=r"--resume .*step-10: damaged checkpoint: optimizer.bin has 4 bytes, the manifest says \d+",
    ):
        run(
            cfg_for(tmp_path, tokenizer_dir, "run", max_steps=10, resume=str(out / "checkpoints" / "step-10"))
        )
    with caplog.at_level(logging.WARNING, logger="flant5_imdb.checkpoint"):
        summary = run(cfg_for(tmp_path, tokenizer_dir, "run", max_steps=10, resume="auto"))
    assert summary["resumed_from"].endswith("step-5") and summary["steps"] == 10
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("flant5_imdb") and r.name != ENCODE_LOG
    ]
    assert len(warnings) == 1 and "skipping damaged checkpoint" in warnings[0] and "step-10" in warnings[0]
    assert "optimizer.bin" in warnings[0]


def test_resume_auto_refuses_when_every_checkpoint_is_damaged(saved_run, tmp_path, tokenizer_dir):
    out = copy_run(saved_run, tmp_path)
    for step in (5, 10):
        (out / "checkpoints" / f"step-{step}" / "model.safetensors").unlink()
    config_before = (out / "config.json").read_bytes()
    with pytest.raises(
        CheckpointError,
        match=r"every checkpoint in .* is damaged \(step-10: model.safetensors is missing; step-5: ",
    ):
        run(cfg_for(tmp_path, tokenizer_dir, "run", max_steps=12, resume="auto"))
    assert (out / "config.json").read_bytes() == config_before  # a refused resume leaves the run as it was


# --- --force-resume applies what it says -----------------------------------------------------------


def test_force_resume_applies_the_new_lr_betas_eps_and_weight_decay(saved_run, tmp_path, tokenizer_dir):
    """The lr of the first step after the resume is the new peak times the schedule at that step
    (linear decay over 12 steps: step 11 runs at 2/12 of the peak), and the restored optimizer
    carries the new betas, eps and weight decay."""
    from flant5_imdb import train as train_module

    out = copy_run(saved_run, tmp_path)
    seen = {}
    real = train_module.forward_backward

    def spy(job, batches, window):
        seen.setdefault(job.state.step + 1, [dict(g) for g in job.optimizer.param_groups])
        return real(job, batches, window)

    import unittest.mock

    with unittest.mock.patch.object(train_module, "forward_backward", spy):
        run(
            cfg_for(
                tmp_path,
                tokenizer_dir,
                "run",
                max_steps=12,
                resume="auto",
                force_resume=True,
                lr=1e-3,
                adam_beta1=0.8,
                adam_beta2=0.99,
                adam_eps=1e-6,
            )
        )
    group = seen[11][0]
    assert group["lr"] == pytest.approx(1e-3 * 2 / 12) and group["initial_lr"] == 1e-3
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.99), 1e-6, 0.0)
    rows = {r["step"]: r for r in metrics(out) if "lr" in r}
    assert rows[11]["lr"] == pytest.approx(1e-3 * 2 / 12) and rows[12]["lr"] == pytest.approx(1e-3 * 1 / 12)


def test_apply_hyperparameters_sets_both_groups_with_weight_decay():
    from flant5_imdb.checkpoint import apply_hyperparameters
    from flant5_imdb.modeling import build_model
    from flant5_imdb.optim import build_scheduler, optimizer_from

    old = TrainConfig(weight_decay=0.01, lr=1e-3, warmup_steps=2)
    model = build_model("x", model_config="tiny", vocab_size=100)
    opt = optimizer_from(model, old)
    sched = build_scheduler(opt, old.schedule, old.warmup_steps, 10)
    for _ in range(4):
        opt.step()
        sched.step()
    apply_hyperparameters(opt, sched, TrainConfig(weight_decay=0.05, lr=2e-3, warmup_steps=2, adam_eps=1e-7))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]  # layer norms never decay
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [2e-3 * 6 / 8] * 2
    ) and sched.get_last_lr() == [g["lr"] for g in opt.param_groups]
    assert all(g["eps"] == 1e-7 for g in opt.param_groups)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(optim="adamw8bit"), "--optim 'adamw' -> 'adamw8bit'"),
        (dict(weight_decay=0.01), "--weight-decay 0.0 -> 0.01"),
        (dict(model_config="flan-t5-base"), "--model-config 'tiny' -> 'flan-t5-base'"),
    ],
)
def test_changes_a_checkpoint_cannot_take_are_refused_by_name_even_when_forced(change, name):
    saved = {"config": preset("smoke").to_dict(), "num_processes": 1}
    with pytest.raises(CheckpointError, match=re.escape(name) + r" cannot be applied to a checkpoint"):
        check_compatible(saved, preset("smoke", **change).to_dict(), 1, force=True)
    wd = {"config": preset("smoke", weight_decay=0.01).to_dict(), "num_processes": 1}
    assert check_compatible(wd, preset("smoke", weight_decay=0.02).to_dict(), 1, force=True) == [
        "--weight-decay 0.01 -> 0.02"
    ]


# --- one run per folder ------------------------------------------------------------------------------


def test_a_second_training_into_a_locked_folder_stops_naming_the_holder(tmp_path, tokenizer_dir):
    from flant5_imdb.config import ConfigError
    from flant5_imdb.rundir import RunLock

    holder = RunLock(tmp_path / "busy")
    holder.acquire()
    try:
        with pytest.raises(
            ConfigError, match=rf"--output-dir .*busy is in use by another training \(pid {os.getpid()}\)"
        ):
            run(cfg_for(tmp_path, tokenizer_dir, "busy", max_steps=2))
    finally:
        holder.release()
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".lock"]  # the refused run wrote nothing
    assert (
        run(cfg_for(tmp_path, tokenizer_dir, "busy", max_steps=2))["steps"] == 2
    )  # released: the folder is free


def test_the_lock_dies_with_its_process(tmp_path):
    """An OS lock, not a file that stays: SIGKILL the holder and the folder is free at once."""
    from flant5_imdb.rundir import RunLock

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from flant5_imdb.rundir import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout.readline().strip() == "held"
    from flant5_imdb.config import ConfigError

    with pytest.raises(ConfigError, match=rf"pid {holder.pid}"):
        RunLock(tmp_path).check()
    holder.kill()
    holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()  # no error: the kernel dropped the dead holder's lock
    lock.release()


def test_a_fresh_run_into_another_runs_folder_is_refused_unless_told(tmp_path, tokenizer_dir, caplog):
    import logging

    from flant5_imdb.config import ConfigError

    run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=10, save_every=10))
    lock_text = (tmp_path / "r" / ".lock").read_text()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()}
    with pytest.raises(
        ConfigError,
        match=r"holds another run \(metrics.jsonl, checkpoints, summary.json, final, eval.json\); "
        r"continue it with --resume auto, or pass --overwrite-output-dir",
    ):
        run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=4))
    # Untouched, the lock file too: a refused start writes nothing at all.
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()} == before
    assert (tmp_path / "r" / ".lock").read_text() == lock_text
    with caplog.at_level(logging.WARNING, logger="flant5_imdb.rundir"):
        run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=4, save_every=2, overwrite_output_dir=True))
    assert any("--overwrite-output-dir: deleting the earlier run" in r.getMessage() for r in caplog.records)
    assert [p.name for p in complete_checkpoints(tmp_path / "r")] == [
        "step-2",
        "step-4",
    ]  # no step-10 left beside them
    assert [r["step"] for r in metrics(tmp_path / "r") if "loss" in r] == [
        1,
        2,
        3,
        4,
    ]  # a new file, not appended to


def test_a_failed_start_writes_nothing(tmp_path, tokenizer_dir):
    from flant5_imdb.data import DataError

    out = tmp_path / "never"
    with pytest.raises(DataError):
        run(cfg_for(tmp_path, tokenizer_dir, "never", data=str(tmp_path / "missing.csv")))
    with pytest.raises(ValueError, match="no-model: no such folder"):
        run(cfg_for(tmp_path, tokenizer_dir, "never", model_config=None, model=str(tmp_path / "no-model")))
    with pytest.raises(CheckpointError):
        run(cfg_for(tmp_path, tokenizer_dir, "never", resume=str(tmp_path / "no-checkpoint")))
    assert not out.exists()


def test_a_refused_resume_leaves_the_run_untouched(tmp_path, tokenizer_dir):
    run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5))
    files = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".lock"}
    with pytest.raises(CheckpointError, match="changes the math"):
        run(cfg_for(tmp_path, tokenizer_dir, "r", max_steps=5, lr=1e-3, resume="auto"))
    assert {
        p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file() and p.name != ".lock"
    } == files


def test_workers_whose_launcher_dies_checkpoint_and_stop(tmp_path, tokenizer_dir):
    """SIGKILL the launcher of a 2-process run: its workers (in a session of their own) notice at
    the next step, agree, finish that step, checkpoint and exit, as on SIGTERM."""
    out = tmp_path / "orphans"
    launcher, pids = start_two_process_run(tokenizer_dir, out, max_steps=400)
    launcher.kill()
    launcher.wait()
    err = launcher.stderr.read()  # the workers still hold the pipe: this returns when they have exited
    assert worker_pids(out) == {}  # both workers are gone
    stops = sorted({int(s) for s in re.findall(r"the launcher \(pid \d+\) is gone after step (\d+);", err)})
    assert len(stops) == 1, err[-3000:]
    ckpt = latest_complete(out)
    assert ckpt.name == f"step-{stops[0]}" and 3 <= stops[0] < 400
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()


def test_a_checkpoint_without_its_complete_marker_is_skipped_with_one_warning(
    tmp_path, tokenizer_dir, caplog
):
    """A save cut short before its marker leaves step-N/ without COMPLETE: --resume auto takes the one
    before it, and says so once, by name."""
    import logging

    run(cfg_for(tmp_path, tokenizer_dir, "m", max_steps=4, save_every=2))
    (tmp_path / "m" / "checkpoints" / "step-4" / COMPLETE).unlink()
    caplog.clear()  # what the run logged (its data's truncation, say) is not the resume's
    with caplog.at_level(logging.WARNING, logger="flant5_imdb.checkpoint"):
        resumed = resolve_resume("auto", tmp_path / "m")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert resumed.name == "step-2" and len(warnings) == 1
    assert (
        warnings[0].startswith("--resume auto: skipping step-4 in ") and "no COMPLETE marker" in warnings[0]
    )
