"""The byte-budget memo behind the latent and row caches."""

from __future__ import annotations

import logging

import pytest

from stablemtl.utils.memo import ByteBudgetMemo


def test_values_are_kept_until_the_budget_is_spent_and_lookups_are_counted(caplog):
    memo = ByteBudgetMemo(10, "test memo")
    assert memo.get("a") is None and memo.hit_rate == 0.0
    assert memo.put("a", 1, 6) and memo.put("a", 1, 6)  # a key already kept costs nothing more
    with caplog.at_level(logging.INFO, logger="stablemtl.utils.memo"):
        assert not memo.put("b", 2, 5)  # 6 + 5 > 10
        assert not memo.put("c", 3, 5)
    assert memo.put("d", 4, 4)  # 6 + 4 fits
    assert memo.get("a") == 1 and memo.get("b") is None and memo.get("d") == 4
    assert (memo.hits, memo.misses, len(memo), memo.bytes) == (2, 2, 2, 10)
    assert memo.hit_rate == pytest.approx(0.5)
    assert [r.getMessage() for r in caplog.records] == [
        "test memo full (1 entries, 0.0 MB): later ones are computed every time"
    ]  # said once
    assert memo.summary() == "test memo: 50 % of 4 lookups served from memory (2 entries, 0.0 MB)"


def test_the_budget_must_be_positive():
    with pytest.raises(ValueError, match="max_bytes must be > 0"):
        ByteBudgetMemo(0)
