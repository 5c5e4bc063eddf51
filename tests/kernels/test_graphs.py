"""Whether CUDA graphs ran is read from inductor's graph tree, not from the flag that asked for them."""

import types

import torch

from flant5_imdb.kernels import graphs
from tests.conftest import off_cuda


def node(*children):
    kids = {}
    for i, c in enumerate(children):
        kids.setdefault(f"fn{i % 2}", []).append(c)
    return types.SimpleNamespace(children=kids)


def test_recorded_graphs_count_every_node_of_the_tree(monkeypatch):
    from torch._inductor import cudagraph_trees

    # Two roots (a forward per bucket), one with a backward child that has a child of its own.
    tree = types.SimpleNamespace(roots={"fwd": [node(node(node())), node()]})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cudagraph_trees, "get_manager", lambda device, create_if_none_exists=True: tree)
    assert graphs.recorded_cuda_graphs() == 4
    monkeypatch.setattr(cudagraph_trees, "get_manager", lambda device, create_if_none_exists=True: None)
    assert graphs.recorded_cuda_graphs() == 0  # compiled, but no graph was ever recorded


def test_an_unreadable_tree_says_unknown_not_false(monkeypatch):
    from torch._inductor import cudagraph_trees

    def broken(device, create_if_none_exists=True):
        raise AttributeError("layout changed")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cudagraph_trees, "get_manager", broken)
    assert graphs.recorded_cuda_graphs() is None


@off_cuda
def test_no_cuda_no_graphs():
    assert graphs.recorded_cuda_graphs() == 0 and graphs.cudagraph_skips() >= 0
