"""Saving, loading and publishing StableMTL pipeline folders (the persistence half of the pipelines).

A saved folder is a diffusers pipeline folder (safetensors components, ``model_index.json`` without
custom-package entries, so it loads from the Hub too) plus the task tokens
(``task_embeddings.safetensors``), the pipeline's source file (for ``custom_pipeline``) and a model card.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging

from stablemtl.hub import make_model_card, push_folder_to_hub
from stablemtl.pipelines.folder_io import check_save_directory, staged_save
from stablemtl.pipelines.lora_loading import LORA_WEIGHT_NAME

logger = logging.get_logger(__name__)


class StableMTLFolderMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` of the StableMTL pipelines (placed
    before ``DiffusionPipeline`` in their bases)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """Load a saved pipeline (folder or Hub id) with its task tokens (``task_embeddings.safetensors``).

        A local folder written by a LoRA run (the base plus ``pytorch_lora_weights.safetensors``) loads
        with its adapters, so it predicts as it was trained; ``unload_lora_weights()`` gives the base."""
        hub_kwargs = {
            k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs
        }
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        pipe._hub_kwargs = hub_kwargs
        pipe._loaded_task_embeddings()  # now, so that a missing file fails at load time
        adapters = Path(pretrained_model_name_or_path) / LORA_WEIGHT_NAME
        if adapters.is_file():
            pipe.load_lora_weights(str(adapters.parent))
        return pipe

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        push_to_hub: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write the pipeline into ``save_directory``: diffusers components (safetensors),
        ``model_index.json``, the task tokens, this pipeline's source file (for ``custom_pipeline``) and a
        model card (README.md). With ``push_to_hub``, upload it to ``repo_id`` (default: the folder name).

        As diffusers does, this writes into the folder: other files in it (checkpoints, notes) are kept. Each
        file is replaced atomically and ``model_index.json`` comes last, so an interrupted save never looks
        complete (see ``folder_io``). ``safe_serialization=False`` is accepted for compatibility with
        diffusers code but ignored with a warning: stablemtl writes safetensors only (pickles run code on
        load). ``ValueError`` when ``save_directory`` is an existing file (checked before any write)."""
        if not safe_serialization:
            logger.warning(
                "safe_serialization=False ignored: stablemtl writes safetensors only (pickled weights can "
                "run code when loaded)"
            )
        save_directory = check_save_directory(save_directory)
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "token", "private", "commit_message", "create_pr")
                      if k in kwargs}  # fmt: skip
        embeddings = self._require_task_embeddings()
        with staged_save(save_directory) as tmp:
            super().save_pretrained(tmp, safe_serialization=True, variant=variant, **kwargs)
            embeddings.save(tmp)
            for source in self._source_files():
                shutil.copyfile(source, tmp / source.name)
            card = make_model_card(
                self.tasks,
                embeddings.prompts,
                self.config.training_info,
                repo_id=hub_kwargs.get("repo_id"),
                pipeline_class=type(self).__name__,
            )
            card.save(tmp / "README.md")
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", save_directory.name)
            push_folder_to_hub(save_directory, repo_id, **hub_kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        variant: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Save to a temporary folder (with the generated model card) and upload it to ``repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "pipeline"
            self.save_pretrained(folder, variant=variant, repo_id=repo_id)
            return push_folder_to_hub(folder, repo_id, token, private, commit_message, create_pr)


def component_folder(model: torch.nn.Module) -> Path | None:
    """The pipeline folder a component was loaded from (diffusers records ``<folder>/<component>`` as the
    model's ``_name_or_path``), None for a component built in memory."""
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source or not Path(str(source)).is_dir():
        return None
    folder = Path(str(source)).absolute().parent
    return folder if (folder / "model_index.json").is_file() else None


def is_hub_snapshot(folder: Path) -> bool:
    """Whether ``folder`` is ``<cache_dir>/models--owner--name/snapshots/<commit>`` of huggingface_hub."""
    return folder.parent.name == "snapshots" and folder.parents[1].name.startswith("models--")
