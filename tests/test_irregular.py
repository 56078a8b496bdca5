"""The irregular batch format: padding, masks, union-of-times gathering, collation."""

import pytest
import torch

from hybrid_node.irregular import (
    IrregularBatch,
    collate,
    from_sequences,
    gather_union,
    select,
    subsample_grid,
    union_grid,
)


def _two_series():
    t1 = torch.tensor([0.1, 0.5, 0.7])
    t2 = torch.tensor([0.2, 0.5])
    v1 = torch.arange(6.0).reshape(3, 2)
    v2 = -torch.arange(4.0).reshape(2, 2) - 1
    return from_sequences([t1, t2], [v1, v2])


def test_from_sequences_pads_with_last_time_and_zero_mask():
    b = _two_series()
    assert b.times.shape == (2, 3) and b.values.shape == (2, 3, 2)
    assert torch.equal(b.times[1], torch.tensor([0.2, 0.5, 0.5]))
    assert torch.equal(b.mask[1, 2], torch.zeros(2)) and torch.equal(b.mask[0], torch.ones(3, 2))
    assert b.lengths.tolist() == [3, 2]
    # the padded position has gap 0 (time repeats) so time-aware models leave their state alone there
    assert b.gaps()[1, 2] == 0
    assert torch.allclose(b.gaps(t0=0.0)[0], torch.tensor([0.1, 0.4, 0.2]))


def test_union_grid_gathers_each_samples_own_times():
    b = _two_series()
    union, index = union_grid(b, extra_times=torch.tensor([0.0]))
    assert torch.equal(union, torch.tensor([0.0, 0.1, 0.2, 0.5, 0.7]))
    # a fake "solve" whose state is the time itself: gathering must return each sample's times
    ys = union.reshape(-1, 1, 1).expand(-1, 2, 1)
    assert torch.equal(gather_union(ys, index)[..., 0], b.times)


def test_union_index_rejects_missing_times():
    b = _two_series()
    with pytest.raises(ValueError, match="union_grid"):
        b.union_index(torch.tensor([0.1, 0.5]))


def test_collate_and_select_round_trip():
    b = _two_series()
    short = select(b, torch.tensor([1]))
    short = IrregularBatch(short.times[:, :2], short.values[:, :2], short.mask[:, :2])
    both = collate([select(b, torch.tensor([0])), short])
    assert torch.equal(both.times, b.times) and torch.equal(both.mask, b.mask)
    assert torch.equal(both.values * both.mask, b.values * b.mask)


def test_subsample_grid_keeps_distinct_sorted_points_per_sample():
    times = torch.linspace(0, 1, 20)
    values = torch.randn(50, 20, 2)
    b = subsample_grid(times, values, 7, generator=torch.Generator().manual_seed(0))
    assert b.times.shape == (50, 7)
    assert bool((b.times[:, 1:] > b.times[:, :-1]).all())  # sorted and without repeats
    idx = torch.searchsorted(times, b.times)
    assert torch.equal(times[idx], b.times)
    assert torch.equal(values[torch.arange(50)[:, None], idx], b.values)
    assert len({tuple(r.tolist()) for r in idx}) > 40  # grids differ between samples


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"times": torch.zeros(2, 3, 1)}, "times must have shape"),
        ({"values": torch.zeros(2, 4, 2)}, "values must have shape"),
        ({"mask": torch.zeros(2, 3, 1)}, "mask must have"),
        ({"times": torch.tensor([[0.0, 2.0, 1.0], [0.0, 1.0, 2.0]])}, "sorted"),
        # a NaN time compares False both ways, so it used to pass the sorting check unnoticed
        ({"times": torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]])}, "finite"),
        ({"times": torch.tensor([[0.0, 1.0, float("inf")], [0.0, 1.0, 2.0]])}, "finite"),
        # an observed NaN used to turn the loss into NaN silently
        ({"values": torch.full((2, 3, 2), float("nan"))}, "mask 0"),
    ],
)
def test_invalid_batches_raise(kwargs, match):
    base = {"times": torch.zeros(2, 3), "values": torch.zeros(2, 3, 2), "mask": torch.ones(2, 3, 2)}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        IrregularBatch(**base)


def test_subsample_rejects_bad_n():
    with pytest.raises(ValueError, match="between 1"):
        subsample_grid(torch.linspace(0, 1, 5), torch.zeros(2, 5, 1), 6)


def test_from_sequences_times_take_a_common_floating_dtype():
    values = [torch.zeros(2, 1), torch.zeros(2, 1)]
    # an integer first series no longer truncates the float times of the others
    b = from_sequences([torch.tensor([0, 1]), torch.tensor([0.5, 1.5])], values)
    assert b.times.dtype == torch.get_default_dtype()
    assert torch.equal(b.times, torch.tensor([[0.0, 1.0], [0.5, 1.5]]))
    # float64 times after float32 ones keep their precision
    fine = torch.tensor([0.1, 0.3], dtype=torch.float64)
    b = from_sequences([torch.tensor([0.0, 1.0]), fine], values)
    assert b.times.dtype == torch.float64 and torch.equal(b.times[1], fine)
    # integer times only: the default floating dtype
    b = from_sequences([torch.tensor([1, 2]), torch.tensor([3])], [torch.zeros(2, 1), torch.zeros(1, 1)])
    assert b.times.dtype == torch.get_default_dtype() and torch.equal(b.times[1], torch.tensor([3.0, 3.0]))


def test_an_empty_series_adds_no_point_to_the_union_grid():
    times = [torch.tensor([0.5, 1.5]), torch.tensor([]), torch.tensor([0.7])]
    values = [torch.ones(2, 1), torch.ones(0, 1), torch.ones(1, 1)]
    b = from_sequences(times, values)
    assert b.lengths.tolist() == [2, 0, 1] and not b.mask[1].any()
    union, _ = union_grid(b)
    assert torch.equal(union, torch.tensor([0.5, 0.7, 1.5]))  # no never-observed 0.0


def test_gaps_run_from_the_previous_observed_time():
    # A time at which no channel was observed is no observation: inserting one changes no other gap.
    t = torch.tensor([0.5, 1.0, 1.5, 2.5])
    mask = torch.ones(4, 2)
    mask[1] = 0
    mask[2, 0] = 0  # one channel observed: still an observation
    with_gap = from_sequences([t], [torch.randn(4, 2)], [mask])
    without = from_sequences([t[[0, 2, 3]]], [torch.randn(3, 2)], [mask[[0, 2, 3]]])
    for t0 in (None, 0.0):
        torch.testing.assert_close(with_gap.gaps(t0)[:, [0, 2, 3]], without.gaps(t0))
    torch.testing.assert_close(with_gap.gaps(0.0)[0], torch.tensor([0.5, 0.5, 1.0, 1.0]))
    # an unobserved first time does not shift the default start (each sample's first observation)
    mask = torch.ones(3, 1)
    mask[0] = 0
    assert from_sequences([torch.tensor([0.0, 1.0, 3.0])], [torch.zeros(3, 1)], [mask]).gaps().tolist() == [
        [0.0, 0.0, 2.0]
    ]


def test_unobserved_entries_may_hold_nan():
    values = torch.zeros(2, 3, 2)
    values[1, 2, 0] = float("nan")
    mask = torch.ones(2, 3, 2)
    mask[1, 2, 0] = 0.0
    batch = IrregularBatch(torch.zeros(2, 3), values, mask)
    assert torch.equal(batch.observed_values, torch.zeros(2, 3, 2))


def test_from_sequences_rejects_masks_and_times_of_the_wrong_shape():
    t, v = torch.tensor([0.0, 1.0]), torch.zeros(2, 2)
    # a (L_b,) mask when L_b == D used to broadcast along the channels: observed-ness per channel, not time
    with pytest.raises(ValueError, match=r"mask of shape \(2,\) must have the shape of its values \(2, 2\)"):
        from_sequences([t], [v], [torch.tensor([1.0, 0.0])])
    with pytest.raises(ValueError, match=r"series 1: mask of shape \(2, 3\)"):
        from_sequences([t, t], [v, v], [torch.ones(2, 2), torch.ones(2, 3)])
    with pytest.raises(ValueError, match=r"shape \(L_b,\)"):
        from_sequences([t.reshape(2, 1)], [v])
