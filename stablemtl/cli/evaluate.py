"""``stablemtl-eval``: score pipelines on data sets with the shared evaluator and write a report.

```bash
stablemtl-eval --model runs/s1 --model runs/s2 --data data/indoor --data data/street \
    --reference runs/single_task/metrics.json --out runs/eval
stablemtl-eval --merge runs/a/metrics.json --merge runs/b/metrics.json --out runs/both   # no re-run
```
Writes ``metrics.json``, ``report.md`` and ``figures/*.png`` into ``--out`` and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stablemtl.evaluation import (
    EvalConfig,
    build_reference,
    evaluate_models,
    load_reports,
    merge_reports,
    render_markdown,
    write_report,
)
from stablemtl.evaluation.depth_metrics import DEPTH_ALIGNMENTS
from stablemtl.evaluation.flow_metrics import FLOW_ALIGNMENTS

logger = logging.getLogger("stablemtl.eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stablemtl-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="pipeline folder (repeat to compare)")
    p.add_argument("--name", action="append", default=[], help="name per --model (default: folder)")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        help="source: a data folder, configs/data/<set>.yaml, 'reader:root' or 'hub:id' (repeat to chain)",
    )
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to score (default: all labelled)")
    p.add_argument("--reference", action="append", default=[], help="metrics.json for Δm (repeatable)")
    p.add_argument("--merge", action="append", default=[], help="metrics.json whose models join the report")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="at most N samples per --data")
    p.add_argument("--num_grids", type=int, default=4, help="prediction grids to draw (first N samples)")
    p.add_argument("--depth_alignment", choices=DEPTH_ALIGNMENTS, default="least_squares")
    p.add_argument("--min_depth", type=float, default=1e-3)
    p.add_argument("--max_depth", type=float, default=None)
    p.add_argument("--flow_alignment", choices=FLOW_ALIGNMENTS, default="per_axis_scale")
    p.add_argument("--scene_flow_alignment", choices=FLOW_ALIGNMENTS, default="per_axis_scale")
    p.add_argument(
        "--scene_flow_official_and", action="store_true", help="also report the official AND-rule accuracies"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--title", default="stablemtl evaluation")
    p.add_argument("--out", required=True, help="output folder")
    return p


def load_predictor(path: str, device: str = "cpu"):
    """Load a saved pipeline folder as a Predictor (its class is read from ``model_index.json``)."""
    folder = Path(path)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"--model {path!r} is not a pipeline folder: {index} is missing")
    class_name = json.loads(index.read_text()).get("_class_name", "StableMTLPipeline")
    import stablemtl.pipelines as pipelines

    cls = getattr(pipelines, class_name, None)
    if cls is None:
        from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline as cls
    pipe = cls.from_pretrained(str(folder))
    if hasattr(pipe, "to"):
        pipe = pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    if not callable(getattr(pipe, "predict", None)):
        raise ValueError(f"--model {path!r} loads as {type(pipe).__name__}, which has no predict() method")
    return pipe


class ChainedSamples:
    """Samples of several data folders in order, at most ``limit`` from each (sized, re-iterable)."""

    def __init__(self, paths: Sequence[str], limit: int | None = None) -> None:
        from stablemtl.data import load_source

        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        self.sources = [load_source(path, augment=False) for path in paths]
        self.limit = limit

    def __len__(self) -> int:
        sizes = [len(s) for s in self.sources]
        return sum(sizes) if self.limit is None else sum(min(n, self.limit) for n in sizes)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for source in self.sources:
            count = len(source) if self.limit is None else min(len(source), self.limit)
            for index in range(count):
                yield source[index]


def load_samples(paths: Sequence[str], limit: int | None = None) -> ChainedSamples:
    """The ``--data`` folders as one iterable of Sample dicts."""
    return ChainedSamples(paths, limit)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.model and not args.merge:
        raise SystemExit("stablemtl-eval: give at least one --model (with --data) or --merge")
    if args.model and not args.data:
        raise SystemExit("stablemtl-eval: --model needs at least one --data")
    if args.name and len(args.name) != len(args.model):
        raise SystemExit(f"stablemtl-eval: {len(args.name)} --name for {len(args.model)} --model")
    names = args.name or [Path(m).resolve().name for m in args.model]
    if len(set(names)) != len(names):
        raise SystemExit(f"stablemtl-eval: model names repeat ({names}); pass --name for each --model")

    reports: list[dict[str, Any]] = []
    visuals = []
    if args.model:
        config = EvalConfig(
            depth_alignment=args.depth_alignment,
            min_depth=args.min_depth,
            max_depth=args.max_depth,
            flow_alignment=args.flow_alignment,
            scene_flow_alignment=args.scene_flow_alignment,
            scene_flow_official_and=args.scene_flow_official_and,
        )
        predictors = {name: load_predictor(path, args.device) for name, path in zip(names, args.model)}
        samples = load_samples(args.data, args.limit)
        result = evaluate_models(
            predictors,
            samples,
            args.tasks,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            config=config,
            num_visuals=args.num_grids,
        )
        for name, path in zip(names, args.model):
            result.reports[name]["model_path"] = str(path)
            result.reports[name]["data_paths"] = list(args.data)
        reports = list(result.reports.values())
        visuals = result.visuals
    reports = merge_reports([*reports, *args.merge])
    reference = None
    if args.reference:
        reference = build_reference([r for path in args.reference for r in load_reports(path)])
    payload = write_report(args.out, reports, reference, visuals, title=args.title)
    summary = render_markdown(reports, reference, payload["delta_m"], {}, args.title)
    sys.stdout.write(summary.split("## Settings")[0])
    logger.info("wrote %s", Path(args.out) / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
