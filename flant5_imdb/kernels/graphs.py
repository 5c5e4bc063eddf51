"""Whether CUDA graphs actually ran: what inductor recorded, not what was asked for.

`torch.compile(mode="reduce-overhead")` records a graph per shape through inductor's CUDA graph
trees, but quietly runs a graph's code without one when it cannot capture it (an input on the
CPU, a mutated input, a graph break: each counted in `counters["inductor"]["cudagraph_skips"]`).
A summary that says `cuda_graphs: true` must mean graphs were recorded, and are therefore
replayed on every later step of that shape.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def cudagraph_skips() -> int:
    """Graphs inductor has declined to capture in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def recorded_cuda_graphs() -> int | None:
    """CUDA graphs recorded in this process's graph tree on the current device (0 without CUDA).

    None when the tree cannot be read (its layout is internal to torch and may change).
    """
    if not torch.cuda.is_available():
        return 0
    try:
        from torch._inductor import cudagraph_trees

        manager = cudagraph_trees.get_manager(torch.cuda.current_device(), create_if_none_exists=False)
        if manager is None or not manager.roots:
            return 0
        stack = [node for nodes in manager.roots.values() for node in nodes]
        count = 0
        while stack:
            node = stack.pop()
            count += 1
            stack += [child for children in node.children.values() for child in children]
        return count
    except Exception:
        logger.warning(
            "could not read inductor's CUDA graph tree; whether graphs ran is unknown", exc_info=True
        )
        return None
