"""Small helpers shared by the tests."""


def load_splits(source: str, **kw):
    """(validated splits, rows skipped) of a `--data` source, as a run reads them."""
    from flant5_imdb.data import load_labelled

    loaded = load_labelled(source, **kw)
    return loaded.splits, loaded.skipped


def read_texts(path: str | None, stdin: bytes = b"", *, skip_bad_rows: bool = False):
    """(texts, records skipped) of a file of texts to classify, or of `stdin`'s bytes, checked as
    prediction checks them."""
    import io

    from flant5_imdb.data import check_texts, texts_to_predict

    records = list(texts_to_predict(path, stdin=io.BytesIO(stdin)))
    skipped: list = []
    check_texts(records, skip_bad_rows=skip_bad_rows, on_skip=skipped.append)
    return [r for r in records if isinstance(r, str)], skipped
