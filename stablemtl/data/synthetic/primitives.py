"""Vectorised ray intersection with transformed unit primitives.

Every object is a unit primitive in its own *local* frame, placed in the world by
``world = rotation @ (scale * local) + translation``:

- ``SPHERE``: the unit sphere; ``BOX``: the cube ``[-1, 1]^3``; ``CYLINDER``: radius 1 around the local
  y axis, ``y`` in ``[-1, 1]``, capped; ``QUAD``: the square ``|x|, |z| <= 1`` of the plane ``y = 0``
  (a large scale makes a ground plane).

A ray ``o + t d`` is mapped into each object's local frame, where ``t`` keeps its meaning, so all
objects of a kind are intersected at once as an ``(N rays, M objects)`` problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stablemtl.data.synthetic.culling import candidates, converging_candidates
from stablemtl.data.synthetic.select import select

SPHERE, BOX, CYLINDER, QUAD = 0, 1, 2, 3
KIND_NAMES = {"sphere": SPHERE, "box": BOX, "cylinder": CYLINDER, "quad": QUAD}
EPS = 1e-4  # nearest accepted ray parameter (metres along a camera ray of unit z)


@dataclass
class Shapes:
    """Rigid placement of ``M`` objects: ``kind (M,)`` long, ``rotation (M, 3, 3)`` local-to-world,
    ``translation (M, 3)`` and ``scale (M, 3)`` (half extents / radii, metres)."""

    kind: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    scale: torch.Tensor

    def to_local(self, points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """World points ``(N, 3)`` on objects ``index (N,)`` -> unit-primitive local coordinates."""
        rel = points - self.translation.index_select(0, index)
        rot, scale = self.rotation.index_select(0, index), self.scale.index_select(0, index)
        return torch.einsum("ni,nij->nj", rel, rot) / scale

    def to_world(self, local: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Unit-primitive local coordinates ``(N, 3)`` of objects ``index`` -> world points ``(N, 3)``."""
        scaled = local * self.scale.index_select(0, index)
        rot, shift = self.rotation.index_select(0, index), self.translation.index_select(0, index)
        return torch.einsum("nij,nj->ni", rot, scaled) + shift

    def normal_to_world(self, local_normal: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Local normals ``(N, 3)`` -> unit world normals (inverse-transpose of the placement)."""
        rot, scale = self.rotation.index_select(0, index), self.scale.index_select(0, index)
        n = torch.einsum("nij,nj->ni", rot, local_normal / scale)
        return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _first_positive(t0: torch.Tensor, t1: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """The nearest of two roots beyond ``EPS`` where ``hit``; ``inf`` elsewhere."""
    inf = float("inf")
    t = select(t0 > EPS, t0, select(t1 > EPS, t1, inf))
    return select(hit, t, inf)


def _sphere(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - 1.0
    disc = b * b - a * c
    root = disc.clamp_min(0).sqrt()
    return _first_positive((-b - root) / a, (-b + root) / a, disc >= 0)


def _safe(d: torch.Tensor) -> torch.Tensor:
    # Rays parallel to a slab would divide by zero; a tiny signed value gives the right infinities.
    return select(d.abs() < 1e-12, 1e-12, d)


def _box(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    inv = 1.0 / _safe(d)
    ta = (-1.0 - o) * inv
    tb = (1.0 - o) * inv
    t_near = torch.minimum(ta, tb).amax(-1)
    t_far = torch.maximum(ta, tb).amin(-1)
    return _first_positive(t_near, t_far, t_near <= t_far)


def _cylinder(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    inf = float("inf")
    # Side: x^2 + z^2 = 1 with |y| <= 1.
    a = d[..., 0] ** 2 + d[..., 2] ** 2
    b = o[..., 0] * d[..., 0] + o[..., 2] * d[..., 2]
    c = o[..., 0] ** 2 + o[..., 2] ** 2 - 1.0
    disc = b * b - a * c
    root = disc.clamp_min(0).sqrt()
    a_safe = a.clamp_min(1e-12)
    best = torch.full_like(a, inf)
    for t in ((-b - root) / a_safe, (-b + root) / a_safe):
        y = o[..., 1] + t * d[..., 1]
        ok = (disc >= 0) & (a > 1e-12) & (y.abs() <= 1.0) & (t > EPS)
        best = select(ok & (t < best), t, best)
    # Caps: y = +-1 with x^2 + z^2 <= 1.
    dy = _safe(d[..., 1])
    for cap in (-1.0, 1.0):
        t = (cap - o[..., 1]) / dy
        x = o[..., 0] + t * d[..., 0]
        z = o[..., 2] + t * d[..., 2]
        ok = (x * x + z * z <= 1.0) & (t > EPS)
        best = select(ok & (t < best), t, best)
    return best


def _quad(o: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    t = -o[..., 1] / _safe(d[..., 1])
    x = o[..., 0] + t * d[..., 0]
    z = o[..., 2] + t * d[..., 2]
    ok = (x.abs() <= 1.0) & (z.abs() <= 1.0) & (t > EPS)
    return select(ok, t, float("inf"))


_INTERSECT = {SPHERE: _sphere, BOX: _box, CYLINDER: _cylinder, QUAD: _quad}


def _local_frames(shapes: Shapes) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = R^T / S`` (M, 3, 3) and ``-A T`` (M, 3): ``local = A x - A T`` maps world to unit primitive."""
    a = shapes.rotation.transpose(1, 2) / shapes.scale[:, :, None]
    return a, -torch.einsum("mij,mj->mi", a, shapes.translation)


def _per_pair(columns: torch.Tensor, obj: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``A[obj] @ v`` per pair: ``columns (9, M)`` holds each ``A``'s columns in turn; ``vectors (3, K)``.
    Returns ``(3, K)``.

    Written as a chain of fused multiply-adds, which rounds exactly like the ``(N, 3) x (3, 3M)`` matrix
    product it replaces (tests/test_render_fastpaths.py), at a fraction of the cost: it transformed every
    ray into every object's frame, although culling keeps only a few percent of the pairs. Coordinates
    run along rows (``(3, K)``): every op then streams over contiguous memory."""
    a = columns.index_select(1, obj)
    out = a[0:3] * vectors[0]
    return out.addcmul_(a[3:6], vectors[1]).addcmul_(a[6:9], vectors[2])


def _local_rays(shapes: Shapes, origins, dirs, ray: torch.Tensor, obj: torch.Tensor, frames=None):
    """Candidate rays in their object's unit-primitive frame: ``o_l = A (o - T)``, ``d_l = A d`` with
    ``A = R^T / S`` (the ray parameter keeps its meaning); both ``(K, 3)``, possibly transposed views.

    A shared origin or direction is transformed once per object. Per-ray ones are transformed per
    (ray, object) pair when culling left few pairs, else by one ``(N, 3) x (3, 3M)`` product for all rays
    and objects (cheaper when most pairs survive, as for point-light shadow rays in small rooms)."""
    m_all = shapes.kind.shape[0]
    a, offset = _local_frames(shapes) if frames is None else frames  # (M, 3, 3), (M, 3)
    rows = a.reshape(m_all * 3, 3).T
    columns = a.transpose(1, 2).reshape(m_all, 9).T.contiguous()  # (9, M)
    dense = 4 * ray.shape[0] > max(origins.shape[0], dirs.shape[0]) * m_all

    def local(x: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
        if x.shape[0] == 1:  # one transform per object, gathered per pair
            per_object = (x @ rows).view(m_all, 3)
            per_object = per_object if shift is None else per_object + shift
            return per_object.T.contiguous().index_select(1, obj).T
        if dense:  # row r * M + m: ray r in object m's frame
            every = (x @ rows).view(-1, m_all, 3)
            every = every if shift is None else every + shift
            return every.view(-1, 3).index_select(0, ray * m_all + obj)
        out = _per_pair(columns, obj, x.T.contiguous().index_select(1, ray))
        return (out if shift is None else out + shift.T.contiguous().index_select(1, obj)).T

    return local(origins, offset), local(dirs, None)


def _candidate_hits(shapes: Shapes, origins: torch.Tensor, dirs: torch.Tensor, through=None):
    """Exact hits of the candidate pairs: ``(ray (K,), object (K,), t (K,))``, ``t = inf`` on a miss."""
    frames = _local_frames(shapes)
    if through is None:
        ray, obj = candidates(shapes.translation, shapes.scale.norm(dim=-1), origins, dirs, *frames)
    else:
        bound = shapes.translation, shapes.scale.norm(dim=-1)
        ray, obj = converging_candidates(*bound, origins.expand_as(dirs), dirs, through, *frames)
    o_l, d_l = _local_rays(shapes, origins, dirs, ray, obj, frames)
    if bool((shapes.kind[1:] >= shapes.kind[:-1]).all()) and bool((obj[1:] >= obj[:-1]).all()):
        # Objects sorted by kind (scenes do that) and pairs grouped by object (culling does that): the
        # pairs of each kind are a contiguous slice.
        first = torch.searchsorted(shapes.kind, torch.arange(len(_INTERSECT) + 1))
        bounds = torch.searchsorted(obj, first).tolist()
        spans = [slice(bounds[k], bounds[k + 1]) for k in _INTERSECT]
        parts = [_INTERSECT[k](o_l[spans[k]], d_l[spans[k]]) for k in _INTERSECT]
        return ray, obj, torch.cat(parts)
    kinds = shapes.kind[obj]
    t = torch.full((ray.shape[0],), float("inf"))
    for kind, fn in _INTERSECT.items():
        sel = (kinds == kind).nonzero().squeeze(1)
        if sel.numel():
            t[sel] = fn(o_l[sel], d_l[sel])
    return ray, obj, t


def ray_parameters(shapes: Shapes, origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Hit parameter of every ray with every object: ``(N, M)``, ``inf`` where a ray misses.

    ``origins`` and ``dirs`` are ``(N, 3)``; either may be ``(1, 3)`` when shared by all rays.
    """
    n = max(origins.shape[0], dirs.shape[0])
    out = torch.full((n, shapes.kind.shape[0]), float("inf"))
    ray, obj, t = _candidate_hits(shapes, origins, dirs)
    out[ray, obj] = t
    return out


def nearest_hit(
    shapes: Shapes, origins: torch.Tensor, dirs: torch.Tensor, through: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hit of each ray: ``t (N,)`` (``inf`` on a miss) and object ``index (N,)`` (-1 on a miss).

    ``through (3,)``: a point every ray passes through (``origins``/``dirs`` ``(N, 3)``); hits up to it are
    exact, while objects met only beyond it may be missed (shadow rays towards a point light need no more)."""
    n = max(origins.shape[0], dirs.shape[0])
    ray, obj, t = _candidate_hits(shapes, origins, dirs, through)
    best = torch.full((n,), float("inf")).scatter_reduce(0, ray, t, reduce="amin")
    index = torch.full((n,), -1, dtype=torch.long)
    winner = (torch.isfinite(t) & (t == best.index_select(0, ray))).nonzero().squeeze(1)
    # Ties (equal t) go to the last pair written, i.e. the highest object index: pairs come by object.
    index[ray.index_select(0, winner)] = obj.index_select(0, winner)
    return best, index


def local_normal(kind: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Outward normal ``(N, 3)`` of unit primitives of ``kind (N,)`` at local points ``(N, 3)`` (not unit)."""
    sphere = local
    # Box: the face is the axis where |p| is largest.
    axis = local.abs().argmax(-1, keepdim=True)
    box = torch.zeros_like(local).scatter(-1, axis, torch.gather(local, -1, axis).sign())
    side = local * torch.tensor([1.0, 0.0, 1.0])
    on_cap = (local[:, 1].abs() > 1.0 - 1e-4) & ((local[:, 0] ** 2 + local[:, 2] ** 2) < 1.0 - 1e-3)
    cap = torch.zeros_like(local)
    cap[:, 1] = local[:, 1].sign()
    cylinder = select(on_cap[:, None], cap, side)
    quad = torch.zeros_like(local)
    quad[:, 1] = 1.0
    k = kind[:, None]
    return select(k == SPHERE, sphere, select(k == BOX, box, select(k == CYLINDER, cylinder, quad)))
