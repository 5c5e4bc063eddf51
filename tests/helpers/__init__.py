"""Small helpers shared by the tests."""


def load_splits(source: str, **kw):
    """(validated splits, rows skipped) of a `--data` source, as a run reads them."""
    from flant5_imdb.data import load_labelled

    loaded = load_labelled(source, **kw)
    return loaded.splits, loaded.skipped
