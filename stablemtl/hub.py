"""Model cards and Hub uploads for saved stablemtl pipelines.

A card says what a user must know before trusting the weights: the tasks and their output spaces (depth is
affine-invariant, flows are per-axis normalised), the base model and its licence, how it was trained, the
metrics when known (``stablemtl-eval --write_model_card`` adds them to an evaluated folder), a snippet that
loads it, and the paper to cite.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

from stablemtl.models.task_tokens import TASK_EMBEDDINGS_NAME, TaskEmbeddings
from stablemtl.tasks import get_task
from stablemtl.utils import atomic_write_text

# Licences of the usual bases; the weights derived from a base inherit its licence.
BASE_LICENSES = {
    "stabilityai/stable-diffusion-2": "openrail++",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-base": "openrail++",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
}
CODE_LICENSE = "Apache-2.0"
PAPER_ARXIV_ID = "2506.08013"
CITATION = """@article{cao2025stablemtl,
  title   = {StableMTL: Repurposing Latent Diffusion Models for Multi-Task Learning from Partially
             Annotated Synthetic Datasets},
  author  = {Cao, Anh-Quan and Lopes, Ivan and de Charette, Raoul},
  journal = {arXiv preprint arXiv:2506.08013},
  year    = {2025}
}"""
# Training facts shown first and how they are named; other recorded keys follow with their own names.
TRAINING_LABELS = {
    "base_model": "base model",
    "tasks": "tasks",
    "train_data": "training data",
    "datasets": "training data",
    "max_train_steps": "max train steps",
    "effective_batch_size": "effective batch size",
    "train_batch_size": "batch size per device",
    "resolution": "resolution",
    "learning_rate": "learning rate",
    "lr_scheduler": "learning-rate schedule",
    "mixed_precision": "precision",
    "seed": "seed",
}


def _format_value(value: Any) -> str:
    """A recorded training value as Markdown text (no Python reprs): lists comma-joined, a one-key mapping
    such as ``{"names": [...]}`` by its value, other mappings as ``key: value`` pairs."""
    if isinstance(value, Mapping):
        if len(value) == 1:
            return _format_value(next(iter(value.values())))
        return "; ".join(f"{key} ({_format_value(item)})" for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return f"`{value}`" if isinstance(value, str) and ("/" in value or os.sep in value) else str(value)


def _format_training(info: Mapping[str, Any]) -> list[str]:
    """The card's training lines: known facts in ``TRAINING_LABELS`` order, then the rest."""
    shown = [k for k in TRAINING_LABELS if k in info] + [k for k in info if k not in TRAINING_LABELS]
    skipped = ("metrics", "evaluation")
    return [
        f"- {TRAINING_LABELS.get(key, key.replace('_', ' '))}: {_format_value(info[key])}"
        for key in shown
        if key not in skipped and info[key] is not None
    ]


def _format_metrics(metrics: Mapping[str, Any]) -> str:
    """``{task: {metric: value}}`` (or ``{metric: value}``) as a Markdown table."""
    rows = []
    for task, values in metrics.items():
        if isinstance(values, Mapping):
            rows += [(task, name, value) for name, value in values.items()]
        else:
            rows.append(("", task, values))
    lines = ["| task | metric | value |", "|---|---|---|"]
    for task, name, value in rows:
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"| {task} | {name} | {shown} |")
    return "\n".join(lines)


def make_model_card(
    tasks: Sequence[str],
    prompts: Mapping[str, str] | None = None,
    training_info: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    pipeline_class: str = "StableMTLPipeline",
    license: str | None = None,
) -> ModelCard:
    """Build the model card of a saved pipeline.

    Args:
        tasks: task names the model predicts, in order.
        prompts: ``{task: conditioning prompt}``; defaults to the task names.
        training_info: what the training script recorded, any of ``base_model``, ``datasets`` (a mapping
            ``{source: [tasks]}`` or a list), ``max_train_steps``, ``train_batch_size``, ``resolution``,
            ``learning_rate``, ``lr_scheduler``, ``mixed_precision``, ``seed``, ``metrics``
            (``{task: {metric: value}}``) and ``evaluation`` (``{"data": [names]}``, where the metrics come
            from).
        repo_id: Hub id used in the usage snippet (a local path placeholder otherwise).
        pipeline_class: the pipeline class the snippet loads.
        license: licence of the weights; by default the base model's when known, else "other".
    """
    info = dict(training_info or {})
    base = info.get("base_model")
    inherited = license is None
    license = license or BASE_LICENSES.get(str(base), "other")
    prompts = dict(prompts or {})
    data = ModelCardData(
        license=license,
        library_name="diffusers",
        pipeline_tag="image-to-image",
        tags=["stablemtl", "multi-task", "dense-prediction", f"arxiv:{PAPER_ARXIV_ID}", *tasks],
        base_model=str(base) if base and "/" in str(base) and not os.path.exists(str(base)) else None,
    )
    task_lines = "\n".join(
        f'- `{t}` (prompt "{prompts.get(t, get_task(t).prompt)}"): {get_task(t).output_space}' for t in tasks
    )
    training = _format_training(info)
    metrics = info.get("metrics")
    evaluated_on = (info.get("evaluation") or {}).get("data")
    metrics_text = _format_metrics(metrics) if metrics else "Not evaluated yet."
    if metrics and evaluated_on:
        metrics_text = f"Measured by `stablemtl-eval` on {_format_value(evaluated_on)}.\n\n{metrics_text}"
    source = repo_id or "path/to/this/folder"
    if license == "other":
        weights_licence = f"the licence of the base model{f' `{base}`' if base else ''} applies"
    else:
        weights_licence = f"{license}" + (
            f" (inherited from the base model `{base}`)" if base and inherited else ""
        )
    wanted = [t for t in ("depth", "normal", "semantic") if t in tasks] or list(tasks[:3])
    content = f"""---
{data.to_yaml()}
---

# StableMTL: one diffusion UNet, {len(tasks)} dense-prediction task{"s" if len(tasks) != 1 else ""}

A Stable Diffusion UNet turned into a multi-task dense predictor with
[stablemtl](https://pypi.org/project/stablemtl/): one deterministic step (fixed timestep, zero target
latent, x0 prediction) conditioned on a cached task token. All requested tasks of an image run as one
batched UNet call.

## Tasks and outputs
{task_lines}

Outputs are relative: depth is affine-invariant and flows are normalised per axis, so align them to the
ground truth before computing metric errors.

## Usage
```python
from stablemtl import {pipeline_class}
from PIL import Image

pipe = {pipeline_class}.from_pretrained("{source}")
image = Image.open("frame_0.png")
out = pipe(image, next_image=Image.open("frame_1.png"), tasks={wanted!r})
pipe.image_processor.visualize("{wanted[0]}", out.{wanted[0]})[0].save("{wanted[0]}.png")
```
Plain diffusers loads it too, from the pipeline file shipped beside the weights (`pip install stablemtl`
provides the modules that file imports):
`DiffusionPipeline.from_pretrained("{source}", custom_pipeline="pipeline_stablemtl", trust_remote_code=True)`.

## Training
{chr(10).join(training) if training else "- not recorded"}

## Metrics
{metrics_text}

## Licence
Weights: {weights_licence}. Code: {CODE_LICENSE}.

## Citation
The method is StableMTL ([arXiv:{PAPER_ARXIV_ID}](https://arxiv.org/abs/{PAPER_ARXIV_ID})):
```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    ignore_patterns: list[str] | None = None,
) -> str:
    """Create ``repo_id`` if needed, upload ``folder`` less ``ignore_patterns``; return the commit URL."""
    repo_id = create_repo(repo_id, exist_ok=True, private=private, token=token).repo_id
    info = upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        token=token,
        commit_message=commit_message or "Upload stablemtl pipeline",
        create_pr=create_pr,
        ignore_patterns=ignore_patterns,
    )
    return str(info)


def write_metrics_to_model_card(
    folder: str | os.PathLike,
    metrics: Mapping[str, Mapping[str, Any]],
    evaluated_on: Sequence[str] | None = None,
) -> Path:
    """Record ``metrics`` (``{task: {metric: value}}``) in a saved pipeline folder and rewrite its card.

    The metrics go into ``model_index.json``'s ``training_info`` (so a later ``save_pretrained`` of the
    loaded pipeline keeps them) together with ``evaluation: {"data": evaluated_on}``; ``README.md`` is
    regenerated from it. Weights are not touched; both files are replaced atomically. Returns the card path.
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file() or not (folder / TASK_EMBEDDINGS_NAME).is_file():
        raise ValueError(f"{folder} is not a saved stablemtl pipeline folder (model_index.json, task tokens)")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{index_path} is not valid JSON: {err}") from err
    info = dict(index.get("training_info") or {})
    info["metrics"] = {task: dict(values) for task, values in metrics.items()}
    if evaluated_on:
        info["evaluation"] = {"data": list(evaluated_on)}
    index["training_info"] = info
    embeddings = TaskEmbeddings.load(folder)
    class_name = index.get("_class_name")
    card = make_model_card(
        embeddings.names,
        embeddings.prompts,
        info,
        pipeline_class=class_name if isinstance(class_name, str) else "StableMTLPipeline",
    )
    atomic_write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "README.md", str(card))
    return folder / "README.md"
