"""Load what stage 1 starts from, as a ``StableMTLPipeline`` whose UNet is then trained.

From a Stable Diffusion layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)
``StableMTLPipeline.from_base`` widens ``conv_in`` to 12 channels and encodes the task prompts once. A
saved StableMTL folder (with ``task_embeddings.safetensors``) continues training as it is; tasks it does
not know yet are added with its text encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from stablemtl.models.task_tokens import TASK_EMBEDDINGS_NAME
from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline


def is_stablemtl_folder(base: str) -> bool:
    """True when ``base`` is a local StableMTL pipeline folder (it holds cached task tokens)."""
    return (Path(base) / TASK_EMBEDDINGS_NAME).is_file()


def load_pipeline(
    base: str,
    tasks: Sequence[str],
    revision: str | None = None,
    variant: str | None = None,
    cache_dir: str | None = None,
) -> StableMTLPipeline:
    """A pipeline knowing ``tasks``, built from ``base`` (an SD folder / Hub id, or a StableMTL folder).

    The VAE is frozen; the UNet is in training mode. The pipeline's UNet must have as many input channels
    as three VAE latents and cross-attention as wide as the task tokens.
    """
    kwargs = {k: v for k, v in (("revision", revision), ("variant", variant), ("cache_dir", cache_dir)) if v}
    if is_stablemtl_folder(base):
        pipe = StableMTLPipeline.from_pretrained(base, **kwargs)
        missing = [t for t in tasks if t not in pipe.task_embeddings]
        if missing:
            pipe.add_tasks(missing)
    else:
        pipe = StableMTLPipeline.from_base(base, tasks=list(tasks), **kwargs)
    width = pipe.unet.config.cross_attention_dim
    if width != pipe.task_embeddings.dim:
        raise ValueError(
            f"{base}: task tokens have width {pipe.task_embeddings.dim} but cross_attention_dim is {width}"
        )
    pipe.vae.requires_grad_(False).eval()
    pipe.unet.train()
    return pipe
