"""LoRA loading for ``StableMTLPipeline``: diffusers' LoRA methods, extended to task-adaptive LoRA.

``StableMTLLoraLoaderMixin`` is diffusers' ``StableDiffusionLoraLoaderMixin`` (so a plain SD LoRA file
still loads through it) plus task-adaptive adapters (:mod:`stablemtl.models.lora`, docs/lora.md): one
shared adapter, one adapter per task and their gates, all in one small safetensors file whose metadata
holds the adapter settings. The shared adapter uses diffusers' ``unet.`` keys.

    pipe = StableMTLPipeline.from_pretrained("path/to/base")
    pipe.load_lora_weights("path/to/adapters")  # folder, file or Hub id
    out = pipe(image, tasks=["depth", "normal"])  # one batched UNet call, each task with its adapter
    pipe.fuse_lora(task="depth")  # optional: merge shared + depth into the weights (depth only then)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from huggingface_hub import ModelCard, ModelCardData, hf_hub_download
from safetensors import safe_open
from safetensors.torch import save_file

from stablemtl.hub import push_folder_to_hub
from stablemtl.models.lora import SHARED_ADAPTER, TaskLoRA, TaskLoRASettings, task_adapter_name
from stablemtl.utils import atomic_path

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default name
METADATA_KEY = "stablemtl_ta_lora"  # safetensors metadata: the TaskLoRASettings as JSON


def read_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})


class StableMTLLoraLoaderMixin(StableDiffusionLoraLoaderMixin):
    """``load_lora_weights`` / ``save_lora_weights`` / ``fuse_lora`` / ``unfuse_lora`` /
    ``unload_lora_weights`` as in diffusers, for plain and task-adaptive LoRA on the UNet."""

    _lora_loadable_modules: Sequence[str] = ["unet"]  # the task tokens are cached: no text encoder LoRA

    # -- task-adaptive adapters ---------------------------------------------------------------------------
    @property
    def task_lora(self) -> TaskLoRA | None:
        """The task-adaptive adapters on the UNet, None when there are none."""
        return getattr(self, "_task_lora", None)

    def install_task_lora(self, settings: TaskLoRASettings) -> TaskLoRA:
        """Fresh (zero-contribution) shared and task adapters on the UNet, e.g. to train them."""
        unknown = sorted(set(settings.tasks) - set(self.tasks))
        if unknown:
            raise ValueError(f"tasks {unknown} have no task token in this pipeline (tasks: {self.tasks})")
        self._task_lora = TaskLoRA.install(self.unet, settings)
        return self._task_lora

    def lora_routing(
        self, tasks: Sequence[str] | None, count: int, task_major: bool = False
    ) -> AbstractContextManager:
        """Route the next UNet call of ``count`` images x ``tasks``: each sample uses the shared adapter plus
        its task's. Rows are image-major (all tasks of image 0, then image 1, as ``predict_latents``
        batches them) or, with ``task_major``, task-major (the multi-stream main call). A no-op without task
        adapters."""
        lora = self.task_lora
        if lora is None:
            return nullcontext()
        if tasks is None:
            raise ValueError("tasks= is needed to route the UNet call: task adapters are loaded")
        rows = [t for t in tasks for _ in range(count)] if task_major else list(tasks) * count
        return lora.routing(rows)

    # -- files -------------------------------------------------------------------------------------------
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | os.PathLike | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Load LoRA weights onto the UNet: a folder, a file, a Hub id (``weight_name``, ``revision``,
        ``cache_dir``, ``token``, ``local_files_only`` as in diffusers) or a state dict. Task-adaptive
        weights (saved by :meth:`save_lora_weights`) rebuild shared + task adapters and gates; anything else
        goes to diffusers' loader."""
        source = pretrained_model_name_or_path_or_dict
        if isinstance(source, dict):
            return super().load_lora_weights(source, adapter_name=adapter_name, **kwargs)
        path = _resolve_file(source, kwargs)
        state, metadata = read_lora_file(path)
        if METADATA_KEY not in metadata:
            return super().load_lora_weights(str(path), adapter_name=adapter_name, **kwargs)
        if adapter_name is not None:
            raise ValueError(
                "adapter_name does not apply to task-adaptive LoRA: its adapters are named by task"
            )
        if self.task_lora is not None:
            raise ValueError("task-adaptive LoRA weights are already loaded: unload_lora_weights() first")
        settings = TaskLoRASettings.from_dict(json.loads(metadata[METADATA_KEY]))
        lora = self.install_task_lora(settings)
        try:
            lora.load_state_dict(state)
        except ValueError as error:
            self.unload_lora_weights()
            raise ValueError(f"{path}: {error}") from error
        lora.set_trainable(False)

    def save_lora_weights(
        self,
        save_directory: str | os.PathLike,
        weight_name: str = LORA_WEIGHT_NAME,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        base_model: str | None = None,
        **hub_kwargs: Any,
    ) -> Path:
        """Write the task-adaptive adapters (``weight_name``, atomically) and a model card naming the base
        model (``base_model``, default: where this pipeline was loaded from) into ``save_directory``; with
        ``push_to_hub`` upload just that (``repo_id``, ``token``, ``private``, ``commit_message``,
        ``create_pr``). Returns the weights file."""
        lora = self.task_lora
        if lora is None:
            raise ValueError("this pipeline carries no task-adaptive LoRA adapters to save")
        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"save_directory {folder} is a file")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / weight_name
        with atomic_path(path) as tmp:
            save_file(
                lora.state_dict(), str(tmp), metadata={METADATA_KEY: json.dumps(lora.settings.to_dict())}
            )
        card = self.lora_model_card(repo_id, base_model)
        with atomic_path(folder / "README.md") as tmp:
            card.save(str(tmp))
        if push_to_hub:
            push_folder_to_hub(folder, repo_id or folder.name, **hub_kwargs)
        return path

    def push_lora_to_hub(self, repo_id: str, **hub_kwargs: Any) -> str:
        """Upload only the adapters and their model card to ``repo_id`` (the base model stays where it is)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_lora_weights(tmp, repo_id=repo_id)
            return push_folder_to_hub(tmp, repo_id, **hub_kwargs)

    def lora_model_card(self, repo_id: str | None = None, base_model: str | None = None) -> ModelCard:
        """The adapters' model card: the StableMTL pipeline they apply to, tasks, ranks, how to load them."""
        settings = self.task_lora.settings
        pipeline = type(self).__name__  # the pipeline class the adapters' UNet belongs to
        base = str(base_model or self.name_or_path or "unknown")
        is_hub_id = "/" in base and not os.path.exists(base)
        data = ModelCardData(
            library_name="diffusers",
            base_model=base if is_hub_id else None,
            tags=[
                "stablemtl",
                "lora",
                "task-adaptive-lora",
                "multi-task",
                "dense-prediction",
                *settings.tasks,
            ],
        )
        text = (
            f"---\n{data.to_yaml()}\n---\n\n# Task-adaptive LoRA adapters for StableMTL ({pipeline})\n\n"
            f"Base model: `{base}`. These weights are adapters only: a shared adapter (rank {settings.rank}) "
            f"on {', '.join(settings.targets)} of every block, and one gated adapter per task (rank "
            f"{settings.task_rank}, {'decoder' if settings.task_layers == 'dec' else 'all'} layers) for "
            f"{', '.join(settings.tasks)}.\n\n"
            f"```python\nfrom stablemtl.pipelines import {pipeline}\n\n"
            f'pipe = {pipeline}.from_pretrained("{base}")\n'
            f'pipe.load_lora_weights("{repo_id or "path/to/these/adapters"}")\n'
            f"out = pipe(image, tasks={settings.tasks!r})\n```\n"
        )
        return ModelCard(text)

    # -- merging -----------------------------------------------------------------------------------------
    def fuse_lora(self, task: str | None = None, lora_scale: float = 1.0, **kwargs: Any) -> None:
        """Merge adapters into the UNet weights. Task-adaptive: the shared adapter plus, with ``task``, that
        task's (the pipeline then predicts only ``task`` until :meth:`unfuse_lora`); without ``task`` only
        the shared adapter (task adapters are then not applied). Plain LoRA: as diffusers."""
        lora = self.task_lora
        if lora is None:
            kwargs.setdefault("components", ["unet"])
            return super().fuse_lora(lora_scale=lora_scale, **kwargs)
        adapters = [SHARED_ADAPTER]
        if task is not None:
            if task not in lora.settings.tasks:
                raise ValueError(f"task {task!r} has no adapter; adapted: {lora.settings.tasks}")
            lora.fold_gates(task)
            adapters.append(task_adapter_name(task))
        lora.set_routing(task or lora.settings.tasks[0])
        super().fuse_lora(components=["unet"], lora_scale=lora_scale, adapter_names=adapters)
        lora.fused_task = task if task is not None else ""

    def unfuse_lora(self, components: Sequence[str] = ("unet",), **kwargs: Any) -> None:
        super().unfuse_lora(components=list(components), **kwargs)
        if self.task_lora is not None:
            self.task_lora.fused_task = None

    def unload_lora_weights(self) -> None:
        """Remove every adapter (fused weights stay fused, as in diffusers)."""
        if self.task_lora is not None:
            self.task_lora.remove()
            self._task_lora = None
        super().unload_lora_weights()


def _resolve_file(source: str | os.PathLike, kwargs: dict[str, Any]) -> Path:
    """The local LoRA file of a file, a folder or a Hub id (downloaded as diffusers would)."""
    weight_name = kwargs.get("weight_name") or LORA_WEIGHT_NAME
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / weight_name).is_file():
            raise ValueError(f"{path} holds no {weight_name}; pass weight_name=")
        return path / weight_name
    hub = {
        k: kwargs[k]
        for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder")
        if k in kwargs
    }
    return Path(hf_hub_download(str(source), weight_name, **hub))
