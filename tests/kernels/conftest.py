import pytest
import torch
from torch._dynamo.backends.common import aot_autograd


class CountingBackend:
    """A torch.compile backend for the CPU: dynamo and AOTAutograd trace as for inductor, the graphs
    run eagerly, and every graph dynamo hands over is kept (more than one: a graph break or a recompile)."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)


@pytest.fixture
def counting_backend() -> CountingBackend:
    torch._dynamo.reset()  # no graph cached by an earlier test
    return CountingBackend()
