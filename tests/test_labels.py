"""Labels a user can trust: one canonical text per label, bad values refused, suspicious spaces warned about,
the label space part of a run (resume), metrics over the classes present."""

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import pytest

from flant5_imdb.checkpoint import CheckpointError
from flant5_imdb.config import preset
from flant5_imdb.data import IMDB, Columns, DataError, LabelSpace, hold_out, load_labelled, verbalize
from flant5_imdb.data.labels import canonical, infer_labels, label_text, parse_label_names
from flant5_imdb.evaluate import format_report, metrics, write_report
from flant5_imdb.plots import plot_run
from flant5_imdb.train import run

WORDS = {
    "a": "alpha apple amber",
    "b": "bravo banana blue",
    "c": "charlie cherry cyan",
    "d": "delta date dune",
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, header: str, rows: list[tuple]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def labelled(labels: list, text="a fine text number {i}") -> list[dict]:
    return [{"text": text.format(i=i), "label": y} for i, y in enumerate(labels)]


@pytest.mark.parametrize(
    "raw, text",
    [(1, "1"), (1.0, "1"), ("1.0", "1"), ("01", "1"), (" +1 ", "1"), ("-0", "0"), ("\u0661", "1"),
     ("\u0660\u0661", "1"), (0.5, "0.5"), ("0.50", "0.5"), ("12345678901234567890", "12345678901234567890"),
     ("pos\u200b", "pos"), ("very  good\t", "very good"), ("a\u00a0b", "a b"),
     ("\ufeffneg", "neg"), ("cafe\u0301", "caf\u00e9"), (" spam ", "spam"),
     ("\u00b2", "\u00b2"), ("1e3", "1e3"), (True, "true")],
)  # fmt: skip
def test_one_canonical_text_per_label(raw, text):
    assert label_text(raw) == text and canonical(raw)[1] is None


@pytest.mark.parametrize(
    "raw, problem",
    [(None, "no label (null or missing)"), ([1, 2], "the label is a list, not a single value"),
     ({"x": 1}, "the label is an object, not a single value"), ("", "empty label"),
     (" \u200b ", "empty label"), (float("nan"), "no label (nan)"),
     (b"pos", "the label is binary data (store the column as strings), not a single value")],
)  # fmt: skip
def test_values_that_are_no_label(raw, problem):
    assert canonical(raw)[1] == problem and label_text(raw) is None


def test_null_object_list_and_empty_labels_are_bad_rows_never_classes(tmp_path):
    rows = labelled(["x", "y"] * 5) + [
        {"text": "null label", "label": None},
        {"text": "object label", "label": {"k": 1}},
        {"text": "list label", "label": ["x"]},
        {"text": "empty label", "label": " "},
    ]
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    want = (r"4 bad row\(s\): .*line 11: no label \(null or missing\); .*line 12: the label is an object, "
            r"not a single value; .*line 13: the label is a list")  # fmt: skip
    with pytest.raises(DataError, match=want):
        load_labelled(str(f))
    loaded = load_labelled(str(f), skip_bad_rows=True)
    assert loaded.classes.values == ("x", "y") and len(loaded.splits["train"]) == 10
    assert [(r.row, r.reason) for r in loaded.skipped][-1] == (14, "empty label")


def test_a_null_label_in_parquet_is_a_bad_row(tmp_path):
    import pandas as pd

    pd.DataFrame({"text": ["one", "two", "three"], "label": [0, None, 1]}).to_parquet(
        tmp_path / "train.parquet"
    )
    with pytest.raises(DataError, match=r"train\.parquet row 2: no label \(null or missing\)"):
        load_labelled(str(tmp_path / "train.parquet"))


def test_csv_and_jsonl_spell_one_label_alike(tmp_path):
    """CSV '1.0'/'0.0' (and '01') train, JSON 1.0/0 test: the same classes, no contradiction."""
    write_csv(
        tmp_path / "train.csv",
        "text,label",
        [(f"t{i}", y) for i, y in enumerate(["1.0", "0.0", "01", "2"] * 3)],
    )
    write_jsonl(tmp_path / "test.jsonl", labelled([1.0, 0, 2, "\u0661"]))
    loaded = load_labelled(str(tmp_path))
    assert loaded.classes.values == ("0", "1", "2") and loaded.classes.kind == "int"
    assert list(loaded.splits["test"]["label"]) == [1, 0, 2, 1]


def test_a_label_that_still_is_no_class_says_how_it_was_written(tmp_path):
    write_csv(tmp_path / "train.csv", "text,label", [(f"t{i}", y) for i, y in enumerate([1, 2, 3] * 3)])
    write_csv(tmp_path / "test.csv", "text,label", [("t", "04")])
    with pytest.raises(
        DataError, match=r"test\.csv line 2: label '4' is not one of 1, 2, 3 \(written '04'\)"
    ):
        load_labelled(str(tmp_path))


def test_lookalike_labels_become_one_class_and_case_twins_are_warned_about(tmp_path, caplog):
    rows = labelled(["pos", "neg"] * 10 + ["pos\u200b", " neg"])
    assert load_labelled(str(write_jsonl(tmp_path / "train.jsonl", rows))).classes.kind == "polarity"
    rows = labelled(["caf\u00e9", "cafe\u0301", "tea"] * 5)
    assert load_labelled(str(write_jsonl(tmp_path / "train.jsonl", rows))).classes.values == (
        "caf\u00e9",
        "tea",
    )
    with caplog.at_level(logging.WARNING):
        space = load_labelled(
            str(write_jsonl(tmp_path / "train.jsonl", labelled(["Spam", "spam", "ham"] * 5)))
        ).classes
    assert space.values == ("Spam", "ham", "spam")
    assert "labels 'Spam' and 'spam' differ only by case" in caplog.text


def test_labels_names_a_class_with_a_comma(tmp_path):
    assert parse_label_names(r"a\, b,c") == ["a, b", "c"]
    rows = [{"text": f"t{i}", "label": y} for i, y in enumerate(["a, b", "c"] * 4)]
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    assert load_labelled(str(f), label_order=parse_label_names(r"c,a\, b")).classes.values == ("c", "a, b")
    comma = r"label 'a, b' is not one of a, b, c; a class whose name holds a comma is written with \\, in"
    with pytest.raises(DataError, match=comma):
        load_labelled(str(f), label_order=["a", "b", "c"])
    with pytest.raises(DataError, match=r"--labels 1,01: '1' more than once"):
        infer_labels([], ["1", "01"])


def test_suspicious_label_spaces_are_warned_about_at_any_size(tmp_path, caplog):
    rows = labelled(["positive", "negative"] * 30 + ["positve"])
    with caplog.at_level(logging.WARNING):
        load_labelled(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    assert (
        "class(es) 'positve' (1) have 3 training examples or fewer beside one with 30: a typo?" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_labelled(str(write_jsonl(tmp_path / "train.jsonl", labelled(["1", "2", "three"] * 4))))
    assert "the labels mix integers (1, 2) and words (three)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a number beside integers is called a number, not a word
        load_labelled(str(write_jsonl(tmp_path / "train.jsonl", labelled(["0", "1", "0.5"] * 4))))
    assert (
        "the labels mix integers (0, 1) and numbers that are not whole (0.5): one class each, named as "
        "written; if the numbers are scores rather than classes, turn them into classes first" in caplog.text
    )
    assert "words" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_labelled(
            str(write_jsonl(tmp_path / "train.jsonl", labelled(["a", "b"] * 4))), label_order=["a", "b", "z"]
        )
    assert "class(es) 'z' (from --labels) have no training example" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # twelve rare classes: ten named, the rest counted
        rare = [f"c{i:02d}" for i in range(12)] * 2
        load_labelled(str(write_jsonl(tmp_path / "train.jsonl", labelled(["big"] * 40 + rare))))
    named = ", ".join(f"'c{i:02d}' (2)" for i in range(10))
    assert (
        f"class(es) {named} (and 2 more) have 3 training examples or fewer beside one with 40" in caplog.text
    )


def test_a_class_without_training_examples_is_warned_about_once(tmp_path, caplog):
    """A class named by --labels that the data never holds is said on reading, and not again after the
    split is chosen; a class the --max-train-samples subset loses is said after it."""
    from flant5_imdb.data import DataSpec, prepare
    from flant5_imdb.tokenizer import train_word_tokenizer

    def make_tokenizer(loaded, targets):
        return train_word_tokenizer(loaded.splits["train"]["text"], targets=targets)

    data = str(write_jsonl(tmp_path / "train.jsonl", labelled(["a", "b"] * 20 + ["c"] * 2)))
    with caplog.at_level(logging.WARNING):
        prepare(DataSpec(data, label_order=("a", "b", "c", "z")), make_tokenizer)
    said = [r.getMessage() for r in caplog.records if "'z'" in r.getMessage()]
    assert len(said) == 1 and "(from --labels) have no training example" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        spec = DataSpec(data, validation_split=0.0, max_train_samples=5, evaluate=False)
        counts = prepare(spec, make_tokenizer).class_counts
    lost = [r.getMessage() for r in caplog.records if "--max-train-samples" in r.getMessage()]
    assert counts[2] == 0 and lost == ["class(es) 'c' have no example among the --max-train-samples 5: the "
                                       "model cannot learn them"]  # fmt: skip


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_label_seen_only_on_dropped_rows_makes_no_class(tmp_path, suffix):
    """With --skip-bad-rows, a row without a usable text is dropped, and its label makes no class the
    model could never see (integers get no warning for an empty class: it would be silent)."""
    from datasets import Dataset

    rows = labelled([0, 1, 2] * 5) + [{"text": "", "label": 7}]
    path = tmp_path / f"train.{suffix}"
    if suffix == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        write_jsonl(path, rows)
    loaded = load_labelled(str(path), skip_bad_rows=True)
    assert loaded.classes.values == ("0", "1", "2") and [r.reason for r in loaded.skipped] == ["empty text"]


def test_the_hold_out_leaves_every_class_in_training(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(12)], "label": [0] * 10 + [1, 1]})
    train, held = hold_out(ds, 0.9, seed=0)
    assert sorted(set(train["label"])) == [0, 1] and sorted(set(held["label"])) == [0, 1]
    assert list(train["label"]).count(1) == 1


def test_a_hold_out_far_larger_than_asked_is_warned_about(caplog):
    """500 classes of 2: one of each held out is half the data, not the 10% asked for."""
    from datasets import Dataset

    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(1000)], "label": [i // 2 for i in range(1000)]})
    with caplog.at_level(logging.WARNING):
        train, held = hold_out(ds, 0.1, seed=0)
    assert len(train) == len(held) == 500
    assert "--validation-split 0.1 held out 500 of 1000 training rows (50%)" in caplog.text
    assert "leaves" not in caplog.text  # as many left to train on as held out: not fewer


def test_a_hold_out_that_leaves_fewer_rows_to_train_on_than_it_holds_is_warned_about(caplog):
    """--validation-split 0.999 on 60 rows of 2 classes: each class keeps one row, so 2 train and 58 are
    held out; said by the option's name, not in passing."""
    from datasets import Dataset

    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(60)], "label": [0, 1] * 30})
    with caplog.at_level(logging.WARNING):
        train, held = hold_out(ds, 0.999, seed=0)
    assert (len(train), len(held)) == (2, 58)
    assert (
        "--validation-split 0.999 leaves 2 of 60 training rows to train on and holds out 58: the model "
        "learns from fewer rows than it is evaluated on" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        hold_out(ds, 0.2, seed=0)
    assert caplog.text == ""


def test_columns_must_differ_and_a_header_names_each_column_once(tmp_path):
    with pytest.raises(DataError, match="--text-column and --label-column both name 'label'"):
        Columns("label", "label")
    f = write_csv(tmp_path / "train.csv", "text,label,label", [("t", 1, 0)])
    with pytest.raises(
        DataError, match=r"train\.csv: the header names a column twice \('label' in columns 2, 3\)"
    ):
        load_labelled(str(f))


def test_a_json_field_given_twice_is_a_bad_row(tmp_path):
    rows = labelled(["x", "y"] * 3)
    f = tmp_path / "train.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"text": "t", "label": "x", "label": "y"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl line 7: the field\(s\) 'label' appear more than once"):
        load_labelled(str(f))


def test_swapped_columns_get_a_hint(tmp_path, caplog):
    rows = [
        {"text": "pos" if i % 2 else "neg", "label": f"a long review number {i} of a film"} for i in range(30)
    ]
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        loaded = load_labelled(str(f))
    assert (
        "30 of 30 training rows have a label of their own: is --label-column 'label' a text column?"
        in caplog.text
    )
    assert (
        "--text-column 'text' holds only 2 distinct short values ('neg', 'pos'): is it a label column?"
        in caplog.text
    )
    from flant5_imdb.data import tokenize  # noqa: F401 - the hold-out is what fails next

    with pytest.raises(DataError, match="are --text-column and --label-column swapped"):
        hold_out(loaded.splits["train"], 0.1, seed=0)


@pytest.mark.parametrize(
    "label, what",
    [(lambda i: f"0.{i:03d}", "scores"), (lambda i: f"user-{i}", "ids or free text")],
)
def test_most_classes_of_one_example_each_are_warned_about(tmp_path, caplog, label, what):
    """Scores (0.001, 0.002...) or ids in the label column are a class each, learnt from one example:
    said by name (20 labels of their own among 40 rows: under the swapped-columns hint's 90%)."""
    rows = [{"text": f"review {i}", "label": label(i) if i < 20 else label(0)} for i in range(40)]
    with caplog.at_level(logging.WARNING):
        load_labelled(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    shown = ", ".join(map(repr, sorted(label(i) for i in range(1, 20))[:5]))  # the classes' order: sorted
    shown += " (and 14 more)"
    assert "a typo?" not in caplog.text  # not a few rare classes beside many: most are one example each
    assert (
        f"train.jsonl: 19 of the 20 classes have one training example each ({shown}): a classifier "
        f"cannot learn a class from one example; if the labels are {what} rather than classes, turn them "
        "into classes first" in caplog.text
    )


def test_many_classes_of_a_few_examples_each_are_not_warned_about(tmp_path, caplog):
    rows = [{"text": f"review {i}", "label": f"0.{i % 12}"} for i in range(36)]  # 12 classes, 3 each
    with caplog.at_level(logging.WARNING):
        load_labelled(str(write_jsonl(tmp_path / "train.jsonl", rows)))
    assert "training example each" not in caplog.text


def test_metrics_count_the_classes_present_and_name_the_absent():
    names = ("a", "b", "c")
    result = metrics([0, 0, 1, 1], [0, 1, 1, 1], names)  # no 'c' in the data, none predicted
    assert result["classes_not_in_data"] == ["c"] and set(result["report"]) >= {"a", "b"}
    assert "c" not in result["report"]
    assert result["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)  # a: F1 2/3, b: F1 0.8; c not averaged in
    result["mode"] = "score"
    assert "note: 1 class(es) of the model are not in this data and not in macro-F1: c" in format_report(
        result
    )
    predicted = metrics([0, 0, 1, 1], [0, 2, 1, 1], names)  # 'c' predicted once: a class present, F1 0
    assert predicted["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_a_thousand_classes_evaluate_report_and_plot_in_seconds(tmp_path):
    """A tiny model scoring 2,000 examples against 1,000 one-token classes, then the report and the plots:
    seconds, files of a sensible size, a confusion plot of the most confused classes."""
    import torch
    from datasets import Dataset

    from flant5_imdb.accel import make_accelerator
    from flant5_imdb.evaluate import evaluate
    from flant5_imdb.modeling import build_model

    n, rows = 1000, 2000
    torch.manual_seed(0)
    model = build_model("x", model_config="tiny", vocab_size=n + 100)
    ds = Dataset.from_dict({
        "input_ids": [[5 + i % 50] * 20 for i in range(rows)],
        "labels": [[3 + i % n, 1] for i in range(rows)],
        "length": [20] * rows, "id": list(range(rows)), "label": [i % n for i in range(rows)],
    })  # fmt: skip
    names = tuple(f"class{i:04d}" for i in range(n))
    started = time.perf_counter()
    result = evaluate(model, ds, targets=[[3 + i, 1] for i in range(n)], accelerator=make_accelerator("fp32"),
                      names=names, predictions=tmp_path / "eval_predictions.jsonl")  # fmt: skip
    write_report(result, tmp_path)
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 1.0, "lr": 1e-3, "samples_per_s": 9})
    )
    written = plot_run(tmp_path)
    took = time.perf_counter() - started
    assert took < 20, took
    assert result["n"] == rows and result["confusion_matrix"] is None and len(result["top_confusions"]) == 20
    assert sum(c for _, _, c in result["confusion_counts"]) == rows
    first = json.loads((tmp_path / "eval_predictions.jsonl").read_text().splitlines()[0])
    assert len(first["top_probs"]) == 10 and "probs" not in first
    for name, most in (
        ("eval.json", 2_000_000),
        ("eval.txt", 200_000),
        ("eval_predictions.jsonl", 2_000_000),
    ):
        assert (tmp_path / name).stat().st_size < most, name
    assert "1000 classes: the most frequent confusions" in (tmp_path / "eval.txt").read_text()
    assert tmp_path / "confusion_matrix.png" in written


def tiny_run(data, out, **kw):
    base = dict(data=str(data), output_dir=str(out), max_steps=4, keep_checkpoints=1, save_every=2,
                final_eval=False, save_model=False, log_every=1, batch_size=4)  # fmt: skip
    return run(preset("smoke", **{**base, **kw}))


def folder_state(out: Path) -> dict[str, str]:
    files = sorted(out.rglob("*"))
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
            if p.is_file() and p.name != ".lock"}  # fmt: skip


def classes_data(folder: Path, classes: str, extra_words: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"{WORDS[c]} {extra_words} {i}", "label": c} for i in range(8) for c in classes]
    write_jsonl(folder / "train.jsonl", rows)
    return folder


@pytest.mark.parametrize("force", [False, True])
def test_a_resume_with_another_label_space_is_refused_and_writes_nothing(tmp_path, force):
    out = tmp_path / "out"
    tiny_run(classes_data(tmp_path / "abc", "abc"), out, validation_split=0.0)
    before = folder_state(out)
    for data, kw, why in [
        (classes_data(tmp_path / "abcd", "abcd"), {}, "the data has class(es) the checkpoint does not: 'd'"),
        (tmp_path / "abc", dict(labels="c,b,a", verbalizer="digits"),
         "the classes' order changed: a, b, c -> c, b, a"),
        (tmp_path / "abc", dict(verbalizer="x,y,z"),
         "the texts the model writes changed: 'a', 'b', 'c' -> 'x'"),
    ]:  # fmt: skip
        with pytest.raises(CheckpointError, match=re.escape(why)):
            tiny_run(data, out, validation_split=0.0, resume="auto", force_resume=force, **kw)
        assert folder_state(out) == before  # config.json, metrics, checkpoints: every file as it was


def test_a_refused_resume_on_changed_data_writes_nothing(tmp_path):
    """Fewer rows than the checkpoint's: refused for the content, and, from a checkpoint written before
    checkpoints kept the data's digest, for the data order it cannot continue. Neither writes a byte."""
    from flant5_imdb.checkpoint import MANIFEST, manifest

    out = tmp_path / "out"
    data = classes_data(tmp_path / "abc", "abc")
    tiny_run(data, out, validation_split=0.0)
    before = folder_state(out)
    write_jsonl(
        data / "train.jsonl", [{"text": f"{WORDS['a']} {i}", "label": c} for i in range(3) for c in "abc"]
    )
    with pytest.raises(CheckpointError, match=r"\(the content of --data '.*abc' changed since step-4\)"):
        tiny_run(data, out, validation_split=0.0, resume="auto")
    assert folder_state(out) == before
    for step in (out / "checkpoints").iterdir():  # as written before: no digest (its manifest made anew)
        saved = json.loads((step / "train_state.json").read_text())
        del saved["data_content"]
        (step / "train_state.json").write_text(json.dumps(saved))
        (step / MANIFEST).write_text(json.dumps(manifest(step)))
    before = folder_state(out)
    with pytest.raises(CheckpointError, match="cannot resume the data order"):
        tiny_run(data, out, validation_split=0.0, resume="auto")
    assert folder_state(out) == before


def test_a_resumed_word_level_run_keeps_its_tokenizer(tmp_path):
    """New words in the data must not rebuild the vocabulary the restored embeddings learned."""
    from flant5_imdb.tokenizer import load_tokenizer

    out = tmp_path / "out"
    tiny_run(classes_data(tmp_path / "v1", "abc"), out, validation_split=0.0)
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    vocab = load_tokenizer(str(checkpoint)).get_vocab()
    summary = tiny_run(classes_data(tmp_path / "v2", "abc", "zebra yak xylophone"), out, validation_split=0.0,
                       resume="auto", force_resume=True, max_steps=6, save_model=True)  # fmt: skip
    assert summary["steps"] == 6
    assert load_tokenizer(str(out / "final")).get_vocab() == vocab and "zebra" not in vocab


def test_the_classes_with_their_counts_are_in_the_log_the_summary_and_the_card(tmp_path, caplog):
    data = classes_data(tmp_path / "abc", "abc")
    write_jsonl(
        data / "train.jsonl",
        [
            {"text": f"{WORDS[c]} {i}", "label": c}
            for c, k in zip("abc", (9, 6, 3), strict=True)
            for i in range(k)
        ],
    )
    with caplog.at_level(logging.INFO):
        summary = tiny_run(data, tmp_path / "out", validation_split=0.0, save_model=True)
    assert (
        "3 classes (training examples; -> the text the model writes, where not the name): a (9), b (6), c (3)"
        in caplog.text
    )
    assert [(c["name"], c["target"], c["train_examples"]) for c in summary["classes"]] == [
        ("a", "a", 9), ("b", "b", 6), ("c", "c", 3)]  # fmt: skip
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["classes"] == summary["classes"]
    card = (tmp_path / "out" / "final" / "README.md").read_text()
    assert "| class | the model writes | training examples |" in card and "| c | `c` | 3 |" in card


def test_eval_split_none_turns_evaluation_off_and_other_names_must_exist(tmp_path):
    from flant5_imdb.config import parse_args

    data = classes_data(tmp_path / "abc", "abc")
    write_jsonl(data / "test.jsonl", [{"text": "alpha", "label": "a"}])
    cfg = parse_args(["--preset", "smoke", "--eval-split", "none", "--data", str(data)])
    assert cfg.eval_split == "none"
    assert (
        parse_args(["--preset", "smoke", "--dropout", "none"]).dropout is None
    )  # other options: 'none' is None
    summary = tiny_run(data, tmp_path / "out", eval_split="none", final_eval=True)
    assert summary["eval"] is None and summary["eval_source"] is None
    with pytest.raises(DataError, match=r"--eval-split 'dev': .* has only test, train; name one of these"):
        tiny_run(data, tmp_path / "out2", eval_split="dev", final_eval=True)


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    import os

    from tests.conftest import load_script

    train_script = load_script("train")

    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode)
    )
    code = train_script.main(["--preset", "smoke", "--output-dir", str(tmp_path / "runs" / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --output-dir {tmp_path / 'runs' / 'x'}: cannot create or write it")

    def refuse(self, *a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "access", real_access)
    data = classes_data(tmp_path / "abc", "abc")
    monkeypatch.setattr(Path, "mkdir", refuse)
    code = train_script.main(
        ["--preset", "smoke", "--data", str(data), "--output-dir", str(tmp_path / "new")]
    )
    err = capsys.readouterr().err  # after the data's progress bars: one line, no traceback
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: --output-dir {tmp_path / 'new'}: cannot create or write it (Permission denied); "
        "choose another folder"
    )


def class_label_parquet(path: Path, names: list[str], rows: list[tuple[str, int]]) -> str:
    """A parquet file as `datasets` writes one: its label a `ClassLabel` (integers, the names in metadata)."""
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    path.parent.mkdir(parents=True, exist_ok=True)
    texts, labels = zip(*rows, strict=True)
    Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=features).to_parquet(str(path))
    return str(path)


def test_a_class_label_gives_its_names_in_its_order(tmp_path):
    # Not alphabetical: the classes must be the ClassLabel's own order, class i its integer i.
    names = ["feature", "billing", "bug"]
    rows = [(f"{WORDS['abc'[y]]} {i}", y) for i in range(4) for y in (2, 0, 1)]
    got = load_labelled(class_label_parquet(tmp_path / "train.parquet", names, rows))
    assert got.classes.names == ("feature", "billing", "bug") and got.classes.kind == "name"
    assert list(got.splits["train"]["label"]) == [y for _, y in rows]
    assert verbalize("auto", got.classes) == names
    # Two classes are two named classes, not IMDB's negative and positive.
    spam = [("win money", 0), ("hi mum", 1), ("free pills", 0)]
    two = load_labelled(class_label_parquet(tmp_path / "hs" / "train.parquet", ["spam", "ham"], spam))
    assert two.classes.names == ("spam", "ham") and verbalize("auto", two.classes) == ["spam", "ham"]
    # IMDB's own ClassLabel (neg, pos) stays the IMDB label space.
    imdb = load_labelled(class_label_parquet(tmp_path / "im" / "train.parquet", ["neg", "pos"],
                                             [("bad film", 0), ("good film", 1)]))  # fmt: skip
    assert imdb.classes == IMDB


def test_a_named_model_evaluates_class_label_integers_by_name_and_an_unlabelled_row_is_named(tmp_path):
    names = ["feature", "billing", "bug"]
    path = class_label_parquet(tmp_path / "test.parquet", names, [("a", 0), ("b", 1), ("c", 2), ("d", 1)])
    model_space = LabelSpace(("bug", "billing", "feature"), ("bug", "billing", "feature"), "name")
    got = load_labelled(path, classes=model_space, splits=["test"], train_split="train")
    assert list(got.splits["test"]["label"]) == [2, 1, 0, 1]  # by name, in the model's order
    unlabelled = class_label_parquet(tmp_path / "u" / "test.parquet", names, [("a", 0), ("b", -1)])
    with pytest.raises(DataError, match=r"test.parquet row 2: label '-1' is not one of bug, billing, feat"):
        load_labelled(unlabelled, classes=model_space, splits=["test"], train_split="train")


def test_a_class_label_model_names_its_classes_in_the_summary_and_the_card(tmp_path):
    names = ["feature", "billing", "bug"]
    rows = [(f"{WORDS['abc'[y]]} {i}", y) for i in range(6) for y in (0, 1, 2)]
    data = class_label_parquet(tmp_path / "data" / "train.parquet", names, rows)
    summary = tiny_run(data, tmp_path / "out", validation_split=0.0, save_model=True)
    assert [(c["name"], c["target"]) for c in summary["classes"]] == [(n, n) for n in names]
    card = (tmp_path / "out" / "final" / "README.md").read_text()
    assert "| billing | `billing` | 6 |" in card


def test_an_arrow_file_datasets_wrote_is_read_with_its_class_names(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["feature", "billing", "bug"])})
    ds = Dataset.from_dict({"text": ["add dark mode", "charged twice", "crash"], "label": [0, 1, 2]},
                           features=features)  # fmt: skip
    path = tmp_path / "train.arrow"
    ds.map(None, cache_file_name=str(path), new_fingerprint="written")  # one Arrow file, as datasets writes
    got = load_labelled(str(path))
    assert got.classes.names == ("feature", "billing", "bug") and list(got.splits["train"]["label"]) == [
        0,
        1,
        2,
    ]
    (tmp_path / "bad.arrow").write_text("not arrow")
    with pytest.raises(DataError, match=r"bad.arrow: cannot be read as Arrow"):
        load_labelled(str(tmp_path / "bad.arrow"))


def test_a_space_saved_as_imdb_loads_as_polarity():
    """The two-class 0/1/neg/pos space is named for what it is, not for one dataset; a model saved when
    it was called "imdb" reads its labels the same way."""
    from flant5_imdb.data.labels import POLARITY, LabelSpace

    old = LabelSpace.from_dict({"values": ["0", "1"], "names": ["negative", "positive"], "kind": "imdb"})
    assert old == POLARITY and old.kind == "polarity" and old.index_of("pos") == 1
    assert LabelSpace.from_dict(POLARITY.to_dict()) == POLARITY


def test_no_generic_function_assumes_imdbs_classes():
    """The functions that work for any data take its classes: none defaults to IMDB's."""
    import inspect

    from flant5_imdb.data import encode, labelled, labels
    from flant5_imdb.evaluate import evaluate, metrics, metrics_from_counts
    from flant5_imdb.modeling import save_settings

    functions = (encode.target_ids, labels.verbalize, labelled._validate, evaluate, metrics,
                 metrics_from_counts, save_settings)  # fmt: skip
    for f in functions:
        defaults = [p.default for p in inspect.signature(f).parameters.values()]
        assert not any(d is labels.IMDB or d == labels.IMDB.names for d in defaults), f.__name__


def test_a_word_vocabulary_holds_polaritys_two_spellings_only_for_polarity_data():
    from flant5_imdb.data import vocabulary_targets

    assert vocabulary_targets(["0", "1"], IMDB) == ["0", "1", "negative", "positive"]
    spam = LabelSpace(("ham", "spam"), ("ham", "spam"), "name")
    assert vocabulary_targets(["ham", "spam"], spam) == ["ham", "spam"]
