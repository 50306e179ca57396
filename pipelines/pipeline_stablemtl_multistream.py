"""StableMTL multi-stream pipeline: a frozen stage-1 UNet feeds task attention in a main UNet (paper §3.3).

Everything but the UNet step is ``StableMTLPipeline``'s (inputs, VAE, task tokens, decoding, saving). The
UNet step makes two calls per batch: the auxiliary UNet over every auxiliary task the requested tasks need,
then the main UNet over the requested tasks, whose self-attention layers attend, per pixel, to the other
tasks' auxiliary features (``stablemtl.models.MultiStreamUNet``). The official code makes T + T(T-1) UNet
passes for T tasks and re-encodes the image for each; this makes 2T evaluations in two calls and encodes
each frame once.

Components: ``unet`` (main), ``aux_unet`` (stage 1), ``task_attention``, ``vae``, ``scheduler`` and the
task tokens. ``model_index.json`` names the task attention ``["task_attention", "TaskAttention"]`` and its
folder holds ``task_attention.py``, so the folder loads from the Hub too; this class's ``from_pretrained``
loads that component with the installed stablemtl, without running code from the folder.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from stablemtl.models import task_attention as task_attention_module
from stablemtl.models.attention_processors import CAPTURE_POINTS
from stablemtl.models.multistream import MultiStreamUNet
from stablemtl.models.task_attention import TaskAttention
from stablemtl.models.task_tokens import TaskEmbeddings

# The module, not the class: diffusers' custom-pipeline loader wants one pipeline class in this file.
from stablemtl.pipelines import pipeline_stablemtl
from stablemtl.tasks import get_task

PIPELINE_FILE = "pipeline_stablemtl_multistream.py"
# How model_index.json names the component: the remote-code layout diffusers' Hub download accepts.
TASK_ATTENTION_ENTRY = ("task_attention", "TaskAttention")


class StableMTLMultiStreamPipeline(pipeline_stablemtl.StableMTLPipeline):
    """Multi-stream StableMTL: ``StableMTLPipeline``'s ``__call__`` contract and output, two UNets.

    Args (beyond ``StableMTLPipeline``'s):
        aux_unet: the frozen auxiliary UNet (the stage-1 model).
        task_attention: the ``TaskAttention`` weights; its tasks are the model's tasks.
        exclude_main_task: a task never attends to its own auxiliary features (official default).
        capture_point: where the auxiliary features are read (``attention_processors.CAPTURE_POINTS``).
    """

    model_cpu_offload_seq = "text_encoder->aux_unet->unet->vae"
    # Called from inside the main UNet's forward: it stays on the execution device.
    _exclude_from_cpu_offload: ClassVar[list[str]] = ["task_attention"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        aux_unet: UNet2DConditionModel,
        task_attention: TaskAttention,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        text_encoder: CLIPTextModel | None = None,
        tokenizer: CLIPTokenizer | None = None,
        task_embeddings: TaskEmbeddings | None = None,
        timestep: int = 999,
        input_noise: str = "deterministic",
        default_processing_resolution: int = 0,
        training_info: dict[str, Any] | None = None,
        second_frame: str = "duplicate",
        exclude_main_task: bool = True,
        capture_point: str = "self_attn_residual",
    ):
        super().__init__(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            task_embeddings=task_embeddings,
            timestep=timestep,
            input_noise=input_noise,
            default_processing_resolution=default_processing_resolution,
            training_info=training_info,
            second_frame=second_frame,
        )
        if capture_point not in CAPTURE_POINTS:
            raise ValueError(f"capture_point={capture_point!r} must be one of {CAPTURE_POINTS}")
        if aux_unet is unet:
            raise ValueError("unet and aux_unet must be two modules (copy the stage-1 UNet for the main one)")
        self.register_modules(aux_unet=aux_unet, task_attention=task_attention)
        self.register_to_config(exclude_main_task=bool(exclude_main_task), capture_point=capture_point)
        self._multistream: MultiStreamUNet | None = None

    # -- the two streams -----------------------------------------------------------------------------------
    @property
    def multistream(self) -> MultiStreamUNet:
        """The ``MultiStreamUNet`` over this pipeline's components (rebuilt when a component is replaced)."""
        current = self._multistream
        if (
            current is None
            or current.unet is not self.unet
            or current.aux_unet is not self.aux_unet
            or current.task_attention is not self.task_attention
        ):
            self._multistream = MultiStreamUNet(
                self.unet,
                self.aux_unet,
                self.task_attention,
                exclude_main_task=self.config.exclude_main_task,
                capture_point=self.config.capture_point,
            )
        return self._multistream

    @property
    def tasks(self) -> list[str]:
        """Tasks with both a task token and task-attention weights."""
        known = set(self.task_attention.task_names)
        return [t for t in super().tasks if t in known]

    def input_tasks(self, tasks: Sequence[str]) -> list[str]:
        """The requested tasks, then the auxiliary tasks they attend to."""
        aux = self.multistream.aux_tasks_for(tasks)
        return list(tasks) + [t for t in aux if t not in tasks]

    def stream_samples(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        tasks: Sequence[str],
        use_pair: bool,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The UNet inputs ``{task: [B,12,h,w]}`` of the requested ``tasks`` and of the auxiliary tasks they
        attend to, from frame latents ``[B,4,h,w]``; pair tasks see ``second`` when ``use_pair``."""
        count, step = first.shape[0], self.latent_step
        samples = {}
        for task in self.input_tasks(tasks):
            has_pair = torch.full((count,), use_pair and get_task(task).needs_pair, device=first.device)
            # With one generator per image (a list), image i's inputs draw from generator[i], task by task.
            samples[task] = step.unet_input(first, second, has_pair, generator)
        return samples

    def predict_latents(
        self,
        first: torch.Tensor,
        second: torch.Tensor,
        condition: torch.Tensor,
        condition_mask: torch.Tensor | None,
        pair_mask: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        tasks: Sequence[str] | None = None,
        use_pair: bool = False,
    ) -> torch.Tensor:
        """Two UNet calls for every (image, task): the auxiliary one over the needed auxiliary tasks, the main
        one over ``tasks``. Returns x0 latents ``[B*T,4,h,w]`` ordered image-major, as the parent's."""
        if tasks is None:
            raise ValueError("the multi-stream pipeline needs the task names of the request")
        count = first.shape[0]
        samples = self.stream_samples(first, second, tasks, use_pair, generator)
        # Task-adaptive LoRA on the main UNet: its rows are task-major (row j*B + b is task j, image b).
        with self.lora_routing(tasks, count, task_major=True):
            output = self.multistream(
                samples, list(tasks), self._require_task_embeddings(), timestep=self.config.timestep
            )
        latents = torch.stack([output.main[t] for t in tasks], dim=1)  # [B,T,4,h,w]
        return latents.flatten(0, 1)  # [B*T,4,h,w] image-major

    # -- construction and persistence ---------------------------------------------------------------------
    @classmethod
    def from_stage1(
        cls,
        stage1: str | os.PathLike | pipeline_stablemtl.StableMTLPipeline,
        tasks: Sequence[str] | None = None,
        layers: str = "all",
        n_heads: int = 4,
        query_hidden_dim: int = 640,
        fusion: str = "attention",
        exclude_main_task: bool = True,
        capture_point: str = "self_attn_residual",
        **load_kwargs: Any,
    ) -> StableMTLMultiStreamPipeline:
        """An untrained multi-stream pipeline from a stage-1 pipeline (folder, Hub id or object): the main
        UNet is a copy of the stage-1 UNet, the auxiliary UNet the stage-1 UNet itself (frozen), the task
        attention new and zero-initialised, so it predicts what the stage-1 pipeline predicts."""
        if not isinstance(stage1, pipeline_stablemtl.StableMTLPipeline):
            stage1 = pipeline_stablemtl.StableMTLPipeline.from_pretrained(stage1, **load_kwargs)
        if stage1.task_lora is not None:
            raise ValueError(
                "the stage-1 model carries task-adaptive LoRA adapters: the auxiliary stream would need a "
                "different adapter per auxiliary task, which it does not support; train stage 1 fully, "
                "or put the adapters on the stage-2 main UNet (--lora_rank of the stage-2 script)"
            )
        embeddings = stage1._require_task_embeddings()
        tasks = list(embeddings.names if tasks is None else tasks)
        missing = [t for t in tasks if t not in embeddings]
        if missing:
            raise ValueError(f"tasks {missing} have no task token in the stage-1 model ({embeddings.names})")
        aux_unet = stage1.unet
        task_attention = TaskAttention.from_unet(
            aux_unet, tasks, layers=layers, n_heads=n_heads, query_hidden_dim=query_hidden_dim, fusion=fusion
        ).to(aux_unet.device)
        if aux_unet.dtype != task_attention.dtype:
            task_attention.to(dtype=aux_unet.dtype)
        config = stage1.config
        return cls(
            unet=copy.deepcopy(aux_unet).requires_grad_(True),  # the trainable stream
            aux_unet=aux_unet,
            task_attention=task_attention,
            vae=stage1.vae,
            scheduler=stage1.scheduler,
            text_encoder=stage1.text_encoder,
            tokenizer=stage1.tokenizer,
            task_embeddings=embeddings,
            timestep=config.timestep,
            input_noise=config.input_noise,
            default_processing_resolution=config.default_processing_resolution,
            training_info={**(config.training_info or {}), "stage1_model": str(stage1.name_or_path or "")},
            second_frame=config.second_frame,
            exclude_main_task=exclude_main_task,
            capture_point=capture_point,
        )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> StableMTLMultiStreamPipeline:
        """Load a saved multi-stream pipeline (folder or Hub id). The task attention is read with this
        package's ``TaskAttention`` (no code from the folder runs); the rest as ``StableMTLPipeline``."""
        if "task_attention" not in kwargs:
            hub_kwargs = {
                k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs
            }
            if "torch_dtype" in kwargs:
                hub_kwargs["torch_dtype"] = kwargs["torch_dtype"]
            kwargs["task_attention"] = TaskAttention.from_pretrained(
                pretrained_model_name_or_path, subfolder="task_attention", **hub_kwargs
            )
        with _module_alias(TASK_ATTENTION_ENTRY[0], task_attention_module):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """``StableMTLPipeline.save_pretrained``, with the task attention recorded in ``model_index.json``
        under the remote-code layout (``task_attention/task_attention.py``) that Hub loading accepts."""
        self.register_to_config(task_attention=TASK_ATTENTION_ENTRY)
        super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def _source_files(cls) -> list[Path]:
        return [*super()._source_files(), Path(__file__).with_name(PIPELINE_FILE)]


@contextmanager
def _module_alias(name: str, module) -> Iterator[None]:
    """Make ``import name`` resolve to ``module`` for the duration of the block. diffusers checks a passed
    component against the module ``model_index.json`` names, and imports only already-imported modules."""
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
