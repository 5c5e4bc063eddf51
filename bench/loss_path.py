"""Our loop's forward and backward against the model's own, in one process: what the Trainer's step does
(`model(..., labels=...).loss.backward()`, the 2D padding mask) beside what ours does (the 4D source
mask, the summed token loss scaled by the batch's target tokens), on the same batch, taken in turns
(A B B A ...), so that the machine's drift falls on both alike.

    python bench/loss_path.py --model-config flan-t5-small --threads 2 --pairs 14

Both paths first compute the loss once and must agree (ours divided by the target tokens is the model's
mean); then each is timed `--pairs` times after a warm-up, and the ratio of the means (the model's own
path over ours: above 1, ours is cheaper) is printed with the median of the paired ratios. A whole-row
comparison (`profile.py --configs hf-trainer,baseline-loop`) adds the optimizer, the data and the
framework around the step; this one isolates the step's own arithmetic and masks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# As in bench/profile.py: this folder must not shadow the standard library's `profile`.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch

from flant5_imdb.accel import training_threads
from flant5_imdb.config import positive_int
from flant5_imdb.modeling import ARCHITECTURES, build_model, source_mask
from flant5_imdb.train import token_loss_sum


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-config", default="flan-t5-small", choices=list(ARCHITECTURES),
                   help="the architecture, random weights (default flan-t5-small)")  # fmt: skip
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads (default 2)")
    p.add_argument("--pairs", type=positive_int, default=14, help="timings of each path (default 14)")
    p.add_argument("--batch", type=positive_int, default=8, help="rows (default 8, the baseline's)")
    p.add_argument("--length", type=positive_int, default=512, help="padded source length (default 512)")
    return p.parse_args(argv)


def batch(args, vocab: int) -> dict[str, torch.Tensor]:
    """Random sources of random lengths, padded to `--length`, and two-token targets (a label and EOS)."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(max(1, args.length // 5), args.length + 1, (args.batch,), generator=g)
    mask = (torch.arange(args.length)[None] < lengths[:, None]).long()
    ids = torch.randint(3, vocab, (args.batch, args.length), generator=g) * mask
    labels = torch.randint(3, vocab, (args.batch, 2), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def main(argv=None) -> dict:
    args = parse(argv)
    torch.manual_seed(0)
    model = build_model("random", model_config=args.model_config, vocab_size=256)
    training_threads(args.threads, sum(p.numel() for p in model.parameters()), torch.device("cpu"))
    data = batch(args, model.config.vocab_size)
    ours_batch = {**data, "attention_mask": source_mask(model, data["attention_mask"])}
    n_tokens = int((data["labels"] != -100).sum())
    model.eval()  # no dropout: the two losses must agree exactly as computed
    with torch.no_grad():
        theirs, ours = model(**data).loss.item(), token_loss_sum(model, ours_batch).item() / n_tokens
    if abs(theirs - ours) > 1e-5 * abs(theirs):
        raise SystemExit(f"the two paths disagree: model's loss {theirs}, ours {ours}")
    model.train()
    paths = {
        "model's own": lambda: model(**data).loss.backward(),
        "ours": lambda: (token_loss_sum(model, ours_batch) / n_tokens).backward(),
    }
    seconds = {name: [] for name in paths}
    for i, name in enumerate(["model's own", "ours", "ours", "model's own"] * (args.pairs // 2 + 2)):
        started = time.perf_counter()
        paths[name]()
        model.zero_grad(set_to_none=True)
        if i >= 4 and len(seconds[name]) < args.pairs:  # the first four: warm-up
            seconds[name].append(time.perf_counter() - started)
    theirs_s, ours_s = seconds["model's own"], seconds["ours"]
    result = dict(
        loss=theirs, model_s=statistics.fmean(theirs_s), ours_s=statistics.fmean(ours_s),
        ratio=statistics.fmean(theirs_s) / statistics.fmean(ours_s),
        paired_median=statistics.median(a / b for a, b in zip(theirs_s, ours_s, strict=True)),
    )  # fmt: skip
    print(f"{args.model_config}, batch {args.batch} x {args.length}, {args.threads} threads, {args.pairs} "
          f"timings each: model's own {result['model_s']:.3f} s, ours {result['ours_s']:.3f} s; model's own "
          f"/ ours {result['ratio']:.3f} (median of pairs {result['paired_median']:.3f})")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
