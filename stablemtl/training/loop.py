"""The stage-1 training loop: accelerate does devices, DDP, mixed precision and accumulation.

One optimizer step = one gradient-accumulation window = one task (:mod:`stablemtl.data.sampler`).
The loop reads top to bottom: set up accelerate, load the model and data, build the optimizer and the
schedule, resume, then per step: accumulate the window, clip, step, report the task's loss to the
sampler, log, checkpoint, validate. The final UNet is saved as a ``StableMTLPipeline`` folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNet2DConditionModel
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from stablemtl.data import load_source
from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline
from stablemtl.training.checkpointing import (
    checkpoint_step,
    remove_incomplete,
    resolve_resume,
    save_checkpoint,
)
from stablemtl.training.components import load_pipeline
from stablemtl.training.config import TrainConfig
from stablemtl.training.data import build_training_data
from stablemtl.training.extra_state import load_extra_state
from stablemtl.training.objective import StableMTLObjective
from stablemtl.training.schedule import get_warmup_exponential_scheduler
from stablemtl.training.step import micro_step
from stablemtl.training.validation import run_validation, save_grid, validation_groups

logger = get_logger(__name__)

# Called on every rank after every micro-batch with (optimizer step index, the micro-batch's groups,
# whether the optimizer stepped, the unwrapped UNet): tests use it to audit what each update consumed.
MicroBatchHook = Callable[[int, list, bool, torch.nn.Module], None]


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
    return cls(parameters, **kwargs)


def _check_backends(config: TrainConfig, accelerator: Accelerator, unet: UNet2DConditionModel) -> None:
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.enable_xformers_memory_efficient_attention:
        if accelerator.device.type != "cuda":
            raise ValueError(
                "--enable_xformers_memory_efficient_attention needs a CUDA device (xformers has no CPU/MPS "
                f"kernels); this run is on {accelerator.device.type}, where PyTorch SDPA is used anyway"
            )
        from diffusers.utils.import_utils import is_xformers_available

        if not is_xformers_available():
            raise ValueError("xformers is not installed: pip install xformers (or 'stablemtl[xformers]')")
        unet.enable_xformers_memory_efficient_attention()
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def validation_sources(config: TrainConfig) -> list:
    """The validation sources, unaugmented: ``validation_data``, else the training folders."""
    folders = config.validation_data or config.train_data
    return [load_source(path, augment=False, seed=config.seed) for path in folders]


def save_final_pipeline(
    pipe: StableMTLPipeline, unet: UNet2DConditionModel, output_dir: str | os.PathLike, config: TrainConfig
) -> Path:
    """Save ``pipe`` with the trained ``unet`` as a pipeline folder in ``output_dir``.

    The pipeline writes itself atomically into a hidden sibling; its entries are then moved into
    ``output_dir`` (which also holds checkpoints and logs), ``model_index.json`` last, so the folder
    loads only once it is complete. The VAE is saved as ``pipe`` holds it: keep it in float32 (training
    encodes with its own low-precision copy) so that the saved VAE is the base's, bit for bit.
    """
    output_dir = Path(output_dir)
    pipe.register_modules(unet=unet)
    if pipe.vae.dtype != torch.float32:
        pipe.vae.to(dtype=torch.float32)
    pipe.set_training_info(
        tasks={"names": list(config.tasks or pipe.tasks)},
        train_data={"folders": [str(p) for p in config.train_data]},
        max_train_steps=config.max_train_steps,
        effective_batch_size=config.train_batch_size * config.gradient_accumulation_steps,
        task_sampling=config.task_sampling,
        task_grouping=config.task_grouping,
    )
    tmp = output_dir / ".tmp-pipeline"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # A previous pipeline's index would make a half-replaced folder look complete; the new one comes last.
    (output_dir / "model_index.json").unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    tmp.rmdir()
    (output_dir / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return output_dir


def train(config: TrainConfig, on_micro_batch: MicroBatchHook | None = None) -> Path:
    """Run stage-1 training as ``config`` says; return the output folder holding the final pipeline.

    Works in-process (tests, the demo) and under ``accelerate launch`` / ``torchrun`` (every rank
    calls it). ``on_micro_batch`` observes what each micro-batch held (tests use it).
    """
    output_dir = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
        # The schedule counts optimizer steps: it is stepped by hand once per window, on every rank.
        step_scheduler_with_optimizer=False,
        cpu=not torch.cuda.is_available(),
    )
    logger.info(accelerator.state, main_process_only=False)
    set_seed(config.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete(output_dir)
    accelerator.wait_for_everyone()

    # 1. data and model
    sampler, loader, _ = build_training_data(config, accelerator.process_index, accelerator.num_processes)
    tasks = sampler.tasks
    pipe = load_pipeline(config.resolve_base(), tasks, revision=config.revision)
    # The saved pipeline must infer as the objective trains.
    pipe.register_to_config(timestep=config.timestep, second_frame=config.second_frame)
    unet = pipe.unet
    _check_backends(config, accelerator, unet)
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    # Under mixed precision the objective encodes with a low-precision copy: casting pipe.vae in place
    # would round the frozen weights that the final pipeline saves.
    vae = pipe.vae if weight_dtype == pipe.vae.dtype else copy.deepcopy(pipe.vae).to(dtype=weight_dtype)
    vae.to(accelerator.device)
    objective = StableMTLObjective(vae, pipe.task_embeddings, config.timestep, config.second_frame)

    # 2. optimisation
    optimizer = _make_optimizer(config, unet.parameters())
    lr_scheduler = get_warmup_exponential_scheduler(
        optimizer,
        config.lr_warmup_steps,
        config.lr_total_steps or config.max_train_steps,
        config.lr_final_ratio,
    )
    ema = None
    if config.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=config.ema_decay,
            model_cls=UNet2DConditionModel,
            model_config=unet.config,
        )
        ema.to(accelerator.device)
    # The sampler and EMA are saved by save_checkpoint as safetensors, not registered (which pickles).
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    # 3. resume
    global_step = 0
    resume = resolve_resume(config.resume_from_checkpoint, output_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        load_extra_state(resume, sampler, ema, accelerator.device)
        global_step = checkpoint_step(resume)
        if sampler.windows_done != global_step:
            raise ValueError(f"{resume}: sampler position {sampler.windows_done} != step {global_step}")
        logger.info("resumed from %s at step %d", resume, global_step)

    val_groups = (
        validation_groups(validation_sources(config), tasks, config.num_validation_images)
        if accelerator.is_main_process
        else []
    )
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
            loss, norm = micro_step(
                accelerator, unet, objective, optimizer, groups, config.max_grad_norm, weight_dtype
            )
            grad_norm = norm if norm is not None else grad_norm
            window_loss += loss / config.gradient_accumulation_steps
            if on_micro_batch is not None:
                on_micro_batch(
                    global_step, groups, accelerator.sync_gradients, accelerator.unwrap_model(unet)
                )
        if not accelerator.sync_gradients:
            raise RuntimeError("an accumulation window ended without an optimizer step")
        if config.task_grouping == "isolated" and len(window_tasks) != 1:
            raise RuntimeError(f"an accumulation window mixed tasks {sorted(window_tasks)}")
        lr_scheduler.step()
        if ema is not None:
            ema.step(unet.parameters())
        global_step += 1
        progress.update(1)

        # Every rank reports the same (averaged) loss, so adaptive task sampling stays in lockstep.
        mean_loss = accelerator.reduce(window_loss, reduction="mean").item()
        task = next(iter(window_tasks)) if config.task_grouping == "isolated" else None
        sampler.report(task, mean_loss)
        elapsed = time.perf_counter() - start
        logs = {
            f"loss/{task or 'joint'}": mean_loss,
            "lr": lr_scheduler.get_last_lr()[0],
            "samples_per_second": samples_per_step / elapsed,
        }
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        if not math.isfinite(mean_loss):
            logger.warning("non-finite loss %s at step %d (task %s)", mean_loss, global_step, task)
        accelerator.log(logs, step=global_step)
        progress.set_postfix(task=task or "joint", loss=f"{mean_loss:.4f}")

        if global_step % config.checkpointing_steps == 0 or global_step == config.max_train_steps:
            save_checkpoint(
                accelerator, output_dir, global_step, config.checkpoints_total_limit, sampler=sampler, ema=ema
            )
        if global_step % config.validation_steps == 0:
            if accelerator.is_main_process and val_groups:
                _validate(
                    accelerator, objective, unet, ema, val_groups, weight_dtype, output_dir, global_step
                )
            accelerator.wait_for_everyone()

    # 5. the final model
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final_unet.parameters())
        save_final_pipeline(pipe, final_unet, output_dir, config)
        if config.push_to_hub:
            pipe.push_to_hub(config.hub_model_id, commit_message="StableMTL stage-1 training")
    accelerator.end_training()
    return output_dir


def _validate(accelerator, objective, unet, ema, groups, dtype, output_dir: Path, step: int) -> None:
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        with accelerator.autocast():
            losses, grid = run_validation(objective, model, groups, dtype=dtype)
    finally:
        model.train()
        if ema is not None:
            ema.restore(model.parameters())
    path = save_grid(grid, output_dir, step)
    accelerator.log({f"val_loss/{task}": value for task, value in losses.items()}, step=step)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    logger.info("validation at step %d: %s (grid %s)", step, losses, path)
