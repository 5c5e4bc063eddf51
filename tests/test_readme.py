"""What a newcomer meets: the README's commands run as printed, clean logs, honest help texts."""

import logging
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_script


def readme_commands(marker: str) -> list[str]:
    """The commands of the README block after `<!-- marker -->`, as printed."""
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def run_as_printed(marker: str, scripts: list[str], cwd) -> list[str]:
    """The README block's commands (which must run `scripts`, in order), each run in `cwd` as typed
    there (the scripts from this checkout); their outputs."""
    commands = readme_commands(marker)
    assert [c.split()[1] for c in commands] == scripts
    outputs = []
    for command in commands:
        argv = [sys.executable if a == "python" else str(ROOT / a) if a.startswith("scripts/") else a
                for a in shlex.split(command)]  # fmt: skip
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, (command, proc.stderr[-2000:])
        outputs.append(proc.stdout)
    return outputs


def assert_evaluation_repeats_training(train: str, evaluate: str) -> None:
    """The trained model reached 0.95, and evaluate.py, on the same test set, says the same accuracy."""
    accuracy = re.search(r"accuracy (\d\.\d+)", train).group(1)
    assert float(accuracy) >= 0.95 and f"accuracy {accuracy}" in evaluate


def test_the_readme_walkthrough_runs_as_printed(tmp_path):
    """Each command in a fresh folder, as a newcomer would type it (the scripts from this checkout)."""
    scripts = ["scripts/train.py", "scripts/evaluate.py", "scripts/predict.py", "scripts/plot.py"]
    train, evaluate, predict, plot = run_as_printed("offline-walkthrough", scripts, tmp_path)
    assert_evaluation_repeats_training(train, evaluate)
    assert [line.split()[0] for line in predict.splitlines()] == ["class", "positive", "negative"]
    assert {p.name for p in (tmp_path / "runs" / "smoke").glob("*.png")} == {
        "loss_lr.png",
        "throughput.png",
        "confusion_matrix.png",
    }
    assert (tmp_path / "runs" / "smoke" / "final" / "eval.txt").is_file()


def test_your_own_data_runs_as_printed(tmp_path):
    """A CSV with three string labels in `message`/`team` columns: file to predictions, four commands."""
    scripts = ["scripts/example_data.py", "scripts/train.py", "scripts/evaluate.py", "scripts/predict.py"]
    _, train, evaluate, predict = run_as_printed("own-data", scripts, tmp_path)
    assert_evaluation_repeats_training(train, evaluate)
    assert "billing" in evaluate and "feature" in evaluate
    assert [line.split()[0] for line in predict.splitlines()] == ["class", "billing", "bug"]


def test_save_and_load_say_nothing_alarming(tmp_path, caplog):
    """No 'Removed shared tensor' on a checkpoint, no 'will NOT tie them' on loading what was saved."""
    import transformers

    from flant5_imdb.config import preset
    from flant5_imdb.modeling import build_model
    from flant5_imdb.train import run

    out = tmp_path / "r"
    transformers.logging.enable_propagation()  # transformers logs through a handler of its own otherwise
    try:
        with caplog.at_level(logging.INFO):
            run(
                preset(
                    "smoke",
                    data="synthetic:200",
                    max_steps=3,
                    save_every=2,
                    output_dir=str(out),
                    final_eval=False,
                )
            )
            build_model(str(out / "final"))
            build_model(str(sorted((out / "checkpoints").iterdir())[-1]))
            said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert not [m for m in said if "shared tensor" in m or "NOT tie" in m], said
            # Through transformers' own class the same load warns: the test sees what it guards against.
            transformers.T5ForConditionalGeneration.from_pretrained(out / "final")
            assert any("NOT tie" in r.getMessage() for r in caplog.records)
    finally:
        transformers.logging.disable_propagation()


def script_help(name: str, capsys) -> str:
    """What `python scripts/NAME.py --help` prints (run in this process)."""
    with pytest.raises(SystemExit) as stopped:
        load_script(name).main(["--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def test_help_texts_show_each_default_once_and_only_accepted_choices(capsys):
    flat = " ".join(script_help("train", capsys).split())
    assert "(default: None)" not in flat and "fp16}" not in flat and "{bf16,fp32}" in flat
    assert "(default: the model's own, 0.1 for flan-t5)" in flat and "0.1 for flan-t5) (default" not in flat
    for script in ("evaluate", "predict"):
        text = script_help(script, capsys)
        assert "--batch-size" in text and "(default: " in " ".join(text.split())


@pytest.mark.parametrize("baseline", ["baseline"])
def test_the_baseline_is_named_for_what_it_is(baseline):
    from bench.harness import CONFIGS
    from flant5_imdb.config import PRESETS

    assert baseline in PRESETS and "seed" not in PRESETS
    assert "hf-trainer" in CONFIGS and not any(name.startswith("seed") for name in CONFIGS)
    readme = (ROOT / "README.md").read_text()
    for internal in ("../shared", ".device", "issue 6", "seed-trainer", "seed recipe"):
        assert internal not in readme, internal
