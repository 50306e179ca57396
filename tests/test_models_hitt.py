"""HiTT model on tiny shapes: outputs, decode spaces, gradients to theta and phi, OE, ablations, save/load."""

import json

import pytest
import torch

from stablemtl.models.baselines.backbones import resnet18_config
from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.models.baselines.hitt_modules import orthogonal_basis

ALL_TASKS = ["semantic", "depth", "normal", "albedo", "shading", "optical_flow", "scene_flow"]


def tiny_backbone() -> dict:
    config = resnet18_config()
    config.embedding_size, config.hidden_sizes = 8, [8, 16, 32, 64]
    return config.to_dict()


def tiny_hitt(tasks=ALL_TASKS, **kwargs) -> HiTTModel:
    options = dict(token_dim=16, num_heads=2, aspp_rates=[1, 2], backbone_config=tiny_backbone())
    return HiTTModel(tasks, **{**options, **kwargs})


def frames(batch=2, height=32, width=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g), torch.rand(batch, 3, height, width, generator=g)


def test_forward_shapes_for_all_seven_tasks():
    model = tiny_hitt()
    images, next_images = frames()
    out = model(images, next_images)
    bins = {"semantic": 8, "depth": 30, "normal": 20, "albedo": 64, "shading": 30}
    bins |= {"optical_flow": 64, "scene_flow": 64}
    for task in ALL_TASKS:
        assert out.logits[task].shape == (2, bins[task], 32, 48)
        assert out.coarse_logits[task].shape == (2, bins[task], 32, 48)
        assert out.features[task].shape == (2, 16, 4, 6)  # stride-8 fused grid
        confidence = out.feature_confidence[task]
        assert confidence.shape == (2, 1, 4, 6) and ((confidence > 0) & (confidence < 1)).all()
        assert out.fine_tokens[task].shape == (2, bins[task], 16)
    assert out.global_tokens.shape == (2, 7, 16)
    assert len(out.task_affinity) == 4
    for affinity in out.task_affinity:
        torch.testing.assert_close(affinity.sum(dim=1), torch.ones(7))


def test_predict_returns_each_task_in_its_decode_space():
    model = tiny_hitt()
    images, next_images = frames()
    pred = model.predict(images, next_images, ALL_TASKS)
    assert pred["semantic"].shape == (2, 1, 32, 48) and pred["semantic"].dtype == torch.int64
    assert ((pred["semantic"] >= 0) & (pred["semantic"] < 8)).all()
    for task, channels in {"depth": 1, "shading": 1, "albedo": 3}.items():
        assert pred[task].shape == (2, channels, 32, 48)
        assert pred[task].min() >= 0 and pred[task].max() <= 1
    torch.testing.assert_close(pred["normal"].norm(dim=1), torch.ones(2, 32, 48))
    for task, channels in {"optical_flow": 2, "scene_flow": 3}.items():
        assert pred[task].shape == (2, channels, 32, 48) and pred[task].abs().max() <= 1
    assert model.training  # predict restores the mode it found


def test_predict_checks_its_inputs():
    model = tiny_hitt(["depth", "optical_flow"])
    images, _ = frames()
    with pytest.raises(ValueError, match="next_images"):
        model.predict(images, None, ["optical_flow"])
    with pytest.raises(ValueError, match="'semantic' is not predicted"):
        model.predict(images, None, ["semantic"])
    with pytest.raises(ValueError, match="images"):
        model.predict(images[:, :2], None, ["depth"])
    assert model.predict(images, None, ["depth"])["depth"].shape == (2, 1, 32, 48)


def test_gradients_reach_global_and_fine_grained_tokens():
    model = tiny_hitt(["semantic", "depth", "optical_flow"])
    images, next_images = frames()
    out = model(images, next_images)
    for phi in out.fine_tokens.values():
        phi.retain_grad()
    loss = sum(
        torch.nn.functional.cross_entropy(g, g.detach().argmax(1).roll(1, -1)) for g in out.logits.values()
    )
    loss.backward()
    assert model.global_tokens.grad is not None
    assert (model.global_tokens.grad.abs().sum(dim=1) > 0).all()  # every task's theta learns
    for task, phi in out.fine_tokens.items():
        assert phi.grad is not None and phi.grad.abs().sum() > 0, task
    for fine in model.fine_tokens:
        assert fine.embed.weight.grad.abs().sum() > 0  # W_oe of the orthogonal embeddings


@pytest.mark.parametrize("kind", ["identity", "random"])
def test_orthogonal_basis_is_orthonormal(kind):
    basis = orthogonal_basis(20, kind, seed=3)
    torch.testing.assert_close(basis @ basis.T, torch.eye(20), atol=1e-5, rtol=0)
    if kind == "random":
        assert not torch.allclose(basis, torch.eye(20))
        torch.testing.assert_close(basis, orthogonal_basis(20, kind, seed=3))


def test_without_orthogonal_embeddings_fine_tokens_collapse():
    images, _ = frames()
    with_oe = tiny_hitt(["semantic", "depth"], orthogonal_basis="random")(images).fine_tokens["depth"]
    without = tiny_hitt(["semantic", "depth"], use_orthogonal_embeddings=False)(images).fine_tokens["depth"]
    assert (with_oe - with_oe[:, :1]).abs().amax() > 1e-3  # every bin has its own token
    torch.testing.assert_close(without, without[:, :1].expand_as(without))  # all rows identical


def test_ablation_switches():
    images, _ = frames()
    no_inter = tiny_hitt(["semantic", "depth"], use_inter_task_attention=False)(images)
    for affinity in no_inter.task_affinity:
        torch.testing.assert_close(affinity, torch.eye(2))
    no_theta = tiny_hitt(["semantic", "depth"], use_global_tokens=False)(images)
    assert no_theta.global_tokens is None and no_theta.task_affinity == []
    assert torch.equal(no_theta.feature_confidence["depth"], torch.ones(2, 1, 4, 6))
    no_phi = tiny_hitt(["semantic", "depth"], use_fine_grained_tokens=False)(images)
    assert no_phi.fine_tokens == {} and torch.equal(no_phi.logits["depth"], no_phi.coarse_logits["depth"])
    full = tiny_hitt(["semantic", "depth"])
    no_intra = tiny_hitt(["semantic", "depth"], use_intra_task_attention=False)
    assert sum(p.numel() for p in no_intra.parameters()) < sum(p.numel() for p in full.parameters())
    assert not hasattr(no_intra, "intra_task")
    baseline = tiny_hitt(["semantic", "depth"], mtl_baseline=True)
    out = baseline(images)
    assert out.global_tokens is None and out.fine_tokens == {}
    assert not hasattr(baseline, "global_tokens") and not hasattr(baseline, "fine_tokens")
    assert (
        baseline.config["use_global_tokens"] is False and baseline.config["use_fine_grained_tokens"] is False
    )


def test_forward_runs_only_the_requested_heads():
    model = tiny_hitt(["semantic", "depth", "normal"])
    images, _ = frames()
    out = model(images, tasks=["depth"])
    assert list(out.logits) == ["depth"] and list(out.features) == ["depth"]
    assert out.global_tokens.shape == (2, 1, 16)
    torch.testing.assert_close(out.logits["depth"], model(images).logits["depth"])  # same attention context
    with pytest.raises(ValueError, match="'albedo' is not predicted"):
        model(images, tasks=["albedo"])


def test_single_scale_variant_uses_one_scale():
    out = tiny_hitt(["semantic", "depth"], multi_scale=False)(frames()[0])
    assert len(out.task_affinity) == 1 and out.logits["depth"].shape == (2, 30, 32, 48)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_hitt(["semantic", "normal", "scene_flow"], seed=5).eval()
    fitted = torch.nn.functional.normalize(
        torch.randn(20, 3, generator=torch.Generator().manual_seed(1)), dim=1
    )
    model.set_centres("normal", fitted)
    model.save_pretrained(tmp_path / "hitt")
    files = sorted(p.name for p in (tmp_path / "hitt").iterdir())
    assert (
        "model.safetensors" in files and "config.json" in files and not any(f.endswith(".tmp") for f in files)
    )
    config = json.loads((tmp_path / "hitt" / "config.json").read_text())
    assert config["model_type"] == "hitt" and config["backbone"] is None
    assert [t["name"] for t in config["tasks"]] == ["semantic", "normal", "scene_flow"]
    assert config["tasks"][1]["num_bins"] == 20
    loaded = HiTTModel.from_pretrained(tmp_path / "hitt").eval()
    torch.testing.assert_close(loaded.task_centres("normal"), fitted)
    images, next_images = frames(batch=1)
    expected = model.predict(images, next_images, ["semantic", "normal", "scene_flow"])
    for task, value in loaded.predict(images, next_images, ["semantic", "normal", "scene_flow"]).items():
        torch.testing.assert_close(value, expected[task])


def test_bad_configuration_raises_value_errors():
    with pytest.raises(ValueError, match="fuse_stride"):
        tiny_hitt(["depth"], fuse_stride=6)
    with pytest.raises(ValueError, match="no default head"):
        tiny_hitt(["edges"])
    with pytest.raises(ValueError, match="model_type"):
        tiny_hitt(["depth"], model_type="stablemtl")
    with pytest.raises(ValueError, match="centres of 'depth'"):
        tiny_hitt(["depth"]).set_centres("depth", torch.zeros(3, 1))
