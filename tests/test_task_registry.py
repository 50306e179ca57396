import pytest
import torch
from PIL import Image

from stablemtl.tasks import (
    PAPER_TASKS,
    Task,
    check_tasks,
    get_task,
    register_task,
    task_names,
    unregister_task,
)
from stablemtl.tasks.base import batched, batched_image3, to_pil_rgb, unbatch

PAPER = ["albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"]
BUILTIN = [*PAPER, "semantic_nyud"]  # the paper's seven, then NYUD-v2's 13-class semantics


class EdgesTask(Task):
    """A toy eighth task: binary edge maps (1, H, W) in {0, 1}, drawn grey."""

    name = "edges"
    prompt = "edges"
    label_channels = 1
    prediction_channels = 1
    prediction_dtype = torch.int64
    output_space = "edge map (B,1,H,W) int64: 0 background, 1 edge"
    class_names = ("background", "edge")
    primary_metric = "f1"
    higher_is_better = True

    def encode(self, label, valid):
        label, valid, was_batched = batched(label.float(), valid, 1)
        image3 = torch.where(valid[:, None], label * 2 - 1, -1.0).repeat(1, 3, 1, 1)
        return unbatch(image3, was_batched), unbatch(valid, was_batched)

    def decode(self, image3):
        image3, was_batched = batched_image3(image3)
        return unbatch((image3.mean(dim=1, keepdim=True) > 0).long(), was_batched)

    def visualize(self, prediction):
        return to_pil_rgb(prediction.float().reshape(*prediction.shape[-2:], 1).repeat(1, 1, 3))


@pytest.fixture
def edges():
    task = register_task(EdgesTask())
    yield task
    unregister_task("edges")


def test_builtin_tasks_are_registered_in_order():
    assert task_names() == BUILTIN and list(PAPER_TASKS) == PAPER
    for name in PAPER:
        task = get_task(name)
        assert task.name == name and task.prompt == name.replace("_", " ")
        assert task.needs_pair == (name in ("optical_flow", "scene_flow"))
        assert repr(task) == f"{type(task).__name__}(name={name!r})"


def test_an_eighth_task_registers_and_works(edges):
    assert task_names() == [*BUILTIN, "edges"] and get_task("edges") is edges
    assert check_tasks(["depth", "edges"]) == ["depth", "edges"]
    label = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    image3, valid = edges.encode(label, torch.ones(2, 2, dtype=torch.bool))
    assert torch.equal(edges.decode(image3), label.long()) and valid.all()
    assert isinstance(edges.visualize(label), Image.Image)
    assert edges.latent_valid_mask(torch.ones(8, 8, dtype=torch.bool)).tolist() == [[True]]
    with pytest.raises(NotImplementedError, match="edges"):
        edges.metrics(label, label, valid)
    with pytest.raises(ValueError, match="already registered"):
        register_task(EdgesTask())


def test_registration_checks_the_facts_the_toolkit_reads():
    class Bare(EdgesTask):
        pass

    for fact, value, message in [
        ("prediction_channels", None, "Bare.prediction_channels must be a positive int, got None"),
        ("prediction_channels", 0, "prediction_channels must be a positive int"),
        ("label_channels", True, "label_channels must be a positive int"),
        ("output_space", None, "Bare.output_space must be a str"),
        ("higher_is_better", 1, "higher_is_better must be a bool"),
        ("prediction_dtype", "int64", "prediction_dtype must be a torch.dtype"),
        ("class_names", ("edge",), "class_names must name 2\\+ classes"),
        ("baseline_constant", (0.0, 1.0), "baseline_constant has 2 values for 1 prediction channel"),
    ]:
        task = Bare()
        setattr(task, fact, value)
        with pytest.raises(ValueError, match=message):
            register_task(task)
        assert "edges" not in task_names()
    with pytest.raises(ValueError, match="Task instance"):
        register_task("edges")


def test_unregister_removes_the_task(edges):
    unregister_task("edges")
    assert task_names() == BUILTIN
    with pytest.raises(ValueError, match="unknown"):
        get_task("edges")


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="'depht' is unknown; known: albedo, shading, depth, normal"):
        get_task("depht")
    with pytest.raises(ValueError, match="depht"):
        check_tasks(["depth", "depht"])


def test_check_tasks():
    assert check_tasks("depth") == ["depth"]
    with pytest.raises(ValueError, match="at least one"):
        check_tasks([])
    with pytest.raises(ValueError, match="repeat"):
        check_tasks(["depth", "depth"])
