"""Reading reports back: load metrics.json files, merge them, and build a Δm reference from them."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from stablemtl.evaluation.bootstrap import interval, same_resamples, verdict
from stablemtl.evaluation.delta import delta_m, relative_gains

logger = logging.getLogger(__name__)

REPORT_FORMAT = "stablemtl-eval/1"


def load_reports(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The model reports in one ``metrics.json`` (a multi-model file or a single report dict).

    Every task entry must hold a ``metrics`` object of numbers (null for undefined) and a
    ``primary_metric`` naming one of them; anything else raises ``ValueError`` naming the file, model
    and task.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"report file {os.fspath(path)!r} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"report file {os.fspath(path)!r} is not valid JSON: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("models"), list):
        reports = data["models"]
    elif isinstance(data, dict) and isinstance(data.get("tasks"), dict):
        reports = [data]
    else:
        raise ValueError(f"{os.fspath(path)!r} is not a stablemtl-eval metrics.json (no 'models' or 'tasks')")
    for report in reports:
        _check_report(report, os.fspath(path))
    return [_restore_nan(r) for r in reports]


def _check_report(report: Any, path: str) -> None:
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise ValueError(f"{path!r}: every model report must be an object with a 'tasks' object")
    where = f"{path!r}, model {report.get('name', 'model')!r}"
    for task_name, entry in report["tasks"].items():
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        if not isinstance(metrics, dict):
            raise ValueError(f"{where}, task {task_name!r}: no 'metrics' object")
        primary = entry.get("primary_metric")
        if not isinstance(primary, str):
            raise ValueError(
                f"{where}, task {task_name!r}: 'primary_metric' must name one of its metrics "
                f"{sorted(metrics)}, got {primary!r}"
            )
        if primary not in metrics:
            raise ValueError(
                f"{where}, task {task_name!r}: primary metric {primary!r} is not among its metrics "
                f"{sorted(metrics)}"
            )
        for metric, value in metrics.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(
                    f"{where}, task {task_name!r}: metric {metric!r} must be a number or null, got {value!r}"
                )


def merge_reports(reports: Sequence[Mapping[str, Any] | str | os.PathLike]) -> list[dict[str, Any]]:
    """Concatenate model reports given as dicts or metrics.json paths, in order.

    A repeated model name gets a suffix (``name#2``) so that every row of the merged report is kept.
    """
    merged: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for item in reports:
        loaded = load_reports(item) if isinstance(item, (str, os.PathLike)) else [dict(item)]
        for report in loaded:
            name = str(report.get("name", "model"))
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                logger.warning("model name %r repeats; renaming it to %s#%d", name, name, seen[name])
                report = {**report, "name": f"{name}#{seen[name]}"}
            merged.append(report)
    return merged


def primary_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """``{task: value of its primary metric}`` for every task the report scores."""
    out = {}
    for task_name, entry in report.get("tasks", {}).items():
        value = entry["metrics"].get(entry["primary_metric"])
        if value is not None and math.isfinite(float(value)):
            out[task_name] = float(value)
    return out


def build_reference(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A Δm reference ``{task: {"value", "metric", "model"}}`` from earlier model reports.

    For each task, the report that scores the fewest tasks wins (so single-task models are the
    reference by default); ties go to the earlier report. Oracle rows are skipped. A reference task
    keeps its report's bootstrap values and settings (``"bootstrap"``, ``"bootstrap_settings"``), so
    that Δm can be resampled too.
    """
    reference: dict[str, dict[str, Any]] = {}
    # Oracle rows (predicted from the labels, "oracle": true) bound the models; they are never a reference.
    models = [r for r in reports if not r.get("oracle")]
    ranked = sorted(enumerate(models), key=lambda item: (len(item[1].get("tasks", {})), item[0]))
    for _, report in ranked:
        for task_name, value in primary_metrics(report).items():
            if task_name not in reference:
                metric = report["tasks"][task_name]["primary_metric"]
                model = report.get("name", "model")
                reference[task_name] = {"value": value, "metric": metric, "model": model}
                values = (report["tasks"][task_name].get("bootstrap") or {}).get("values")
                if values and report.get("bootstrap"):
                    reference[task_name]["bootstrap"] = list(values)
                    reference[task_name]["bootstrap_settings"] = dict(report["bootstrap"])
    if not reference:
        raise ValueError("the reference reports score no task")
    return reference


def delta_m_table(
    reports: Sequence[Mapping[str, Any]], reference: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Δm of each report against ``reference``: ``{model: {"delta_m", "tasks", "per_task"}}``.

    Only tasks scored by both, with the same primary metric, count. A model sharing no task with the
    reference gets ``delta_m = None``; so does a model with non-finite predictions on a reference task
    (averaging over its other tasks would hide its failure and could rank it higher).
    """
    out = {}
    for report in reports:
        refused = [
            t
            for t, entry in report.get("tasks", {}).items()
            if t in reference and int(entry.get("num_nonfinite_predictions") or 0) > 0
        ]
        if refused:
            name = str(report.get("name", "model"))
            out[name] = {"delta_m": None, "tasks": [], "per_task": {}, "nonfinite_tasks": sorted(refused)}
            continue
        metrics = {
            t: v
            for t, v in primary_metrics(report).items()
            if t in reference and reference[t]["metric"] == report["tasks"][t]["primary_metric"]
        }
        ref_values = {t: float(reference[t]["value"]) for t in metrics}
        name = str(report.get("name", "model"))
        if not metrics:
            out[name] = {"delta_m": None, "tasks": [], "per_task": {}}
            continue
        out[name] = {
            "delta_m": delta_m(metrics, ref_values),
            "tasks": sorted(metrics),
            "per_task": relative_gains(metrics, ref_values),
        }
        out[name].update(_delta_m_interval(report, reference, sorted(metrics)))
    return out


def _delta_m_interval(
    report: Mapping[str, Any], reference: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]
) -> dict[str, Any]:
    """The paired bootstrap interval of a Δm: the model's and the reference's primary metrics on the same
    resamples give one Δm per resample. Empty when the two were not scored on the same resamples."""
    draws = _delta_m_draws(report, reference, tasks)
    bounds = None if draws is None else interval(draws, float(report["bootstrap"].get("level", 0.95)))
    if bounds is None:
        return {}
    return {"interval": bounds, "verdict": verdict(*bounds)}


def _delta_m_draws(
    report: Mapping[str, Any], reference: Mapping[str, Mapping[str, Any]], tasks: Sequence[str]
) -> list[float] | None:
    """Δm over ``tasks`` on each bootstrap resample (NaN where a value is not finite), or None when the
    report and the reference were not scored on the same resamples."""
    settings = report.get("bootstrap")
    model_values = {t: (report["tasks"][t].get("bootstrap") or {}).get("values") for t in tasks}
    if not all(model_values.values()) or not all(
        reference[t].get("bootstrap") and same_resamples(settings, reference[t].get("bootstrap_settings"))
        for t in tasks
    ):
        return None
    draws = []
    for b in range(int(settings["resamples"])):
        metrics = {t: model_values[t][b] for t in tasks}
        refs = {t: reference[t]["bootstrap"][b] for t in tasks}
        finite = all(math.isfinite(v) and v != 0 for v in (*metrics.values(), *refs.values()))
        draws.append(delta_m(metrics, refs) if finite else math.nan)
    return draws


def delta_m_difference(
    a: Mapping[str, Any], b: Mapping[str, Any], reference: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """How much model ``a`` beats model ``b`` in Δm points against one ``reference``, with its interval.

    Both Δm are taken over the tasks that ``a``, ``b`` and the reference all score, so that the two are
    comparable. When the three were scored on the same resamples, the difference is resampled jointly
    (one Δm(a) − Δm(b) per resample), which is narrower than comparing two Δm intervals: the images that
    are hard for one model are mostly hard for the other. Returns ``{"models": [a, b], "tasks",
    "difference"}`` plus ``"interval"`` and ``"verdict"`` when paired; ``difference`` is None when they
    share no scored task.
    """
    names = [str(a.get("name", "model")), str(b.get("name", "model"))]
    table = delta_m_table([a, b], reference)
    tasks = sorted(set(table[names[0]]["tasks"]) & set(table[names[1]]["tasks"]))
    if not tasks:
        return {"models": names, "tasks": [], "difference": None}
    ref_values = {t: float(reference[t]["value"]) for t in tasks}
    a_metrics, b_metrics = primary_metrics(a), primary_metrics(b)
    out: dict[str, Any] = {
        "models": names,
        "tasks": tasks,
        "difference": delta_m(a_metrics, ref_values, tasks) - delta_m(b_metrics, ref_values, tasks),
    }
    draws = [_delta_m_draws(r, reference, tasks) for r in (a, b)]
    if draws[0] is not None and draws[1] is not None:  # both on the reference's resamples: paired
        bounds = interval([x - y for x, y in zip(*draws)], float(a["bootstrap"].get("level", 0.95)))
        if bounds is not None:
            out.update(interval=bounds, verdict=verdict(*bounds))
    return out


def _restore_nan(value: Any) -> Any:
    # metrics.json stores undefined values as null (strict JSON has no NaN): read them back as NaN.
    if isinstance(value, dict):
        if "metrics" in value and isinstance(value["metrics"], dict):
            metrics = {k: math.nan if v is None else v for k, v in value["metrics"].items()}
            value = {**value, "metrics": metrics}
        return {k: _restore_nan(v) if k != "metrics" else v for k, v in value.items()}
    return value
