"""What a newcomer meets: the README's commands run as printed, every documented command one its script
accepts, clean logs, honest help texts."""

import csv
import importlib
import logging
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_script, real_data_or_skip

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands(marker: str) -> list[str]:
    """The commands of the README block after `<!-- marker -->`, as printed."""
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)```", text, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def run_as_printed(
    marker: str, scripts: list[str], cwd, extra: dict[int, list[str]] | None = None
) -> list[str]:
    """The README block's commands (which must run `scripts`, in order), each run in `cwd` as typed
    there (the scripts from this checkout; `extra[i]` appended to the i-th); their outputs."""
    commands = readme_commands(marker)
    assert [c.split()[1] for c in commands] == scripts
    outputs = []
    for i, command in enumerate(commands):
        argv = [sys.executable if a == "python" else str(ROOT / a) if a.startswith("scripts/") else a
                for a in shlex.split(command)] + (extra or {}).get(i, [])  # fmt: skip
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
    """A CSV with three string labels in `message`/`team` columns: file to predictions, five commands."""
    scripts = ["scripts/example_data.py", "scripts/train.py", "scripts/evaluate.py", "scripts/predict.py",
               "scripts/predict.py"]  # fmt: skip
    _, train, evaluate, predict, _ = run_as_printed("own-data", scripts, tmp_path)
    assert_evaluation_repeats_training(train, evaluate)
    assert "billing" in evaluate and "feature" in evaluate
    assert [line.split()[0] for line in predict.splitlines()] == ["class", "billing", "bug"]
    with open(tmp_path / "runs" / "tickets" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "tickets" / "test.csv", newline="") as f:
        tickets = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [t["message"] for t in tickets]
    assert sum(r["label_name"] == t["team"] for r, t in zip(rows, tickets, strict=True)) >= 0.95 * len(rows)


def test_training_on_local_imdb_files_runs_as_printed(tmp_path):
    """The README's commands for IMDB without the Hub, in a folder holding `imdb/` (a seeded sample of
    the real parquet files: 400 training and 200 test reviews) and `flan-t5-base/` (a local model
    folder: a tiny T5 with a T5-style tokenizer in place of the real weights), a few steps only."""
    import random

    import pyarrow.parquet as pq

    from flant5_imdb.modeling import build_model
    from flant5_imdb.tokenizer import load_tokenizer

    imdb, tokenizer_dir = real_data_or_skip()
    (tmp_path / "imdb").mkdir()
    for split, n in (("train", 400), ("test", 200)):
        table = pq.read_table(imdb / f"{split}.parquet")
        pq.write_table(table.take(sorted(random.Random(0).sample(range(table.num_rows), n))),
                       tmp_path / "imdb" / f"{split}.parquet")  # fmt: skip
    tokenizer = load_tokenizer(str(tokenizer_dir))
    build_model("tiny", model_config="tiny", vocab_size=len(tokenizer)).save_pretrained(
        tmp_path / "flan-t5-base"
    )
    tokenizer.save_pretrained(tmp_path / "flan-t5-base")
    limits = {0: ["--max-steps", "4", "--max-eval-samples", "32"], 1: ["--max-eval-samples", "32"]}
    train, evaluate = run_as_printed(
        "local-files", ["scripts/train.py", "scripts/evaluate.py"], tmp_path, limits
    )
    assert "done: 4 steps" in train and "32 examples" in evaluate
    assert (tmp_path / "runs" / "imdb" / "final" / "eval.json").is_file()
    # The CPU-sized form, as printed: its bounds are its own.
    train, evaluate = run_as_printed("local-files-cpu", ["scripts/train.py", "scripts/evaluate.py"], tmp_path)
    assert "done: 10 steps" in train and "200 examples" in evaluate


# Commands the pages may give that are not this project's: installing, downloading, reading a file.
OTHER_TOOLS = {"pip", "hf", "cat", ".", "source"}


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) for every shell command in the README and docs/: each line of a ```bash block
    (continued lines joined, comments dropped) and each inline `python ...`, `accelerate launch ...`
    or `bash ...`; pipelines and `&&` split into their commands, redirections dropped."""
    found = []
    for page in PAGES:
        text = page.read_text()
        lines = []
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            lines += [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
        for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
            span = " ".join(span.split())
            if re.match(r"(python3? |accelerate launch |([A-Z_]+=\S* )*bash )", span):
                lines.append(span)
        for line in lines:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, "#"
            argv: list[str] = []
            tokens = iter([*lexer, "&&"])
            for token in tokens:
                if token in ("|", "&&", ";", "||"):
                    found += [(page.name, argv)] if argv else []
                    argv = []
                elif token in (">", ">>", "<"):
                    next(tokens)  # the file it names
                else:
                    argv.append(token)
    return found


def check_command(argv: list[str]) -> None:
    """Fails unless `argv` is a command of another tool, or one this project's script or launcher accepts."""
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):
        argv = argv[1:]  # environment for the command
    head = argv[0]
    if head in OTHER_TOOLS or argv[:3] in (["python3", "-m", "venv"], ["python", "-m", "pytest"]):
        return
    if head in ("python", "python3") and argv[1] == "-c":
        return
    if head == "bash":
        script = (ROOT / argv[1]).read_text()
        assert all(a in script for a in argv[2:] if a.startswith("--")), argv
        return
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(argv[2:])
        assert launch.config_file is None or (ROOT / launch.config_file).is_file(), argv
        script, args = launch.training_script, launch.training_script_args
    else:
        assert head in ("python", "python3"), f"a command no test knows: {shlex.join(argv)}"
        script, args = argv[1], argv[2:]
    assert (ROOT / script).is_file(), script
    folder, name = script.removesuffix(".py").split("/")
    module = load_script(name) if folder == "scripts" else importlib.import_module(f"{folder}.{name}")
    parse = getattr(module, "parse", None) or module.parse_args
    try:
        parse(args)
    except SystemExit as stopped:
        assert stopped.code == 0, f"{shlex.join(argv)}: refused by its script"


def test_every_documented_command_is_one_its_script_accepts(capsys):
    """Every command in the README and docs/: the options exist, the values are accepted, the files it
    runs exist (the README's own blocks are also run as printed, above)."""
    commands = documented_commands()
    assert len(commands) >= 30 and {page for page, _ in commands} >= {"README.md", "options.md"}
    for page, argv in commands:
        try:
            check_command(argv)
        except Exception as e:
            raise AssertionError(f"{page}: {shlex.join(argv)}: {e}") from e
    capsys.readouterr()


def test_a_command_with_a_misspelt_option_is_caught(capsys):
    with pytest.raises(AssertionError, match="refused"):
        check_command(["python", "scripts/evaluate.py", "--modle", "runs/x"])
    with pytest.raises(AssertionError, match="no test knows"):
        check_command(["make", "train"])


def test_the_python_example_runs(smoke_run):
    """The `Classifier` example of docs/options.md, on a trained model."""
    out, _ = smoke_run
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "options.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(code.replace("runs/flant5-imdb/final", str(out / "final")), namespace)
    assert namespace["clf"].predict("A wonderful film.").label_name in ("negative", "positive")


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
    from bench.rows import ROWS as CONFIGS
    from flant5_imdb.config import PRESETS

    assert baseline in PRESETS and "seed" not in PRESETS
    assert "hf-trainer" in CONFIGS and not any(name.startswith("seed") for name in CONFIGS)
    readme = "".join(page.read_text() for page in PAGES)
    for internal in ("../shared", ".device", "issue 6", "seed-trainer", "seed recipe"):
        assert internal not in readme, internal
