"""Writing reports: ``metrics.json``, ``report.md`` and the PNG figures, for one or several models."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stablemtl.evaluation.delta import DELTA_M_FORMULA
from stablemtl.evaluation.evaluator import VisualSample
from stablemtl.evaluation.plots import delta_m_chart, prediction_grid, task_metrics_chart
from stablemtl.evaluation.references import REPORT_FORMAT, delta_m_difference, delta_m_table
from stablemtl.evaluation.versions import package_versions, utc_timestamp
from stablemtl.tasks import get_task, task_names
from stablemtl.utils import atomic_write_text

_ALIGNMENT_NOTES = {
    "least_squares": "per-image least-squares scale and shift in depth space",
    "least_squares_disparity": "per-image least-squares scale and shift in disparity space",
    "per_axis_scale": "per-image, per-axis non-negative scale fitted to the ground truth (oracle)",
    "none": "no alignment (predictions in native units)",
}


def write_report(
    out_dir: str | os.PathLike,
    reports: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, Any]] | None = None,
    visuals: Sequence[VisualSample] = (),
    title: str = "stablemtl evaluation",
    comparisons: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Write ``metrics.json``, ``report.md`` and PNGs (``figures/``) into ``out_dir``; return the JSON dict.

    Args:
        reports: model reports (from ``evaluate``/``evaluate_models`` or ``merge_reports``), as a
            list or ``{name: report}``.
        reference: Δm reference from ``build_reference`` (None: no Δm column).
        visuals: samples with predictions, one grid PNG each.
        comparisons: pairs of model names ``(a, b)``: how many Δm points ``a`` beats ``b`` by, with the
            paired interval of that difference (``delta_m_difference``); needs ``reference``.
    """
    reports = list(reports.values()) if isinstance(reports, Mapping) else list(reports)
    if not reports:
        raise ValueError("reports is empty: evaluate a model first")
    by_name = {r.get("name"): r for r in reports}
    unknown = sorted({n for pair in comparisons for n in pair} - set(by_name))
    if unknown:
        raise ValueError(
            f"comparisons name models {unknown} that are not in the report; models: {list(by_name)}"
        )
    if comparisons and not reference:
        raise ValueError("comparisons compare Δm, which needs a reference")
    out = Path(out_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for stale in figures.glob("grid_*.png"):  # grids of an earlier report in this folder would mislead
        stale.unlink()
    delta = delta_m_table(reports, reference) if reference else None
    payload = {
        "format": REPORT_FORMAT,
        "timestamp": utc_timestamp(),
        "versions": package_versions(),
        "models": reports,
        "reference": dict(reference) if reference else None,
        "delta_m": delta,
        "comparisons": [delta_m_difference(by_name[a], by_name[b], reference) for a, b in comparisons]
        if reference
        else [],
    }
    atomic_write_text(out / "metrics.json", json.dumps(_json_ready(payload), indent=2, allow_nan=False))

    pictures: dict[str, list[str]] = {"delta_m": [], "tasks": [], "grids": []}
    if delta and any(d["delta_m"] is not None for d in delta.values()):
        delta_m_chart({m: d["delta_m"] for m, d in delta.items()}, figures / "delta_m.png")
        pictures["delta_m"].append("figures/delta_m.png")
    for task_name in _tasks_in(reports):
        per_model = {r["name"]: r["tasks"][task_name]["metrics"] for r in reports if task_name in r["tasks"]}
        task_metrics_chart(task_name, per_model, figures / f"metrics_{task_name}.png")
        pictures["tasks"].append(f"figures/metrics_{task_name}.png")
    for i, visual in enumerate(visuals):
        name = f"grid_{i:03d}_{_slug(visual.source)}.png"
        prediction_grid(visual, figures / name)
        pictures["grids"].append(f"figures/{name}")
    markdown = render_markdown(reports, reference, delta, pictures, title, payload["comparisons"])
    atomic_write_text(out / "report.md", markdown)
    return payload


def _with_interval(entry: Mapping[str, Any]) -> str:
    """A primary metric and its bootstrap interval, ``0.123 [0.110, 0.140]``."""
    text = _fmt(entry["metrics"].get(entry["primary_metric"]))
    bounds = (entry.get("bootstrap") or {}).get("interval")
    return text if not bounds else f"{text} [{_fmt(bounds[0])}, {_fmt(bounds[1])}]"


def _noise_lines(reports, delta) -> list[str]:
    """The paragraph that says which Δm differ from the reference by more than the noise."""
    settings = next((r["bootstrap"] for r in reports if r.get("bootstrap")), None)
    if not settings:
        return []
    lines = [
        f"Brackets: {100 * settings['level']:.0f} % paired bootstrap intervals over the "
        f"{settings['num_samples']} test images ({settings['resamples']} resamples, seed {settings['seed']}, "
        "the same resamples for every model).",
        "",
    ]
    verdicts = []
    for name, d in (delta or {}).items():
        if d.get("interval") and d.get("delta_m") is not None:
            low, high = d["interval"]
            verdicts.append(
                f"- {name} vs reference: Δm {d['delta_m']:+.2f} % [{low:+.2f}, {high:+.2f}]: {d['verdict']}."
            )
    return lines + ([*verdicts, ""] if verdicts else [])


def _comparison_lines(comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per compared pair: the Δm difference, its paired interval and what it means."""
    lines = []
    for c in comparisons:
        a, b = c["models"]
        if c["difference"] is None:
            lines.append(f"- {a} − {b}: no Δm over a common task.")
            continue
        text = f"- {a} − {b}: {c['difference']:+.2f} Δm points"
        if c.get("interval"):
            low, high = c["interval"]
            text += f" [{low:+.2f}, {high:+.2f}]: {a} {c['verdict']}"
        text += f" ({len(c['tasks'])} tasks)."
        lines.append(text)
    if not lines:
        return []
    return [
        "Differences between models, in Δm points over the tasks both score (brackets: paired bootstrap "
        "interval of the difference, on the same resamples):",
        "",
        *lines,
        "",
    ]


def render_markdown(
    reports: Sequence[Mapping[str, Any]],
    reference: Mapping[str, Mapping[str, Any]] | None,
    delta: Mapping[str, Mapping[str, Any]] | None,
    pictures: Mapping[str, Sequence[str]],
    title: str = "stablemtl evaluation",
    comparisons: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The Markdown report: summary table (models x tasks, primary metrics, Δm), the Δm differences of
    ``comparisons`` (entries of ``delta_m_difference``), settings, per-task tables."""
    tasks = _tasks_in(reports)
    lines = [f"# {title}", ""]
    lines += [f"Generated {utc_timestamp()} by stablemtl-eval.", ""]
    lines += ["## Summary: primary metric per task", ""]
    header = ["model"] + [f"{t} {get_task(t).primary_metric} {_arrow(t)}" for t in tasks]
    if delta is not None:
        header.append("Δm % ↑")
    lines += [_row(header), _row(["---"] * len(header))]
    if reference:
        ref_cells = [_fmt(reference[t]["value"]) if t in reference else "–" for t in tasks]
        lines.append(_row(["*reference*", *ref_cells] + (["0 (by definition)"] if delta is not None else [])))
    for report in reports:
        cells = [report["name"]]
        for t in tasks:
            entry = report["tasks"].get(t)
            cells.append(_with_interval(entry) if entry else "–")
        if delta is not None:
            value = delta[report["name"]]["delta_m"]
            bounds = delta[report["name"]].get("interval")
            text = "–" if value is None else f"{value:+.2f}"
            cells.append(text if bounds is None else f"{text} [{bounds[0]:+.2f}, {bounds[1]:+.2f}]")
        lines.append(_row(cells))
    lines.append("")
    lines += _noise_lines(reports, delta)
    lines += _comparison_lines(comparisons)
    if reference:
        sources = ", ".join(f"{t}: {r['model']}" for t, r in reference.items())
        lines += [f"Reference per task: {sources}.", ""]
        lines += [
            "Δm (multi-task performance, the MTL-PSL / HiTT formula) over the T tasks scored by both the",
            "model and the reference, M = the task's primary metric; positive is better than the reference:",
            "",
            "```",
            DELTA_M_FORMULA,
            "```",
            "",
        ]
    lines += _problems(reports)
    lines += ["## Settings", ""]
    lines += _settings(reports)
    lines += ["## Per-task metrics", ""]
    for t in tasks:
        lines += [f"### {t}", ""]
        names: list[str] = []
        for report in reports:
            if t in report["tasks"]:
                names += [m for m in report["tasks"][t]["metrics"] if m not in names]
        lines += [_row(["model", "images", *names]), _row(["---"] * (len(names) + 2))]
        for report in reports:
            entry = report["tasks"].get(t)
            if entry:
                values = [_fmt(entry["metrics"].get(m)) for m in names]
                lines.append(_row([report["name"], str(entry["num_images"]), *values]))
        lines.append("")
    if any(pictures.values()):
        lines += ["## Figures", ""]
        for path in [*pictures.get("delta_m", []), *pictures.get("tasks", []), *pictures.get("grids", [])]:
            lines += [f"![{Path(path).stem}]({path})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
def _problems(reports) -> list[str]:
    """A "Not scored" section: non-finite predictions (metrics refused) and tasks a model skipped."""
    items = []
    for report in reports:
        for t, entry in report["tasks"].items():
            bad = int(entry.get("num_nonfinite_predictions") or 0)
            if bad:
                items.append(
                    f"- {report['name']}: {bad} of {entry['num_images']} {t} predictions hold NaN or inf, "
                    "so its metrics are not computed."
                )
        for t, reason in (report.get("skipped_tasks") or {}).items():
            items.append(f"- {report['name']}: {t} is not scored: {reason}.")
    return ["## Not scored", "", *items, ""] if items else []


def _settings(reports) -> list[str]:
    lines = []
    for report in reports:
        cfg = report.get("config", {})
        data = report.get("data", {})

        def note(key: str, cfg=cfg) -> str:
            return _ALIGNMENT_NOTES.get(cfg.get(key), str(cfg.get(key)))

        sources = ", ".join(f"{k}: {v}" for k, v in data.get("sources", {}).items())
        lines.append(
            f"- **{report['name']}**: {data.get('num_samples', '?')} samples ({sources}); "
            f"depth alignment: {note('depth_alignment')}; optical flow: {note('flow_alignment')}; "
            f"scene flow: {note('scene_flow_alignment')}; "
            f"predict time {report.get('predict_seconds', '?')} s of {report.get('elapsed_seconds', '?')} s."
        )
    lines += [
        "",
        "Metrics are computed at the label's resolution (predictions resized bilinear; class ids nearest).",
        "Depth: errors per image, averaged over images. Normal: mean angular error per image, averaged "
        "over images (`mean_angular_error_pooled`, median, RMSE and within-x° pool pixels over the data "
        "set). Flows: pixels pooled over the data set.",
        "Semantic: one confusion matrix over the data set. Albedo/shading: per image, averaged over images.",
        "Scene-flow accuracies use the standard OR rules unless a column says `official_and`.",
        "",
    ]
    return lines


def _tasks_in(reports) -> list[str]:
    order = {name: i for i, name in enumerate(task_names())}
    found = {t for r in reports for t in r.get("tasks", {})}
    return sorted(found, key=lambda t: (order.get(t, len(order)), t))


def _arrow(task_name: str) -> str:
    return "↑" if get_task(task_name).higher_is_better else "↓"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.4g}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "sample"


def _json_ready(value):
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value
