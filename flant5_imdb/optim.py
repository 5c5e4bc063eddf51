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


def on_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips a non-finite update on the device (the fused AdamW kernel reads
    `found_inf`); the others are skipped from the host."""
    return isinstance(optimizer, torch.optim.AdamW) and bool(optimizer.defaults.get("fused"))


class UpdateInBackward:
    """The optimizer's update applied to each parameter from its post-accumulate-grad hook, the moment its
    gradient is complete, and the gradient freed at once: the model's gradients are never all held
    together (torchtune's "optimizer in backward"). The optimizer is the one `build_optimizer` made, used
    one parameter at a time: its state, state dict and schedule are those of the standard step, so a
    checkpoint is the same either way.

    The math is the standard step's where it can be: one process, one micro-batch per step (with more,
    the update would run before the window's gradient is summed) and no clipping by the global norm (it
    needs every gradient first); `TrainConfig` and `train.setup` refuse the rest. A non-finite value
    skips the update as the standard step does, per parameter: a non-finite loss skips every parameter's
    (the whole step, as there); a gradient non-finite in some parameters only skips theirs, where the
    standard step would skip all (the others are already updated when it shows). The fused AdamW skips
    on the device; the others read the flag on the host, once per parameter (bitsandbytes' own step
    synchronises once per parameter already).
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        # Indices, not group dicts: loading a state dict (a resume) replaces the groups.
        self.index = {
            p: (g, i) for g, group in enumerate(optimizer.param_groups) for i, p in enumerate(group["params"])
        }
        self.on_device = on_device_skip(optimizer)
        self.loss_bad: torch.Tensor | None = None
        self.norms: list[torch.Tensor] = []
        self.handles = [p.register_post_accumulate_grad_hook(self.update) for p in self.index]

    def begin(self, loss: torch.Tensor) -> None:
        """Before the step's backward: its loss, whose non-finite value skips every parameter's update."""
        self.loss_bad, self.norms = ~torch.isfinite(loss.detach()), []

    def grad_norm(self) -> torch.Tensor:
        """After the backward: the global gradient norm (for the log and the count of non-finite steps)."""
        return torch.linalg.vector_norm(torch.stack(self.norms), 2.0)

    @torch.no_grad()
    def update(self, p: torch.Tensor) -> None:
        g, i = self.index[p]
        norm = torch.linalg.vector_norm(p.grad, 2.0)
        self.norms.append(norm)
        bad = self.loss_bad | ~torch.isfinite(norm)
        if self.on_device:
            self._torch_step(p, g, bad.float())
        elif not bad.item():
            if hasattr(self.optimizer, "update_step"):
                self._bitsandbytes_step(p, g, i)
            else:
                self._torch_step(p, g, None)
        p.grad = None

    def _torch_step(self, p, g: int, found_inf) -> None:
        """torch's step on this parameter alone: its group, seen with this one parameter in it."""
        opt, groups = self.optimizer, self.optimizer.param_groups
        opt.param_groups = [{**groups[g], "params": [p]}]
        if found_inf is not None:
            opt.found_inf = found_inf
        try:
            opt.step()
        finally:
            opt.param_groups = groups

    def _bitsandbytes_step(self, p, g: int, i: int) -> None:
        """bitsandbytes' step body for one parameter: its per-parameter settings (32-bit embedding states)
        are looked up by (group, index), which a one-parameter view would change."""
        opt = self.optimizer
        if not opt.initialized:
            opt.check_overrides()
            opt.to_gpu()
            opt.initialized = True
        group = opt.param_groups[g]
        if not opt.state[p]:
            opt.init_state(group, p, g, i)
        opt.prefetch_state(p)
        opt.update_step(group, p, g, i)
        if getattr(opt, "is_paged", False) and p.device.type == "cuda":
            torch.cuda.synchronize(p.device)  # paged states move asynchronously: bitsandbytes waits here too

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
