"""Model cards and Hub uploads for saved stablemtl pipelines.

A card says what a user must know before trusting the weights: the tasks and their output spaces (depth is
affine-invariant, flows are per-axis normalised), the base model and its licence, how it was trained, the
metrics when known, and a snippet that loads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, create_repo, upload_folder

from stablemtl.tasks import get_task

# Licences of the usual bases; the weights derived from a base inherit its licence.
BASE_LICENSES = {
    "stabilityai/stable-diffusion-2": "openrail++",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-2-base": "openrail++",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
}
CODE_LICENSE = "Apache-2.0"


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
            ``learning_rate``, ``mixed_precision``, ``seed``, ``metrics`` (``{task: {metric: value}}``).
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
        tags=["stablemtl", "multi-task", "dense-prediction", *tasks],
        base_model=str(base) if base and "/" in str(base) and not os.path.exists(str(base)) else None,
    )
    task_lines = "\n".join(
        f'- `{t}` (prompt "{prompts.get(t, get_task(t).prompt)}"): {get_task(t).output_space}' for t in tasks
    )
    training = [
        f"- {key.replace('_', ' ')}: {value}" for key, value in info.items() if key not in ("metrics",)
    ]
    metrics = info.get("metrics")
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

# StableMTL: one diffusion UNet, {len(tasks)} dense-prediction tasks

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
{_format_metrics(metrics) if metrics else "Not evaluated yet."}

## Licence
Weights: {weights_licence}. Code: {CODE_LICENSE}.
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
