"""The one way in for data: from `--data` to tokenized splits, a label space and a `Collator`.

    source.py    `--data` parsed once into a `Source` (Hub id, files, a folder, aclImdb/, synthetic)
                 and read into raw splits
    reader.py    every reader: csv / jsonl / json / txt files read as a stream, with a line-level error
                 for every bad record; parquet, Arrow, a Hub dataset, aclImdb/
    labels.py    label values' canonical text, label spaces, verbalizers
    labelled.py  validation (bad rows, label space, warnings about it)
    encode.py    prompt, target ids, tokenization, `Collator`
    cache.py     the checked and the tokenized splits kept on disk (memory-mapped Arrow) for the next run
    pipeline.py  `prepare(spec, ...)`: all of it, for training, evaluation and the bench; the splits
                 chosen (the evaluation split, or one held out of train)
    synthetic.py the generated sentiment set behind `--data synthetic[:N]`

Data flows one way through them: source -> reader -> labelled -> encode, `prepare` calling each.
"""

# Each name is imported from its module when first used: `parse_source` (a missing file, a malformed
# source) answers before torch, datasets or pyarrow are imported, so a script refuses bad options at once.
_HOME = {
    "encode": ("PROMPTS", "Collator", "column", "prompt_template", "subset", "target_ids", "tokenize"),
    "labelled": ("Labelled", "class_counts", "load_labelled", "write_skipped"),
    "labels": ("IMDB", "LabelSpace", "infer_labels", "parse_label_names", "verbalize", "vocabulary_targets"),
    "pipeline": ("DataSpec", "Prepared", "check_splits", "hold_out", "prepare"),
    "reader": ("TEXT_FORMATS", "BadRow", "Columns", "DataError", "check_text_file", "check_texts",
               "text_problem", "texts_to_predict"),
    "source": ("SPLITS", "Source", "looks_like_path", "parse_source"),
}  # fmt: skip
_MODULE = {name: module for module, names in _HOME.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str):
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
