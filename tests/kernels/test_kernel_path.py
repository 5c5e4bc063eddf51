"""The kernel path (--bucket-multiple, --fused-norm, --compile) against the eager loop, same initial weights."""

import json
from pathlib import Path

import pytest
import torch

from flant5_imdb.config import preset
from flant5_imdb.train import length_buckets, run


def per_step_losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def compare(tmp_path, tokenizer_dir, **kw):
    base = dict(tokenizer=str(tokenizer_dir), data="synthetic:400", dropout=0.0, max_steps=50, log_every=1, max_source_length=64,
                final_eval=False, save_model=False, keep_checkpoints=0, **kw)
    eager = run(preset("smoke", output_dir=str(tmp_path / "eager"), **base))
    kernels = run(preset("smoke", output_dir=str(tmp_path / "kernels"), bucket_multiple=32, fused_norm=True, compile=True, **base))
    a, b = per_step_losses(tmp_path / "eager"), per_step_losses(tmp_path / "kernels")
    assert len(a) == len(b) == 50
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    print(f"\nkernel path vs eager over 50 steps: largest relative loss deviation {worst:.2e}")
    return eager, kernels, worst


def test_kernel_path_runs_eagerly_off_cuda_with_the_same_losses(tmp_path, tokenizer_dir):
    """fp32 on the CPU: the flags take their fallbacks, and only the padding differs (buckets 32 and 64).

    The first step (same weights) agrees to float32 rounding; after it, other shapes sum in another
    order and the trajectories drift apart by rounding alone (2.4e-5 relative at most, seen here,
    as the loss falls towards 1e-2). Tolerance: 1e-6 at step 1, 1e-3 over the 50 steps.
    """
    if torch.cuda.is_available():
        pytest.skip("the CPU fallback is what this checks")
    _, kernels, worst = compare(tmp_path, tokenizer_dir, precision="fp32")
    assert kernels["compiled"] is False
    a, b = per_step_losses(tmp_path / "eager"), per_step_losses(tmp_path / "kernels")
    assert b[0] == pytest.approx(a[0], rel=1e-6)
    assert worst < 1e-3


@pytest.mark.gpu
def test_kernel_path_matches_eager_on_gpu_in_bf16(tmp_path, tokenizer_dir):
    """flan-t5-base architecture, bf16: compiled graphs and fused kernels change rounding, not the math.
    Tolerance: 5e-2 relative per step (bf16 has 8 bits of mantissa, and 50 steps compound it)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _, kernels, worst = compare(tmp_path, tokenizer_dir, precision="bf16", model_config="flan-t5-base", batch_size=8, lr=3e-4)
    assert kernels["compiled"] is True
    assert worst < 5e-2


def test_length_buckets():
    assert length_buckets(64, 512) == (64, 128, 192, 256, 320, 384, 448, 512)
    assert length_buckets(64, 100) == (64, 100)
