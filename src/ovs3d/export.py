"""``ovs3d export``: the semantic field baked to labelled 3D points and per-label meshes (SPEC §6).

**Points: fused depth of the training views.** Every training view is rendered at the run's semantic
resolution; each pixel ray whose opacity exceeds ``min_opacity`` gives one point at its *median* surface
(the first of its heaviest samples where the cumulative compositing weight reaches half the ray's total —
unlike the expected depth, it never floats between a foreground edge and the background). The point takes
the ray's rendered colour, the label the method predicts for that pixel (the same argmax as ``ovs3d eval``)
with its probability, and, for ``--text``, the text's relevancy. Optionally (``free_space_views``), a point
that lies in front of the surface other views see at its place (in space they saw through: a floater of one
view's depth) is dropped (:func:`free_space_votes`). Points of all views are then fused in a
voxel grid of the field's frame (NDC for forward-facing scenes, so one voxel spans about one pixel of the
reference view at every depth): per voxel the mean position and colour, the label with the largest summed
probability over the rays that voted for it, its mean probability, the mean relevancy. Each point records
the radius of the surface patch it stands for (its pixel footprint at its depth, at least the voxel's), so
a z-buffer splat of the points covers the views' surfaces without holes.

**Frame.** Points and meshes are written in the world frame of the scene's input poses: NDC (forward-facing)
or the contraction (unbounded) undone, then
the loader's recentring, rotation and scaling (:func:`ovs3d.render.scene_rays.field_to_input`).

**Meshes.** Per label, marching cubes (scikit-image) on the field's density on a grid over the fused points'
box in the field's frame, restricted to the cells whose nearest fused point carries that label, at a level
relative to the density at that label's points; vertices are mapped to the input frame like the points.

Output folder (written in a temporary sibling folder and renamed into place, so it is complete or absent)::

    DIR/points.ply            SPEC §6 (plus float radius and one float rel_<slug> per --text)
    DIR/labels.json           {"classes", "colors", "frame", "run", "method", "texts", "score", ...}
    DIR/meshes/<slug>.ply     one triangle mesh per label that has one
    DIR/points.npz            (--format npz) the same arrays
    DIR/points_gaussians.ply  (--format gaussian) 3D Gaussian splatting's PLY layout (+ label, score)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ovs3d.errors import OVS3DError
from ovs3d.utils.config import rule

logger = logging.getLogger(__name__)

__all__ = [
    "ExportConfig",
    "PointCloud",
    "bake_points",
    "export_run",
    "free_space_votes",
    "fuse_points",
    "label_meshes",
    "load_points",
    "read_points",
    "write_points_ply",
]

EXPORT_FORMATS = ("ply", "gaussian", "npz")
SH_C0 = 0.28209479177387814
"""Zeroth spherical-harmonic constant: 3D Gaussian splatting stores colour as ``(rgb - 0.5) / SH_C0``."""


@dataclass
class ExportConfig:
    """How a run is baked to points and meshes."""

    views: list[int] | None = field(default=None, metadata=rule(ge=0))
    """Views whose depth is fused (default: the run's training views)."""
    downscale: float | None = field(default=None, metadata=rule(gt=0, le=1000))
    """Resolution of the fused renders as a downscale of the images (default: the run's semantic resolution;
    the reconstruction's for RGB-only runs)."""
    min_opacity: float = field(default=0.5, metadata=rule(ge=0, le=1))
    """Rays whose accumulated opacity is below this give no point (they see empty space)."""
    voxel: float = field(default=1.0, metadata=rule(gt=0))
    """Fusion voxel edge, in units of the median pixel footprint of the fused points."""
    free_space_views: int = field(default=0, metadata=rule(ge=0))
    """Drop a point that lies in front of the surface another fused view sees there (in space that view saw
    through) in at least this many views: floaters of one view's depth. 0 (default) keeps every point: on the
    validation scenes 2 changed agreement by < 0.002 and cost 0.7 % coverage in a room (bench/RESULTS.md §7)."""
    free_space_margin: float = field(default=0.05, metadata=rule(ge=0, lt=1))
    """Relative depth margin of the free-space test (a point counts as in front when its depth is below
    ``(1 - margin)`` times the nearest surface depth in the 3x3 pixels it projects to)."""
    texts: list[str] = field(default_factory=list)
    """Free texts whose relevancy is stored per point (``rel_<slug>`` properties)."""
    meshes: bool = True
    """Also write one mesh per label."""
    mesh_resolution: int = field(default=128, metadata=rule(ge=2, le=4096))
    """Cells along each axis of the marching-cubes grid (over the fused points' box in the field's frame)."""
    mesh_level: float = field(default=0.5, metadata=rule(gt=0))
    """Iso-level of each label's mesh as a fraction of the median field density at its fused points."""
    format: Literal["ply", "gaussian", "npz"] = "ply"
    """Extra format beside ``points.ply``: ``gaussian`` (3DGS-style PLY) or ``npz``; ``ply``: none."""


@dataclass
class PointCloud:
    """Labelled points in the frame of the scene's input poses.

    Attributes:
        xyz: ``[N, 3]`` float32 positions.
        rgb: ``[N, 3]`` uint8 colours.
        label: ``[N]`` int16 class index into ``classes`` (-1: no label).
        score: ``[N]`` float32 probability of that label (0 without a label).
        radius: ``[N]`` float32 radius of the surface patch each point stands for (input-frame units).
        classes: the label names.
        colors: ``[C, 3]`` uint8 label colours (the palette of the overlays).
        properties: more ``[N]`` float32 per-point values (``rel_<slug>``: relevancy of a text).
        field_xyz: ``[N, 3]`` float32 positions in the field's frame (not written; used for meshes).
    """

    xyz: np.ndarray
    rgb: np.ndarray
    label: np.ndarray
    score: np.ndarray
    radius: np.ndarray
    classes: list[str]
    colors: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    field_xyz: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


# -- pure parts ---------------------------------------------------------------------------------------------


def median_surface(xyz: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each ray's median surface point: the first sample where the cumulative weight reaches half the total.

    Args:
        xyz: ``[R, K, 3]`` sample positions, front to back.
        weights: ``[R, K]`` their compositing weights.

    Returns:
        ``[R, 3]`` positions (a ray without weight gets its first sample).
    """
    cum = weights.cumsum(1)
    half = 0.5 * cum[:, -1:]
    idx = (cum < half).sum(1).clamp(max=xyz.shape[1] - 1)
    return xyz[torch.arange(xyz.shape[0]), idx]


def voxel_keys(xyz: np.ndarray, voxel: float) -> np.ndarray:
    """``[N]`` int64 index of the voxel of edge ``voxel`` holding each point ``[N, 3]`` (unique per voxel)."""
    cells = np.floor(np.asarray(xyz, dtype=np.float64) / voxel).astype(np.int64)
    cells -= cells.min(0)
    dims = cells.max(0) + 1
    return (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]


def fuse_points(
    field_xyz: np.ndarray,
    rgb: np.ndarray,
    label: np.ndarray,
    score: np.ndarray,
    radius: np.ndarray,
    voxel: float,
    n_classes: int,
    properties: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Fuse points that share a voxel: mean position, colour, radius and properties; score-weighted label vote.

    Args:
        field_xyz: ``[N, 3]`` positions in the field's frame (the voxels are cut there).
        rgb: ``[N, 3]`` float colours in [0, 1].
        label: ``[N]`` int label per point (-1: none).
        score: ``[N]`` its probability.
        radius: ``[N]`` patch radius.
        voxel: voxel edge in the field's frame.
        n_classes: ``C``.
        properties: more ``[N]`` values, averaged.

    Returns:
        ``{"field_xyz", "rgb", "label", "score", "radius", "inverse", **properties}`` per fused point
        (``inverse`` ``[N]``: the fused point each input point went to). The label is the one with the
        largest summed score among the voxel's points; its score is the mean score of the points voting
        for it.
    """
    keys = voxel_keys(field_xyz, voxel)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    m = counts.shape[0]

    def mean(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        flat = values.reshape(values.shape[0], -1)
        out = np.stack([np.bincount(inverse, weights=flat[:, k], minlength=m) for k in range(flat.shape[1])], -1)
        return (out / counts[:, None]).reshape((m,) + values.shape[1:])

    out = {
        "field_xyz": mean(field_xyz).astype(np.float32),
        "rgb": mean(rgb).astype(np.float32),
        "radius": mean(radius).astype(np.float32),
        "inverse": inverse,
    }
    lab = np.asarray(label, dtype=np.int64)
    has = lab >= 0
    if n_classes > 0 and has.any():
        votes = np.bincount(
            inverse[has] * n_classes + lab[has], weights=np.asarray(score, np.float64)[has], minlength=m * n_classes
        ).reshape(m, n_classes)
        voters = np.bincount(inverse[has] * n_classes + lab[has], minlength=m * n_classes).reshape(m, n_classes)
        best = votes.argmax(1)
        n_best = voters[np.arange(m), best]
        out["label"] = np.where(n_best > 0, best, -1).astype(np.int16)
        out["score"] = np.where(n_best > 0, votes[np.arange(m), best] / np.maximum(n_best, 1), 0.0).astype(np.float32)
    else:
        out["label"] = np.full(m, -1, dtype=np.int16)
        out["score"] = np.zeros(m, dtype=np.float32)
    for name, values in (properties or {}).items():
        out[name] = mean(values).astype(np.float32)
    return out


def free_space_votes(
    points: np.ndarray, depth_maps: np.ndarray, c2w: np.ndarray, intrinsics: np.ndarray, margin: float
) -> np.ndarray:
    """How many views see *through* each point: it projects into the view in front of the surface the view sees.

    Args:
        points: ``[N, 3]`` world points.
        depth_maps: ``[V, H, W]`` camera depth of each view's surface (``inf`` where the view sees none).
        c2w: ``[V, 3, 4]`` OpenCV camera-to-world.
        intrinsics: ``[V, 4]`` ``(fx, fy, cx, cy)`` at the maps' resolution.
        margin: a point is in front when its depth is below ``(1 - margin)`` times the smallest surface depth
            of the 3x3 pixels around its projection (the minimum keeps silhouette points: a pixel of
            misalignment at an object's edge must not count as seeing through it).

    Returns:
        ``[N]`` int votes.
    """
    from scipy.ndimage import minimum_filter

    v_count, h, w = depth_maps.shape
    votes = np.zeros(points.shape[0], dtype=np.int64)
    for v in range(v_count):
        near = minimum_filter(depth_maps[v], size=3, mode="nearest")
        rot, t = c2w[v, :, :3], c2w[v, :, 3]
        cam = (points - t) @ rot
        z = cam[:, 2]
        fx, fy, cx, cy = intrinsics[v]
        front = z > 1e-6
        u = np.floor(fx * cam[:, 0] / np.where(front, z, 1.0) + cx).astype(np.int64)
        r = np.floor(fy * cam[:, 1] / np.where(front, z, 1.0) + cy).astype(np.int64)
        inside = front & (u >= 0) & (u < w) & (r >= 0) & (r < h)
        surf = np.full(points.shape[0], np.inf)
        surf[inside] = near[r[inside], u[inside]]
        votes += (inside & (z < (1.0 - margin) * surf)).astype(np.int64)
    return votes


def marching_cubes_mesh(volume: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Triangle mesh of an iso-surface (scikit-image's marching cubes).

    Args:
        volume: ``[G_x, G_y, G_z]`` scalar grid.
        level: iso-level.

    Returns:
        ``(vertices [V, 3] in grid index units, within the grid's cells [-0.5, G - 0.5], faces [F, 3] int32)``,
        or ``None`` when the level is not crossed.
    """
    from skimage.measure import marching_cubes

    if not (volume.max() > level > volume.min()):
        return None
    # A one-cell border of zeros closes surfaces cut by the grid's bounds.
    padded = np.pad(volume, 1)
    verts, faces, _, _ = marching_cubes(padded, level=level)
    # the closing faces lie in the border, up to half a cell past the grid's cells: put them on their bounds
    verts = np.clip(verts - 1.0, -0.5, np.asarray(volume.shape) - 0.5)
    return verts.astype(np.float32), faces.astype(np.int32)


# -- baking a run ------------------------------------------------------------------------------------------


@dataclass
class _OpenRun:
    """What baking needs from a run: its config, scene, field and (semantic runs) method and query encoder."""

    fit_cfg: object
    scene: object
    trained: object
    loaded: object = None  # ovs3d.query.LoadedRun of a semantic run

    @property
    def semantic(self) -> bool:
        return self.loaded is not None


def _open_run(run: Path) -> _OpenRun:
    from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
    from ovs3d.run import RECONSTRUCTION_ONLY, _load_scene, fit_config_from_run
    from ovs3d.utils.device import resolve_device

    fit_cfg = fit_config_from_run(run)
    if fit_cfg.method != RECONSTRUCTION_ONLY:
        from ovs3d.query import load_run

        loaded = load_run(Path(run))
        return _OpenRun(fit_cfg, loaded.scene, loaded.method.trained, loaded)
    ckpt = Path(run) / "checkpoints" / CHECKPOINT_NAME
    if not ckpt.exists():
        raise OVS3DError(f"{run} has no reconstruction yet; run the same `ovs3d fit` command again to finish it")
    scene = _load_scene(fit_cfg.scene, fit_cfg.kind)
    return _OpenRun(fit_cfg, scene, load_trained_field(ckpt, resolve_device(fit_cfg.device)))


def bake_points(run: Path, cfg: ExportConfig | None = None) -> tuple[PointCloud, dict]:
    """Bake a finished run to labelled points (RGB-only points for a reconstruction-only run).

    Args:
        run: the run folder.
        cfg: export settings (default :class:`ExportConfig`).

    Returns:
        ``(points, info)``: the fused :class:`PointCloud` in the input frame (``field_xyz`` kept) and a
        dict of what was done (views, resolution, voxel, counts, seconds, ``semantic``).
    """
    return _bake(_open_run(Path(run)), cfg or ExportConfig())


@torch.no_grad()
def _bake(opened: _OpenRun, cfg: ExportConfig) -> tuple[PointCloud, dict]:
    from ovs3d.eval.visualize import label_palette
    from ovs3d.methods.base import as_view
    from ovs3d.query import check_texts, check_views, unique_slugs
    from ovs3d.render.cached import top_samples
    from ovs3d.render.scene_rays import field_to_input, field_to_world, input_scale, ray_near, view_rays
    from ovs3d.utils.console import Work, progress

    t0 = time.perf_counter()
    fit_cfg, scene, trained = opened.fit_cfg, opened.scene, opened.trained
    texts = check_texts(cfg.texts) if cfg.texts else []
    if opened.semantic:
        method = opened.loaded.method
        queries = opened.loaded.encode(texts) if texts else None
        downscale = cfg.downscale or fit_cfg.features.semantic_downscale
    else:
        if texts:
            raise OVS3DError("this is a reconstruction-only run (--method rgb): it has no language for --text")
        method, queries = None, None
        downscale = cfg.downscale or fit_cfg.recon.rgb_downscale
    views = scene.train_views(fit_cfg.holdout) if cfg.views is None else check_views(scene, cfg.views)
    if not views:
        raise OVS3DError("no views to fuse: pass --views with at least one view index")
    slugs = unique_slugs(texts)
    near = ray_near(scene)
    fx = float(scene.intrinsics_at(downscale)[0][0])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xyz", "rgb", "label", "score", "radius")}
    rel_parts: list[np.ndarray] = []
    world_parts: list[np.ndarray] = []
    w_img, h_img = scene.image_size(downscale)
    depth_maps = np.full((len(views), h_img, w_img), np.inf, dtype=np.float64)
    n_rays = 0
    for vi, v in enumerate(progress(views, desc="fusing views", work=Work("views"))):
        rays_o, rays_d = view_rays(scene, v, downscale)
        n_rays += rays_o.shape[0]
        samples = top_samples(trained, rays_o, rays_d, near, 8)
        surface = median_surface(samples.xyz, samples.weights)  # [R, 3] field frame
        if method is not None:
            render = method.render_rays(rays_o, rays_d, near)
            rgb = render["rgb"].float()
            # one image at a time, as eval: LERF picks each label's scale over the whole view
            scores = method.label_scores(render)
            label = method.predict_labels(as_view(render, h_img, w_img)).reshape(-1)  # a whole view, as eval
            score = scores.gather(-1, label[:, None])[:, 0]
            negatives = opened.loaded.negatives
            rel = method.relevancy(render, queries, negatives).float() if queries is not None else None
        else:
            from ovs3d.methods.reconstruction import render_rays_chunked

            w, h = scene.image_size(downscale)
            out = render_rays_chunked(trained, rays_o, rays_d, near, (h, w))
            rgb = torch.from_numpy(out["rgb"]).reshape(-1, 3)
            label = torch.full((rgb.shape[0],), -1, dtype=torch.long)
            score, rel = torch.zeros(rgb.shape[0]), None
        acc = samples.weights.sum(1)
        keep = acc >= cfg.min_opacity
        if scene.kind == "forward":
            keep &= surface[:, 2] < 1.0 - 1e-3  # NDC z -> 1 is infinitely far: no surface to export
        elif scene.kind == "unbounded":
            keep &= surface.norm(dim=-1) < 2.0 - 1e-3  # the contracted shell's edge is at infinity
        world = field_to_world(scene, surface[keep])
        c2w = torch.as_tensor(np.asarray(scene.c2w[v]), dtype=torch.float32)
        depth = ((world - c2w[:3, 3]) @ c2w[:3, 2]).clamp_min(0)
        depth_maps[vi].reshape(-1)[keep.numpy()] = depth.double().numpy()
        world_parts.append(world.double().numpy())
        parts["xyz"].append(surface[keep].numpy())
        parts["rgb"].append(rgb[keep].numpy())
        parts["label"].append(label[keep].numpy())
        parts["score"].append(score[keep].numpy())
        # half the pixel's diagonal at the point's depth, in normalised-world units
        parts["radius"].append((depth * (math.sqrt(2) / 2) / fx).numpy())
        if rel is not None:
            rel_parts.append(rel[keep].numpy())
    cat = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    n_floaters = 0
    rel_all = np.concatenate(rel_parts) if rel_parts else None
    if cfg.free_space_views > 0 and len(views) > 1 and cat["xyz"].shape[0]:
        cams = np.asarray(scene.c2w)[views].astype(np.float64)
        intr = np.asarray(scene.intrinsics_at(downscale))[views].astype(np.float64)
        votes = free_space_votes(np.concatenate(world_parts), depth_maps, cams, intr, cfg.free_space_margin)
        solid = votes < cfg.free_space_views
        n_floaters = int((~solid).sum())
        cat = {k: v[solid] for k, v in cat.items()}
        rel_all = rel_all[solid] if rel_all is not None else None
    if cat["xyz"].shape[0] == 0:
        raise OVS3DError(
            f"no surface found: no ray of the {len(views)} views reached opacity {cfg.min_opacity}; "
            "check the reconstruction (ovs3d eval) or lower --min-opacity"
        )
    props = {}
    if rel_all is not None:
        props = {f"rel_{s}": rel_all[:, q] for q, s in enumerate(slugs)}
    # Voxel edge: the median pixel footprint measured in the field's frame (NDC x spans the reference image).
    foot = _field_footprint(scene, downscale, cat["radius"])
    voxel = cfg.voxel * foot
    classes = list(scene.classes) if opened.semantic else []
    fused = fuse_points(cat["xyz"], cat["rgb"], cat["label"], cat["score"], cat["radius"], voxel, len(classes), props)
    scale = input_scale(scene)
    # The fused radius is a mean of world units; the voxel floor is in field units: converted to the world.
    floor = _voxel_world_radius(scene, fused["field_xyz"], voxel)
    radius = np.maximum(fused["radius"].astype(np.float64), floor) * scale
    pts = PointCloud(
        xyz=field_to_input(scene, torch.from_numpy(fused["field_xyz"])).astype(np.float32),
        rgb=np.clip(np.round(fused["rgb"] * 255), 0, 255).astype(np.uint8),
        label=fused["label"],
        score=fused["score"],
        radius=radius.astype(np.float32),
        classes=classes,
        colors=label_palette(len(classes)).astype(np.uint8) if classes else np.zeros((0, 3), np.uint8),
        properties={k: fused[k] for k in props},
        field_xyz=fused["field_xyz"],
    )
    info = {
        "semantic": opened.semantic,
        "method": fit_cfg.method,
        "views": [int(v) for v in views],
        "resolution": list(scene.image_size(downscale)),
        "rays": int(n_rays),
        "points_before_fusion": int(cat["xyz"].shape[0]),
        "floaters_dropped": n_floaters,
        "points": len(pts),
        "voxel_field": float(voxel),
        "texts": [{"text": t, "property": f"rel_{s}"} for t, s in zip(texts, slugs)],
        "seconds_points": time.perf_counter() - t0,
        "scene_kind": scene.kind,
    }
    return pts, info


def _field_footprint(scene, downscale: float, radius_world: np.ndarray) -> float:
    """Median pixel footprint in the field's frame: one pixel of NDC x for forward-facing scenes (depth-free),
    else the median world footprint."""
    if scene.kind == "forward":
        w, _ = scene.image_size(downscale)
        return 2.0 / w
    return float(np.median(radius_world) * 2 / math.sqrt(2))


def _voxel_world_radius(scene, field_xyz: np.ndarray, voxel: float) -> np.ndarray:
    """``[M]`` world radius of a field voxel at each fused point (NDC and contracted voxels grow with depth)."""
    half_diag = voxel * math.sqrt(3) / 2
    if scene.kind == "bounded":
        return np.full(field_xyz.shape[0], half_diag)
    from ovs3d.render.scene_rays import field_to_world

    p = torch.from_numpy(np.asarray(field_xyz, dtype=np.float32))
    q = p.clone()
    q[:, 0] += half_diag  # a step of the voxel's half diagonal along field x, measured in the world
    return (field_to_world(scene, q) - field_to_world(scene, p)).norm(dim=-1).numpy()


@torch.no_grad()
def label_meshes(points: PointCloud, trained, scene, cfg: ExportConfig) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One mesh per label: marching cubes on the field's density restricted to the cells of that label.

    The grid spans the fused points' box in the field's frame with ``mesh_resolution`` cells along every axis
    (cells follow the box: a forward-facing scene is thin in NDC depth). A cell takes the label of its nearest
    fused point within two cells (plus the points' own spacing); farther cells saw no surface in any fused
    view. Each label's iso-level is ``mesh_level`` times the median density at its fused points (surfaces of
    one field differ in density by orders of magnitude, so no absolute level fits all).

    Args:
        points: fused points with ``field_xyz``.
        trained: the reconstructed field (density).
        scene: the scene (frame conversions).
        cfg: grid resolution and iso-level.

    Returns:
        label index -> ``(vertices [V, 3] float32 in the input frame, faces [F, 3] int32)``.
    """
    from scipy.spatial import cKDTree

    from ovs3d.render.scene_rays import field_to_input

    if points.field_xyz is None or not points.classes or len(points) == 0:
        return {}
    lo, hi = _mesh_box(points.field_xyz, scene)
    n = int(cfg.mesh_resolution)
    steps = np.maximum((hi - lo) / n, 1e-6)  # [3] cell edges per axis
    axes = [lo[k] + steps[k] * (np.arange(n) + 0.5) for k in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    density = _density(trained, grid).reshape(n, n, n)
    at_points = _density(trained, points.field_xyz.astype(np.float32))
    tree = cKDTree(points.field_xyz / steps)  # in cell units
    dist, nearest = tree.query(grid / steps, k=1, workers=-1)
    labels = np.where(dist <= 2.0 + _nn_spacing(tree), points.label[nearest], -1).reshape(n, n, n)
    from ovs3d.utils.console import Work, progress

    out = {}
    for c in progress(range(len(points.classes)), desc="label meshes", work=Work("labels")):
        mine = points.label == c
        if not mine.any() or not (labels == c).any():
            continue
        level = cfg.mesh_level * float(np.median(at_points[mine]))
        mesh = marching_cubes_mesh(np.where(labels == c, density, 0.0), level) if level > 0 else None
        if mesh is None:
            continue
        verts, faces = mesh
        verts_field = lo + (verts + 0.5) * steps
        out[c] = (field_to_input(scene, torch.from_numpy(verts_field.astype(np.float32))).astype(np.float32), faces)
    return out


def _density(trained, xyz: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """``[M]`` float64 density of the field at field-frame points ``[M, 3]``."""
    dev = trained.device
    parts = [
        trained.field.density(torch.from_numpy(xyz[i : i + chunk]).to(dev)).cpu() for i in range(0, len(xyz), chunk)
    ]
    return torch.cat(parts).double().numpy() if parts else np.zeros(0)


def _nn_spacing(tree) -> float:
    """Median distance from a point to its nearest neighbour (a sample of at most 2000 points)."""
    data = tree.data
    idx = np.linspace(0, data.shape[0] - 1, min(2000, data.shape[0])).astype(int)
    d, _ = tree.query(data[idx], k=2)
    return float(np.median(d[:, 1]))


def _mesh_box(field_xyz: np.ndarray, scene) -> tuple[np.ndarray, np.ndarray]:
    """The marching-cubes box in the field's frame: the fused points' box with a 1% margin on each side of each
    axis, of that axis's own extent (a forward-facing scene is thin in NDC depth: a margin taken from the widest
    axis gave its depth axis several times 1 %), inside the field box."""
    from ovs3d.render.scene_rays import field_aabb

    aabb = field_aabb(scene).numpy()
    lo, hi = field_xyz.min(0), field_xyz.max(0)
    pad = 0.01 * (hi - lo)  # [3]
    return np.maximum(lo - pad, aabb[0]), np.minimum(hi + pad, aabb[1])


# -- files -------------------------------------------------------------------------------------------------


def _vertex_array(points: PointCloud) -> np.ndarray:
    dtype = [
        ("x", "<f4"),
        ("y", "<f4"),
        ("z", "<f4"),
        ("red", "u1"),
        ("green", "u1"),
        ("blue", "u1"),
        ("label", "<i2"),
        ("score", "<f4"),
        ("radius", "<f4"),
    ] + [(name, "<f4") for name in points.properties]
    arr = np.empty(len(points), dtype=dtype)
    arr["x"], arr["y"], arr["z"] = points.xyz.T
    arr["red"], arr["green"], arr["blue"] = points.rgb.T
    arr["label"], arr["score"], arr["radius"] = points.label, points.score, points.radius
    for name, values in points.properties.items():
        arr[name] = values
    return arr


def _header_comments(points: PointCloud) -> list[str]:
    classes = json.dumps(points.classes, ensure_ascii=True)
    return ["ovs3d labelled points, frame: input poses", f"classes {classes}"]


def write_points_ply(path: Path, points: PointCloud) -> None:
    """``points.ply`` (SPEC §6): binary little-endian, vertex ``x y z red green blue label score radius`` and
    one float per extra property; the classes as a JSON list in a header comment."""
    from plyfile import PlyData, PlyElement

    from ovs3d.utils.files import atomic_path

    el = PlyElement.describe(_vertex_array(points), "vertex")
    with atomic_path(path) as tmp:
        PlyData([el], text=False, byte_order="<", comments=_header_comments(points)).write(str(tmp))


def write_gaussians_ply(path: Path, points: PointCloud) -> None:
    """The points as isotropic 3D Gaussians in 3D Gaussian splatting's PLY layout (``x y z nx ny nz f_dc_0..2
    opacity scale_0..2 rot_0..3``, log scales and logit opacity, degree-0 colour), plus ``label`` and ``score``."""
    from plyfile import PlyData, PlyElement

    from ovs3d.utils.files import atomic_path

    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    names += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    dtype = [(n, "<f4") for n in names] + [("label", "<i2"), ("score", "<f4")]
    arr = np.zeros(len(points), dtype=dtype)
    arr["x"], arr["y"], arr["z"] = points.xyz.T
    f_dc = (points.rgb.astype(np.float32) / 255.0 - 0.5) / SH_C0
    arr["f_dc_0"], arr["f_dc_1"], arr["f_dc_2"] = f_dc.T
    arr["opacity"] = math.log(0.95 / 0.05)  # logit of 0.95: surfaces are opaque
    log_scale = np.log(np.maximum(points.radius, 1e-8) / 2.0)  # sigma of half the patch radius
    arr["scale_0"] = arr["scale_1"] = arr["scale_2"] = log_scale
    arr["rot_0"] = 1.0
    arr["label"], arr["score"] = points.label, points.score
    el = PlyElement.describe(arr, "vertex")
    with atomic_path(path) as tmp:
        PlyData([el], text=False, byte_order="<", comments=_header_comments(points)).write(str(tmp))


def write_npz(path: Path, points: PointCloud) -> None:
    """The points' arrays in one ``.npz`` (``xyz rgb label score radius classes colors`` and the properties)."""
    import io

    from ovs3d.utils.files import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        xyz=points.xyz,
        rgb=points.rgb,
        label=points.label,
        score=points.score,
        radius=points.radius,
        classes=np.asarray(points.classes, dtype=str),
        colors=points.colors,
        **points.properties,
    )
    atomic_write_bytes(path, buf.getvalue())


def write_mesh_ply(path: Path, verts: np.ndarray, faces: np.ndarray, color: np.ndarray) -> None:
    """A triangle mesh as binary PLY: vertex ``x y z red green blue``, face ``vertex_indices``."""
    from plyfile import PlyData, PlyElement

    from ovs3d.utils.files import atomic_path

    v = np.empty(
        verts.shape[0], dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    v["x"], v["y"], v["z"] = verts.T
    v["red"], v["green"], v["blue"] = np.asarray(color, dtype=np.uint8)
    f = np.empty(faces.shape[0], dtype=[("vertex_indices", "i4", (3,))])
    f["vertex_indices"] = faces
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], text=False, byte_order="<").write(
            str(tmp)
        )


def read_points(folder: Path) -> PointCloud:
    """Read an export folder's ``points.ply`` and ``labels.json`` back into a :class:`PointCloud`."""
    from plyfile import PlyData

    folder = Path(folder)
    ply, meta = folder / "points.ply", folder / "labels.json"
    if not ply.is_file() or not meta.is_file():
        raise OVS3DError(f"{folder} is not an ovs3d export folder (no points.ply and labels.json); run `ovs3d export`")
    info = json.loads(meta.read_text())
    v = PlyData.read(str(ply))["vertex"].data
    base = {"x", "y", "z", "red", "green", "blue", "label", "score", "radius"}
    names = v.dtype.names or ()
    return PointCloud(
        xyz=np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float32),
        rgb=np.stack([v["red"], v["green"], v["blue"]], -1).astype(np.uint8),
        label=np.asarray(v["label"], dtype=np.int16),
        score=np.asarray(v["score"], dtype=np.float32),
        radius=np.asarray(v["radius"], dtype=np.float32) if "radius" in names else np.zeros(len(v), np.float32),
        classes=list(info["classes"]),
        colors=np.asarray(info["colors"], dtype=np.uint8).reshape(-1, 3),
        properties={n: np.asarray(v[n], dtype=np.float32) for n in names if n not in base},
    )


def export_run(run: Path, out: Path | None = None, cfg: ExportConfig | None = None, overwrite: bool = False) -> dict:
    """``ovs3d export``: bake a run to ``DIR/points.ply``, ``labels.json`` and ``meshes/<slug>.ply``.

    Args:
        run: a finished run folder (semantic or reconstruction-only).
        out: output folder (default ``RUN/export``); must not exist unless ``overwrite``.
        cfg: export settings.
        overwrite: replace an existing export folder (only once the new one is complete).

    Returns:
        The ``labels.json`` dict (with ``"info"``: counts, seconds, file sizes).
    """
    from ovs3d.run import read_run_config, slugify
    from ovs3d.utils.files import atomic_write_json

    cfg = cfg or ExportConfig()
    if cfg.format not in EXPORT_FORMATS:
        raise OVS3DError(f"unknown --format {cfg.format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    read_run_config(run)  # one clear line if RUN is not a run folder
    out = Path(out) if out is not None else Path(run) / "export"
    if out.exists() and not out.is_dir():
        raise OVS3DError(f"--out {out} is a file; choose a folder path that does not exist")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OVS3DError(f"{out} already exists; choose a new --out or pass --overwrite to replace it")
    opened = _open_run(Path(run))
    points, info = _bake(opened, cfg)
    if not info["semantic"]:
        logger.warning("%s is a reconstruction-only run: exporting RGB points without labels (label -1)", run)
    t1 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{time.time_ns()}"
    tmp.mkdir()
    try:
        write_points_ply(tmp / "points.ply", points)
        if cfg.format == "npz":
            write_npz(tmp / "points.npz", points)
        elif cfg.format == "gaussian":
            write_gaussians_ply(tmp / "points_gaussians.ply", points)
        meshes = {}
        if cfg.meshes and points.classes:
            meshes = label_meshes(points, opened.trained, opened.scene, cfg)
            for c, (verts, faces) in meshes.items():
                write_mesh_ply(tmp / "meshes" / f"{slugify(points.classes[c])}.ply", verts, faces, points.colors[c])
        info["seconds_meshes"] = time.perf_counter() - t1
        info["meshes"] = {
            points.classes[c]: {"vertices": int(v.shape[0]), "faces": int(f.shape[0])} for c, (v, f) in meshes.items()
        }
        info["bytes"] = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        meta = {
            "classes": points.classes,
            "colors": points.colors.tolist(),
            "frame": "input poses",
            "run": str(Path(run).resolve()),
            "method": info["method"],
            "score": _score_meaning(info),
            "meshes": {points.classes[c]: f"meshes/{slugify(points.classes[c])}.ply" for c in meshes},
            "texts": info["texts"],
            "info": info,
        }
        atomic_write_json(tmp / "labels.json", meta)
        if out.exists():
            old = out.parent / f".old-{out.name}-{time.time_ns()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta["out"] = str(out)
    return meta


def _score_meaning(info: dict) -> str:
    if not info["semantic"]:
        return "none: a reconstruction-only run has no labels (label -1, score 0)"
    if info["method"] == "lerf":
        return "softmax over the labels of 10 x their LERF relevancy, mean over the fused rays voting for the label"
    return "softmax over the labels of 100 x the cosine (CLIP's logit scale), mean over the fused rays voting for it"


def load_points(run: Path) -> PointCloud:
    """The run's exported points (``RUN/export``), exporting them with the defaults first if there are none."""
    folder = Path(run) / "export"
    if not (folder / "labels.json").is_file():
        logger.info("no export in %s yet: baking the points (ovs3d export) first", run)
        export_run(Path(run), folder, overwrite=folder.exists())
    return read_points(folder)
