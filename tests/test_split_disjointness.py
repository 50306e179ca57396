"""No pre-training, training or validation scene is an evaluation scene: every split is its own random
stream, and the base's pre-training and the demo ask only for streams that no evaluation uses."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from stablemtl.data.profiles import SPLITS
from stablemtl.data.synthetic import render_sample
from stablemtl.data.synthetic.sample import scene_rng

ROOT = Path(__file__).resolve().parents[1]
EVALUATION_SPLITS = ("test",)


def _fingerprint(profile: str, split: str, seed: int, index: int) -> tuple[int, ...]:
    """The first draws of a row's random stream: equal streams give equal scenes, and only they do."""
    return tuple(scene_rng(profile, split, False, seed, index).integers(2**63, size=4).tolist())


def _pretrain_keys(module, monkeypatch) -> set[tuple[str, str, int, int]]:
    """The (profile, split, seed, index) rows that train_scripts/pretrain_tiny_base.py (``module``) renders
    with its default settings, recorded from its own render_pool."""
    keys = set()

    def record(profile, seed, size, split, index):
        keys.add((profile, split, seed, index))
        return {"image": torch.zeros(3, 8, 8), "labels": {}, "valid": {}}

    monkeypatch.setattr(module, "render_sample", record)
    args = module.parse_args([])
    module.render_pool(args.n_scenes, args.resolution, args.seed)
    assert len(keys) == args.n_scenes * len(module.PROFILES)
    return keys


def _demo_keys(monkeypatch, tmp_path) -> set[tuple[str, str, int, int]]:
    """The rows that ``make demo`` renders with its default settings, per split."""
    from stablemtl.cli import demo

    keys = set()

    def record(profile, n, out, size, split, seed):
        keys.update((profile, split, seed, i) for i in range(n))
        return Path(out)

    monkeypatch.setattr(demo, "make_dataset", record)
    demo.render_sources(tmp_path, demo.parse_args([]))
    return keys


def test_pretraining_and_demo_training_streams_never_meet_an_evaluation_stream(
    monkeypatch, tmp_path, pretrain_script
):
    pretrain = _pretrain_keys(pretrain_script, monkeypatch)
    demo_keys = _demo_keys(monkeypatch, tmp_path)
    assert {k[1] for k in pretrain} == {"pretrain"}
    assert {k[1] for k in demo_keys} == {"train", "validation", "test"}
    evaluation = {k for k in demo_keys if k[1] in EVALUATION_SPLITS}
    seen_in_training = pretrain | (demo_keys - evaluation)
    test_prints = {_fingerprint(*k) for k in evaluation}
    train_prints = {_fingerprint(*k) for k in seen_in_training}
    assert len(test_prints) == len(evaluation) and len(train_prints) == len(seen_in_training)
    assert not test_prints & train_prints


def _first_base_streams() -> set[tuple[int, ...]]:
    # The first embedded base (240 renders per profile, test split, seed 0) rendered test-split rows of
    # seed k, index 0, and measured itself on seeds 1_000_003 + i. The demo's test seeds avoid them still.
    profiles = ("indoor", "street", "flying")
    seeds = [*range(240), *range(1_000_003, 1_000_011)]
    return {_fingerprint(p, "test", k, 0) for p in profiles for k in seeds}


def test_the_old_pretraining_streams_would_have_been_caught():
    # The first demo tested on seed 1: its test row 0 was one of the shipped base's pre-training scenes.
    demo_test = {_fingerprint(p, "test", 1, i) for p in ("indoor", "street") for i in range(16)}
    assert _first_base_streams() & demo_test


def test_no_base_ever_shipped_saw_the_demos_test_scenes(monkeypatch, tmp_path):
    demo_test = {k for k in _demo_keys(monkeypatch, tmp_path) if k[1] == "test"}
    assert demo_test and not {_fingerprint(*k) for k in demo_test} & _first_base_streams()


def test_the_shipped_base_was_pretrained_on_the_pretrain_split_only():
    # Its model card is written by train_scripts/pretrain_tiny_base.py, whose renders are keyed above.
    card = (ROOT / "assets" / "stablemtl-tiny-base" / "README.md").read_text()
    assert "the dedicated `pretrain` split" in card and "test split" not in card


def test_rendered_scenes_of_different_splits_differ_at_the_same_seed_and_index():
    def digest(profile: str, split: str, seed: int, index: int) -> str:
        sample = render_sample(profile, seed=seed, size=32, split=split, index=index)
        return hashlib.sha256(sample["image"].numpy().tobytes()).hexdigest()

    # Same (seed, index) in every split, and the demo's seeds (training 0, test 1): no image repeats.
    digests = {
        (profile, split, seed, index): digest(profile, split, seed, index)
        for profile in ("indoor", "street")
        for split in SPLITS
        for seed in (0, 1)
        for index in range(3)
    }
    by_split: dict[str, set[str]] = {}
    for (_, split, _, _), value in digests.items():
        by_split.setdefault(split, set()).add(value)
    for split in SPLITS:
        assert len(by_split[split]) == 12  # 2 profiles x 2 seeds x 3 rows, all different
        for other in SPLITS:
            if other != split:
                assert not by_split[split] & by_split[other], (split, other)
    # The check can fail: a row renders the same image again.
    assert digest("street", "test", 1, 0) == digests[("street", "test", 1, 0)]


def test_the_train_and_test_streams_of_existing_data_sets_are_unchanged():
    # Data sets rendered before the validation and pretrain splits existed must stay reproducible.
    crc = zlib.crc32(b"street")
    for split, code in (("train", 0), ("test", 1)):
        expected = np.random.default_rng(np.random.SeedSequence([5, 7, crc, code, 0])).integers(2**63, size=4)
        assert _fingerprint("street", split, 5, 7) == tuple(expected.tolist())


@pytest.mark.parametrize(
    ("split", "seed", "index", "match"),
    [("valid", 0, 0, "split .valid. is unknown"), ("train", 2**32, 0, "seed"), ("train", 0, -1, "index")],
)
def test_a_stream_key_outside_its_range_is_refused(split, seed, index, match):
    with pytest.raises(ValueError, match=match):
        scene_rng("street", split, False, seed, index)
