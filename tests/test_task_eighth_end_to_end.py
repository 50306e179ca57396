"""An eighth task is one new file (a ``Task`` subclass plus its ``register_task`` line) and then works
everywhere: the task property checks, storage, loader, augmentation, collation, task tokens, a training
step, the pipeline, the model card, the constant baseline and the evaluator."""

import importlib
import sys

import pytest
import torch
from datasets import Dataset
from test_tasks_properties import check_task_properties

from stablemtl import StableMTLPipeline
from stablemtl.data import Augmentation, collate_task_batch, load_source, render_sample
from stablemtl.data.storage import features_for, sample_to_row
from stablemtl.evaluation import TaskMetricsAverager, build_metric, evaluate
from stablemtl.evaluation.trivial import ConstantPredictor
from stablemtl.hub import make_model_card
from stablemtl.models import TaskEmbeddings
from stablemtl.tasks import check_tasks, get_task, task_names, unregister_task
from stablemtl.testing import make_tiny_sd_folder
from stablemtl.training.objectives.single_stream import StableMTLObjective

# The whole new file a user writes: the horizontal luminance gradient, which changes sign under an
# h-flip (so the registry's flip rule is exercised too).
TOY_MODULE = '''
"""Horizontal luminance gradient (1, H, W) in [-1, 1]."""
import torch

from stablemtl.tasks import Task, register_task
from stablemtl.tasks.base import batched, batched_image3, single_prediction, to_pil_rgb, unbatch


class XGradientTask(Task):
    name = "x_gradient"
    prompt = "x gradient"
    label_channels = 1
    prediction_channels = 1
    output_space = "horizontal luminance gradient (B,1,H,W) in [-1,1]"
    baseline_constant = (0.0,)
    primary_metric = "mae"
    higher_is_better = False
    hflip_signs = (-1.0,)

    def encode(self, label, valid):
        label, valid, was_batched = batched(label.float(), valid, 1)
        image3 = label.clamp(-1.0, 1.0).nan_to_num(0.0).repeat(1, 3, 1, 1)
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3):
        image3, was_batched = batched_image3(image3)
        return unbatch(image3.mean(dim=1, keepdim=True).clamp(-1.0, 1.0), was_batched)

    def visualize(self, prediction):
        grey = (single_prediction(prediction, 1) + 1.0) / 2.0
        return to_pil_rgb(grey.repeat(3, 1, 1).permute(1, 2, 0))

    def metrics(self, prediction, label, valid):
        return {"mae": (prediction - label)[0][valid].abs().mean().item()}


register_task(XGradientTask())
'''
SIZE = 16


@pytest.fixture
def toy_task(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "my_x_gradient_task.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_x_gradient_task")
    yield get_task("x_gradient")
    unregister_task("x_gradient")
    sys.modules.pop("my_x_gradient_task", None)


def _gradient(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] -> ``(1, H, W)``: grey difference to the right neighbour (0 at the edge)."""
    grey = image.mean(dim=0, keepdim=True)
    grad = torch.zeros_like(grey)
    grad[..., :-1] = grey[..., 1:] - grey[..., :-1]
    return grad


def test_an_eighth_task_passes_every_task_property_check(toy_task):
    check_task_properties(toy_task)
    assert not toy_task.is_discrete and isinstance(build_metric("x_gradient"), TaskMetricsAverager)


def test_an_eighth_task_file_works_end_to_end(toy_task, tmp_path):
    assert task_names()[-1] == "x_gradient" and check_tasks(["depth", "x_gradient"])
    # Data: a source labelling depth and the new task, stored and read back like any other.
    rows = []
    for i in range(2):
        s = render_sample("street", seed=5, size=SIZE, split="train", index=i)
        s["labels"]["x_gradient"] = _gradient(s["image"])
        s["valid"]["x_gradient"] = torch.ones(SIZE, SIZE, dtype=torch.bool)
        rows.append(sample_to_row(s, i, ("depth", "x_gradient")))
    features = features_for(("depth", "x_gradient"), SIZE, SIZE)
    Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "toy"))
    plain = load_source(tmp_path / "toy")
    assert plain.tasks == ["depth", "x_gradient"]
    label = plain[1]["labels"]["x_gradient"]
    assert torch.equal(label, torch.from_numpy(rows[1]["label_x_gradient"]))
    torch.testing.assert_close(label, _gradient(render_sample("street", 5, SIZE, "train", index=1)["image"]))
    # Augmentation: an h-flip mirrors the label and negates it, by the task's own flip rule.
    flipped = load_source(tmp_path / "toy", augment=True, augmentation=Augmentation(flip_p=1.0))
    assert torch.equal(flipped.item(1, "x_gradient")["labels"]["x_gradient"], -label.flip(-1))
    batch = collate_task_batch([flipped[0], flipped[1]], "x_gradient")
    assert batch["label"].shape == (2, 1, SIZE, SIZE) and batch["next_image"] is None
    # Encoding: lossless for values in [-1, 1] (up to the float rounding of a 3-channel mean).
    image3, valid = toy_task.encode(batch["label"], batch["valid"])
    torch.testing.assert_close(toy_task.decode(image3), batch["label"], rtol=1e-6, atol=1e-7)
    assert toy_task.latent_valid_mask(valid).shape == (2, SIZE // 8, SIZE // 8)

    # Model: task tokens from its prompt, one training step, then predictions through the pipeline.
    pipe = StableMTLPipeline.from_base(make_tiny_sd_folder(tmp_path / "sd"), tasks=["depth", "x_gradient"])
    pipe.set_progress_bar_config(disable=True)
    assert (
        pipe.tasks == ["depth", "x_gradient"] and pipe.task_embeddings.prompts["x_gradient"] == "x gradient"
    )
    saved = TaskEmbeddings.load(pipe.task_embeddings.save(tmp_path / "tokens"))
    assert torch.equal(saved["x_gradient"], pipe.task_embeddings["x_gradient"])
    objective = StableMTLObjective(pipe)
    prepared = objective.prepare([batch])
    assert prepared.tasks == ["x_gradient", "x_gradient"] and prepared.mask.shape[-2:] == (2, 2)
    pipe.unet.train()
    loss = objective.loss({"unet": pipe.unet}, [batch])
    loss.backward()
    assert torch.isfinite(loss) and pipe.unet.conv_in.weight.grad.abs().sum() > 0
    pipe.unet.zero_grad(set_to_none=True)
    pipe.unet.eval()
    images = torch.stack([plain[0]["image"], plain[1]["image"]])
    with torch.no_grad():
        prediction = pipe.predict(images, None, ["x_gradient"])["x_gradient"]
    assert prediction.shape == (2, 1, SIZE, SIZE) and prediction.abs().max() <= 1.0

    # Evaluation: a new task is scored by its own metrics (here an oracle predictor: exact labels).
    class Oracle:
        def predict(self, images, next_images, tasks):
            return {"x_gradient": torch.stack([_gradient(image) for image in images])}

    report = evaluate(Oracle(), [plain[0], plain[1]], tasks=["x_gradient"], progress=False)
    # The oracle sees the stored 8-bit image, the label was computed from the float render: within 1/255.
    assert report["tasks"]["x_gradient"]["metrics"]["mae"] < 1.0 / 255
    assert report["tasks"]["x_gradient"]["num_images"] == 2

    class Zero:
        def predict(self, images, next_images, tasks):
            return {"x_gradient": torch.zeros(images.shape[0], 1, SIZE, SIZE)}

    expected = sum(plain[i]["labels"]["x_gradient"].abs().mean().item() for i in range(2)) / 2
    for zero in (Zero(), ConstantPredictor.from_samples([plain[0], plain[1]])):  # the baseline is zero
        report = evaluate(zero, [plain[0], plain[1]], tasks=["x_gradient"], progress=False)
        assert report["tasks"]["x_gradient"]["metrics"]["mae"] == pytest.approx(expected, rel=1e-5)

    card = str(make_model_card(["depth", "x_gradient"]))
    assert '- `x_gradient` (prompt "x gradient"): horizontal luminance gradient (B,1,H,W) in [-1,1]' in card
