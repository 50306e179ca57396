"""StableMTL single-stream pipeline: one Stable Diffusion UNet, many dense-prediction tasks.

See docs/architecture.md.

The UNet receives ``[z(frame_t), z(frame_t+1 or frame_t), zeros]`` (12 latent channels) at a fixed timestep,
conditioned on the cached text embedding of the task prompt, and returns the x0 latent of the task's label
drawn as an image; the VAE decodes it and the task turns the image into a prediction. Unlike the official
code (docs/official-code.md), all requested tasks of a batch share one VAE encode per frame and one
batched UNet call.

This file is copied into every saved folder so that plain diffusers loads it as a custom pipeline:
``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_stablemtl", trust_remote_code=True)``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput, logging
from transformers import CLIPTextModel, CLIPTokenizer

from stablemtl.models.conv_in import widen_conv_in
from stablemtl.models.latent_step import LatentStep, LatentStepSettings
from stablemtl.models.task_tokens import TaskEmbeddings
from stablemtl.pipelines.call_arguments import check_call_arguments, resolution_limit
from stablemtl.pipelines.image_processor import ImageInput, StableMTLImageProcessor
from stablemtl.pipelines.lora_loading import StableMTLLoraLoaderMixin
from stablemtl.pipelines.pipeline_folder import StableMTLFolderMixin
from stablemtl.pipelines.task_token_access import TaskTokenMixin
from stablemtl.tasks import PAPER_TASKS, check_tasks, get_task

logger = logging.get_logger(__name__)

PIPELINE_FILE = "pipeline_stablemtl.py"


@dataclass
class StableMTLOutput(BaseOutput):
    """Predictions of ``StableMTLPipeline``: one entry per requested task, **in the requested task order**.

    As in every diffusers output, positional access follows the entries: ``out[0]``, ``out.to_tuple()``
    and the ``return_dict=False`` tuple all hold the predictions in the order of the call's ``tasks``;
    ``out[name]`` and ``out.name`` work for every task, built-in or not (an unrequested built-in is None).
    ``predictions`` is the ``{task: prediction}`` dict view of the same entries.

    With ``output_type="pt"`` each is a ``(N, C, H, W)`` tensor, with ``"np"`` an ``(N, H, W, C)`` array:
    semantic ``C=1`` int64 class ids; depth ``C=1`` affine-invariant in [0, 1]; normal ``C=3`` unit vectors;
    optical_flow ``C=2`` and scene_flow ``C=3`` per-axis normalised in [-1, 1]; albedo ``C=3`` and shading
    ``C=1`` in [0, 1].
    """

    semantic: np.ndarray | torch.Tensor | None = None
    depth: np.ndarray | torch.Tensor | None = None
    normal: np.ndarray | torch.Tensor | None = None
    optical_flow: np.ndarray | torch.Tensor | None = None
    scene_flow: np.ndarray | torch.Tensor | None = None
    albedo: np.ndarray | torch.Tensor | None = None
    shading: np.ndarray | torch.Tensor | None = None

    @classmethod
    def from_predictions(cls, predictions: Mapping[str, np.ndarray | torch.Tensor]) -> StableMTLOutput:
        """An output whose entries are ``predictions`` in their order (custom tasks included)."""
        output = cls()  # every field None: no entry yet
        for task, prediction in predictions.items():
            output[task] = prediction  # BaseOutput keeps the item and the attribute in step
        return output

    @property
    def predictions(self) -> dict[str, np.ndarray | torch.Tensor]:
        """``{task: prediction}`` of every requested task, in the requested order."""
        return dict(self.items())


class StableMTLPipeline(StableMTLFolderMixin, TaskTokenMixin, DiffusionPipeline, StableMTLLoraLoaderMixin):
    """Multi-task dense prediction with a Stable Diffusion UNet in one deterministic step.

    Args:
        unet: ``UNet2DConditionModel`` with ``in_channels = 3 * latent channels`` (see ``widen_conv_in``).
        vae: ``AutoencoderKL``; images and predictions pass through it (scale ``vae.config.scaling_factor``).
        scheduler: kept for the diffusers layout (its ``prediction_type`` is ``"sample"``); the pipeline
            uses the single fixed ``timestep``.
        text_encoder, tokenizer: optional, only needed to add a task (``add_tasks``).
        task_embeddings: the cached task tokens; loaded from the folder by ``from_pretrained``. They are a
            component (in ``pipe.components``, so ``StableMTLPipeline(**pipe.components)`` and ``from_pipe``
            carry them) but not a diffusers module: they are saved as ``task_embeddings.safetensors``
            beside ``model_index.json``, which never names them (a custom component entry there would break
            loading from the Hub).
        timestep: the fixed UNet timestep (spec: 999).
        input_noise: ``"deterministic"`` (zero target latent, the paper's default) or ``"random"`` (standard
            normal target latent drawn with ``generator``).
        second_frame: second-frame latent of a task without a frame pair (non-flow tasks, and flow tasks
            called without ``next_image``): ``"duplicate"`` (the first frame's, official) or ``"zero"``;
            must match the training objective's setting.
        default_processing_resolution: longer edge the images are resized to when ``processing_resolution``
            is not given; 0 processes at the native size.
        training_info: what the training run recorded (base model, data, steps, metrics) for the model card.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[list[str]] = ["text_encoder", "tokenizer", "task_embeddings"]
    # Not registered with register_modules, hence absent from the config and from model_index.json.
    _unregistered_components: ClassVar[tuple[str, ...]] = ("task_embeddings",)

    def __init__(
        self,
        unet: UNet2DConditionModel,
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
    ):
        super().__init__()
        LatentStepSettings(int(timestep), second_frame, input_noise).validate(
            scheduler.config.num_train_timesteps
        )
        self.register_modules(
            unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer
        )
        # Settings only (no lists at the top level: diffusers would take them for components).
        self.register_to_config(
            timestep=int(timestep),
            input_noise=input_noise,
            default_processing_resolution=int(default_processing_resolution),
            training_info=dict(training_info) if training_info else None,
            second_frame=second_frame,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = StableMTLImageProcessor(vae_scale_factor=self.vae_scale_factor)
        if task_embeddings is not None and not isinstance(task_embeddings, TaskEmbeddings):
            raise ValueError(
                f"task_embeddings must be a TaskEmbeddings, got {type(task_embeddings).__name__}"
            )
        self._task_embeddings = task_embeddings
        self._hub_kwargs: dict[str, Any] = {}  # revision/cache_dir/token of our from_pretrained

    @property
    def components(self) -> dict[str, Any]:
        """diffusers' components plus ``task_embeddings`` (loaded now if still lazy), so that
        ``StableMTLPipeline(**pipe.components)`` and ``from_pipe`` build working pipelines."""
        names, _ = self._get_signature_keys(self)
        registered = {n: getattr(self, n) for n in names if n not in self._unregistered_components}
        return {**registered, "task_embeddings": self._loaded_task_embeddings()}

    # -- device and dtype ------------------------------------------------------------------------------------
    @property
    def _execution_device(self) -> torch.device:
        """Where the models run. diffusers walks every submodule of every component looking for offload
        hooks, milliseconds per call on a small model. Offloading (accelerate's or diffusers' group offload)
        always hooks the component itself, so when no component carries a hook this returns what diffusers
        would (``self.device``: the first component not on CPU, else the first) from first parameters."""
        names, _ = self._get_signature_keys(self)
        names = [n for n in names if n not in self._unregistered_components]
        modules = [m for m in (getattr(self, n, None) for n in names) if isinstance(m, torch.nn.Module)]
        if not modules or any(hasattr(m, "_hf_hook") or hasattr(m, "_diffusers_hook") for m in modules):
            return super()._execution_device
        devices = [next(itertools.chain(m.parameters(), m.buffers()), None) for m in modules]
        if any(d is None for d in devices):
            return super()._execution_device
        devices = [d.device for d in devices]
        return next((d for d in devices if d.type not in ("cpu", "meta")), devices[0])

    def set_training_info(self, **info: Any) -> None:
        """Record training facts for the model card, merged into ``config.training_info`` (``base_model``,
        ``datasets``, ``max_train_steps``, ``metrics={task: {metric: value}}``, ...); saved with the model."""
        merged = dict(self.config.training_info or {})
        merged.update(info)
        self.register_to_config(training_info=merged)

    # -- inputs ---------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        image: ImageInput,
        next_image: ImageInput | None,
        tasks: list[str],
        processing_resolution: int,
        resample_method_input: str,
        resample_method_output: str,
        batch_size: int,
        output_type: str,
        generator: torch.Generator | list[torch.Generator] | None,
        max_processing_resolution: int | None = None,
    ) -> int:
        """Validate every argument (``ValueError`` naming it); return the number of input images."""
        embeddings = self._require_task_embeddings()
        in_channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if in_channels != 3 * latent_channels:
            raise ValueError(
                f"unet takes {in_channels} input channels; StableMTL needs {3 * latent_channels} "
                "([z_t, z_t+1, target]): widen it with stablemtl.models.conv_in.widen_conv_in"
            )
        if self.unet.config.cross_attention_dim != embeddings.dim:
            raise ValueError(
                f"task embeddings have width {embeddings.dim}, the unet expects "
                f"{self.unet.config.cross_attention_dim}"
            )
        missing = [t for t in tasks if t not in embeddings]
        if missing:
            raise ValueError(
                f"tasks {missing} have no task token in this model (it knows: {', '.join(self.tasks)}); "
                "add_tasks() computes one, after which the UNet must be trained on them"
            )
        count, size = self.image_processor.describe(image, "image")
        check_call_arguments(
            processing_resolution,
            self.vae_scale_factor,
            self.max_processing_resolution(max_processing_resolution),
            resample_method_input,
            resample_method_output,
            batch_size,
            output_type,
            generator,
            count,
        )
        if next_image is not None:
            next_count, next_size = self.image_processor.describe(next_image, "next_image")
            if (next_count, next_size) != (count, size):
                raise ValueError(
                    f"next_image ({next_count} image(s) of size {next_size}) must match image "
                    f"({count} image(s) of size {size})"
                )
        return count

    def max_processing_resolution(self, override: int | None = None) -> int:
        """The largest ``processing_resolution`` a call accepts: ``override``, else a multiple of the training
        resolution (``default_processing_resolution``; see ``call_arguments.resolution_limit``)."""
        return resolution_limit(self.config.default_processing_resolution, override)

    # -- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        next_image: ImageInput | None = None,
        tasks: str | Sequence[str] | None = None,
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        resample_method_input: str = "bilinear",
        resample_method_output: str = "bilinear",
        batch_size: int = 1,
        output_type: str = "np",
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        max_processing_resolution: int | None = None,
    ) -> StableMTLOutput | tuple:
        """Predict ``tasks`` for each image (and its next frame, for flow tasks).

        Args:
            image: PIL image, numpy ``(H, W[, C])``/``(N, H, W, C)``, torch ``([C,] H, W)``/``(N, C, H, W)``,
                or a list of those (equal sizes). Floats in [0, 1], uint8/uint16 scaled; grey and RGBA
                converted to RGB.
            next_image: the following frames, same count and size; used by the flow tasks. Without it a flow
                task sees the frame twice (the official "duplicate" fallback) and a warning is logged.
            tasks: task names (default: every task the model knows).
            processing_resolution: longer edge for processing, a multiple of 8 (0: native size; default: the
                config's ``default_processing_resolution``). Sizes are padded to the latent grid.
            match_input_resolution: resize predictions back to the input size (else the processing size).
            resample_method_input / resample_method_output: interpolation for the resizes (class ids always
                use nearest).
            batch_size: images per UNet call; each call holds ``batch_size * len(tasks)`` samples.
            output_type: ``"np"`` (``(N, H, W, C)`` arrays) or ``"pt"`` (``(N, C, H, W)`` tensors).
            generator: only used with ``input_noise="random"``: one ``torch.Generator`` for the whole call,
                or a list with one per image (image ``i`` then gets the same noise as a call on it alone with
                ``generator[i]``, whatever the batching).
            return_dict: return a ``StableMTLOutput`` (else a tuple of predictions in ``tasks`` order; both
                index alike: ``out[0]`` is the first requested task).
            max_processing_resolution: the largest ``processing_resolution`` accepted; default
                ``4 * default_processing_resolution`` (the training resolution), or 4096 when the model
                records none. Raise it to process larger on purpose.
        """
        # 0. Resolve defaults.
        tasks = check_tasks(self.tasks if tasks is None else tasks)
        if processing_resolution is None:
            processing_resolution = self.config.default_processing_resolution
        if isinstance(generator, tuple):
            generator = list(generator)

        # 1. Check inputs.
        num_images = self.check_inputs(
            image, next_image, tasks, processing_resolution, resample_method_input, resample_method_output,
            batch_size, output_type, generator, max_processing_resolution,
        )  # fmt: skip
        pair_tasks = [get_task(t).needs_pair for t in tasks]
        if any(pair_tasks) and next_image is None:
            logger.warning(
                "tasks %s need a frame pair but next_image is None: they get the second_frame=%r input "
                "instead; expect weak flow predictions",
                [t for t, pair in zip(tasks, pair_tasks) if pair],
                self.config.second_frame,
            )
        # Tasks whose UNet input is built (a multi-stream model also needs its auxiliary tasks' inputs).
        use_pair = next_image is not None and any(get_task(t).needs_pair for t in self.input_tasks(tasks))
        # Without a next frame every task takes the second_frame fallback, as in training.
        pair_tasks = [pair and use_pair for pair in pair_tasks]
        device = self._execution_device
        dtype, vae_dtype = _input_dtype(self.unet, "conv_in"), _input_dtype(self.vae, "encoder.conv_in")

        # 2. Load and prepare images: [N,3,H,W] in [0,1] -> [N,3,PPH,PPW] in [-1,1].
        frames = self.image_processor.load_images(image, "image")  # [N,3,H,W]
        original_size = tuple(frames.shape[-2:])
        frames, padding = self.image_processor.prepare(
            frames, processing_resolution, resample_method_input, device, vae_dtype
        )  # [N,3,PPH,PPW]
        next_frames = None
        if use_pair:
            next_frames = self.image_processor.load_images(next_image, "next_image")
            next_frames, _ = self.image_processor.prepare(
                next_frames, processing_resolution, resample_method_input, device, vae_dtype
            )  # [N,3,PPH,PPW]

        # 3. Task conditioning, shared by every batch: [T,L,D] and a [T,L] mask when prompt lengths differ.
        condition, condition_mask = self._require_task_embeddings().batch(tasks, device=device, dtype=dtype)
        pair_mask = torch.tensor(pair_tasks, device=device)  # [T]

        # 4. Predict batch by batch: one VAE encode of all frames, one UNet call for all tasks, one decode.
        step, decoded = self.latent_step, []
        for start in self.progress_bar(range(0, num_images, batch_size)):
            batch = frames[start : start + batch_size]  # [B,3,PPH,PPW]
            count = batch.shape[0]
            if next_frames is not None:
                batch = torch.cat([batch, next_frames[start : start + batch_size]])  # [2B,3,PPH,PPW]
            latents = step.encode(batch, vae_dtype).to(dtype)  # [B or 2B,4,h,w]
            first, second = latents[:count], latents[count:] if next_frames is not None else latents
            batch_generator = generator[start : start + count] if isinstance(generator, list) else generator
            x0 = self.predict_latents(
                first, second, condition, condition_mask, pair_mask, batch_generator, tasks, use_pair
            )  # [B*T,4,h,w]
            image3 = step.decode(x0)  # [B*T,3,PPH,PPW] float32
            decoded.append(image3.unflatten(0, (count, len(tasks))))  # [B,T,3,PPH,PPW]
        image3 = torch.cat(decoded)  # [N,T,3,PPH,PPW]

        # 5. Remove padding, decode each task's prediction, resize to the input size.
        target_size = original_size if match_input_resolution else None
        predictions = {}
        for index, task in enumerate(tasks):
            task_image3 = self.image_processor.unpad_image(image3[:, index], padding)  # [N,3,PH,PW]
            prediction = self.decode_prediction(task, task_image3, target_size, resample_method_output)
            if output_type == "np":
                prediction = prediction.cpu().permute(0, 2, 3, 1).numpy()  # [N,H,W,C]
            predictions[task] = prediction

        # 6. Offload models and pack the output.
        self.maybe_free_model_hooks()
        if not return_dict:
            return tuple(predictions[t] for t in tasks)
        return StableMTLOutput.from_predictions(predictions)

    def predict(
        self, images: torch.Tensor, next_images: torch.Tensor | None, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Predictor contract: ``images``/``next_images`` ``(B, 3, H, W)`` in [0, 1] ->
        ``{task: (B, C, H, W)}`` torch predictions at the input resolution, all images in one batch."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError("images must be a (B, 3, H, W) tensor in [0, 1]")
        # One batch: a progress bar of one step would only add a line per call to the caller's own bar.
        bar_config = dict(getattr(self, "_progress_bar_config", {}))
        self.set_progress_bar_config(**{**bar_config, "disable": True})
        try:
            output = self(
                images,
                next_image=next_images,
                tasks=list(tasks),
                batch_size=images.shape[0],
                output_type="pt",
            )
        finally:
            self.set_progress_bar_config(**bar_config)
        return output.predictions

    # -- steps ----------------------------------------------------------------------------------------------
    def input_tasks(self, tasks: Sequence[str]) -> list[str]:
        """The tasks whose UNet input a request for ``tasks`` builds (here: those tasks)."""
        return list(tasks)

    @property
    def latent_step(self) -> LatentStep:
        """The shared latent step (VAE encode/decode, UNet input, timestep) with this pipeline's settings."""
        settings = LatentStepSettings(self.config.timestep, self.config.second_frame, self.config.input_noise)
        return LatentStep(self.vae, settings)

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
        """One UNet call for every (image, task): ``[B,4,h,w]`` latents of both frames, ``[T,L,D]`` task
        tokens -> x0 latents ``[B*T,4,h,w]`` ordered image-major (all tasks of image 0, then image 1, ...).
        Tasks with ``pair_mask`` False get ``config.second_frame``: the first frame again or zeros.
        ``tasks`` (the T names) route task-adaptive LoRA adapters when loaded (docs/lora.md); with
        ``use_pair`` (``second`` holds next frames) they serve subclasses that build inputs of other tasks."""
        count, num_tasks = first.shape[0], condition.shape[0]
        if isinstance(generator, list):
            # One generator per image (Marigold's convention): image i's T targets come from generator[i].
            generator = [g for g in generator for _ in range(num_tasks)]
        step = self.latent_step
        sample = step.unet_input(
            first.repeat_interleave(num_tasks, dim=0),  # [B*T,4,h,w]
            second.repeat_interleave(num_tasks, dim=0),
            has_pair=pair_mask.repeat(count),
            generator=generator,
        )  # [B*T,12,h,w]
        hidden = condition.repeat(count, 1, 1)  # [B*T,L,D]
        mask = None if condition_mask is None else condition_mask.repeat(count, 1)  # [B*T,L]
        with self.lora_routing(tasks, count):
            return step.predict(self.unet, sample, hidden, mask)

    def decode_prediction(
        self, task: str, image3: torch.Tensor, size: tuple[int, int] | None, resample_method: str
    ) -> torch.Tensor:
        """``image3 [N,3,h,w]`` -> the task's prediction, resized to ``size`` when given. Float outputs are
        decoded from the resized image (so unit normals stay unit); class ids are resized by nearest."""
        decoder = get_task(task)
        if size is None or tuple(image3.shape[-2:]) == tuple(size):
            return decoder.decode(image3)
        if not decoder.is_discrete:
            resized = self.image_processor.resize_antialias(image3, size, resample_method, is_aa=False)
            return decoder.decode(resized)
        prediction = decoder.decode(image3)
        resized = self.image_processor.resize_antialias(
            prediction.float(), size, "nearest-exact", is_aa=False
        )
        return resized.to(prediction.dtype)

    # -- construction (persistence: pipeline_folder.StableMTLFolderMixin) -----------------------------------
    @classmethod
    def from_base(
        cls,
        base: str | os.PathLike,
        tasks: str | Sequence[str] | None = None,
        prompts: Mapping[str, str] | None = None,
        keep_text_encoder: bool = False,
        torch_dtype: torch.dtype | None = None,
        **load_kwargs: Any,
    ) -> StableMTLPipeline:
        """A fresh stage-1 pipeline from a Stable Diffusion base (a folder or a Hub id).

        Loads unet, vae, text encoder, tokenizer and scheduler; widens ``conv_in`` to 3x the latent channels
        (tiled, scaled 1/3); computes the task tokens of ``tasks`` from their prompts (default: the paper's
        seven, ``stablemtl.tasks.PAPER_TASKS``; other registered tasks such as ``semantic_nyud`` are named);
        sets the scheduler to x0 (``"sample"``) prediction. The text encoder and tokenizer are kept only
        with ``keep_text_encoder`` (they are needed to add tasks later, never for inference).
        ``load_kwargs`` (``revision``, ``cache_dir``, ``local_files_only``, ``token``, ``variant``) go to
        every ``from_pretrained``.
        """
        tasks = check_tasks(PAPER_TASKS if tasks is None else tasks)
        dtype_kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
        unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", **dtype_kwargs, **load_kwargs)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **dtype_kwargs, **load_kwargs)
        hub_kwargs = {k: v for k, v in load_kwargs.items() if k != "variant"}
        text_encoder = CLIPTextModel.from_pretrained(
            base, subfolder="text_encoder", **dtype_kwargs, **load_kwargs
        )
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **hub_kwargs)
        scheduler_config = DDIMScheduler.load_config(base, subfolder="scheduler", **hub_kwargs)
        scheduler = DDIMScheduler.from_config(scheduler_config, prediction_type="sample")
        widen_conv_in(unet, 3 * vae.config.latent_channels)
        prompts = {t: (prompts or {}).get(t, get_task(t).prompt) for t in tasks}
        embeddings = TaskEmbeddings.compute(text_encoder.eval(), tokenizer, prompts)
        return cls(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            text_encoder=text_encoder if keep_text_encoder else None,
            tokenizer=tokenizer if keep_text_encoder else None,
            task_embeddings=embeddings,
            training_info={"base_model": str(base)},
        )

    @classmethod
    def _source_files(cls) -> list[Path]:
        """Python files copied into a saved folder so that diffusers loads it as a custom pipeline."""
        return [Path(__file__).with_name(PIPELINE_FILE)]


def _input_dtype(model: torch.nn.Module, first_layer: str) -> torch.dtype:
    """The dtype ``model``'s inputs must have: that of its first layer (the compute dtype of a
    layerwise-casting hook on it, else its weight's). Equals ``model.dtype``, which costs a walk over every
    submodule (about 1 ms for a UNet, on every call); falls back to it when the layer is not found."""
    try:
        layer = model.get_submodule(first_layer)
    except AttributeError:
        return model.dtype
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return model.dtype
    registry = getattr(layer, "_diffusers_hook", None)
    hook = registry.get_hook("layerwise_casting") if registry is not None else None
    return hook.compute_dtype if hook is not None else weight.dtype
