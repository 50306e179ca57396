"""The one training loop behind every model: accelerate does devices, DDP, mixed precision, accumulation.

One optimizer step = one gradient-accumulation window = one task (:mod:`stablemtl.data.sampler`). A model
plugs in as an :class:`~stablemtl.training.objectives.base.Objective`. The loop reads top to bottom: set
up accelerate and the run folder, load the data, build the objective, the optimizer and the schedule,
resume, then per step: accumulate the window, clip, step, report the task's loss to the sampler, log,
checkpoint, validate; finally the objective saves its model folder (and the folder is pushed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from stablemtl.hub import push_folder_to_hub
from stablemtl.training.checkpointing import (
    checkpoint_step,
    claim_output_dir,
    load_checkpoint,
    remove_incomplete,
    resolve_resume,
    save_checkpoint,
)
from stablemtl.training.config import TrainConfig
from stablemtl.training.data import build_training_data, log_row_cache
from stablemtl.training.objectives.base import Objective
from stablemtl.training.schedule import get_warmup_exponential_scheduler
from stablemtl.training.step import micro_step
from stablemtl.training.validation import ValidationSet, run_validation
from stablemtl.utils import atomic_write_text

logger = get_logger(__name__)

# Builds the model's objective once the data has decided the task list and the training resolution
# (``config.resolution``, else the largest side of the training samples).
ObjectiveFactory = Callable[[list[str], TrainConfig, int], Objective]
# Wraps a loaded training source (dataset, index) -> dataset.
SourceWrapper = Callable[[Dataset, int], Dataset]
# Called on every rank after every micro-batch with (optimizer step index, the micro-batch's groups,
# whether the optimizer stepped, the unwrapped trainable modules): tests audit what each update consumed.
MicroBatchHook = Callable[[int, list, bool, dict], None]


class NonFiniteTrainingError(RuntimeError):
    """The loss or the weights became NaN/inf: training stopped without saving the broken state."""


def _make_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    kwargs = {
        "lr": config.learning_rate,
        "betas": (config.adam_beta1, config.adam_beta2),
        "weight_decay": config.adam_weight_decay,
        "eps": config.adam_epsilon,
    }
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError(
                "--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or 'stablemtl[bnb]')"
            ) from error
        cls = bnb.optim.AdamW8bit if config.optimizer == "adamw" else bnb.optim.Adam8bit
    else:
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        # PyTorch's fused kernel updates every parameter in one pass: on the CPU about 3x faster than its
        # per-parameter loop (the default there); supported on CPU, CUDA, MPS and XPU, and with AMP scaling.
        kwargs["fused"] = True
    return cls(parameters, **kwargs)


def _make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer):
    total = config.lr_total_steps or config.max_train_steps
    if config.lr_scheduler == "exponential":
        return get_warmup_exponential_scheduler(
            optimizer, config.lr_warmup_steps, total, config.lr_final_ratio
        )
    return get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=total
    )


def _check_backends(config: TrainConfig, accelerator: Accelerator, modules: dict) -> None:
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for module in modules.values():
        if config.enable_xformers_memory_efficient_attention:
            if accelerator.device.type != "cuda":
                raise ValueError(
                    "--enable_xformers_memory_efficient_attention needs a CUDA device (xformers has no "
                    f"CPU/MPS kernels); this run is on {accelerator.device.type}, where SDPA is used anyway"
                )
            from diffusers.utils.import_utils import is_xformers_available

            if not is_xformers_available():
                raise ValueError("xformers is not installed: pip install xformers (or 'stablemtl[xformers]')")
            if hasattr(module, "enable_xformers_memory_efficient_attention"):
                module.enable_xformers_memory_efficient_attention()
        if config.gradient_checkpointing and hasattr(module, "enable_gradient_checkpointing"):
            module.enable_gradient_checkpointing()


def _has_accelerator() -> bool:
    if hasattr(torch, "accelerator"):  # torch >= 2.6: CUDA, MPS, XPU, ...
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _parameters(modules: dict[str, torch.nn.Module]) -> list[torch.nn.Parameter]:
    return [p for m in modules.values() for p in m.parameters() if p.requires_grad]


def _first_non_finite(modules: dict[str, torch.nn.Module]) -> str | None:
    for module_name, module in modules.items():
        for name, parameter in module.named_parameters():
            if not torch.isfinite(parameter).all():
                return f"{module_name}.{name}"
    return None


def train(
    config: TrainConfig,
    objective_factory: ObjectiveFactory,
    on_micro_batch: MicroBatchHook | None = None,
    wrap_source: SourceWrapper | None = None,
) -> Path:
    """Train the model of ``objective_factory`` as ``config`` says; return the output folder.

    Works in-process (tests, the demo) and under ``accelerate launch`` / ``torchrun`` (every rank calls it).
    ``on_micro_batch`` observes what each micro-batch held (tests use it). ``wrap_source(dataset, index)``
    may wrap each training source, e.g. to serve stored per-sample targets: sample keys beyond the Sample
    contract reach the objective as ``group["extras"]`` (one dict per sample).
    """
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        # None defers to `accelerate launch --mixed_precision` / the accelerate config file.
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
        # The schedule counts optimizer steps: it is stepped by hand once per window, on every rank.
        step_scheduler_with_optimizer=False,
        # accelerate picks CUDA/MPS/XPU/... itself; only without any accelerator must it be told "cpu",
        # or `torchrun --nproc_per_node N` on CPUs runs N unconnected copies instead of DDP over gloo.
        cpu=not _has_accelerator(),
    )
    logger.info(accelerator.state, main_process_only=False)
    set_seed(config.seed)
    resume = resolve_resume(config.resume_from_checkpoint, output_dir)
    if accelerator.is_main_process:
        claim_output_dir(output_dir, resuming=resume is not None, overwrite=config.overwrite_output_dir)
        remove_incomplete(output_dir)
    accelerator.wait_for_everyone()

    # 1. data and model
    sampler, loader, sources = build_training_data(
        config, accelerator.process_index, accelerator.num_processes, wrap_source
    )
    tasks = sampler.tasks
    resolution = config.resolution or max(max(source[0]["image"].shape[-2:]) for source in sources)
    objective = objective_factory(list(tasks), config, int(resolution))
    if objective.ddp_find_unused_parameters:
        ddp_kwargs = DistributedDataParallelKwargs(find_unused_parameters=True)
        accelerator.ddp_handler = ddp_kwargs  # read by accelerator.prepare when it wraps in DDP
    modules = objective.trainable_modules()
    _check_backends(config, accelerator, modules)
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    objective.setup(accelerator.device, weight_dtype)

    # 2. optimisation
    optimizer = _make_optimizer(config, _parameters(modules))
    lr_scheduler = _make_scheduler(config, optimizer)
    ema = EMAModel(_parameters(modules), decay=config.ema_decay) if config.use_ema else None
    if ema is not None:
        ema.to(accelerator.device)
    # The sampler and EMA are saved by save_checkpoint as safetensors, not registered (which pickles).
    prepared = accelerator.prepare(*modules.values(), optimizer, lr_scheduler)
    modules = dict(zip(modules, prepared[: len(modules)]))
    optimizer, lr_scheduler = prepared[len(modules) :]

    # 3. resume
    global_step = 0
    if resume is not None:
        load_checkpoint(accelerator, resume, sampler, ema, allow_inexact=config.allow_inexact_resume)
        global_step = checkpoint_step(resume)
        logger.info("resumed from %s at step %d", resume, global_step)

    validation = ValidationSet.build(config, tasks) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        tracker_config = {k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(config.tracker_project_name, config=tracker_config)

    samples_per_step = (
        config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
    )
    logger.info(
        "training %s for %d steps of %d samples (%d per micro-batch x %d accumulation x %d processes)",
        tasks,
        config.max_train_steps,
        samples_per_step,
        config.train_batch_size,
        config.gradient_accumulation_steps,
        accelerator.num_processes,
    )
    progress = tqdm(
        range(config.max_train_steps),
        initial=global_step,
        desc="steps",
        disable=not accelerator.is_local_main_process,
    )
    last_saved = None if resume is None else resume.name
    unlabelled: dict[str, int] = {}  # task -> micro-batches without a single valid label pixel

    # 4. the loop: one window of micro-batches per optimizer step
    batches = iter(loader)
    while global_step < config.max_train_steps:
        start = time.perf_counter()
        window_loss = torch.zeros((), device=accelerator.device)
        window_tasks: set[str] = set()
        grad_norm = None
        for _ in range(config.gradient_accumulation_steps):
            groups = next(batches)
            window_tasks.update(g["task"] for g in groups)
            _warn_unlabelled(groups, unlabelled)
            loss, norm = micro_step(accelerator, modules, objective, optimizer, groups, config.max_grad_norm)
            grad_norm = norm if norm is not None else grad_norm
            window_loss += loss / config.gradient_accumulation_steps
            if on_micro_batch is not None:
                unwrapped = {name: accelerator.unwrap_model(m) for name, m in modules.items()}
                on_micro_batch(global_step, groups, accelerator.sync_gradients, unwrapped)
        if not accelerator.sync_gradients:
            raise RuntimeError("an accumulation window ended without an optimizer step")
        if config.task_grouping == "isolated" and len(window_tasks) != 1:
            raise RuntimeError(f"an accumulation window mixed tasks {sorted(window_tasks)}")
        lr_scheduler.step()
        if ema is not None:
            ema.step(_parameters(modules))
        global_step += 1
        progress.update(1)

        # Every rank reports the same (averaged) loss, so adaptive task sampling stays in lockstep.
        mean_loss = accelerator.reduce(window_loss, reduction="mean").item()
        task = next(iter(window_tasks)) if config.task_grouping == "isolated" else None
        if not math.isfinite(mean_loss):
            raise NonFiniteTrainingError(
                f"the loss of step {global_step} (task {task or 'joint'}) is {mean_loss}: training stopped "
                f"without saving; the last good checkpoint is {last_saved or 'none (no checkpoint yet)'}. "
                "Lower --learning_rate or --max_grad_norm, or check the labels, then resume from it."
            )
        sampler.report(task, mean_loss)
        elapsed = time.perf_counter() - start
        logs = {
            f"loss/{task or 'joint'}": mean_loss,
            "lr": lr_scheduler.get_last_lr()[0],
            "samples_per_second": samples_per_step / elapsed,
        }
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        accelerator.log(logs, step=global_step)
        progress.set_postfix(task=task or "joint", loss=f"{mean_loss:.4f}")

        if global_step % config.checkpointing_steps == 0 or global_step == config.max_train_steps:
            bad = _first_non_finite(modules)
            if bad is not None:
                raise NonFiniteTrainingError(
                    f"weight {bad} is not finite after step {global_step} (task {task or 'joint'}): "
                    f"nothing was saved; the last good checkpoint is {last_saved or 'none'}"
                )
            saved = save_checkpoint(
                accelerator, output_dir, global_step, config.checkpoints_total_limit, sampler=sampler, ema=ema
            )
            last_saved = saved.name
        if global_step % config.validation_steps == 0:
            if accelerator.is_main_process and validation:
                _validate(accelerator, objective, modules, ema, validation, output_dir, global_step)
            accelerator.wait_for_everyone()

    # 5. the final model
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = {name: accelerator.unwrap_model(m) for name, m in modules.items()}
        if ema is not None:
            ema.copy_to(_parameters(final))
        objective.save_model(final, output_dir)
        log_row_cache(loader)
        atomic_write_text(output_dir / "training_config.json", config.to_json())
        if config.push_to_hub:
            push_folder_to_hub(
                output_dir,
                config.hub_model_id,
                commit_message="stablemtl training",
                ignore_patterns=["checkpoint-*", ".tmp*", f"{config.logging_dir}/*", "validation/*"],
            )
    accelerator.end_training()
    return output_dir


def _warn_unlabelled(groups: list[dict], counts: dict[str, int]) -> None:
    """Warn (at 1, 10, 100, ... occurrences per task) about groups with no valid label pixel: they train
    at loss 0 and teach nothing, which usually means NaN or masked-out labels in a source."""
    for group in groups:
        if not group["valid"].any():
            task = group["task"]
            counts[task] = counts.get(task, 0) + 1
            if math.log10(counts[task]).is_integer():
                logger.warning(
                    "%d micro-batch(es) of task %s (sources %s) had no valid label pixel: they contribute no "
                    "gradient; check that source's labels for NaNs or empty masks",
                    counts[task],
                    task,
                    sorted(set(group["source"])),
                )


def _validate(accelerator, objective, modules, ema, validation, output_dir: Path, step: int) -> None:
    unwrapped = {name: accelerator.unwrap_model(m) for name, m in modules.items()}
    parameters = _parameters(unwrapped)
    if ema is not None:
        ema.store(parameters)
        ema.copy_to(parameters)
    for module in unwrapped.values():
        module.eval()
    try:
        with accelerator.autocast():
            losses, grid = run_validation(objective, unwrapped, validation)
    finally:
        for module in unwrapped.values():
            module.train()
        if ema is not None:
            ema.restore(parameters)
    path = validation.save_grid(grid, output_dir, step)
    accelerator.log({f"val_loss/{task}": value for task, value in losses.items()}, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    logger.info("validation (%s) at step %d: %s (grid %s)", validation.origin, step, losses, path)
