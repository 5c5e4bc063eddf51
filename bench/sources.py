"""What a bench script trains on: the options that name the model, data and tokenizer, the tokenized
splits (made once, through the package's own data path), and the CPU threads every row runs with."""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch

from flant5_imdb.accel import training_threads
from flant5_imdb.config import THREADS_HELP, count_or_auto, positive_int
from flant5_imdb.data import DataError, DataSpec, column, load_labelled, parse_source, prepare, verbalize
from flant5_imdb.tokenizer import TRAIN_HERE, load_tokenizer, train_word_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def add_source_args(p: argparse.ArgumentParser) -> None:
    """--model, --model-config, --data, --tokenizer, --examples: what a bench script trains on."""
    shared = ROOT.parent / "shared" / "data"
    p.add_argument(
        "--model",
        default=None,
        help="real weights (Hub id or folder); default: random init of --model-config",
    )
    p.add_argument(
        "--model-config",
        default="flan-t5-base",
        help="architecture for random init (flan-t5-small, ..., -xl, tiny)",
    )
    p.add_argument(
        "--data", default=str(shared / "imdb") if (shared / "imdb").is_dir() else "stanfordnlp/imdb"
    )
    p.add_argument(
        "--tokenizer",
        default=str(shared / "tokenizer" / "imdb-unigram-32k")
        if (shared / "tokenizer").is_dir()
        else "google/flan-t5-base",
    )
    p.add_argument(
        "--examples",
        type=positive_int,
        default=None,
        help="a seeded random subset of this many examples per split (default: all): less tokenizing, the "
        "same length distribution",
    )
    p.add_argument("--threads", default="auto", help=THREADS_HELP + "; one count for every row")


def check_sources(p: argparse.ArgumentParser, args) -> None:
    """--data checked as training checks it, before anything is read: a missing file or a malformed
    value is one argparse-style line (exit 2), not a traceback from the first row."""
    try:
        parse_source(args.data)
        count_or_auto("--threads", args.threads)
    except (DataError, ValueError) as e:
        p.error(str(e))


class BenchData:
    """The tokenized splits, once, through the package's own data path: for FLOPs and eval timing.

    The tokenizer (and, with --examples, the subset) are written to a folder named after their
    sources, so that every row, and every bench process of one machine, reads the same files: the
    datasets cache then tokenizes once for all of them.
    """

    def __init__(self, args):
        key = hashlib.sha256(repr((args.data, args.tokenizer, args.examples)).encode()).hexdigest()[:12]
        self.folder = Path(tempfile.gettempdir()) / f"flant5-bench-{key}"
        self.tok_dir = self.folder / "tokenizer"
        self.data = str(self.folder / "data") if args.examples else args.data
        if not (
            self.folder / "ready"
        ).is_file():  # written once: rewritten files would defeat the datasets cache
            labelled = load_labelled(args.data)
            raw = labelled.splits
            if args.examples:
                raw = type(raw)(
                    {s: d.shuffle(seed=0).select(range(min(args.examples, len(d)))) for s, d in raw.items()}
                )
                for split, ds in raw.items():
                    ds.to_parquet(str(Path(self.data) / f"{split}.parquet"))
            tokenizer = (
                train_word_tokenizer(raw["train"]["text"], targets=verbalize("digits", labelled.classes))
                if args.tokenizer == TRAIN_HERE
                else load_tokenizer(args.tokenizer)
            )
            tokenizer.save_pretrained(self.tok_dir)
            (self.folder / "ready").write_text("")
        self.tokenizer = load_tokenizer(str(self.tok_dir))
        spec = DataSpec(self.data, verbalizer="digits", max_source_length=512)
        prepared = prepare(spec, lambda *_: self.tokenizer)
        self.target_ids, self.names = prepared.target_ids, prepared.classes.names
        self.splits = {
            "train": prepared.train,
            **({prepared.eval_source: prepared.eval} if prepared.eval else {}),
        }
        self.lengths = column(self.splits["train"], "length").tolist()
        self.target_len = len(self.splits["train"][0]["labels"])


def bench_threads(args, data: BenchData) -> int | None:
    """The CPU threads of every row of this bench run, decided once, before the first row, as training
    decides them (`--threads`; `auto`: the cores idle now), with what training sets beside them (denormals
    flushed, malloc keeping freed memory): rows measured on different thread counts would not compare.
    None on a GPU."""
    from bench.flops import parameters
    from flant5_imdb.modeling import architecture_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        from transformers import AutoConfig

        arch = AutoConfig.from_pretrained(args.model)
    else:
        arch = architecture_config(args.model_config, len(data.tokenizer))
    threads = training_threads(args.threads, parameters(arch), device)
    if threads:
        print(f"CPU threads, for every row: {threads} (--threads {args.threads})", flush=True)
    return threads
