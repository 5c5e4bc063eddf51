import json

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
    assert by_name["throughput"]["batch_size"] == 32
    assert by_name["kernels"]["padding"] == "length-grouped, buckets of 64" and by_name["kernels"]["compiled"] is False
    assert {e["mode"] for e in saved["eval"] if "mode" in e} == {"score", "generate"}
    assert "| seed-trainer | 8 | fp32 |" in (out / "results.md").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
