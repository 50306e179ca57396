"""Task-token access of the StableMTL pipelines: the cached text embeddings of the task prompts, loaded
lazily from wherever the pipeline was loaded, and extended with ``add_tasks`` (paper Sec. 3.1: the UNet is
conditioned on the text-encoder embedding of the task's name)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from stablemtl.models.task_tokens import TASK_EMBEDDINGS_NAME, TaskEmbeddings
from stablemtl.pipelines.pipeline_folder import component_folder, is_hub_snapshot
from stablemtl.tasks import check_tasks, get_task


class TaskTokenMixin:
    """``task_embeddings``, ``tasks`` and ``add_tasks`` for a pipeline with ``unet``, ``text_encoder``,
    ``tokenizer``, ``name_or_path`` and the attributes ``_task_embeddings`` and ``_hub_kwargs``."""

    _task_embeddings: TaskEmbeddings | None
    _hub_kwargs: dict

    @property
    def task_embeddings(self) -> TaskEmbeddings | None:
        """The cached task tokens, read on first use from where the pipeline was loaded (this is how a
        pipeline loaded by plain ``DiffusionPipeline.from_pretrained`` finds them). None, like any optional
        component, for a pipeline built without them; using such a pipeline raises a ``ValueError``."""
        return self._loaded_task_embeddings()

    def _require_task_embeddings(self) -> TaskEmbeddings:
        embeddings = self._loaded_task_embeddings()
        if embeddings is None:
            raise ValueError(
                "this pipeline has no task embeddings; build it with StableMTLPipeline.from_base, "
                "load it with from_pretrained, or pass task_embeddings="
            )
        return embeddings

    def _loaded_task_embeddings(self) -> TaskEmbeddings | None:
        """The task tokens, loaded lazily; None when the pipeline was neither given nor loaded with them.

        Plain ``DiffusionPipeline.from_pretrained(repo, cache_dir=..., revision=..., token=...)`` never
        calls this class's ``from_pretrained``, so those arguments are unknown here. It did resolve the
        repo to one local snapshot, the folder the UNet was read from: the tokens are read from that
        snapshot, or fetched into it (same cache, same commit) when diffusers did not download them.
        """
        if self._task_embeddings is not None or not self.name_or_path:
            return self._task_embeddings
        snapshot = component_folder(self.unet)
        if snapshot is not None and (snapshot / TASK_EMBEDDINGS_NAME).is_file():
            self._task_embeddings = TaskEmbeddings.load(snapshot)
        elif snapshot is not None and is_hub_snapshot(snapshot) and not Path(self.name_or_path).is_dir():
            # <cache_dir>/models--owner--name/snapshots/<commit>: ask for that commit in that cache.
            hub_kwargs = {"cache_dir": snapshot.parents[2], "revision": snapshot.name, **self._hub_kwargs}
            self._task_embeddings = TaskEmbeddings.load(self.name_or_path, **hub_kwargs)
        else:
            self._task_embeddings = TaskEmbeddings.load(self.name_or_path, **self._hub_kwargs)
        return self._task_embeddings

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks this pipeline has task tokens for, in order."""
        return self._require_task_embeddings().names

    def add_tasks(self, tasks: str | Sequence[str], prompts: Mapping[str, str] | None = None) -> None:
        """Compute and cache the task tokens of registered ``tasks`` (prompts default to ``Task.prompt``).

        Needs ``text_encoder`` and ``tokenizer``. The UNet must then be trained on the new tasks.
        """
        tasks = check_tasks(tasks)
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                "adding a task needs the text encoder and tokenizer: load them with the pipeline, e.g. "
                "from_pretrained(folder, text_encoder=CLIPTextModel.from_pretrained(base, subfolder="
                "'text_encoder'), tokenizer=CLIPTokenizer.from_pretrained(base, subfolder='tokenizer'))"
            )
        prompts = {t: (prompts or {}).get(t, get_task(t).prompt) for t in tasks}
        if self._task_embeddings is None and not self.name_or_path:
            self._task_embeddings = TaskEmbeddings.compute(self.text_encoder, self.tokenizer, prompts)
        else:
            self._require_task_embeddings().add(self.text_encoder, self.tokenizer, prompts)
