"""Attention-guided task masking: the ratio, each mode's choice, per-sample vs per-batch, reproducibility."""

import pytest
import torch

from stablemtl.models.task_masking import MASKING_MODES, TaskMasking

PROBS = torch.tensor([0.1, 0.2, 0.6, 0.1])


def masking(mode="attn_prob", ratio=0.4, per_batch=False, seed=0) -> TaskMasking:
    return TaskMasking(
        ratio=ratio, mode=mode, per_batch=per_batch, generator=torch.Generator().manual_seed(seed)
    )


def test_rows_are_selected_with_probability_ratio():
    m = masking(ratio=0.4)
    available = torch.ones(1000, 4, dtype=torch.bool)
    rate = torch.stack([m.select_rows(available) for _ in range(10)]).float().mean()
    assert abs(rate - 0.4) < 0.02  # 10 000 Bernoulli draws: sd 0.005
    assert not masking(ratio=0.0).select_rows(available).any()
    assert masking(ratio=1.0).select_rows(available).all()


def test_rows_seeing_one_task_are_never_masked():
    available = torch.tensor([[True, False, False], [True, True, False]])
    rows = masking(ratio=1.0).select_rows(available)
    assert rows.tolist() == [False, True]


def test_per_batch_selects_all_rows_or_none():
    m = masking(ratio=0.5, per_batch=True)
    for _ in range(20):
        rows = m.select_rows(torch.ones(6, 3, dtype=torch.bool))
        assert rows.all() or not rows.any()


def frequencies(mode: str, draws: int = 4000) -> torch.Tensor:
    m = masking(mode, ratio=1.0)
    probs = PROBS.expand(draws, 4)
    available = torch.ones(draws, 4, dtype=torch.bool)
    drop = m.choose(probs, available, torch.ones(draws, dtype=torch.bool))
    return drop.float()


def test_attn_prob_drops_in_proportion_to_attention():
    drop = frequencies("attn_prob")
    assert torch.equal(drop.sum(dim=1), torch.ones(len(drop)))
    torch.testing.assert_close(drop.mean(dim=0), PROBS, atol=0.03, rtol=0)


def test_random_drops_uniformly():
    drop = frequencies("random")
    assert torch.equal(drop.sum(dim=1), torch.ones(len(drop)))
    torch.testing.assert_close(drop.mean(dim=0), torch.full((4,), 0.25), atol=0.03, rtol=0)


def test_highest_drops_the_most_attended_task():
    drop = frequencies("highest", draws=10)
    assert drop.sum(dim=0).tolist() == [0, 0, 10, 0]


def test_attn_prob_random_k_drops_between_one_and_n_minus_one():
    drop = frequencies("attn_prob_random_k")
    counts = drop.sum(dim=1)
    assert counts.min() == 1 and counts.max() == 3
    # k ~ U{1, 2, 3}: each count about a third of the rows.
    for k in (1, 2, 3):
        assert abs(float((counts == k).float().mean()) - 1 / 3) < 0.04
    # The most attended task is dropped most often.
    assert drop.mean(dim=0).argmax() == 2


@pytest.mark.parametrize("mode", MASKING_MODES)
def test_only_available_tasks_are_dropped_and_one_always_stays(mode):
    m = masking(mode, ratio=1.0)
    available = torch.tensor(
        [[True, True, False, True], [False, True, True, False], [True, True, True, True]] * 50
    )
    probs = torch.rand(available.shape, generator=torch.Generator().manual_seed(1))
    rows = m.select_rows(available)
    drop = m.choose(None if mode == "random" else probs, available, rows)
    assert not (drop & ~available).any()
    assert (available & ~drop).any(dim=1).all()
    assert drop.any(dim=1).all()


def test_per_sample_decisions_differ_per_batch_decisions_agree():
    available = torch.ones(64, 4, dtype=torch.bool)
    rows = torch.ones(64, dtype=torch.bool)
    probs = PROBS.expand(64, 4)
    per_sample = masking("random", ratio=1.0).choose(None, available, rows)
    assert len({tuple(r.tolist()) for r in per_sample}) > 1
    per_batch = masking("attn_prob", ratio=1.0, per_batch=True).choose(probs, available, rows)
    assert len({tuple(r.tolist()) for r in per_batch}) == 1 and per_batch[0].sum() == 1


def test_per_batch_keeps_a_task_for_rows_that_would_lose_all():
    # Row 0 sees only task 1 and task 2; if the batch drops task 1 or 2, row 0 still keeps the other one.
    available = torch.tensor([[False, True, False], [True, True, True]])
    for seed in range(20):
        drop = masking("random", ratio=1.0, per_batch=True, seed=seed).choose(
            None, available, torch.tensor([True, True])
        )
        assert (available & ~drop).any(dim=1).all()


@pytest.mark.parametrize("mode", MASKING_MODES)
def test_same_seed_same_decisions(mode):
    available = torch.ones(32, 5, dtype=torch.bool)
    probs = torch.rand(32, 5, generator=torch.Generator().manual_seed(2))

    def run(seed):
        m = masking(mode, ratio=0.5, seed=seed)
        rows = m.select_rows(available)
        return rows, m.choose(None if mode == "random" else probs, available, rows)

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="ratio"):
        TaskMasking(ratio=1.5)
    with pytest.raises(ValueError, match="top_random_k"):
        TaskMasking(mode="top_random_k")
    with pytest.raises(ValueError, match="probabilities"):
        masking("highest").choose(None, torch.ones(2, 2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
