"""Beyond IMDB: any text and label columns, any number of classes, any FLAN-T5 size."""

import json

import pandas as pd
import pytest
import torch

from flant5_imdb.config import preset
from flant5_imdb.data import load_labelled
from flant5_imdb.modeling import architecture_config
from flant5_imdb.train import run
from tests.conftest import load_script

EXAMPLES = load_script("example_data")  # the README's generator of example data

FOUR = {
    "sports": ["goal", "match", "team", "coach", "league", "score"],
    "science": ["atom", "cell", "theory", "lab", "physics", "gene"],
    "music": ["song", "album", "guitar", "concert", "band", "melody"],
    "food": ["recipe", "bread", "spicy", "dinner", "kitchen", "soup"],
}


def test_four_generated_classes_train_to_high_accuracy(tmp_path):
    """Distinct vocabulary per class, the smoke model, on the CPU: at least 0.95 on the test split."""
    for split, ds in EXAMPLES.make_topics(FOUR, n_train=800, n_test=200).items():
        ds.to_csv(str(tmp_path / f"{split}.csv"), index=False)
    summary = run(
        preset("smoke", data=str(tmp_path), output_dir=str(tmp_path / "out"), epochs=3, save_model=False)
    )
    ev = summary["eval"]
    print(f"\n4 classes: accuracy {ev['accuracy']:.4f}, macro-F1 {ev['macro_f1']:.4f}")
    assert (
        summary["labels"] == ["food", "music", "science", "sports"]
        and summary["targets"] == summary["labels"]
    )
    assert ev["accuracy"] >= 0.95 and len(ev["confusion_matrix"]) == 4 and ev["names"] == summary["labels"]


def test_three_string_labels_with_custom_columns_round_trip(tmp_path):
    """train -> evaluate -> predict on a CSV with `message`/`team` columns: the classes go with the model."""
    from flant5_imdb import Classifier
    from flant5_imdb.data import Columns
    from flant5_imdb.evaluate import evaluate_saved

    for split, ds in EXAMPLES.make_topics(EXAMPLES.TICKETS).items():
        ds.rename_columns({"text": "message", "label": "team"}).to_csv(
            str(tmp_path / f"{split}.csv"), index=False
        )
    out = tmp_path / "out"
    summary = run(
        preset("smoke", data=str(tmp_path), text_column="message", label_column="team", output_dir=str(out))
    )
    settings = json.loads((out / "final" / "flant5_imdb.json").read_text())
    assert (
        settings["labels"]["values"] == ["billing", "bug", "feature"]
        and settings["targets"] == settings["labels"]["names"]
    )
    result = evaluate_saved(str(out / "final"), str(tmp_path), columns=Columns("message", "team"))
    assert result["accuracy"] == summary["eval"]["accuracy"] and result["names"] == [
        "billing",
        "bug",
        "feature",
    ]
    preds = Classifier(str(out / "final")).predict(
        ["I was charged twice, please refund", "the app crashes with an error"]
    )
    assert [p.label_name for p in preds] == ["billing", "bug"]
    assert set(preds[0].probs) == {"billing", "bug", "feature"} and sum(
        preds[0].probs.values()
    ) == pytest.approx(1.0)
    card = (out / "final" / "README.md").read_text()
    assert "`billing` for billing, `bug` for bug and `feature` for feature" in card
    # A support-ticket model's card speaks of text and its own classes, never of sentiment or reviews,
    # and its usage example is a message from its own evaluation data.
    assert "Text classifier (trained on local files `train.csv`, `test.csv`)" in card
    assert "| data | local files `train.csv`, `test.csv` |" in card and "- text-classification" in card
    assert str(tmp_path) not in card  # a path of this machine means nothing to a reader of the card
    assert not any(w in card.lower() for w in ("sentiment", "review", "film", "movie"))
    first_test_message = " ".join(pd.read_csv(tmp_path / "test.csv")["message"][0].split())
    assert f"print(clf.predict([{first_test_message!r}]))" in card
    assert f"On {summary['eval']['n']:,} examples (the `test` split" in card


def test_targets_sharing_a_first_token_are_scored_whole_in_one_pass():
    """Targets of different lengths with a common first token: one decoder pass over B x N rows gives
    each target's summed log-probability, equal to scoring each target on its own."""
    from flant5_imdb.evaluate import whole_target_scores
    from flant5_imdb.modeling import build_model, source_mask

    torch.manual_seed(0)
    model = build_model("x", model_config="tiny", vocab_size=100).eval()
    ids, mask = torch.randint(3, 100, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    targets = [[7, 1], [7, 8, 1], [9, 8, 5, 1]]
    with torch.no_grad():
        m = source_mask(model, mask)
        hidden = model.get_encoder()(input_ids=ids, attention_mask=m).last_hidden_state
        got = whole_target_scores(model, hidden, m, targets)
        for n, t in enumerate(targets):
            tgt = torch.tensor(t).repeat(3, 1)
            logits = model(input_ids=ids, attention_mask=mask, labels=tgt).logits.log_softmax(-1)
            alone = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(-1)
            torch.testing.assert_close(got[:, n], alone, rtol=1e-5, atol=1e-5)


def test_column_and_split_options_name_what_is_there(tmp_path):
    from flant5_imdb.data import Columns, DataError

    (tmp_path / "train.csv").write_text("message,team\nhello,a\nbye,b\n")
    with pytest.raises(
        DataError,
        match=r"no 'text' or 'label' column \(found: message, team\); name yours with --text-column",
    ):
        load_labelled(str(tmp_path))
    assert load_labelled(str(tmp_path), columns=Columns("message", "team")).classes.values == ("a", "b")
    cfg = preset("smoke", data=str(tmp_path), train_split="dev", output_dir=str(tmp_path / "o"))
    with pytest.raises(DataError, match=r"--train-split 'dev': .* has only train; name one of these$"):
        run(cfg)
    assert not (tmp_path / "o").exists()


SIZES = [("flan-t5-small", 76_961_152), ("flan-t5-base", 247_577_856), ("flan-t5-large", 783_150_080),
         ("flan-t5-xl", 2_849_757_184)]  # fmt: skip


@pytest.mark.parametrize("name, params", SIZES)
def test_every_flan_t5_size_has_the_real_models_parameter_count(name, params):
    from bench.flops import parameters

    assert parameters(architecture_config(name, 32100)) == params


def test_a_twenty_class_confusion_matrix_stays_readable(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from flant5_imdb import plots

    names = [f"class-{i:02d}" for i in range(20)]
    cm = [[(37 if i == j else i % 3) for j in range(20)] for i in range(20)]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "lr": 0.1, "samples_per_s": 5.0}\n')
    (tmp_path / "eval.json").write_text(
        json.dumps({"confusion_matrix": cm, "names": names, "accuracy": 0.9, "macro_f1": 0.9})
    )
    figures = {}
    real = plots._save
    plots._save = lambda fig, path, plt: (
        figures.setdefault(path.name, (fig.get_size_inches(), fig.axes[0])) and real(fig, path, plt)
    )
    try:
        plots.plot_run(tmp_path)
    finally:
        plots._save = real
    size, ax = figures["confusion_matrix.png"]
    assert size[0] >= 10 and len(ax.texts) == 400 and min(t.get_fontsize() for t in ax.texts) >= 6
    assert [t.get_text() for t in ax.get_xticklabels()] == names


def test_the_example_writer_never_overwrites_a_users_file(tmp_path, capsys):
    """Run twice it rewrites its own files (the README's commands may be run again); a train.csv or
    test.csv of other content is left as it was, and named."""
    folder = tmp_path / "tickets"
    assert EXAMPLES.main([str(folder)]) == EXAMPLES.main([str(folder)]) == 0
    written = (folder / "train.csv").read_text()
    assert written.startswith("message,team\n") and len(written.splitlines()) == 601
    (folder / "test.csv").write_text("text,label\nmine,1\n")
    capsys.readouterr()
    assert EXAMPLES.main([str(folder)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder / 'test.csv'} already holds other data; name an empty folder"
    )
    assert (folder / "test.csv").read_text() == "text,label\nmine,1\n" and (
        folder / "train.csv"
    ).read_text() == written


def test_scoring_many_classes_holds_one_slice_of_rows_at_a_time(monkeypatch):
    """B x N (example, class) rows go through the decoder in slices that fit SCORE_BYTES: the same scores
    as one pass, and no pass larger than the budget allows, whatever the number of classes."""
    import flant5_imdb.evaluate as evaluate
    from flant5_imdb.modeling import build_model, source_mask

    torch.manual_seed(0)
    model = build_model("x", model_config="tiny", vocab_size=300).eval()
    ids, mask = torch.randint(3, 300, (5, 11)), torch.ones(5, 11, dtype=torch.long)
    targets = [[7, 10 + n % 97, 20 + n // 97, 1] for n in range(400)]  # 400 classes, all starting with 7
    passes = []
    model.decoder.register_forward_hook(lambda mod, args, kwargs, out: passes.append(out[0].shape[0]),
                                        with_kwargs=True)  # fmt: skip
    with torch.no_grad():
        m = source_mask(model, mask)
        hidden = model.get_encoder()(input_ids=ids, attention_mask=m).last_hidden_state
        whole = evaluate.whole_target_scores(model, hidden, m, targets)
        assert passes == [5 * 400]
        row_bytes = hidden[0].numel() * 8 + 4 * model.config.vocab_size * 12
        monkeypatch.setattr(evaluate, "SCORE_BYTES", 150 * row_bytes)  # 150 rows a pass
        passes.clear()
        sliced = evaluate.whole_target_scores(model, hidden, m, targets)
    assert passes == [150] * 13 + [50]
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
    assert sliced.argmax(-1).tolist() == whole.argmax(-1).tolist()


def test_a_word_tokenizer_keeps_thousands_of_class_names(tmp_path):
    """Every class's word stays in the vocabulary (beyond the usual 2,000 words where they need it): 3,000
    classes train and evaluate, each its own target, and the texts keep their words too."""
    from flant5_imdb.tokenizer import train_word_tokenizer

    names = [f"k{i}" for i in range(3000)]
    texts = [f"ticket about {n} w{i} w{i + 3000}" for i, n in enumerate(names)]  # 6,000 other words
    tok = train_word_tokenizer(texts, targets=names)
    assert len(tok) == 3 + 3000 + 1000  # specials, the classes' words (no others), half the usual for texts
    assert len({tuple(tok(n).input_ids) for n in names}) == 3000  # before: 2,000 words, most classes unknown
    assert tok.unk_token_id not in tok("ticket about").input_ids
    small = train_word_tokenizer([f"w{i}" for i in range(3000)], targets=["negative", "positive"])
    assert len(small) == 2000  # a few classes: the usual size
