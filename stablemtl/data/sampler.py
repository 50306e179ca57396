"""The task-isolated sampler: which task, which source and which samples every micro-batch holds.

StableMTL trains every optimizer update on the gradient of *one* task (docs/training.md). This sampler
yields micro-batches of keys ``(task, source_index, sample_index, epoch)`` such that

- every micro-batch holds one task and one source (so one resolution);
- every gradient-accumulation window of ``accumulation_steps`` micro-batches holds one task;
- consecutive windows (optimizer steps) follow ``task_sampling``:
  ``round_robin`` cycles through the tasks in the given order (the official "iterative sampling"),
  ``uniform`` draws a task uniformly per window, ``adaptive`` favours the tasks whose loss falls the
  slowest (see :class:`AdaptiveTaskRule`), fed by :meth:`TaskIsolatedSampler.report`;
- within a task, the source of each micro-batch is drawn by its weight *for that task*. Weights are
  keyed by source name, which fixes the official bug where the weights followed positions of the
  unfiltered dataset list and were misassigned whenever only some tasks were trained (docs/official-code.md).

``task_grouping="joint"`` is the ablation with mixed-task micro-batches (paper, Fig. 5): a source is
drawn by its average weight over the tasks, then every sample of the micro-batch gets its own task,
drawn uniformly among the trained tasks that the source labels.

Distributed: every random draw that decides a task or a source comes from a stream seeded by
``(seed, counter)`` only, so all ranks make the same choice at the same step; the samples differ per
rank because each rank reads its own shard (``perm[rank::world_size]``) of a per-epoch permutation
shared by all ranks. Draws are counter-based, hence the state is small: the number of completed
windows, the task of every window and the adaptive statistics. :meth:`load_state_dict` replays the
cheap index bookkeeping so that a resumed run reads exactly the samples an uninterrupted run reads.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

TASK_SAMPLING = ("round_robin", "uniform", "adaptive")
TASK_GROUPING = ("isolated", "joint")

# Independent random streams; a draw is seeded by (seed, stream, counter...).
_TASK_STREAM, _SOURCE_STREAM, _PERM_STREAM, _JOINT_TASK_STREAM = 1, 2, 3, 4


@dataclass(frozen=True)
class SourceInfo:
    """A training source: its ``name`` (e.g. ``"indoor"``), ``size`` (samples) and labelled ``tasks``.

    ``rows`` optionally maps a task to the sample indices that label it, for sources whose rows do
    not all label every task; a task left out is labelled by every row.
    """

    name: str
    size: int
    tasks: tuple[str, ...]
    rows: Mapping[str, Sequence[int]] | None = field(default=None, compare=False, hash=False)


# (task, source index, sample index within that source, epoch of that source's rows). The epoch lets
# the dataset draw fresh augmentations on every pass while staying a pure function of the key.
Key = tuple[str, int, int, int]


class AdaptiveTaskRule:
    """Favour the tasks whose loss falls the slowest.

    Each task keeps its first reported loss ``L0`` and an exponential moving average ``L`` (factor
    ``beta``) of the losses reported since. Its *inverse training rate* ``r = L / L0`` (as in
    GradNorm) is near 1 for a task that has not improved and small for one that has. The next task is
    drawn from ``p = floor/T + (1 - floor) * softmax(r / temperature)``; the floor keeps every task
    alive. Until every task has reported once, tasks are taken round-robin. Reported losses must be
    identical on every rank (the training loop averages them across processes first).
    """

    def __init__(self, num_tasks: int, temperature: float = 0.1, beta: float = 0.9, floor: float = 0.2):
        if temperature <= 0:
            raise ValueError(f"adaptive temperature must be > 0, got {temperature}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"adaptive beta must be in [0, 1), got {beta}")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"adaptive floor must be in [0, 1], got {floor}")
        self.temperature, self.beta, self.floor = temperature, beta, floor
        self.initial = torch.full((num_tasks,), float("nan"), dtype=torch.float64)
        self.average = torch.full((num_tasks,), float("nan"), dtype=torch.float64)

    def update(self, task_index: int, loss: float) -> None:
        """Record the loss of one optimizer step of task ``task_index``."""
        if not math.isfinite(loss):
            return  # a non-finite loss says nothing about the training rate
        if math.isnan(self.initial[task_index]):
            self.initial[task_index] = loss
            self.average[task_index] = loss
        else:
            self.average[task_index] = self.beta * self.average[task_index] + (1 - self.beta) * loss

    def probabilities(self) -> torch.Tensor | None:
        """``(T,)`` float64 task probabilities, or ``None`` while some task has not reported yet."""
        if torch.isnan(self.initial).any():
            return None
        rate = self.average / self.initial.clamp_min(1e-12)
        soft = torch.softmax(rate / self.temperature, dim=0)
        return self.floor / len(rate) + (1 - self.floor) * soft

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"initial": self.initial.clone(), "average": self.average.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.initial = state["initial"].to(torch.float64).clone()
        self.average = state["average"].to(torch.float64).clone()


def _rng(seed: int, *counters: int) -> np.random.Generator:
    return np.random.default_rng([seed, *counters])


def _pick(probabilities: np.ndarray, u: float) -> int:
    """Inverse-CDF draw: one uniform number always consumed, whatever the distribution."""
    cdf = np.cumsum(probabilities)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1))


class TaskIsolatedSampler:
    """Batch sampler yielding micro-batches of ``(task, source_index, sample_index, epoch)`` keys.

    Args:
        sources: the training sources (:class:`SourceInfo`), in a fixed order shared by all ranks.
        tasks: the trained tasks; each must be labelled by at least one source. Their order is the
            round-robin order.
        batch_size: samples per micro-batch (per rank).
        accumulation_steps: micro-batches per optimizer step.
        source_weights: ``{task: {source_name: weight}}``; a task left out weighs its sources
            equally. Only the ratios within a task matter.
        task_sampling: ``"round_robin"``, ``"uniform"`` or ``"adaptive"``.
        task_grouping: ``"isolated"`` (one task per micro-batch) or ``"joint"`` (mixed tasks).
        seed: seed of every draw; must be the same on every rank.
        rank, world_size: this process and the number of processes.
        adaptive: keyword arguments of :class:`AdaptiveTaskRule`.
    """

    def __init__(
        self,
        sources: Sequence[SourceInfo],
        tasks: Sequence[str],
        batch_size: int,
        accumulation_steps: int = 1,
        source_weights: Mapping[str, Mapping[str, float]] | None = None,
        task_sampling: str = "round_robin",
        task_grouping: str = "isolated",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        adaptive: Mapping[str, float] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
        if task_sampling not in TASK_SAMPLING:
            raise ValueError(f"task_sampling {task_sampling!r} is unknown; choose one of {TASK_SAMPLING}")
        if task_grouping not in TASK_GROUPING:
            raise ValueError(f"task_grouping {task_grouping!r} is unknown; choose one of {TASK_GROUPING}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
        if not tasks:
            raise ValueError("tasks must name at least one task")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must not repeat: {list(tasks)}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.sources, self.tasks = list(sources), list(tasks)
        self.batch_size, self.accumulation_steps = batch_size, accumulation_steps
        self.task_sampling, self.task_grouping = task_sampling, task_grouping
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self._probs = self._source_probabilities(source_weights or {})
        self._pools, self._pool_of = self._build_pools()
        for (source, _), rows in zip(self._pool_keys, self._pools):
            if len(rows) // world_size < batch_size:
                raise ValueError(
                    f"source {self.sources[source].name!r} has {len(rows)} usable samples: too few for "
                    f"batch_size {batch_size} on each of {world_size} process(es)"
                )
        if task_grouping == "joint" and any(task is not None for _, task in self._pool_keys):
            raise ValueError("task_grouping='joint' needs sources whose rows label all of their tasks")
        if task_grouping == "joint" and task_sampling == "adaptive":
            raise ValueError("task_sampling='adaptive' needs task_grouping='isolated' (one task per step)")
        self.adaptive = AdaptiveTaskRule(len(self.tasks), **(adaptive or {}))
        self.windows_done = 0
        self.window_tasks: list[int] = []  # task index of every window handed out so far
        self._cursor = [0] * len(self._pools)  # micro-batches read from each pool (this rank)
        self._shards: dict[int, tuple[int, np.ndarray]] = {}  # pool -> (epoch, this rank's shard)

    # -- probabilities -----------------------------------------------------------------------------
    def _source_probabilities(self, weights: Mapping[str, Mapping[str, float]]) -> np.ndarray:
        """``(T, S)`` within-task source probabilities, keyed by *name* (the official bug's fix)."""
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ValueError(f"source_weights names tasks that are not trained: {sorted(unknown)}")
        index = {s.name: i for i, s in enumerate(self.sources)}
        probs = np.zeros((len(self.tasks), len(self.sources)))
        for t, task in enumerate(self.tasks):
            labelled = [s.name for s in self.sources if task in s.tasks]
            if not labelled:
                raise ValueError(f"task {task!r} is labelled by no source; sources: {list(index)}")
            given = weights.get(task) or dict.fromkeys(labelled, 1.0)
            for name, w in given.items():
                if name not in index:
                    raise ValueError(f"source_weights[{task!r}] names unknown source {name!r}")
                if task not in self.sources[index[name]].tasks:
                    raise ValueError(f"source_weights[{task!r}] weighs {name!r}, which has no {task} labels")
                if not (w >= 0 and math.isfinite(w)):
                    raise ValueError(f"source_weights[{task!r}][{name!r}] must be finite and >= 0, got {w}")
                probs[t, index[name]] = w
            if probs[t].sum() <= 0:
                raise ValueError(f"source_weights[{task!r}] are all zero")
            probs[t] /= probs[t].sum()
        return probs

    def _build_pools(self) -> tuple[list[np.ndarray], dict[tuple[int, str | None], int]]:
        """Row pools, each with its own permutation and read cursor: all rows of a source (key
        ``(source, None)``), plus one pool per ``(source, task)`` whose task only some rows label."""
        keys: list[tuple[int, str | None]] = []
        pools: list[np.ndarray] = []
        for source, info in enumerate(self.sources):
            partial, full = [], False
            for task in (t for t in self.tasks if t in info.tasks):
                rows = (info.rows or {}).get(task)
                if rows is None or len(rows) == info.size:
                    full = True
                    continue
                rows = np.asarray(sorted(rows), dtype=np.int64)
                if rows.size and (rows[0] < 0 or rows[-1] >= info.size):
                    raise ValueError(f"source {info.name!r}: rows of {task!r} fall outside [0, {info.size})")
                partial.append(((source, task), rows))
            if full:
                keys.append((source, None))
                pools.append(np.arange(info.size))
            for key, rows in partial:
                keys.append(key)
                pools.append(rows)
        self._pool_keys = keys
        return pools, {key: i for i, key in enumerate(keys)}

    def _pool(self, source: int, task: str) -> int:
        return self._pool_of.get((source, task), self._pool_of.get((source, None), -1))

    def source_probabilities(self, task: str) -> dict[str, float]:
        """``{source_name: probability}`` of drawing each source for a micro-batch of ``task``."""
        t = self.tasks.index(task)
        return {s.name: float(p) for s, p in zip(self.sources, self._probs[t]) if p > 0}

    def task_probabilities(self) -> dict[str, float]:
        """Probabilities of each task for the next window (round-robin: 1 for the scheduled task)."""
        return dict(zip(self.tasks, self._task_distribution(len(self.window_tasks)).tolist()))

    def _task_distribution(self, window: int) -> np.ndarray:
        n = len(self.tasks)
        p = np.zeros(n)
        if self.task_sampling == "uniform":
            return np.full(n, 1.0 / n)
        if self.task_sampling == "adaptive":
            adaptive = self.adaptive.probabilities()
            if adaptive is not None:
                return adaptive.numpy()
        p[window % n] = 1.0  # round-robin, and the adaptive warm-up round
        return p

    # -- draws ----------------------------------------------------------------------------------------
    def _window_task(self, window: int) -> int:
        if window < len(self.window_tasks):
            return self.window_tasks[window]
        u = _rng(self.seed, _TASK_STREAM, window).random()
        task = _pick(self._task_distribution(window), u)
        self.window_tasks.append(task)
        return task

    def _draw_source(self, step: int, task: int) -> int:
        return _pick(self._probs[task], _rng(self.seed, _SOURCE_STREAM, step).random())

    def _draw_joint_source(self, step: int) -> int:
        # A source's average weight over the tasks: the source marginal of "uniform task, then source".
        return _pick(self._probs.mean(axis=0), _rng(self.seed, _SOURCE_STREAM, step).random())

    def _take(self, pool: int) -> list[tuple[int, int]]:
        """The next ``batch_size`` ``(index, epoch)`` of this rank's shard of ``pool`` (drop-last epochs)."""
        rows = self._pools[pool]
        per_epoch = (len(rows) // self.world_size) // self.batch_size
        epoch, within = divmod(self._cursor[pool], per_epoch)
        self._cursor[pool] += 1
        if self._shards.get(pool, (None,))[0] != epoch:
            perm = _rng(self.seed, _PERM_STREAM, pool, epoch).permutation(len(rows))
            self._shards[pool] = (epoch, rows[perm[self.rank :: self.world_size]])
        shard = self._shards[pool][1]
        return [(int(i), epoch) for i in shard[within * self.batch_size : (within + 1) * self.batch_size]]

    def _micro_batch(self, step: int) -> list[Key]:
        """Keys of global micro-batch ``step`` (same task and source on every rank)."""
        if self.task_grouping == "isolated":
            task = self._window_task(step // self.accumulation_steps)
            source = self._draw_source(step, task)
            name = self.tasks[task]
            return [(name, source, i, epoch) for i, epoch in self._take(self._pool(source, name))]
        source = self._draw_joint_source(step)
        labelled = [t for t in self.tasks if t in self.sources[source].tasks]
        choice = _rng(self.seed, _JOINT_TASK_STREAM, step).integers(len(labelled), size=self.batch_size)
        taken = self._take(self._pool_of[(source, None)])
        return [(labelled[c], source, i, epoch) for c, (i, epoch) in zip(choice, taken)]

    def __iter__(self) -> Iterator[list[Key]]:
        """Micro-batches from the current position (``windows_done``) on, forever.

        The training loop stops at its step budget. Starting an iteration forgets any micro-batch
        handed out beyond the position (prefetched but not trained on) and replays the index
        bookkeeping up to it, so a new iteration continues exactly where training stands.
        """
        self._rewind()
        step = self.windows_done * self.accumulation_steps
        while True:
            yield self._micro_batch(step)
            step += 1

    # -- feedback and state ---------------------------------------------------------------------------
    def report(self, task: str | None, loss: float) -> None:
        """Close one optimizer step (window) of ``task`` with its loss, averaged over ranks.

        Must be called once per optimizer step, in order: it advances the checkpointed position and
        feeds the adaptive rule. ``task`` is ``None`` for joint grouping.
        """
        if task is not None:
            self.adaptive.update(self.tasks.index(task), float(loss))
        self.windows_done += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Position and statistics (tensors only; identical on every rank)."""
        return {
            "windows_done": torch.tensor(self.windows_done),
            "window_tasks": torch.tensor(self.window_tasks[: self.windows_done], dtype=torch.int64),
            "fingerprint": torch.tensor(self._fingerprint(), dtype=torch.int64),
            **{f"adaptive.{k}": v for k, v in self.adaptive.state_dict().items()},
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore the position and statistics saved by :meth:`state_dict`."""
        if state["fingerprint"].tolist() != self._fingerprint():
            raise ValueError(
                "the checkpoint's sampler was built with other sources, tasks, batch size, accumulation "
                "steps, sampling, grouping, seed or number of processes; resume with the same settings"
            )
        self.adaptive.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("adaptive.")})
        self.windows_done = int(state["windows_done"])
        self.window_tasks = [int(t) for t in state["window_tasks"]]
        self._rewind()

    def _rewind(self) -> None:
        """Recompute the per-source read counts of the completed windows (cheap: no data is read)."""
        self.window_tasks = self.window_tasks[: self.windows_done]
        self._cursor = [0] * len(self._pools)
        for step in range(self.windows_done * self.accumulation_steps):
            if self.task_grouping == "isolated":
                task = self._window_task(step // self.accumulation_steps)
                self._cursor[self._pool(self._draw_source(step, task), self.tasks[task])] += 1
            else:
                self._cursor[self._pool_of[(self._draw_joint_source(step), None)]] += 1

    def _fingerprint(self) -> list[int]:
        text = repr(
            (
                [(s.name, s.size, sorted(s.tasks)) for s in self.sources],
                [(key, len(rows), int(rows.sum())) for key, rows in zip(self._pool_keys, self._pools)],
                self.tasks,
                self.batch_size,
                self.accumulation_steps,
                self.task_sampling,
                self.task_grouping,
                self.seed,
                self.world_size,
                self._probs.round(9).tolist(),
            )
        )
        return np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], dtype=np.int64).tolist()
