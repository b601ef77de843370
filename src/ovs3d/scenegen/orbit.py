"""The ``orbit`` preset: a synthetic 360° capture of objects on a table in the middle of a large room.

It exists to test 360° (outside-in) reconstruction with a distant background, the case scene contraction
(mip-NeRF 360) is made for: the cameras circle the table at a few metres, the walls stand several times
farther away, so the far bounds are much larger than the camera circle.

The scene
    A table (round: a top on a pedestal; or rectangular: a top on four legs) stands at the centre of a
    square-ish room. 4-6 textured primitives with the long-tail object labels of the ``tabletop`` preset
    (:data:`ovs3d.scenegen.labels.OBJECTS`, drawn and textured by the same code, sizes scaled by
    ``object_scale``) stand on it; now and then two share a label. The table's label comes from the
    tabletop pool's tables (``wooden table``, ``white desk``, ...), the floor's from the ``room`` preset's
    floors, the walls' from the tabletop pool's walls with isotropic textures (all four walls share one
    label and one texture, scaled up by :data:`WALL_TEXTURE_SCALE` so that it stays above the pixel scale
    at that distance). The walls are ``wall_distance`` metres from the table's centre (each side drawn on
    its own) and have no top (there is no ceiling: every camera looks down on the table, and a ray that
    rises still meets a wall). Objects are placed one by one, largest first, each at the free spot (of a
    few random ones) that the annotated cameras see farthest from the objects already there, in azimuth
    relative to the objects' angular sizes; the validity check below has the last word.

World and cameras
    World ``+y`` is up, the floor is ``y = 0``, the table stands at the origin and its top centre is the
    *target* ``(0, table height, 0)``. ``n_views`` cameras (default 60) stand on ``n_rings`` horizontal
    rings (default 3) of a sphere of radius ``camera_radius`` around the target, at elevations spread
    evenly over ``elevation_deg`` (lowest ring first); each ring goes once around (views evenly spaced in
    azimuth, the rings staggered by a fraction of a step, all turning the same way), as a person walking
    around the table three times at different heights would capture it. Each camera is jittered (azimuth
    and elevation by about a degree, distance by 2 %) and looks at the target plus a few centimetres of
    jitter, with the world up upwards (no roll). OpenCV camera-to-world, pinhole, ``fx = fy``, principal
    point at the image centre. The annotated views are ``n_annotated`` views of the middle ring spread
    evenly around it (``ovs3d.scenegen.tabletop.annotated_views`` within the ring).

Rendering
    :class:`ovs3d.scenegen.room.RoomScene`'s numpy ray caster and shading (a point light above the table,
    hard shadows, ``supersample x supersample`` anti-aliasing; exact instance maps from the pixel-centre
    rays), with the room's box open at the top (``ceiling = inf``). Every ray that does not point
    straight up hits a surface.

Validity (SPEC §1, as ``tabletop``)
    In every annotated view every label is visible (at least ``min_area_factor * (min(H, W) / 10)^2``
    pixels) and every object covers that many pixels with a bounding box whose short side is at least
    ``min_size_factor`` smallest CLIP patches (``min(H, W) / 10`` at the semantic resolution
    ``1 / semantic_downscale``): :func:`ovs3d.scenegen.tabletop.layout_problem`. Otherwise the layout is
    re-drawn with the next sub-seed.

Output
    The SPEC §1 scene folder, as the other presets write it (:func:`ovs3d.scenegen.writer.write_scene`):
    ``images/NN.png``, ``poses_bounds.npy`` (near/far per view: 0.9 x the nearest and 1.05 x the farthest
    pixel-centre z-depth, so far reaches the farthest wall the view sees), ``segmentations/`` for the
    annotated views, ``sim/instances/NN.png`` (uint16) and ``sim/instances.json``. With the defaults the
    largest far bound is more than 3 x the camera distance from the target: the loader can tell the scene
    is unbounded. Deterministic per configuration: the same config writes bit-identical files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.scenegen import raycast as rc
from ovs3d.scenegen.labels import OBJECTS, TABLES, WALLS, SurfaceKind
from ovs3d.scenegen.room import (
    FAR_FACTOR,
    FLOOR_KINDS,
    NEAR_FACTOR,
    FurnitureKind,
    Item,
    Part,
    RoomScene,
    _assemble,
    _furniture_pieces,
)
from ovs3d.scenegen.tabletop import (
    SIZE_RADIUS,
    _draw_shape,
    _object_texture,
    _surface_texture,
    annotated_views,
    layout_problem,
    look_at,
)
from ovs3d.scenegen.textures import jitter_color, make_texture
from ovs3d.scenegen.writer import check_preset_config, first_valid_layout, generate_scene, write_scene
from ovs3d.utils.config import field_name, rule

logger = logging.getLogger(__name__)

TABLE_LABELS = ("wooden table", "white desk", "black marble countertop", "red checkered tablecloth")
"""Table labels of the tabletop pool that name a piece of furniture (not a sofa, a bed sheet, a mat...)."""
TABLE_KINDS: tuple[SurfaceKind, ...] = tuple(k for k in TABLES if k.label in TABLE_LABELS)
"""The tables' pool."""
WALL_KINDS: tuple[SurfaceKind, ...] = tuple(k for k in WALLS if k.texture in ("noise", "stripes"))
"""Wall labels of the tabletop pool whose texture varies along every wall of the room (bricks, curtains and
planks are drawn along world x only, which would leave two of the four walls flat)."""
WALL_TEXTURE_SCALE = 3.0
"""The walls' texture feature size is the pool's times this (the walls are ~10 m away, not ~3 m)."""
FLOOR_TEXTURE_SCALE = 1.5
"""The floor's texture feature size is the room pool's times this (most of the floor is seen far away)."""
TABLE_THICKNESS = (0.04, 0.06)
"""Range of the table top's thickness (metres)."""
EDGE_MARGIN = 0.04
"""Clearance between an object's footprint and the table's edge."""
OBJECT_GAP = 0.06
"""Clearance between two objects' footprints."""
PLACE_CHOICES = 16
"""Free candidate spots per object; it takes the one the annotated cameras see best (:func:`_place_on_table`)."""


@dataclass
class OrbitConfig:
    """Configuration of the ``orbit`` preset (every field can be overridden from the CLI)."""

    seed: int = field(default=0, metadata=rule(ge=0))
    """Random seed: room, table, objects, labels, textures, light and cameras all follow from it."""
    width: int = field(default=160, metadata=rule(ge=16, le=16384))
    """Full-resolution image width in pixels (160x120 keeps a CPU fit of 60 views feasible)."""
    height: int = field(default=120, metadata=rule(ge=16, le=16384))
    """Full-resolution image height in pixels."""
    n_views: int = field(default=60, metadata=rule(ge=3, le=1000))
    """Number of views, split over the rings (the first rings take the remainder)."""
    n_rings: int = field(default=3, metadata=rule(ge=1, le=8))
    """Number of elevation rings the cameras stand on (each goes once around the table)."""
    n_annotated: int = field(default=5, metadata=rule(ge=1))
    """Number of annotated (test) views with ground-truth masks, spread evenly around the middle ring."""
    supersample: int = field(default=3, metadata=rule(ge=1, le=16))
    """Anti-aliasing samples per pixel side for RGB (instance maps always use the pixel centre)."""
    semantic_downscale: float = field(default=4.0, metadata=rule(ge=1, le=1000))
    """Downscale of the semantic stage; only used by the object-size check."""
    n_objects: tuple[int, int] = field(default=(4, 6), metadata=rule(ge=1, le=8, ordered=True))
    """Inclusive range of the number of objects on the table."""
    duplicate_prob: float = field(default=0.2, metadata=rule(ge=0, le=1))
    """Probability that two objects share a label (e.g. two "green grape"s)."""
    object_scale: float = field(default=1.0, metadata=rule(ge=0.2, le=2))
    """Object sizes are the ``tabletop`` preset's footprint radii (0.14-0.31 m) times this."""
    table_radius: tuple[float, float] = field(default=(0.8, 0.95), metadata=rule(ge=0.3, le=3, ordered=True))
    """Range of the table top's radius (round table) or half width (rectangular; its half depth is
    0.75-0.9 of that), metres."""
    table_height: tuple[float, float] = field(default=(0.72, 0.78), metadata=rule(ge=0.2, le=2, ordered=True))
    """Range of the table's height (its top is the cameras' target), metres."""
    round_table_prob: float = field(default=0.5, metadata=rule(ge=0, le=1))
    """Probability that the table is round (else rectangular)."""
    camera_radius: float = field(default=2.2, metadata=rule(le=50))
    """Distance of the cameras from the target (the table top's centre), metres, before jitter."""
    elevation_deg: tuple[float, float] = field(default=(15.0, 30.0), metadata=rule(ge=0, le=80, ordered=True))
    """Elevations of the lowest and the highest ring above the table top, degrees (one ring: the mean).
    Higher rings see less of the walls: with the defaults the highest ring (30°) still sees them in a band
    of ~5 % of the image at the top (at 35° they drop out of most views)."""
    hfov_deg: float = field(default=60.0, metadata=rule(ge=10, le=120))
    """Horizontal field of view in degrees."""
    wall_distance: tuple[float, float] = field(default=(9.0, 12.0), metadata=rule(le=1000, ordered=True))
    """Range of the distance of each wall from the table's centre, metres (each of the four sides drawn on
    its own). The default is ~4-5.5 x ``camera_radius``: far bounds are several times the camera circle."""
    position_jitter: float = field(default=0.02, metadata=rule(ge=0, le=0.1))
    """Relative jitter (std) of a camera's distance from the target."""
    angle_jitter_deg: float = field(default=1.0, metadata=rule(ge=0, le=5))
    """Jitter (std) of a camera's azimuth and elevation, degrees."""
    target_jitter: float = field(default=0.02, metadata=rule(ge=0, le=0.2))
    """Jitter (std, per axis) of the point a camera looks at, metres."""
    min_size_factor: float = field(default=0.8, metadata=rule(ge=0))
    """Minimum short side of an object's visible bounding box, in units of the smallest CLIP patch."""
    min_area_factor: float = field(default=0.4, metadata=rule(ge=0))
    """Minimum visible pixels of every object and label, in units of ``(min(H, W) / 10)^2``."""
    max_layout_tries: int = field(default=40, metadata=rule(ge=1))
    """Layouts to draw before giving up when none passes the validity check."""

    def ring_sizes(self) -> list[int]:
        """Number of views on each ring, lowest ring first."""
        base, extra = divmod(self.n_views, self.n_rings)
        return [base + (1 if k < extra else 0) for k in range(self.n_rings)]

    def ring_elevations(self) -> np.ndarray:
        """``[n_rings]`` elevation of each ring in degrees, lowest first."""
        lo, hi = self.elevation_deg
        if self.n_rings == 1:
            return np.array([(lo + hi) / 2.0])
        return np.linspace(lo, hi, self.n_rings)

    @property
    def annotated(self) -> list[int]:
        """Sorted indices of the annotated views: ``n_annotated`` views spread evenly around the middle ring."""
        sizes = self.ring_sizes()
        mid = self.n_rings // 2
        start = sum(sizes[:mid])
        return [start + i for i in annotated_views(sizes[mid], self.n_annotated)]

    def validate(self, name: Callable[[str], str] = field_name) -> None:
        """Raise :class:`OVS3DError` on values that cannot make a scene (one line).

        Args:
            name: how a setting is named in the message (default: the field; the CLI passes its flags).
        """
        check_preset_config(self, name)
        if self.n_views < 3 * self.n_rings:
            raise OVS3DError(
                f"{name('n_views')}={self.n_views} must be at least 3 x {name('n_rings')} = {3 * self.n_rings}"
            )
        ring = self.ring_sizes()[self.n_rings // 2]
        if self.n_annotated > ring:
            raise OVS3DError(
                f"{name('n_annotated')}={self.n_annotated} must be in [1, {ring}] (the views of the middle ring); "
                f"raise {name('n_views')} or lower {name('n_rings')}"
            )
        if self.n_annotated >= self.n_views:
            raise OVS3DError(f"all {self.n_views} views would be annotated; lower {name('n_annotated')}")
        if self.camera_radius < 1.5 * self.table_radius[1]:
            raise OVS3DError(
                f"{name('camera_radius')}={self.camera_radius} must be in [1.5 x the largest table radius = "
                f"{1.5 * self.table_radius[1]:g}, 50] metres"
            )
        if self.wall_distance[0] < 1.25 * self.camera_radius:
            raise OVS3DError(
                f"{name('wall_distance')}={self.wall_distance} must be a range within [1.25 x camera_radius = "
                f"{1.25 * self.camera_radius:g}, 1000] metres (the cameras stand inside the room)"
            )


# ------------------------------------------------------------------------------------------ scene


@dataclass
class OrbitScene(RoomScene):
    """A drawn orbit scene: a :class:`~ovs3d.scenegen.room.RoomScene` whose room has no ceiling
    (``ceiling = inf``) and whose items are, in id order, the walls (+x, -x, +z, -z; one label), the floor,
    the table and the objects on it. Renders views on demand (``render_ids``, ``render_rgb``)."""

    target: np.ndarray = field(default_factory=lambda: np.zeros(3))
    """``[3]`` the table top's centre, which every camera looks at (before jitter)."""
    table_shape: str = "round"
    """``round`` or ``rectangular``."""
    table_extent: tuple[float, float] = (0.0, 0.0)
    """The table top's radius (round: both) or half width and half depth (rectangular, along x and z)."""
    camera_radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """``[N]`` distance of each camera from the target (after jitter)."""
    elevations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """``[N]`` elevation of each camera above the table top, radians (after jitter)."""
    azimuths: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """``[N]`` azimuth of each camera around the target, radians (``atan2(x, z)``, after jitter)."""
    rings: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    """``[N]`` ring index of each camera (0 = lowest)."""
    walls: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    """Distance of the +x, -x, +z and -z walls from the table's centre (the room need not be centred)."""

    @property
    def box(self) -> np.ndarray:
        """``[2, 3]`` the room's box (world), min and max corner; open at the top (``y`` max is ``inf``)."""
        xp, xn, zp, zn = self.walls
        return np.array([[-xn, 0.0, -zn], [xp, np.inf, zp]])

    @property
    def objects(self) -> list[Item]:
        """The objects on the table, in id order (what :func:`ovs3d.scenegen.tabletop.layout_problem` checks)."""
        return [it for it in self.items if it.category == "object"]

    @property
    def table(self) -> Item:
        """The table."""
        return next(it for it in self.items if it.category == "table")


# --------------------------------------------------------------------------------------- drawing


def _draw_cameras(rng: np.random.Generator, cfg: OrbitConfig, target: np.ndarray):
    """Cameras on ``n_rings`` jittered rings around ``target`` (see the module docstring).

    Returns:
        ``(c2w [N, 3, 4], radii [N], elevations [N] rad, azimuths [N] rad, rings [N])``.
    """
    phase = rng.random() * 2 * np.pi
    turn = 1.0 if rng.random() < 0.5 else -1.0
    sizes = cfg.ring_sizes()
    elev_deg = cfg.ring_elevations()
    rings = np.concatenate([np.full(m, k, dtype=np.intp) for k, m in enumerate(sizes)])
    step = np.concatenate([np.arange(m) / m + k / (m * cfg.n_rings) for k, m in enumerate(sizes)])  # in turns
    n = cfg.n_views
    azimuth = phase + turn * 2 * np.pi * step + np.deg2rad(rng.normal(scale=cfg.angle_jitter_deg, size=n))
    elevation = np.deg2rad(elev_deg[rings] + rng.normal(scale=cfg.angle_jitter_deg, size=n))
    radius = cfg.camera_radius * (1.0 + cfg.position_jitter * rng.normal(size=n))
    look = target[None, :] + rng.normal(scale=cfg.target_jitter, size=(n, 3))
    ce = np.cos(elevation)
    positions = target[None, :] + radius[:, None] * np.stack(
        [ce * np.sin(azimuth), np.sin(elevation), ce * np.cos(azimuth)], axis=1
    )
    c2w = np.stack([look_at(positions[i], look[i]) for i in range(n)])
    azimuth = np.arctan2(positions[:, 0] - target[0], positions[:, 2] - target[2])
    return c2w, radius, elevation, azimuth, rings


def _table_parts(rng: np.random.Generator, kind: SurfaceKind, cfg: OrbitConfig, height: float):
    """The table's parts at the origin, its shape and the extent of its top (see :class:`OrbitScene`)."""
    r = rng.uniform(*cfg.table_radius)
    if rng.random() < cfg.round_table_prob:
        tex = _surface_texture(rng, kind, False)
        ks = rng.uniform(0.03, 0.1)
        thick = rng.uniform(*TABLE_THICKNESS)
        foot = rng.uniform(0.3, 0.4) * r
        pieces = [
            (rc.Cylinder(r, thick), (0.0, height - thick, 0.0), tex, ks, 15.0),
            (rc.Cylinder(rng.uniform(0.05, 0.08), height - thick), (0.0, 0.0, 0.0), tex, ks, 15.0),
            (rc.Cylinder(foot, 0.03), (0.0, 0.0, 0.0), tex, ks, 15.0),
        ]
        return _assemble(np.zeros(3), 0.0, pieces), "round", (r, r)
    depth = r * rng.uniform(0.75, 0.9)
    # the room preset's table builder (a top on four legs); only the label, colours and texture of the kind count
    furniture = FurnitureKind(
        kind.label, "table", (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), kind.color1, kind.color2, kind.texture, kind.scale
    )
    pieces, _ = _furniture_pieces(rng, furniture, 2 * r, 2 * depth, height)
    return _assemble(np.zeros(3), 0.0, pieces), "rectangular", (r, depth)


def _place_on_table(
    rng: np.random.Generator,
    shapes: list[rc.Shape],
    table_shape: str,
    extent: tuple[float, float],
    viewpoints: np.ndarray,
) -> list[tuple[float, float]] | None:
    """Non-overlapping footprint centres ``(x, z)`` on the table top for ``shapes`` (largest first), or ``None``.

    Each object takes, of :data:`PLACE_CHOICES` free random spots, the one that overlaps least with the
    objects already placed as seen from ``viewpoints`` (the annotated cameras): the smallest, over those
    cameras and the placed objects, of the horizontal angle between the two footprints' centres divided by
    the sum of their angular radii (below 1 they overlap in azimuth; whether one hides the other then
    depends on heights and elevation, which the validity check sees).

    Args:
        rng: random generator.
        shapes: the objects' primitives (footprint radius ``shape.footprint()``).
        table_shape: ``round`` or ``rectangular``.
        extent: the table top's radius, or half width and half depth.
        viewpoints: ``[V, 3]`` world positions of the cameras to keep the objects apart for.
    """
    order = np.argsort([-s.footprint() for s in shapes], kind="stable")
    placed: dict[int, tuple[float, float]] = {}
    vx, vz = viewpoints[:, 0], viewpoints[:, 2]

    def angles(x: float, z: float, fp: float) -> tuple[np.ndarray, np.ndarray]:
        """``[V]`` azimuth of the footprint's centre and its angular radius from every viewpoint."""
        dist = np.hypot(x - vx, z - vz)
        return np.arctan2(x - vx, z - vz), np.arcsin(np.minimum(fp / dist, 1.0))

    for i in order:
        fp = shapes[i].footprint()
        ax, az = extent[0] - fp - EDGE_MARGIN, extent[1] - fp - EDGE_MARGIN
        if ax <= 0 or az <= 0:
            return None
        others = [(angles(p[0], p[1], shapes[j].footprint())) for j, p in placed.items()]
        best, best_score, found = None, -np.inf, 0
        for _ in range(300):
            x, z = rng.uniform(-ax, ax), rng.uniform(-az, az)
            if table_shape == "round" and np.hypot(x, z) > ax:
                continue
            if any(np.hypot(x - p[0], z - p[1]) < fp + shapes[j].footprint() + OBJECT_GAP for j, p in placed.items()):
                continue
            theta, half = angles(x, z, fp)
            score = min(
                (float((np.abs(np.angle(np.exp(1j * (theta - t)))) / (half + h)).min()) for t, h in others),
                default=0.0,
            )
            if score > best_score:
                best, best_score = (float(x), float(z)), score
            found += 1
            if found == PLACE_CHOICES:
                break
        if best is None:
            return None
        placed[int(i)] = best
    return [placed[i] for i in range(len(shapes))]


def _draw_scene(config: OrbitConfig, attempt: int) -> OrbitScene | None:
    rng = np.random.default_rng([config.seed, attempt])
    hx_pos, hx_neg, hz_pos, hz_neg = rng.uniform(*config.wall_distance, size=4)
    items: list[Item] = []

    def add(label: str, category: str, **kw) -> Item:
        it = Item(len(items) + 1, label, category, **kw)
        items.append(it)
        return it

    # --- planes: 4 walls (one texture, one label), the floor; no ceiling
    wall_kind = WALL_KINDS[rng.integers(len(WALL_KINDS))]
    wall_tex = make_texture(
        rng,
        wall_kind.texture,
        jitter_color(rng, wall_kind.color1, 0.02),
        jitter_color(rng, wall_kind.color2, 0.02),
        wall_kind.scale * WALL_TEXTURE_SCALE * rng.uniform(0.85, 1.15),
        direction=(1.0, 0.0, 1.0),  # stripes run vertically on every wall
    )
    for axis, side in ((0, 1.0), (0, -1.0), (2, 1.0), (2, -1.0)):
        add(wall_kind.label, "wall", texture=wall_tex, axis=axis, side=side, specular=0.02)
    floor_kind = FLOOR_KINDS[rng.integers(len(FLOOR_KINDS))]
    floor_tex = make_texture(
        rng,
        floor_kind.texture,
        jitter_color(rng, floor_kind.color1, 0.02),
        jitter_color(rng, floor_kind.color2, 0.02),
        floor_kind.scale * FLOOR_TEXTURE_SCALE,
        direction=(1.0, 0.0, rng.normal(scale=0.05)),
    )
    add(floor_kind.label, "floor", texture=floor_tex, axis=1, side=-1.0, specular=0.06)

    # --- the table
    table_kind = TABLE_KINDS[rng.integers(len(TABLE_KINDS))]
    height = rng.uniform(*config.table_height)
    parts, table_shape, extent = _table_parts(rng, table_kind, config, height)
    add(table_kind.label, "table", parts=parts)

    # --- objects on the table (labels, shapes and textures as in the tabletop preset)
    lo, hi = config.n_objects
    n = int(rng.integers(lo, hi + 1))
    kinds = [OBJECTS[i] for i in rng.choice(len(OBJECTS), size=n, replace=False)]
    if n >= 2 and rng.random() < config.duplicate_prob:
        dup = [k for k in kinds[:-1] if k.duplicable]
        if dup:
            kinds[-1] = dup[0]
    shapes = [_draw_shape(rng, k, tuple(config.object_scale * v for v in SIZE_RADIUS[k.size])) for k in kinds]
    target = np.array([0.0, height, 0.0])
    c2w, radii, elevations, azimuths, rings = _draw_cameras(
        np.random.default_rng([config.seed, attempt, 1]), config, target
    )
    spots = _place_on_table(rng, shapes, table_shape, extent, c2w[config.annotated, :, 3])
    if spots is None:
        return None
    for kind, shape, (x, z) in zip(kinds, shapes, spots):
        yaw = rng.uniform(0.0, 2 * np.pi)
        texture = _object_texture(rng, kind, shape)
        if kind.glossy:
            spec, shin = rng.uniform(0.25, 0.45), rng.uniform(25.0, 60.0)
        else:
            spec, shin = rng.uniform(0.03, 0.12), rng.uniform(5.0, 15.0)
        placed = rc.Placed(shape, np.array([x, height, z]), yaw)
        add(kind.label, "object", parts=[Part(placed, texture, np.zeros(3), specular=spec, shininess=shin)])

    ang = rng.uniform(0.0, 2 * np.pi)
    dist = rng.uniform(1.0, 2.0)
    light = np.array([dist * np.sin(ang), height + rng.uniform(2.3, 3.0), dist * np.cos(ang)])
    focal = config.width / 2.0 / np.tan(np.deg2rad(config.hfov_deg) / 2.0)
    return OrbitScene(
        config=config,
        attempt=attempt,
        half=(float(max(hx_pos, hx_neg)), float(max(hz_pos, hz_neg))),  # unused: ``box`` reads ``walls``
        ceiling=float("inf"),
        items=items,
        c2w=c2w,
        focal=float(focal),
        light=light,
        annotated=config.annotated,
        target=target,
        table_shape=table_shape,
        table_extent=(float(extent[0]), float(extent[1])),
        camera_radii=radii,
        elevations=elevations,
        azimuths=azimuths,
        rings=rings,
        walls=(float(hx_pos), float(hx_neg), float(hz_pos), float(hz_neg)),
    )


# -------------------------------------------------------------------------------------- validity


def orbit_problem(scene: OrbitScene) -> str | None:
    """Why ``scene`` fails the validity check (``None`` if it passes; see the module docstring).

    Every label visible and every object large enough in every annotated view, as for the ``tabletop``
    preset (:func:`ovs3d.scenegen.tabletop.layout_problem`, which reads ``scene.objects``).
    """
    return layout_problem(scene)


def build_orbit(config: OrbitConfig) -> OrbitScene:
    """Draw the scene of ``config``: the first sub-seed whose layout passes the validity check.

    Raises:
        OVS3DError: bad configuration, or no valid layout within ``config.max_layout_tries`` sub-seeds.
    """
    config.validate()
    return first_valid_layout(config, _draw_scene, orbit_problem, "orbit")


def depth_bounds(depth: np.ndarray) -> tuple[float, float]:
    """A view's ``(near, far)`` from its ``[H, W]`` pixel-centre z-depths (as the ``room`` preset)."""
    return NEAR_FACTOR * float(depth.min()), FAR_FACTOR * float(depth.max())


def write_orbit(scene: OrbitScene, folder: Path) -> None:
    """Render every view of ``scene`` and write the SPEC §1 files into ``folder`` (which must be empty)."""
    write_scene(scene, folder, "orbit", depth_bounds)


def make_orbit(config: OrbitConfig, out: Path) -> Path:
    """Generate the ``orbit`` scene of ``config`` into the folder ``out`` (SPEC §1 layout).

    The scene is written into a temporary folder beside ``out`` and renamed into place at the end, so a
    failure leaves no half-written scene.

    Args:
        config: the preset configuration (seed, size, number of views...).
        out: destination folder; it must not exist, be empty, or be a scene written by ``make-scene``.

    Returns:
        ``out``.

    Raises:
        OVS3DError: bad configuration, ``out`` holds something else, or no valid layout was found.
    """
    return generate_scene(config, out, build_orbit, write_orbit, "orbit")
