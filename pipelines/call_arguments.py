"""The plain arguments of a pipeline call, checked without the model: each ``ValueError`` names its argument.

The model-dependent checks (UNet channels, task tokens, image sizes) stay with the pipeline's
``check_inputs``, which calls :func:`check_call_arguments` for the rest.
"""

from __future__ import annotations

import torch

from stablemtl.pipelines.image_processor import RESAMPLE_METHODS

# Guard against an accidental huge processing_resolution (memory grows with its square): at most this
# factor times the resolution the model was trained at, or ABSOLUTE_MAX_RESOLUTION if it records none.
MAX_RESOLUTION_FACTOR = 4
ABSOLUTE_MAX_RESOLUTION = 4096


def resolution_limit(trained_resolution: int, override: int | None = None) -> int:
    """The largest ``processing_resolution`` a call accepts: ``override`` when given, else
    ``MAX_RESOLUTION_FACTOR`` times ``trained_resolution``, else ``ABSOLUTE_MAX_RESOLUTION`` (no record)."""
    if override is not None:
        if not isinstance(override, int) or override < 1:
            raise ValueError(f"max_processing_resolution={override!r} must be a positive int")
        return override
    return MAX_RESOLUTION_FACTOR * trained_resolution if trained_resolution > 0 else ABSOLUTE_MAX_RESOLUTION


def check_call_arguments(
    processing_resolution: int,
    multiple_of: int,
    limit: int,
    resample_method_input: str,
    resample_method_output: str,
    batch_size: int,
    output_type: str,
    generator: torch.Generator | list[torch.Generator] | None,
    count: int,
) -> None:
    """``processing_resolution`` (an int >= 0, a multiple of ``multiple_of``, at most ``limit``), the resample
    methods, ``batch_size``, ``output_type`` and ``generator`` (one, or one per each of ``count`` images)."""
    if not isinstance(processing_resolution, int) or processing_resolution < 0:
        raise ValueError(f"processing_resolution={processing_resolution!r} must be an int >= 0 (0: native)")
    if processing_resolution % multiple_of:
        raise ValueError(f"processing_resolution must be a multiple of {multiple_of}")
    if processing_resolution > limit:
        raise ValueError(
            f"processing_resolution={processing_resolution} exceeds the limit of {limit} px (memory "
            f"grows with its square; the limit is {MAX_RESOLUTION_FACTOR}x the training resolution, or "
            f"{ABSOLUTE_MAX_RESOLUTION} for a model without one): pass max_processing_resolution= to "
            "allow more"
        )
    for name, method in (
        ("resample_method_input", resample_method_input),
        ("resample_method_output", resample_method_output),
    ):
        if method not in RESAMPLE_METHODS:
            raise ValueError(f"{name}={method!r} must be one of {RESAMPLE_METHODS}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    if output_type not in ("np", "pt"):
        raise ValueError(f"output_type={output_type!r} must be 'np' or 'pt'")
    if isinstance(generator, (list, tuple)):
        if len(generator) != count or not all(isinstance(g, torch.Generator) for g in generator):
            raise ValueError(
                f"generator must be a torch.Generator or a list of {count} torch.Generators (one per "
                f"image), got a list of {len(generator)} items"
            )
    elif generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator or a list of them (one per image)")
