"""The kernel path as the training loop sees it: changes to the model, and the compiled step.

`apply_kernels(model, cfg)` swaps the model's norms and encoder attention for the kernels and turns
on activation checkpointing, as `cfg` asks; training and the bench's evaluation both use it.
`StepModel` is the model a training step calls: compiled where `cfg` asks and CUDA is there, the
plain model otherwise. It owns what compiling asks of the loop (the compile itself, the dynamic
source length, CUDA graphs and their gradient buffers), so that the loop reads the same with the
kernel path and without it:

    step_model = StepModel(model, cfg)
    for batch in micro_batches:
        step_model.prepare(batch)
        loss = token_loss_sum(step_model.model, batch)
        ...
    step_model.zero_grad(optimizer)
"""

from __future__ import annotations

import logging

import torch

from flant5_imdb.kernels.attention import use_bias_kernel
from flant5_imdb.kernels.graphs import cudagraph_skips, recorded_cuda_graphs
from flant5_imdb.kernels.norm import fuse_norms
from flant5_imdb.modeling import checkpoint_activations

logger = logging.getLogger(__name__)


def apply_kernels(model: torch.nn.Module, cfg) -> None:
    """Fused norms, the relative-bias attention kernel and activation checkpointing, each where `cfg` asks."""
    if cfg.fused_norm:
        fuse_norms(model)
    if cfg.bias_kernel:
        use_bias_kernel(model, lookup=cfg.bias_lookup)
    if cfg.activation_checkpointing:
        checkpoint_activations(model)


class StepModel:
    """The model a training step calls, compiled where `cfg` asks and CUDA is there (eager elsewhere)."""

    def __init__(self, model: torch.nn.Module, cfg):
        self.model = maybe_compile(model, cfg)
        self.compiled = self.model is not model
        self.graphed = self.compiled and cfg.cuda_graphs  # asked for; `graphs()` says whether it happened
        self._skips_before = cudagraph_skips() if self.graphed else 0
        if self.graphed:
            allocate_grads(model)

    def prepare(self, batch: dict[str, torch.Tensor]) -> None:
        """Before each micro-batch: the length marked dynamic; for graphs, the previous replay's outputs
        released.
        """
        if self.compiled:
            mark_length_dynamic(batch)
        if (
            self.graphed
        ):  # outputs of the previous replay are no longer needed: the graphs may reuse their memory
            torch.compiler.cudagraph_mark_step_begin()

    def zero_grad(self, optimizer) -> None:
        # Graphed: the gradients stay allocated and are zeroed in place (see allocate_grads).
        optimizer.zero_grad(set_to_none=not self.graphed)

    def graphs(self) -> tuple[int | None, int]:
        """(CUDA graphs recorded, graphs inductor declined to record) for this step; call while the model is
        alive.
        """
        if not self.graphed:
            return 0, 0
        recorded, skipped = recorded_cuda_graphs(), cudagraph_skips() - self._skips_before
        if recorded == 0:
            logger.warning(
                "--cuda-graphs: no CUDA graph was recorded (%d skipped); the compiled step ran without "
                "graphs",
                skipped,
            )
        return recorded, skipped


def maybe_compile(model, cfg, backend="inductor", on_cpu: bool = False):
    """torch.compile on CUDA; elsewhere the same flags run eagerly (and say so).

    `backend` and `on_cpu` exist for the CPU tests, which trace the real model without inductor.
    """
    if not cfg.compile:
        return model
    if not (torch.cuda.is_available() or on_cpu):
        logger.info("--compile: no CUDA, running eagerly")
        return model
    # The source length is marked dynamic batch by batch (mark_length_dynamic); other dimensions
    # stay static. CUDA graphs are still recorded per shape (one per bucket).
    mode = "reduce-overhead" if cfg.cuda_graphs else None
    return torch.compile(model, backend=backend, mode=mode if backend == "inductor" else None)


def mark_length_dynamic(batch: dict[str, torch.Tensor]) -> None:
    """One compiled graph for every source length instead of one compilation per length.

    Measured on the tiny T5 (dynamo + AOTAutograd, CPU): a static shape traces in 14 s, each new
    length again; the length alone symbolic, 18 s once; every dimension symbolic (dynamic=True), 55 s.
    `maybe_`: a graph that needs a fixed length recompiles instead of failing.
    """
    torch._dynamo.maybe_mark_dynamic(batch["input_ids"], 1)
    torch._dynamo.maybe_mark_dynamic(
        batch["attention_mask"], batch["attention_mask"].dim() - 1
    )  # 2D or source_mask's 4D


def allocate_grads(model) -> None:
    """Give every parameter a zeroed .grad before the first backward, for CUDA graphs.

    A graphed backward's outputs live in memory the next replay overwrites. When a parameter has
    no .grad, autograd adopts that output as the .grad, and a second micro-batch (gradient
    accumulation) or the next step then overwrites it in place (pytorch/pytorch#169545). With a
    .grad already allocated, autograd adds the output into it instead; the loop then zeroes the
    gradients in place rather than freeing them.
    """
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def length_buckets(multiple: int, max_length: int) -> tuple[int, ...]:
    """multiple, 2 x multiple, ... up to max_length (which is always a bucket)."""
    return tuple(sorted({*range(multiple, max_length, multiple), max_length}))
