"""Task-adaptive LoRA on a UNet (the TA-LoRA idea, docs/lora.md): one shared adapter plus gated task adapters.

- **Shared adapter** ("slow weights", rank ``R``) on every targeted layer, updated by every task. Its
  ``lora_B`` starts at zero, so it adds exactly nothing at step 0.
- **Task adapters** ("fast weights", rank ``r``, one per task) on the decoder (``up_blocks``) layers by
  default, where the dense outputs are formed. Each task adapter's output is multiplied by a learnable
  gate, one scalar per task and layer, initialised to zero: training starts exactly at the shared model,
  while the adapter's own weights start random so that the gate has a gradient (a zero gate on a zero
  ``lora_B`` would never move).
- The base UNet is frozen; everything is a peft ``LoraConfig`` named adapter added with
  ``unet.add_adapter``, so ``get_peft_model_state_dict``, ``fuse_lora`` and ``unload_lora`` work as usual.

Routing: :meth:`TaskLoRA.set_routing` takes the task of every sample of the next UNet call. Only the
shared adapter and the adapters of tasks present are active (peft skips the others, so an absent task's
weights get no gradient, not a zero one that Adam's momentum would still move). With several tasks in one
batch each task adapter's output is also multiplied by a 0/1 mask of its samples, so every sample sees
exactly shared + its own task, in one batched call. The routing stays set until the next call on purpose:
gradient checkpointing re-runs the forward during ``backward`` and must see the same routing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

SHARED_ADAPTER = "shared"
TASK_ADAPTER_PREFIX = "task_"
UNET_PREFIX = "unet."  # diffusers' key prefix: a plain load_lora_weights reads the shared adapter
TASK_PREFIX = "unet_tasks."  # unet_tasks.<task>.<module>.lora_A.weight
GATE_PREFIX = "unet_task_gates."  # unet_task_gates.<task>: [layers] gates
GATES_ATTRIBUTE = "ta_lora_gates"  # where the gate module hangs on the UNet (so DDP/EMA/checkpoints see it)
# Attention and feed-forward projections and the convolutions, conv_in (the 12-channel input) and conv_out
# included: on the demo's data, adapters on the attention projections alone stay far behind full
# fine-tuning (docs/lora.md, measured). ATTENTION_TARGETS is diffusers' usual, lighter choice.
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_TARGETS = (
    *ATTENTION_TARGETS,
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_in",
    "conv_out",
)
TASK_LAYER_CHOICES = ("dec", "all")


def task_adapter_name(task: str) -> str:
    """The peft adapter name of ``task``'s adapter."""
    return f"{TASK_ADAPTER_PREFIX}{task}"


@dataclass
class TaskLoRASettings:
    """What a TA-LoRA installation looks like; saved beside the weights so that loading rebuilds it.

    ``rank``: shared adapter rank R; ``task_rank``: task adapter rank r; ``task_layers``: ``"dec"``
    (``up_blocks`` only) or ``"all"``; ``targets``: module-name suffixes to adapt; ``tasks``: task names, in
    order; ``seed``: initialisation seed (adapters are drawn from an explicit generator).
    """

    rank: int
    task_rank: int
    tasks: list[str]
    task_layers: str = "dec"
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    seed: int = 0

    def validate(self) -> None:
        for name in ("rank", "task_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.task_layers not in TASK_LAYER_CHOICES:
            raise ValueError(f"task_layers must be one of {TASK_LAYER_CHOICES}, got {self.task_layers!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(
                f"targets must be a non-empty list of module-name suffixes, got {self.targets!r}"
            )
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct names, got {self.tasks!r}")
        if SHARED_ADAPTER in self.tasks:
            raise ValueError(f"tasks must not contain the reserved name {SHARED_ADAPTER!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TaskLoRASettings:
        settings = cls(**values)
        settings.validate()
        return settings

    def target_pattern(self, decoder_only: bool) -> str:
        """peft ``target_modules`` regex (full match on module names): a targeted suffix, optionally
        restricted to the UNet decoder (``up_blocks``)."""
        suffixes = "|".join(re.escape(t) for t in self.targets)
        prefix = r"up_blocks\..*\." if decoder_only else r"(.*\.)?"
        return f"^{prefix}({suffixes})$"


class TaskGates(torch.nn.Module):
    """Zero-initialised gates: ``gates[task]`` holds one scalar per layer carrying that task's adapter.

    Also holds the current routing, ``masks``: ``{task: [B] 0/1}`` for a mixed-task batch, else None.
    """

    def __init__(self, layers: dict[str, list[str]]):
        super().__init__()
        self.layers = {task: list(names) for task, names in layers.items()}
        self.gates = torch.nn.ParameterDict(
            {task: torch.nn.Parameter(torch.zeros(len(names))) for task, names in self.layers.items()}
        )
        self.masks: dict[str, torch.Tensor] | None = None

    def scale(self, task: str, index: int, output: torch.Tensor) -> torch.Tensor:
        """Task adapter ``output`` (batch first) times its gate and, in a mixed batch, its sample mask."""
        factor = self.gates[task][index].to(output.dtype)
        if self.masks is None:
            return output * factor
        mask = self.masks[task]
        if mask.shape[0] != output.shape[0]:
            raise ValueError(
                f"the routing was set for {mask.shape[0]} samples but the UNet got {output.shape[0]}: call "
                "set_routing with one task per sample of the batch"
            )
        return output * (factor * mask.to(output.dtype).view(-1, *[1] * (output.ndim - 1)))


class TaskLoRA:
    """Shared + per-task LoRA adapters with zero-initialised task gates, installed on ``unet``.

    Use :meth:`install` for fresh adapters; :meth:`set_routing` before each UNet call.
    """

    def __init__(self, unet: torch.nn.Module, settings: TaskLoRASettings, gates: TaskGates, hooks: list):
        self.unet = unet
        self.settings = settings
        self.gates = gates
        self._hooks = hooks
        self._active: tuple[str, ...] | None = None
        self._routing: str | list[str] = settings.tasks[0]
        # Set by the pipeline's fuse_lora: a task name (shared + that task merged), "" (shared only) or None.
        self.fused_task: str | None = None

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def install(cls, unet: torch.nn.Module, settings: TaskLoRASettings) -> TaskLoRA:
        """Add the shared and task adapters to ``unet`` (freezing its base weights) and the task gates.

        ``ValueError`` if a target matches no layer, or the UNet already carries adapters."""
        settings.validate()
        if getattr(unet, "peft_config", None) or hasattr(unet, GATES_ATTRIBUTE):
            raise ValueError("the UNet already carries LoRA adapters: unload them first")
        unet.requires_grad_(False)
        generator = torch.Generator().manual_seed(settings.seed)
        shared = LoraConfig(
            r=settings.rank, lora_alpha=settings.rank, target_modules=settings.target_pattern(False)
        )
        try:
            unet.add_adapter(shared, adapter_name=SHARED_ADAPTER)
        except ValueError as error:
            raise ValueError(
                f"lora targets {settings.targets} match no layer of the UNet: {error}"
            ) from error
        decoder_only = settings.task_layers == "dec"
        for task in settings.tasks:
            config = LoraConfig(
                r=settings.task_rank,
                lora_alpha=settings.task_rank,
                target_modules=settings.target_pattern(decoder_only),
            )
            try:
                unet.add_adapter(config, adapter_name=task_adapter_name(task))
            except ValueError as error:
                raise ValueError(
                    f"lora targets {settings.targets} match no {settings.task_layers!r} layer: {error}"
                ) from error
        layers: dict[str, list[str]] = {task: [] for task in settings.tasks}
        for name, module in _tuner_layers(unet):
            _init_adapter(module, SHARED_ADAPTER, generator, zero_b=True)
            for task in settings.tasks:
                if task_adapter_name(task) in module.lora_A:
                    _init_adapter(module, task_adapter_name(task), generator, zero_b=False)
                    layers[task].append(name)
        gates = TaskGates(layers).to(device=next(unet.parameters()).device)
        unet.add_module(GATES_ATTRIBUTE, gates)
        hooks = []
        for task, names in layers.items():
            for index, name in enumerate(names):
                lora_b = unet.get_submodule(name).lora_B[task_adapter_name(task)]
                hooks.append(lora_b.register_forward_hook(_gate_hook(gates, task, index)))
        lora = cls(unet, settings, gates, hooks)
        lora.set_trainable(True)
        lora.set_routing(settings.tasks[0])
        return lora

    def set_trainable(self, trainable: bool) -> None:
        """Adapters and gates require grad (``trainable``) or not; the base UNet always stays frozen."""
        for parameter in self.adapter_parameters():
            parameter.requires_grad_(trainable)

    def adapter_parameters(self) -> list[torch.nn.Parameter]:
        """Every adapter weight and gate (what training updates)."""
        names = {SHARED_ADAPTER, *map(task_adapter_name, self.settings.tasks)}
        parameters = list(self.gates.parameters())
        for _, module in _tuner_layers(self.unet):
            for adapter in names & set(module.lora_A):
                parameters += [*module.lora_A[adapter].parameters(), *module.lora_B[adapter].parameters()]
        return parameters

    # -- routing -----------------------------------------------------------------------------------------
    def set_routing(self, tasks: str | Sequence[str]) -> None:
        """Route the next UNet calls: ``tasks`` is one task for the whole batch, or one task per sample.

        Stays in force until changed (gradient checkpointing re-runs the forward in ``backward``)."""
        per_sample = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = sorted(set(per_sample) - set(self.settings.tasks))
        if not per_sample or unknown:
            raise ValueError(f"tasks {unknown or per_sample} have no adapter; adapted: {self.settings.tasks}")
        present = list(dict.fromkeys(per_sample))
        if self.fused_task and present != [self.fused_task]:
            raise ValueError(
                f"the adapters of task {self.fused_task!r} are fused into the UNet: it predicts only that "
                f"task, not {present}; unfuse_lora() first"
            )
        active = (SHARED_ADAPTER, *map(task_adapter_name, present))
        if active != self._active:
            for _, module in _tuner_layers(self.unet):
                requires_grad = [p.requires_grad for p in self._layer_parameters(module)]
                module.set_adapter(list(active))  # peft toggles requires_grad: restore it below
                for parameter, flag in zip(self._layer_parameters(module), requires_grad, strict=True):
                    parameter.requires_grad_(flag)
            self._active = active
        self._routing = tasks if isinstance(tasks, str) else per_sample
        if len(present) == 1:
            self.gates.masks = None
        else:
            device = self.gates.gates[present[0]].device
            self.gates.masks = {t: torch.tensor([s == t for s in per_sample], device=device) for t in present}

    @contextmanager
    def routing(self, tasks: str | Sequence[str]) -> Iterator[None]:
        """:meth:`set_routing` for the duration of a block (inference), then the previous routing."""
        previous = self._routing
        self.set_routing(tasks)
        try:
            yield
        finally:
            self.set_routing(previous)

    def _layer_parameters(self, module: BaseTunerLayer) -> list[torch.nn.Parameter]:
        return [p for key in module.lora_A for p in (*module.lora_A[key].parameters(),
                                                      *module.lora_B[key].parameters())]  # fmt: skip

    # -- weights -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters and gates as one flat dict (contiguous CPU tensors): the shared adapter under diffusers'
        ``unet.<module>.lora_A.weight`` keys, task adapters under ``unet_tasks.<task>.``, gates under
        ``unet_task_gates.<task>``."""
        state = {
            UNET_PREFIX + k: v
            for k, v in get_peft_model_state_dict(self.unet, adapter_name=SHARED_ADAPTER).items()
        }
        for task in self.settings.tasks:
            adapter = get_peft_model_state_dict(self.unet, adapter_name=task_adapter_name(task))
            state.update({f"{TASK_PREFIX}{task}.{k}": v for k, v in adapter.items()})
            state[GATE_PREFIX + task] = self.gates.gates[task]
        return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`state_dict` wrote; ``ValueError`` naming missing or unexpected keys."""
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"LoRA weights do not fit these adapters: missing {missing[:3]} ({len(missing)} in all), "
                f"unexpected {unexpected[:3]} ({len(unexpected)} in all)"
            )
        groups = {
            SHARED_ADAPTER: {k[len(UNET_PREFIX) :]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
        }
        for task in self.settings.tasks:
            prefix = f"{TASK_PREFIX}{task}."
            groups[task_adapter_name(task)] = {
                k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)
            }
        for adapter, weights in groups.items():
            result = set_peft_model_state_dict(self.unet, weights, adapter_name=adapter)
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"adapter {adapter}: unexpected keys {result.unexpected_keys[:3]}")
        with torch.no_grad():
            for task in self.settings.tasks:
                gate = self.gates.gates[task]
                gate.copy_(state[GATE_PREFIX + task].to(device=gate.device, dtype=gate.dtype))

    # -- merging and removal -----------------------------------------------------------------------------
    def fold_gates(self, task: str) -> None:
        """Multiply ``task``'s gates into its ``lora_B`` weights and set the gates to one (same function),
        so that peft's merge, which knows nothing of gates, fuses the right weights."""
        with torch.no_grad():
            gates = self.gates.gates[task]
            for index, name in enumerate(self.gates.layers[task]):
                weight = self.unet.get_submodule(name).lora_B[task_adapter_name(task)].weight
                weight.mul_(gates[index].to(weight.dtype))
            gates.fill_(1.0)

    def remove(self) -> None:
        """Take the gates and hooks off the UNet (peft's layers are removed by ``unet.unload_lora()``)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if hasattr(self.unet, GATES_ATTRIBUTE):
            delattr(self.unet, GATES_ATTRIBUTE)


def _tuner_layers(unet: torch.nn.Module) -> Iterator[tuple[str, BaseTunerLayer]]:
    for name, module in unet.named_modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "lora_A"):
            yield name, module


def _init_adapter(module: BaseTunerLayer, adapter: str, generator: torch.Generator, zero_b: bool) -> None:
    """Variance-preserving random ``lora_A``; ``lora_B`` zero (shared) or random with std 1/sqrt(rank)
    (task adapters, whose zero gate keeps the start exact). Drawn from ``generator``, not the global RNG."""
    with torch.no_grad():
        for layer, zero in ((module.lora_A[adapter], False), (module.lora_B[adapter], zero_b)):
            weight = layer.weight
            if zero:
                weight.zero_()
                continue
            fan_in = weight[0].numel()
            values = torch.randn(weight.shape, generator=generator) / math.sqrt(fan_in)
            weight.copy_(values.to(device=weight.device, dtype=weight.dtype))


def _gate_hook(gates: TaskGates, task: str, index: int):
    def hook(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return gates.scale(task, index, output)

    return hook
