"""bench/scale.py, how it measures a command (bench/commands.py), and its peer bench/plain_predict.py: the
loop a plain transformers user writes."""

import json
import sys

import pytest

from bench import commands, plain_predict, scale
from flant5_imdb.predict import PredictJob, run_job


def test_the_peer_predicts_what_ours_does_and_both_say_how_long_the_loop_took(smoke_run, tmp_path, capsys):
    model = str(smoke_run[0] / "final")
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{('superb', 'awful')[i % 2]} film, fine acting {i}\n" for i in range(40)))
    ours = PredictJob(model=model, file=str(texts), output=str(tmp_path / "ours.jsonl"))
    ours_line = run_job(ours, say=lambda _: None)
    plain = ["--model", model, "--file", str(texts), "--output", str(tmp_path / "plain.jsonl")]
    assert plain_predict.main(plain) == 0
    plain_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert plain_line.startswith("40 texts predicted in ") and ours_line.startswith("40 texts predicted in ")
    assert commands.loop_seconds(plain_line) >= 0 and commands.loop_seconds(ours_line) >= 0
    assert scale.agreement(tmp_path / "ours.jsonl", tmp_path / "plain.jsonl") == 1.0
    names = [json.loads(line)["label_name"] for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert names == ["positive", "negative"] * 20


def test_loop_times_are_read_in_every_spelling():
    assert (
        commands.loop_seconds("4,096 texts predicted in 41.7 s on cpu (1 CPU thread); written: p.csv") == 41.7
    )
    assert commands.loop_seconds("x\n1,000,000 texts predicted in 1 h 18 min on cpu") == 4680
    assert commands.loop_seconds("12 texts predicted in 3 min 5 s on cpu") == 185
    assert commands.loop_seconds("done: 30 steps in 1.0 s") is None
    assert scale.counts("3000,60_000") == [3000, 60000]


def test_the_data_rows_run_both_sides_on_one_csv_and_tokenizer_cold_then_warm(tmp_path, monkeypatch):
    reviews = tmp_path / "imdb"
    reviews.mkdir()
    import pandas as pd

    pd.DataFrame({"text": ['a fine, "quoted"\nfilm', "dull"], "label": [1, 0]}).to_parquet(
        reviews / "train.parquet"
    )
    (tmp_path / "work" / "data-cache-5").mkdir(parents=True)  # a previous run's: emptied before the cold run
    ran = []

    def measure(name, command, n, env):
        ran.append((name, command, (tmp_path / "work" / "data-cache-5").exists()))
        return {"name": name}

    monkeypatch.setattr(scale, "measure", measure)
    args = scale.parse(
        ["data", "--texts", "5", "--tokenizer", "TOK", "--reviews", str(reviews), "--workers", "2"]
    )
    rows = scale.data_rows(args, 5, tmp_path / "work", {})
    assert [r["name"] for r in rows] == [
        "ours, cold",
        "datasets + map, cold",
        "ours, warm",
        "datasets + map, warm",
    ]
    assert not ran[0][2]
    table = tmp_path / "work" / "reviews-5.csv"
    assert pd.read_csv(table, keep_default_na=False).shape == (5, 2)
    for _, command, _ in ran:
        assert str(table) in command and "TOK" in command and "512" in command
    assert ran[0][1][ran[0][1].index("--preprocess-workers") + 1] == "2" and "--num-proc" in ran[1][1]


def test_a_command_that_says_a_lot_on_stderr_is_not_stopped_by_it():
    """measure() read the command's stderr only once it ended: past a pipe's 64 KiB (a million rows'
    progress bars) the command waited to write, and the bench with it, for ever."""
    import os
    import sys
    import threading

    loud = (
        "import sys\nfor i in range(20000): print('progress', i, file=sys.stderr)\n"
        "print('5 texts predicted in 2 s', file=sys.stderr)"
    )
    got = []
    worker = threading.Thread(
        target=lambda: got.append(
            commands.measure("loud", [sys.executable, "-c", loud], 5, dict(os.environ))
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)
    assert got and got[0]["loop_seconds"] == 2.0


def test_the_read_rows_read_every_record_of_both_files_on_both_sides(tmp_path):
    """`read`: our reader and the standard library's on one CSV and one texts file, each command checking
    it read every record; a command's peak memory is never reported below this process's own, which
    Linux counts in the peak of every command it starts (this test's: torch and pytest)."""
    import pandas as pd

    reviews = tmp_path / "imdb"
    reviews.mkdir()
    texts = ['a fine, "quoted"\nfilm', "dull", "caf\u00e9 \u65e5\u672c"]
    pd.DataFrame({"text": texts, "label": [1, 0, 1]}).to_parquet(reviews / "train.parquet")
    args = scale.parse(["read", "--texts", "7", "--reviews", str(reviews)])
    (tmp_path / "work").mkdir()
    rows = scale.read_rows(args, 7, tmp_path / "work", {"PATH": "/usr/bin:/bin"})
    assert [(r["name"], r["texts"]) for r in rows] == [
        ("ours, csv", 7), ("csv module, csv", 7), ("ours, texts", 7), ("plain lines, texts", 7)
    ]  # fmt: skip
    assert all(isinstance(r["peak_rss_mib"], int) and 5 < r["peak_rss_mib"] < 100 for r in rows), rows
    tiny = commands.measure("tiny", [sys.executable, "-c", "pass"], 1, {"PATH": "/usr/bin:/bin"})
    assert tiny["peak_rss_mib"].startswith("<= "), tiny
    scale.save(
        str(tmp_path / "out"), dict(command="read", threads=1, batch_size=32, machine="m", started="s"), rows
    )
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| run | records | seconds | records/s |" in table and "reading only, no model; s\n" in table
    (tmp_path / "work" / "reviews-7.csv").write_text("text,label\nonly one,1\n")  # a record short: refused
    with pytest.raises(SystemExit, match="ours, csv failed"):
        scale.read_rows(args, 7, tmp_path / "work", {"PATH": "/usr/bin:/bin"})
