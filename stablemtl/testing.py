"""Tiny Stable-Diffusion-layout components, built offline in about a second, for tests, benchmarks, demo.

The UNet keeps SD's block layout (4 levels: 3 cross-attention down blocks and a plain one, a cross-attention
mid block, a plain up block and 3 cross-attention up blocks, 2 layers per block, hence 16 transformer blocks),
so everything that hooks into SD's attention layers works unchanged; only the widths are small. The
architecture configs are public functions so that the project's base pre-training script builds the same
model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from stablemtl.utils.atomic import atomic_folder

# Words the tiny tokenizer merges into single tokens: the task prompts and a few common words. Anything
# else still tokenizes, byte by byte.
TOKENIZER_WORDS = (
    "semantic",
    "depth",
    "normal",
    "optical",
    "flow",
    "scene",
    "albedo",
    "shading",
    "segmentation",
    "surface",
    "image",
    "a",
    "photo",
    "of",
)
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"


def tiny_unet_config(
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64),
    attention_heads: tuple[int, ...] = (2, 4, 4, 4),
    cross_attention_dim: int = 32,
) -> dict[str, Any]:
    """Config of a ``UNet2DConditionModel`` with SD2's block layout (16 transformer blocks), small widths."""
    return {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": list(block_out_channels),
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        # diffusers' historical naming: ``attention_head_dim`` holds the number of heads per level (as SD2).
        "attention_head_dim": list(attention_heads),
        "cross_attention_dim": cross_attention_dim,
        "use_linear_projection": True,
        "norm_num_groups": 8,
    }


def tiny_vae_config(block_out_channels: tuple[int, ...] = (32, 32, 64, 64)) -> dict[str, Any]:
    """Config of an ``AutoencoderKL`` with SD's shape contract: 4 levels (8x down), 4 latent channels."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out_channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out_channels),
        "block_out_channels": list(block_out_channels),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 64,
        "scaling_factor": 0.18215,
    }


def tiny_text_encoder_config(vocab_size: int, hidden_size: int = 32) -> CLIPTextConfig:
    """A 2-layer CLIP text encoder whose width matches the UNet's ``cross_attention_dim``."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def scheduler_config() -> dict[str, Any]:
    """The DDIM scheduler settings of SD2 (the StableMTL pipeline itself uses one fixed timestep)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to one printable unicode character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiny_tokenizer_files(words: tuple[str, ...] = TOKENIZER_WORDS) -> tuple[dict[str, int], list[str]]:
    """Build a CLIP BPE vocabulary and merge list offline: all 256 byte symbols (plain and word-final), plus
    one merge chain per word so that each word becomes a single token."""
    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [f"{c}</w>" for c in alphabet]
    merges: list[str] = []
    seen = set(tokens)
    for word in words:
        pieces = [*word[:-1], word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            merged = merged + piece
            if merged not in seen:
                merges.append(rule)
                tokens.append(merged)
                seen.add(merged)
    vocab = {BOS_TOKEN: 0, EOS_TOKEN: 1}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def tiny_tokenizer(words: tuple[str, ...] = TOKENIZER_WORDS) -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` over the tiny vocabulary (built from vocab.json and merges.txt files)."""
    vocab, merges = tiny_tokenizer_files(words)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(
            vocab=str(Path(tmp) / "vocab.json"), merges=str(Path(tmp) / "merges.txt"), model_max_length=77
        )


def tiny_sd_components(seed: int = 0) -> dict[str, Any]:
    """Freshly initialised tiny SD components (deterministic for a given ``seed``): the keyword arguments of
    ``StableDiffusionPipeline`` (unet, vae, text_encoder, tokenizer, scheduler, no safety checker)."""
    tokenizer = tiny_tokenizer()
    unet_config = tiny_unet_config()
    # One generator state per component, so that changing one architecture leaves the others' weights alone.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**tiny_vae_config())
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        tiny_text_encoder_config(len(tokenizer), hidden_size=unet_config["cross_attention_dim"])
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(**scheduler_config()),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def make_tiny_sd_folder(path: str | os.PathLike, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a complete Stable-Diffusion folder (``model_index.json``, unet/, vae/, text_encoder/, tokenizer/,
    scheduler/, safetensors weights) to ``path`` and return it.

    ``DiffusionPipeline.from_pretrained(path)`` and each component's ``from_pretrained(path, subfolder=...)``
    load it with ``HF_HUB_OFFLINE=1``. The folder is written to a temporary sibling and moved into place, so
    a reader never sees half of it. An existing folder is kept unless ``overwrite``.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            if (path / "model_index.json").is_file():
                return path
            raise ValueError(f"path {path} exists and is not an SD folder; pass overwrite=True to replace it")
    with atomic_folder(path) as staged:
        StableDiffusionPipeline(**tiny_sd_components(seed)).save_pretrained(staged, safe_serialization=True)
    return path
