"""Evaluate and predict on a trained tiny model: they agree with each other and with the training run."""

import json
import logging
import subprocess
import sys

import pytest

from flant5_imdb import Classifier
from flant5_imdb.data import DataError
from flant5_imdb.evaluate import evaluate_saved
from flant5_imdb.predict import InputError
from tests.conftest import ROOT, load_script
from tests.helpers import load_splits, read_texts


@pytest.fixture(scope="module")
def final(smoke_run):
    return smoke_run[0] / "final", smoke_run[1]


def test_evaluate_and_predict_agree_with_the_training_run(final, tmp_path):
    model_dir, summary = final
    result = evaluate_saved(str(model_dir), "synthetic:2000", output_dir=tmp_path)
    assert result["accuracy"] == summary["eval"]["accuracy"]
    assert result["confusion_matrix"] == summary["eval"]["confusion_matrix"]
    assert json.loads((tmp_path / "eval.json").read_text())["macro_f1"] == summary["eval"]["macro_f1"]
    rows = [json.loads(line) for line in (tmp_path / "eval_predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(result["n"]))

    texts = load_splits("synthetic:2000")[0]["test"]["text"]
    preds = Classifier(str(model_dir), batch_size=50).predict(texts)
    assert [p.label for p in preds] == [r["pred"] for r in rows]
    by_id = {r["id"]: r["probs"]["positive"] for r in rows}
    assert all(abs(p.probs["positive"] - by_id[i]) < 1e-5 for i, p in enumerate(preds))


def test_a_checkpoint_evaluates_like_a_model(final, tmp_path):
    model_dir, summary = final
    ckpt = sorted((model_dir.parent / "checkpoints").iterdir())[
        -1
    ]  # the last step's checkpoint = the final weights
    assert evaluate_saved(str(ckpt), "synthetic:2000")["accuracy"] == summary["eval"]["accuracy"]


def run_script(*args, stdin=None, stdin_bytes=None):
    """The script in a process of its own; its output as text (`stdin_bytes`: raw bytes in, bytes out)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "predict.py"), *args],
        input=stdin_bytes if stdin_bytes is not None else stdin,
        capture_output=True,
        text=stdin_bytes is None,
        timeout=180,
    )
    if stdin_bytes is not None:
        proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    return proc


def test_every_input_form_gives_the_same_predictions(final, tmp_path, capsys):
    model_dir, _ = final
    reviews = ["the film was wonderful and superb and great.", "awful boring dull mess of a movie."]
    (tmp_path / "r.txt").write_text("\n".join(reviews) + "\n")
    (tmp_path / "r.csv").write_text("id,text\n1," + reviews[0] + "\n2," + reviews[1] + "\n")
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in reviews))
    for name in ("r.txt", "r.csv", "r.jsonl"):
        assert read_texts(str(tmp_path / name)) == (reviews, []), name
    assert read_texts(None, "".join(r + "\r\n" for r in reviews).encode()) == (reviews, [])  # stdin
    expected = [p.label_name for p in Classifier(str(model_dir)).predict(reviews)]
    assert expected == ["positive", "negative"]
    # The script end to end: a file as JSON lines, stdin as a table.
    proc = run_script("--model", str(model_dir), "--jsonl", "--file", str(tmp_path / "r.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads(line)["label_name"] for line in proc.stdout.splitlines()] == expected
    proc = run_script("--model", str(model_dir), stdin="\n".join(reviews) + "\n")
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["class", "prob", "text"] and [line.split()[0] for line in lines] == expected
    # A run's folder stands for its final/; a text's own line breaks do not break the table; a folder
    # given as --file is called a folder.
    multi = tmp_path / "multi.jsonl"
    multi.write_text(json.dumps({"text": "wonderful\nsuperb\n\ngreat " + "film " * 40}) + "\n")
    predict_main = load_script("predict").main  # in this process: the end-to-end runs above did the launch
    assert predict_main(["--model", str(model_dir.parent), "--file", str(multi)]) == 0
    (line,) = capsys.readouterr().out.splitlines()[1:]
    shown = line.split("  ")[-1]
    assert (
        shown.startswith("wonderful superb great film film") and shown.endswith("...") and len(shown) == 100
    )
    assert predict_main(["--model", str(model_dir), "--file", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path}: a folder, not a file; name a .txt, .csv, .jsonl, .json or .parquet file in it"
    )


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "bad.txt",
            "fine film\ncaf\xe9\n".encode("latin-1"),
            r"bad.txt line 2: not UTF-8 \(byte 0xe9 at offset 13\)",
        ),
        ("bad.csv", "review\nfine\n", r"bad.csv: no 'text' column \(found: review\)"),
        ("bad.jsonl", '{"text": "ok"}\n{"txt": "x"}\n', r"bad.jsonl line 2: no 'text' field \(found: txt\)"),
        (
            "bad.jsonl",
            '{"text": "ok"}\nnot json\n',
            r"bad.jsonl line 2: invalid JSON \(Expecting value at column 1\)",
        ),
        ("bad.jsonl", '{"text": 5}\n', r"bad.jsonl line 1: the text is a number \(5\), not a string"),
        (
            "table.json",
            '{"text": {"0": "a", "1": "b"}}',  # pandas' default to_json
            r"table.json: one JSON object holds whole columns \('text', 2 values each\); give one object per "
            "row",
        ),
        ("one.jsonl", '{"text": ["a", "b"]}\n{"text": "c"}\n', r"one.jsonl: one JSON object holds whole"),
        ("bad.tsv", "x\n", r"unsupported file type '.tsv'"),
    ],
)
def test_malformed_input_is_rejected_naming_the_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        read_texts(str(path))


def test_blank_lines_are_no_reviews_and_bad_records_can_be_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "good film"}\n\n{"text": ""}\nnot json\n{"text": "bad film"}\n')
    texts, skipped = read_texts(str(path), skip_bad_rows=True)
    assert texts == ["good film", "bad film"]
    assert [(r.row, r.reason.split(" (")[0]) for r in skipped] == [(3, "empty text"), (4, "invalid JSON")]


def test_classifier_takes_one_string_or_a_list(final):
    clf = Classifier(str(final[0]))
    one = clf.predict("the film was wonderful and superb and great.")
    assert (
        one == clf.predict(["the film was wonderful and superb and great."])[0]
        and one.label_name == "positive"
    )
    with pytest.raises(InputError, match="text 2: the text is a number"):
        clf.predict(["fine", 7])


def test_malformed_input_gives_one_line_and_no_partial_output(final, tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"text": "a great film"}\n{"text": "  "}\n'
    )  # line 1 is fine: nothing may be printed for it
    proc = run_script("--model", str(final[0]), "--file", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {path} line 2: empty text; pass --skip-bad-rows to leave such records out"
    ]


def evaluate_args(final, out) -> list[str]:
    """evaluate.py's arguments for the trained smoke model on its generated data, the report into `out`."""
    return ["--model", str(final[0]), "--data", "synthetic:2000", "--output-dir", str(out)]


def test_evaluate_script_writes_the_report(final, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "evaluate.py"),
            *evaluate_args(final, tmp_path),
            "--max-eval-samples",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "100 examples, mode=score: accuracy" in proc.stdout
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 100


def test_a_record_holding_a_unicode_line_separator_stays_one_record(tmp_path):
    """Files are split into lines at LF only: U+2028, U+0085 and a form feed are characters a text (and,
    unescaped, a JSON string) may hold; splitting there cut one record in two, silently for .txt."""
    texts = ["one\u2028text", "two\x85texts", "a \x0c third"]
    (tmp_path / "r.txt").write_text("\n".join(texts) + "\n", newline="")
    (tmp_path / "r.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    )
    for name in ("r.txt", "r.jsonl"):
        assert read_texts(str(tmp_path / name)) == (texts, []), name
    assert read_texts(None, "\n".join(texts).encode()) == (texts, [])
    (tmp_path / "mac.txt").write_bytes(b"first text\rsecond text\r")  # old Mac line ends: CR alone
    assert read_texts(str(tmp_path / "mac.txt")) == (["first text", "second text"], [])
    (tmp_path / "mac.txt").write_bytes(b"first text\rsecond text\r\xff third\r")  # its lines counted alike
    with pytest.raises(DataError, match=r"mac\.txt line 3: not UTF-8 \(byte 0xff at offset 23\)"):
        read_texts(str(tmp_path / "mac.txt"))


def test_undecodable_input_is_named_not_a_traceback(final, capsys):
    """Bytes that are no UTF-8 on stdin are named by line and byte, as a file's are; a command-line
    text with such bytes (Python hands them over as lone surrogates, which the tokenizer refuses) is
    named by its position."""
    proc = run_script("--model", str(final[0]), stdin=None, stdin_bytes=b"fine film\n\xff\xfe bad\n")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "error: <stdin> line 2: not UTF-8 (byte 0xff at offset 10); give UTF-8 text"
    )
    predict_main = load_script("predict").main
    assert predict_main(["--model", str(final[0]), "fine film", "bad \udcff film"]) == 2
    assert capsys.readouterr().err.strip() == "error: text 2: not UTF-8 (an undecodable byte at character 5)"


def test_a_verbalizer_or_prompt_other_than_the_models_own_is_warned_about(final, caplog):
    """Scores for targets the model never learned to write, or for inputs it never saw, are named; the
    same targets under another name (digits = auto for IMDB's 0/1) and the model's own settings are not."""

    def warnings(**kw) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flant5_imdb.modeling"):
            Classifier(str(final[0]), **kw)
        return [r.getMessage() for r in caplog.records if r.name == "flant5_imdb.modeling"]

    assert warnings(verbalizer="words") == [
        "--verbalizer 'words': this model was trained to write 0, 1, not negative, positive"
    ]
    assert warnings(prompt="flan") == [
        "--prompt 'flan': this model was trained with the prompt 'none'; its inputs now differ"
    ]
    assert warnings(verbalizer="digits") == warnings(prompt="none") == warnings() == []


def test_an_iterable_is_read_a_chunk_at_a_time_and_answered_in_order(final):
    """A generator of texts is read `chunk_size` at a time: the first prediction comes after one chunk
    is read, not the whole input; the predictions are in input order and the same as each text's alone."""
    texts = [("wonderful superb " if i % 3 else "awful dull boring ") * (1 + i * 7 % 11) + f"film {i}"
             for i in range(23)]  # fmt: skip
    clf = Classifier(str(final[0]), chunk_size=5, batch_size=2)
    pulled = []

    def source():
        for i, t in enumerate(texts):
            pulled.append(i)
            yield t

    stream = clf.predict(source())
    first = next(stream)
    assert pulled == [0, 1, 2, 3, 4]
    preds = [first, *stream]
    alone = [clf.predict(t) for t in texts]
    assert [p.label_name for p in preds] == [a.label_name for a in alone]
    assert all(abs(p.prob - a.prob) < 1e-5 for p, a in zip(preds, alone, strict=True))
    assert [p.label_name for p in preds] == ["negative" if i % 3 == 0 else "positive" for i in range(23)]
    with pytest.raises(InputError, match="text 9: empty text"):
        list(clf.predict(iter([*texts[:8], "  ", "fine"])))


def test_texts_in_a_parquet_file_and_its_errors(final, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    predict_main = load_script("predict").main
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "review": ["a wonderful film", None, "awful boring"]}), path)
    assert predict_main(["--model", str(final[0]), "--file", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}: no 'text' column (found: id, review); name yours with --text-column"
    )
    assert predict_main(["--model", str(final[0]), "--file", str(path), "--text-column", "review"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path} row 2: no text (null); pass --skip-bad-rows to leave such records out"
    )
    args = ["--model", str(final[0]), "--file", str(path), "--text-column", "review", "--skip-bad-rows"]
    assert predict_main([*args, "--jsonl"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["label_name"] for line in out.splitlines()] == ["positive", "negative"]
    assert err.splitlines()[0] == f"skipped {path} row 2: no text (null)"
    assert err.splitlines()[-1].startswith("2 texts predicted in ")
    assert err.splitlines()[-1].endswith(  # where it ran, and what is not in the output, in one line
        " on cpu, 1 CPU thread, fp32; 1 record(s) skipped (each named above): the output holds the others"
    )


def test_two_processes_write_what_one_does(final, tmp_path):
    """`accelerate launch` with 2 CPU processes: each predicts its share of every chunk; the main process
    writes the file one process writes, byte for byte (and evaluate.py its predictions and metrics)."""
    from tests.conftest import accelerate_launch

    texts = tmp_path / "texts.jsonl"
    words = ["wonderful", "superb", "awful", "boring", "film", "plot"]
    rows = [{"text": " ".join(words[(i + k) % 6] for k in range(1 + i % 13))} for i in range(150)]
    texts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    predict = ["--model", str(final[0]), "--file", str(texts), "--chunk-size", "64", "--batch-size", "7"]
    evaluate = ["--model", str(final[0]), "--data", "synthetic:2000", "--batch-size", "16"]

    def run(launcher: list[str], script: str, *args) -> str:
        command = [*launcher, str(ROOT / "scripts" / script), *args]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    # One process: this one (single-threaded, as the launched ones are).
    assert load_script("predict").main([*predict, "--output", str(tmp_path / "one.csv")]) == 0
    assert load_script("evaluate").main([*evaluate, "--output-dir", str(tmp_path / "e1")]) == 0
    launch = accelerate_launch("--config_file", str(ROOT / "configs" / "multi_gpu.yaml"), "--num_processes=2")
    two = run(launch, "predict.py", *predict, "--output", str(tmp_path / "two.csv"))
    assert two.count("150 texts predicted in") == 1 and "on 2 processes" in two  # one process speaks for both
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    run(launch, "evaluate.py", *evaluate, "--output-dir", str(tmp_path / "e2"))
    for name in ("eval_predictions.jsonl", "eval.txt"):
        assert (tmp_path / "e2" / name).read_bytes() == (tmp_path / "e1" / name).read_bytes(), name


def test_a_second_evaluation_into_a_folder_is_refused_unless_overwritten(final, tmp_path, capsys):
    evaluate_main = load_script("evaluate").main
    args = evaluate_args(final, tmp_path)
    assert evaluate_main([*args, "--max-eval-samples", "20"]) == 0
    first = (tmp_path / "eval_predictions.jsonl").read_text()
    capsys.readouterr()
    assert evaluate_main([*args, "--max-eval-samples", "30"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} holds an evaluation already (eval.json, eval.txt, eval_predictions.jsonl); pass "
        "--overwrite to replace it, or --output-dir to write elsewhere"
    )
    assert (tmp_path / "eval_predictions.jsonl").read_text() == first
    assert evaluate_main([*args, "--max-eval-samples", "30", "--overwrite"]) == 0
    assert len((tmp_path / "eval_predictions.jsonl").read_text().splitlines()) == 30
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_mid_evaluation_stops_with_one_line_and_says_what_was_kept(
    final, tmp_path, capsys, monkeypatch, sig
):
    """Ctrl-C (or a SIGTERM) while evaluate.py evaluates: one line saying what was kept (nothing: a report
    is written whole or not at all), exit 130 (143), no traceback, no half-written file left."""
    from flant5_imdb import evaluate as evaluate_module
    from tests.conftest import signal_on_call

    expected, batches = signal_on_call(monkeypatch, evaluate_module, "score_batch", sig, at_call=3)
    args = [*evaluate_args(final, tmp_path), "--batch-size", "8"]
    code = load_script("evaluate").main([*args, "--max-eval-samples", "64"])
    err = capsys.readouterr().err
    assert code == expected == {"SIGINT": 130, "SIGTERM": 143}[sig], err
    assert err.strip().splitlines()[-1] == (
        f"stopped by {sig} during the evaluation; nothing was written (--max-eval-samples N evaluates a part)"
    )
    assert "Traceback" not in err and len(batches) == 3  # stopped at once, not after the remaining batches
    assert list(tmp_path.iterdir()) == []


def test_the_old_spelling_of_the_evaluation_bound_is_taken_with_a_pointer(final, tmp_path, capsys, caplog):
    """And the evaluation says where it runs, in the one line every script uses."""
    import logging

    evaluate_main = load_script("evaluate").main
    args = evaluate_args(final, tmp_path)
    with caplog.at_level(logging.INFO, logger="flant5_imdb"):
        assert evaluate_main([*args, "--max-samples", "12"]) == 0
    assert "evaluating 12 examples on cpu, 1 CPU thread, fp32" in caplog.text
    err = capsys.readouterr().err
    assert "note: --max-samples is spelled --max-eval-samples (as in train.py); taken as that" in err
    assert len((tmp_path / "eval_predictions.jsonl").read_text().splitlines()) == 12


def test_evaluate_and_predict_refuse_a_missing_file_or_a_held_folder_before_torch(final, tmp_path):
    from tests.test_train import refused_light

    missing = tmp_path / "nothere.csv"
    rc, err, heavy, _ = refused_light("evaluate", "--model", str(final[0]), "--data", str(missing))
    assert (rc, err.strip().splitlines()[-1], heavy) == (
        2,
        f"error: --data {missing}: no such file or folder",
        [],
    )
    held = tmp_path / "held"
    held.mkdir()
    (held / "eval.json").write_text("{}")
    rc, err, heavy, _ = refused_light("evaluate", "--model", str(final[0]), "--data", "synthetic:200",
                                      "--output-dir", str(held))  # fmt: skip
    assert (
        rc == 2
        and heavy == []
        and err.strip().splitlines()[-1].startswith(f"error: {held} holds an evaluation")
    )
    rc, err, heavy, _ = refused_light("predict", "--model", str(final[0]), "--file", str(missing))
    assert rc == 2 and heavy == [] and str(missing) in err.strip().splitlines()[-1]


def test_prediction_says_how_many_texts_were_cut_to_the_models_length(final, capsys):
    """The smoke model reads 128 tokens: a text of 300 words is cut, and the closing line says so."""
    predict_main = load_script("predict").main
    long = " ".join(["a wonderful film"] * 100)
    assert predict_main(["--model", str(final[0]), long, "an awful mess"]) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "; 1 cut to their first 128 tokens (the model's --max-source-length)" in line


def test_a_classifiers_classes_answer_under_their_former_name_with_a_warning(final):
    clf = Classifier(str(final[0]))
    with pytest.warns(DeprecationWarning, match="Classifier.labels is now Classifier.classes"):
        assert clf.labels is clf.classes
    assert clf.classes.names == ("negative", "positive")
