import numpy as np
import pytest
import torch

from flant5_imdb.data import Collator
from flant5_imdb.sampler import StepSampler

LENGTHS = np.random.default_rng(0).integers(5, 500, size=103)  # 103: no batch geometry divides it


def sampler(rank=0, world=1, **kw):
    args = dict(
        batch_size=4,
        grad_accum=2,
        num_replicas=world,
        rank=rank,
        seed=7,
        group_by_length=True,
        mega_batch_steps=3,
    )
    return StepSampler(LENGTHS, **{**args, **kw})


def epoch_ids(world, epoch=0, **kw):
    """Every index each rank sees in `epoch`, per step: [step][rank] -> list."""
    per_rank = []
    for r in range(world):
        s = sampler(r, world, **kw)
        s.set_epoch(epoch)
        per_rank.append([[i for mb in step.micro_batches for i in mb] for step in s])
    return [list(x) for x in zip(*per_rank, strict=True)]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("group", [True, False])
def test_each_example_exactly_once_per_epoch(world, group):
    steps = epoch_ids(world, group_by_length=group)
    seen = [i for step in steps for rank in step for i in rank]
    assert sorted(seen) == list(range(len(LENGTHS)))
    assert len(steps) == sampler(0, world).steps_per_epoch == -(-103 // (8 * world))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_gets_grad_accum_micro_batches(world):
    for r in range(world):
        for step in sampler(r, world):
            assert len(step.micro_batches) == 2
            assert all(len(mb) <= 4 for mb in step.micro_batches)


def test_short_last_step_spreads_evenly_and_may_leave_empty_slots():
    # 103 examples, global batch 4 x 2 x 3 = 24: the last step has 7 examples for 6 slots.
    last = [list(sampler(r, 3))[-1] for r in range(3)]
    sizes = sorted(len(mb) for s in last for mb in s.micro_batches)
    assert sizes == [1, 1, 1, 1, 1, 2] and {s.global_examples for s in last} == {7}
    # 2 examples for 16 slots: most slots are empty, none gets more than one.
    tiny = [
        list(StepSampler([3, 4], batch_size=4, grad_accum=2, num_replicas=8, rank=r))[0] for r in range(8)
    ]
    assert sorted(len(mb) for s in tiny for mb in s.micro_batches) == [0] * 14 + [1, 1]


def test_same_seed_same_order_other_epoch_or_seed_other_order():
    assert epoch_ids(2, epoch=1) == epoch_ids(2, epoch=1)
    assert epoch_ids(2, epoch=1) != epoch_ids(2, epoch=2)
    assert epoch_ids(2, epoch=1) != epoch_ids(2, epoch=1, seed=8)


def test_length_grouping_groups_similar_lengths():
    def mean_spread(group):
        s = sampler(group_by_length=group, grad_accum=1, mega_batch_steps=25)
        return np.mean([np.ptp(LENGTHS[mb]) for st in s for mb in st.micro_batches if len(mb) == 4])

    assert mean_spread(True) < 0.25 * mean_spread(False)


def test_micro_batches_of_a_step_are_dealt_round_robin_over_ranks():
    # Sorted within the step, slot j -> rank j % world: at each micro-step both ranks hold neighbours in
    # length.
    s0, s1 = sampler(0, 2, mega_batch_steps=100, seed=1), sampler(1, 2, mega_batch_steps=100, seed=1)
    for a, b in zip(s0, s1, strict=True):
        if a.global_examples == 16:
            assert LENGTHS[a.micro_batches[0]].min() >= LENGTHS[b.micro_batches[0]].max()
            assert LENGTHS[b.micro_batches[0]].min() >= LENGTHS[a.micro_batches[1]].max()


@pytest.mark.parametrize("consumed", [0, 1, 4, 6])
def test_resume_from_state_dict_gives_exactly_the_remaining_steps(consumed):
    full = sampler(1, 2)
    full.set_epoch(3)
    expected = list(full)
    s = sampler(1, 2)
    s.set_epoch(3)
    it = iter(s)
    for _ in range(consumed):
        next(it)
    state = s.state_dict()
    resumed = sampler(1, 2)
    resumed.load_state_dict(state)
    assert len(resumed) == len(expected) - consumed
    assert list(resumed) == expected[consumed:]


def test_state_from_another_geometry_is_refused():
    state = sampler(batch_size=4).state_dict()
    with pytest.raises(ValueError, match="global_batch=8, this run has global_batch=16"):
        sampler(batch_size=8).load_state_dict(state)


def test_bad_geometry():
    with pytest.raises(ValueError, match="bad sampler geometry"):
        StepSampler([1, 2], batch_size=2, num_replicas=2, rank=2)


EXAMPLES = [{"input_ids": [5, 6, 7, 1], "labels": [9, 1]}, {"input_ids": [5, 1], "labels": [8, 3, 1]}]


def test_collator_dynamic_padding_to_multiple():
    b = Collator(pad_to_multiple_of=8)(EXAMPLES)
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 0, 0, 0, 0], [5, 1, 0, 0, 0, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    assert b["labels"].tolist() == [[9, 1, -100], [8, 3, 1]]
    assert b["input_ids"].dtype == torch.long


def test_collator_buckets_max_length_and_masked_filler():
    assert Collator(buckets=(64, 128, 512)).source_length(65) == 128
    with pytest.raises(ValueError, match="longer than the largest bucket 512"):
        Collator(buckets=(64, 512)).source_length(513)
    seed = Collator(max_length=512)(EXAMPLES)
    assert seed["input_ids"].shape == (2, 512) and seed["attention_mask"].sum().item() == 6
    filler = Collator()(EXAMPLES[:1], mask_labels=True)
    assert (filler["labels"] == -100).all()
