"""HiTT's two training phases over the shared loop (docs/hitt.md), for the train script and the demo.

Phase 1 trains on the partial labels only. Phase 2 runs the frozen phase-1 model once over every
un-augmented training row to discover pseudo targets (stored as safetensors beside the run), then
retrains from scratch with the supervised, pseudo-label and feature losses; the stored targets reach the
objective as ``group["extras"]`` through a source wrapper.
"""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState

from stablemtl.data import load_source
from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.training.config import TrainConfig
from stablemtl.training.hitt_pseudo import PseudoTargets, PseudoTargetSource, discover_source
from stablemtl.training.loop import train
from stablemtl.training.objectives.hitt import HiTTConfig, HiTTObjective

CENTRE_ROWS_PER_SOURCE = 64  # rows per source whose labels the k-means centres are fitted on


def centre_samples(paths: list[str]) -> list[dict]:
    """Evenly spaced un-augmented rows of each training source (labels for the quantisation centres)."""
    samples = []
    for path in paths:
        source = load_source(path, augment=False)
        step = max(1, len(source) // CENTRE_ROWS_PER_SOURCE)
        samples += [source.raw(i) for i in range(0, len(source), step)][:CENTRE_ROWS_PER_SOURCE]
    return samples


def pseudo_target_paths(train_config: TrainConfig, hitt_config: HiTTConfig) -> list[Path]:
    folder = Path(hitt_config.pseudo_targets_dir or Path(train_config.output_dir) / "pseudo_targets")
    return [
        folder / f"{k:02d}_{Path(path).name}.safetensors" for k, path in enumerate(train_config.train_data)
    ]


def discover(train_config: TrainConfig, hitt_config: HiTTConfig) -> list[Path]:
    """Phase 2, step 1: the frozen phase-1 model labels every un-augmented training row (once; reruns
    reuse the stored files, so a resumed run does not rediscover)."""
    state = PartialState()
    paths = pseudo_target_paths(train_config, hitt_config)
    with state.main_process_first():
        if state.is_main_process:
            teacher = HiTTModel.from_pretrained(hitt_config.phase1_model).eval()
            for data, path in zip(train_config.train_data, paths, strict=True):
                if not path.is_file():
                    discover_source(teacher, load_source(data, augment=False), path, device=state.device)
    return paths


def train_hitt(train_config: TrainConfig, hitt_config: HiTTConfig) -> Path:
    """Run ``hitt_config.phase`` (1 or 2) of HiTT training; return the output folder."""
    if hitt_config.phase == 1:
        samples = centre_samples(train_config.train_data) if hitt_config.fit_centres else None
        return train(train_config, lambda tasks, *_: HiTTObjective(hitt_config, tasks, samples))

    if train_config.resolution is not None:
        # The loop's crop cuts the frames and labels, not the stored targets beside them.
        raise ValueError("phase 2 trains at the sources' own size: leave --resolution unset")
    stores = [PseudoTargets(path) for path in discover(train_config, hitt_config)]
    teacher = HiTTModel.from_pretrained(hitt_config.phase1_model)
    centres = {t: teacher.task_centres(t) for t in teacher.task_names if teacher.head(t).is_regression}

    def wrap_source(dataset, index: int) -> PseudoTargetSource:
        return PseudoTargetSource(dataset, stores[index], centres, seed=train_config.seed)

    # The loop wraps each loaded training source; the samples' stored targets reach the objective as
    # group["extras"], which it stacks with stablemtl.training.hitt_pseudo.collate_pseudo.
    return train(train_config, lambda tasks, *_: HiTTObjective(hitt_config, tasks), wrap_source=wrap_source)
