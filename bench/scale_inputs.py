"""The inputs of bench/scale.py's rows: IMDB reviews as a texts file or a CSV at any size, a model of
random weights, texts of N classes. Each made once into the work folder."""

from __future__ import annotations

import json
import random
from pathlib import Path


def reviews_of(reviews: str) -> list[tuple[str, int]]:
    """IMDB's reviews and labels (train, then test), shuffled with seed 0."""
    import pyarrow.parquet as pq

    folder = Path(reviews)
    files = [p for p in (folder / "train.parquet", folder / "test.parquet") if p.is_file()]
    tables = [pq.read_table(f, columns=["text", "label"]) for f in files]
    pairs = [pair for t in tables for pair in zip(t["text"].to_pylist(), t["label"].to_pylist(), strict=True)]
    if not pairs:
        raise SystemExit(f"--reviews {reviews}: no train.parquet or test.parquet there")
    random.Random(0).shuffle(pairs)
    return pairs


def texts_file(reviews: str, n: int, work: Path) -> Path:
    """`n` IMDB reviews, one a line (a review's own line breaks folded), cycled; made once per size."""
    path = work / f"texts-{n}.txt"
    if path.is_file():
        return path
    texts = [" ".join(t.split()) for t, _ in reviews_of(reviews)]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):  # a line at a time: the file may be larger than memory
            f.write(texts[i % len(texts)] + "\n")
    tmp.replace(path)
    return path


def csv_file(reviews: str, n: int, work: Path) -> Path:
    """`n` IMDB reviews and their labels as a CSV (text,label), cycled; made once per size."""
    import csv

    path = work / f"reviews-{n}.csv"
    if path.is_file():
        return path
    pairs = reviews_of(reviews)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for i in range(n):
            out.writerow(pairs[i % len(pairs)])
    tmp.replace(path)
    return path


def random_model(config: str, tokenizer: str | None, work: Path) -> str:
    """A model folder of `config` with random weights, IMDB's classes, as predict.py loads a trained one."""
    from flant5_imdb.data import IMDB
    from flant5_imdb.modeling import build_model, save_settings
    from flant5_imdb.tokenizer import load_tokenizer

    if not tokenizer:
        raise SystemExit("--model-config needs --tokenizer (a folder)")
    folder = work / f"random-{config}"
    tok = load_tokenizer(tokenizer)
    build_model("x", model_config=config, vocab_size=len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    save_settings(folder, verbalizer="digits", prompt=None, max_source_length=512, classes=IMDB)
    return str(folder)


def make_classes(folder: Path, n: int, shared: bool) -> None:
    """Texts of `n` classes, each named by a word its texts hold: 3 training texts and 1 test text a class."""
    rng = random.Random(0)
    filler = ["the", "a", "service", "order", "account", "issue", "please", "help", "today", "thanks", "team"]
    folder.mkdir(parents=True, exist_ok=True)
    for split, per in (("train", 3), ("test", 1)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for _ in range(per):
                for i in range(n):
                    words = rng.sample(filler, 4)
                    text = " ".join([*words[:2], f"k{i}", *words[2:]])
                    f.write(json.dumps({"text": text, "label": f"topic k{i}" if shared else f"k{i}"}) + "\n")
