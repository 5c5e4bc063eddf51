"""Optimizers and learning-rate schedules.

`adamw` is torch's AdamW, fused where torch has a fused kernel for the device (as the HF Trainer's
default `adamw_torch_fused`); with weight decay 0 it is exactly Adam. `adamw8bit` and
`paged_adamw8bit` are bitsandbytes' 8-bit AdamW, with the embedding and lm_head states kept in 32
bits: 8-bit states are unstable on embeddings (the bitsandbytes authors' own advice).
"""

from __future__ import annotations

import torch
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from flant5_imdb.config import TrainConfig

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


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    kw = dict(lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if cfg.optim == "adamw":
        device = next(model.parameters()).device
        fused = device.type in ("cuda", "cpu", "xpu", "mps")  # torch has fused AdamW kernels there
        return torch.optim.AdamW(groups, fused=fused, **kw)
    import bitsandbytes as bnb

    # bitsandbytes reads per-parameter overrides from a process-wide manager when the optimizer
    # is built; start it clean so overrides from an earlier optimizer in this process cannot leak.
    manager = bnb.optim.GlobalOptimManager.get_instance()
    manager.initialize()
    manager.override_config(embedding_params(model), "optim_bits", 32)
    cls = {"adamw8bit": bnb.optim.AdamW8bit, "paged_adamw8bit": bnb.optim.PagedAdamW8bit}[cfg.optim]
    return cls(groups, **kw)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear decay to 0 at `total_steps` (the seed's), or constant; both after `warmup_steps`."""
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)
    return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
