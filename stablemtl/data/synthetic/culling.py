"""Cheap conservative culling: which (ray, object) pairs can hit, before the exact intersection.

Every object is bounded by the sphere around its centre with radius ``|scale|`` (it contains the unit
box, so every primitive kind). Rays are grouped into tiles, a tile is bounded (by a cone for rays that
share an origin, by a 2-D rectangle for parallel rays), and only the objects whose sphere meets a tile's
bound are paired with that tile's rays. This costs ``O(tiles x objects)`` instead of ``O(rays x objects)``.
"""

from __future__ import annotations

import torch

GRID = 24  # tiles per side (measured: finer tiles prune more than they cost at 128 px)


def _expand_tiles(tile: torch.Tensor, n_tiles: int, tile_pass: torch.Tensor) -> torch.Tensor:
    """``(K, 2)`` (ray, object) pairs for every ray of every (tile, object) in ``tile_pass (T, M)``."""
    order = torch.argsort(tile)
    counts = torch.bincount(tile, minlength=n_tiles)
    starts = torch.cumsum(counts, 0) - counts
    # (object, tile) order: pairs come out grouped by object, so by kind when objects are sorted by kind.
    tp = tile_pass.T.nonzero().flip(1)
    if tp.numel() == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    per_pair = counts[tp[:, 0]]
    total = int(per_pair.sum())
    pair_of = torch.repeat_interleave(torch.arange(tp.shape[0]), per_pair, output_size=total)
    first = torch.cumsum(per_pair, 0) - per_pair
    within = torch.arange(total) - first[pair_of]
    ray = order[starts[tp[pair_of, 0]] + within]
    return torch.stack([ray, tp[pair_of, 1]], dim=1)


def _tiles(q: torch.Tensor) -> torch.Tensor:
    """Tile index ``(N,)`` of 2-D coordinates ``q (N, 2)`` on a ``GRID x GRID`` grid over their extent."""
    lo, hi = q.amin(0), q.amax(0)
    cell = ((q - lo) / (hi - lo).clamp_min(1e-9) * GRID).long().clamp(0, GRID - 1)
    return cell[:, 1] * GRID + cell[:, 0]


def sphere_candidates(centre, radius, origins, dirs) -> torch.Tensor:
    """Fallback: test every ray against every sphere, ``(K, 2)`` pairs (``origins``/``dirs`` (N|1, 3))."""
    dd = (dirs * dirs).sum(-1, keepdim=True)
    proj = dirs @ centre.T - (origins * dirs).sum(-1, keepdim=True)
    oc2 = (centre * centre).sum(-1)[None] - 2 * origins @ centre.T + (origins * origins).sum(-1, keepdim=True)
    r2 = (radius * radius)[None]
    near = (proj * proj >= (oc2 - r2 * 1.0001 - 1e-6) * dd) & (proj + radius[None] * dd.sqrt() > 0)
    return near.T.nonzero().flip(1)


def _slab_reject(axes, origin_local, mean, spread) -> torch.Tensor:
    """``(T, M)`` True where no ray of a tile cone can enter an object's local box ``|x_i| <= 1``.

    ``axes (M, 3, 3)`` maps world directions to local ones (row i: local axis i), ``origin_local (M, 3)``
    is the shared origin in local coordinates. Along axis i a ray from outside the slab enters only if
    its local direction points back towards the slab; over a cone of half-angle ``spread`` around
    ``mean`` the direction component ``row . u`` lies in ``|row| cos(angle(row, mean) -+ spread)``.
    This prunes large flat objects (ground, walls) whose bounding spheres contain the camera.
    """
    norm = axes.norm(dim=-1)  # (M, 3)
    cos_axis = torch.einsum("tj,mij->tmi", mean, axes) / norm.clamp_min(1e-12)[None]
    angle = torch.acos(cos_axis.clamp(-1, 1))
    widest = spread[:, None, None]
    hi = torch.cos((angle - widest).clamp_min(0))  # largest component / |row| over the cone
    lo = torch.cos((angle + widest).clamp_max(torch.pi))  # smallest
    above = origin_local[None] > 1.0
    below = origin_local[None] < -1.0
    return ((above & (lo >= 0)) | (below & (hi <= 0))).any(-1)


def cone_candidates(centre, radius, origin, dirs, axes=None, origin_local=None) -> torch.Tensor | None:
    """Pairs for rays sharing ``origin (1, 3)``; ``None`` if the rays spread too wide to tile.

    With the objects' local ``axes (M, 3, 3)`` and ``origin_local (M, 3)``, tiles are also tested
    against each object's box, not only its bounding sphere."""
    unit = dirs / dirs.norm(dim=-1, keepdim=True)
    axis = unit.mean(0)
    axis = axis / axis.norm()
    along = unit @ axis
    if along.min() < 0.2:
        return None
    helper = torch.tensor([1.0, 0.0, 0.0]) if axis[0].abs() < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = torch.linalg.cross(axis, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(axis, e1)
    q = torch.stack([unit @ e1, unit @ e2], dim=-1) / along[:, None]
    tile = _tiles(q)
    n_tiles = GRID * GRID
    # Tile cone: mean direction and the widest angle of its rays from it.
    mean = torch.zeros(n_tiles, 3).index_add_(0, tile, unit)
    mean = mean / mean.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos_spread = torch.full((n_tiles,), 1.0).scatter_reduce(0, tile, (unit * mean[tile]).sum(-1), "amin")
    spread = torch.acos(cos_spread.clamp(-1, 1)) + 1e-4
    to_obj = centre - origin
    dist = to_obj.norm(dim=-1)
    inside = dist <= radius
    half = torch.asin((radius / dist.clamp_min(1e-9)).clamp(max=1.0))  # angular radius of each sphere
    cos_ang = (mean @ to_obj.T) / dist.clamp_min(1e-9)[None]
    angle = torch.acos(cos_ang.clamp(-1, 1))
    tile_pass = (angle <= spread[:, None] + half[None]) | inside[None]
    if axes is not None:
        tile_pass &= ~_slab_reject(axes, origin_local, mean, spread)
    return _expand_tiles(tile, n_tiles, tile_pass)


def parallel_candidates(centre, radius, origins, direction, axes=None, offset=None) -> torch.Tensor:
    """Pairs for rays sharing one ``direction (1, 3)`` from ``origins (N, 3)`` (e.g. sun shadow rays).

    With ``axes``/``offset`` (see :func:`candidates`) a tile is also dropped for an object when every
    origin of the tile lies outside one of the object's slabs and the direction leads away from it."""
    d = direction[0] / direction[0].norm()
    helper = torch.tensor([1.0, 0.0, 0.0]) if d[0].abs() < 0.9 else torch.tensor([0.0, 1.0, 0.0])
    e1 = torch.linalg.cross(d, helper)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(d, e1)
    basis = torch.stack([e1, e2], dim=1)  # (3, 2)
    q = origins @ basis
    tile = _tiles(q)
    n_tiles = GRID * GRID
    lo = torch.full((n_tiles, 2), float("inf")).scatter_reduce(0, tile[:, None].expand(-1, 2), q, "amin")
    hi = torch.full((n_tiles, 2), float("-inf")).scatter_reduce(0, tile[:, None].expand(-1, 2), q, "amax")
    start = torch.full((n_tiles,), float("inf")).scatter_reduce(0, tile, origins @ d, "amin")
    used = torch.isfinite(start)
    mid = torch.where(used[:, None], (lo + hi) / 2, torch.zeros_like(lo))
    half_diag = torch.where(used, (hi - lo).norm(dim=-1) / 2, torch.zeros_like(start))
    c2 = centre @ basis
    gap = torch.cdist(mid, c2)  # (T, M)
    ahead = (centre @ d + radius)[None] > start[:, None]
    tile_pass = used[:, None] & (gap <= half_diag[:, None] + radius[None] + 1e-5) & ahead
    if axes is not None:
        # Box of the tile's origins (world AABB) -> interval of each local coordinate (interval arithmetic).
        idx3 = tile[:, None].expand(-1, 3)
        o_lo = torch.full((n_tiles, 3), float("inf")).scatter_reduce(0, idx3, origins, "amin")
        o_hi = torch.full((n_tiles, 3), float("-inf")).scatter_reduce(0, idx3, origins, "amax")
        mid3 = torch.where(used[:, None], (o_lo + o_hi) / 2, torch.zeros_like(o_lo))
        ext3 = torch.where(used[:, None], (o_hi - o_lo) / 2, torch.zeros_like(o_lo))
        local_mid = torch.einsum("mij,tj->tmi", axes, mid3) + offset[None]
        local_ext = torch.einsum("mij,tj->tmi", axes.abs(), ext3)
        d_local = (axes @ d)[None]  # (1, M, 3)
        away = ((local_mid - local_ext > 1.0) & (d_local >= 0)) | (
            (local_mid + local_ext < -1.0) & (d_local <= 0)
        )
        tile_pass &= ~away.any(-1)
    return _expand_tiles(tile, n_tiles, tile_pass)


def candidates(centre, radius, origins, dirs, axes=None, offset=None) -> torch.Tensor:
    """``(K, 2)`` (ray, object) pairs that may intersect; a superset of the true hits.

    ``axes (M, 3, 3)`` / ``offset (M, 3)`` (optional) map world points to each object's unit box:
    ``local = axes @ x + offset``; they tighten the test for rays that share their origin."""
    n = max(origins.shape[0], dirs.shape[0])
    if n >= 256 and origins.shape[0] == 1:
        origin_local = None if axes is None else axes @ origins[0] + offset
        pairs = cone_candidates(centre, radius, origins, dirs, axes, origin_local)
        if pairs is not None:
            return pairs
    if n >= 256 and dirs.shape[0] == 1:
        return parallel_candidates(centre, radius, origins, dirs, axes, offset)
    return sphere_candidates(centre, radius, origins, dirs)
