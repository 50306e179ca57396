"""HiTT phase-2 discovery: pseudo labels follow tau, confidence is the max softmax, feature masks are M^f."""

import pytest
import torch
from test_models_hitt import frames, tiny_hitt


@pytest.mark.parametrize("tau", [0.0, 0.06, 0.2, 1.0])
def test_pseudo_label_mask_is_confidence_above_tau(tau):
    model = tiny_hitt({"semantic": {"tau": tau}, "depth": {"tau": tau}})
    images, _ = frames()
    found = model.discover(images)
    for task, item in found.items():
        out_logits = model.eval()(images).logits[task]
        probs = out_logits.softmax(dim=1)
        torch.testing.assert_close(item["confidence"], probs.amax(dim=1))
        assert torch.equal(item["label"], probs.argmax(dim=1))
        assert torch.equal(item["mask"], item["confidence"] > tau)
        assert item["feature"].shape == (2, 16, 4, 6) and item["feature_confidence"].shape == (2, 1, 4, 6)
    if tau == 0.0:
        assert found["depth"]["mask"].all()
    if tau == 1.0:
        assert not found["semantic"]["mask"].any()


def test_released_code_sharpening_raises_confidence():
    images, _ = frames()
    plain = tiny_hitt(["depth"]).discover(images)["depth"]
    sharp = tiny_hitt(["depth"], confidence_sharpening=5.0).discover(images)["depth"]
    assert torch.equal(plain["label"], sharp["label"])  # same argmax
    assert (sharp["confidence"] >= plain["confidence"] - 1e-6).all()
    assert sharp["mask"].sum() >= plain["mask"].sum()
