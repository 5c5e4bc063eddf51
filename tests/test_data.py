import json
import logging
import re

import numpy as np
import pandas as pd
import pytest

from flant5_imdb.data import (
    IMDB,
    Collator,
    DataError,
    load_labelled,
    prompt_template,
    subset,
    target_ids,
    tokenize,
)
from flant5_imdb.data.synthetic import make_synthetic
from flant5_imdb.sampler import StepSampler
from tests.conftest import real_data_or_skip
from tests.helpers import load_splits

ROWS = [("a fine film", 1), ("dull and long", 0), ("loved it", 1)]


def write(path, rows, fmt, columns=("text", "label")):
    df = pd.DataFrame(rows, columns=list(columns))
    if fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(dict(zip(columns, r, strict=True))) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_folder_of_split_files(tmp_path, fmt):
    write(tmp_path / f"train.{fmt}", ROWS, fmt)
    write(tmp_path / f"test.{fmt}", ROWS[:2], fmt)
    dsd, skipped = load_splits(str(tmp_path))
    assert set(dsd) == {"train", "test"} and skipped == []
    assert dsd["train"]["text"] == [r[0] for r in ROWS]
    assert dsd["train"]["label"] == [1, 0, 1]
    assert dsd["train"].column_names == ["text", "label"]
    assert dsd["test"].num_rows == 2


def test_file_per_split_mapping_and_single_file(tmp_path):
    a = write(tmp_path / "a.csv", ROWS, "csv")
    b = write(tmp_path / "b.jsonl", ROWS[1:], "jsonl")
    dsd, _ = load_splits(f"train={a},test={b}")
    assert dsd["train"].num_rows == 3 and dsd["test"]["label"] == [0, 1]
    single, _ = load_splits(str(a))
    assert list(single) == ["train"]


def test_string_labels_are_normalized(tmp_path):
    rows = [("good", "pos"), ("bad", "Negative"), ("fine", "positive"), ("meh", "neg")]
    dsd, _ = load_splits(str(write(tmp_path / "train.csv", rows, "csv")))
    assert dsd["train"]["label"] == [1, 0, 1, 0]
    assert dsd["train"].features["label"].dtype == "int64"


def make_aclimdb(root, bad_bytes=False):
    for split in ("train", "test"):
        for sub, texts in (("neg", ["awful", "boring"]), ("pos", ["great", "superb", "fine"])):
            d = root / split / sub
            d.mkdir(parents=True)
            for i, t in enumerate(texts):
                (d / f"{10 - i * 3}_{7 if sub == 'pos' else 2}.txt").write_text(f"{t} {i}")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("unlabelled")
    if bad_bytes:
        (root / "train" / "pos" / "99_9.txt").write_bytes(b"caf\xe9 review")
    return root


def test_aclimdb_layout(tmp_path):
    dsd, _ = load_splits(str(make_aclimdb(tmp_path / "aclImdb")))
    # Ordered by label, then by numeric file id (4 before 10), unsup ignored.
    assert dsd["train"]["text"] == ["boring 1", "awful 0", "fine 2", "superb 1", "great 0"]
    assert dsd["train"]["label"] == [0, 0, 1, 1, 1]
    assert dsd["test"].num_rows == 5


def test_an_aclimdb_folder_is_read_one_file_at_a_time(tmp_path, monkeypatch):
    """Memory holds the file in hand, not the split: the first record comes after one file is read."""
    from pathlib import Path

    from flant5_imdb.data.reader import read_aclimdb

    root = make_aclimdb(tmp_path / "aclImdb")
    read, real = [], Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real(self))
    rows = read_aclimdb(root / "train", "train").rows()
    assert read == [] and next(rows) == (1, "boring 1", 0) and read == ["7_2.txt"]
    assert [text for _, text, _ in rows] == ["awful 0", "fine 2", "superb 1", "great 0"] and len(read) == 5


def test_aclimdb_invalid_utf8_names_the_file(tmp_path):
    root = make_aclimdb(tmp_path / "aclImdb", bad_bytes=True)
    with pytest.raises(DataError, match=r"99_9\.txt: not valid UTF-8 \(byte 0xe9 at offset 3\)"):
        load_splits(str(root))
    dsd, skipped = load_splits(str(root), skip_bad_rows=True)
    assert [s.where.endswith("99_9.txt") for s in skipped] == [True]
    assert dsd["train"].num_rows == 5


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("ok", 1), ("", 0), ("fine", 1)], r"train\.csv: 1 bad row\(s\): .*train\.csv line 3: empty text"),
        (
            [("ok", 1), ("fine", 0), ("   \n", 1)],
            r"train\.csv line 4: empty text",
        ),  # the line where the record starts
        ([("ok", 1), ("bad label", 5)], r"line 3: label '5' is not one of 0, 1"),
        ([("ok", "pos"), ("bad label", "maybe")], r"line 3: label 'maybe' is not one of neg, pos"),
    ],
)
def test_bad_rows_are_errors_naming_file_and_row(tmp_path, rows, message):
    """With the classes named (--labels), any other label is a bad row."""
    path = write(tmp_path / "train.csv", rows, "csv")
    order = ("neg", "pos") if isinstance(rows[0][1], str) else ("0", "1")
    with pytest.raises(DataError, match=message):
        load_labelled(str(path), label_order=order)


def test_skip_bad_rows_reports_which(tmp_path):
    rows = [("ok", 1), ("", 0), ("fine", 0), ("x", "maybe"), ("good", 1)]
    path = write(tmp_path / "train.jsonl", rows, "jsonl")
    loaded = load_labelled(str(path), skip_bad_rows=True, label_order=("0", "1"))
    dsd, skipped = loaded.splits, loaded.skipped
    assert dsd["train"]["text"] == ["ok", "fine", "good"]
    assert [(s.row, s.reason.split(" ")[0]) for s in skipped] == [(2, "empty"), (4, "label")]


def test_first_five_bad_rows_listed(tmp_path):
    rows = [("", 1)] * 7 + [("ok", 0)]
    with pytest.raises(DataError, match=r"7 bad row\(s\): .*row 5: empty text; pass --skip-bad-rows") as e:
        load_splits(str(write(tmp_path / "train.parquet", rows, "parquet")))
    assert "row 6" not in str(e.value)


def test_missing_column(tmp_path):
    path = write(tmp_path / "train.csv", [("x", 1)], "csv", columns=("review", "label"))
    with pytest.raises(DataError, match=r"train\.csv: no 'text' column \(found: review, label\)"):
        load_splits(str(path))


def test_missing_path_and_unreachable_hub(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_splits(str(tmp_path / "nope.csv"))
    with pytest.raises(
        DataError, match=r"cannot load 'stanfordnlp/imdb' from the Hugging Face Hub .*pass --data"
    ):
        load_splits("stanfordnlp/imdb")  # conftest sets HF_HUB_OFFLINE: the real code path, no network


def test_folder_without_data(tmp_path):
    with pytest.raises(DataError, match="no train.* / test.* file"):
        load_splits(str(tmp_path))


def test_verbalizers_and_prompt(word_tokenizer, synthetic):
    eos = word_tokenizer.eos_token_id
    digits = target_ids(word_tokenizer, "digits", IMDB)
    words = target_ids(word_tokenizer, "words", IMDB)
    assert [t[-1] for t in digits + words] == [eos] * 4
    assert word_tokenizer.decode(digits[1], skip_special_tokens=True) == "1"
    assert word_tokenizer.decode(words[0], skip_special_tokens=True) == "negative"
    plain = tokenize(synthetic, word_tokenizer, words)
    prompted = tokenize(synthetic, word_tokenizer, words, prompt="review: {text} sentiment?")
    row, prow = plain["train"][0], prompted["train"][0]
    assert row["labels"] == words[row["label"]]
    # The template adds 3 words ("review", ":", "sentiment", "?" = 4 pieces) around the same review.
    assert prow["length"] == row["length"] + 4
    assert prow["input_ids"][:2] == word_tokenizer("review:", add_special_tokens=False).input_ids


def test_bad_prompts():
    assert prompt_template("flan").endswith("negative or positive?")
    with pytest.raises(DataError, match="exactly once"):
        prompt_template("no placeholder")
    with pytest.raises(DataError, match="placeholder other than"):
        prompt_template("{text} {other}")


def test_truncation_keeps_eos_and_records_lengths(word_tokenizer, synthetic, caplog):
    with caplog.at_level(logging.INFO):
        out = tokenize(
            synthetic, word_tokenizer, target_ids(word_tokenizer, "digits", IMDB), max_source_length=16
        )
    lengths = out["train"]["length"]
    cut = sum(n == 16 for n in lengths)
    assert cut > 200  # most: warned about, where a few cut short is only logged
    assert [(r.levelname, r.getMessage()) for r in caplog.records if "truncated" in r.getMessage()][0] == (
        "WARNING",
        f"train: {cut} of 400 sources truncated to 16 tokens (most of them: the model sees only their "
        "beginning; see --max-source-length)",
    )
    caplog.clear()
    with caplog.at_level(logging.INFO):
        tokenize(synthetic, word_tokenizer, target_ids(word_tokenizer, "digits", IMDB), max_source_length=100)
    assert {r.levelname for r in caplog.records if "truncated" in r.getMessage()} == {"INFO"}
    assert max(lengths) == 16
    assert all(len(ids) == n for ids, n in zip(out["train"]["input_ids"], lengths, strict=True))
    assert all(ids[-1] == word_tokenizer.eos_token_id for ids in out["train"]["input_ids"])
    assert out["train"]["id"] == list(range(400))


def test_tokenization_into_a_folder_is_memory_mapped_and_the_same(tmp_path, word_tokenizer):
    write(tmp_path / "train.parquet", ROWS * 10, "parquet")
    digits = target_ids(word_tokenizer, "digits", IMDB)
    (tmp_path / "out").mkdir()
    kept = tokenize(load_splits(str(tmp_path))[0], word_tokenizer, digits, folder=tmp_path / "out")
    held = tokenize(load_splits(str(tmp_path))[0], word_tokenizer, digits)
    assert [f["filename"] for f in kept["train"].cache_files] == [str(tmp_path / "out" / "train.arrow")]
    assert not held["train"].cache_files and kept["train"].to_list() == held["train"].to_list()


def test_synthetic_is_balanced_and_deterministic():
    a, b = make_synthetic(100, 20, seed=3), make_synthetic(100, 20, seed=3)
    assert a["train"]["text"] == b["train"]["text"]
    assert sum(a["train"]["label"]) == 50


def test_subset_is_random_not_first_rows():
    ds = make_synthetic(200, 10)["train"].sort("label")  # sorted by label, like the IMDB files
    sub = subset(ds, 50, seed=0)
    assert 10 < sum(sub["label"]) < 40


@pytest.mark.slow  # 40 s: tokenizes all 25,000 reviews
def test_real_imdb_length_grouping_pads_under_10_percent():
    """Padding of length-grouped batches of 8 vs the baseline's padding to 512, on the real training set."""
    from transformers import AutoTokenizer

    data_dir, tok_dir = real_data_or_skip()
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    dsd, _ = load_splits(str(data_dir / "train.parquet"))
    ds = tokenize(dsd, tok, target_ids(tok, "digits", IMDB), max_source_length=512)["train"]
    assert ds.num_rows == 25_000
    lengths = np.asarray(ds["length"])
    real = lengths.sum()
    collate = Collator(pad_to_multiple_of=8)
    sampler = StepSampler(lengths, batch_size=8, seed=42, group_by_length=True)
    padded = sum(
        collate.source_length(int(lengths[b].max())) * len(b) for s in sampler for b in s.micro_batches
    )
    grouped_pad = 1 - real / padded
    baseline_pad = 1 - real / (512 * len(lengths))
    print(
        f"\nIMDB train, {len(lengths)} reviews, mean {lengths.mean():.0f} tokens: padding fraction "
        f"length-grouped batches of 8 = {grouped_pad:.2%}, padded to 512 = {baseline_pad:.2%}"
    )
    assert grouped_pad < 0.10
    assert baseline_pad > 0.40


@pytest.mark.parametrize(
    "labels, kind, values, names",
    [
        (
            [1, 0, "pos", "negative"],
            "polarity",
            ("0", "1"),
            ("negative", "positive"),
        ),  # IMDB's spellings, mixed
        ([3, 10, 2, 3], "int", ("2", "3", "10"), ("2", "3", "10")),  # integers ascending, not as text
        (
            ["bug", "billing", "other", "bug"],
            "name",
            ("billing", "bug", "other"),
            ("billing", "bug", "other"),
        ),
    ],
)
def test_the_label_space_comes_from_the_training_split(tmp_path, labels, kind, values, names):
    path = write(tmp_path / "train.csv", [(f"text {i}", y) for i, y in enumerate(labels)], "csv")
    loaded = load_labelled(str(path))
    assert (loaded.classes.kind, loaded.classes.values, loaded.classes.names) == (kind, values, names)
    assert [loaded.classes.values[y] for y in loaded.splits["train"]["label"]][-1] == (
        "0" if kind == "polarity" else str(labels[-1])  # IMDB's "negative" is class 0
    )


def test_named_classes_keep_the_given_order_and_test_labels_must_be_known(tmp_path):
    write(tmp_path / "train.csv", [("a", "low"), ("b", "high"), ("c", "mid")], "csv")
    write(tmp_path / "test.csv", [("d", "mid"), ("e", "huge")], "csv")
    with pytest.raises(DataError, match=r"test\.csv line 3: label 'huge' is not one of low, mid, high"):
        load_labelled(str(tmp_path), label_order=("low", "mid", "high"))
    (tmp_path / "test.csv").unlink()
    loaded = load_labelled(str(tmp_path), label_order=("low", "mid", "high"))
    assert loaded.splits["train"]["label"] == [0, 2, 1]


def test_verbalizers_for_n_classes():
    from flant5_imdb.data.labels import IMDB, LabelSpace, verbalize

    names = LabelSpace(("billing", "bug", "other"), ("billing", "bug", "other"), "name")
    ints = LabelSpace(("2", "3", "10"), ("2", "3", "10"), "int")
    assert verbalize("auto", IMDB) == verbalize("digits", IMDB) == ["0", "1"]
    assert verbalize("words", IMDB) == ["negative", "positive"]
    assert verbalize("auto", names) == ["billing", "bug", "other"] and verbalize("digits", names) == [
        "0",
        "1",
        "2",
    ]
    assert verbalize("auto", ints) == ["2", "3", "10"] and verbalize("x,y,z", names) == ["x", "y", "z"]
    with pytest.raises(
        DataError, match=r"3 different texts 'T1,...,T3', one per class \(billing, bug, other\)"
    ):
        verbalize("x,y", names)


@pytest.mark.parametrize(
    "name, is_path",
    [
        ("google/flan-t5-base", False),
        ("stanfordnlp/imdb", False),
        ("org/model-v1.5", False),
        ("./runs/final", True),
        ("~/data", True),
        ("/data/imdb", True),
        ("data/imdb/train", True),
        ("data\\imdb", True),
        ("reviews.csv", True),
        ("tickets/train.jsonl.gz", True),
        ("tickets/train.cvs", True),  # a misspelt file is said to be missing, not looked up on the Hub
        ("EleutherAI/gpt-neo-1.3B", False),
    ],
)
def test_one_rule_says_what_is_a_path_for_every_option(name, is_path):
    """--data, --model and --tokenizer, and the Hub preflight, all ask `looks_like_path`: a missing path is
    said to be missing, never looked up on the Hub."""
    from flant5_imdb import hub
    from flant5_imdb.data import looks_like_path, parse_source

    assert looks_like_path(name) is is_path
    assert (hub.hub_id(name) is None) is is_path
    if is_path:
        with pytest.raises(DataError, match=f"--data {re.escape(name)}: no such file or folder"):
            parse_source(name)
    else:
        assert parse_source(name).kind == "hub" and parse_source(name).hub_id == name


def test_targets_the_tokenizer_cannot_tell_apart_are_refused_by_name(word_tokenizer):
    unk, eos = word_tokenizer.unk_token_id, word_tokenizer.eos_token_id
    with pytest.raises(DataError) as e:
        target_ids(word_tokenizer, "yes,no", IMDB)
    assert str(e.value) == (
        f"the tokenizer maps the targets 'yes' and 'no' to the same ids [{unk}, {eos}] "
        "(its unknown token: it does not know these words)"
    )
    assert target_ids(word_tokenizer, "great,awful", IMDB) != target_ids(word_tokenizer, "awful,great", IMDB)


def test_the_generic_prompt_speaks_of_a_text_and_a_saved_model_keeps_the_wording_it_saw():
    """`flan` asks about "this text"; a model saved with only the name `flan` (before the wording changed)
    is read with the movie-review template it was trained on; a model saved with its template keeps it."""
    from flant5_imdb.data.encode import FORMER_PROMPTS, PROMPTS, trained_prompt

    assert "movie" not in prompt_template("flan") and "this text" in prompt_template("flan")
    assert trained_prompt({"prompt": "flan"}) == FORMER_PROMPTS["flan"] != PROMPTS["flan"]
    assert "movie review" in prompt_template(trained_prompt({"prompt": "flan"}))
    assert trained_prompt({"prompt": "flan", "prompt_template": PROMPTS["flan"]}) == "flan"
    assert trained_prompt({"prompt": None, "prompt_template": "{text}"}) is None
    assert trained_prompt({}) is None  # a Hub model: no prompt


def test_a_model_saved_before_the_prompts_wording_changed_is_read_as_it_was_trained(tmp_path, caplog):
    from flant5_imdb.data import IMDB
    from flant5_imdb.data.encode import FORMER_PROMPTS
    from flant5_imdb.modeling import SETTINGS_FILE, _warn_about_other_settings, save_settings, saved_settings

    save_settings(tmp_path, verbalizer="digits", prompt="flan", max_source_length=64, classes=IMDB)
    assert saved_settings(tmp_path)["prompt_template"] == prompt_template("flan")
    old = {"verbalizer": "digits", "prompt": "flan", "max_source_length": 64, "labels": IMDB.to_dict()}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(old))  # as an older version wrote it: no template
    with caplog.at_level(logging.WARNING):
        _warn_about_other_settings(saved_settings(tmp_path), {"classes": IMDB}, None, "flan")
    assert caplog.messages == [
        f"--prompt 'flan': this model was trained with the prompt {FORMER_PROMPTS['flan']!r}; its inputs now "
        "differ"
    ]


def test_lines_end_where_a_text_file_ends_them_wherever_the_blocks_are_cut():
    """LF, CRLF and a lone CR end a line (U+2028 and a form feed do not); a CRLF cut between two blocks is
    one end; each line keeps its end. The same for every cut into two blocks, and one character a block."""
    from flant5_imdb.data.reader import lines

    text = "a\nb\r\nc\rd\u2028e\x0cf\r\r\ng\n\nh"
    expected = ["a\n", "b\r\n", "c\r", "d\u2028e\x0cf\r", "\r\n", "g\n", "\n", "h"]
    assert list(lines([text])) == expected
    for cut in range(1, len(text)):
        assert list(lines([text[:cut], text[cut:]])) == expected, cut
    assert list(lines(iter(text))) == expected
    assert list(lines(["x\r", "\n", "\r"])) == ["x\r\n", "\r"]


def test_a_runs_data_options_reach_its_data_spec_each_as_given():
    """Every data option of a run is in what it asks of its data: one dropped on the way (a silent wrong
    run) or taken from the wrong option fails here."""
    from flant5_imdb.config import parse_args
    from flant5_imdb.data import DataSpec
    from flant5_imdb.data.reader import Columns

    options = (
        "--data org/tickets --data-config en --text-column body --label-column topic "
        "--train-split validation --eval-split test --validation-split 0.2 --labels a\\,_b,c "
        "--skip-bad-rows --verbalizer words "
        "--prompt flan --max-source-length 64 --max-train-samples 7 --max-eval-samples 5 --seed 3 "
        "--data-cache none --preprocess-workers 2"
    )
    cfg = parse_args([word.replace("_", " ") for word in options.split()])
    assert DataSpec.from_config(cfg) == DataSpec(
        "org/tickets", Columns("body", "topic", "en"), "validation", "test", validation_split=0.2,
        label_order=("a, b", "c"), skip_bad_rows=True, verbalizer="words", prompt="flan",
        max_source_length=64, max_train_samples=7, max_eval_samples=5, seed=3, evaluate=True,
        data_cache="none", preprocess_workers="2",
    )  # fmt: skip
    assert not DataSpec.from_config(parse_args(["--eval-split", "none"])).evaluate
