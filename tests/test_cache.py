"""The data cache (flant5_imdb/data/cache.py): a second preparation of the same data reads what the first
kept, a change to the data or to a setting that shapes it prepares it again, and nothing a run says or
refuses depends on whether the cache was used."""

import importlib
import json
import logging
import os
import time
from pathlib import Path

import pytest

from flant5_imdb.data import DataError, DataSpec, prepare
from flant5_imdb.data.cache import cache_root, cached, tokenizer_digest
from flant5_imdb.tokenizer import train_word_tokenizer

# The modules themselves (the package exports functions of the same names).
labelled_module = importlib.import_module("flant5_imdb.data.labelled")
prepare_module = importlib.import_module("flant5_imdb.data.pipeline")

TEXTS = ["a fine film with a fine cast", "dull and long and dull", "loved it", "hated every minute of it"]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    return path


def data(folder: Path, n: int = 24, bad: bool = False) -> Path:
    rows = [(f"{TEXTS[i % 4]} {i}", ["pos", "neg"][i % 4 in (1, 3)]) for i in range(n)]
    write_jsonl(folder / "test.jsonl", rows[: n // 3])
    if bad:  # in train only
        rows[5] = ("", "pos")
    write_jsonl(folder / "train.jsonl", rows)
    return folder


TARGETS = ["0", "1", "negative", "positive"]  # the reviews' classes, as digits and as words
TOKENIZER = train_word_tokenizer([t for t in TEXTS for _ in range(3)], targets=TARGETS, vocab_size=100)


def run(folder: Path, cache: Path | str, **kw):
    spec = DataSpec(str(folder), data_cache=str(cache), **kw)
    return prepare(spec, lambda *_: TOKENIZER)


def rows(ds) -> list[dict]:
    return [dict(r) for r in ds]


def entries(cache: Path) -> dict[str, int]:
    """Each stage's complete entries (temporary folders left out)."""
    counts = {stage: len([p for p in (cache / stage).iterdir() if not p.name.startswith(".")])
              for stage in ("checked", "tokenized") if (cache / stage).is_dir()}  # fmt: skip
    return {k: v for k, v in counts.items() if v}


def test_a_second_preparation_reads_the_first_ones_entries_and_builds_nothing(tmp_path, monkeypatch, caplog):
    folder, cache = data(tmp_path / "d", bad=True), tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        first = run(folder, cache, skip_bad_rows=True, max_source_length=4)
    assert "kept in the cache" in caplog.text and entries(cache) == {"checked": 1, "tokenized": 1}
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("dropped 1 bad row(s)" in m for m in said) and any("truncated to 4 tokens" in m for m in said)
    caplog.clear()

    def never(*a, **k):
        raise AssertionError("prepared again")

    monkeypatch.setattr(labelled_module, "read_splits", never)
    monkeypatch.setattr(prepare_module, "tokenize", never)
    with caplog.at_level(logging.INFO):
        second = run(folder, cache, skip_bad_rows=True, max_source_length=4)
    assert (
        "checked data taken from the cache" in caplog.text
        and "tokenized data taken from the cache" in caplog.text
    )
    # What the first run warned about is said again, word for word.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == said
    assert rows(second.train) == rows(first.train) and rows(second.eval) == rows(first.eval)
    assert second.classes == first.classes and second.skipped == first.skipped and len(second.skipped) == 1
    assert second.example_text == first.example_text and second.class_counts == first.class_counts
    # Memory-mapped from the cache folder, not held in memory.
    assert all(Path(f["filename"]).is_relative_to(cache) for f in second.train.cache_files)
    assert second.train.cache_files


@pytest.mark.parametrize(
    "change, stages",
    [
        ({"max_source_length": 3}, {"checked": 1, "tokenized": 2}),
        ({"prompt": "flan"}, {"checked": 1, "tokenized": 2}),
        ({"verbalizer": "words"}, {"checked": 1, "tokenized": 2}),
        ({"skip_bad_rows": True}, {"checked": 2, "tokenized": 2}),
        ({"eval_split": "train"}, {"checked": 2, "tokenized": 2}),
    ],
)
def test_a_setting_that_shapes_the_data_makes_a_new_entry(tmp_path, change, stages):
    folder, cache = data(tmp_path / "d"), tmp_path / "cache"
    run(folder, cache)
    other = run(folder, cache, **change)
    assert entries(cache) == stages
    assert rows(other.train) == rows(run(folder, "none", **change).train)


def test_a_changed_file_is_read_again_even_with_its_size_and_time(tmp_path):
    folder, cache = data(tmp_path / "d"), tmp_path / "cache"
    first = run(folder, cache)
    path = folder / "train.jsonl"
    st = path.stat()
    changed = path.read_text().replace('"pos"', '"neg"', 1)
    path.write_text(changed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same modification time
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    second = run(folder, cache)
    assert entries(cache) == {"checked": 2, "tokenized": 2}
    assert sum(second.class_counts) == sum(first.class_counts) and second.class_counts != first.class_counts


def test_bad_data_is_refused_every_time_and_kept_nowhere(tmp_path):
    folder, cache = data(tmp_path / "d", bad=True), tmp_path / "cache"
    for _ in range(2):
        with pytest.raises(DataError, match=r"train.jsonl: 1 bad row\(s\): .* line 6: empty text"):
            run(folder, cache)
    assert entries(cache) == {} and not any(cache.rglob(".tmp-*"))


def test_no_cache_keeps_nothing_and_an_unwritable_one_is_said_once(tmp_path, caplog):
    folder = data(tmp_path / "d")
    assert cache_root("none") is None
    plain = run(folder, "none")
    assert not plain.train.cache_files  # in memory
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    with caplog.at_level(logging.WARNING):
        got = run(folder, blocked / "cache")
        run(folder, blocked / "cache")
    assert rows(got.train) == rows(plain.train)
    said = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(said) == 1 and "--data-cache none turns it off" in said[0]


def test_the_default_folder_is_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FLANT5_IMDB_DATA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root(None) == tmp_path / "xdg" / "flant5_imdb" / "data"
    monkeypatch.setenv("FLANT5_IMDB_DATA_CACHE", str(tmp_path / "env"))
    assert cache_root(None) == tmp_path / "env" and cache_root(str(tmp_path / "x")) == tmp_path / "x"


def test_an_entry_made_meanwhile_by_another_run_is_used_and_ours_thrown_away(tmp_path):
    from datasets import Dataset, DatasetDict

    made = []

    def build(folder):
        made.append(folder)
        if len(made) == 1:  # another run, started at the same time, finishes first
            cached(tmp_path, "checked", {"k": 1}, build)
        return DatasetDict({"train": Dataset.from_dict({"x": [len(made)]})}), {"by": len(made)}

    splits, meta, _ = cached(tmp_path, "checked", {"k": 1}, build)
    assert len(made) == 2 and meta == {"by": 2} and splits["train"]["x"] == [2]
    assert len(list((tmp_path / "checked").iterdir())) == 1  # no temporary folder left


def test_a_damaged_entry_is_said_and_built_again(tmp_path, caplog):
    folder, cache = data(tmp_path / "d"), tmp_path / "cache"
    first = rows(run(folder, cache).train)
    for arrow in (cache / "tokenized").rglob("train.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        second = run(folder, cache)
    assert "cannot be read" in caplog.text and "preparing the data again" in caplog.text
    assert rows(second.train) == first


def test_the_tokenizer_key_ignores_what_a_call_leaves_on_it():
    before = tokenizer_digest(TOKENIZER)
    TOKENIZER(["a fine film"] * 2, truncation=True, max_length=2, padding=True)
    assert tokenizer_digest(TOKENIZER) == before
    other = train_word_tokenizer(["other words entirely"] * 3, targets=TARGETS, vocab_size=100)
    assert tokenizer_digest(other) != before


def test_what_a_killed_build_left_is_removed_a_day_later(tmp_path):
    from datasets import Dataset, DatasetDict

    old, fresh = tmp_path / "checked" / ".tmp-old-1-a", tmp_path / "checked" / ".tmp-new-2-b"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "train.arrow").write_bytes(b"half")
    os.utime(old, (0, time.time() - 2 * 24 * 3600))
    cached(tmp_path, "checked", {"k": 2}, lambda _: (DatasetDict({"t": Dataset.from_dict({"x": [1]})}), {}))
    assert not old.exists() and fresh.exists()  # one still being written is left alone


def test_under_accelerate_launch_the_main_process_prepares_and_the_other_reads(tmp_path):
    import subprocess

    from tests.conftest import ROOT, accelerate_launch

    folder = data(tmp_path / "d", n=40)
    env = {**os.environ, "FLANT5_IMDB_DATA_CACHE": str(tmp_path / "cache")}
    launch = accelerate_launch(
        "--config_file", str(ROOT / "configs" / "multi_gpu.yaml"), "--num_processes", "2"
    )
    for run_dir in ("one", "two"):
        proc = subprocess.run(
            [*launch, str(ROOT / "scripts" / "train.py"), "--preset", "smoke", "--data", str(folder),
             "--max-steps", "1", "--output-dir", str(tmp_path / run_dir)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        # Each split tokenized once, by one process, the first time; by none the second.
        assert proc.stderr.count("tokenizing: 100%") == (2 if run_dir == "one" else 0), proc.stderr[-3000:]
    assert "tokenized data taken from the cache" in proc.stderr
    assert entries(tmp_path / "cache") == {"checked": 1, "tokenized": 1}


def test_tokenized_by_two_processes_is_the_same_rows_kept_as_their_two_files(tmp_path):
    folder, cache = data(tmp_path / "d", n=60), tmp_path / "cache"
    two = run(folder, cache, preprocess_workers="2")
    one = run(folder, "none")
    assert rows(two.train) == rows(one.train) and rows(two.eval) == rows(one.eval)
    (meta,) = (cache / "tokenized").glob("*/meta.json")
    assert [len(files) for files in json.loads(meta.read_text())["splits"].values()] == [2, 2]
    again = run(folder, cache, preprocess_workers="1")  # the same entry: workers do not change the rows
    assert rows(again.train) == rows(one.train) and entries(cache) == {"checked": 1, "tokenized": 1}


@pytest.mark.parametrize("setting, rows_, expected", [("3", 5, 3), ("auto", 5, 1), ("auto", 10**9, None)])
def test_preprocess_workers(setting, rows_, expected):
    from flant5_imdb.data.encode import preprocess_workers

    cores = len(os.sched_getaffinity(0))
    assert preprocess_workers(setting, rows_) == (cores if expected is None else expected)
    with pytest.raises(ValueError, match="--preprocess-workers '0': auto, or a whole number of at least 1"):
        preprocess_workers("0", 5)


def test_a_hub_dataset_is_loaded_once_a_preparation_whatever_the_cache(tmp_path, monkeypatch):
    """Its fingerprints key the cache and its rows are read: one load of it (two, before, with no cache or
    on a first run), and its rows as the Hub gave them."""
    import datasets
    from datasets import Dataset, DatasetDict

    from flant5_imdb.data.reader import read_hub

    texts, labels = [f"{t} {i}" for i, t in enumerate(TEXTS * 3)], [i % 2 for i in range(12)]
    rows_ = {split: Dataset.from_dict({"text": texts, "label": labels}) for split in ("train", "test")}
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a: calls.append(a) or DatasetDict(rows_))
    try:
        for cache in ("none", tmp_path / "cache"):
            read_hub.cache_clear()
            calls.clear()
            prepared = run("org/reviews", cache)
            assert calls == [("org/reviews", None)], cache
            assert prepared.classes.kind == "polarity"
            assert (len(prepared.train), len(prepared.eval), prepared.example_text) == (12, 12, texts[0])
    finally:
        read_hub.cache_clear()  # another test's Hub dataset of the same name is its own
