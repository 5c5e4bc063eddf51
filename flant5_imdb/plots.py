"""PNG plots of a run: loss and learning rate, throughput, the confusion matrix.

Written at the end of training, and by `python scripts/plot.py RUN_DIR` for any run folder.
"""

from __future__ import annotations

import json
from pathlib import Path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Plot what `run_dir` holds (metrics.jsonl, eval.json); returns the PNGs written.

    Raises:
        FileNotFoundError: `run_dir` has no metrics.jsonl.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a training run's --output-dir?)")
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = {r["step"]: r for r in rows if "loss" in r}  # a resumed run's later lines win
    steps = sorted(train)
    written = [_loss_lr(plt, steps, train, rows, run_dir / "loss_lr.png"),
               _throughput(plt, steps, train, run_dir / "throughput.png")]  # fmt: skip
    eval_file = run_dir / "eval.json"
    if eval_file.is_file():
        written.append(_confusion(plt, json.loads(eval_file.read_text()), run_dir / "confusion_matrix.png"))
    return written


def _loss_lr(plt, steps: list[int], train: dict, rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [train[s]["loss"] for s in steps], color="#2e86c1", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_yscale("log")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [train[s]["lr"] for s in steps], color="#c0392b", ls="--", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    evals = [r for r in rows if "eval_accuracy" in r]
    title = "loss and learning rate"
    if evals:
        title += f" (last eval accuracy {evals[-1]['eval_accuracy']:.4f} at step {evals[-1]['step']})"
    ax.set_title(title)
    ax.legend(handles=ax.get_lines() + lr_ax.get_lines(), loc="upper right", fontsize=8)  # inside the axes
    fig.tight_layout()
    return _save(fig, path, plt)


def _throughput(plt, steps: list[int], train: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, [train[s]["samples_per_s"] for s in steps], color="#27ae60")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("samples/s")
    ax.set_title("training throughput (each point: the steps since the previous log line)")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    return _save(fig, path, plt)


def _confusion(plt, ev: dict, path: Path) -> Path:
    cm, names, title = _drawn_confusions(ev)
    n = len(names)
    # Grows with the classes; numbers shrink with the cells (readable at 20 classes).
    side = max(4.2, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    threshold = max(max(row) for row in cm) / 2
    size = 12 if n <= 4 else max(6, 14 - n // 2)
    for i in range(n):
        for j in range(n):  # white on dark cells, black on light ones
            color = "white" if cm[i][j] > threshold else "black"
            ax.text(j, i, f"{cm[i][j]:,}", ha="center", va="center", color=color, fontsize=size)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f}{title}")
    fig.tight_layout()
    return _save(fig, path, plt)


DRAWN_CLASSES = 30  # a matrix of more classes is unreadable (and slow to draw): the most confused are drawn


def _drawn_confusions(ev: dict) -> tuple[list[list[int]], list[str], str]:
    """(matrix, class names, title suffix): every class up to DRAWN_CLASSES, else the DRAWN_CLASSES classes
    most involved in confusions (then in support), from the nonzero cells."""
    names = ev.get("names", ["negative", "positive"])
    if ev.get("confusion_matrix") is not None and len(names) <= DRAWN_CLASSES:
        return ev["confusion_matrix"], names, ""
    cells = ev.get("confusion_counts") or [  # an eval.json from before the counts: its dense matrix
        [t, p, c] for t, row in enumerate(ev["confusion_matrix"]) for p, c in enumerate(row) if c
    ]
    errors, support = [0] * len(names), [0] * len(names)
    for t, p, count in cells:
        support[t] += count
        if t != p:
            errors[t] += count
            errors[p] += count
    keep = sorted(sorted(range(len(names)), key=lambda i: (-errors[i], -support[i], i))[:DRAWN_CLASSES])
    where = {c: k for k, c in enumerate(keep)}
    matrix = [[0] * len(keep) for _ in keep]
    for t, p, count in cells:
        if t in where and p in where:
            matrix[where[t]][where[p]] += count
    return matrix, [names[i] for i in keep], f"\nthe {len(keep)} of {len(names)} classes most often confused"


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
