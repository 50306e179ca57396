import numpy as np
import pytest
import torch
from evaluation_fixtures import ALL_TASKS, ConstantPredictor, OraclePredictor, make_sample
from PIL import Image

from stablemtl.evaluation import evaluate, evaluate_models
from stablemtl.tasks import Task, register_task, unregister_task


def _partially_labelled():
    # Three "sources" labelling different tasks, as in the real mix.
    return [
        make_sample(0, ("depth", "normal", "albedo", "shading"), source="indoor"),
        make_sample(1, ("depth", "normal", "albedo", "shading"), source="indoor"),
        make_sample(2, ("semantic", "depth"), source="street"),
        make_sample(3, ("optical_flow", "scene_flow"), source="flow"),
        make_sample(4, ("optical_flow", "scene_flow", "depth"), source="flow"),
    ]


def test_oracle_scores_perfectly_on_every_task_and_counts_images():
    samples = _partially_labelled()
    report = evaluate(OraclePredictor(samples), samples, batch_size=2, progress=False, name="oracle")
    tasks = report["tasks"]
    assert set(tasks) == set(ALL_TASKS)
    assert {t: tasks[t]["num_images"] for t in tasks} == {
        "depth": 4, "normal": 2, "albedo": 2, "shading": 2, "semantic": 1, "optical_flow": 2, "scene_flow": 2,
    }  # fmt: skip
    assert tasks["depth"]["metrics"]["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    assert tasks["depth"]["metrics"]["delta1"] == 1.0
    assert tasks["normal"]["metrics"]["mean_angular_error"] == pytest.approx(0.0, abs=0.05)
    assert tasks["semantic"]["metrics"]["miou"] == pytest.approx(100.0)
    assert tasks["optical_flow"]["metrics"]["epe"] == pytest.approx(0.0, abs=1e-5)
    assert tasks["scene_flow"]["metrics"]["epe3d"] == pytest.approx(0.0, abs=1e-6)
    for task in ("albedo", "shading"):
        assert tasks[task]["metrics"]["si_rmse"] == pytest.approx(0.0, abs=1e-6)
        assert tasks[task]["metrics"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert tasks["depth"]["primary_metric"] == "abs_rel" and tasks["depth"]["higher_is_better"] is False
    fingerprint = report["data"].pop("fingerprint")  # a hash of the images, in order (bootstrap pairing)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert report["data"] == {"num_samples": 5, "sources": {"indoor": 2, "street": 1, "flow": 2}}
    assert report["config"]["flow_alignment"] == "per_axis_scale"
    assert "torch" in report["versions"] and report["elapsed_seconds"] >= 0


def test_constant_predictor_matches_independent_numpy():
    samples = [make_sample(i, ("depth", "semantic", "optical_flow")) for i in range(3)]
    report = evaluate(ConstantPredictor(), samples, batch_size=2, progress=False)
    # Depth: a constant aligns to the mean of the valid ground truth (scale 0), per image then mean.
    abs_rel = []
    for s in samples:
        g = s["labels"]["depth"][0][s["valid"]["depth"]].double().numpy()
        abs_rel.append(np.mean(np.abs(g.mean() - g) / g))
    assert report["tasks"]["depth"]["metrics"]["abs_rel"] == pytest.approx(np.mean(abs_rel))
    # Semantic: everything predicted as class 0.
    gt = np.concatenate([s["labels"]["semantic"][0][s["valid"]["semantic"]].numpy() for s in samples])
    assert set(np.unique(gt)) == set(range(8))  # every class labelled: the 7 never predicted have IoU 0
    iou0 = np.sum(gt == 0) / gt.size
    assert report["tasks"]["semantic"]["metrics"]["miou"] == pytest.approx(100 * iou0 / 8)
    assert report["tasks"]["semantic"]["metrics"]["pixel_accuracy"] == pytest.approx(100 * iou0)
    # Optical flow: zero flow -> EPE = |gt| pooled over every valid pixel.
    norms = np.concatenate(
        [s["labels"]["optical_flow"].norm(dim=0)[s["valid"]["optical_flow"]].numpy() for s in samples]
    )
    assert report["tasks"]["optical_flow"]["metrics"]["epe"] == pytest.approx(norms.mean(), rel=1e-6)


def test_batches_group_equal_sizes_and_request_only_labelled_tasks():
    samples = [
        make_sample(0, ("depth",)),
        make_sample(1, ("normal",)),
        make_sample(2, ("depth",)),
        make_sample(3, ("depth",), size=(24, 16)),
        make_sample(4, ("semantic",), size=(24, 16)),
        make_sample(5, ("depth",)),
    ]
    oracle = OraclePredictor(samples)
    evaluate(oracle, samples, batch_size=2, progress=False)
    assert oracle.calls == [
        (2, ["depth", "normal"]),
        (1, ["depth"]),
        (2, ["depth", "semantic"]),
        (1, ["depth"]),
    ]
    oracle.calls.clear()
    evaluate(oracle, samples, tasks=["semantic"], batch_size=2, progress=False)
    assert oracle.calls == [(2, ["semantic"])]


def test_batch_size_does_not_change_the_numbers():
    samples = _partially_labelled()
    one = evaluate(ConstantPredictor(), samples, batch_size=1, progress=False)
    many = evaluate(ConstantPredictor(), samples, batch_size=4, progress=False)
    for task, entry in one["tasks"].items():
        np.testing.assert_allclose(
            list(entry["metrics"].values()), list(many["tasks"][task]["metrics"].values()), rtol=1e-9
        )


def test_several_models_in_one_pass_with_visuals_and_supported_tasks():
    samples = _partially_labelled()
    result = evaluate_models(
        {"oracle": OraclePredictor(samples), "depth_only": ConstantPredictor(tasks=["depth"])},
        samples,
        batch_size=2,
        progress=False,
        num_visuals=3,
    )
    assert list(result.reports) == ["oracle", "depth_only"]
    assert set(result.reports["depth_only"]["tasks"]) == {"depth"}
    assert len(result.visuals) == 3
    assert set(result.visuals[0].predictions) == {"oracle", "depth_only"}
    assert set(result.visuals[2].predictions["oracle"]) == {"semantic", "depth"}
    assert result.visuals[2].predictions["oracle"]["depth"].shape == (1, 16, 16)


class _ToyTask(Task):
    name = "toy_brightness"
    prompt = "toy brightness"
    label_channels = 1
    prediction_channels = 1
    output_space = "brightness (B,1,H,W) in [0,1]"
    primary_metric = "mae"
    higher_is_better = False

    def encode(self, label, valid):
        return label.expand(*label.shape[:-3], 3, *label.shape[-2:]) * 2 - 1, valid

    def decode(self, image3):
        return (image3.mean(dim=-3, keepdim=True) + 1) / 2

    def visualize(self, prediction):
        return Image.fromarray((prediction[0].clamp(0, 1).numpy() * 255).astype(np.uint8))

    def metrics(self, prediction, label, valid):
        return {"mae": float((prediction - label)[0][valid].abs().mean())}


def test_other_tasks_fall_back_to_their_own_per_image_metrics():
    register_task(_ToyTask())
    try:
        samples = []
        for i, value in enumerate((0.2, 0.6)):
            s = make_sample(i, ())
            s["labels"]["toy_brightness"] = torch.full((1, 8, 8), value)
            s["valid"]["toy_brightness"] = torch.ones(8, 8, dtype=torch.bool)
            samples.append(s)

        class Half:
            def predict(self, images, next_images, tasks):
                return {"toy_brightness": torch.full((images.shape[0], 1, 4, 4), 0.5)}

        report = evaluate(Half(), samples, progress=False)
        assert report["tasks"]["toy_brightness"]["metrics"]["mae"] == pytest.approx((0.3 + 0.1) / 2)
        assert report["tasks"]["toy_brightness"]["num_images"] == 2
    finally:
        unregister_task("toy_brightness")


def test_bad_inputs_raise_value_errors():
    samples = [make_sample(0, ("depth",))]

    class Forgetful:
        def predict(self, images, next_images, tasks):
            return {}

    with pytest.raises(ValueError, match="no prediction for task 'depth'"):
        evaluate(Forgetful(), samples, progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate(ConstantPredictor(), [], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(ConstantPredictor(), samples, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        evaluate(ConstantPredictor(), samples, tasks=["depht"], progress=False)
    with pytest.raises(ValueError, match="predict"):
        evaluate_models({"x": object()}, samples, progress=False)
