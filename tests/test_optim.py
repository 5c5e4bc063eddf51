"""The optimizers: the update applied in the backward against the standard step, and its refusals."""

import pytest
import torch
from accelerate import Accelerator

from flant5_imdb.config import ConfigError, preset
from flant5_imdb.modeling import build_model
from flant5_imdb.optim import UpdateInBackward, optimizer_from
from flant5_imdb.train import run
from tests.test_train import final_params, final_params_at_init, losses, tiny


@pytest.mark.parametrize("optim, ckpt", [("adamw", False), ("adamw8bit", False), ("adamw8bit", True)])
def test_the_update_in_the_backward_trains_bitwise_like_the_standard_step(
    tmp_path, tokenizer_dir, optim, ckpt
):
    """Six steps, no clipping, the fused AdamW and bitsandbytes' 8-bit AdamW (its embedding states in 32
    bits, the others in 8), and the lean run (8-bit, activation checkpointing: each block's recompute
    in the backward): the same losses and the same parameters, bit for bit."""
    runs = {}
    for lean in (False, True):
        cfg = tiny(tmp_path, tokenizer_dir, name=f"lean-{lean}", optim=optim, max_steps=6, max_grad_norm=None,
                   lr=1e-3, optimizer_in_backward=lean, final_eval=False,
                   activation_checkpointing=ckpt)  # fmt: skip
        run(cfg)
        runs[lean] = losses(cfg.output_dir), final_params(cfg.output_dir)
    (ref_losses, ref), (got_losses, got) = runs[False], runs[True]
    assert got_losses == ref_losses and len(ref_losses) == 6
    assert sorted(got) == sorted(ref) and all(torch.equal(got[n], ref[n]) for n in ref)
    init = final_params_at_init(tokenizer_dir)
    assert max((ref[n] - init[n]).abs().max().item() for n in ref) > 1e-3  # the weights moved


def test_each_gradient_is_freed_before_the_next_one_is_complete():
    """While the backward runs, at most one parameter holds a gradient: the one being updated."""
    model = build_model("x", model_config="tiny", vocab_size=200)
    update = UpdateInBackward(optimizer_from(model, preset("smoke", max_grad_norm=None)))
    held, real = [], update.update

    def counting(p):
        held.append(sum(q.grad is not None for q in model.parameters()))
        real(p)

    update.remove()  # the hooks again, counting first
    update.handles = [p.register_post_accumulate_grad_hook(counting) for p in update.index]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(input_ids=torch.randint(3, 200, (4, 12)), labels=torch.randint(3, 200, (4, 3))).loss
    update.begin(loss)
    loss.backward()
    n_params = len(list(model.parameters()))
    assert held == [1] * n_params  # every parameter updated once, each alone with its gradient
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert torch.isfinite(update.grad_norm()) and update.grad_norm() > 0


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(grad_accum=2), "--optimizer-in-backward with --grad-accum 2: each parameter is updated as its "
         "gradient arrives, before a window's micro-batches could be summed; use --grad-accum 1 (a larger "
         "--batch-size for a larger batch)"),
        (dict(max_grad_norm=1.0), "--optimizer-in-backward with --max-grad-norm 1: clipping by the global "
         "norm needs every gradient before the first update; add --max-grad-norm none"),
        (dict(compile=True), "--optimizer-in-backward with --compile: the compiled backward hands over every "
         "gradient at once, so nothing would be saved; drop one of the two"),
    ],
)  # fmt: skip
def test_what_the_update_in_the_backward_cannot_do_is_refused_by_name(change, message):
    with pytest.raises(ConfigError) as e:
        preset("fast", **{"optimizer_in_backward": True, "max_grad_norm": None, **change})
    assert str(e.value) == message


def test_more_than_one_process_is_refused_before_the_data_is_read(tmp_path, tokenizer_dir, monkeypatch):
    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 2))
    cfg = tiny(
        tmp_path,
        tokenizer_dir,
        max_grad_norm=None,
        optimizer_in_backward=True,
        data=str(tmp_path / "absent.csv"),
    )
    with pytest.raises(
        ConfigError, match=r"^--optimizer-in-backward runs on one process, not 2: each parameter "
    ):
        run(cfg)
    assert not (tmp_path / "run").exists()
