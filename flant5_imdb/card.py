"""The model card of a trained model, and the upload to the Hugging Face Hub.

The card is written into final/README.md after every run that saves a model; `--push-to-hub REPO`
uploads final/ with it (`--model-card-only` writes the card for that repo but uploads nothing).
Every number in it comes from the run's summary (`run_summary`, also written as summary.json).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flant5_imdb.data.labels import IMDB, verbalize

if TYPE_CHECKING:
    from flant5_imdb.train import Job

logger = logging.getLogger(__name__)


def model_card(summary: dict, repo: str | None = None) -> str:
    """The card's markdown: front matter, evaluation, training, cost, use; every figure from `summary`."""
    lines = _front_matter(summary, repo) + _classes(summary) + _evaluation(summary) + _training(summary)
    lines += _cost(summary)
    lines += _use(summary, repo or "path/to/final")
    return "\n".join(lines)


def _use(summary: dict, where: str) -> list[str]:
    """How to use the model: with this package, and with plain transformers (the prompt, `generate` and
    the class texts it writes), so that the card alone is enough."""
    from flant5_imdb.data.encode import prompt_template

    cfg, classes = summary["config"], summary.get("classes") or []
    written = {c["target"]: c["name"] for c in classes}
    return [
        "## Use",
        "",
        "With flant5_imdb installed: the prompt, truncation and classes come with the model.",
        "",
        "```python",
        "from flant5_imdb import Classifier",
        "",
        f'clf = Classifier("{where}")',
        f"print(clf.predict([{_example(summary)!r}]))",
        "```",
        "",
        "With transformers alone: the model writes a class's text (greedy `generate`).",
        "",
        "```python",
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
        f'model = AutoModelForSeq2SeqLM.from_pretrained("{where}")',
        f"prompt = {prompt_template(cfg.get('prompt'))!r}  # the prompt it was trained with",
        f"classes = {written!r}  # what it writes -> the class",
        f"texts = [{_example(summary)!r}]",
        "batch = tokenizer([prompt.format(text=t) for t in texts], padding=True, truncation=True,",
        f'                  max_length={cfg["max_source_length"]}, return_tensors="pt")',
        "out = model.generate(**batch, max_new_tokens=32)",
        "print([classes.get(t, t) for t in tokenizer.batch_decode(out, skip_special_tokens=True)])",
        "```",
        "",
        "Loading it prints transformers' warning that the embedding and `lm_head` \"have different values, "
        "so we will NOT tie them\": that is right. FLAN-T5's output layer is a weight of its own, which "
        "transformers 5's T5 configuration cannot declare; the weights load as saved. transformers 5 has no "
        "pipeline for a text-to-text model (and its `text-classification` pipeline would put an untrained "
        "head on this one), hence `generate` above.",
        "",
    ]


HUB_IMDB = ("stanfordnlp/imdb", "imdb")
SENTIMENT_SOURCES = ("aclimdb", "synthetic")  # kinds of data that hold movie reviews whatever their path


def _example(summary: dict) -> str:
    """A text from the run's own data (the first evaluation text), cut to a line's length."""
    text = " ".join((summary.get("example_text") or "A wonderful, moving film.").split())
    return text if len(text) <= 120 else text[:117].rstrip() + "..."


def data_named(summary: dict) -> str:
    """The data as a reader of the card would know it: a Hub id, or what the local files were."""
    cfg, kind = summary["config"], summary.get("data_kind")
    if kind == "files" and summary.get("data_files"):
        order = ("train", "validation", "test")
        files = sorted(
            summary["data_files"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 3
        )
        return "local files " + ", ".join(f"`{name}`" for _, name in files)
    if kind == "aclimdb":
        return "the original IMDB files (aclImdb/)"
    if kind == "synthetic":
        return f"generated reviews (`{cfg['data']}`)"
    return f"`{cfg['data']}`"


def _front_matter(summary: dict, repo: str | None) -> list[str]:
    cfg = summary["config"]
    base = summary["model"]
    # A local file may hold anything: the card names no dataset, and no task, it cannot vouch for.
    imdb = cfg["data"] in HUB_IMDB
    sentiment = imdb or summary.get("data_kind") in SENTIMENT_SOURCES
    what = (
        "IMDB sentiment classifier"
        if imdb
        else f"{'Sentiment' if sentiment else 'Text'} classifier (trained on {data_named(summary)})"
    )
    return [
        "---",
        "license: apache-2.0",
        "library_name: transformers",
        # No pipeline_tag: transformers 5 serves no pipeline for a text-to-text model, and its
        # text-classification pipeline would load this one with an untrained head. The tag says the task.
        *([f"datasets:\n- {cfg['data']}"] if imdb else []),
        f"tags:\n- {'sentiment-analysis' if sentiment else 'text-classification'}\n- flan-t5\n- flant5_imdb",
        *([f"base_model: {cfg['model']}"] if not cfg.get("model_config") else []),
        "---",
        "",
        f"# {repo or 'flant5_imdb model'}",
        "",
        f"{what}, fine-tuned from **{base}** with flant5_imdb (a hand-written Accelerate loop), as "
        f"text-to-text classification: the model writes {_targets(summary)}.",
        "",
    ]


def _classes(summary: dict) -> list[str]:
    classes = summary.get("classes")
    if not classes:
        return []
    return [
        "## Classes",
        "",
        "| class | the model writes | training examples |",
        "| --- | --- | --- |",
        *[f"| {c['name']} | `{c['target']}` | {c['train_examples']:,} |" for c in classes],
        "",
    ]


def _evaluation(summary: dict) -> list[str]:
    ev = summary.get("eval")
    if not ev:
        return ["## Evaluation", "", "Not evaluated at the end of training.", ""]
    r = ev["report"]
    return [
        "## Evaluation",
        "",
        f"On {ev['n']:,} examples ({_eval_source(summary)}, `{ev['mode']}` mode):",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| accuracy | {ev['accuracy']:.4f} |",
        f"| macro-F1 | {ev['macro_f1']:.4f} |",
        *([f"| eval loss | {ev['eval_loss']:.4f} |"] if ev.get("eval_loss") is not None else []),
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {c} | {r[c]['precision']:.4f} | {r[c]['recall']:.4f} | {r[c]['f1-score']:.4f} | "
            f"{int(r[c]['support'])} |"
            for c in ev.get("names", IMDB.names)
            if c in r
        ],
        "",
        *_confusions(ev),
        "",
    ]


def _confusions(ev: dict) -> list[str]:
    """The confusion matrix inline, or (many classes) the top confusions; classes not in the data."""
    lines = []
    if ev.get("classes_not_in_data"):
        lines += [
            f"Classes not in the evaluation data (not in macro-F1): {', '.join(ev['classes_not_in_data'])}.",
            "",
        ]
    if ev.get("confusion_matrix") is not None:
        return lines + [
            f"Confusion matrix (rows true, columns predicted; {', '.join(ev.get('names', IMDB.names))}): "
            f"`{ev['confusion_matrix']}`."
        ]
    top = ", ".join(
        f"{c['true']} -> {c['predicted']} ({c['count']})" for c in ev.get("top_confusions", [])[:10]
    )
    return lines + [f"Most frequent confusions (true -> predicted): {top or 'none'}."]


def _training(summary: dict) -> list[str]:
    cfg = summary["config"]
    return [
        "## Training",
        "",
        "| hyperparameter | value |",
        "| --- | --- |",
        f"| data | {data_named(summary)} |",
        f"| learning rate | {cfg['lr']} ({cfg['schedule']}, {cfg['warmup_steps']} warm-up steps) |",
        f"| batch | {cfg['batch_size']} per process x {cfg['grad_accum']} accumulation x "
        f"{summary['processes']} processes = {summary['effective_batch']} |",
        f"| steps | {summary['steps']} ({summary['epochs']:.2f} epochs) |",
        f"| optimizer | {cfg['optim']} (betas {cfg['adam_beta1']}, {cfg['adam_beta2']}; eps "
        f"{cfg['adam_eps']}; weight decay {cfg['weight_decay']}) |",
        f"| gradient clipping | {cfg['max_grad_norm']} |",
        f"| precision | {cfg['precision']} |",
        f"| max source length | {cfg['max_source_length']} |",
        f"| prompt | {cfg['prompt'] or 'none'} |",
        f"| seed | {cfg['seed']} |",
        "",
    ]


def _cost(summary: dict) -> list[str]:
    return [
        "## Cost",
        "",
        "| | |",
        "| --- | --- |",
        f"| hardware | {summary['device']} x {summary['processes']} process(es) |",
        f"| training time | {summary['train_seconds'] / 60:.1f} min ({summary['samples_per_s']:.1f} "
        "samples/s) |",
        f"| wall time | {summary['wall_seconds'] / 60:.1f} min |",
        f"| peak GPU memory | {_gib(summary.get('peak_gpu_memory_gib'))} |",
        f"| skipped non-finite updates | {summary.get('skipped_steps', 0)} |",
        "",
    ]


def _targets(summary: dict) -> str:
    """ "`0` for negative and `1` for positive": each class's target text, from the summary."""
    # A summary from before label spaces was IMDB's.
    names = summary.get("labels") or list(IMDB.names)
    targets = summary.get("targets") or verbalize(summary["config"]["verbalizer"], IMDB)
    pairs = [f"`{t}` for {n}" for t, n in zip(targets, names, strict=True)]
    return ", ".join(pairs[:-1]) + " and " + pairs[-1]


def _gib(x) -> str:
    return "no GPU" if x is None else f"{x:.2f} GiB allocated"


def publish(final_dir: Path, summary: dict, repo: str | None, upload: bool) -> None:
    """Write final/README.md; with a repo and `upload`, push final/ to the Hub.

    Raises:
        RuntimeError: the upload failed (offline, no token, no permission); the card stays written.
    """
    (final_dir / "README.md").write_text(model_card(summary, repo))
    if not repo or not upload:
        return
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(
            repo_id=repo, folder_path=str(final_dir), commit_message="flant5_imdb: trained model and card"
        )
    except Exception as e:  # the hub raises many types; all mean the same to the user
        raise RuntimeError(
            f"--push-to-hub {repo}: upload failed ({type(e).__name__}: {str(e)[:200]}); "
            f"the model and card are in {final_dir}"
        ) from e
    logger.info("pushed %s to https://huggingface.co/%s", final_dir, repo)


def _eval_source(summary: dict) -> str:
    source = summary.get("eval_source") or summary["config"].get("eval_split") or "test"
    return f"the `{source}` split" if " " not in source else source


def run_summary(job: Job, result: dict | None, graphs, graph_skips, checksums) -> dict:
    """What a finished run says of itself (summary.json, and the card made from it): the data and its
    classes, the steps, time and memory it took, how it ran, the final evaluation `result`, the options."""
    import torch

    cfg, acc, state = job.cfg, job.accelerator, job.state
    space, targets = job.data.classes, job.data.target_texts
    source = job.data.source
    return dict(
        model=f"{cfg.model_config} architecture, random init" if cfg.model_config else cfg.model,
        labels=list(space.names),
        targets=targets,
        classes=[
            dict(name=n, label=v, target=t, train_examples=c)
            for n, v, t, c in zip(space.names, space.values, targets, job.data.class_counts, strict=True)
        ],
        steps=state.step,
        samples_seen=state.samples_seen,
        epochs=state.samples_seen / len(job.data.train),
        target_tokens_seen=state.target_tokens_seen,
        skipped_steps=state.skipped_steps,
        resumed_from=str(job.resume.path) if job.resume else None,
        train_seconds=job.train_seconds,
        wall_seconds=time.perf_counter() - job.started,
        samples_per_s=(state.samples_seen - job.samples_at_start) / max(job.train_seconds, 1e-9),
        processes=acc.num_processes,
        effective_batch=job.sampler.global_batch,
        distributed_type=str(acc.distributed_type),
        device=str(acc.device),
        precision=cfg.precision,
        compiled=job.step_model.compiled,
        cuda_graphs=None if graphs is None else graphs > 0,
        cuda_graphs_recorded=graphs,
        cuda_graph_skips=graph_skips,
        peak_gpu_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        skipped_rows=len(job.data.skipped),
        last_logged_loss=job.last_loss,
        rank_param_checksums=checksums,
        eval_source=job.data.eval_source,
        data_kind=source.kind,
        data_files={k: v.name for k, v in source.files.items()} if source.kind == "files" else None,
        example_text=job.data.example_text,
        eval=result,
        config=cfg.to_dict(),
    )
