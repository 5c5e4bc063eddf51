"""Predictions written as they come (flant5_imdb/output.py, through `predict.run_job`): every format, a job
stopped at any moment and continued, nothing half-written, nothing replaced or mixed silently."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from flant5_imdb.output import OutputError, PredictionsFile, TextDigest
from flant5_imdb.predict import Classifier, Interrupted, PredictJob, run_job
from flant5_imdb.progress import StreamProgress
from tests.conftest import ROOT

WORDS = ["wonderful", "superb", "great", "awful", "boring", "dull", "film", "plot", "acting", "the", "and"]


@pytest.fixture(scope="module")
def model(smoke_run):
    return str(smoke_run[0] / "final")


@pytest.fixture
def texts_file(tmp_path):
    """41 texts of varied length, one a line (with a comma and a quote, for the csv output)."""
    path = tmp_path / "texts.txt"
    lines = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(1 + i % 9)) for i in range(41)]
    lines[3] = 'a "quoted", comma film'
    path.write_text("\n".join(lines) + "\n")
    return path


def job(model, texts_file, output, **kw) -> PredictJob:
    return PredictJob(model=model, file=str(texts_file), output=str(output), chunk_size=8, batch_size=3, **kw)


def stopped_after(monkeypatch, chunks: int):
    """Classifier.predict raises KeyboardInterrupt (Ctrl-C) when asked for chunk `chunks + 1`."""
    real, calls = Classifier.predict, []

    def predict(self, texts):
        calls.append(len(texts))
        if len(calls) > chunks:
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(Classifier, "predict", predict)


def content(path):
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_stopped_job_continues_to_the_same_file(model, texts_file, tmp_path, monkeypatch, kind):
    straight = tmp_path / f"straight.{kind}"
    line = run_job(job(model, texts_file, straight), say=lambda _: None)
    assert line.startswith("41 texts predicted in ") and line.endswith(f"written: {straight}")
    assert not (tmp_path / f"straight.{kind}.partial").exists()

    out = tmp_path / f"out.{kind}"
    stopped_after(monkeypatch, 2)
    with pytest.raises(Interrupted) as e:
        run_job(job(model, texts_file, out), say=lambda _: None)
    assert e.value.exit_code == 130
    assert str(e.value) == (
        f"stopped: 16 predictions kept in {out}.partial; the same command continues after them"
    )
    assert not out.exists()
    monkeypatch.undo()
    if kind != "parquet":  # a kill in the middle of a write: bytes after the last complete chunk
        with open(tmp_path / f"out.{kind}.partial" / f"records.{kind}", "ab") as f:
            f.write(b'{"text": "half a rec')
    said = []
    run_job(job(model, texts_file, out), say=said.append)
    assert said == [f"{out}: an earlier run of this job predicted 16 texts; going on after them"]
    assert content(out) == content(straight)  # the same chunks, the same batches: the same bytes
    assert not (tmp_path / f"out.{kind}.partial").exists()


def test_records_in_each_format(model, texts_file, tmp_path):
    for kind in ("jsonl", "csv", "parquet"):
        run_job(job(model, texts_file, tmp_path / f"p.{kind}"), say=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    texts = texts_file.read_text().splitlines()
    assert [r["text"] for r in rows] == texts and set(rows[0]) == {"text", "label", "label_name", "probs"}
    assert all(r["label_name"] == ["negative", "positive"][r["label"]] for r in rows)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-6 for r in rows)
    import csv

    with open(tmp_path / "p.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["text", "label", "label_name", "prob_negative", "prob_positive"]
    assert [(r["text"], int(r["label"]), float(r["prob_positive"])) for r in table] == [
        (r["text"], r["label"], r["probs"]["positive"]) for r in rows
    ]
    parquet = pq.read_table(tmp_path / "p.parquet")
    assert parquet.column_names == list(table[0]) and str(parquet.schema.field("label").type) == "int64"
    assert parquet.column("prob_negative").to_pylist() == [r["probs"]["negative"] for r in rows]


def test_nothing_is_replaced_or_mixed_silently(model, texts_file, tmp_path, monkeypatch):
    out = tmp_path / "p.jsonl"
    run_job(job(model, texts_file, out), say=lambda _: None)
    with pytest.raises(OutputError, match=rf"^{out} exists; pass --overwrite to replace it$"):
        run_job(job(model, texts_file, out))
    first = out.read_bytes()
    run_job(job(model, texts_file, out, overwrite=True), say=lambda _: None)
    assert out.read_bytes() == first

    # A stopped job is continued only by the same job, over the same texts.
    other = tmp_path / "q.jsonl"
    stopped_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        run_job(job(model, texts_file, other), say=lambda _: None)
    monkeypatch.undo()
    refused = r"\.partial holds an unfinished job with another --text-column \('text', not 'message'\)"
    with pytest.raises(OutputError, match=refused + "; pass --overwrite to start over, or another --output"):
        run_job(job(model, texts_file, other, text_column="message"))
    lines = texts_file.read_text().splitlines()
    texts_file.write_text("\n".join(["an edited first text", *lines[1:]]) + "\n")
    with pytest.raises(OutputError, match=r"the input's first 8 texts are not the ones predicted there"):
        run_job(job(model, texts_file, other), say=lambda _: None)
    (tmp_path / "q.jsonl.partial" / "records.jsonl").write_text("")  # cut short by hand
    texts_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(OutputError, match=r"q\.jsonl\.partial: its records are not all there"):
        run_job(job(model, texts_file, other), say=lambda _: None)
    texts_file.write_text("\n".join(["an edited first text", *lines[1:]]) + "\n")
    run_job(job(model, texts_file, other, overwrite=True), say=lambda _: None)
    assert [json.loads(x)["text"] for x in other.read_text().splitlines()][0] == "an edited first text"


def test_one_job_at_a_time_in_an_output(tmp_path):
    names = ("negative", "positive")
    first = PredictionsFile(tmp_path / "p.csv", {"model": "m"}, names)
    with pytest.raises(OutputError, match=rf"--output {tmp_path / 'p.csv'} is being written by another job "
                       rf"\(pid {os.getpid()}\)"):  # fmt: skip
        PredictionsFile(tmp_path / "p.csv", {"model": "m"}, names)
    assert first.finish() == tmp_path / "p.csv"
    assert (tmp_path / "p.csv").read_text() == "text,label,label_name,prob_negative,prob_positive\n"
    with pytest.raises(OutputError, match=r"name a \.csv, \.jsonl or \.parquet file"):
        PredictionsFile(tmp_path / "p.tsv", {}, names)


def test_the_digest_does_not_depend_on_the_chunks():
    a, b = TextDigest(), TextDigest()
    for t in ["one", "two", "three"]:
        a.update(t)
    b.update("one")
    b = TextDigest(b.value)  # as a resumed run starts from the value it saved
    for t in ["two", "three"]:
        b.update(t)
    c = TextDigest()
    for t in ["one", "twothree", ""]:
        c.update(t)
    assert a.value == b.value != c.value


def test_progress_goes_to_a_log_as_lines(monkeypatch):
    log, now = io.StringIO(), [0.0]  # not a terminal: whole lines, every `every` seconds and at the end
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    p = StreamProgress("predict", 1000, stream=log, every=30.0)
    for t, n in ((10, 100), (31, 300), (40, 100), (62, 100)):  # lines at 31 s and 62 s
        now[0] = t
        p.update(n)
    now[0] = 70
    p.close()
    assert log.getvalue().splitlines() == [
        "predict: 400 / 1,000 texts (40.0%), 13 texts/s, about 46 s left",
        "predict: 600 / 1,000 texts (60.0%), 10 texts/s, about 41 s left",
        "predict: 600 / 1,000 texts (60.0%), 9 texts/s, about 47 s left",
    ]


def test_a_killed_job_continues_where_it_stopped(model, tmp_path):
    """SIGKILL at a moment no code chose (the job is writing chunk after chunk): the same command ends
    with the file an uninterrupted run writes."""
    texts = tmp_path / "texts.jsonl"
    rows = [{"text": f"{WORDS[i % len(WORDS)]} film number {i} " * (1 + i % 5)} for i in range(600)]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [sys.executable, str(ROOT / "scripts" / "predict.py"), "--model", model, "--file", str(texts),
            "--chunk-size", "16", "--batch-size", "8"]  # fmt: skip
    straight = subprocess.run([*args, "--output", str(tmp_path / "straight.csv")], capture_output=True,
                              timeout=120)  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-2000:]
    out, state = tmp_path / "out.csv", tmp_path / "out.csv.partial" / "job.json"
    proc = subprocess.Popen([*args, "--output", str(out)], stderr=subprocess.DEVNULL)  # writes only to `out`
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["progress"]["records"] >= 64:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = json.loads(state.read_text())["progress"]["records"]
    assert 64 <= kept < 600 and not out.exists()
    again = subprocess.run([*args, "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"an earlier run of this job predicted {kept:,} texts" in again.stderr
    assert out.read_bytes() == (tmp_path / "straight.csv").read_bytes()


def test_sigterm_stops_the_job_like_ctrl_c_with_its_own_exit_code(model, texts_file, tmp_path, monkeypatch):
    real, calls = Classifier.predict, []

    def predict(self, texts):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption would
        return real(self, texts)

    monkeypatch.setattr(Classifier, "predict", predict)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "p.jsonl"
    with pytest.raises(Interrupted) as e:
        run_job(job(model, texts_file, out), say=lambda _: None)
    assert e.value.exit_code == 143 and "16 predictions kept" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) == before  # the job's handler is gone with it
