import json
import time

import pytest
import torch
from accelerate import Accelerator
from transformers import T5ForConditionalGeneration

from flant5_imdb.data import IMDB, Collator, target_ids, tokenize
from flant5_imdb.evaluate import evaluate, format_report, metrics, score_batch
from flant5_imdb.modeling import build_model
from flant5_imdb.tokenizer import load_tokenizer
from tests.helpers import load_splits


@pytest.fixture(scope="module")
def trained(smoke_run):
    out, summary = smoke_run
    model = T5ForConditionalGeneration.from_pretrained(out / "final")
    tok = load_tokenizer(str(out / "final"))
    splits = load_splits("synthetic:2000")[0]
    test = tokenize(splits, tok, target_ids(tok, "digits", IMDB), max_source_length=128)["test"]
    return model, tok, test, summary


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_score_and_generate_agree_on_a_trained_model(trained, tmp_path):
    model, tok, test, summary = trained
    acc = Accelerator(cpu=True)
    targets = target_ids(tok, "digits", IMDB)
    t0 = time.perf_counter()
    scored = evaluate(model, test, targets=targets, accelerator=acc, mode="score", batch_size=64,
                      names=IMDB.names, predictions=tmp_path / "scored.jsonl")  # fmt: skip
    t1 = time.perf_counter()
    generated = evaluate(model, test, targets=targets, accelerator=acc, mode="generate", batch_size=64,
                         names=IMDB.names,
                         tokenizer=tok, predictions=tmp_path / "generated.jsonl")  # fmt: skip
    t2 = time.perf_counter()
    print(
        f"\n{len(test)} reviews: score {t1 - t0:.2f} s, generate {t2 - t1:.2f} s "
        f"({(t2 - t1) / (t1 - t0):.1f}x slower)"
    )
    scored_rows, generated_rows = rows(tmp_path / "scored.jsonl"), rows(tmp_path / "generated.jsonl")
    assert [r["id"] for r in scored_rows] == list(range(len(test)))  # the split's order, every example once
    agree = sum(a["pred"] == b["pred"] for a, b in zip(scored_rows, generated_rows, strict=True))
    assert agree == len(test)
    assert generated["unparseable"] == 0
    # The same evaluation the training run did at its end.
    assert scored["accuracy"] == summary["eval"]["accuracy"]
    assert scored["eval_loss"] == pytest.approx(summary["eval"]["eval_loss"], rel=1e-5)


def test_score_with_shared_first_token_scores_whole_targets(trained, word_tokenizer):
    """Targets 'negative' and 'negative great' share their first token: each whole target is scored."""
    model, tok, test, _ = trained
    targets = target_ids(tok, "negative,negative great", IMDB)
    assert targets[0][0] == targets[1][0]
    rows = test.select(range(8))
    batch = Collator()(
        [{"input_ids": a, "labels": b} for a, b in zip(rows["input_ids"], rows["labels"], strict=True)]
    )
    scores, _, _ = score_batch(model, batch, targets)
    # By hand: log p(target) summed over its tokens, teacher-forced.
    for c, t in enumerate(targets):
        lab = torch.tensor(t).repeat(8, 1)
        logp = torch.log_softmax(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=lab).logits, -1
        )
        expected = logp.gather(-1, lab.unsqueeze(-1)).squeeze(-1).sum(-1)
        torch.testing.assert_close(scores[:, c], expected, rtol=1e-5, atol=1e-5)


def test_generate_counts_unparseable_output_as_wrong(word_tokenizer, synthetic, tmp_path):
    model = build_model("x", model_config="tiny", vocab_size=len(word_tokenizer))  # untrained: emits anything
    test = tokenize(synthetic, word_tokenizer, target_ids(word_tokenizer, "digits", IMDB))["test"].select(
        range(16)
    )
    r = evaluate(
        model,
        test,
        targets=target_ids(word_tokenizer, "digits", IMDB),
        accelerator=Accelerator(cpu=True),
        mode="generate",
        tokenizer=word_tokenizer,
        names=IMDB.names,
        predictions=tmp_path / "p.jsonl",
    )
    predictions = rows(tmp_path / "p.jsonl")
    assert r["unparseable"] == sum(p["pred"] == -1 for p in predictions) > 0
    wrong = sum(p["pred"] != p["label"] for p in predictions)
    assert r["accuracy"] == pytest.approx(1 - wrong / 16)


def test_metrics_values():
    m = metrics([0, 0, 1, 1, 1], [0, 1, 1, 1, -1], IMDB.names)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["unparseable"] == 1
    # class 0: p=1, r=.5, f1=2/3; class 1: p=2/3, r=2/3, f1=2/3
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["report"]["positive"]["recall"] == pytest.approx(2 / 3)
    text = format_report(m)
    assert "accuracy 0.6000, macro-F1 0.6667" in text and "unparseable 1" in text


def test_metrics_from_counts_are_scikit_learns_example_by_example():
    """Counting (true, predicted) pairs as the chunks come gives the metrics of the examples one by one,
    bit for bit (integer weights sum exactly), unparseable predictions and absent classes included."""
    import random

    from sklearn.metrics import accuracy_score, classification_report, f1_score

    rng = random.Random(3)
    names = ("a", "b", "c", "d")
    for n in (1, 7, 500):
        y_true = [rng.choice([0, 1, 2]) for _ in range(n)]  # class d never in the data
        y_pred = [rng.choice([-1, 0, 1, 1, 2, 3]) for _ in range(n)]
        m = metrics(y_true, y_pred, names)
        present = sorted(set(y_true) | {p for p in y_pred if p >= 0})
        report = classification_report(y_true, y_pred, labels=present, output_dict=True, zero_division=0,
                                       target_names=[names[i] for i in present])  # fmt: skip
        assert m["report"] == report and m["accuracy"] == accuracy_score(y_true, y_pred)
        assert m["macro_f1"] == f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        assert m["unparseable"] == y_pred.count(-1) and m["n"] == n
        assert all(type(c["support"]) is int for c in m["report"].values() if isinstance(c, dict))
