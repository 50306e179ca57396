"""The task-isolated sampler: isolation, source weights (the official bug's fix), DDP lockstep, resume."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from stablemtl.data.sampler import SourceInfo, TaskIsolatedSampler

# The official layout (docs/training.md): the same source labels several tasks.
INDOOR = SourceInfo("indoor", 60, ("albedo", "shading", "depth", "normal"))
STREET = SourceInfo("street", 48, ("depth", "normal", "semantic", "optical_flow", "scene_flow"))
THINGS = SourceInfo("things", 40, ("optical_flow", "scene_flow"))
SOURCES = [INDOOR, STREET, THINGS]
ALL = ["albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"]


def take(sampler: TaskIsolatedSampler, n: int) -> list[list[tuple[str, int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def run_windows(sampler: TaskIsolatedSampler, windows: int, loss=lambda task, step: 1.0):
    """Draw ``windows`` accumulation windows, reporting ``loss(task, step)`` as the training loop does."""
    out, it = [], iter(sampler)
    for _ in range(windows):
        window = [next(it) for _ in range(sampler.accumulation_steps)]
        out.append(window)
        sampler.report(window[0][0][0], loss(window[0][0][0], sampler.windows_done))
    return out


def test_micro_batches_and_windows_hold_one_task_and_rotate_in_order():
    sampler = TaskIsolatedSampler(SOURCES, ALL, batch_size=4, accumulation_steps=3, seed=7)
    windows = run_windows(sampler, 14)
    for w, window in enumerate(windows):
        tasks = {key[0] for micro in window for key in micro}
        assert tasks == {ALL[w % 7]}  # round robin over the given order
        for micro in window:
            assert len(micro) == 4
            assert len({key[1] for key in micro}) == 1  # one source per micro-batch
            assert ALL[w % 7] in SOURCES[micro[0][1]].tasks  # and it labels the task


def test_source_weights_follow_the_source_name_with_a_strict_subset_of_tasks():
    # The official sampler indexed the weights by position in the filtered dataset list: training only
    # optical_flow with weights (street 0.2, things 0.8) would have drawn them swapped or from the wrong
    # sources. Here they follow the names.
    weights = {"optical_flow": {"street": 0.2, "things": 0.8}, "depth": {"indoor": 0.9, "street": 0.1}}
    sampler = TaskIsolatedSampler(SOURCES, ["optical_flow", "depth"], 2, 1, weights, seed=0)
    assert sampler.source_probabilities("optical_flow") == pytest.approx({"street": 0.2, "things": 0.8})
    assert sampler.source_probabilities("depth") == pytest.approx({"indoor": 0.9, "street": 0.1})
    counts = {"optical_flow": Counter(), "depth": Counter()}
    for micro in take(sampler, 4000):
        counts[micro[0][0]][SOURCES[micro[0][1]].name] += 1
    flow, depth = counts["optical_flow"], counts["depth"]
    assert sum(flow.values()) == sum(depth.values()) == 2000
    # 2000 draws: standard deviation of a frequency <= 0.011, so 0.04 is a > 3.5 sigma band.
    assert flow["things"] / 2000 == pytest.approx(0.8, abs=0.04)
    assert depth["indoor"] / 2000 == pytest.approx(0.9, abs=0.04)
    assert set(flow) == {"street", "things"} and set(depth) == {"indoor", "street"}


def test_unweighted_tasks_weigh_their_sources_equally():
    sampler = TaskIsolatedSampler(SOURCES, ["semantic", "scene_flow"], 2, seed=0)
    assert sampler.source_probabilities("semantic") == {"street": 1.0}
    assert sampler.source_probabilities("scene_flow") == pytest.approx({"street": 0.5, "things": 0.5})


@pytest.mark.parametrize(
    ("tasks", "weights", "message"),
    [
        (["depth"], {"depth": {"things": 1.0}}, "no depth labels"),
        (["depth"], {"depth": {"nowhere": 1.0}}, "unknown source"),
        (["depth"], {"normal": {"indoor": 1.0}}, "not trained"),
        (["depth"], {"depth": {"indoor": 0.0}}, "all zero"),
        (["depth"], {"depth": {"indoor": -1.0}}, ">= 0"),
        (["classification"], None, "labelled by no source"),
    ],
)
def test_bad_weights_and_tasks_raise(tasks, weights, message):
    with pytest.raises(ValueError, match=message):
        TaskIsolatedSampler(SOURCES, tasks, 2, source_weights=weights)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="task_sampling"):
        TaskIsolatedSampler(SOURCES, ["depth"], 2, task_sampling="random")
    with pytest.raises(ValueError, match="too few"):
        TaskIsolatedSampler(SOURCES, ["depth"], 30, world_size=2, rank=1)
    with pytest.raises(ValueError, match="adaptive"):
        TaskIsolatedSampler(SOURCES, ["depth"], 2, task_sampling="adaptive", task_grouping="joint")


def test_ranks_draw_the_same_task_and_source_but_disjoint_samples():
    kwargs = {"batch_size": 3, "accumulation_steps": 2, "seed": 11, "world_size": 2}
    rank0 = take(TaskIsolatedSampler(SOURCES, ALL, rank=0, **kwargs), 60)
    rank1 = take(TaskIsolatedSampler(SOURCES, ALL, rank=1, **kwargs), 60)
    for a, b in zip(rank0, rank1):
        assert a[0][:2] == b[0][:2]  # same task, same source
        assert not {k[2] for k in a} & {k[2] for k in b}  # shards of one permutation


def test_an_epoch_of_a_source_reads_each_sample_of_the_shard_once():
    source = SourceInfo("only", 12, ("depth",))
    sampler = TaskIsolatedSampler([source], ["depth"], batch_size=4, seed=3)
    indices = [k[2] for micro in take(sampler, 3) for k in micro]
    assert sorted(indices) == list(range(12))
    next_epoch = [k[2] for micro in take(sampler, 6)[3:] for k in micro]
    assert sorted(next_epoch) == list(range(12)) and next_epoch != indices


@pytest.mark.parametrize("mode", ["round_robin", "uniform", "adaptive"])
def test_state_dict_resumes_exactly(mode):
    def make():
        return TaskIsolatedSampler(SOURCES, ALL, 4, 2, seed=5, task_sampling=mode)

    losses = lambda task, w: 1.0 / (1 + w * (ALL.index(task) + 1))  # noqa: E731 - tasks fall at different rates
    reference = make()
    run_windows(reference, 40, losses)
    continued = run_windows(reference, 10, losses)

    first = make()
    run_windows(first, 25, losses)
    take(first, 3)  # prefetched micro-batches beyond the position must not leak into the state
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    run_windows(second, 15, losses)
    resumed = run_windows(second, 10, losses)
    assert resumed == continued


def test_resuming_with_other_settings_raises():
    state = TaskIsolatedSampler(SOURCES, ALL, 4, 2, seed=5).state_dict()
    with pytest.raises(ValueError, match="same settings"):
        TaskIsolatedSampler(SOURCES, ALL, 4, 2, seed=6).load_state_dict(state)


def test_uniform_sampling_draws_each_task_equally_often():
    sampler = TaskIsolatedSampler(
        SOURCES, ["depth", "semantic", "optical_flow"], 2, seed=1, task_sampling="uniform"
    )
    counts = Counter(micro[0][0] for micro in take(sampler, 3000))
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts.values())


def test_adaptive_sampling_favours_the_task_whose_loss_falls_slowest():
    sampler = TaskIsolatedSampler(SOURCES, ["depth", "semantic"], 2, seed=2, task_sampling="adaptive")
    # depth's loss falls tenfold; semantic's stays flat.
    windows = run_windows(sampler, 400, lambda task, w: 1.0 if task == "semantic" else 0.1 + 0.9 * 0.98**w)
    assert [w[0][0][0] for w in windows[:2]] == ["depth", "semantic"]  # a round-robin warm-up round
    late = Counter(w[0][0][0] for w in windows[200:])
    # rates 1.0 vs ~0.1: softmax(r / 0.1) gives semantic ~1, then the 0.2 floor: p(semantic) ~ 0.9.
    assert late["semantic"] / 200 == pytest.approx(0.9, abs=0.07)
    probabilities = sampler.task_probabilities()
    # floor / T + (1 - floor) * softmax: 0.1 + 0.8 / (1 + exp(-(1.0 - 0.1) / 0.1)) = 0.8999
    assert probabilities["semantic"] == pytest.approx(0.8999, abs=0.002)


def test_joint_grouping_mixes_tasks_within_one_source():
    sampler = TaskIsolatedSampler(
        SOURCES, ["depth", "semantic", "optical_flow"], 8, seed=4, task_grouping="joint"
    )
    mixed = 0
    for micro in take(sampler, 50):
        source = SOURCES[micro[0][1]]
        assert len({k[1] for k in micro}) == 1
        assert all(k[0] in source.tasks for k in micro)
        mixed += len({k[0] for k in micro}) > 1
    assert mixed > 25


def test_rows_that_do_not_label_a_task_are_never_drawn_for_it():
    # Only the even rows of "mixed" label normal; depth is labelled everywhere.
    mixed = SourceInfo("mixed", 40, ("depth", "normal"), rows={"normal": range(0, 40, 2)})
    sampler = TaskIsolatedSampler([mixed], ["depth", "normal"], batch_size=5, seed=0)
    seen = {"depth": [], "normal": []}
    for micro in take(sampler, 16):
        seen[micro[0][0]] += [k[2] for k in micro]
    assert sorted(seen["normal"][:20]) == list(range(0, 40, 2))  # one epoch of the labelled rows
    assert sorted(seen["depth"]) == list(range(40))  # one epoch of all rows
    with pytest.raises(ValueError, match="outside"):
        TaskIsolatedSampler([SourceInfo("bad", 4, ("depth",), rows={"depth": [7]})], ["depth"], 1)
