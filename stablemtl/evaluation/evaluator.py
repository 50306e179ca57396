"""The one evaluator: scores any ``Predictor`` on an iterable of ``Sample`` dicts.

A Predictor is anything with ``predict(images (B, 3, H, W) in [0, 1], next_images (B, 3, H, W) or
None, tasks: list[str]) -> {task: prediction (B, C, H, W)}`` (prediction formats: see
``stablemtl.tasks``). The evaluator knows nothing else about the model.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from stablemtl.evaluation import bootstrap
from stablemtl.evaluation.config import EvalConfig
from stablemtl.evaluation.registry import build_metric
from stablemtl.evaluation.versions import package_versions, utc_timestamp
from stablemtl.tasks import check_tasks, get_task

logger = logging.getLogger(__name__)


@runtime_checkable
class Predictor(Protocol):
    """What the evaluator needs from a model (pipelines and baselines implement it)."""

    def predict(
        self, images: torch.Tensor, next_images: torch.Tensor | None, tasks: list[str]
    ) -> dict[str, torch.Tensor]: ...


@dataclass
class VisualSample:
    """One sample kept for the prediction grids: its input, labels and every model's predictions.

    ``predictions[model][task]`` is the unbatched ``(C, H, W)`` prediction at the input resolution.
    """

    image: torch.Tensor
    source: str
    labels: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    predictions: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


@dataclass
class Evaluation:
    """Result of ``evaluate_models``: one report dict per model (in the order given) and the visuals."""

    reports: dict[str, dict[str, Any]]
    visuals: list[VisualSample]


def evaluate(
    predictor: Predictor,
    samples: Iterable[Mapping[str, Any]],
    tasks: Sequence[str] | None = None,
    *,
    batch_size: int = 4,
    progress: bool = True,
    config: EvalConfig | None = None,
    name: str = "model",
) -> dict[str, Any]:
    """Score one predictor on ``samples``; returns its report dict (see ``evaluate_models``)."""
    result = evaluate_models(
        {name: predictor}, samples, tasks, batch_size=batch_size, progress=progress, config=config
    )
    return result.reports[name]


def evaluate_models(
    predictors: Mapping[str, Predictor],
    samples: Iterable[Mapping[str, Any]],
    tasks: Sequence[str] | None = None,
    *,
    batch_size: int = 4,
    progress: bool = True,
    config: EvalConfig | Mapping[str, EvalConfig] | None = None,
    num_visuals: int = 0,
    seed: int | None = 0,
    bootstrap_resamples: int = 1000,
) -> Evaluation:
    """Score several predictors in one pass over ``samples``.

    Args:
        predictors: ``{model name: predictor}``. A predictor with a ``tasks`` attribute (list of task
            names) is only asked for those tasks.
        samples: Sample dicts (``image`` (3, H, W) in [0, 1], optional ``next_image``, ``source``,
            ``labels``/``valid`` per labelled task). Only labelled tasks are scored; flow tasks need
            ``next_image``.
        tasks: tasks to score (default: every task labelled in the data).
        batch_size: consecutive samples of equal image size (and pairing) are predicted together;
            ``predict`` is called once per batch with every needed task.
        progress: show a tqdm progress bar.
        config: metric settings, one for all models or one per model name.
        num_visuals: keep the first N samples with every model's predictions for the grids.
        seed: global torch seed set once before the first batch, inside a forked RNG state (the
            caller's RNG is untouched), so stochastic predictors are repeatable; None: RNG left alone.
            Also the seed of the bootstrap resamples (0 when None).
        bootstrap_resamples: paired bootstrap resamples of the samples behind each primary metric's 95 %
            interval (``stablemtl.evaluation.bootstrap``); 0: no intervals.
    Returns:
        ``Evaluation`` with a report per model: ``{"name", "tasks": {task: {"metrics", "num_images",
        "num_nonfinite_predictions", "primary_metric", "higher_is_better", "metric_config"}},
        "skipped_tasks": {task: reason}, "config", "data", "versions", "timestamp", "elapsed_seconds",
        "predict_seconds", "bootstrap"}``; with resamples, each task also holds ``"bootstrap":
        {"interval": [lo, hi], "values": [one primary value per resample]}``. A task with any non-finite
        prediction has NaN metrics (refused, never
        scored as a number) and a warning is logged. A requested or labelled task that a model cannot
        score (it does not predict it, no sample labels it or has a valid label pixel of it, or it needs
        ``next_image``) is listed in ``skipped_tasks`` with the reason and warned about once.
    """
    if not predictors:
        raise ValueError("predictors is empty: pass {name: predictor}")
    for name, predictor in predictors.items():
        if not callable(getattr(predictor, "predict", None)) and not _is_oracle(predictor):
            raise ValueError(f"predictor {name!r} has no predict(images, next_images, tasks) method")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bootstrap_resamples < 0:
        raise ValueError(f"bootstrap_resamples must be >= 0, got {bootstrap_resamples}")
    records: dict[str, dict[str, list]] = {name: {} for name in predictors}
    digest = hashlib.sha256()
    wanted = check_tasks(tasks) if tasks is not None else None
    configs = _configs_per_model(predictors, config)
    metrics: dict[str, dict[str, Any]] = {name: {} for name in predictors}
    skipped: dict[str, dict[str, str]] = {name: {} for name in predictors}
    labelled: set[str] = set()
    predict_seconds = dict.fromkeys(predictors, 0.0)
    visuals: list[VisualSample] = []
    sources: Counter[str] = Counter()
    num_samples = 0
    start = time.perf_counter()
    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        for batch in _batches(samples, batch_size):
            kept = [i for i in range(len(batch)) if num_samples + i < num_visuals]
            for sample in batch:
                digest.update(sample["image"].detach().cpu().float().numpy().tobytes())
            visuals.extend(_visual(batch[i]) for i in kept)
            labelled.update(t for s in batch for t in s.get("labels", {}))
            for name, predictor in predictors.items():
                batch_tasks = _tasks_for_batch(batch, wanted, _supported_tasks(predictor), skipped[name])
                if not batch_tasks:
                    continue
                tic = time.perf_counter()
                predictions = _predict(name, predictor, batch, batch_tasks)
                predict_seconds[name] += time.perf_counter() - tic
                recording = (num_samples, records[name]) if bootstrap_resamples else None
                _score(batch, predictions, metrics[name], configs[name], recording)
                for i in kept:
                    visuals[num_samples + i].predictions[name] = {t: p[i] for t, p in predictions.items()}
            num_samples += len(batch)
            sources.update(str(s.get("source", "unknown")) for s in batch)
            bar.update(len(batch))
    bar.close()
    elapsed = time.perf_counter() - start
    if num_samples == 0:
        raise ValueError("samples is empty: nothing to evaluate")
    for task_name in wanted or []:
        if task_name not in labelled:
            for name in predictors:
                skipped[name][task_name] = "no sample labels it"
    for name in predictors:
        for task_name, metric in metrics[name].items():
            if int(metric.num_images) == 0:  # predicted, but no image had a valid label pixel
                skipped[name][task_name] = "no sample has a valid label pixel for it"
        scored = {t for t, metric in metrics[name].items() if int(metric.num_images) > 0}
        skipped[name] = {t: reason for t, reason in skipped[name].items() if t not in scored}
        _warn_about(name, skipped[name], metrics[name])
    data = {"num_samples": num_samples, "sources": dict(sources), "fingerprint": digest.hexdigest()[:16]}
    reports = {
        name: _report(
            name, metrics[name], configs[name], (batch_size, seed), data, elapsed, predict_seconds[name]
        )
        | {"skipped_tasks": skipped[name]}
        for name in predictors
    }
    for name, predictor in predictors.items():
        if _is_oracle(
            predictor
        ):  # predicted from the labels: a bound to read models against, never a reference
            reports[name]["oracle"] = True
    if bootstrap_resamples:
        _add_bootstrap(reports, metrics, records, configs, data, bootstrap_resamples, seed or 0)
    return Evaluation(reports=reports, visuals=visuals)


def _add_bootstrap(reports, metrics, records, configs, data, resamples: int, seed: int) -> None:
    """Each primary metric's values on the shared resamples of the samples, and their 95 % interval."""
    counts = bootstrap.resample_counts(data["num_samples"], resamples, seed)
    for name, report in reports.items():
        report["bootstrap"] = {
            "resamples": resamples,
            "seed": seed,
            "level": bootstrap.LEVEL,
            "num_samples": data["num_samples"],
            "fingerprint": data["fingerprint"],
        }
        for task_name, entry in report["tasks"].items():
            metric = metrics[name][task_name]
            if int(getattr(metric, "num_nonfinite", 0)) or not bootstrap.resamplable(metric):
                continue  # refused predictions have NaN metrics, and so do their resamples
            fresh = build_metric(task_name, configs[name])
            values = bootstrap.bootstrap_metric(
                fresh, records[name][task_name], counts, entry["primary_metric"]
            )
            entry["bootstrap"] = {"interval": bootstrap.interval(values), "values": values}


# --------------------------------------------------------------------------------------------------
def _configs_per_model(predictors, config) -> dict[str, EvalConfig]:
    if config is None or isinstance(config, EvalConfig):
        return dict.fromkeys(predictors, config or EvalConfig())
    unknown = set(config) - set(predictors)
    if unknown:
        raise ValueError(f"config names unknown models {sorted(unknown)}; models: {list(predictors)}")
    return {name: config.get(name, EvalConfig()) for name in predictors}


def _supported_tasks(predictor) -> set[str] | None:
    supported = getattr(predictor, "tasks", None)
    if isinstance(supported, (list, tuple, set, frozenset)) and all(isinstance(t, str) for t in supported):
        return set(supported)
    return None


def _batches(samples: Iterable[Mapping[str, Any]], batch_size: int) -> Iterator[list[Mapping[str, Any]]]:
    """Group consecutive samples of equal image size and pairing, at most ``batch_size`` each."""
    batch: list[Mapping[str, Any]] = []
    key = None
    for sample in samples:
        image = sample.get("image") if isinstance(sample, Mapping) else None
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError("every sample must be a dict with 'image' of shape (3, H, W)")
        sample_key = (tuple(image.shape), sample.get("next_image") is not None)
        if batch and (sample_key != key or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(sample)
        key = sample_key
    if batch:
        yield batch


def _tasks_for_batch(
    batch, wanted: list[str] | None, supported: set[str] | None, skipped: dict[str, str]
) -> list[str]:
    """Tasks to predict for ``batch``; records in ``skipped`` why a labelled, wanted task is not."""
    labelled: list[str] = []
    for sample in batch:
        for task_name in sample.get("labels", {}):
            if task_name not in labelled:
                labelled.append(task_name)
    has_pair = batch[0].get("next_image") is not None
    selected = []
    for task_name in labelled if wanted is None else [t for t in wanted if t in labelled]:
        if supported is not None and task_name not in supported:
            skipped[task_name] = f"the model does not predict it (it predicts {sorted(supported)})"
            continue
        if get_task(task_name).needs_pair and not has_pair:
            logger.warning("skipping %s on samples without next_image", task_name)
            skipped.setdefault(task_name, "it needs next_image, which the samples lack")
            continue
        selected.append(task_name)
    return selected


def _is_oracle(predictor) -> bool:
    """Oracles (``stablemtl.evaluation.oracle``) predict from the labels: they get the Sample dicts."""
    return callable(getattr(predictor, "predict_samples", None))


def _predict(name: str, predictor, batch, tasks: list[str]) -> dict[str, torch.Tensor]:
    if _is_oracle(predictor):
        out = predictor.predict_samples(batch, list(tasks))
    else:
        images = torch.stack([s["image"] for s in batch]).float()
        pairs = [s.get("next_image") for s in batch]
        next_images = torch.stack(pairs).float() if pairs[0] is not None else None
        out = predictor.predict(images, next_images, list(tasks))
    predictions = {}
    for task_name in tasks:
        if task_name not in out:
            raise ValueError(f"predictor {name!r} returned no prediction for task {task_name!r}")
        pred = out[task_name]
        pred = torch.as_tensor(pred).detach().cpu()
        if pred.dim() != 4 or pred.shape[0] != len(batch):
            raise ValueError(
                f"predictor {name!r} returned {task_name} of shape {tuple(pred.shape)}; "
                f"expected (B={len(batch)}, C, H, W)"
            )
        predictions[task_name] = pred
    return predictions


def _score(
    batch, predictions: dict[str, torch.Tensor], metrics: dict[str, Any], config: EvalConfig, recording=None
) -> None:
    """Update each task's metric per sample; ``recording = (index of the batch's first sample,
    {task: [(sample index, state contribution)]})`` keeps every image's contribution for the bootstrap."""
    for task_name, pred in predictions.items():
        for i, sample in enumerate(batch):
            if task_name not in sample.get("labels", {}):
                continue
            if task_name not in metrics:
                metrics[task_name] = build_metric(task_name, config)
            label = sample["labels"][task_name]
            valid = sample.get("valid", {}).get(task_name)
            if valid is None:
                valid = torch.ones(label.shape[-2:], dtype=torch.bool)
            record = recording is not None and bootstrap.resamplable(metrics[task_name])
            before = bootstrap.snapshot(metrics[task_name]) if record else None
            metrics[task_name].update(pred[i : i + 1], label.unsqueeze(0), valid.unsqueeze(0))
            if record:
                change = bootstrap.contribution(metrics[task_name], before)
                recording[1].setdefault(task_name, []).append((recording[0] + i, change))


def _warn_about(name: str, skipped: dict[str, str], metrics: dict[str, Any]) -> None:
    for task_name, reason in skipped.items():
        logger.warning("model %r: task %r is not scored: %s", name, task_name, reason)
    for task_name, metric in metrics.items():
        bad = int(getattr(metric, "num_nonfinite", 0))
        if bad:
            logger.warning(
                "model %r: %d of %d %s predictions hold NaN or inf; its metrics are NaN (not scored)",
                name,
                bad,
                int(metric.num_images),
                task_name,
            )


def _visual(sample: Mapping[str, Any]) -> VisualSample:
    labels = dict(sample.get("labels", {}))
    masks = sample.get("valid", {})
    valid = {t: masks.get(t, torch.ones(v.shape[-2:], dtype=torch.bool)) for t, v in labels.items()}
    source = str(sample.get("source", "unknown"))
    return VisualSample(image=sample["image"], source=source, labels=labels, valid=valid)


def _report(name, metrics, config, run, data, elapsed, predict_seconds) -> dict[str, Any]:
    tasks = {}
    for task_name, metric in metrics.items():
        count = int(metric.num_images)
        if count == 0:
            continue
        task = get_task(task_name)
        tasks[task_name] = {
            "metrics": metric.results(),
            "num_images": count,
            "num_nonfinite_predictions": int(getattr(metric, "num_nonfinite", 0)),
            "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better,
            "metric_config": metric.config(),
        }
    return {
        "name": name,
        "tasks": tasks,
        "config": {**config.to_dict(), "batch_size": run[0], "seed": run[1]},
        "data": data,
        "versions": package_versions(),
        "timestamp": utc_timestamp(),
        "elapsed_seconds": round(elapsed, 3),
        "predict_seconds": round(predict_seconds, 3),
    }
