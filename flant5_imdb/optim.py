"""Optimizers and learning-rate schedules.

`adamw` is torch's AdamW, fused where torch has a fused kernel for the device (as the HF Trainer's
default `adamw_torch_fused`); with weight decay 0 it is exactly Adam. `adamw8bit` and
`paged_adamw8bit` are bitsandbytes' 8-bit AdamW, with the embedding and lm_head states kept in 32
bits: 8-bit states are unstable on embeddings (the bitsandbytes authors' own advice).
"""

from __future__ import annotations

import torch
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

NO_DECAY = ("layer_norm", "bias")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """One group without decay (layer norms, biases) and one with, if decay is on."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not weight_decay:
        return [{"params": [p for _, p in params], "weight_decay": 0.0}]
    decay = [p for n, p in params if not any(k in n for k in NO_DECAY)]
    rest = [p for n, p in params if any(k in n for k in NO_DECAY)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def embedding_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The input embedding and the output projection (one tensor when they are tied)."""
    out = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    return list({id(p): p for p in out}.values())


def build_optimizer(
    model: torch.nn.Module,
    name: str,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """`name` is adamw, adamw8bit or paged_adamw8bit (see the module's doc)."""
    groups = param_groups(model, weight_decay)
    kw = dict(lr=lr, betas=betas, eps=eps)
    if name == "adamw":
        device = next(model.parameters()).device
        fused = device.type in ("cuda", "cpu", "xpu", "mps")  # torch has fused AdamW kernels there
        return torch.optim.AdamW(groups, fused=fused, **kw)
    import bitsandbytes as bnb

    # bitsandbytes reads per-parameter overrides from a process-wide manager when the optimizer
    # is built; start it clean so overrides from an earlier optimizer in this process cannot leak.
    manager = bnb.optim.GlobalOptimManager.get_instance()
    manager.initialize()
    manager.override_config(embedding_params(model), "optim_bits", 32)
    cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit}[name]
    return cls(groups, **kw)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int):
    """`linear`: decay to 0 at `total_steps` (the baseline's), or `constant`; both after `warmup_steps`."""
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup_steps)


def optimizer_from(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """`build_optimizer` with a TrainConfig's options."""
    return build_optimizer(
        model,
        cfg.optim,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )
