"""The classes of a run, and the texts the model writes for them (docs/data.md gives the rules to users).

Every label value has one canonical text whichever format it came in (`canonical`): white space
collapsed, NFC, invisible (format) characters removed, a number in any spelling (`01`, `1.0`, `+1`,
another script's digits) its shortest decimal text. A value that is no single label (null, an empty
text, a list) is a bad row, never a class. A `LabelSpace` is taken from the training split's labels:
polarity (every label one of 0/1/neg/pos/negative/positive: 0 = negative, 1 = positive, whichever
spelling a file uses), integers ascending, or names (in `--labels`' order, else sorted). It is saved
beside the model, so that evaluation and prediction read labels as training did.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from flant5_imdb.data.reader import DataError, kind_of

logger = logging.getLogger(__name__)

POLARITY_SPELLINGS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
VERBALIZERS = ("auto", "digits", "words")


@dataclass(frozen=True)
class LabelSpace:
    """Class i is `values[i]` in the data and `names[i]` in reports."""

    values: tuple[str, ...]
    names: tuple[str, ...]
    kind: str  # "polarity", "int" or "name"

    def __len__(self) -> int:
        return len(self.values)

    def index_of(self, text: str | None) -> int | None:
        """The class of a canonical label text (`canonical`), or None."""
        if text is None:
            return None
        if self.kind == "polarity":
            return POLARITY_SPELLINGS.get(text.lower())
        try:
            return self.values.index(text)
        except ValueError:
            return None

    def describe(self) -> str:
        if self.kind == "polarity":
            return "0/1/neg/pos/negative/positive"
        return ", ".join(self.values)

    def to_dict(self) -> dict:
        return {"values": list(self.values), "names": list(self.names), "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict | None) -> LabelSpace:
        """A saved label space; IMDB's for a model saved without one (an older run, or a Hub model)."""
        if not d:
            return IMDB
        # Values saved before labels had one canonical text are read as the data now is; the polarity
        # kind was saved as "imdb" before it had a name of its own.
        kind = "polarity" if d["kind"] == "imdb" else d["kind"]
        return cls(tuple(label_text(v) or v for v in d["values"]), tuple(d["names"]), kind)


# Two classes spelled 0/1/neg/pos/negative/positive: IMDB's, and any data labelled so.
POLARITY = LabelSpace(("0", "1"), ("negative", "positive"), "polarity")
IMDB = POLARITY  # IMDB's classes: where the data is IMDB (a model saved without classes: the baseline's)


_NUMBER = re.compile(r"[+-]?\d+(?:\.\d*)?|[+-]?\.\d+")  # \d: a decimal digit of any script


def canonical(raw) -> tuple[str | None, str | None]:
    """(a label value's canonical text, None) where it is a label (see the module's doc); (None, why)
    where it is none: a bad row, never a class."""
    if raw is None:
        return None, "no label (null or missing)"
    if isinstance(raw, bool):
        return ("true" if raw else "false"), None
    if isinstance(raw, int):
        return str(raw), None
    if isinstance(raw, float):
        return (_number_text(raw), None) if math.isfinite(raw) else (None, f"no label ({raw})")
    if not isinstance(raw, str):
        return None, f"the label is {kind_of(raw)}, not a single value"
    text = _clean(raw)
    if not text:
        return None, "empty label"
    if not _NUMBER.fullmatch(text):
        return text, None
    ascii_digits = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)
    number = Decimal(ascii_digits)  # exact: a long integer label keeps every digit
    if number == number.to_integral_value():
        return str(int(number)), None
    return format(number.normalize(), "f"), None


def label_text(raw) -> str | None:
    """A label value's canonical text; None where it is no label (`canonical` says why)."""
    return canonical(raw)[0]


def _clean(text: str) -> str:
    """NFC, without invisible (format) characters, each run of white space one space, stripped."""
    text = unicodedata.normalize("NFC", text)
    return " ".join("".join(c for c in text if unicodedata.category(c) != "Cf").split())


def _number_text(value: float) -> str:
    """An integral number as its integer's digits ("1", "-3"); any other as its shortest decimal ("0.5")."""
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)).normalize(), "f")


def parse_label_names(text: str) -> list[str]:
    """`--labels a,b,c` as names; a comma inside a name is written `\\,` (`--labels 'x\\, y,z'`)."""
    return [part.replace("\\,", ",") for part in re.split(r"(?<!\\),", text)]


def infer_labels(raw_labels: Iterable, explicit: Iterable[str] | None = None) -> LabelSpace:
    """The label space of a training split's raw labels (see the module's doc).

    A split with one class, or none (every label unreadable), gives a space all the same: the rows
    are then judged (and reported) one by one, and a single class is warned about. Classes whose
    names differ only by case, and integers mixed with words, are warned about by name.

    Raises:
        DataError: `explicit` names a class twice (after canonicalisation), or an empty one.
    """
    if explicit:
        given = list(explicit)
        values = tuple(label_text(v) or "" for v in given)
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated or not all(values):
            what = f"{', '.join(map(repr, repeated))} more than once" if repeated else "an empty class"
            raise DataError(
                f"--labels {','.join(given)}: {what}; name each class once (a comma inside a name is "
                "written \\,)"
            )
        return LabelSpace(values, values, "name")
    texts = {t for t in map(label_text, raw_labels) if t is not None}
    if all(t.lower() in POLARITY_SPELLINGS for t in texts):  # polarity's spellings, or none at all
        return POLARITY
    ints = sorted((t for t in texts if _is_int(t)), key=int)
    if texts and len(ints) == len(texts):
        values = tuple(ints)
        space = LabelSpace(values, values, "int")
    else:
        values = tuple(sorted(texts))
        space = LabelSpace(values, values, "name")
        if ints:
            _warn_mixed(ints, sorted(t for t in texts if not _is_int(t)))
    _warn_case_twins(space.values)
    return space


def _warn_case_twins(values: Iterable[str]) -> None:
    """Classes that differ only by case (`Spam`, `spam`) are two classes: say so, by name."""
    groups: dict[str, list[str]] = {}
    for v in values:
        groups.setdefault(v.casefold(), []).append(v)
    for twins in (g for g in groups.values() if len(g) > 1):
        logger.warning(
            "labels %s differ only by case: they are %d different classes; if they are one, write them "
            "alike (or name the classes with --labels to make any other spelling an error)",
            " and ".join(repr(t) for t in twins),
            len(twins),
        )


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", text) is not None


def is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _warn_mixed(ints: list[str], others: list[str]) -> None:
    """Integer labels beside words, or beside numbers that are not whole (0.5 beside 0 and 1): each is a
    class of its own, named as written; said by what the others are."""
    numbers = [t for t in others if is_number(t)]
    words = [t for t in others if t not in numbers]
    kinds = ([f"words ({', '.join(words[:5])})"] if words else []) + (
        [f"numbers that are not whole ({', '.join(numbers[:5])})"] if numbers else []
    )
    advice = ["if the integers are codes for the words, write every label one way"] * bool(words) + [
        "if the numbers are scores rather than classes, turn them into classes first"
    ] * bool(numbers)
    logger.warning(
        "the labels mix integers (%s) and %s: one class each, named as written; %s",
        ", ".join(ints[:5]), " and ".join(kinds), "; ".join(advice),
    )  # fmt: skip


def verbalize(verbalizer: str, space: LabelSpace) -> list[str]:
    """The target text of each class: `auto` (digits for polarity and integer labels, the names otherwise),
    `digits` (polarity's "0"/"1", an integer's own digits, a named class's index), `words` (polarity's
    "negative"/"positive", the names otherwise), or the texts `t1,t2,...`, one per class in order
    (a `DataError` where they are not as many as the classes, all different and none empty)."""
    if verbalizer == "words" or (verbalizer == "auto" and space.kind == "name"):
        return list(space.names)
    if verbalizer in ("auto", "digits"):  # polarity's "0"/"1", an integer label's own digits, else indices
        return list(space.values) if space.kind != "name" else [str(i) for i in range(len(space))]
    texts = [t.strip() for t in verbalizer.split(",")]
    if len(texts) != len(space) or not all(texts) or len(set(texts)) != len(texts):
        raise DataError(
            f"verbalizer {verbalizer!r}: use {', '.join(VERBALIZERS)}, or {len(space)} different texts "
            f"'T1,...,T{len(space)}', one per class ({', '.join(space.names)})"
        )
    return texts


def vocabulary_targets(targets: list[str], space: LabelSpace) -> list[str]:
    """The texts a vocabulary built for these classes must hold: the run's `targets`, and for polarity
    both built-in spellings ("0"/"1" and "negative"/"positive"), between which evaluation may switch."""
    more = verbalize("digits", space) + verbalize("words", space) if space.kind == "polarity" else []
    return list(dict.fromkeys(targets + more))
