import math

import pytest
import torch
from evaluation_fixtures import ALL_TASKS, OraclePredictor, make_sample

from stablemtl.evaluation import evaluate
from stablemtl.evaluation.trivial import ConstantPredictor


def test_majority_class_counts_only_valid_semantic_pixels():
    label = torch.tensor([[[3, 3, 5, 255]]])
    valid = torch.tensor([[True, False, True, True]])
    other = {"labels": {"depth": torch.ones(1, 1, 4)}, "valid": {"depth": torch.ones(1, 4, dtype=torch.bool)}}
    samples = [
        {"labels": {"semantic": label}, "valid": {"semantic": valid}},
        other,
        {"labels": {"semantic": torch.tensor([[[5, 5, 5, 1]]])}, "valid": {"semantic": valid}},
    ]
    # valid ids: 3, 5 (first; 255 ignored) and 5, 5, 1 (second; position 1 invalid) -> 5 wins 3 to 1
    fitted = ConstantPredictor.from_samples(iter(samples))
    assert fitted.constants["semantic"].tolist() == [5] and set(fitted.constants) == {"semantic", "depth"}
    assert not hasattr(fitted, "tasks")  # it predicts any task asked for
    out = fitted.predict(torch.rand(1, 3, 2, 2), None, ["semantic", "albedo"])
    assert out["semantic"].unique().tolist() == [5] and out["albedo"].unique().tolist() == [0.5]
    only = ConstantPredictor.from_samples(samples, tasks=["semantic"])
    assert only.tasks == ["semantic"] and list(only.constants) == ["semantic"]


def test_constant_predictions_have_the_prediction_formats():
    out = ConstantPredictor({"semantic": [2]}).predict(torch.rand(2, 3, 5, 7), None, list(ALL_TASKS))
    assert out["semantic"].dtype == torch.long and out["semantic"].unique().tolist() == [2]
    assert out["normal"].shape == (2, 3, 5, 7) and torch.allclose(
        out["normal"].norm(dim=1), torch.ones(2, 5, 7)
    )
    assert out["optical_flow"].shape == (2, 2, 5, 7) and out["optical_flow"].abs().sum() == 0
    assert out["depth"].shape == (2, 1, 5, 7)
    with pytest.raises(ValueError, match="2 value\\(s\\) for 1 prediction channel"):
        ConstantPredictor({"depth": [0.1, 0.2]})
    with pytest.raises(ValueError, match="unknown"):
        ConstantPredictor(tasks=["depht"])


def test_oracle_beats_constant_on_every_primary_metric():
    samples = [make_sample(seed) for seed in range(3)]
    oracle = evaluate(OraclePredictor(samples), samples, progress=False)
    constant = evaluate(ConstantPredictor.from_samples(samples), samples, progress=False)
    for task in ALL_TASKS:
        entry_o, entry_c = oracle["tasks"][task], constant["tasks"][task]
        metric = entry_o["primary_metric"]
        good, bad = entry_o["metrics"][metric], entry_c["metrics"][metric]
        assert math.isfinite(bad), (task, bad)
        higher = entry_o.get("higher_is_better", metric == "miou")
        assert (good > bad) if higher else (good < bad), (task, good, bad)
