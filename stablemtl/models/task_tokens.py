"""Task-token conditioning: the text-encoder embedding of each task prompt, computed once and cached.

StableMTL conditions the UNet's cross-attention on the CLIP embedding of the task name
(docs/architecture.md): the prompt ("optical flow") is tokenized on its own, without padding to 77,
so the sequence is BOS + word tokens + EOS,
and its ``last_hidden_state`` is the condition. The official code re-encodes the prompt on every call; here
each embedding is computed once and saved beside the model (``task_embeddings.safetensors``, one key per
task), so inference needs neither tokenizer nor text encoder for the tasks the model knows.

Prompts have different token lengths. Each embedding is stored unpadded; only when several tasks share one
UNet call are they padded to a common length, with an attention mask that hides the padding from the
cross-attention (so the batched call equals the per-task calls).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stablemtl.utils import atomic_path

TASK_EMBEDDINGS_NAME = "task_embeddings.safetensors"


@torch.no_grad()
def encode_prompt(text_encoder: torch.nn.Module, tokenizer, prompt: str) -> torch.Tensor:
    """``(L, D)`` float32 CPU: the unpadded ``last_hidden_state`` of one prompt (BOS + tokens + EOS)."""
    ids = tokenizer(
        prompt,
        padding="do_not_pad",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids  # [1,L]
    device = next(text_encoder.parameters()).device
    hidden = text_encoder(ids.to(device))[0]  # [1,L,D]
    return hidden[0].detach().float().cpu()


class TaskEmbeddings:
    """The cached conditioning of each task: ``{task name: (L_task, D) float32 tensor}`` plus the prompts.

    ``batch(names)`` stacks them for one UNet call; ``save``/``load`` keep them as safetensors next to the
    model. Task names arrive as plain strings (the models layer knows nothing of the task registry).
    """

    def __init__(self, embeddings: Mapping[str, torch.Tensor], prompts: Mapping[str, str] | None = None):
        self._embeddings: dict[str, torch.Tensor] = {}
        self._prompts: dict[str, str] = {}
        dims = {int(e.shape[-1]) for e in embeddings.values()}
        if len(dims) > 1:
            raise ValueError(f"task embeddings must share one width, got {sorted(dims)}")
        for name, embedding in embeddings.items():
            self._set(name, embedding, (prompts or {}).get(name, name.replace("_", " ")))

    def _set(self, name: str, embedding: torch.Tensor, prompt: str) -> None:
        if embedding.dim() != 2 or embedding.shape[0] < 1:
            raise ValueError(f"embedding of task {name!r} must be (L, D), got {tuple(embedding.shape)}")
        if self._embeddings and embedding.shape[-1] != self.dim:
            raise ValueError(
                f"embedding of task {name!r} has width {embedding.shape[-1]}, expected {self.dim}"
            )
        self._embeddings[name] = embedding.detach().float().cpu().contiguous()
        self._prompts[name] = prompt

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def compute(cls, text_encoder: torch.nn.Module, tokenizer, prompts: Mapping[str, str]) -> TaskEmbeddings:
        """Encode ``prompts`` (``{task name: prompt}``) one at a time, unpadded."""
        return cls({name: encode_prompt(text_encoder, tokenizer, p) for name, p in prompts.items()}, prompts)

    def add(self, text_encoder: torch.nn.Module, tokenizer, prompts: Mapping[str, str]) -> None:
        """Compute and add (or replace) the embeddings of ``prompts`` (``{task name: prompt}``)."""
        for name, prompt in prompts.items():
            self._set(name, encode_prompt(text_encoder, tokenizer, prompt), prompt)

    # -- access ---------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._embeddings)

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self._prompts)

    @property
    def dim(self) -> int:
        return int(next(iter(self._embeddings.values())).shape[-1])

    def __contains__(self, name: object) -> bool:
        return name in self._embeddings

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._embeddings:
            raise ValueError(f"no task embedding for {name!r}; this model knows: {', '.join(self.names)}")
        return self._embeddings[name]

    def __len__(self) -> int:
        return len(self._embeddings)

    def __repr__(self) -> str:
        lengths = ", ".join(f"{n}: {e.shape[0]}" for n, e in self._embeddings.items())
        return f"TaskEmbeddings(dim={self.dim if self else None}, tokens={{{lengths}}})"

    def batch(
        self,
        names: Iterable[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stack the embeddings of ``names`` for one UNet call.

        Returns ``(embeddings [T, L_max, D], mask)``: shorter sequences are zero-padded at the end and
        ``mask`` is a ``[T, L_max]`` bool tensor (True = real token) to pass as the UNet's
        ``encoder_attention_mask``; ``mask`` is None when all sequences have the same length.
        """
        items = [self[name] for name in names]
        if not items:
            raise ValueError("names must hold at least one task")
        lengths = [e.shape[0] for e in items]
        longest = max(lengths)
        padded = torch.zeros(len(items), longest, self.dim)
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for i, embedding in enumerate(items):
            padded[i, : embedding.shape[0]] = embedding
            mask[i, : embedding.shape[0]] = True
        padded = padded.to(device=device, dtype=dtype)
        if min(lengths) == longest:
            return padded, None
        return padded, mask.to(device=device)

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/task_embeddings.safetensors`` atomically; return its path."""
        if not self._embeddings:
            raise ValueError("there are no task embeddings to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / TASK_EMBEDDINGS_NAME
        metadata = {"format": "pt", "order": json.dumps(self.names), "prompts": json.dumps(self._prompts)}
        with atomic_path(target) as tmp:
            save_file(self._embeddings, str(tmp), metadata=metadata)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, **hub_kwargs) -> TaskEmbeddings:
        """Read embeddings from a file, a folder holding ``task_embeddings.safetensors``, or a Hub repo id.

        ``hub_kwargs`` (``revision``, ``cache_dir``, ``token``, ``local_files_only``, ``subfolder``) are
        passed to ``huggingface_hub.hf_hub_download`` when ``path`` is not local.
        """
        path = Path(path)
        if path.is_dir():
            file = path / TASK_EMBEDDINGS_NAME
        elif path.is_file():
            file = path
        else:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(str(path), TASK_EMBEDDINGS_NAME, **hub_kwargs))
        if not file.is_file():
            raise ValueError(f"{path} holds no {TASK_EMBEDDINGS_NAME}")
        with safe_open(file, framework="pt") as f:
            metadata = f.metadata() or {}
            order = json.loads(metadata.get("order", "null")) or list(f.keys())
            tensors = {name: f.get_tensor(name) for name in order}
        return cls(tensors, json.loads(metadata.get("prompts", "{}")))
