"""The HiTT objective on a tiny rendered source: phase-1 loss learns, predict/save, phase-2 pseudo terms."""

import pytest
import torch

from stablemtl.data import collate_task_batch, load_source
from stablemtl.data.generate import make_dataset
from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.training.hitt_pseudo import PseudoTargets, PseudoTargetSource, collate_pseudo, discover_source
from stablemtl.training.objectives.hitt import HiTTConfig, HiTTObjective

TINY = dict(token_dim=16, num_heads=2, aspp_rates=[1, 2], centre_points=2000)


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    return load_source(make_dataset("street", 2, tmp_path_factory.mktemp("street") / "s", size=32, seed=1))


def group_of(source, task, rows=(0, 1)):
    return collate_task_batch([source.raw(i) for i in rows], task)


def test_phase1_loss_trains_and_the_model_saves(street, tmp_path):
    samples = [street.raw(i) for i in range(len(street))]
    objective = HiTTObjective(HiTTConfig(**TINY), street.tasks, samples)
    modules = objective.trainable_modules()
    model = modules["hitt"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    group = group_of(street, "depth")
    losses = []
    for _ in range(6):
        loss = objective.loss(modules, [group])
        optimizer.zero_grad()
        loss.backward()
        assert model.global_tokens.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert loss.dtype == torch.float32 and losses[-1] < losses[0]
    flow = group_of(street, "optical_flow")
    pred = objective.predict(modules, flow["image"], flow["next_image"], ["optical_flow", "semantic"])
    assert pred["optical_flow"].shape == (2, 2, 32, 32) and pred["semantic"].dtype == torch.int64
    objective.save_model(modules, tmp_path / "run")
    loaded = HiTTModel.from_pretrained(tmp_path / "run")
    again = loaded.predict(flow["image"], flow["next_image"], ["optical_flow"])["optical_flow"]
    torch.testing.assert_close(again, pred["optical_flow"])


def test_phase2_adds_pseudo_terms_only_where_labels_are_missing(street, tmp_path):
    phase1 = HiTTObjective(HiTTConfig(**TINY), street.tasks)
    phase1.save_model(phase1.trainable_modules(), tmp_path / "p1")
    teacher = HiTTModel.from_pretrained(tmp_path / "p1")
    store = PseudoTargets(discover_source(teacher, street, tmp_path / "pseudo.safetensors"))
    centres = {t: teacher.task_centres(t) for t in teacher.task_names if teacher.head(t).is_regression}
    served = PseudoTargetSource(street, store, centres)
    samples = [served.item(i, "depth") for i in (0, 1)]
    group = {**collate_task_batch(samples, "depth"), "pseudo": collate_pseudo(samples, teacher.task_names)}

    every_pixel = {t: {"tau": 0.0} for t in street.tasks}  # a random teacher is never confident

    def loss_with(labelled=True, **switches):
        config = HiTTConfig(**TINY, phase=2, phase1_model=str(tmp_path / "p1"), heads=every_pixel, **switches)
        objective = HiTTObjective(config, street.tasks)
        pseudo = group["pseudo"]
        if not labelled:
            pseudo = {**pseudo, "labelled": {t: torch.zeros(2, dtype=torch.bool) for t in teacher.task_names}}
        return objective.loss(objective.trainable_modules(), [{**group, "pseudo": pseudo}])

    # The street rows label every task: no pseudo-label loss where ground truth exists.
    assert all(group["pseudo"]["labelled"][t].all() for t in teacher.task_names)
    supervised_only = loss_with(use_pseudo_label_loss=False, use_feature_loss=False)
    torch.testing.assert_close(loss_with(use_feature_loss=False), supervised_only)
    assert loss_with(use_pseudo_label_loss=False) > supervised_only  # L_f: far from the teacher's features
    # Without those labels the teacher's pseudo labels of the other tasks supervise.
    assert loss_with(labelled=False, use_feature_loss=False) > supervised_only + 0.1
    objective = HiTTObjective(HiTTConfig(**TINY, phase=2, phase1_model=str(tmp_path / "p1")), street.tasks)
    with pytest.raises(ValueError, match="pseudo"):
        objective.loss(objective.trainable_modules(), [group_of(street, "depth")])
    with torch.no_grad():  # validation groups carry no stored targets: the supervised loss alone
        assert objective.loss(objective.trainable_modules(), [group_of(street, "depth")]) > 0


def test_config_checks():
    with pytest.raises(ValueError, match="phase1_model"):
        HiTTConfig(phase=2)
    with pytest.raises(ValueError, match="phase"):
        HiTTConfig(phase=3)
