"""The ``tabletop`` preset: a procedural forward-facing scene in the spirit of the 3D-OVS dataset.

The scene
    4-7 textured primitives (spheres, ellipsoids, boxes, cylinders, cones, capsules, flat tori) of
    varied sizes stand on a table top in front of a back wall. Objects carry long-tail labels drawn
    from a pool of 60 phrases ("a beige mug", "Pikachu", "a red Nintendo Switch joy-con controller",
    "green grape", ...; see :mod:`ovs3d.scenegen.labels`) with colours and procedural textures (checks,
    stripes, value noise, gradients, dots, wood) that match their words, so RGB alone is informative.
    The table and the wall are labelled too ("wooden table", "grey sofa", "lime wall", "brick wall",
    ...). Now and then two instances share a label (two "green grape"s).

World and cameras
    World ``+y`` is up, the table top is the plane ``y = 0``, the wall the plane ``z = WALL_Z``; both
    are unbounded, so every camera ray hits a surface (no holes). ``n_views`` cameras (default 24) sit on
    a jittered ellipse in front of the scene, look at its centre and hence roughly along world ``-z``
    (the LLFF forward-facing convention). Pinhole, ``fx = fy``, principal point at the image centre,
    pixel ``(u, v)`` centred at ``(u + 0.5, v + 0.5)``.

Rendering
    Vectorised numpy ray casting with analytic intersections (:mod:`ovs3d.scenegen.raycast`); Lambert
    plus ambient plus a Blinn-Phong highlight under one point light; shadow rays towards a small disc
    light give soft shadows; RGB is anti-aliased with ``supersample x supersample`` samples per pixel.
    The instance map is exact: the id of the surface hit by the pixel-centre ray.

Validity (SPEC §1)
    In every annotated view every label must be visible and every object must cover at least
    ``min_area_factor * (min(H, W) / 10)^2`` pixels with a bounding box whose short side is at least
    ``min_size_factor`` times the smallest CLIP patch (``min(H, W) / 10`` at the semantic resolution
    ``1 / semantic_downscale``). Otherwise the whole scene is re-drawn with the next sub-seed.

Output
    The SPEC §1 scene folder: ``images/NN.png``; ``poses_bounds.npy`` in the exact LLFF convention
    with the 0.1/99.9 percentiles of each view's pixel z-depths as near/far; ``segmentations/`` for
    the annotated views ``int((i + 0.5) * n_views / n_annotated)``; ``sim/instances/NN.png`` (uint16) for
    every view; ``sim/instances.json`` with ``labels``, ``preset``, ``seed``, ``sim`` and, besides,
    ``generator`` (marks a folder ``make-scene`` may overwrite), ``layout_attempt`` and ``config``.
    Everything is deterministic per configuration: the same config writes bit-identical files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovs3d.io.scene import scaled_size
from ovs3d.scenegen import raycast as rc
from ovs3d.scenegen.labels import OBJECTS, TABLES, WALLS, ObjectKind, SurfaceKind
from ovs3d.scenegen.textures import Texture, albedo, jitter_color, make_texture
from ovs3d.scenegen.writer import check_preset_config, first_valid_layout, generate_scene, write_scene
from ovs3d.utils.config import field_name, rule

logger = logging.getLogger(__name__)

WALL_Z = -1.45
"""World ``z`` of the back wall (the table top is ``y = 0``)."""
LAYOUT_X = (-1.0, 1.0)
"""World ``x`` range object footprints must lie in."""
LAYOUT_Z = (-1.05, 0.35)
"""World ``z`` range object footprints must lie in."""
CAMERA_CENTRE = np.array([0.0, 1.2, 2.45])
"""Centre of the camera path."""
CAMERA_TARGET = np.array([0.0, 0.2, -0.35])
"""Point every camera looks at (before jitter)."""
PATH_RADII = (0.45, 0.22, 0.12)
"""Half extents of the camera path along world x, y and z."""
SIZE_RADIUS = {"S": (0.14, 0.18), "M": (0.18, 0.25), "L": (0.23, 0.31)}
"""Footprint radius range of each size class (world units)."""
CHUNK_RAYS = 1 << 16
"""Rays per rendering chunk (bounds memory; fits the CPU caches reasonably)."""


@dataclass
class TabletopConfig:
    """Configuration of the ``tabletop`` preset (every field can be overridden from the CLI)."""

    seed: int = field(default=0, metadata=rule(ge=0))
    """Random seed: the layout, labels, textures, light and camera path all follow from it."""
    width: int = field(default=320, metadata=rule(ge=16, le=16384))
    """Full-resolution image width in pixels."""
    height: int = field(default=240, metadata=rule(ge=16, le=16384))
    """Full-resolution image height in pixels."""
    n_views: int = field(default=24, metadata=rule(ge=2, le=1000))
    """Number of views along the forward-facing camera path."""
    n_annotated: int = field(default=5, metadata=rule(ge=1, le="n_views"))
    """Number of annotated (test) views with ground-truth masks, spread along the path."""
    supersample: int = field(default=3, metadata=rule(ge=1, le=16))
    """Anti-aliasing samples per pixel side for RGB (instance maps always use the pixel centre)."""
    semantic_downscale: float = field(default=4.0, metadata=rule(ge=1, le=1000))
    """Downscale of the semantic stage; only used by the object-size check."""
    n_objects: tuple[int, int] = field(default=(4, 7), metadata=rule(ge=1, le=12, ordered=True))
    """Inclusive range of the number of objects on the table."""
    duplicate_prob: float = field(default=0.2, metadata=rule(ge=0, le=1))
    """Probability that two objects share a label (e.g. two "green grape"s)."""
    hfov_deg: float = field(default=50.0, metadata=rule(ge=10, le=120))
    """Horizontal field of view in degrees."""
    soft_shadows: bool = True
    """Use a small disc light (soft shadows through the supersamples) instead of a point light."""
    min_size_factor: float = field(default=0.8, metadata=rule(ge=0))
    """Minimum short side of an object's visible bounding box, in units of the smallest CLIP patch."""
    min_area_factor: float = field(default=0.4, metadata=rule(ge=0))
    """Minimum visible pixels of every object and label, in units of ``(min(H, W) / 10)^2``."""
    max_layout_tries: int = field(default=40, metadata=rule(ge=1))
    """Layouts to draw before giving up when none passes the validity check."""
    n_small: tuple[int, int] = field(default=(0, 0), metadata=rule(ge=0, le=8, ordered=True))
    """Hard cases: inclusive range of extra *small* objects (footprint radius ``small_radius``, about 0.3-1 %
    of a 320x240 image each) on top of ``n_objects``."""
    small_radius: tuple[float, float] = field(default=(0.075, 0.12), metadata=rule(ge=0.02, le=0.4, ordered=True))
    """Footprint radius range of the small objects (world units; the ``S`` class is 0.14-0.18)."""
    small_touch_prob: float = field(default=0.0, metadata=rule(ge=0, le=1))
    """Hard cases: probability that a small object stands against a larger one (touching it, camera side)."""
    small_confused: bool = False
    """Hard cases: give small objects labels whose simulated CLIP confuser (SPEC §2, SimCLIP seed 0) is the
    label of a larger surface (wall, table or a larger object), so their CLIP evidence leaks into it."""
    hub_labels: int = field(default=0, metadata=rule(ge=0))
    """Hard cases: this many of the larger surfaces (wall, table, then objects, largest first) get labels that
    are strong simulated CLIP hubs (hubness β in the top quarter of their label pool), which score high
    everywhere."""
    camouflage: int = field(default=0, metadata=rule(ge=0, le=12))
    """Hard cases: this many of the (non-small) objects take the label, and so the colours, of the pool object
    whose main colour is nearest the wall's (then the table's, alternating): an object hard to tell by colour from
    the surface behind or under it, as a pink piggy bank in front of a pink wall."""
    occluded: int = field(default=0, metadata=rule(ge=0, le=12))
    """Hard cases: this many of the (non-small) objects, the smallest first, stand partly hidden behind a larger
    one (on its side away from the cameras, offset sideways, footprints 2 mm apart), as a pink piggy bank half
    behind an eggplant: what each view shows of them changes with the view. The layout check still asks every
    label to be visible in every annotated view."""

    def validate(self, name: Callable[[str], str] = field_name) -> None:
        """Raise :class:`OVS3DError` on values that cannot make a scene (one line).

        Args:
            name: how a setting is named in the message (default: the field; the CLI passes its flags).
        """
        check_preset_config(self, name)


@dataclass
class Surface:
    """A textured, labelled surface of the scene (the wall, the table or an object)."""

    instance_id: int
    """Id in the instance maps (``>= 1``)."""
    label: str
    """Text label."""
    texture: Texture
    """Albedo texture, evaluated in world coordinates (wall, table) or the object's local frame."""
    specular: float
    """Blinn-Phong highlight strength."""
    shininess: float
    """Blinn-Phong exponent."""
    placed: rc.Placed | None = None
    """Geometry of an object (``None`` for the wall and the table)."""


@dataclass
class TabletopScene:
    """A drawn tabletop scene: geometry, materials, light and cameras; renders views on demand."""

    config: TabletopConfig
    """The configuration it was drawn from."""
    attempt: int
    """Sub-seed of the layout that passed the validity check."""
    wall: Surface
    """The back wall (id 1)."""
    table: Surface
    """The table top (id 2)."""
    objects: list[Surface]
    """The objects standing on the table (ids 3, 4, ...)."""
    c2w: np.ndarray
    """``[N, 3, 4]`` float64 OpenCV camera-to-world."""
    focal: float
    """Focal length in full-resolution pixels."""
    light: np.ndarray
    """``[3]`` light centre."""
    light_radius: float
    """Radius of the (horizontal) disc light; 0 for a point light."""
    ambient: float = 0.32
    """Ambient light (fraction of the albedo every point gets, shadowed or not)."""
    diffuse: float = 0.8
    """Strength of the point light's Lambert term."""
    annotated: list[int] = field(default_factory=list)
    """Sorted indices of the annotated views."""

    # ------------------------------------------------------------------ labels
    @property
    def surfaces(self) -> list[Surface]:
        """Wall, table and objects, in id order."""
        return [self.wall, self.table, *self.objects]

    @property
    def labels(self) -> dict[int, str]:
        """Instance id to label."""
        return {s.instance_id: s.label for s in self.surfaces}

    @property
    def classes(self) -> list[str]:
        """The scene's labels, sorted alphabetically (as the 3D-OVS loader sorts them)."""
        return sorted(set(self.labels.values()))

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in full-resolution pixels."""
        cfg = self.config
        return self.focal, self.focal, cfg.width / 2.0, cfg.height / 2.0

    # --------------------------------------------------------------- casting
    def _rays(self, view: int, ss: int, r0: int, r1: int):
        """Directions of the sub-pixel rays of pixel rows ``[r0, r1)``, each ``[rows * ss, W * ss]``."""
        f, _, cx, cy = self.intrinsics
        return rc.pinhole_ray_dirs(self.c2w[view, :, :3], f, cx, cy, self.config.width, ss, r0, r1)

    def _object_rects(self, view: int, ss: int) -> list[tuple[int, int, int, int] | None]:
        """Per object, the sub-pixel index box ``(row0, row1, col0, col1)`` its bounding sphere covers."""
        cfg = self.config
        f, _, cx, cy = self.intrinsics
        rot, origin = self.c2w[view, :, :3], self.c2w[view, :, 3]
        hs, ws = cfg.height * ss, cfg.width * ss
        rects: list[tuple[int, int, int, int] | None] = []
        for obj in self.objects:
            centre, radius = obj.placed.bounding_sphere()
            x, y, z = rot.T @ (centre - origin)
            radius = radius * 1.001 + 1e-9
            if z <= radius * 1.01:
                rects.append((0, hs, 0, ws))
                continue
            bounds = []
            for a, c in ((x, cx), (y, cy)):
                ang = np.arctan2(a, z)
                half = np.arcsin(min(1.0, radius / np.hypot(a, z)))
                lo, hi = c + f * np.tan(ang - half), c + f * np.tan(ang + half)
                bounds.append((int(np.floor(lo * ss - 0.5)) - 1, int(np.ceil(hi * ss - 0.5)) + 2))
            (c0, c1), (r0, r1) = bounds
            r0, r1, c0, c1 = max(r0, 0), min(r1, hs), max(c0, 0), min(c1, ws)
            rects.append((r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None)
        return rects

    def _cast(self, view: int, ss: int, r0: int, r1: int, rects):
        """Primary rays of pixel rows ``[r0, r1)``: ``(t, ids, (dx, dy, dz))``, each ``[rows * ss, W * ss]``."""
        ox, oy, oz = self.c2w[view, :, 3]
        dx, dy, dz = self._rays(view, ss, r0, r1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_wall = (WALL_Z - oz) / dz
            t_table = -oy / dy
            ok_wall = (t_wall > 0) & (oy + t_wall * dy >= 0.0)
            ok_table = (t_table > 0) & (oz + t_table * dz >= WALL_Z)
        t = np.where(ok_wall, t_wall, np.inf)
        ids = np.where(ok_wall, self.wall.instance_id, 0).astype(np.uint16)
        better = ok_table & (t_table < t)
        t = np.where(better, t_table, t)
        ids[better] = self.table.instance_id
        s0, s1 = r0 * ss, r1 * ss
        for obj, rect in zip(self.objects, rects):
            if rect is None:
                continue
            a0, a1 = max(rect[0], s0) - s0, min(rect[1], s1) - s0
            if a0 >= a1:
                continue
            c0, c1 = rect[2], rect[3]
            sub = (slice(a0, a1), slice(c0, c1))
            t_obj = obj.placed.intersect(ox, oy, oz, dx[sub].ravel(), dy[sub].ravel(), dz[sub].ravel(), 0.0)
            t_obj = t_obj.reshape(a1 - a0, c1 - c0)
            hit = t_obj < t[sub]
            t[sub] = np.where(hit, t_obj, t[sub])
            ids[sub][hit] = obj.instance_id
        return t, ids, (dx, dy, dz)

    def _chunks(self, ss: int) -> list[tuple[int, int]]:
        return rc.row_chunks(self.config.width, self.config.height, ss, CHUNK_RAYS)

    def render_ids(self, view: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact instance map and z-depth of view ``view`` (pixel-centre rays).

        Returns:
            ``ids`` ``[H, W]`` uint16 (0 = no surface) and ``depth`` ``[H, W]`` float64 camera z-depth.
        """
        rects = self._object_rects(view, 1)
        ts, ids = [], []
        for r0, r1 in self._chunks(1):
            t, i, _ = self._cast(view, 1, r0, r1, rects)
            ts.append(t)
            ids.append(i)
        return np.concatenate(ids), np.concatenate(ts)

    # --------------------------------------------------------------- shading
    def _light_offsets(self, ss: int) -> np.ndarray:
        """``[ss * ss, 3]`` light sample offsets on the disc light, decorrelated from the sub-pixel grid."""
        k = ss * ss
        if self.light_radius <= 0.0 or k == 1:
            return np.zeros((k, 3))
        i = np.arange(k)
        r = self.light_radius * np.sqrt((i + 0.5) / k)
        phi = i * 2.399963229728653  # golden angle
        offsets = np.stack([r * np.cos(phi), np.zeros(k), r * np.sin(phi)], axis=1)
        order = np.argsort(np.mod(i * 0.6180339887498949, 1.0))
        return offsets[order]

    def _occluded(self, px, py, pz, lx, ly, lz) -> np.ndarray:
        """Whether the segments from points ``p`` to light samples ``l`` (each ``[M]``) hit an object."""
        centre = self.light
        wx, wy, wz = px - centre[0], py - centre[1], pz - centre[2]
        dist = np.sqrt(wx * wx + wy * wy + wz * wz)
        ux, uy, uz = wx / dist, wy / dist, wz / dist
        occ = np.zeros(px.shape, dtype=bool)
        for obj in self.objects:
            c, radius = obj.placed.bounding_sphere()
            radius = radius * 1.001 + self.light_radius + 1e-6
            cv = c - centre
            cd = float(np.linalg.norm(cv))
            if cd <= radius:
                cand = np.nonzero(~occ)[0]
            else:
                cos_a = np.sqrt(1.0 - (radius / cd) ** 2)
                cv = cv / cd
                cone = ux * cv[0] + uy * cv[1] + uz * cv[2] >= cos_a
                cand = np.nonzero(cone & (dist > cd - radius) & ~occ)[0]
            if cand.size == 0:
                continue
            qx, qy, qz = px[cand], py[cand], pz[cand]
            t = obj.placed.intersect(qx, qy, qz, lx[cand] - qx, ly[cand] - qy, lz[cand] - qz, 1e-9)
            occ[cand] = t < 1.0
        return occ

    def _surface_frames(self, ids, px, py, pz):
        """Normals ``([M],) * 3``, albedo ``[M, 3]``, specular and shininess ``[M]`` at hit points."""
        m = ids.shape[0]
        nx, ny, nz = np.zeros(m), np.zeros(m), np.zeros(m)
        rgb = np.zeros((m, 3))
        ks, shin = np.zeros(m), np.ones(m)
        for s in self.surfaces:
            sel = np.nonzero(ids == s.instance_id)[0]
            if sel.size == 0:
                continue
            x, y, z = px[sel], py[sel], pz[sel]
            if s.placed is None:
                # snap to the exact plane: rounding noise must not flip floor() in the textures
                if s is self.wall:
                    nz[sel] = 1.0
                    z = WALL_Z
                else:
                    ny[sel] = 1.0
                    y = 0.0
                rgb[sel] = albedo(s.texture, x, y, z)
            else:
                a, b, c = s.placed.normal(x, y, z)
                nx[sel], ny[sel], nz[sel] = a, b, c
                rgb[sel] = albedo(s.texture, *s.placed.to_local(x, y, z))
            ks[sel] = s.specular
            shin[sel] = s.shininess
        return (nx, ny, nz), rgb, ks, shin

    def render_rgb(self, view: int) -> np.ndarray:
        """Anti-aliased RGB of view ``view``: ``[H, W, 3]`` uint8."""
        cfg = self.config
        ss = cfg.supersample
        rects = self._object_rects(view, ss)
        origin = self.c2w[view, :, 3]
        offsets = self._light_offsets(ss)
        out = np.zeros((cfg.height, cfg.width, 3), dtype=np.uint8)
        for r0, r1 in self._chunks(ss):
            t, ids, (dx, dy, dz) = self._cast(view, ss, r0, r1, rects)
            hs, ws = t.shape
            t, ids = t.ravel(), ids.ravel()
            dx, dy, dz = dx.ravel(), dy.ravel(), dz.ravel()
            px, py, pz = origin[0] + t * dx, origin[1] + t * dy, origin[2] + t * dz
            (nx, ny, nz), rgb, ks, shin = self._surface_frames(ids, px, py, pz)
            # light sample of every sub-pixel ray
            k = ((np.arange(hs) % ss)[:, None] * ss + (np.arange(ws) % ss)[None, :]).ravel()
            lx = self.light[0] + offsets[k, 0]
            ly = self.light[1] + offsets[k, 1]
            lz = self.light[2] + offsets[k, 2]
            vx, vy, vz = lx - px, ly - py, lz - pz
            dist = np.sqrt(vx * vx + vy * vy + vz * vz)
            vx, vy, vz = vx / dist, vy / dist, vz / dist
            ndotl = nx * vx + ny * vy + nz * vz
            lit = np.nonzero(ndotl > 0.0)[0]
            vis = np.zeros(t.shape)
            eps = 1e-5
            occ = self._occluded(
                px[lit] + eps * nx[lit],
                py[lit] + eps * ny[lit],
                pz[lit] + eps * nz[lit],
                lx[lit],
                ly[lit],
                lz[lit],
            )
            vis[lit] = np.where(occ, 0.0, 1.0)
            # Blinn-Phong half vector with the direction towards the camera
            dn = np.sqrt(dx * dx + dy * dy + dz * dz)
            hx, hy, hz = vx - dx / dn, vy - dy / dn, vz - dz / dn
            hn = np.sqrt(hx * hx + hy * hy + hz * hz)
            ndoth = np.maximum(nx * hx + ny * hy + nz * hz, 0.0) / np.maximum(hn, 1e-12)
            spec = ks * ndoth**shin * vis
            light = self.ambient + self.diffuse * np.maximum(ndotl, 0.0) * vis
            color = rgb * light[:, None] + spec[:, None] * np.array([1.0, 0.97, 0.92])[None, :]
            color = color.reshape(r1 - r0, ss, cfg.width, ss, 3).mean(axis=(1, 3))
            out[r0:r1] = np.round(np.clip(color, 0.0, 1.0) * 255.0).astype(np.uint8)
        return out


# ---------------------------------------------------------------------- drawing


def annotated_views(n_views: int, n_annotated: int) -> list[int]:
    """Indices of ``n_annotated`` views spread evenly along a path of ``n_views`` (never only the ends)."""
    return sorted({int((i + 0.5) * n_views / n_annotated) for i in range(n_annotated)})


def look_at(position: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV camera-to-world ``[3, 4]`` at ``position`` looking at ``target`` with world ``up`` upwards."""
    fwd = target - position
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right = right / np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd, position], axis=1)


def _draw_cameras(rng: np.random.Generator, n_views: int) -> np.ndarray:
    phase = rng.random() * 2 * np.pi
    c2w = []
    for i in range(n_views):
        theta = phase + 2 * np.pi * i / n_views
        offset = np.array(
            [
                PATH_RADII[0] * np.cos(theta),
                PATH_RADII[1] * np.sin(theta),
                PATH_RADII[2] * np.sin(2 * theta),
            ]
        )
        position = CAMERA_CENTRE + offset + rng.normal(scale=0.02, size=3)
        target = CAMERA_TARGET + rng.normal(scale=0.03, size=3)
        c2w.append(look_at(position, target))
    return np.stack(c2w)


JITTER = 0.04
"""Default std of the colour jitter of objects (:func:`~ovs3d.scenegen.textures.jitter_color`)."""


def _draw_shape(rng: np.random.Generator, kind: ObjectKind, radius: tuple[float, float] | None = None) -> rc.Shape:
    shape = kind.shapes[rng.integers(len(kind.shapes))]
    lo, hi = radius or SIZE_RADIUS["M" if shape == "torus" and kind.size == "S" else kind.size]
    r = rng.uniform(lo, hi)
    u = rng.uniform
    if shape == "sphere":
        return rc.Sphere(r, 0.92 * r)
    if shape == "ellipsoid":
        axes = (r * u(0.85, 1.0), r * u(0.65, 1.3), r * u(0.6, 1.0))
        return rc.Ellipsoid(axes, 0.92 * axes[1])
    if shape == "box":
        return rc.Box((r * u(0.6, 0.8), r * u(0.45, 1.3), r * u(0.45, 0.75)))
    if shape == "cylinder":
        return rc.Cylinder(r * u(0.75, 1.0), r * u(1.3, 3.0))
    if shape == "cone":
        return rc.Cone(r, r * u(2.0, 3.4))
    if shape == "capsule":
        radius = r * u(0.6, 0.85)
        return rc.Capsule(radius, 2 * radius + r * u(0.6, 2.2))
    if shape == "torus":
        major = r * u(0.6, 0.68)
        return rc.Torus(major, r - major, 0.95 * (r - major))
    raise ValueError(f"unknown shape {shape!r}")


def _object_texture(rng: np.random.Generator, kind: ObjectKind, shape: rc.Shape) -> Texture:
    tex = kind.textures[rng.integers(len(kind.textures))]
    r, top = shape.footprint(), shape.top()
    scale = {
        "checker": r * rng.uniform(0.35, 0.55),
        "stripes": max(top, r) * rng.uniform(0.18, 0.32),
        "noise": r * rng.uniform(0.12, 0.25),
        "dots": r * rng.uniform(0.3, 0.45),
        "wood": r * rng.uniform(0.12, 0.2),
    }.get(tex, r * 0.3)
    c1, c2 = jitter_color(rng, kind.color1, JITTER), jitter_color(rng, kind.color2, JITTER)
    return make_texture(rng, tex, c1, c2, scale, height=top)


def _surface_texture(rng: np.random.Generator, kind: SurfaceKind, wall: bool) -> Texture:
    if wall:
        direction = (1.0, 0.0, 0.0)  # vertical stripes / grain
    else:
        direction = (rng.normal(scale=0.15), 0.0, 1.0)  # grain along x
    return make_texture(
        rng,
        kind.texture,
        jitter_color(rng, kind.color1, 0.02),
        jitter_color(rng, kind.color2, 0.02),
        kind.scale * rng.uniform(0.85, 1.15),
        direction=direction,
    )


def _place(
    rng: np.random.Generator,
    shapes: list[rc.Shape],
    gap: float = 0.07,
    choices: int = 6,
    touch: list[bool] | None = None,
    behind: list[bool] | None = None,
) -> list[np.ndarray] | None:
    """Non-overlapping footprint centres ``[x, 0, z]`` for ``shapes`` (largest first), or ``None``.

    Each object takes, of ``choices`` free random spots, the one that overlaps least with the objects
    already placed as seen from the centre of the camera path (fewer fully hidden objects; partial
    occlusions still happen). An object with ``touch[i]`` instead stands against a larger object already
    placed, on the side facing the cameras (footprints 2 mm apart); one with ``behind[i]`` stands against a
    larger one on its far side, 0.5-1.1 rad off the line to the cameras, so that it is partly hidden.
    """
    order = np.argsort([-s.footprint() for s in shapes], kind="stable")
    placed: dict[int, np.ndarray] = {}

    def free(x: float, z: float, fp: float, g: float) -> bool:
        inside = LAYOUT_X[0] + fp <= x <= LAYOUT_X[1] - fp and LAYOUT_Z[0] + fp <= z <= LAYOUT_Z[1] - fp
        return inside and all(
            np.hypot(x - p[0], z - p[2]) >= fp + shapes[j].footprint() + g - 1e-9 for j, p in placed.items()
        )

    def against(fp: float, far: bool = False) -> np.ndarray | None:
        hosts = [j for j in placed if shapes[j].footprint() > fp]
        for _ in range(100):
            if not hosts:
                return None
            j = hosts[int(rng.integers(len(hosts)))]
            if far:  # behind the host, off the line of sight by 0.5-1.1 rad to either side: partly hidden
                ang = np.pi + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
            else:
                ang = rng.uniform(-1.0, 1.0)  # radians from the host's camera-facing side (+z)
            d = shapes[j].footprint() + fp + 0.002
            x, z = placed[j][0] + d * np.sin(ang), placed[j][2] + d * np.cos(ang)
            if free(x, z, fp, 0.002):
                return np.array([x, 0.0, z])
        return None

    def angles(x: float, z: float, fp: float) -> tuple[float, float]:
        dz = CAMERA_CENTRE[2] - z
        return float(np.arctan2(x - CAMERA_CENTRE[0], dz)), fp / float(np.hypot(x - CAMERA_CENTRE[0], dz))

    for i in order:
        fp = shapes[i].footprint()
        far = behind is not None and bool(behind[i])
        if far or (touch is not None and touch[i]):
            spot = against(fp, far)
            if spot is None:
                return None
            placed[int(i)] = spot
            continue
        best, best_score, found = None, -np.inf, 0
        for _ in range(300):
            x = rng.uniform(LAYOUT_X[0] + fp, LAYOUT_X[1] - fp)
            z = rng.uniform(LAYOUT_Z[0] + fp, LAYOUT_Z[1] - fp)
            ok = all(np.hypot(x - p[0], z - p[2]) >= fp + shapes[j].footprint() + gap for j, p in placed.items())
            if not ok:
                continue
            theta, half = angles(x, z, fp)
            score = min(
                (
                    abs(theta - a) / (half + h)
                    for a, h in (angles(p[0], p[2], shapes[j].footprint()) for j, p in placed.items())
                ),
                default=0.0,
            )
            if score > best_score:
                best, best_score = np.array([x, 0.0, z]), score
            found += 1
            if found == choices:
                break
        if best is None:
            return None
        placed[int(i)] = best
    return [placed[i] for i in range(len(shapes))]


HUB_QUANTILE = 0.75
"""``hub_labels`` draws labels whose SimCLIP hubness is in the top quarter of their pool."""


def hub_kinds(pool):
    """The kinds of ``pool`` whose SimCLIP hubness β (SPEC §2, seed 0) is in the pool's top quarter."""
    from ovs3d.foundation.sim import clip_hubness

    betas = np.array([clip_hubness(k.label) for k in pool])
    return [k for k, b in zip(pool, betas) if b >= np.quantile(betas, HUB_QUANTILE)]


def _draw_small_kinds(
    rng: np.random.Generator, config: TabletopConfig, kinds: list[ObjectKind], surfaces: list[str]
) -> list[ObjectKind] | None:
    """Kinds of the small objects (labels not yet in the scene); with ``small_confused`` only label sets in
    which every small label's SimCLIP confuser is a larger surface's label (``None`` if none is found)."""
    from ovs3d.foundation.sim import clip_confuser

    lo, hi = config.n_small
    n = int(rng.integers(lo, hi + 1))
    taken = {k.label for k in kinds}
    pool = [k for k in OBJECTS if k.label not in taken]
    if n > len(pool):
        return None
    for _ in range(200):
        small = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
        if not config.small_confused:
            return small
        larger = taken | set(surfaces)
        labels = sorted(larger | {k.label for k in small})
        if all(clip_confuser(k.label, labels) in larger for k in small):
            return small
    return None


def _with_hub_labels(rng, n: int, wall_kind, table_kind, kinds: list[ObjectKind], shapes: list[rc.Shape]):
    """Swap the labels of the ``n`` largest surfaces (wall, table, then objects by footprint) for strong
    SimCLIP hubs of the same pool (:func:`hub_kinds`), keeping the object shapes (colours follow the label)."""

    def hub(pool, exclude):
        cands = [k for k in hub_kinds(pool) if k.label not in exclude]
        return cands[int(rng.integers(len(cands)))] if cands else None

    kinds = list(kinds)
    used = {k.label for k in kinds}
    if n >= 1:
        wall_kind = hub(WALLS, ()) or wall_kind
    if n >= 2:
        table_kind = hub(TABLES, ()) or table_kind
    for i in np.argsort([-s.footprint() for s in shapes], kind="stable")[: max(0, n - 2)]:
        new = hub(OBJECTS, used)
        if new is not None:
            used.discard(kinds[i].label)
            used.add(new.label)
            kinds[i] = new
    return wall_kind, table_kind, kinds


def _with_camouflage(n: int, wall_kind, table_kind, kinds: list[ObjectKind]) -> list[ObjectKind]:
    """Swap the labels of the first ``n`` objects for the unused pool objects whose main colour is nearest
    (in RGB) the wall's, the table's, the wall's, ... main colour (draws no random numbers)."""
    kinds = list(kinds)
    used = {k.label for k in kinds}
    for i in range(min(n, len(kinds))):
        back = np.asarray((wall_kind, table_kind)[i % 2].color1)
        cands = [k for k in OBJECTS if k.label not in used]
        if not cands:
            break
        best = min(cands, key=lambda k: float(np.sum((np.asarray(k.color1) - back) ** 2)))
        used.discard(kinds[i].label)
        used.add(best.label)
        kinds[i] = best
    return kinds


def _draw_scene(config: TabletopConfig, attempt: int) -> TabletopScene | None:
    rng = np.random.default_rng([config.seed, attempt])
    wall_kind = WALLS[rng.integers(len(WALLS))]
    table_kind = TABLES[rng.integers(len(TABLES))]
    lo, hi = config.n_objects
    n = int(rng.integers(lo, hi + 1))
    kinds = [OBJECTS[i] for i in rng.choice(len(OBJECTS), size=n, replace=False)]
    if n >= 2 and rng.random() < config.duplicate_prob:
        dup = [k for k in kinds[:-1] if k.duplicable]
        if dup:
            kinds[-1] = dup[0]
    shapes = [_draw_shape(rng, k) for k in kinds]
    # Hard cases; without them nothing more is drawn, so default scenes stay bit-identical.
    if config.hub_labels > 0:
        wall_kind, table_kind, kinds = _with_hub_labels(rng, config.hub_labels, wall_kind, table_kind, kinds, shapes)
    if config.camouflage > 0:
        kinds = _with_camouflage(config.camouflage, wall_kind, table_kind, kinds)
    n_regular = len(kinds)  # before any small objects join
    touch = None
    if config.n_small[1] > 0:
        small = _draw_small_kinds(rng, config, kinds, [wall_kind.label, table_kind.label])
        if small is None:
            return None
        touch = [False] * len(kinds) + [bool(rng.random() < config.small_touch_prob) for _ in small]
        shapes += [_draw_shape(rng, k, config.small_radius) for k in small]
        kinds += small
    behind = None
    if config.occluded > 0:  # the smallest regular objects, each behind a larger one
        foot = [shapes[i].footprint() for i in range(n_regular)]
        hidden = set(sorted(range(n_regular), key=foot.__getitem__)[: min(config.occluded, n_regular - 1)])
        behind = [i in hidden for i in range(len(kinds))]
    positions = _place(rng, shapes, touch=touch, behind=behind)
    if positions is None:
        return None
    wall = Surface(1, wall_kind.label, _surface_texture(rng, wall_kind, True), 0.02, 8.0)
    table = Surface(2, table_kind.label, _surface_texture(rng, table_kind, False), rng.uniform(0.03, 0.12), 20.0)
    objects = []
    for i, (kind, shape, pos) in enumerate(zip(kinds, shapes, positions)):
        yaw = rng.uniform(0.0, 2 * np.pi)
        texture = _object_texture(rng, kind, shape)
        if kind.glossy:
            spec, shin = rng.uniform(0.25, 0.45), rng.uniform(25.0, 60.0)
        else:
            spec, shin = rng.uniform(0.03, 0.12), rng.uniform(5.0, 15.0)
        objects.append(Surface(3 + i, kind.label, texture, spec, shin, rc.Placed(shape, pos, yaw)))
    side = 1.0 if rng.random() < 0.5 else -1.0
    light = np.array([side * rng.uniform(0.8, 1.6), rng.uniform(2.3, 3.0), rng.uniform(1.0, 2.2)])
    c2w = _draw_cameras(np.random.default_rng([config.seed, attempt, 1]), config.n_views)
    focal = config.width / 2.0 / np.tan(np.deg2rad(config.hfov_deg) / 2.0)
    return TabletopScene(
        config=config,
        attempt=attempt,
        wall=wall,
        table=table,
        objects=objects,
        c2w=c2w,
        focal=float(focal),
        light=light,
        light_radius=0.22 if config.soft_shadows else 0.0,
        annotated=annotated_views(config.n_views, config.n_annotated),
    )


def layout_problem(scene: TabletopScene, id_maps: dict[int, np.ndarray] | None = None) -> str | None:
    """Why ``scene`` fails the validity check of SPEC §1 (``None`` if it passes).

    Args:
        scene: the drawn scene.
        id_maps: instance maps of the annotated views, when already rendered.
    """
    cfg = scene.config
    w, h = cfg.width, cfg.height
    sw, sh = scaled_size(w, h, cfg.semantic_downscale)
    min_side = cfg.min_size_factor * min(sw, sh) / 10.0  # at the semantic resolution
    min_area = cfg.min_area_factor * (min(w, h) / 10.0) ** 2  # at full resolution
    by_label: dict[str, list[int]] = {}
    for iid, label in scene.labels.items():
        by_label.setdefault(label, []).append(iid)
    n_ids = max(scene.labels) + 1
    for view in scene.annotated:
        ids = id_maps[view] if id_maps is not None else scene.render_ids(view)[0]
        counts = np.bincount(ids.ravel(), minlength=n_ids)
        if counts[0] > 0:
            return f"view {view} has {counts[0]} pixels without a surface"
        for label, iids in by_label.items():
            if counts[iids].sum() < min_area:
                return f"label {label!r} covers {counts[iids].sum()} px (< {min_area:.0f}) in view {view}"
        for obj in scene.objects:
            if counts[obj.instance_id] < min_area:
                return f"object {obj.instance_id} ({obj.label}) covers {counts[obj.instance_id]} px in view {view}"
            rows = np.nonzero((ids == obj.instance_id).any(axis=1))[0]
            cols = np.nonzero((ids == obj.instance_id).any(axis=0))[0]
            bw = (cols[-1] - cols[0] + 1) * sw / w
            bh = (rows[-1] - rows[0] + 1) * sh / h
            if min(bw, bh) < min_side:
                return (
                    f"object {obj.instance_id} ({obj.label}) is {bw:.1f}x{bh:.1f} px at the semantic "
                    f"resolution in view {view} (< {min_side:.1f})"
                )
    return None


def build_tabletop(config: TabletopConfig) -> TabletopScene:
    """Draw the scene of ``config``: the first sub-seed whose layout passes the validity check.

    Raises:
        OVS3DError: no valid layout within ``config.max_layout_tries`` sub-seeds.
    """
    config.validate()
    return first_valid_layout(config, _draw_scene, layout_problem, "tabletop")


def write_tabletop(scene: TabletopScene, folder: Path) -> None:
    """Render every view of ``scene`` and write the SPEC §1 files into ``folder`` (which must be empty)."""
    write_scene(scene, folder, "tabletop", lambda depth: (np.percentile(depth, 0.1), np.percentile(depth, 99.9)))


def make_tabletop(config: TabletopConfig, out: Path) -> Path:
    """Generate the ``tabletop`` scene of ``config`` into the folder ``out`` (SPEC §1 layout).

    The scene is written into a temporary folder beside ``out`` and renamed into place at the end.

    Args:
        config: the preset configuration (seed, size, number of views...).
        out: destination folder; it must not exist, be empty, or be a scene written by this module.

    Returns:
        ``out``.

    Raises:
        OVS3DError: bad configuration, ``out`` holds something else, or no valid layout was found.
    """
    return generate_scene(config, out, build_tabletop, write_tabletop, "tabletop")
