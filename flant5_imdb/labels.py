"""The classes of a run, and the texts the model writes for them.

A `LabelSpace` is taken from the training split's labels, in a stable order:
  * IMDB: every label is one of 0/1/neg/pos/negative/positive (as numbers or text): two classes,
    0 = negative, 1 = positive, whichever spelling a file uses;
  * integers: the distinct values, ascending;
  * names: as given by `--labels a,b,c` (then any other value is an error), or sorted.
It is saved beside the model, so that evaluation and prediction read labels the same way.

A verbalizer gives each class its target text: `auto` (the default: digits for IMDB and integer
labels, the label names otherwise), `digits` (IMDB's "0"/"1", an integer label's own digits, a
named class's index), `words` (IMDB's "negative"/"positive", the label names otherwise), or the
texts themselves, `t1,t2,...`, one per class in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flant5_imdb.reader import DataError

IMDB_SPELLINGS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
VERBALIZERS = ("auto", "digits", "words")


@dataclass(frozen=True)
class LabelSpace:
    """Class i is `values[i]` in the data and `names[i]` in reports."""

    values: tuple[str, ...]
    names: tuple[str, ...]
    kind: str  # "imdb", "int" or "name"

    def __len__(self) -> int:
        return len(self.values)

    def index(self, raw) -> int | None:
        """The class of a raw label (a number or a text), or None if it is none of them."""
        text = label_text(raw)
        if text is None:
            return None
        if self.kind == "imdb":
            return IMDB_SPELLINGS.get(text.strip().lower())
        try:
            return self.values.index(text.strip() if self.kind == "int" else text)
        except ValueError:
            return None

    def describe(self) -> str:
        if self.kind == "imdb":
            return "0/1/neg/pos/negative/positive"
        return ", ".join(self.values)

    def to_dict(self) -> dict:
        return {"values": list(self.values), "names": list(self.names), "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict | None) -> LabelSpace:
        """A saved label space; IMDB's for a model saved without one (an older run, or a Hub model)."""
        if not d:
            return IMDB
        return cls(tuple(d["values"]), tuple(d["names"]), d["kind"])


IMDB = LabelSpace(("0", "1"), ("negative", "positive"), "imdb")


def label_text(raw) -> str | None:
    """A label as the text it is: 1 and 1.0 are "1"; booleans, lists and missing values are no label."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float):
        return str(int(raw)) if raw.is_integer() else None
    if isinstance(raw, str):
        return raw if raw.strip() else None
    return None


def infer_labels(raw_labels: Iterable, explicit: Iterable[str] | None = None) -> LabelSpace:
    """The label space of a training split's raw labels (see the module's doc).

    A split with one class, or none (every label unreadable), gives a space all the same: the rows
    are then judged (and reported) one by one, and a single class is warned about.

    Raises:
        DataError: `explicit` names a class twice, or an empty one.
    """
    if explicit:
        values = tuple(v.strip() for v in explicit)
        if len(set(values)) != len(values) or not all(values):
            raise DataError(f"--labels {','.join(values)}: each class once, none empty")
        return LabelSpace(values, values, "name")
    texts = {t for t in map(label_text, raw_labels) if t is not None}
    if all(t.strip().lower() in IMDB_SPELLINGS for t in texts):  # IMDB's, or none at all
        return IMDB
    if texts and all(_is_int(t) for t in texts):
        values = tuple(str(v) for v in sorted({int(t) for t in texts}))
        space = LabelSpace(values, values, "int")
    else:
        values = tuple(sorted(texts))
        space = LabelSpace(values, values, "name")
    return space


def _is_int(text: str) -> bool:
    t = text.strip()
    return t.lstrip("-").isdigit()


def verbalize(verbalizer: str, space: LabelSpace = IMDB) -> list[str]:
    """The target text of each class (see the module's doc).

    Raises:
        DataError: a list of texts of the wrong length, with an empty or a repeated text.
    """
    if verbalizer in ("auto", "digits"):
        if verbalizer == "auto" and space.kind == "name":
            return list(space.names)
        if space.kind == "name":
            return [str(i) for i in range(len(space))]
        return list(space.values)  # IMDB's "0"/"1"; an integer label's own digits
    if verbalizer == "words":
        return list(space.names)
    texts = [t.strip() for t in verbalizer.split(",")]
    if len(texts) != len(space) or not all(texts) or len(set(texts)) != len(texts):
        raise DataError(
            f"verbalizer {verbalizer!r}: use {', '.join(VERBALIZERS)}, or {len(space)} different texts "
            f"'T1,...,T{len(space)}', one per class ({', '.join(space.names)})"
        )
    return texts
