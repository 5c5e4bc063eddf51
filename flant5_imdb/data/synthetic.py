"""`--data synthetic[:N]`: a small generated sentiment set, so that the offline walkthrough, the smoke
preset and the bench's CPU rows run without any download."""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

_POS = ["great", "excellent", "wonderful", "loved", "superb", "brilliant", "enjoyable", "fantastic", "moving",
        "delightful"]  # fmt: skip
_NEG = ["terrible", "awful", "boring", "hated", "worst", "dull", "poor", "disappointing", "painful", "mess"]
_NEUTRAL = ["the", "movie", "film", "plot", "actor", "actress", "scene", "story", "director", "camera",
            "music", "was", "and", "it", "a", "of", "in", "to", "this", "that", "with", "for", "as", "on",
            "script", "ending", "character", "screen", "cast", "minutes", "watch", "saw", "time",
            "show"]  # fmt: skip


def make_synthetic(n_train: int = 2000, n_test: int = 500, seed: int = 0) -> DatasetDict:
    """Balanced reviews of neutral filler with sentiment words; the majority class gives the label
    (1 = positive). Lengths vary (8 to 120 words) so that length grouping and truncation have work to do.
    """
    rng = random.Random(seed)

    def review(label: int) -> str:
        major, minor = (_POS, _NEG) if label == 1 else (_NEG, _POS)
        words = rng.choices(_NEUTRAL, k=rng.randint(8, 120))
        k_major = rng.randint(2, 4)
        for w in rng.choices(major, k=k_major) + rng.choices(minor, k=rng.randint(0, k_major - 2)):
            words.insert(rng.randrange(len(words) + 1), w)
        return " ".join(words) + "."

    def split(n: int) -> Dataset:
        labels = [i % 2 for i in range(n)]
        rng.shuffle(labels)
        return Dataset.from_dict({"text": [review(y) for y in labels], "label": labels})

    return DatasetDict({"train": split(n_train), "test": split(n_test)})
