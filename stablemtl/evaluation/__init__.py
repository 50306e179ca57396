"""The shared evaluation of every model: per-task metrics, Δm, the evaluator and reports.

```python
from stablemtl.evaluation import evaluate_models, build_reference, load_reports, write_report

result = evaluate_models({"stage1": pipe}, samples, batch_size=4, num_visuals=4)
reference = build_reference(load_reports("runs/single_task/metrics.json"))
write_report("runs/eval", result.reports, reference, result.visuals)
```
"""

from stablemtl.evaluation.base import DenseMetric, resize_to_label
from stablemtl.evaluation.config import EvalConfig
from stablemtl.evaluation.delta import DELTA_M_FORMULA, delta_m, relative_gains
from stablemtl.evaluation.depth_metrics import DepthMetrics, fit_scale_shift
from stablemtl.evaluation.evaluator import Evaluation, Predictor, VisualSample, evaluate, evaluate_models
from stablemtl.evaluation.flow_metrics import OpticalFlowMetrics, SceneFlowMetrics, per_axis_nonnegative_scale
from stablemtl.evaluation.intrinsic_metrics import IntrinsicImageMetrics
from stablemtl.evaluation.normal_metrics import NormalMetrics
from stablemtl.evaluation.references import (
    build_reference,
    delta_m_table,
    load_reports,
    merge_reports,
    primary_metrics,
)
from stablemtl.evaluation.registry import (
    TaskMetricsAverager,
    build_metric,
    metric_families,
    register_metric_family,
)
from stablemtl.evaluation.report import render_markdown, write_report
from stablemtl.evaluation.semantic_metrics import SemanticMetrics

__all__ = [
    "DELTA_M_FORMULA",
    "DenseMetric",
    "DepthMetrics",
    "EvalConfig",
    "Evaluation",
    "IntrinsicImageMetrics",
    "NormalMetrics",
    "OpticalFlowMetrics",
    "Predictor",
    "SceneFlowMetrics",
    "SemanticMetrics",
    "TaskMetricsAverager",
    "VisualSample",
    "build_metric",
    "build_reference",
    "delta_m",
    "delta_m_table",
    "evaluate",
    "evaluate_models",
    "fit_scale_shift",
    "load_reports",
    "merge_reports",
    "metric_families",
    "per_axis_nonnegative_scale",
    "primary_metrics",
    "register_metric_family",
    "relative_gains",
    "render_markdown",
    "resize_to_label",
    "write_report",
]
