"""Model pieces added to a stock diffusers UNet: the widened ``conv_in`` and the cached task tokens."""

from stablemtl.models.conv_in import widen_conv_in
from stablemtl.models.task_tokens import TASK_EMBEDDINGS_NAME, TaskEmbeddings, encode_prompt

__all__ = ["TASK_EMBEDDINGS_NAME", "TaskEmbeddings", "encode_prompt", "widen_conv_in"]
