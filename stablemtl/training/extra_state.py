"""The sampler and EMA states of a checkpoint as safetensors (+ JSON scalars), never pickles.

``accelerator.register_for_checkpointing`` would pickle them into ``custom_checkpoint_N.pkl``, which
accelerate unpickles in full on resume (an untrusted checkpoint could run code), indexed by
registration order. Instead :func:`save_extra_state` writes, into the checkpoint folder:

- ``sampler.safetensors``: :meth:`TaskIsolatedSampler.state_dict` (tensors only, so no ``sampler.json``);
- ``ema.safetensors`` (``shadow_params.<i>``, one per UNet parameter, in parameter order) and
  ``ema.json`` (the scalars of diffusers' ``EMAModel.state_dict()``: decay, optimization_step, ...),
  only when the run uses EMA.

The files accelerate itself writes (``model.safetensors``, ``optimizer.bin``, ``scheduler.bin``,
``random_states_<rank>.pkl``) are unchanged: those are accelerate's own format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from stablemtl.data.sampler import TaskIsolatedSampler
from stablemtl.utils import atomic_write_text

SAMPLER_FILE = "sampler.safetensors"
EMA_FILE = "ema.safetensors"
EMA_SCALARS_FILE = "ema.json"
_SHADOW = "shadow_params."


def save_extra_state(folder: str | Path, sampler: TaskIsolatedSampler, ema: EMAModel | None) -> None:
    """Write the sampler (and EMA) state into ``folder`` (main process only; equal on all ranks)."""
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sampler.state_dict().items()}
    save_file(tensors, str(folder / SAMPLER_FILE))
    if ema is None:
        return
    state = dict(ema.state_dict())
    shadow = state.pop("shadow_params")
    save_file(
        {f"{_SHADOW}{i}": p.detach().cpu().contiguous() for i, p in enumerate(shadow)},
        str(folder / EMA_FILE),
    )
    atomic_write_text(folder / EMA_SCALARS_FILE, json.dumps(state, indent=2, sort_keys=True))


def load_extra_state(
    folder: str | Path, sampler: TaskIsolatedSampler, ema: EMAModel | None, device: torch.device | str
) -> None:
    """Restore the sampler (and EMA) state saved by :func:`save_extra_state` from checkpoint ``folder``.

    Raises ValueError when a file is missing, or when the checkpoint has an EMA state and ``ema`` is
    ``None`` (resumed without ``--use_ema``) or the other way round.
    """
    folder = Path(folder)
    sampler_path = folder / SAMPLER_FILE
    if not sampler_path.is_file():
        raise ValueError(
            f"resume_from_checkpoint {folder}: {SAMPLER_FILE} is missing (an incomplete checkpoint, or one "
            "written by an older stablemtl that pickled the sampler); resume from another checkpoint"
        )
    sampler.load_state_dict(load_file(str(sampler_path)))

    has_ema = (folder / EMA_FILE).exists() or (folder / EMA_SCALARS_FILE).exists()
    if has_ema and ema is None:
        raise ValueError(
            f"resume_from_checkpoint {folder} holds an EMA state but use_ema is off: "
            "resume with --use_ema (the same setting as the run that saved it)"
        )
    if ema is None:
        return
    if not has_ema:
        raise ValueError(
            f"resume_from_checkpoint {folder} holds no EMA state but use_ema is on: "
            "resume without --use_ema (the same setting as the run that saved it)"
        )
    for name in (EMA_FILE, EMA_SCALARS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"resume_from_checkpoint {folder}: {name} is missing (an incomplete EMA state)")
    tensors = load_file(str(folder / EMA_FILE))
    if set(tensors) != {f"{_SHADOW}{i}" for i in range(len(ema.shadow_params))}:
        raise ValueError(
            f"resume_from_checkpoint {folder}: {EMA_FILE} has {len(tensors)} tensors but the UNet has "
            f"{len(ema.shadow_params)} parameters; resume with the same model"
        )
    shadow = [tensors[f"{_SHADOW}{i}"] for i in range(len(tensors))]
    for i, (saved, current) in enumerate(zip(shadow, ema.shadow_params)):
        if saved.shape != current.shape:
            raise ValueError(
                f"resume_from_checkpoint {folder}: {EMA_FILE} {_SHADOW}{i} has shape {tuple(saved.shape)}, "
                f"the UNet parameter {tuple(current.shape)}; resume with the same model"
            )
    state = json.loads((folder / EMA_SCALARS_FILE).read_text())
    state["shadow_params"] = shadow
    ema.load_state_dict(state)
    ema.to(device)
