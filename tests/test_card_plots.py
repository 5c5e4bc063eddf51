import json

from flant5_imdb.card import model_card, publish
from tests.conftest import run_script


def test_run_writes_plots_and_a_card_with_real_numbers(smoke_run):
    out, summary = smoke_run
    for name in ("loss_lr.png", "throughput.png", "confusion_matrix.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, name
    card = (out / "final" / "README.md").read_text()
    saved = json.loads((out / "summary.json").read_text())
    ev = saved["eval"]
    assert f"| accuracy | {ev['accuracy']:.4f} |" in card
    assert f"| macro-F1 | {ev['macro_f1']:.4f} |" in card
    assert f"| steps | {saved['steps']} (" in card and "= 16 |" in card
    assert f"{saved['train_seconds'] / 60:.1f} min ({saved['samples_per_s']:.1f} samples/s)" in card
    assert "`0` for negative and `1` for positive" in card
    assert summary["eval"]["confusion_matrix"] == ev["confusion_matrix"]


def test_model_card_only_writes_locally_and_names_the_repo(smoke_run, tmp_path):
    _, summary = smoke_run
    publish(tmp_path, summary, "someone/flant5-imdb", upload=False)  # offline: nothing is uploaded
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0") and "# someone/flant5-imdb" in card
    assert 'Classifier("someone/flant5-imdb")' in card
    assert model_card(summary) != card


def test_plot_script_on_a_run_dir(smoke_run, tmp_path):
    out, _ = smoke_run
    proc = run_script("plot", out)
    assert proc.returncode == 0 and proc.stdout.split() == [
        str(out / n) for n in ("loss_lr.png", "throughput.png", "confusion_matrix.png")
    ]
    bad = run_script("plot", tmp_path)
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr


def test_the_card_and_summary_say_what_was_trained_on_what(smoke_run):
    """The smoke model: a tiny random-init T5 on generated reviews, and the card claims no more."""
    out, summary = smoke_run
    card = (out / "final" / "README.md").read_text()
    assert summary["model"] == "tiny architecture, random init"
    assert "datasets:" not in card and "IMDB sentiment classifier" not in card
    assert (
        "Sentiment classifier (trained on generated reviews (`synthetic:2000`)), fine-tuned from "
        "**tiny architecture, random init**" in card
    )
    imdb = {
        **summary,
        "model": "google/flan-t5-base",
        "config": {**summary["config"], "data": "stanfordnlp/imdb"},
    }
    card = model_card(imdb)
    assert (
        "datasets:\n- stanfordnlp/imdb" in card
        and "IMDB sentiment classifier, fine-tuned from **google/flan-t5-base**" in card
    )


def test_plots_are_readable(smoke_run):
    """Cell numbers in a colour that contrasts with their cell; throughput per log window, not a mean."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from flant5_imdb import plots

    out, _ = smoke_run
    figures = []
    real_save = plots._save
    plots._save = lambda fig, path, plt_: figures.append((path.name, fig)) or real_save(fig, path, plt_)
    try:
        plots.plot_run(out)
    finally:
        plots._save = real_save
    cm = dict(figures)["confusion_matrix.png"].axes[0]
    colours = {t.get_text(): t.get_color() for t in cm.texts}
    matrix = json.loads((out / "eval.json").read_text())["confusion_matrix"]
    assert (
        colours[f"{matrix[0][0]:,}"] == "white" and colours[f"{matrix[0][1]:,}"] == "black"
    )  # dark diagonal
    throughput = dict(figures)["throughput.png"].axes[0]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert list(throughput.lines[0].get_ydata()) == [r["samples_per_s"] for r in rows if "loss" in r]
    assert throughput.get_ylabel() == "samples/s"
    plt.close("all")


def test_the_cards_plain_transformers_code_runs_and_agrees_with_the_classifier(smoke_run, capsys):
    """Someone who finds the model on the Hub can use it from the card alone: its transformers-only block
    (tokenizer, AutoModelForSeq2SeqLM, the prompt, generate, the class texts) runs as written on the saved
    model and names the class the package's Classifier gives. No pipeline tag names a pipeline that
    transformers 5 does not serve."""
    import re

    from flant5_imdb import Classifier

    out, summary = smoke_run
    final = out / "final"
    card = model_card(summary, repo=str(final))
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 2 and "AutoModelForSeq2SeqLM" in blocks[1] and "Classifier" in blocks[0]
    exec(compile(blocks[1], "model card", "exec"), {})
    printed = capsys.readouterr().out.strip()
    text = re.search(r"texts = \[(.*)\]", blocks[1]).group(1)
    expected = Classifier(str(final)).predict(eval(text)).label_name
    assert printed == repr([expected])
    front = card.split("---")[1]
    assert "pipeline_tag" not in front and "text-classification" not in front.split("tags:")[0]
    assert 'so we will NOT tie them": that is right' in card
