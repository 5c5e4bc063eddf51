"""Every input a user may bring, through the three entry points: one case per problem, each with its
exit code, the exact error line, no traceback, no datasets ERROR line, and nothing written."""

import csv
import gzip
import importlib.util
import json
import logging
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.helpers import load_splits

SMOKE = [
    "--preset",
    "smoke",
    "--max-steps",
    "1",
    "--no-save-model",
    "--keep-checkpoints",
    "0",
    "--max-source-length",
    "32",
]


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def train_main():
    return script("train")


def good_rows(n=40):
    return [(f"a {'great' if i % 2 else 'awful'} film number {i}", i % 2) for i in range(n)]


def csv_text(rows, header="text,label"):
    return header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows)


def run_cli(main, argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    return code, errors[0] if errors else None


# (file name, content, expected first error line with {path} for the file) ---------------------------
BAD_TRAINING_FILES = [
    (
        "train.jsonl",
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in good_rows(6))
        + '\n{"text": "oops", "label": 1\n',
        "error: {path}: 1 bad row(s): {path} line 7: invalid JSON (Expecting ',' delimiter at column 28); "
        "pass --skip-bad-rows to drop them",
    ),
    (
        "train.jsonl",
        json.dumps([{"text": "a", "label": 1}, {"text": "b", "label": 0}]) + "\n",
        "error: {path}: no usable rows (every row is bad: {path} line 1: not a JSON object (an array); one "
        'object per line, like {{"text": "...", "label": 1}})',
    ),  # every row bad: --skip-bad-rows, which would leave nothing, is not advised
    (
        "train.json",
        json.dumps({"text": {"0": "a good film", "1": "a bad film"}, "label": {"0": 1, "1": 0}}),
        "error: {path}: one JSON object holds whole columns ('text' and 'label', 2 values each); give one "
        "object per row, as JSON lines or an array of objects (pandas: to_json(path, orient='records', "
        "lines=True))",
    ),  # pandas' default to_json: a table in one record, said as such (not "the text is an object")
    (
        "train.jsonl",
        '{"text": "fine", "label": 0}\n"a text alone"\n',
        "error: {path}: 1 bad row(s): {path} line 2: not a JSON object (a string); one object per line, like "
        '{{"text": "...", "label": 1}}; pass --skip-bad-rows to drop them',
    ),  # a JSON string is a record that is no object, not a reason of its own
    (
        "train.jsonl",
        '{"text": "fine", "label": 0}\n["a", 1]\n',
        "error: {path}: 1 bad row(s): {path} line 2: not a JSON object (an array); one object per line, like "
        '{{"text": "...", "label": 1}}; pass --skip-bad-rows to drop them',
    ),
    (
        "train.csv",
        ("text,label\n" + "ok film,1\n" + "caf\xe9 film,0\n").encode("latin-1"),
        "error: {path} line 3: not UTF-8 (byte 0xe9 at offset 24); save the file as UTF-8",
    ),
    ("train.csv", "", "error: {path}: empty file"),
    ("train.csv", "text,label\n", "error: {path}: no records (only a header)"),
    (
        "train.csv",
        "review,label\nx,1\n",
        "error: {path}: no 'text' column (found: review, label); "
        "name yours with --text-column / --label-column",
    ),
    (
        "train.csv",
        'text,label\n"an unclosed quote,1\nfine,0\n',
        None,
    ),  # swallows the rest: caught as a field-count problem
    (
        "train.csv",
        "text,label\n,1\n  ,0\n",
        "error: {path}: no usable rows (every one of its 2 rows: empty text)",
    ),
    (
        "train.csv",
        "text,label\n,1\nfine,1\n  ,0\n",
        "error: {path}: 2 bad row(s): {path} line 2: empty text; "
        "{path} line 4: empty text; pass --skip-bad-rows to drop them",
    ),
    (
        "train.jsonl",
        '{"text": 3, "label": 1}\n{"text": "fine", "label": 0}\n',
        "error: {path}: 1 bad row(s): {path} line 1: the text is a number (3), not a string; pass "
        "--skip-bad-rows to drop them",
    ),
    ("train.csv.gz", gzip.compress(b"text,label\n"), "error: {path}: no records (only a header)"),
    (
        "train.csv",
        "text;label\ngood;1\n",
        "error: {path}: the header is one column, 'text;label': the file looks separated by ';', and a .csv "
        "file's fields are separated by commas",
    ),  # no advice to name columns: naming them would not help
    (
        "train.csv",
        "text,label,text\na,1,b\n",
        "error: {path}: the header names a column twice ('text' in columns 1, 3); give each column its own "
        "name",
    ),
    (
        "train.jsonl",
        '{"text": {"title": "a"}, "label": 1}\n{"text": ["a"], "label": 0}\n{"text": "fine", "label": 0}\n',
        "error: {path}: 2 bad row(s): {path} line 1: the text is an object, not a string; {path} line 2: the "
        "text is a list, not a string; pass --skip-bad-rows to drop them",
    ),
    ("train.parquet", b"not parquet at all", "error: {path}: cannot be read as parquet (ArrowInvalid: "),
]


@pytest.mark.parametrize(
    "name, content, expected",
    BAD_TRAINING_FILES,
    ids=[f"{i}-{c[0]}" for i, c in enumerate(BAD_TRAINING_FILES)],
)
def test_a_bad_training_file_gives_one_line_and_writes_nothing(
    train_main, tmp_path, capsys, name, content, expected
):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    out = tmp_path / "out"
    code, line = run_cli(train_main, [*SMOKE, "--data", str(path), "--output-dir", str(out)], capsys)
    assert code == 2 and not out.exists()
    if expected is None:
        assert line.startswith(f"error: {path}") and "line" in line
    elif expected.endswith("(ArrowInvalid: "):
        assert line.startswith(expected.format(path=path))
    else:
        assert line == expected.format(path=path)


BAD_DATA_OPTIONS = [
    (
        "train={f},test={f},",
        "error: --data 'train={f},test={f},': '' is not SPLIT=PATH; write e.g. train=train.csv,test=test.csv "
        "(no comma at the end)",
    ),
    (
        "train={f},dev={f}",
        "error: --data 'train={f},dev={f}': unknown split 'dev' (use train, test, validation)",
    ),
    (
        "synthetic:abc",
        "error: --data 'synthetic:abc': after 'synthetic:' comes the number of training reviews, a whole "
        "number "
        "of at least 10 (e.g. synthetic:2000)",
    ),
    ("{tmp}/missing.csv", "error: --data {tmp}/missing.csv: no such file or folder"),
]


@pytest.mark.parametrize("data, expected", BAD_DATA_OPTIONS)
def test_bad_data_syntax_is_said_in_words(train_main, tmp_path, capsys, data, expected):
    f = tmp_path / "train.csv"
    f.write_text(csv_text(good_rows()))
    data, expected = data.format(f=f, tmp=tmp_path), expected.format(f=f, tmp=tmp_path)
    code, line = run_cli(train_main, [*SMOKE, "--data", data, "--output-dir", str(tmp_path / "out")], capsys)
    assert (code, line) == (2, expected) and not (tmp_path / "out").exists()


def test_eval_split_that_is_not_there_fails_before_anything_is_read(
    train_main, tmp_path, capsys, monkeypatch
):
    import flant5_imdb.data.labelled as labelled

    f = tmp_path / "train.csv"
    f.write_text(csv_text(good_rows()))
    monkeypatch.setattr(labelled, "read_splits", lambda *a: pytest.fail("the data was read"))
    code, line = run_cli(
        train_main,
        [*SMOKE, "--data", str(f), "--eval-split", "test", "--output-dir", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2 and line == (
        f"error: --eval-split 'test': {f} has only train; name one of these, add the split to --data "
        "(train=PATH,test=PATH), or leave --eval-split out to hold out --validation-split of train"
    )


def test_a_file_with_no_test_split_trains_on_a_held_out_validation_split(train_main, tmp_path, capsys):
    f = tmp_path / "reviews.csv"
    f.write_text(csv_text(good_rows(40)))
    out = tmp_path / "out"
    code, line = run_cli(train_main, [*SMOKE, "--data", str(f), "--output-dir", str(out)], capsys)
    assert (code, line) == (0, None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["n"] == 4 and summary["eval_source"].startswith(
        "4 examples held out of train (--validation-split 0.1"
    )
    assert summary["samples_seen"] == 16  # one step of 16 from the 36 left for training
    code, _ = run_cli(
        train_main,
        [*SMOKE, "--data", str(f), "--output-dir", str(tmp_path / "none"), "--validation-split", "0"],
        capsys,
    )
    assert code == 0 and json.loads((tmp_path / "none" / "summary.json").read_text())["eval"] is None


def test_files_that_datasets_would_misread_are_read_as_they_are(tmp_path):
    """Labels 0/1 then pos/neg in a file past datasets' type-inference chunk; NA-like texts; a BOM
    and CRLF; quoted newlines; a field of 200,000 characters; gzip; blank lines in jsonl."""
    rows = [(f"film {i}", i % 2) for i in range(10_000)] + [
        (f"film {i}", "pos" if i % 2 else "neg") for i in range(400)
    ]
    big = tmp_path / "train.csv"
    big.write_text(csv_text(rows))
    dsd, _ = load_splits(str(big))
    assert len(dsd["train"]) == 10_400 and dsd["train"]["label"][-2:] == [0, 1]

    odd = tmp_path / "odd.csv.gz"
    body = '\ufefftext,label\r\nNA,1\r\nNone,0\r\nnull,1\r\n"two\r\nlines",0\r\n"' + "x" * 200_000 + '",1\r\n'
    odd.write_bytes(gzip.compress(body.encode("utf-8")))
    texts = load_splits(str(odd))[0]["train"]["text"]
    assert texts[:4] == ["NA", "None", "null", "two\r\nlines"] and len(texts[4]) == 200_000

    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('\n{"text": "a", "label": 1}\n\n{"text": "b", "label": "neg"}\n\n')
    assert load_splits(str(jsonl))[0]["train"]["label"] == [1, 0]


def test_skipped_rows_are_listed_with_split_file_and_line(train_main, tmp_path, capsys, caplog):
    f = tmp_path / "train.jsonl"
    lines = [json.dumps({"text": t, "label": y}) for t, y in good_rows(20)]
    lines[3] = '{"text": "", "label": 1}'
    lines[7] = "not json"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code, line = run_cli(
            train_main, [*SMOKE, "--data", str(f), "--skip-bad-rows", "--output-dir", str(out)], capsys
        )
    assert (code, line) == (0, None)
    records = [json.loads(x) for x in (out / "skipped_rows.jsonl").read_text().splitlines()]
    assert records == [
        {"split": "train", "file": str(f), "line": 4, "reason": "empty text"},
        {"split": "train", "file": str(f), "line": 8, "reason": "invalid JSON (Expecting value at column 1)"},
    ]
    assert any(f"each listed in {out / 'skipped_rows.jsonl'}" in r.getMessage() for r in caplog.records)


def test_when_every_row_is_bad_the_reasons_are_shown(tmp_path):
    from flant5_imdb.data import DataError, load_labelled

    f = tmp_path / "train.csv"
    f.write_text("text,label\n,pos\nfine,maybe\n")
    with pytest.raises(
        DataError,
        match=rf"^{f}: no usable rows \(every row is bad: {f} line 2: empty text; "
        rf"{f} line 3: label 'maybe' is not one of neg, pos\)$",
    ):
        load_labelled(str(f), skip_bad_rows=True, label_order=("neg", "pos"))


def test_an_empty_aclimdb_file_is_named_by_its_path(tmp_path):
    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for sub, text in (("pos", "great"), ("neg", "awful")):
            (root / split / sub).mkdir(parents=True)
            (root / split / sub / "0_1.txt").write_text(f"a {text} film")
    (root / "train" / "pos" / "7_9.txt").write_text("")
    with pytest.raises(
        Exception,
        match=rf"{root / 'train'}: 1 bad row\(s\): {root / 'train' / 'pos' / '7_9.txt'}: empty text",
    ):
        load_splits(str(root))


def test_a_single_class_training_set_is_warned_about(tmp_path, caplog):
    f = tmp_path / "train.csv"
    f.write_text(csv_text([(f"film {i}", 1) for i in range(10)]))
    with caplog.at_level(logging.WARNING):
        load_splits(str(f))
    assert any(
        r.getMessage().endswith("every training example has label 1 (positive): a classifier cannot learn "
                                "from one class") for r in caplog.records
    )  # fmt: skip


def test_evaluate_reads_only_its_split_and_names_only_its_own_flags(smoke_run, tmp_path, capsys):
    evaluate_main = script("evaluate")
    model = str(smoke_run[0] / "final")
    root = tmp_path / "aclImdb"
    for split in ("train", "test"):
        for sub, text in (("pos", "great superb wonderful"), ("neg", "awful dull boring")):
            (root / split / sub).mkdir(parents=True)
            for i in range(3):
                (root / split / sub / f"{i}_1.txt").write_text(f"a {text} film {i}")
    (root / "train" / "pos" / "9_9.txt").write_bytes(b"\xff broken")  # in the split evaluate does not read
    code, line = run_cli(
        evaluate_main, ["--model", model, "--data", str(root), "--output-dir", str(tmp_path / "e")], capsys
    )
    assert (code, line) == (0, None)
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"text": "a great film", "label": 1}\n{"text": "x", "label": "maybe"}\n')
    code, line = run_cli(evaluate_main, ["--model", model, "--data", str(bad)], capsys)
    assert code == 2 and line == (
        f"error: {bad}: 1 bad row(s): {bad} line 2: label 'maybe' is not one of "
        "0/1/neg/pos/negative/positive; pass --skip-bad-rows to drop them"
    )
    code, line = run_cli(
        evaluate_main,
        ["--model", model, "--data", str(bad), "--skip-bad-rows", "--output-dir", str(tmp_path / "s")],
        capsys,
    )
    assert (code, line) == (0, None) and json.loads((tmp_path / "s" / "skipped_rows.jsonl").read_text())[
        "line"
    ] == 2
    code, line = run_cli(evaluate_main, ["--model", str(tmp_path / "no-model"), "--data", str(bad)], capsys)
    assert (code, line) == (2, f"error: --model {tmp_path / 'no-model'}: no such folder")


def test_predict_reads_what_users_bring(smoke_run, tmp_path, capsys):
    predict_main = script("predict")
    model = str(smoke_run[0] / "final")
    cases = {
        "bom.csv": ("\ufefftext\r\nthe film was superb\r\n".encode(), None),
        "long.csv": (("text\n" + "great " * 40_000 + "\n").encode(), None),
        "blank.jsonl": (b'\n{"text": "great film"}\n\n', None),
        "gz.jsonl.gz": (gzip.compress(b'{"text": "great film"}\n'), None),
        "latin1.txt": (
            "caf\xe9 film\n".encode("latin-1"),
            "error: {path} line 1: not UTF-8 (byte 0xe9 at offset 3); save the file as UTF-8",
        ),
        "number.jsonl": (
            b'{"text": 42}\n',
            "error: {path} line 1: the text is a number (42), not a string; "
            "pass --skip-bad-rows to leave such records out",
        ),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        code, line = run_cli(predict_main, ["--model", model, "--file", str(path)], capsys)
        assert (code, line) == ((2, expected.format(path=path)) if expected else (0, None)), name


def test_offline_hub_ids_fail_in_seconds_with_one_message(train_main, tmp_path, capsys, monkeypatch):
    """No network (offline mode here) and nothing cached: model, tokenizer and data named at once."""
    import time

    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    started = time.perf_counter()
    code, line = run_cli(
        train_main, ["--output-dir", str(tmp_path / "out"), "--tokenizer", "google/t5-v1_1-base"], capsys
    )
    assert time.perf_counter() - started < 5 and code == 2 and not (tmp_path / "out").exists()
    assert line == (
        "error: the Hugging Face Hub cannot be reached (offline?) and these are not in the local cache: "
        "--model google/flan-t5-base (a local folder, or --model-config flan-t5-base for random init); "
        "--tokenizer google/t5-v1_1-base (a local folder, or --tokenizer word-level); "
        "--data stanfordnlp/imdb (a local file or folder: parquet, csv, jsonl, or aclImdb/)"
    )


def test_an_unlabelled_evaluation_split_is_said_to_be_one(train_main, smoke_run, tmp_path, capsys):
    """A split whose every label is none of the classes (a Hub test split's -1) is named with the option
    that picks another split, not with --skip-bad-rows, which would leave nothing; a training split
    whose rows are all bad alike is said in one reason, without that hint."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.csv").write_text(csv_text(good_rows()))
    (folder / "test.csv").write_text(csv_text([(f"a film {i}", -1) for i in range(6)]))
    test = folder / "test.csv"
    why = "no usable rows (every one of its 6 rows: label '-1' is not one of 0/1/neg/pos/negative/positive)"
    code, line = run_cli(
        train_main, [*SMOKE, "--data", str(folder), "--output-dir", str(tmp_path / "o")], capsys
    )
    assert (code, line) == (
        2,
        f"error: {test}: {why}; is the split unlabelled? name another with --eval-split",
    )
    model = str(smoke_run[0] / "final")
    code, line = run_cli(script("evaluate"), ["--model", model, "--data", str(folder)], capsys)
    assert (code, line) == (2, f"error: {test}: {why}; is the split unlabelled? name another with --split")

    from flant5_imdb.data import DataError, load_labelled

    train = folder / "train.csv"
    train.write_text("text,label\na film,\nanother film, \n")
    with pytest.raises(
        DataError, match=f"^{re.escape(f'{train}: no usable rows (every one of its 2 rows: empty label)')}$"
    ):
        load_labelled(f"train={train}")


def test_another_tasks_classes_are_not_called_an_unlabelled_split(tmp_path):
    from flant5_imdb.data import IMDB, DataError, load_labelled

    test = tmp_path / "test.csv"
    test.write_text(csv_text([("a film", "billing"), ("b film", "bug")]))
    with pytest.raises(DataError) as e:
        load_labelled(f"test={test}", classes=IMDB, splits=["test"])
    assert str(e.value) == (
        f"{test}: no usable rows (every row is bad: {test} line 2: label 'billing' is not one of "
        f"0/1/neg/pos/negative/positive; {test} line 3: label 'bug' is not one of "
        "0/1/neg/pos/negative/positive)"
    )


MALFORMED_ARRAYS = [  # a .json file's array: what is wrong, said with the line and column of the file
    ('[{"text": "a", "label": 1} {"text": "b", "label": 0}]',
     "line 1: invalid JSON (Expecting ',' delimiter at column 28)"),
    ('[{"text": "a", "label": 1}, {"text": "b", "label": 0}] x',
     "line 1: invalid JSON (Extra data at column 56)"),
    ('[{"text": "a", "label": 1},\n {"text": "b", "label": 0',
     "line 2: invalid JSON (Expecting ',' delimiter at column 26)"),
    ('[\n{"text": "a", "label": 1},\n{"text": "b", "label": 0},\n]',
     "line 4: invalid JSON (Expecting value at column 1)"),
    (" \n\t ", ": empty file"),
]  # fmt: skip


@pytest.mark.parametrize("block", [1, 3, 64, 1 << 20])
def test_a_malformed_json_array_is_named_by_line_and_column_whatever_the_blocks(tmp_path, monkeypatch, block):
    from flant5_imdb.data import DataError, reader

    monkeypatch.setattr(reader, "BLOCK", block)
    for i, (content, said) in enumerate(MALFORMED_ARRAYS):
        path = tmp_path / f"{i}.json"
        path.write_text(content)
        with pytest.raises(DataError) as e:
            list(reader.read_table(path, "text", "label").rows())
        assert str(e.value) == f"{path} {said}".replace(" :", ":"), content
    path = tmp_path / "strings.json"  # an element that is a string is a bad row, not a reason of its own
    path.write_text('[{"text": "a", "label": 1}, "b", {"text": "c", "label": 0}]')
    rows = [r if isinstance(r, tuple) else str(r) for r in reader.read_table(path, "text", "label").rows()]
    assert rows == [(1, "a", 1), f'{path} row 2: not a JSON object (a string); one object per row, like '
                    '{"text": "...", "label": 1}', (3, "c", 0)]  # fmt: skip
    assert [str(r) for r in reader.texts_to_predict(path)] == ["a", str(rows[1]), "c"]


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64])
def test_a_file_reads_the_same_whatever_the_size_of_its_blocks(tmp_path, monkeypatch, block):
    """Files are read a block at a time: a character, a CRLF, a quoted newline or a JSON value cut by a
    block's end is read whole, and an error names the same line and byte as with one block."""
    from flant5_imdb.data import DataError, reader

    rows = [('caf\u00e9, "quoted"\nline', "1"), ("\u65e5\u672c\u8a9e", "0"), ("x" * 50, "pos")]
    quoted = ['"' + t.replace('"', '""') + f'",{y}\r\n' for t, y in rows]
    files = {
        "a.csv": "\ufefftext,label\r\n" + "".join(quoted),
        "a.jsonl": "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\r\n" for t, y in rows),
        "a.json": json.dumps([{"text": t, "label": y} for t, y in rows], indent=1, ensure_ascii=False),
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content, newline="")
    (tmp_path / "bad.txt").write_bytes("one\r\ntwo \u00e9\rthree ".encode() + b"\xff\n")

    def read(name, *label):
        return list(reader.read_table(tmp_path / name, "text", *label).rows())

    expected = {name: read(name, "label") for name in files}
    with pytest.raises(DataError) as whole:
        read("bad.txt")
    monkeypatch.setattr(reader, "BLOCK", block)
    for name in files:
        got = read(name, "label")
        assert got == expected[name], name
        assert [text for _, text, _ in got] == [t for t, _ in rows]
    with pytest.raises(DataError) as cut:
        read("bad.txt")
    assert str(cut.value) == str(whole.value)
    bad = tmp_path / "bad.txt"  # 5 + 7 + 6 bytes before the 0xff: "one\r\n", "two \u00e9\r", "three "
    assert str(whole.value) == f"{bad} line 3: not UTF-8 (byte 0xff at offset 18); save the file as UTF-8"


def test_a_record_of_many_blocks_reads_in_time_proportional_to_it(tmp_path, monkeypatch):
    """A 500 KB text read 128 bytes at a time (4,000 blocks) costs about what it costs read in one block, in
    every format: a line or a JSON value is joined once from its pieces, not copied and scanned again at
    every block (2 minutes for a 2 MB text in 128-byte blocks, 9 s for a 50 MB text in 1 MiB blocks)."""
    from flant5_imdb.data import reader

    text = "word " * 100_000
    files = {"a.csv": f'text,label\r\nshort,0\r\n"{text}",1\r\n', "a.txt": f"short\n{text}\n",
             "a.jsonl": "".join(json.dumps({"text": t, "label": 1}) + "\n" for t in ("short", text)),
             "a.json": json.dumps([{"text": t, "label": 1} for t in ("short", text)])}  # fmt: skip

    def read(name: str) -> tuple[float, list]:
        start = time.perf_counter()
        got = list(reader.texts_to_predict(tmp_path / name))
        return time.perf_counter() - start, got

    for name, content in files.items():
        (tmp_path / name).write_text(content, newline="")
        monkeypatch.setattr(reader, "BLOCK", 1 << 22)
        whole, expected = read(name)
        monkeypatch.setattr(reader, "BLOCK", 128)
        blocks, got = read(name)
        assert got == expected == ["short", text], name
        assert blocks < 5 * whole + 1.0, (name, whole, blocks)


READ_ALL = """
import sys
from bench.commands import own_peak_kib  # not ru_maxrss: a child's starts at its parent's, the test's
from flant5_imdb.data.reader import read_table
before = own_peak_kib()
rows = sum(1 for _ in read_table(sys.argv[1], "text", "label").rows())
print(rows, (own_peak_kib() - before) // 1024)
"""


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json"])
def test_memory_does_not_grow_with_the_file(tmp_path, kind):
    """Reading IMDB's 25,000 training reviews takes no more memory than reading 5,000 of them: a block and
    the record in hand, whatever the file's size (each file read in a fresh process: its peak resident
    memory beyond what importing took). When each line was built up block by block from 1 MiB blocks, the
    CSV took 9 MiB at 5,000 reviews, 28 MiB at 25,000 and 145 MiB at ten times as many."""
    import pyarrow.parquet as pq

    from tests.conftest import real_data_or_skip

    reviews = pq.read_table(real_data_or_skip()[0] / "train.parquet", columns=["text", "label"]).to_pylist()

    def grown(n: int) -> int:
        path, rows = tmp_path / f"{n}.{kind}", reviews[:n]
        with open(path, "w", newline="") as f:  # as csv.writer and json.dumps write them
            if kind == "csv":
                writer = csv.writer(f)
                writer.writerow(["text", "label"])
                writer.writerows([r["text"], r["label"]] for r in rows)
            else:
                f.write(
                    json.dumps(rows, indent=1)
                    if kind == "json"
                    else "".join(json.dumps(r) + "\n" for r in rows)
                )
        run = subprocess.run(
            [sys.executable, "-c", READ_ALL, str(path)], capture_output=True, text=True, cwd=ROOT
        )
        count, mib = map(int, run.stdout.split())
        assert count == n, run.stderr
        return mib

    small, large = grown(5_000), grown(25_000)
    assert large <= small + 3, (small, large)
