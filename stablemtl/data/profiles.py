"""Source profiles: which scenes a synthetic source renders and which tasks it labels.

A profile mirrors one real training source of StableMTL (docs/training.md): ``indoor`` ~ Hypersim,
``street`` ~ Virtual KITTI 2, ``flying`` ~ FlyingThings3D. Add your own with ``register_profile``::

    register_profile(SourceProfile(name="garage", build_scene=my_builder, train_tasks=("depth",),
                                   test_tasks=("depth", "normal"), domain=Domain(), shifted=Domain(...)))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from stablemtl.data.augment import Augmentation
from stablemtl.data.synthetic.flying import build_flying
from stablemtl.data.synthetic.indoor import build_indoor
from stablemtl.data.synthetic.render import ALL_TASKS, PAIR_TASKS
from stablemtl.data.synthetic.sampling import Domain
from stablemtl.data.synthetic.scene import Scene
from stablemtl.data.synthetic.street import build_street

# Every split is its own random stream (``scene_rng`` keys on the split's code), so no (seed, index) of one
# split can render a scene of another. ``train`` and ``validation`` label the training tasks; ``test``
# (evaluation) and ``pretrain`` (the base model's own pre-training, docs/architecture.md) label every
# task a profile can give. The codes of ``train`` and ``test`` predate the others and must never change:
# they keep already rendered data sets reproducible.
SPLIT_CODES = {"train": 0, "test": 1, "validation": 2, "pretrain": 3}
SPLITS = tuple(SPLIT_CODES)
_FULL_LABEL_SPLITS = ("test", "pretrain")


@dataclass(frozen=True)
class SourceProfile:
    """A synthetic source: ``build_scene(rng, domain, height, width) -> Scene``, the tasks its ``train``
    and ``test`` splits label, its appearance ``domain`` and ``shifted`` test domain, its augmentation.

    ``augmentation`` applies to every task unless ``task_augmentation`` overrides it for a task: the
    official recipe augments per source *and* task (docs/training.md: vKITTI jitters colours for optical flow
    only), and a training micro-batch serves one task.
    """

    name: str
    build_scene: Callable[[np.random.Generator, Domain, int, int], Scene]
    train_tasks: tuple[str, ...]
    test_tasks: tuple[str, ...]
    domain: Domain = field(default_factory=Domain)
    shifted: Domain = field(default_factory=Domain)
    augmentation: Augmentation = field(default_factory=Augmentation)
    task_augmentation: Mapping[str, Augmentation] = field(default_factory=dict, hash=False)

    def augmentation_for(self, task: str | None = None) -> Augmentation:
        """The augmentation of a training sample served for ``task`` (None: the source-wide one)."""
        return self.task_augmentation.get(task, self.augmentation) if task else self.augmentation

    def tasks(self, split: str) -> tuple[str, ...]:
        """Labelled tasks of ``split``: test tasks for ``test`` and ``pretrain``, else training tasks."""
        check_split(split)
        return self.test_tasks if split in _FULL_LABEL_SPLITS else self.train_tasks

    def needs_pair(self, split: str) -> bool:
        """Whether rows of ``split`` carry a second frame (any flow task labelled)."""
        return any(t in PAIR_TASKS for t in self.tasks(split))

    def __post_init__(self) -> None:
        for t in (*self.train_tasks, *self.test_tasks, *self.task_augmentation):
            if t not in ALL_TASKS:
                raise ValueError(f"profile {self.name!r}: task {t!r} cannot be rendered; known: {ALL_TASKS}")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    return split


_PROFILES: dict[str, SourceProfile] = {}


def register_profile(profile: SourceProfile, overwrite: bool = False) -> SourceProfile:
    """Make ``profile`` available by name to ``render_sample``, ``make_dataset`` and the CLI."""
    if profile.name in _PROFILES and not overwrite:
        raise ValueError(f"profile {profile.name!r} is already registered (pass overwrite=True)")
    _PROFILES[profile.name] = profile
    return profile


def get_profile(name: str | SourceProfile) -> SourceProfile:
    """The profile called ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if isinstance(name, SourceProfile):
        return name
    try:
        return _PROFILES[name]
    except KeyError:
        raise ValueError(f"profile {name!r} is unknown; known: {', '.join(_PROFILES)}") from None


def profile_names() -> list[str]:
    return list(_PROFILES)


_STREET = Domain()
_INDOOR = Domain(camera_height=(1.2, 1.8), fov_deg=(55.0, 70.0), ambient=(0.15, 0.3))
_FLYING = Domain(fov_deg=(45.0, 60.0), ambient=(0.15, 0.3), texture_frequency=(0.8, 4.0))
# Shifted test domains: other palettes, textures, lighting and cameras than training ever shows.
_STREET_SHIFT = replace(
    _STREET,
    hue=(0.9, 1.15),
    saturation=(0.5, 0.9),
    vegetation_hue=(0.05, 0.14),
    patterns=("stripes", "checker"),
    texture_frequency=(3.0, 6.0),
    sun_elevation_deg=(8.0, 20.0),
    sun_intensity=(0.35, 0.5),
    ambient=(0.35, 0.45),
    fov_deg=(80.0, 95.0),
    camera_height=(2.0, 2.6),
    sky_zenith=(0.55, 0.35, 0.45),
    sky_horizon=(0.95, 0.6, 0.35),
)
_INDOOR_SHIFT = replace(
    _INDOOR,
    hue=(0.02, 0.16),
    value=(0.15, 0.5),
    patterns=("stripes", "palette"),
    texture_frequency=(3.0, 7.0),
    ambient=(0.05, 0.12),
    fov_deg=(75.0, 90.0),
    camera_height=(0.6, 1.0),
)
_FLYING_SHIFT = replace(
    _FLYING,
    saturation=(0.0, 0.25),
    patterns=("stripes", "solid"),
    texture_frequency=(4.0, 8.0),
    ambient=(0.35, 0.5),
    fov_deg=(65.0, 80.0),
)

for _profile in (
    SourceProfile(
        "indoor",
        build_indoor,
        train_tasks=("depth", "normal", "albedo", "shading"),
        test_tasks=("depth", "normal", "albedo", "shading", "optical_flow", "scene_flow"),
        domain=_INDOOR,
        shifted=_INDOOR_SHIFT,
        augmentation=Augmentation(hflip=True),  # Hypersim: h-flip only
    ),
    SourceProfile(
        "street",
        build_street,
        train_tasks=("depth", "normal", "semantic", "optical_flow", "scene_flow"),
        test_tasks=ALL_TASKS,
        domain=_STREET,
        shifted=_STREET_SHIFT,
        # vKITTI 2 (docs/training.md): h-flip for every task; colour jitter only for optical flow.
        augmentation=Augmentation(hflip=True),
        task_augmentation={"optical_flow": Augmentation(hflip=True, jitter=(0.4, 0.4, 0.2, 0.127))},
    ),
    SourceProfile(
        "flying",
        build_flying,
        train_tasks=("optical_flow", "scene_flow"),
        test_tasks=("depth", "normal", "albedo", "shading", "optical_flow", "scene_flow"),
        domain=_FLYING,
        shifted=_FLYING_SHIFT,
        augmentation=Augmentation(hflip=True, vflip=True, jitter=(0.3, 0.3, 0.3, 0.159)),  # FlyingThings3D
    ),
):
    register_profile(_profile)
