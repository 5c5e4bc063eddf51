"""The training loop against the HF Trainer, against itself under other geometries, and end to end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flant5_imdb.config import preset
from flant5_imdb.data import IMDB, Collator, target_ids, tokenize
from flant5_imdb.modeling import build_model
from flant5_imdb.optim import optimizer_from
from flant5_imdb.tokenizer import load_tokenizer
from flant5_imdb.train import run
from tests.conftest import (
    ROOT,
    accelerate_launch,
    flags,
    load_script,
    real_data_or_skip,
    run_script,
    signal_on_call,
)  # fmt: skip
from tests.helpers import load_splits


def tiny(tmp_path, tokenizer_dir, name="run", **kw):
    """The smoke preset on a small synthetic set, dropout off so that runs can be compared exactly."""
    base = dict(tokenizer=str(tokenizer_dir), data="synthetic:160", dropout=0.0, log_every=1,
                max_eval_samples=32, output_dir=str(tmp_path / name), max_source_length=64)  # fmt: skip
    return preset("smoke", **{**base, **kw})


def losses(out_dir) -> list[float]:
    return [
        r["loss"]
        for r in map(json.loads, (Path(out_dir) / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]


def final_params(out_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(out_dir) / "final" / "model.safetensors"))


def test_matches_seq2seq_trainer_step_for_step(tmp_path, tokenizer_dir):
    """The baseline recipe in our loop and in transformers.Seq2SeqTrainer: same init, batches, math."""
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments
    from transformers.trainer_utils import set_seed

    steps = 20
    cfg = preset(
        "baseline",
        model_config="tiny",
        tokenizer=str(tokenizer_dir),
        data="synthetic:240",
        dropout=0.0,
        max_steps=steps,
        log_every=1,
        eval_mode="score",
        max_eval_samples=16,
        output_dir=str(tmp_path / "ours"),
    )
    order = []
    ours = run(cfg, on_step=lambda state, step, model: order.extend(step.micro_batches[0]))
    assert ours["steps"] == steps and len(order) == steps * 8

    # The Trainer gets the same tokenized rows, in the order our sampler drew them.
    tok = load_tokenizer(str(tokenizer_dir))
    train = tokenize(
        load_splits(cfg.data)[0],
        tok,
        target_ids(tok, "digits", IMDB),
        max_source_length=cfg.max_source_length,
    )["train"].select(order)
    set_seed(cfg.seed)
    model = build_model(cfg.model, model_config="tiny", vocab_size=len(tok), dropout=0.0)
    trainer_losses = []

    class Recording(Seq2SeqTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            trainer_losses.append(loss.item())
            return loss

        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=8,
        learning_rate=3e-4,
        max_steps=steps,
        seed=42,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    collate = Collator(max_length=512)
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=lambda rows: collate(
            [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]
        ),
    )
    trainer.train()

    ours_losses = losses(cfg.output_dir)
    assert len(ours_losses) == len(trainer_losses) == steps
    for a, b in zip(ours_losses, trainer_losses, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert ours_losses[-1] < ours_losses[0]  # it learned something, so the comparison is not of two no-ops
    theirs = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    for name, p in final_params(cfg.output_dir).items():
        torch.testing.assert_close(p, theirs[name], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_is_exact(tmp_path, tokenizer_dir):
    """8 x 1, 4 x 2 and 2 x 4 give the same parameters, with targets of 2 and 3 tokens mixed in each batch.

    Adam divides by sqrt(v) + eps, so where a gradient element is near zero it turns rounding noise
    (summation order differs between geometries) into a visible update: with eps = 1e-8 the runs
    differ by up to 1% of a step there. eps = 1e-4 damps that, and the parameters then agree to a
    few float32 ulps; the gradient math under test is the same.
    """
    runs = {}
    for bs, acc in ((8, 1), (4, 2), (2, 4)):
        cfg = tiny(
            tmp_path,
            tokenizer_dir,
            name=f"b{bs}x{acc}",
            batch_size=bs,
            grad_accum=acc,
            max_steps=6,
            verbalizer="negative,great positive",
            lr=1e-3,
            adam_eps=1e-4,
        )
        run(cfg)
        runs[(bs, acc)] = (losses(cfg.output_dir), final_params(cfg.output_dir))
    ref_losses, ref = runs[(8, 1)]
    for key in ((4, 2), (2, 4)):
        got_losses, got = runs[key]
        assert got_losses == pytest.approx(ref_losses, rel=1e-5), key
        for name in ref:
            torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6)
    init = final_params_at_init(tokenizer_dir)
    changed = max((ref[n] - init[n]).abs().max().item() for n in ref)
    assert changed > 1e-3  # the runs moved the weights: equality is not trivial


def final_params_at_init(tokenizer_dir):
    from transformers.trainer_utils import set_seed

    set_seed(42)
    tok = load_tokenizer(str(tokenizer_dir))
    return build_model("x", model_config="tiny", vocab_size=len(tok), dropout=0.0).state_dict()


@pytest.mark.parametrize("optim", ["adamw8bit", "paged_adamw8bit"])
def test_8bit_optimizers_keep_embedding_states_in_32_bits(optim):
    model = build_model("x", model_config="tiny", vocab_size=200)
    opt = optimizer_from(model, preset("smoke", optim=optim))
    loss = model(input_ids=torch.randint(3, 200, (4, 12)), labels=torch.randint(3, 200, (4, 3))).loss
    loss.backward()
    opt.step()
    assert opt.state[model.shared.weight]["state1"].dtype == torch.float32
    assert opt.state[model.lm_head.weight]["state1"].dtype == torch.float32
    big = (
        model.encoder.block[0].layer[1].DenseReluDense.wi_0.weight
    )  # 8,192 values: above bnb's 8-bit threshold
    assert opt.state[big]["state1"].dtype == torch.uint8


def test_adamw8bit_learns(tmp_path, tokenizer_dir):
    cfg = tiny(tmp_path, tokenizer_dir, optim="adamw8bit", max_steps=40, log_every=10)
    run(cfg)
    got = losses(cfg.output_dir)
    assert got[-1] < 0.5 * got[0]


def test_outputs_of_a_run(tmp_path, tokenizer_dir):
    cfg = tiny(tmp_path, tokenizer_dir, max_steps=5, log_every=2, report_to="tensorboard", eval_every=4)
    summary = run(cfg)
    out = Path(cfg.output_dir)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 4, 5]  # and the last step: a short window is logged too
    assert [r["step"] for r in evals] == [4] and 0 <= evals[0]["eval_accuracy"] <= 1
    assert all({"step", "loss", "lr", "samples_per_s"} <= r.keys() for r in rows)
    assert rows[0]["lr"] == pytest.approx(
        cfg.lr
    )  # the lr the first step used: linear decay starts at the peak
    assert not any(k.startswith("_orig_mod.") or k.startswith("module.") for k in final_params(out))
    assert (out / "final" / "tokenizer.json").is_file() and (out / "eval.json").is_file()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["steps"] == 5 and saved["samples_seen"] == 5 * 16 and saved["samples_per_s"] > 0
    assert saved["eval"]["n"] == 32 and 0 <= saved["eval"]["accuracy"] <= 1
    assert summary["config"]["lr"] == cfg.lr and saved["peak_gpu_memory_gib"] is None
    events = list((out / "flant5_imdb").glob("events.out.tfevents.*"))  # --report-to tensorboard
    assert events and events[0].stat().st_size > 0


def test_script_reports_user_errors_in_one_line(tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("text,label\nfine,1\n,0\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            "--preset",
            "smoke",
            "--data",
            str(bad),
            "--output-dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: {bad}: 1 bad row(s): {bad} line 3: empty text")
    )
    proc = run_script("train", "--precision", "fp16")
    assert proc.returncode == 2 and "fp16 is refused" in proc.stderr


def test_smoke_preset_learns(smoke_run):
    _, summary = smoke_run
    print(
        f"\nsmoke preset: accuracy {summary['eval']['accuracy']:.4f} in {summary['train_seconds']:.1f} s of "
        "training"
    )
    assert summary["eval"]["accuracy"] >= 0.95


@pytest.mark.parametrize("main", [True, False])
def test_main_first_stops_every_process_when_the_main_one_fails(monkeypatch, main):
    """The main process's error reaches the others, which raise MainFailed without running the block."""
    from types import SimpleNamespace

    from flant5_imdb.accel import MainFailed, main_first

    sent = []

    def broadcast(box, src):  # what the main process sends is what every other one receives
        if main:
            sent.append(list(box))
        else:
            box[0] = "DataError: train.csv line 3: empty text"

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    accelerator = SimpleNamespace(num_processes=2, is_main_process=main)
    ran = []
    error = "train.csv line 3: empty text"
    with pytest.raises(ValueError if main else MainFailed, match=error), main_first(accelerator):
        ran.append(True)
        raise ValueError(error)
    assert ran == ([True] if main else []) and sent == ([[f"ValueError: {error}"]] if main else [])


def test_a_data_error_in_two_processes_is_said_once(tmp_path):
    """`accelerate launch` with 2 processes and a bad file: the main process's one line, and nothing from
    the other (it stopped at the main process's error, not at a barrier its peer had left)."""
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,1\n,0\n")
    launch = accelerate_launch(
        "--config_file", str(ROOT / "configs" / "multi_gpu.yaml"), "--num_processes", "2"
    )
    proc = subprocess.run(
        [*launch, str(ROOT / "scripts" / "train.py"), "--preset", "smoke", "--data", str(bad),
         "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count("1 bad row(s)") == 1 and "[rank1]" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists()


def test_two_processes_match_one(tmp_path, tokenizer_dir):
    """The README's `accelerate launch --config_file configs/multi_gpu.yaml --num_processes 2` on the
    CPU (gloo) vs one process, same effective batch."""
    # eps: see the accumulation test
    common = ["--preset", "smoke", *flags(tokenizer=tokenizer_dir, data="synthetic:160", dropout=0,
              max_steps=6, grad_accum=2, max_eval_samples=32, log_every=1, max_source_length=64,
              verbalizer="negative,great positive", adam_eps=1e-4)]  # fmt: skip
    env = dict(os.environ)
    two = tmp_path / "two"
    proc = subprocess.run(
        [
            *accelerate_launch(
                "--config_file", str(ROOT / "configs" / "multi_gpu.yaml"), "--num_processes", "2"
            ),
            str(ROOT / "scripts" / "train.py"),
            *common,
            "--batch-size",
            "2",
            "--output-dir",
            str(two),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tiny(
        tmp_path,
        tokenizer_dir,
        name="one",
        batch_size=4,
        grad_accum=2,
        max_steps=6,
        verbalizer="negative,great positive",
        adam_eps=1e-4,
    )
    run(one)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed_type"] == "DistributedType.MULTI_CPU"
    # One process speaks, and a checkpoint is one line, not accelerate's five.
    assert len(re.findall(r"INFO flant5_imdb.train: training 6 steps", proc.stderr)) == 1, proc.stderr[-3000:]
    assert "Saving current state" not in proc.stderr and proc.stderr.count("checkpoint saved:") == 1
    a, b = summary["rank_param_checksums"]
    assert a == b  # DDP kept the ranks identical
    assert losses(two) == pytest.approx(losses(one.output_dir), rel=1e-5)
    ref = final_params(one.output_dir)
    for name, p in final_params(two).items():
        torch.testing.assert_close(p, ref[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_real_imdb_tiny_model_beats_chance(tmp_path):
    """A tiny model, a few minutes of CPU, the real reviews: clearly above chance (the figure is printed)."""
    data_dir, tok_dir = real_data_or_skip()
    cfg = preset(
        "fast",
        model_config="tiny",
        tokenizer=str(tok_dir),
        data=str(data_dir),
        precision="fp32",
        max_train_samples=8000,
        max_eval_samples=2000,
        max_source_length=256,
        batch_size=32,
        epochs=2,
        lr=1e-3,
        log_every=50,
        output_dir=str(tmp_path / "imdb"),
    )
    summary = run(cfg)
    acc = summary["eval"]["accuracy"]
    print(
        f"\nreal IMDB, tiny T5, 8,000 reviews x 2 epochs, {summary['train_seconds']:.0f} s on CPU: "
        f"accuracy {acc:.4f}, macro-F1 {summary['eval']['macro_f1']:.4f} on 2,000 test reviews"
    )
    assert acc > 0.70


def test_fsdp_config_starts_a_two_process_cpu_run(tmp_path, tokenizer_dir):
    """configs/fsdp.yaml: FSDP needs CUDA, so on the CPU accelerate runs gloo DDP and the run says so."""
    out = tmp_path / "fsdp"
    proc = subprocess.run(
        [
            *accelerate_launch("--config_file", str(ROOT / "configs" / "fsdp.yaml"), "--num_processes", "2"),
            str(ROOT / "scripts" / "train.py"),
            "--preset",
            "smoke",
            *flags(
                tokenizer=tokenizer_dir,
                data="synthetic:160",
                max_steps=3,
                max_eval_samples=16,
                output_dir=out,
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP was asked for, but there is no CUDA: running as DistributedType.MULTI_CPU" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["processes"] == 2 and summary["steps"] == 3 and len(set(summary["rank_param_checksums"])) == 1
    )


class HostReads(torch.overrides.TorchFunctionMode):
    """Records every call that copies a tensor's value to the host (on a GPU: a sync that stalls the host).

    `.all()`/`.any()` alone stay on the device; reading their result in an `if` is the `__bool__`
    recorded here. `.numpy()` is not in the list: it refuses device tensors, so it only ever reads
    host memory (the loop counts target tokens of the host batch with it).
    """

    READS = frozenset(
        {"__bool__", "__int__", "__float__", "__index__", "__complex__", "item", "tolist", "cpu"}
    )

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            import traceback

            self.reads.append(
                f"{name} at " + "".join(traceback.format_stack(limit=4)[:-1]).strip().replace("\n", " | ")
            )
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, tokenizer_dir, attn):
    """Steps 2 to 5 of 6 (no log, evaluation or checkpoint step among them) run under HostReads:
    batches, token counts, forward with padded sources, backward, clipping, the non-finite skip,
    the optimizer and the schedule must make no call that reads a tensor back."""
    steps, mode = 6, HostReads()

    def record_inside_steps(state, step, model):
        if state.step == 1:
            mode.__enter__()
        elif state.step == steps - 1:
            mode.__exit__(None, None, None)

    cfg = tiny(
        tmp_path,
        tokenizer_dir,
        max_steps=steps,
        log_every=10**6,
        max_bad_steps=10**6,
        keep_checkpoints=0,
        final_eval=False,
        save_model=False,
        attn_implementation=attn,
        batch_size=4,
    )
    assert run(cfg, on_step=record_inside_steps)["steps"] == steps
    assert mode.reads == []


def signal_in_evaluation(monkeypatch, sig: str) -> int:
    """Send `sig` to this process from inside training's first evaluation; the exit code it means."""
    from flant5_imdb import train as train_module

    return signal_on_call(monkeypatch, train_module, "evaluate", sig)[0]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_final_evaluation_keeps_the_model_and_says_so(
    tmp_path, monkeypatch, capsys, caplog, sig
):
    """The final evaluation can take hours on a CPU: the model is saved before it, and stopping it is one
    line saying where the model is, exit 130 (143), no traceback. (The run says where it runs, too.)"""
    import logging

    code = signal_in_evaluation(monkeypatch, sig)
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--data", "synthetic:200", "--max-steps", "2", "--output-dir", str(out)]
    with caplog.at_level(logging.INFO, logger="flant5_imdb"):
        assert load_script("train").main(argv) == code
    assert "running on cpu, 1 CPU thread, fp32" in caplog.text
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"stopped by {sig} during the final evaluation; the trained model is saved in {out / 'final'}"
    )
    assert "Traceback" not in err
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "config.json").is_file()


def test_a_model_save_stopped_part_way_leaves_no_final_folder_and_resume_saves_it(
    tmp_path, monkeypatch, capsys
):
    """final/ appears whole or not at all: weights without the settings beside them would load as a model
    of IMDB's two classes. Stopped once the files are written but before they are sealed: no final/, one
    line saying how to get the model; the same command with --resume auto writes it whole."""
    import os
    import signal
    import time

    from flant5_imdb import train as train_module

    real = train_module.save_final

    def stopped_save(accelerator, model, path, export_to):
        def export(folder):
            export_to(folder)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here

        real(accelerator, model, path, export)

    monkeypatch.setattr(train_module, "save_final", stopped_save)
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--data", "synthetic:200", "--max-steps", "2", "--no-final-eval",
            "--output-dir", str(out)]  # fmt: skip
    assert load_script("train").main(argv) == 143
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"stopped by SIGTERM while saving the trained model; {out / 'final'} was not written; the same "
        "command with --resume auto saves it from the last checkpoint"
    )
    assert not (out / "final").exists()
    monkeypatch.setattr(train_module, "save_final", real)
    assert load_script("train").main([*argv, "--resume", "auto"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("final")) == ["final"]
    whole = ("model.safetensors", "flant5_imdb.json", "config.json")
    assert all((out / "final" / f).is_file() for f in whole)


def test_a_signal_in_an_evaluation_during_training_checkpoints_and_stops(tmp_path, monkeypatch, capsys):
    """`--eval-every`: Ctrl-C inside an evaluation between steps stops it at once; the step before it is
    checkpointed, as for a signal between steps, and `--resume auto` goes on from there."""
    code = signal_in_evaluation(monkeypatch, "SIGINT")
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--data", "synthetic:200", "--max-steps", "6", "--eval-every", "2",
            "--output-dir", str(out)]  # fmt: skip
    assert load_script("train").main(argv) == code == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("preempted by SIGINT after step 2; checkpoint ")
    assert "--resume auto" in err and "Traceback" not in err
    assert (out / "checkpoints" / "step-2").is_dir() and not (out / "final").exists()


HEAVY = ("torch", "transformers", "datasets", "pyarrow", "accelerate")


def refused_light(script: str, *argv: str) -> tuple[int, str, list[str], float]:
    """Run scripts/SCRIPT.py's main(argv) in a fresh interpreter: its exit code, its stderr, which heavy
    packages it had imported when it returned, and how long it took."""
    import time

    code = (
        "import sys, importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('s', {str(ROOT / 'scripts' / f'{script}.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"rc = m.main({list(argv)!r})\n"
        f"print(','.join(p for p in {HEAVY!r} if p in sys.modules)); sys.exit(rc)\n"
    )
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    took = time.perf_counter() - started
    return proc.returncode, proc.stderr, [p for p in proc.stdout.strip().split(",") if p], took


def test_a_missing_file_or_a_folder_in_use_is_refused_before_torch_is_imported(tmp_path):
    """Refused from the options, the files and the folder alone: nothing heavy imported, nothing read
    (was 7.5 s for a missing --data, and a folder in use only after tokenizing the data)."""
    rc, err, heavy, took = refused_light(
        "train", "--preset", "smoke", "--data", str(tmp_path / "nothere.csv")
    )
    assert (rc, err.strip(), heavy) == (
        2,
        f"error: --data {tmp_path / 'nothere.csv'}: no such file or folder",
        [],
    )
    assert took < 10  # an interpreter and the options module: well under a second on an idle machine
    earlier = tmp_path / "earlier"
    (earlier / "checkpoints" / "step-1").mkdir(parents=True)
    (earlier / "metrics.jsonl").write_text('{"step": 1}\n')
    rc, err, heavy, _ = refused_light("train", "--preset", "smoke", "--output-dir", str(earlier))
    assert (
        rc == 2 and heavy == [] and err.strip().startswith(f"error: --output-dir {earlier} holds another run")
    )


def test_a_cpu_run_keeps_freed_memory_for_its_next_step(tmp_path, tokenizer_dir, monkeypatch):
    """A CPU training run asks malloc to keep what a step frees (no page faults for the next step's
    activations: `accel.keep_freed_memory`), once, at set-up."""
    from flant5_imdb import accel

    calls = []
    monkeypatch.setattr(accel, "keep_freed_memory", lambda: calls.append(1) or True)
    run(tiny(tmp_path, tokenizer_dir, max_steps=2, final_eval=False))
    assert calls == [1]
