"""Model pieces added to stock diffusers UNets: the widened ``conv_in``, the cached task tokens, and the
multi-stream model (task attention, its attention processors, task masking, the two-stream wrapper)."""

from stablemtl.models.attention_processors import (
    CAPTURE_POINTS,
    FeatureCapture,
    TaskAttentionState,
    install_task_attention,
    self_attention_layers,
)
from stablemtl.models.conv_in import widen_conv_in
from stablemtl.models.multistream import MultiStreamOutput, MultiStreamUNet
from stablemtl.models.task_attention import TaskAttention
from stablemtl.models.task_masking import MASKING_MODES, TaskMasking
from stablemtl.models.task_tokens import TASK_EMBEDDINGS_NAME, TaskEmbeddings, encode_prompt

__all__ = [
    "CAPTURE_POINTS",
    "MASKING_MODES",
    "TASK_EMBEDDINGS_NAME",
    "FeatureCapture",
    "MultiStreamOutput",
    "MultiStreamUNet",
    "TaskAttention",
    "TaskAttentionState",
    "TaskEmbeddings",
    "TaskMasking",
    "encode_prompt",
    "install_task_attention",
    "self_attention_layers",
    "widen_conv_in",
]
