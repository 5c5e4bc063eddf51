"""The kernel path (the `kernels` preset's flags) against the eager loop, from the same initial weights."""

import functools
import json
from pathlib import Path

import pytest
import torch

from flant5_imdb.config import PRESETS, preset
from flant5_imdb.kernels import step as step_module
from flant5_imdb.kernels.step import length_buckets
from flant5_imdb.train import run
from tests.conftest import needs_cuda, off_cuda

KERNEL_FLAGS = {k: v for k, v in PRESETS["kernels"].items() if k != "output_dir"}


def per_step_losses(out) -> list[float]:
    return [
        r["loss"]
        for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]


def compare(tmp_path, tokenizer_dir, steps=50, kernel_extra=None, **kw):
    """Eager vs the kernel flags (buckets of 32 here: sources are at most 64 tokens); dropout off, so
    the bias kernel's missing attention dropout is no difference."""
    base = dict(
        tokenizer=str(tokenizer_dir),
        data="synthetic:400",
        dropout=0.0,
        max_steps=steps,
        log_every=1,
        max_source_length=64,
        final_eval=False,
        save_model=False,
        keep_checkpoints=0,
        **kw,
    )
    run(preset("smoke", output_dir=str(tmp_path / "eager"), **base))
    flags = KERNEL_FLAGS | {"bucket_multiple": 32} | (kernel_extra or {})
    kernels = run(preset("smoke", output_dir=str(tmp_path / "kernels"), **flags, **base))
    a, b = per_step_losses(tmp_path / "eager"), per_step_losses(tmp_path / "kernels")
    assert len(a) == len(b) == steps
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
    print(f"\nkernel path vs eager over {steps} steps: largest relative loss deviation {worst:.2e}")
    return a, b, kernels, worst


@off_cuda
def test_kernel_path_runs_eagerly_off_cuda_with_the_same_losses(tmp_path, tokenizer_dir):
    """fp32 on the CPU: every flag takes its fallback (the bias kernel its materialised reference),
    and only the padding differs (buckets 32 and 64).

    The first step (same weights) agrees to float32 rounding; after it, other shapes sum in another
    order and the trajectories drift apart by rounding alone (under 1e-4 relative, seen here, as the
    loss falls towards 1e-2). Tolerance: 1e-6 at step 1, 1e-3 over the 50 steps.
    """
    a, b, kernels, worst = compare(tmp_path, tokenizer_dir, precision="fp32")
    assert kernels["compiled"] is False
    assert b[0] == pytest.approx(a[0], rel=1e-6)
    assert worst < 1e-3


@off_cuda
def test_traced_graphed_loop_matches_eager(tmp_path, tokenizer_dir, monkeypatch, counting_backend):
    """The loop's compiled/graphed branch on the CPU: the model traced by dynamo and AOTAutograd
    (the graphs torch.compile would hand to inductor, run eagerly), one graph for every source
    length, grads allocated up front and zeroed in place, with gradient accumulation (4 x 4) and
    activation checkpointing (the `kernels-8bit-ckpt` bench row's extra flag)."""
    monkeypatch.setattr(
        step_module,
        "maybe_compile",
        functools.partial(step_module.maybe_compile, backend=counting_backend, on_cpu=True),
    )
    allocated, allocate = [], step_module.allocate_grads
    monkeypatch.setattr(
        step_module, "allocate_grads", lambda model: allocated.append(model) or allocate(model)
    )
    a, b, kernels, worst = compare(
        tmp_path,
        tokenizer_dir,
        steps=12,
        kernel_extra=dict(activation_checkpointing=True),
        precision="fp32",
        batch_size=4,
        grad_accum=4,
    )
    assert kernels["compiled"] is True and len(allocated) == 1
    # Graphs were asked for and the loop ran their branch, but nothing recorded one: the summary says so.
    assert kernels["cuda_graphs"] is False and kernels["cuda_graphs_recorded"] == 0
    assert (
        len(counting_backend.graphs) == 1
    )  # no graph break, and one graph for both source lengths (32 and 64)
    assert b[0] == pytest.approx(a[0], rel=1e-5)
    assert worst < 1e-3


def test_allocate_grads_gives_zeroed_grads_that_backward_adds_into():
    model = torch.nn.Linear(3, 2)
    step_module.allocate_grads(model)
    grad = model.weight.grad
    assert torch.equal(grad, torch.zeros(2, 3))
    model(torch.ones(1, 3)).sum().backward()
    assert model.weight.grad is grad and torch.equal(grad, torch.ones(2, 3))  # added in place, not replaced


@needs_cuda
@pytest.mark.gpu
def test_cuda_graphs_with_gradient_accumulation_on_gpu(tmp_path, tokenizer_dir):
    """The graphed backward with 4 micro-batches per step (pytorch/pytorch#169545 corrupts exactly
    this when .grad adopts graph memory): fp32, tiny model, so the tolerance is rounding's, 1e-3."""
    a, b, kernels, worst = compare(
        tmp_path, tokenizer_dir, steps=20, precision="fp32", batch_size=4, grad_accum=4
    )
    assert kernels["compiled"] is True and kernels["cuda_graphs"] is True
    assert worst < 1e-3


@needs_cuda
@pytest.mark.gpu
def test_kernel_path_matches_eager_on_gpu_in_bf16(tmp_path, tokenizer_dir):
    """flan-t5-base architecture, bf16, every kernel flag (compiled, CUDA graphs, flex bias, fused
    norms): compiled graphs and fused kernels change rounding, not the math.

    Step 1 (same weights, same batch) must agree to bf16 rounding: 2e-2 relative. After it the two
    runs take different roundings into every update, and a per-step relative bound would tighten
    as the loss falls; instead the mean over the last 10 steps must agree within 5% of itself plus
    0.02 (one run learning and the other not would differ by far more)."""
    a, b, kernels, _ = compare(
        tmp_path, tokenizer_dir, precision="bf16", model_config="flan-t5-base", batch_size=8, lr=3e-4
    )
    assert kernels["compiled"] is True and kernels["cuda_graphs"] is True
    assert b[0] == pytest.approx(a[0], rel=2e-2)
    eager, fast = sum(a[-10:]) / 10, sum(b[-10:]) / 10
    print(f"mean loss over the last 10 steps: eager {eager:.4f}, kernel path {fast:.4f}")
    assert abs(fast - eager) <= 0.05 * eager + 0.02
    assert eager < 0.5 * a[0]  # both learned: the comparison is not of two stalled runs


@needs_cuda
@pytest.mark.gpu
def test_no_host_sync_inside_the_step_on_gpu(tmp_path, tokenizer_dir):
    """From step 3 to the last, every synchronising CUDA call raises (torch.cuda.set_sync_debug_mode).
    Eager bf16 loop with fused AdamW: the loop's own code (batches, token counts, clipping, the
    non-finite skip, the schedule) must leave the GPU running ahead. Logging is at step 1 only."""
    steps = 30

    def strict_after_warmup(state, step, model):
        torch.cuda.set_sync_debug_mode("error" if 2 <= state.step < steps else "default")

    cfg = preset(
        "smoke",
        tokenizer=str(tokenizer_dir),
        data="synthetic:400",
        max_steps=steps,
        log_every=10_000,
        max_bad_steps=10_000,
        precision="bf16",
        final_eval=False,
        save_model=False,
        keep_checkpoints=0,
        output_dir=str(tmp_path / "nosync"),
    )
    try:
        assert run(cfg, on_step=strict_after_warmup)["steps"] == steps
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_length_buckets():
    assert length_buckets(64, 512) == (64, 128, 192, 256, 320, 384, 448, 512)
    assert length_buckets(64, 100) == (64, 100)
