"""Training configuration: one dataclass, filled from a YAML file and then from command-line flags.

Precedence: dataclass defaults < YAML (``--config``) < flags. Flag names follow diffusers' training
examples (``train_text_to_image.py``) where they mean the same thing. Defaults reproduce the official
stage-1 run where it is known (docs/training.md) except the step budget, which ``configs/*.yaml`` set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stablemtl.data.label_protocols import PROTOCOLS
from stablemtl.models.latent_step import LatentStepSettings
from stablemtl.resources import embedded_base
from stablemtl.tasks import task_names

# The official warm-up + exponential decay, then the schedules of diffusers.optimization.get_scheduler.
LR_SCHEDULERS = (
    "exponential", "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
    "polynomial",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Every setting of a stage-1 run (see ``configs/stage1.yaml`` for the official values)."""

    # model
    pretrained_model_name_or_path: str | None = None  # Hub id or folder; None: the embedded tiny base
    revision: str | None = None
    variant: str | None = None  # weight file variant of the base, e.g. "fp16"
    cache_dir: str | None = None  # Hub download cache
    timestep: int = 999  # the fixed timestep of the one-step regressor
    second_frame: str = "duplicate"  # input of non-flow tasks: "duplicate" (z2 = z1) or "zero"
    input_noise: str = "deterministic"  # target slot of the UNet input: zeros or standard normal noise
    # data
    train_data: list[str] = field(default_factory=list)  # sources, one per entry (load_source specs)
    validation_data: list[str] = field(default_factory=list)  # default: rows held out of train_data
    tasks: list[str] | None = None  # None: every registered task that some source labels
    source_weights: dict[str, dict[str, float]] = field(default_factory=dict)  # {task: {source: w}}
    task_sampling: str = "round_robin"  # round_robin | uniform | adaptive
    task_grouping: str = "isolated"  # isolated | joint (mixed-task micro-batches, ablation)
    adaptive: dict[str, float] = field(default_factory=dict)  # AdaptiveTaskRule keyword arguments
    label_protocol: str = "full"  # full | one-label | random-labels: hide labels of the training sources
    label_seed: int = 0  # seed of the label protocol's draw (once per image)
    augment: bool = True
    resolution: int | None = None  # square crop side of training samples (random crop when augmenting)
    dataloader_num_workers: int = 0
    row_cache_mb: float = 0.0  # memory for decoded rows of dataset folders; 0: decode every time
    # optimisation
    train_batch_size: int = 16
    gradient_accumulation_steps: int = 2
    max_train_steps: int = 20000
    learning_rate: float = 1e-4
    lr_scheduler: str = "exponential"  # official warm-up + exponential decay, or a diffusers schedule
    lr_warmup_steps: int = 100
    lr_total_steps: int | None = None  # length of the decay; None: max_train_steps
    lr_final_ratio: float = 0.01
    optimizer: str = "adam"  # adam | adamw
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 5.0
    use_ema: bool = False
    ema_decay: float = 0.9999
    use_8bit_adam: bool = False
    # performance
    mixed_precision: str | None = None  # no | fp16 | bf16; None: accelerate's launch flag / config
    gradient_checkpointing: bool = False
    allow_tf32: bool = False
    enable_xformers_memory_efficient_attention: bool = False
    latent_cache_mb: float = 0.0  # host memory for VAE latents of images met before; 0: encode every time
    # bookkeeping
    output_dir: str = "runs/stage1"
    overwrite_output_dir: bool = False  # start afresh in a folder that holds another run's checkpoints
    logging_dir: str = "logs"
    report_to: str = "tensorboard"  # tensorboard | wandb | all | none
    tracker_project_name: str = "stablemtl"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str | None = None  # a checkpoint folder or "latest"
    allow_inexact_resume: bool = False  # resume even if the RNG states cannot be restored
    validation_steps: int = 1000
    num_validation_images: int = 4
    seed: int = 2024
    push_to_hub: bool = False
    hub_model_id: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        positive = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps")
        for name in (*positive, "checkpointing_steps", "validation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("latent_cache_mb", "row_cache_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_validation_images < 0:
            raise ValueError(f"num_validation_images must be >= 0, got {self.num_validation_images}")
        choices = {
            "task_sampling": ("round_robin", "uniform", "adaptive"),
            "task_grouping": ("isolated", "joint"),
            "optimizer": ("adam", "adamw"),
            "mixed_precision": (None, "no", "fp16", "bf16"),
            "lr_scheduler": LR_SCHEDULERS,
            "label_protocol": PROTOCOLS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        self.latent_step_settings()  # timestep, second_frame, input_noise
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in task_names()]
            if unknown:
                raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(task_names())}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(f"checkpoints_total_limit must be >= 1, got {self.checkpoints_total_limit}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id (e.g. 'me/stablemtl')")

    def resolve_base(self) -> str:
        """The base model to start from: the given one, else the embedded tiny base, else an error."""
        if self.pretrained_model_name_or_path:
            return self.pretrained_model_name_or_path
        try:
            return str(embedded_base())
        except FileNotFoundError as error:
            raise ValueError(f"no base model: {error}") from error

    def latent_step_settings(self) -> LatentStepSettings:
        """The latent-step settings the trained pipeline records (validated as the pipeline does)."""
        return LatentStepSettings(self.timestep, self.second_frame, self.input_noise)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


HELP = {
    "pretrained_model_name_or_path": "SD base (Hub id or folder) or a StableMTL folder to continue; "
    "default: assets/stablemtl-tiny-base",
    "revision": "revision of a Hub base",
    "variant": "weight variant of the base model's files (e.g. fp16)",
    "cache_dir": "where Hub downloads are cached",
    "timestep": "fixed UNet timestep of the one-step regressor",
    "second_frame": "second-frame latent of non-flow tasks: duplicate (z2 = z1, official) or zero",
    "input_noise": "target slot of the UNet input: deterministic (zeros, the paper) or random (noise)",
    "train_data": "sources, one per entry: data folders, configs/data/<set>.yaml, 'reader:root' or 'hub:id' "
    "(see docs/data.md)",
    "validation_data": "folders for validation grids; default: the last num_validation_images rows (at "
    "most a quarter) of each training source, held out of training",
    "tasks": "tasks to train, in round-robin order; default: every task some source labels",
    "source_weights": "JSON {task: {source: weight}}: within-task source probabilities (by source name)",
    "task_sampling": "task of each optimizer step: round_robin (official) | uniform | adaptive",
    "task_grouping": "isolated (one task per accumulation window) | joint (mixed-task batches, ablation)",
    "adaptive": "JSON keyword arguments of the adaptive rule (temperature, beta, floor)",
    "label_protocol": "partial-label protocol of the multi-task literature applied to every training "
    "source: full (every label), one-label (one task per image, balanced), random-labels (a random subset)",
    "label_seed": "seed of the label protocol's once-per-image draw",
    "augment": "use each source's training augmentation",
    "resolution": "crop training samples to this square side (random crop when augmenting, else centred); "
    "the saved pipeline processes at this resolution by default",
    "dataloader_num_workers": "DataLoader worker processes (0: main process)",
    "train_batch_size": "samples per micro-batch and process",
    "gradient_accumulation_steps": "micro-batches per optimizer step (all of one task)",
    "max_train_steps": "optimizer steps to train",
    "learning_rate": "peak learning rate",
    "lr_scheduler": "exponential (official warm-up + exponential decay) or a diffusers schedule: "
    + ", ".join(LR_SCHEDULERS[1:]),
    "lr_warmup_steps": "linear warm-up length in optimizer steps",
    "lr_total_steps": "optimizer steps over which the LR decays; default: max_train_steps",
    "lr_final_ratio": "exponential schedule: LR at lr_total_steps as a fraction of the peak (official 0.01)",
    "optimizer": "adam (official) | adamw",
    "adam_beta1": "Adam beta1",
    "adam_beta2": "Adam beta2",
    "adam_weight_decay": "weight decay (decoupled with adamw)",
    "adam_epsilon": "Adam epsilon",
    "max_grad_norm": "gradient-norm clipping threshold",
    "use_ema": "keep an EMA of the UNet weights (diffusers EMAModel); the EMA weights are saved",
    "ema_decay": "EMA decay",
    "use_8bit_adam": "bitsandbytes 8-bit Adam (needs bitsandbytes and CUDA)",
    "mixed_precision": "no | fp16 | bf16; default: what accelerate launch / the accelerate config says",
    "gradient_checkpointing": "trade compute for memory in the UNet",
    "allow_tf32": "allow TF32 matmuls on Ampere+ GPUs",
    "enable_xformers_memory_efficient_attention": "xformers attention (CUDA only; SDPA is used otherwise)",
    "row_cache_mb": "keep decoded rows of dataset folders (before augmentation) in up to this many MB of "
    "memory per process (each data-loader worker keeps its own) instead of decoding them again; readers of "
    "real data sets decode every time; 0 decodes every row",
    "latent_cache_mb": "keep the frozen VAE's latents of frames and labels met before (flip states included; "
    "colour-jittered frames never repeat) in up to this many MB of host memory, instead of encoding them "
    "again; 0 encodes every image",
    "output_dir": "run folder: checkpoints, logs, validation grids and the final pipeline",
    "overwrite_output_dir": "start a new run in an output_dir that holds another run's checkpoints "
    "(they are deleted); without it such a folder is refused unless you resume",
    "logging_dir": "tracker folder inside output_dir",
    "report_to": "tensorboard | wandb | all | none",
    "tracker_project_name": "tracker project name",
    "checkpointing_steps": "save a resumable checkpoint every N optimizer steps (and at the end)",
    "checkpoints_total_limit": "keep at most N checkpoints (the newest)",
    "resume_from_checkpoint": "a checkpoint-<step> folder, or 'latest'",
    "allow_inexact_resume": "resume even when a checkpoint's RNG states cannot be restored "
    "(the run then differs from an uninterrupted one)",
    "validation_steps": "write a prediction grid and validation losses every N optimizer steps",
    "num_validation_images": "images per task in the validation grid",
    "seed": "seed of the sampler, augmentation and initialisation (same on every process)",
    "push_to_hub": "upload the final pipeline to the Hub",
    "hub_model_id": "Hub repository id for --push_to_hub",
}


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str] | None`` -> ``list[str]``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _field_types(config_type: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_type)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(config_type)}


def _help(config_type: type, item: dataclasses.Field) -> str:
    text = item.metadata.get("help") or (HELP.get(item.name) if config_type is TrainConfig else None)
    if not text:
        raise ValueError(f"{config_type.__name__}.{item.name} has no help text")
    if item.default is not dataclasses.MISSING:
        default = item.default
    elif item.default_factory is not dataclasses.MISSING:
        default = item.default_factory()
    else:
        return text
    return f"{text} (default: {default})"


def build_parser(*config_types: type) -> argparse.ArgumentParser:
    """The command-line parser: ``--config`` plus one flag per field of each dataclass in
    ``config_types`` (default :class:`TrainConfig`); unset flags are absent, so YAML values stand."""
    config_types = config_types or (TrainConfig,)
    parser = argparse.ArgumentParser(
        description="Train a stablemtl model with accelerate. Settings come from --config (YAML) and the "
        "flags below, which override it.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", type=str, help="YAML file of settings; flags override it")
    for config_type in config_types:
        group = parser.add_argument_group(config_type.__name__)
        fields = {f.name: f for f in dataclasses.fields(config_type)}
        for name, tp in _field_types(config_type).items():
            flag, text = f"--{name}", _help(config_type, fields[name])
            if tp is bool:
                group.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
            elif typing.get_origin(tp) is list:
                group.add_argument(flag, nargs="+", type=typing.get_args(tp)[0], help=text)
            elif typing.get_origin(tp) is dict:
                group.add_argument(flag, type=json.loads, help=text)
            else:
                group.add_argument(flag, type=tp, help=text)
    return parser


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping of settings")
    return loaded


def _build(config_type: type, values: dict[str, Any]) -> Any:
    types_ = _field_types(config_type)
    for name, value in values.items():
        if types_[name] is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            values[name] = float(value)  # YAML reads "1e-4" as a string
    return config_type(**values)


def load_configs(path: str | os.PathLike | None, config_types: Sequence[type], **overrides: Any) -> list[Any]:
    """One config per dataclass of ``config_types`` from a YAML file (optional) and keyword overrides;
    each setting goes to the dataclass that has it; unknown keys raise."""
    values = _read_yaml(path) if path is not None else {}
    values.update(overrides)
    known = {f.name: t for t in config_types for f in dataclasses.fields(t)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
    return [_build(t, {k: v for k, v in values.items() if known[k] is t}) for t in config_types]


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (optional) and keyword overrides; unknown keys raise."""
    return load_configs(path, [TrainConfig], **overrides)[0]


def parse_configs(argv: list[str] | None, *config_types: type) -> list[Any]:
    """Parse flags (``argv`` defaults to ``sys.argv[1:]``) into one config per dataclass."""
    args = vars(build_parser(*config_types).parse_args(argv))
    config_path = args.pop("config", None)
    return load_configs(config_path, config_types, **args)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse command-line flags (``argv`` defaults to ``sys.argv[1:]``) into a :class:`TrainConfig`."""
    return parse_configs(argv, TrainConfig)[0]
