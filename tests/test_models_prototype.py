"""Task-prototype baseline: shapes, gradient flow, the TKE/TC losses on constructed cases with known
answers, the straight-through VQ, partial labels and save/load."""

import json
import math

import pytest
import torch
from transformers import ResNetConfig

from stablemtl.models.baselines.prototype import MODEL_TYPE, PrototypeModel
from stablemtl.models.baselines.prototype_losses import (
    PrototypeLossWeights,
    supervised_task_loss,
    task_consistency_loss,
    task_knowledge_embedding_loss,
)
from stablemtl.models.baselines.task_prototype import TaskPrototype

TASKS = ["semantic", "depth", "normal", "optical_flow", "scene_flow", "albedo", "shading"]
CHANNELS = {
    "semantic": 8,
    "depth": 1,
    "normal": 3,
    "optical_flow": 2,
    "scene_flow": 3,
    "albedo": 3,
    "shading": 1,
}
KINDS = {
    "semantic": "classification",
    "depth": "unit_interval",
    "normal": "unit_vector",
    "optical_flow": "signed_unit_interval",
    "scene_flow": "signed_unit_interval",
    "albedo": "unit_interval",
    "shading": "unit_interval",
}
PAIR = ["optical_flow", "scene_flow"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_model(**overrides) -> PrototypeModel:
    backbone = ResNetConfig(
        num_channels=6, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], layer_type="basic"
    ).to_dict()
    kwargs = dict(
        backbone_config=backbone,
        feature_channels=16,
        task_feature_channels=16,
        codebook_size=32,
        slot_dim=32,
        retrieval_blocks=1,
        retrieval_heads=2,
    )
    kwargs.update(overrides)
    return PrototypeModel(TASKS, CHANNELS, KINDS, PAIR, **kwargs)


def images(seed: int, batch: int = 2, height: int = 32, width: int = 48) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def depth_target(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    target = torch.rand(batch, 1, 32, 48, generator=torch.Generator().manual_seed(7))
    return target, torch.ones(batch, 32, 48, dtype=torch.bool)


# -- shapes and gradients --------------------------------------------------------------------------------
def test_forward_shapes_for_all_seven_tasks():
    model = tiny_model()
    out = model(images(0), images(1))
    assert {t: tuple(o.shape) for t, o in out.outputs.items()} == {t: (2, CHANNELS[t], 32, 48) for t in TASKS}
    assert out.projected.shape == (2, 7, 32) and out.affinity_logits.shape == (2, 7, 7)
    # Cosine over a temperature of 0.1 is bounded by 10.
    assert out.affinity_logits.abs().max() <= 10.0 + 1e-4


def test_predict_gives_each_prediction_space_and_restores_training_mode():
    model = tiny_model().train()
    predictions = model.predict(images(0), images(1), TASKS)
    assert model.training
    semantic = predictions["semantic"]
    assert semantic.dtype == torch.int64 and semantic.shape == (2, 1, 32, 48)
    assert semantic.min() >= 0 and semantic.max() < 8
    for task in ("depth", "albedo", "shading"):
        assert predictions[task].min() >= 0 and predictions[task].max() <= 1
    for task in PAIR:
        assert predictions[task].abs().max() <= 1
    torch.testing.assert_close(predictions["normal"].norm(dim=1), torch.ones(2, 32, 48))
    # Single-frame tasks ignore the next frame: their input is the still pair either way.
    alone = model.predict(images(0), None, ["depth"])
    torch.testing.assert_close(alone["depth"], predictions["depth"])


def test_gradients_reach_every_shared_part_and_only_the_labelled_heads():
    model = tiny_model()
    terms = model.compute_losses(images(0), None, {"depth": depth_target()})
    PrototypeLossWeights().combine(terms).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("heads.") and not name.startswith("heads.depth."):
            assert parameter.grad is None, name  # unlabelled heads: no prediction-level loss
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_flow_pair_is_required_for_a_flow_head_but_not_for_its_affinity():
    model = tiny_model()
    with pytest.raises(ValueError, match="next_images is required"):
        model.predict(images(0), None, ["optical_flow"])
    # Without a next frame the flow features still enter TKE/TC (from the still pair).
    terms = model.compute_losses(images(0), None, {"depth": depth_target()})
    assert torch.isfinite(terms["tke"])
    flow_target = (torch.zeros(2, 2, 32, 48), torch.ones(2, 32, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="next_images is required"):
        model.compute_losses(images(0), None, {"optical_flow": flow_target})
    assert torch.isfinite(
        model.compute_losses(images(0), images(1), {"optical_flow": flow_target})["supervised"]
    )


# -- TKE and TC on constructed cases ---------------------------------------------------------------------
def test_tke_is_minimal_when_each_task_feature_aligns_with_its_slot():
    torch.manual_seed(0)
    tasks, temperature = 4, 0.5
    prototype = TaskPrototype(tasks, feature_channels=8, slot_dim=16, temperature=temperature)
    slots = prototype.slots.detach()
    slot_index = torch.arange(tasks)
    aligned = slots.unsqueeze(0).expand(3, -1, -1) * 5.0  # [B,T,d]: task t's feature is a multiple of v_t
    loss = task_knowledge_embedding_loss(prototype.affinity_logits(aligned), slot_index)
    # Orthonormal slots: own-slot cosine 1, others 0 -> -log(e^{1/t} / (e^{1/t} + (T-1))).
    expected = math.log(1 + (tasks - 1) * math.exp(-1 / temperature))
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # Any other assignment of slot directions to tasks, or noise around the slots, scores worse.
    for shift in range(1, tasks):
        permuted = aligned.roll(shift, dims=1)
        assert task_knowledge_embedding_loss(prototype.affinity_logits(permuted), slot_index) > loss + 1.0
    noisy = aligned + torch.randn(aligned.shape, generator=torch.Generator().manual_seed(1))
    assert task_knowledge_embedding_loss(prototype.affinity_logits(noisy), slot_index) > loss


def test_tke_gradient_descent_moves_features_onto_their_slots():
    torch.manual_seed(0)
    prototype = TaskPrototype(3, feature_channels=8, slot_dim=16, temperature=0.1).requires_grad_(False)
    features = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    optimizer = torch.optim.SGD([features], lr=0.5)
    start = None
    for _ in range(200):
        loss = task_knowledge_embedding_loss(prototype.affinity_logits(features), torch.arange(3))
        start = loss.item() if start is None else start
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < start / 10
    assert (prototype.affinity_logits(features).argmax(-1) == torch.arange(3)).all()


def test_tc_on_a_constructed_batch():
    tasks, temperature = 3, 0.5
    basis = torch.eye(tasks, 8)  # task t's feature direction: e_t
    exact = (
        basis.unsqueeze(0).repeat(4, 1, 1) * torch.tensor([1.0, 2.0, 3.0, 0.5])[:, None, None]
    )  # scales vary
    expected = math.log(1 + (tasks - 1) * math.exp(-1 / temperature))
    assert task_consistency_loss(exact, temperature).item() == pytest.approx(expected, rel=1e-4)
    # Tight clusters around the directions stay near that value; mixing the tasks' features up does not.
    noise = 0.05 * torch.randn(4, tasks, 8, generator=torch.Generator().manual_seed(3))
    clustered = task_consistency_loss(exact + noise, temperature)
    mixed = exact.clone()
    mixed[:2] = mixed[:2].roll(1, dims=1)  # half the images swap which task holds which direction
    assert clustered < expected + 0.05
    # Then each aggregate is (e_t + e_t-1)/sqrt(2): a feature is equally close to two of them.
    mixed_expected = math.log(2 + math.exp(-math.sqrt(0.5) / temperature))
    assert task_consistency_loss(mixed, temperature).item() == pytest.approx(mixed_expected, rel=1e-4)
    assert mixed_expected > clustered + 0.5
    # A single task has nothing to be contrasted with.
    assert task_consistency_loss(exact[:, :1], temperature).item() == pytest.approx(0.0, abs=1e-6)


# -- vector quantisation ---------------------------------------------------------------------------------
def test_vq_straight_through_passes_gradients_and_trains_the_codebook():
    model = tiny_model()
    encoded = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(4), requires_grad=True)
    quantized, vq_loss, (_, _, indices) = model.shared.quantizer(encoded)
    codebook = model.shared.quantizer.embedding.weight
    # Forward: each position is replaced by its nearest code.
    nearest = torch.cdist(encoded.detach().permute(0, 2, 3, 1).reshape(-1, 16), codebook.detach()).argmin(1)
    torch.testing.assert_close(indices, nearest)
    torch.testing.assert_close(
        quantized.detach().permute(0, 2, 3, 1).reshape(-1, 16), codebook.detach()[nearest]
    )
    # Backward: the quantisation is the identity for gradients (straight-through).
    weights = torch.randn(quantized.shape, generator=torch.Generator().manual_seed(5))
    (quantized * weights).sum().backward(retain_graph=True)
    torch.testing.assert_close(encoded.grad, weights)
    # The codebook loss pulls the used codes towards the features.
    codebook.grad = None
    vq_loss.backward()
    assert codebook.grad[nearest.unique()].abs().sum() > 0
    before = vq_loss.item()
    with torch.no_grad():
        codebook -= 0.5 * codebook.grad
    assert model.shared.quantizer(encoded)[1].item() < before


def test_encoder_gradient_flows_through_the_quantised_branch():
    model = tiny_model()
    inputs = torch.cat([images(0), images(1)], dim=1)
    captured = {}
    model.shared.fuse.register_forward_hook(lambda module, args, output: captured.update(encoded=output))
    integrated, _, _ = model.shared(inputs)
    # f_i = f_e + f_q with straight-through f_q: d f_i / d f_e = 2 (both branches carry the gradient).
    grad = torch.autograd.grad(integrated.sum(), captured["encoded"])[0]
    torch.testing.assert_close(grad, torch.full_like(grad, 2.0))


# -- partial labels ---------------------------------------------------------------------------------------
def test_unlabelled_tasks_contribute_no_supervised_loss():
    model = tiny_model()
    torch.manual_seed(0)
    x = images(0)
    depth_only = model.compute_losses(x, None, {"depth": depth_target()})
    normal_none = (torch.randn(2, 3, 32, 48), torch.zeros(2, 32, 48, dtype=torch.bool))
    with_empty_normal = model.compute_losses(x, None, {"depth": depth_target(), "normal": normal_none})
    torch.testing.assert_close(with_empty_normal["supervised"], depth_only["supervised"])
    # Changing an unlabelled task's head changes nothing in the loss.
    with torch.no_grad():
        for parameter in model.heads["normal"].parameters():
            parameter.add_(1.0)
    after = model.compute_losses(x, None, {"depth": depth_target()})
    for name in depth_only:
        torch.testing.assert_close(after[name], depth_only[name])
    # No labelled task at all: the supervised term is zero, the task-free terms remain.
    unlabelled = model.compute_losses(x, None, {})
    assert unlabelled["supervised"].item() == 0.0 and unlabelled["tke"].item() > 0


def test_supervised_loss_counts_valid_pixels_only():
    output = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 0.5], [float("nan"), 3.0]]]])
    valid = torch.tensor([[[True, True], [False, False]]])
    assert supervised_task_loss(output, target, valid, "unit_interval").item() == pytest.approx(0.75)
    logits = torch.tensor([[[[5.0]], [[0.0]]]])  # 2 classes, one pixel, class 0 favoured
    ids = torch.tensor([[[[1]]]])
    expected = math.log(1 + math.exp(5.0))
    assert supervised_task_loss(
        logits, ids, torch.ones(1, 1, 1, dtype=torch.bool), "classification"
    ).item() == (pytest.approx(expected, rel=1e-5))
    assert (
        supervised_task_loss(logits, ids, torch.zeros(1, 1, 1, dtype=torch.bool), "classification").item()
        == 0
    )
    with pytest.raises(ValueError, match="kind"):
        supervised_task_loss(output, target, valid, "depth")


def test_loss_weights_and_the_tke_only_ablation():
    terms = {
        name: torch.tensor(value)
        for name, value in dict(supervised=1.0, reconstruction=2.0, vq=3.0, tke=4.0, tc=5.0).items()
    }
    full = PrototypeLossWeights(tae=0.5, akg=0.1, tc=2.0)
    assert full.combine(terms).item() == pytest.approx(1.0 + 0.5 * 2.0 + 3.0 + 0.1 * (4.0 + 2.0 * 5.0))
    tke_only = PrototypeLossWeights(tae=0.5, akg=0.1, tc=2.0, use_task_consistency=False)
    assert tke_only.combine(terms).item() == pytest.approx(1.0 + 0.5 * 2.0 + 3.0 + 0.1 * 4.0)
    with pytest.raises(ValueError, match="akg"):
        PrototypeLossWeights(akg=-1.0)


# -- knobs, persistence, bad input -----------------------------------------------------------------------
def test_slot_dim_and_codebook_size_are_knobs():
    model = tiny_model(slot_dim=24, codebook_size=10)
    assert model.prototype.slots.shape == (7, 24)
    assert model.shared.quantizer.embedding.weight.shape == (10, 16)
    assert model(images(0), feature_tasks=["depth"]).projected.shape == (2, 1, 24)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(seed=3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["tasks"] == TASKS and config["slot_dim"] == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = PrototypeModel.from_pretrained(tmp_path)
    assert loaded.config == model.config
    expected = model.predict(images(0), images(1), TASKS)
    for task, prediction in loaded.predict(images(0), images(1), TASKS).items():
        torch.testing.assert_close(prediction, expected[task])


def test_bad_configuration_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="output_kinds"):
        PrototypeModel(["depth"], {"depth": 1}, {"depth": "metres"})
    with pytest.raises(ValueError, match="output_channels"):
        PrototypeModel(["depth"], {"normal": 1}, {"depth": "unit_interval"})
    with pytest.raises(ValueError, match="pair_tasks"):
        PrototypeModel(["depth"], {"depth": 1}, {"depth": "unit_interval"}, pair_tasks=["optical_flow"])
    three_channels = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8] * 4, depths=[1] * 4
    ).to_dict()
    with pytest.raises(ValueError, match="6 input channels"):
        tiny_model(backbone_config=three_channels)
    with pytest.raises(ValueError, match="codebook_size"):
        tiny_model(codebook_size=0)
    model = tiny_model()
    with pytest.raises(ValueError, match="images"):
        model.predict(torch.rand(2, 4, 32, 32), None, ["depth"])
    with pytest.raises(ValueError, match="next_images"):
        model.predict(images(0), torch.rand(2, 3, 32, 40), ["depth"])
    with pytest.raises(ValueError, match="feature_tasks"):
        model.predict(images(0), None, ["depht"])
    with pytest.raises(ValueError, match="targets"):
        model.compute_losses(images(0), None, {"depht": depth_target()})
