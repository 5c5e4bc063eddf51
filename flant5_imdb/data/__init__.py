"""The one way in for data: from `--data` to tokenized splits, a label space and a `Collator`.

Data flows one way: source -> reader -> labelled (with labels) -> encode, `pipeline.prepare` calling
each and `cache` keeping what they made; docs/layout.md says what each module holds.
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
