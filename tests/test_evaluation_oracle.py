"""The encoding and ceiling rows: a perfect model's score after the task encoding and the VAE round trip."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL

from stablemtl.data.synthetic import render_sample
from stablemtl.evaluation import evaluate_models
from stablemtl.evaluation.oracle import LabelOracle
from stablemtl.models.latent_step import LatentStep
from stablemtl.testing import tiny_vae_config


@pytest.fixture(scope="module")
def street():
    return [render_sample("street", seed=3, size=32, split="test", index=i) for i in range(2)]


def _primary(report: dict) -> dict[str, float]:
    return {t: e["metrics"][e["primary_metric"]] for t, e in report["tasks"].items()}


def test_the_encoding_row_is_near_perfect_and_a_lossy_round_trip_costs(street):
    torch.manual_seed(0)
    tiny = LatentStep(AutoencoderKL(**tiny_vae_config()).eval())
    models = {
        "encoding": LabelOracle(),
        "identity": LabelOracle(round_trip=lambda x: x),
        "blurred": LabelOracle(round_trip=lambda x: torch.nn.functional.avg_pool2d(x, 3, 1, 1)),
        "untrained VAE": LabelOracle(round_trip=tiny.round_trip),
    }
    reports = evaluate_models(models, street, progress=False).reports
    encoding = _primary(reports["encoding"])
    assert set(encoding) == {"albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"}
    # The palette round trip is exact; normals and depth lose only the 8-bit-free float encoding and the
    # 2/98 % quantile clipping, which costs a little AbsRel.
    assert encoding["semantic"] == pytest.approx(100.0)
    assert encoding["normal"] < 0.5
    assert 0.0 <= encoding["depth"] < 0.1
    assert _primary(reports["identity"]) == pytest.approx(encoding)
    blurred, untrained = _primary(reports["blurred"]), _primary(reports["untrained VAE"])
    assert blurred["semantic"] < 100.0 and blurred["normal"] > encoding["normal"] + 1.0
    assert untrained["semantic"] < blurred["semantic"] and untrained["normal"] > blurred["normal"]


def test_an_oracle_pads_to_the_round_trip_multiple_and_refuses_a_bad_round_trip(street):
    seen = []

    def record(x):
        seen.append(tuple(x.shape[-2:]))
        return x

    cropped = [{**s, "image": s["image"][:, :30, :27]} for s in street]
    for sample in cropped:
        sample["labels"] = {"depth": sample["labels"]["depth"][:, :30, :27]}
        sample["valid"] = {"depth": sample["valid"]["depth"][:30, :27]}
    oracle = LabelOracle(round_trip=record)
    out = oracle.predict_samples(cropped, ["depth"])
    assert seen == [(32, 32)] and out["depth"].shape == (2, 1, 30, 27)
    with pytest.raises(ValueError, match="round_trip returned shape"):
        LabelOracle(round_trip=lambda x: x[..., :8, :8]).predict_samples(street, ["depth"])
    with pytest.raises(ValueError, match="predict_samples"):
        oracle.predict(street[0]["image"][None], None, ["depth"])
