import json
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import profile
from bench.flops import train_flops
from flant5_imdb.modeling import build_model


@pytest.mark.parametrize("arch", ["tiny", "flan-t5-base"])
def test_flops_formula_matches_torch_flop_counter(arch):
    """bench/flops.py's closed form equals the matmul FLOPs torch counts for a forward + backward."""
    model = build_model("x", model_config=arch, vocab_size=1000, attn_implementation="eager")
    src, tgt = 37, 2
    with FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(3, 900, (1, src)), labels=torch.randint(3, 900, (1, tgt))).loss.backward()
    assert counter.get_total_flops() == train_flops(model.config, src, tgt)


def test_suite_runs_on_cpu_and_reports_every_configuration(tmp_path):
    out = tmp_path / "bench"
    result = profile.main(["--model-config", "tiny", "--data", "synthetic:200", "--tokenizer", "word-level",
                           "--warmup", "1", "--steps", "2", "--eval-samples", "32", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [r["name"] for r in saved["rows"]] == list(profile.CONFIGS) and saved["complete"] is True
    assert saved["device"].startswith("CPU") and saved["versions"]["torch"] == torch.__version__
    seed = saved["rows"][0]
    for r in saved["rows"]:
        assert r["timed_steps"] == 2
        for key in ("ms_per_step", "samples_per_s", "tokens_per_s", "model_tflops", "projected_minutes"):
            assert r[key] > 0, (r["name"], key)
        assert r["ratio_vs_seed_trainer"] == pytest.approx(r["samples_per_s"] / seed["samples_per_s"])
        assert r["projected_minutes"] == pytest.approx(50_000 / r["samples_per_s"] / 60)
        assert r["peak_allocated_gib"] is None  # no GPU here: no memory figure is made up
    by_name = {r["name"]: r for r in saved["rows"]}
    assert by_name["seed-loop"]["padding"] == "to 512" and by_name["bf16-8bit"]["optim"] == "adamw8bit"
    assert by_name["throughput"]["batch_size"] == by_name["kernels-throughput"]["batch_size"] == 16
    assert by_name["kernels"]["padding"] == "length-grouped, buckets of 64" and by_name["kernels"]["compiled"] is False
    assert by_name["kernels"]["cuda_graphs"] is False  # no CUDA here: the flags fell back to eager
    assert by_name["kernels-8bit-ckpt"]["optim"] == "adamw8bit"
    k = by_name["kernels"]
    assert k["warmup_steps"] == 1 and k["warmup_seconds"] > 0
    assert k["projected_minutes_with_warmup"] == pytest.approx((k["warmup_seconds"] + (50_000 - 8) / k["samples_per_s"]) / 60)
    assert [(e["mode"], e["batch_size"], e["kernels"]) for e in saved["eval"] if "mode" in e] == [
        ("score", 64, False), ("generate", 64, False), ("score", 256, True)]
    md = (out / "results.md").read_text()
    assert "| seed-trainer | 8 | fp32 |" in md
    # The targets table: no memory figure on the CPU, so no memory target is judged.
    assert [t["target"].split(" (")[0] for t in saved["targets"]] == [
        "seed-recipe step", "speed-up over seed-trainer", "2 epochs incl. compilation", "throughput", "score evaluation of 25,000 reviews"]
    assert "| seed-recipe step (kernels, batch 8; no attention-probability dropout in the encoder) | ≤ 15 ms |" in md
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_say_met_or_by_how_much_missed():
    rows = [dict(name="kernels", ms_per_step=30.0, ratio_vs_seed_trainer=12.0, projected_minutes_with_warmup=2.5, peak_allocated_gib=4.0),
            dict(name="kernels-8bit-ckpt", peak_allocated_gib=3.3),
            dict(name="kernels-throughput", batch_size=128, samples_per_s=1200.0)]
    result = dict(rows=rows, eval=[dict(mode="score", kernels=True, projected_25k_seconds=9.0)])
    got = {t["target"].split(" (")[0]: (t["met"], t["verdict"]) for t in profile.targets(result)}
    assert got == {
        "seed-recipe step": (False, "no: 2.00x the target"),
        "speed-up over seed-trainer": (True, "yes"),
        "2 epochs incl. compilation": (True, "yes"),
        "peak allocated, AdamW": (True, "yes"),
        "peak allocated, adamw8bit": (False, "no: 1.10x the target"),
        "throughput": (False, "no: 0.80x the target"),
        "score evaluation of 25,000 reviews": (True, "yes"),
    }


def test_step_clock_on_cpu_reads_the_host_clock():
    clock = profile.StepClock()
    clock.mark()
    time.sleep(0.01)
    clock.mark(host_too=True)
    seconds = clock.seconds()
    assert len(clock) == 2 and seconds[0] == 0.0 and 0.01 <= seconds[1] < 1.0
    assert clock.host_mark is not None and clock.host_mark >= clock.marks[1]


def test_a_failing_configuration_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    real = profile.measure_loop

    def failing(name, *a, **kw):
        if name == "kernels":
            raise RuntimeError("compilation failed")
        return real(name, *a, **kw)

    def eval_fails(*a):
        raise RuntimeError("no eval today")

    monkeypatch.setattr(profile, "measure_loop", failing)
    monkeypatch.setattr(profile, "measure_eval", eval_fails)
    out = tmp_path / "bench"
    profile.main(["--configs", "kernels,fast", "--model-config", "tiny", "--data", "synthetic:200", "--tokenizer", "word-level",
                  "--warmup", "1", "--steps", "1", "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][0] == {"name": "kernels", "error": "RuntimeError: compilation failed"}
    assert saved["rows"][1]["name"] == "fast" and saved["rows"][1]["samples_per_s"] > 0 and saved["complete"] is True
    assert saved["eval"] == [{"error": "RuntimeError: no eval today"}] and saved["targets"] == []
    md = (out / "results.md").read_text()
    assert "| kernels | failed: RuntimeError: compilation failed |" in md and "Evaluation timing failed: RuntimeError: no eval today" in md


def test_step_profile_reports_wall_time_and_top_operators(tmp_path):
    from bench import step_profile

    summary = step_profile.main(["--config", "fast", "--model-config", "tiny", "--data", "synthetic:200", "--tokenizer", "word-level",
                                 "--warmup", "2", "--steps", "2", "--batch-size", "4", "--out", str(tmp_path)])
    assert summary["config"] == "fast" and summary["batch_size"] == 4 and summary["steps"] == 2
    assert summary["wall_ms_median"] > 0 and summary["device_busy_ms"] is None  # no GPU here: no device figure
    text = (tmp_path / "step_profile-fast.txt").read_text()
    assert "top operators by self host time:" in text and "aten::mm" in text
