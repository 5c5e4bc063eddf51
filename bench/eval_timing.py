"""An `eval` row: evaluation timings (scoring vs generation, eager or on the kernel path) of the bench's
model on the first --eval-samples evaluation examples."""

from __future__ import annotations

import logging

import torch

from bench.clocks import cpu_threads_now, first_line, graphs_compiled, release_memory, sync, time_limit
from bench.rows import Row
from flant5_imdb.config import preset
from flant5_imdb.evaluate import evaluate
from flant5_imdb.kernels.step import apply_kernels
from flant5_imdb.modeling import build_model

logger = logging.getLogger("bench")


def measure_eval(row: Row, args, data, on_row=None) -> list[dict]:
    """Examples/s of each of the eval row's modes on the first --eval-samples evaluation examples,
    bf16 on a GPU.

    Each mode first runs once over the same examples untimed: every batch shape the timed pass will
    meet (the partial last batch too) has then been compiled, so no compilation is timed. The row
    says how many graphs were compiled inside the timed pass all the same (0 expected).
    Each mode is contained like a row: one that fails or runs past --row-limit is recorded as such.
    `on_row(rows)` is called after each mode (the caller saves the results).
    """
    from flant5_imdb.accel import make_accelerator

    acc = make_accelerator("bf16" if torch.cuda.is_available() else "fp32")
    split = next((s for s in data.splits if s != "train"), "train")
    ds = data.splits[split].select(range(min(args.eval_samples, len(data.splits[split]))))
    if args.model:
        model = build_model(args.model)
    else:
        model = build_model("x", model_config=args.model_config, vocab_size=len(data.tokenizer))
    model = model.to(acc.device)
    rows = []
    for mode, batch, kernels in row.eval_modes:
        what = dict(group=row.name, **row.described(), mode=mode, batch_size=batch, kernels=kernels,
                    split=split, examples=len(ds), cpu_threads=cpu_threads_now())  # fmt: skip
        try:
            with time_limit(args.row_limit, f"eval {mode}"):
                if kernels:  # the kernel path's attention and norms: what a `kernels` run evaluates with
                    apply_kernels(model, preset("kernels"))
                kw = dict(targets=data.target_ids, names=data.names, accelerator=acc, mode=mode,
                          batch_size=batch, tokenizer=data.tokenizer)  # fmt: skip
                evaluate(model, ds, **kw)  # warm-up: every shape of the timed pass, compiled where it is
                sync()
                compiled_before = graphs_compiled()
                r = evaluate(model, ds, **kw)
            rows.append(
                {
                    **what,
                    "seconds": r["eval_seconds"],
                    "examples_per_s": r["examples_per_s"],
                    "projected_25k_seconds": 25_000 / r["examples_per_s"],
                    "compiles_in_timed_window": graphs_compiled() - compiled_before,
                }
            )
        except (Exception, SystemExit) as e:
            logger.exception("eval %s failed", mode)
            rows.append({**what, "error": first_line(e)})
        print(rows[-1], flush=True)
        if on_row:
            on_row(rows)
    del model
    release_memory()
    return rows


EVAL_NOTE = "length-sorted batches, each mode timed on its second pass over the same examples"
RANDOM_WEIGHTS_NOTE = (
    " (random weights never emit EOS: generate runs its full max_new_tokens, an upper bound)"
)
