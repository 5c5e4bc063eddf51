"""The one way in for data: from `--data` to tokenized splits, a label space and a `Collator`.

    source.py    `--data` parsed once into a `Source` (Hub id, files, a folder, aclImdb/, synthetic)
                 and read into raw splits
    reader.py    csv / jsonl / json / txt files (and parquet texts to classify), read as a stream, with a
                 line-level error for every bad record
    labels.py    label values' canonical text, label spaces, verbalizers
    labelled.py  validation (bad rows, label space, warnings about it) and the hold-out
    encode.py    prompt, target ids, tokenization, `Collator`
    cache.py     the checked and the tokenized splits kept on disk (memory-mapped Arrow) for the next run
    prepare.py   `prepare(spec, ...)`: all of it, for training, evaluation and the bench
    synthetic.py the generated sentiment set behind `--data synthetic[:N]`

Data flows one way through them: source -> reader -> labelled -> encode, `prepare` calling each.
"""

from flant5_imdb.data.encode import PROMPTS, Collator, column, prompt_template, subset, target_ids, tokenize
from flant5_imdb.data.labelled import Labelled, class_counts, hold_out, load_labelled, write_skipped
from flant5_imdb.data.labels import IMDB, LabelSpace, infer_labels, parse_label_names, verbalize
from flant5_imdb.data.prepare import DataSpec, Prepared, check_splits, prepare
from flant5_imdb.data.reader import (
    TEXT_FORMATS,
    BadRow,
    DataError,
    check_text_file,
    check_texts,
    read_texts,
    text_problem,
    texts_to_predict,
)
from flant5_imdb.data.source import SPLITS, Columns, Source, looks_like_path, parse_source

__all__ = [
    "IMDB", "PROMPTS", "SPLITS", "TEXT_FORMATS", "BadRow", "Collator", "Columns", "DataError", "DataSpec",
    "LabelSpace", "Labelled", "Prepared", "Source", "check_splits", "check_text_file", "check_texts",
    "class_counts", "column", "hold_out", "infer_labels", "load_labelled", "looks_like_path",
    "parse_label_names", "parse_source", "prepare", "prompt_template", "read_texts", "subset", "target_ids",
    "text_problem", "texts_to_predict", "tokenize", "verbalize", "write_skipped",
]  # fmt: skip
