"""Tokenizers: a pretrained one by name or path, or a word-level one trained on the spot.

The word-level tokenizer exists so that the offline demo (`--preset smoke`) and the tests run
with no download: it follows T5's conventions (pad 0, EOS 1 appended to every sequence, unk 2).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from flant5_imdb.data.source import looks_like_path

TRAIN_HERE = "word-level"  # --tokenizer value that trains a word-level tokenizer on the training texts
SPECIALS = ["<pad>", "</s>", "<unk>"]
FEW_WORDS = 100  # target words fed to the trainer with the texts; beyond, added after it


def load_tokenizer(name_or_path: str, hint: str = ""):
    """`AutoTokenizer.from_pretrained` with a one-line error (ending in `hint`) when it cannot be had."""
    if looks_like_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise ValueError(f"tokenizer {name_or_path}: no such folder")
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"cannot load tokenizer '{name_or_path}' ({type(e).__name__}: {first}){hint}") from e


def train_word_tokenizer(
    texts: Iterable[str], *, targets: Iterable[str], vocab_size: int = 2000
) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer with T5's special ids: the most frequent words of `texts`, and
    every word of `targets` (the classes' texts) whatever its frequency. The vocabulary grows beyond
    `vocab_size` where the targets' words would take more than half of it (thousands of classes): the
    texts keep at least half."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()

    # The verbalizers' words must be ordinary vocabulary (a special token would be stripped when generated
    # text is decoded), every one of them, split as the tokenizer splits.
    def split(text: str) -> list[str]:
        return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text))]

    targets = list(targets)
    words = sorted({w for t in targets for w in split(t)})
    size = max(vocab_size, len(SPECIALS) + len(words) + vocab_size // 2)
    trainer = trainers.WordLevelTrainer(vocab_size=size, special_tokens=SPECIALS)
    if len(words) <= FEW_WORDS:  # fed in often enough to come first in the cut (the ids runs have had since)
        fed = {w for t in targets for w in t.split()}
        tok.train_from_iterator(itertools.chain(texts, [" ".join(sorted(fed))] * 10_000), trainer=trainer)
    else:  # thousands of classes: their words after the texts' most frequent (feeding them is slow)
        tok.train_from_iterator(texts, trainer=trainer)
        vocab, taken = tok.get_vocab(), {*SPECIALS, *words}
        others = [w for w in sorted(vocab, key=vocab.get) if w not in taken]  # by frequency
        kept = [*SPECIALS, *others[: size - len(SPECIALS) - len(words)], *words]
        tok.model = models.WordLevel({w: i for i, w in enumerate(kept)}, unk_token="<unk>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=1_000_000,
    )
