"""``stablemtl-convert``: turn the official StableMTL checkpoints into this toolkit's folders.

Example::

    stablemtl-convert --base stabilityai/stable-diffusion-2 --stage1 checkpoints/single_stream_unet.pth \
        --stage2 checkpoints/multi_stream/diffusion_pytorch_model.bin --output_dir runs/official

The official UNet is a 5-D fork of SD2's, but its parameter names and shapes are those of a stock
``UNet2DConditionModel`` with a 12-channel ``conv_in``, so its keys load 1:1. The stage-2 file also holds the
task-attention modules as children of each transformer block's self-attention
(``<block>.attn1.task_to_q.<task>.net.{0,2,4,6}``, ``task_to_k|task_to_v.<task>.fc1|fc2``,
``task_norm_q|k|v.<task>``, ``to_out_task``); they become ``task_layers.<i>.<same name>`` of a
``TaskAttention`` component, ``<i>`` the block's index in forward order. Pickle files are read with
``torch.load(weights_only=True)``, which refuses anything but tensors; outputs are safetensors.

Writes ``<output_dir>/stage1`` (a ``StableMTLPipeline`` folder: the base's VAE and scheduler, the task
tokens, the official stage-1 UNet) and, with ``--stage2``, ``<output_dir>/stage2/unet`` (the main UNet) and
``<output_dir>/stage2/task_attention``; the stage-1 UNet is the multi-stream model's auxiliary UNet.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from stablemtl.models.attention_processors import self_attention_layers
from stablemtl.models.task_attention import LAYER_CHOICES, TaskAttention

logger = logging.getLogger("stablemtl.convert")

OFFICIAL_TASKS = ("normal", "depth", "semantic", "optical_flow", "scene_flow", "albedo", "shading")
_TASK_KEY = re.compile(r"^(?P<block>.+\.attn1)\.(?P<rest>(?:task_(?:to|norm)_[qkv]|to_out_task)(?:\..+)?)$")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or a pickled state dict (``weights_only``), without a DDP ``module.``
    prefix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def split_task_attention(
    state: Mapping[str, torch.Tensor], unet: UNet2DConditionModel
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an official state dict into (UNet keys, task-attention keys renamed to ``task_layers.<i>.``)."""
    index = {name: i for i, (name, _, _) in enumerate(self_attention_layers(unet))}
    unet_state, task_state = {}, {}
    for key, value in state.items():
        match = _TASK_KEY.match(key)
        if match is None:
            unet_state[key] = value
            continue
        if match["block"] not in index:
            raise ValueError(f"task-attention key {key!r} belongs to no transformer block of the UNet")
        task_state[f"task_layers.{index[match['block']]}.{match['rest']}"] = value
    return unet_state, task_state


def task_attention_settings(task_state: Mapping[str, torch.Tensor]) -> dict:
    """Tasks, query MLP size and fusion read off the converted task-attention keys."""
    tasks = list(dict.fromkeys(k.split(".")[3] for k in task_state if ".task_to_v." in k))
    if not tasks:
        raise ValueError("the stage-2 checkpoint holds no task-attention keys (task_to_v.<task>...)")
    query = sorted(
        k for k in task_state if re.search(rf"\.task_to_q\.{re.escape(tasks[0])}\.net\.\d+\.weight$", k)
    )
    if not query:
        return {"tasks": tasks, "fusion": "sum"}
    layer = query[0].split(".")[1]
    linears = sorted(
        int(k.split(".")[-2]) for k in query if k.startswith(f"task_layers.{layer}.")
    )  # 0, 2, 4, ...: Linear layers of the query MLP
    hidden = task_state[f"task_layers.{layer}.task_to_q.{tasks[0]}.net.0.weight"].shape[0]
    return {
        "tasks": tasks,
        "fusion": "attention",
        "query_hidden_dim": int(hidden),
        "query_hidden_layers": len(linears) - 2,
    }


def unet_from_state(config: Mapping, state: Mapping[str, torch.Tensor]) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` of ``config`` (input channels from the checkpoint) holding ``state``."""
    in_channels = (
        int(state["conv_in.weight"].shape[1]) if "conv_in.weight" in state else config["in_channels"]
    )
    unet = UNet2DConditionModel.from_config({**config, "in_channels": in_channels})
    _load_strict(unet, state, "UNet")
    return unet


def convert(
    unet_config: Mapping,
    stage1: Mapping[str, torch.Tensor],
    stage2: Mapping[str, torch.Tensor] | None = None,
    tasks: Sequence[str] | None = None,
    layers: str = "all",
    n_heads: int = 4,
) -> tuple[UNet2DConditionModel, UNet2DConditionModel | None, TaskAttention | None]:
    """Official state dicts -> (stage-1 / auxiliary UNet, stage-2 main UNet, TaskAttention).

    ``tasks`` fixes the task order (default: the order of the checkpoint's keys); ``layers="dec"`` keeps the
    decoder blocks' modules only (the official code creates modules for all blocks but applies the decoder's).
    """
    aux_unet = unet_from_state(unet_config, stage1)
    if stage2 is None:
        return aux_unet, None, None
    shell = UNet2DConditionModel.from_config(aux_unet.config)
    unet_state, task_state = split_task_attention(stage2, shell)
    main_unet = unet_from_state(aux_unet.config, unet_state)
    settings = task_attention_settings(task_state)
    found = settings.pop("tasks")
    tasks = list(found if tasks is None else tasks)
    if sorted(tasks) != sorted(found):
        raise ValueError(f"tasks {tasks} differ from the checkpoint's task modules {found}")
    task_attention = TaskAttention.from_unet(main_unet, tasks, layers=layers, n_heads=n_heads, **settings)
    kept = {k: v for k, v in task_state.items() if int(k.split(".")[1]) in task_attention.active_layers}
    if len(kept) < len(task_state):
        logger.info(
            "dropped %d task-attention tensors of blocks outside layers=%s",
            len(task_state) - len(kept),
            layers,
        )
    _load_strict(task_attention, kept, "task attention")
    return aux_unet, main_unet, task_attention


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"the {what} checkpoint does not fit: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]})"
        )
    module.load_state_dict(dict(state), strict=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stablemtl-convert",
        description="Convert the official StableMTL stage-1/stage-2 checkpoints into stablemtl folders.",
    )
    p.add_argument(
        "--base", required=True, help="Stable Diffusion folder or Hub id (architecture, VAE, text encoder)"
    )
    p.add_argument(
        "--stage1", required=True, help="official single-stream UNet weights (.pth, .bin or .safetensors)"
    )
    p.add_argument("--stage2", help="official multi-stream UNet weights with the task-attention modules")
    tasks = list(OFFICIAL_TASKS)
    p.add_argument("--tasks", nargs="+", default=tasks, help=f"task names, official order (default: {tasks})")
    p.add_argument(
        "--layers", default="all", choices=LAYER_CHOICES, help="blocks with task attention (default: all)"
    )
    p.add_argument("--n_heads", type=int, default=4, help="heads of the task attention (default: 4)")
    p.add_argument("--output_dir", required=True, help="folder for stage1/ and stage2/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The pipeline is imported here: the CLI may reach any layer, the conversion functions above need none.
    from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline

    try:
        pipe = StableMTLPipeline.from_base(args.base, tasks=args.tasks)
        stage1 = load_state_dict(args.stage1)
        stage2 = load_state_dict(args.stage2) if args.stage2 else None
        config = {k: v for k, v in pipe.unet.config.items() if not k.startswith("_")}
        aux_unet, main_unet, task_attention = convert(
            config, stage1, stage2, args.tasks, args.layers, args.n_heads
        )
    except ValueError as error:
        print(f"stablemtl-convert: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    pipe.register_modules(unet=aux_unet)
    pipe.set_training_info(source="official StableMTL checkpoint", checkpoint=str(args.stage1))
    pipe.save_pretrained(out / "stage1")
    logger.info("wrote %s", out / "stage1")
    if main_unet is not None:
        main_unet.save_pretrained(out / "stage2" / "unet", safe_serialization=True)
        task_attention.save_pretrained(out / "stage2" / "task_attention")
        logger.info("wrote %s (unet, task_attention)", out / "stage2")
    return 0


if __name__ == "__main__":
    sys.exit(main())
