import json

from flant5_imdb.card import model_card, publish


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
    import subprocess
    import sys

    from tests.conftest import ROOT

    out, _ = smoke_run
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.split() == [
        str(out / n) for n in ("loss_lr.png", "throughput.png", "confusion_matrix.png")
    ]
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plot.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "no metrics.jsonl" in bad.stderr
