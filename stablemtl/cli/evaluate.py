"""``stablemtl-eval``: score pipelines on data sets with the shared evaluator and write a report.

```bash
stablemtl-eval --model runs/s1 --model someone/stablemtl --data data/indoor --data data/street \
    --reference runs/single_task/metrics.json --out runs/eval --write_model_card
stablemtl-eval --merge runs/a/metrics.json --merge runs/b/metrics.json --out runs/both   # no re-run
```
Writes ``metrics.json``, ``report.md`` and ``figures/*.png`` into ``--out`` and prints the summary. With
``--write_model_card`` each evaluated local folder's model card gets the metrics measured here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stablemtl.cli.help_format import DefaultsHelpFormatter
from stablemtl.cli.oracles import CEILING_ROW, ENCODING_ROW, oracle_predictors
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
from stablemtl.utils.interleave import interleaved_count, interleaved_rows

logger = logging.getLogger("stablemtl.eval")

DESCRIPTION = (
    "Score saved pipelines (local folders or Hub ids) on data sets with the shared evaluator, and write "
    "metrics.json, report.md and figures/*.png into --out. --merge joins earlier metrics.json files "
    "without re-running them."
)
DTYPES = ("fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stablemtl-eval", description=DESCRIPTION, formatter_class=DefaultsHelpFormatter
    )
    p.add_argument(
        "--model", action="append", default=[], help="pipeline folder or Hub id (repeat to compare models)"
    )
    p.add_argument(
        "--name", action="append", default=[], help="report name per --model (default: its folder name)"
    )
    p.add_argument(
        "--data",
        action="append",
        default=[],
        help="source: a data folder, configs/data/<set>.yaml, 'reader:root' or 'hub:id' "
        "(repeat to add several; read round robin)",
    )
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to score (default: every labelled task)")
    p.add_argument(
        "--reference", action="append", default=[], help="metrics.json of single-task references for Δm"
    )
    p.add_argument("--merge", action="append", default=[], help="metrics.json whose models join the report")
    p.add_argument(
        "--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
        help="report how many Δm points model A beats model B by, with the paired bootstrap interval of that "
        "difference (names as in the report; needs --reference; repeatable)",
    )  # fmt: skip
    p.add_argument("--batch_size", type=int, default=4, help="images per model call")
    p.add_argument("--limit", type=int, default=None, help="at most N samples per --data (default: all)")
    p.add_argument("--num_grids", type=int, default=4, help="prediction grids to draw (first N samples)")
    p.add_argument(
        "--no_oracles", action="store_true",
        help="leave out the encoding and ceiling rows (a perfect model without and with the VAE)",
    )  # fmt: skip
    p.add_argument(
        "--depth_alignment", choices=DEPTH_ALIGNMENTS, default="least_squares",
        help="how depth predictions are aligned to the ground truth before scoring",
    )  # fmt: skip
    p.add_argument("--min_depth", type=float, default=1e-3, help="ground-truth depths below this are ignored")
    p.add_argument("--max_depth", type=float, default=None, help="ground-truth depths above this are ignored")
    p.add_argument(
        "--flow_alignment", choices=FLOW_ALIGNMENTS, default="per_axis_scale",
        help="how optical-flow predictions (normalised per axis) are scaled to the ground truth",
    )  # fmt: skip
    p.add_argument(
        "--scene_flow_alignment", choices=FLOW_ALIGNMENTS, default="per_axis_scale",
        help="how scene-flow predictions (normalised per axis) are scaled to the ground truth",
    )  # fmt: skip
    p.add_argument(
        "--scene_flow_official_and", action="store_true", help="also report the official AND-rule accuracies"
    )
    p.add_argument(
        "--device", choices=DEVICES, default="auto", help="where models run; auto: cuda, else mps, else cpu"
    )
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="precision the models are loaded in")
    p.add_argument("--cache_dir", default=None, help="Hugging Face cache for Hub ids (default: the HF cache)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of every Hub id")
    p.add_argument(
        "--write_model_card", action="store_true",
        help="write each --model folder's metrics into its model_index.json and README.md model card",
    )  # fmt: skip
    p.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    p.add_argument("--title", default="stablemtl evaluation", help="title of report.md")
    p.add_argument("--out", required=True, help="output folder of the report")
    return p


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``mps``, else ``cpu``; other names pass through."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# Model folders that are not diffusers pipelines name their type in config.json ("model_type").
MODEL_TYPES = {
    "hitt": "stablemtl.models.baselines.hitt:HiTTModel",
    "prototype": "stablemtl.models.baselines.prototype:PrototypeModel",
}


def _read_folder_json(path: str, name: str, cache_dir: str | None, revision: str | None) -> dict | None:
    """``name`` (a JSON file) of a local folder or of a Hub id (offline, the Hugging Face cache serves
    it); None when the folder or repository has no such file."""
    folder = Path(path)
    if folder.exists():
        file = folder / name
        if not file.is_file():
            return None
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            file = Path(hf_hub_download(path, name, cache_dir=cache_dir, revision=revision))
        except EntryNotFoundError:
            return None
        except Exception as err:  # invalid id, not found, offline and not cached: one clear message
            raise ValueError(
                f"--model {path!r} is neither a local model folder nor a loadable Hub id "
                f"({type(err).__name__}: {str(err).splitlines()[0]})"
            ) from err
    try:
        content = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"--model {path!r}: {file} cannot be read as JSON ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(content, dict):
        raise ValueError(f"--model {path!r}: {file} must hold a JSON object")
    return content


def _load_model_folder(path: str, config: dict, device: str, torch_dtype, hub_kwargs: dict):
    """A non-pipeline model folder (a baseline) by the ``model_type`` its ``config.json`` names."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"--model {path!r} is not a pipeline folder (no model_index.json) and its config.json names "
            f"model_type {model_type!r}; known model types: {', '.join(MODEL_TYPES)}"
        )
    module_name, class_name = MODEL_TYPES[model_type].split(":")
    model_class = getattr(importlib.import_module(module_name), class_name)
    model = model_class.from_pretrained(path, **hub_kwargs)
    return model.to(device=resolve_device(device), dtype=torch_dtype).eval()


def load_predictor(
    path: str,
    device: str = "auto",
    dtype: str = "fp32",
    cache_dir: str | None = None,
    revision: str | None = None,
):
    """Load a saved model (local folder or Hub id) as a Predictor: a pipeline, its class read from
    ``model_index.json`` and looked up in ``stablemtl.pipelines``, or a model folder whose
    ``config.json`` names a known ``model_type`` (the baselines)."""
    import torch

    import stablemtl.pipelines as pipelines

    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} must be one of {DTYPES}")
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    hub_kwargs = {k: v for k, v in (("cache_dir", cache_dir), ("revision", revision)) if v is not None}
    index = _read_folder_json(path, "model_index.json", cache_dir, revision)
    if index is None:
        config = _read_folder_json(path, "config.json", cache_dir, revision)
        if config is None:
            if not Path(path).exists():
                raise ValueError(
                    f"--model {path!r} is neither a local model folder nor a loadable Hub id (neither "
                    "model_index.json nor config.json could be found, in the cache or online)"
                )
            raise ValueError(
                f"--model {path!r} is not a pipeline folder (model_index.json is missing) nor a model "
                "folder (config.json with a model_type)"
            )
        return _load_model_folder(path, config, device, torch_dtype, hub_kwargs)
    class_name = _pipeline_class_name(index, f"--model {path!r}: model_index.json")
    cls = getattr(pipelines, class_name, None) if class_name in pipelines.__all__ else None
    if cls is None:
        raise ValueError(
            f"--model {path!r} is a {class_name}, not a stablemtl pipeline ({', '.join(pipelines.__all__)})"
        )
    pipe = cls.from_pretrained(path, torch_dtype=torch_dtype, **hub_kwargs)
    pipe = pipe.to(resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    if not callable(getattr(pipe, "predict", None)):
        raise ValueError(f"--model {path!r} loads as {type(pipe).__name__}, which has no predict() method")
    return pipe


def _pipeline_class_name(config: dict, where: str) -> str:
    """``_class_name`` of a ``model_index.json``; diffusers' ``[module, class]`` form gives the class."""
    class_name = config.get("_class_name", "StableMTLPipeline")
    if isinstance(class_name, list) and len(class_name) == 2 and all(isinstance(c, str) for c in class_name):
        class_name = class_name[1]
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise ValueError(
            f"{where}: '_class_name' must name the pipeline class (e.g. \"StableMTLPipeline\" or "
            f'["pipeline_stablemtl", "StableMTLPipeline"]), got {class_name!r}'
        )
    return class_name


class InterleavedSamples:
    """Samples of several data folders, round robin (row 0 of each, then row 1, ...: the demo's order), at
    most ``limit`` from each; sized and re-iterable."""

    def __init__(self, paths: Sequence[str], limit: int | None = None) -> None:
        from stablemtl.data import load_source

        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        self.sources = [load_source(path, augment=False) for path in paths]
        self.limit = limit

    def __len__(self) -> int:
        return interleaved_count(self.sources, self.limit)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return interleaved_rows(self.sources, self.limit)


def load_samples(paths: Sequence[str], limit: int | None = None) -> InterleavedSamples:
    """The ``--data`` folders as one iterable of Sample dicts, round robin across folders."""
    return InterleavedSamples(paths, limit)


def write_model_cards(folders: Sequence[str], reports: Sequence[dict[str, Any]], data: Sequence[str]) -> None:
    """Write each report's metrics into its pipeline folder's model card (``--write_model_card``)."""
    from stablemtl.hub import write_metrics_to_model_card

    for folder, report in zip(folders, reports):
        metrics = {task: entry["metrics"] for task, entry in report["tasks"].items()}
        if not metrics:
            logger.warning("%s: no task was scored; its model card is left as it was", folder)
            continue
        card = write_metrics_to_model_card(folder, metrics, [Path(d).resolve().name for d in data])
        logger.info("wrote the metrics of %s into %s", report["name"], card)


def _check_comparisons(args: argparse.Namespace, names: Sequence[str]) -> None:
    if not args.reference:
        raise SystemExit("stablemtl-eval: --compare compares Δm, which needs --reference")
    evaluated = [*names, *([] if args.no_oracles or not args.model else [ENCODING_ROW, CEILING_ROW])]
    try:  # the report's names: the evaluated models', then the merged ones' (repeats get "#2")
        known = [
            r["name"] for r in merge_reports([*({"name": n, "tasks": {}} for n in evaluated), *args.merge])
        ]
    except ValueError as err:
        raise SystemExit(f"stablemtl-eval: --merge: {err}") from None
    unknown = sorted({n for pair in args.compare for n in pair} - set(known))
    if unknown:
        raise SystemExit(f"stablemtl-eval: --compare names {unknown}, not models of this report: {known}")


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
    not_folders = [m for m in args.model if not Path(m).is_dir()]
    if args.write_model_card and not_folders:
        raise SystemExit(
            f"stablemtl-eval: --write_model_card writes into local folders only; not folders: {not_folders}"
        )

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise SystemExit(f"stablemtl-eval: --out {args.out!r} is a file, not a folder")
    if args.compare:  # checked before the (long) evaluation, as the reference is
        _check_comparisons(args, names)
    reference = None
    if args.reference:  # checked before the (long) evaluation, not after it
        try:
            reference = build_reference([r for path in args.reference for r in load_reports(path)])
        except ValueError as err:
            raise SystemExit(f"stablemtl-eval: --reference: {err}") from None

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
        predictors = {
            name: load_predictor(path, args.device, args.dtype, args.cache_dir, args.revision)
            for name, path in zip(names, args.model)
        }
        samples = load_samples(args.data, args.limit)
        oracles = {} if args.no_oracles else oracle_predictors(predictors)
        result = evaluate_models(
            {**predictors, **oracles},
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
        if args.write_model_card:
            write_model_cards(args.model, [result.reports[n] for n in names], args.data)
        reports = list(result.reports.values())
        visuals = result.visuals
        models = [result.reports[n] for n in names]  # the oracle rows score whenever labels exist
        if not any(r["tasks"] for r in models):
            reasons = "; ".join(
                f"{r['name']}: {task} ({why})" for r in models for task, why in r["skipped_tasks"].items()
            )
            raise SystemExit(f"stablemtl-eval: error: nothing was scored ({reasons or 'no task labelled'})")
    reports = merge_reports([*reports, *args.merge])
    try:
        payload = write_report(
            args.out, reports, reference, visuals, args.title, [tuple(c) for c in args.compare]
        )
    except ValueError as err:
        raise SystemExit(f"stablemtl-eval: {err}") from None
    summary = render_markdown(reports, reference, payload["delta_m"], {}, args.title, payload["comparisons"])
    sys.stdout.write(summary.split("## Settings")[0])
    logger.info("wrote %s", Path(args.out) / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
