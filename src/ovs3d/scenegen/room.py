"""The ``room`` preset: a procedural inside-out room in the spirit of the Replica scenes of OV-NeRF.

The scene
    A closed box-shaped room (about 4-5 m x 3.4-4.4 m, 2.5-2.8 m high): a floor, a ceiling and four walls
    that share one label ("white wall", "sage green wall", ...), a rug (rectangular or round), 4-6 pieces
    of furniture standing against the walls (a sofa, a bookshelf, a dining table, a potted plant, a floor
    lamp, ...; several are built from a few primitives, e.g. a table is a top and four legs), wall items
    (a wall clock, window blinds and 1-2 framed pictures) and 2-4 small objects (a vase, a stack of books,
    a table lamp, ...) on the furniture that has a flat top. Every label names exactly one instance except
    the walls (four instances, one label). Textures vary (wood, value noise, large checks, gradients) but
    have no fine stripes: they stay well above the pixel scale at the default resolution, so a radiance
    field can reconstruct them.

World and cameras
    World ``+y`` is up, the floor is ``y = 0`` and the room spans ``[-hx, hx] x [0, H] x [-hz, hz]``.
    ``n_views`` cameras (default 60) stand near the room centre and turn once around (yaw sweeps 360°),
    with smooth position and height jitter (a loop of low-frequency harmonics of the yaw, plus a little
    noise) and a pitch that wanders around a slight downward tilt, as a hand-held capture would. OpenCV
    camera-to-world, pinhole, ``fx = fy``, principal point at the image centre, pixel ``(u, v)`` centred
    at ``(u + 0.5, v + 0.5)``. Poses are written with :func:`ovs3d.scenegen.writer.poses_bounds`, so
    :func:`ovs3d.io.loader.load_scene` detects the scene as bounded (inside-out).

Rendering
    Vectorised numpy ray casting (:mod:`ovs3d.scenegen.raycast`): the room is the exit of the ray from the
    room box, everything else an analytic primitive culled by its bounding sphere. Lambert plus ambient
    plus a weak Blinn-Phong highlight under one point light near the ceiling, with hard shadows cast by
    the furniture and objects; RGB is anti-aliased with ``supersample x supersample`` samples per pixel.
    The instance map is exact: the id of the surface hit by the pixel-centre ray. Every ray hits a
    surface (the room is closed).

Validity
    Unlike the 3D-OVS scenes, a label may be absent from an annotated view (the OV-NeRF protocol skips
    such labels). Instead every label must cover at least ``min_area_factor * (min(H, W) / 10)^2``
    pixels in at least one annotated view and in at least ``min_train_views`` training views, and the
    bounding box of every label in the annotated view where it is largest must have a short side of at
    least ``min_size_factor`` times the smallest CLIP patch (``min(H, W) / 10`` at the semantic
    resolution ``1 / semantic_downscale``). Otherwise the layout is re-drawn with the next sub-seed.

Output
    The SPEC §1 scene folder, as the ``tabletop`` preset writes it: ``images/NN.png``,
    ``poses_bounds.npy`` (near/far per view: 0.9 x the nearest and 1.05 x the farthest pixel-centre
    z-depth), ``segmentations/classes.txt`` and ``segmentations/NN/<label>.png`` for every label in every
    annotated view (all black where the label is absent), ``sim/instances/NN.png`` (uint16) for every
    view and ``sim/instances.json`` (``labels``, ``preset``, ``seed``, ``sim``, ``generator``,
    ``layout_attempt``, ``config``). The annotated views are every ``annotate_every``-th view (the middle
    of each block of ``annotate_every``), or ``n_annotated`` views spread evenly when that is set. The
    folder is written atomically, and the same configuration writes bit-identical files.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovs3d.errors import OVS3DError
from ovs3d.io.scene import scaled_size
from ovs3d.scenegen import raycast as rc
from ovs3d.scenegen.labels import SurfaceKind
from ovs3d.scenegen.tabletop import annotated_views, look_at
from ovs3d.scenegen.textures import Texture, albedo, jitter_color, make_texture
from ovs3d.scenegen.writer import check_preset_config, first_valid_layout, generate_scene, write_scene
from ovs3d.utils.config import field_name, rule

logger = logging.getLogger(__name__)

ROOM_HALF_X = (2.0, 2.6)
"""Range of the room's half extent along world x (metres)."""
ROOM_HALF_Z = (1.7, 2.2)
"""Range of the room's half extent along world z."""
ROOM_HEIGHT = (2.5, 2.8)
"""Range of the ceiling height."""
CHUNK_RAYS = 1 << 16
"""Rays per rendering chunk (bounds memory)."""
NEAR_FACTOR = 0.9
"""A view's near bound is this fraction of its nearest pixel-centre z-depth."""
FAR_FACTOR = 1.05
"""A view's far bound is this multiple of its farthest pixel-centre z-depth (pixel corners see a little
farther than pixel centres)."""
WALL_GAP = 0.02
"""Gap between furniture and the wall behind it."""
PLANE_CATEGORIES = ("wall", "floor", "ceiling")
"""Categories of the room's planes (the rest are made of primitives)."""


# ------------------------------------------------------------------------------------------- pools

SLATS = "slats"
"""Texture kind of the window blinds (evaluated by :func:`room_albedo`): soft horizontal slats."""


def slats_texture(rng: np.random.Generator, color1, color2, period: float) -> Texture:
    """A :data:`SLATS` texture: horizontal slats ``period`` apart, ``color1`` on the slats, ``color2`` in
    the gaps (draws from ``rng`` what a ``solid`` texture draws)."""
    return dataclasses.replace(make_texture(rng, "solid", color1, color2, period), kind=SLATS)


def room_albedo(tex: Texture, x, y, z) -> np.ndarray:
    """:func:`ovs3d.scenegen.textures.albedo`, plus the room's :data:`SLATS` kind.

    Slats shade smoothly (a raised cosine of the height, no hard edges) so that a radiance field at a
    quarter of a slat per pixel still reconstructs them.

    Args:
        tex: the texture.
        x, y, z: ``[M]`` float64 coordinates in the texture's frame (up to two may be floats).

    Returns:
        ``[M, 3]`` float64 display RGB in [0, 1].
    """
    if tex.kind != SLATS:
        return albedo(tex, x, y, z)
    v = np.asarray(y, dtype=np.float64) / tex.scale + tex.phase
    m = (0.5 - 0.5 * np.cos(2.0 * np.pi * v)) ** 2  # wide slats, narrow dark gaps
    m = np.broadcast_to(m, np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)))
    return np.clip(tex.color1[None, :] + m[:, None] * (tex.color2 - tex.color1)[None, :], 0.0, 1.0)


@dataclass(frozen=True)
class FurnitureKind:
    """A piece of furniture of the pool and how it is built."""

    label: str
    """The text label (prompt)."""
    build: str
    """Builder: ``box``, ``table``, ``sofa``, ``plant`` or ``lamp``."""
    width: tuple[float, float]
    """Range of the width along the wall (metres; for ``plant`` and ``lamp`` the diameter)."""
    depth: tuple[float, float]
    """Range of the depth away from the wall."""
    height: tuple[float, float]
    """Range of the height."""
    color1: tuple[float, float, float]
    """Main colour (display RGB in [0, 1])."""
    color2: tuple[float, float, float]
    """Secondary colour."""
    texture: str
    """Texture kind of the main material (see :mod:`ovs3d.scenegen.textures`)."""
    scale: float
    """Feature size of the texture (metres)."""
    holder: bool = False
    """Whether small objects may stand on its flat top."""


@dataclass(frozen=True)
class SmallKind:
    """A small object that stands on a piece of furniture."""

    label: str
    """The text label (prompt)."""
    build: str
    """Builder: ``vase``, ``books``, ``lamp``, ``succulent``, ``teapot``, ``bowl``, ``box``, ``globe``."""
    radius: tuple[float, float]
    """Range of the footprint radius (metres)."""
    color1: tuple[float, float, float]
    """Main colour."""
    color2: tuple[float, float, float]
    """Secondary colour."""
    texture: str
    """Texture kind of the main material."""


@dataclass(frozen=True)
class PictureKind:
    """A framed picture on a wall."""

    label: str
    """The text label (prompt)."""
    color1: tuple[float, float, float]
    """Main canvas colour."""
    color2: tuple[float, float, float]
    """Secondary canvas colour."""
    texture: str
    """Canvas texture kind (``gradient`` runs bottom to top)."""
    scale: float
    """Feature size of the canvas texture."""
    frame: tuple[float, float, float]
    """Colour of the frame."""


WALL_KINDS: tuple[SurfaceKind, ...] = (
    SurfaceKind("white wall", (0.9, 0.9, 0.88), (0.83, 0.83, 0.81), "noise", 0.8),
    SurfaceKind("beige wall", (0.86, 0.79, 0.67), (0.79, 0.72, 0.6), "noise", 0.8),
    SurfaceKind("light blue wall", (0.68, 0.78, 0.88), (0.61, 0.71, 0.82), "noise", 0.8),
    SurfaceKind("sage green wall", (0.66, 0.74, 0.6), (0.59, 0.67, 0.53), "noise", 0.8),
    SurfaceKind("pale yellow wall", (0.93, 0.88, 0.64), (0.87, 0.81, 0.57), "noise", 0.8),
    SurfaceKind("light grey wall", (0.77, 0.77, 0.77), (0.7, 0.7, 0.7), "noise", 0.8),
)
"""Walls (all four share the drawn label)."""

FLOOR_KINDS: tuple[SurfaceKind, ...] = (
    SurfaceKind("oak floor", (0.72, 0.53, 0.33), (0.6, 0.42, 0.24), "wood", 0.35),
    SurfaceKind("dark wood floor", (0.42, 0.28, 0.17), (0.31, 0.2, 0.12), "wood", 0.35),
    SurfaceKind("grey tile floor", (0.62, 0.62, 0.64), (0.52, 0.52, 0.54), "checker", 0.5),
    SurfaceKind("beige carpet floor", (0.78, 0.7, 0.56), (0.7, 0.62, 0.48), "noise", 0.3),
)
"""Floors."""

CEILING_KINDS: tuple[SurfaceKind, ...] = (
    SurfaceKind("white ceiling", (0.95, 0.95, 0.93), (0.9, 0.9, 0.88), "solid", 1.0),
    SurfaceKind("cream ceiling", (0.94, 0.91, 0.83), (0.89, 0.86, 0.78), "solid", 1.0),
)
"""Ceilings."""

RUG_KINDS: tuple[SurfaceKind, ...] = (
    SurfaceKind("a red persian rug", (0.6, 0.14, 0.12), (0.85, 0.6, 0.35), "noise", 0.25),
    SurfaceKind("a blue rug", (0.2, 0.28, 0.58), (0.33, 0.43, 0.72), "noise", 0.3),
    SurfaceKind("a grey shaggy rug", (0.5, 0.5, 0.52), (0.4, 0.4, 0.42), "noise", 0.12),
    SurfaceKind("a checkered rug", (0.86, 0.83, 0.76), (0.25, 0.25, 0.28), "checker", 0.3),
    SurfaceKind("a round jute rug", (0.74, 0.62, 0.42), (0.62, 0.5, 0.32), "noise", 0.15),
)
"""Rugs (a label starting with ``a round`` makes a round rug)."""

FURNITURE_KINDS: tuple[FurnitureKind, ...] = (
    FurnitureKind(
        "a grey sofa", "sofa", (1.6, 2.0), (0.8, 0.92), (0.8, 0.9), (0.5, 0.5, 0.52), (0.42, 0.42, 0.44), "noise", 0.15
    ),
    FurnitureKind(
        "a blue armchair",
        "sofa",
        (0.8, 0.95),
        (0.75, 0.85),
        (0.82, 0.9),
        (0.22, 0.32, 0.6),
        (0.18, 0.26, 0.5),
        "noise",
        0.1,
    ),
    FurnitureKind(
        "a wooden bookshelf",
        "box",
        (0.8, 1.1),
        (0.3, 0.38),
        (1.7, 1.95),
        (0.55, 0.38, 0.22),
        (0.42, 0.28, 0.15),
        "wood",
        0.2,
    ),
    FurnitureKind(
        "a white cabinet",
        "box",
        (0.7, 1.0),
        (0.4, 0.5),
        (0.8, 0.95),
        (0.92, 0.92, 0.9),
        (0.85, 0.85, 0.83),
        "solid",
        0.5,
        True,
    ),
    FurnitureKind(
        "a wooden dresser",
        "box",
        (1.0, 1.3),
        (0.45, 0.55),
        (0.8, 0.95),
        (0.62, 0.42, 0.25),
        (0.5, 0.32, 0.18),
        "wood",
        0.2,
        True,
    ),
    FurnitureKind(
        "a black TV stand",
        "box",
        (1.2, 1.6),
        (0.4, 0.5),
        (0.45, 0.55),
        (0.13, 0.13, 0.14),
        (0.2, 0.2, 0.22),
        "solid",
        0.5,
        True,
    ),
    FurnitureKind(
        "a wooden dining table",
        "table",
        (1.2, 1.5),
        (0.75, 0.9),
        (0.74, 0.78),
        (0.74, 0.56, 0.36),
        (0.62, 0.45, 0.27),
        "wood",
        0.25,
        True,
    ),
    FurnitureKind(
        "a white desk",
        "table",
        (1.0, 1.3),
        (0.55, 0.7),
        (0.72, 0.76),
        (0.88, 0.88, 0.86),
        (0.8, 0.8, 0.78),
        "noise",
        0.4,
        True,
    ),
    FurnitureKind(
        "a wooden side table",
        "table",
        (0.5, 0.6),
        (0.5, 0.6),
        (0.55, 0.62),
        (0.5, 0.33, 0.19),
        (0.4, 0.25, 0.13),
        "wood",
        0.15,
        True,
    ),
    FurnitureKind(
        "a potted plant",
        "plant",
        (0.6, 0.8),
        (0.6, 0.8),
        (1.0, 1.3),
        (0.3, 0.55, 0.25),
        (0.2, 0.42, 0.16),
        "noise",
        0.12,
    ),
    FurnitureKind(
        "a floor lamp",
        "lamp",
        (0.4, 0.48),
        (0.4, 0.48),
        (1.5, 1.7),
        (0.95, 0.9, 0.78),
        (0.88, 0.82, 0.68),
        "solid",
        0.5,
    ),
)
"""Furniture (stands against a wall)."""

SMALL_KINDS: tuple[SmallKind, ...] = (
    SmallKind("a blue vase", "vase", (0.08, 0.1), (0.15, 0.3, 0.7), (0.35, 0.55, 0.9), "gradient"),
    SmallKind("a stack of books", "books", (0.13, 0.16), (0.75, 0.2, 0.15), (0.2, 0.35, 0.62), "gradient"),
    SmallKind("a table lamp", "lamp", (0.11, 0.14), (0.97, 0.93, 0.8), (0.2, 0.2, 0.2), "solid"),
    SmallKind("a potted succulent", "succulent", (0.08, 0.1), (0.35, 0.6, 0.35), (0.75, 0.42, 0.28), "noise"),
    SmallKind("a red teapot", "teapot", (0.1, 0.12), (0.78, 0.12, 0.1), (0.85, 0.25, 0.2), "solid"),
    SmallKind("a fruit bowl", "bowl", (0.12, 0.15), (0.93, 0.92, 0.88), (0.98, 0.55, 0.08), "solid"),
    SmallKind("a wooden jewelry box", "box", (0.11, 0.14), (0.55, 0.35, 0.2), (0.42, 0.26, 0.14), "wood"),
    SmallKind("a desk globe", "globe", (0.1, 0.13), (0.2, 0.4, 0.75), (0.35, 0.62, 0.3), "noise"),
)
"""Small objects (stand on furniture with a flat top)."""

PICTURE_KINDS: tuple[PictureKind, ...] = (
    PictureKind("a landscape painting", (0.3, 0.5, 0.25), (0.55, 0.72, 0.92), "gradient", 1.0, (0.35, 0.24, 0.14)),
    PictureKind("an abstract painting", (0.85, 0.32, 0.2), (0.2, 0.35, 0.75), "noise", 0.15, (0.1, 0.1, 0.1)),
    PictureKind("a framed poster", (0.96, 0.76, 0.22), (0.15, 0.15, 0.2), "checker", 0.15, (0.9, 0.9, 0.9)),
    PictureKind("a seascape painting", (0.12, 0.3, 0.5), (0.8, 0.88, 0.95), "gradient", 1.0, (0.75, 0.62, 0.35)),
    PictureKind("a framed family photo", (0.62, 0.5, 0.42), (0.3, 0.25, 0.22), "noise", 0.12, (0.08, 0.08, 0.08)),
)
"""Framed pictures."""

CLOCK_LABEL = "a wall clock"
"""Label of the wall clock (every room has one)."""
BLINDS_KINDS: tuple[SurfaceKind, ...] = (
    SurfaceKind("white window blinds", (0.95, 0.95, 0.92), (0.8, 0.8, 0.78), SLATS, 0.2),
    SurfaceKind("bamboo window blinds", (0.8, 0.66, 0.44), (0.66, 0.52, 0.33), SLATS, 0.2),
)
"""Window blinds (every room has one)."""


def _check_pools() -> None:
    labels = [k.label for k in (*WALL_KINDS, *FLOOR_KINDS, *CEILING_KINDS, *RUG_KINDS, *BLINDS_KINDS)]
    labels += [k.label for k in (*FURNITURE_KINDS, *SMALL_KINDS, *PICTURE_KINDS)] + [CLOCK_LABEL]
    if len(set(labels)) != len(labels):
        raise RuntimeError("duplicate label in the room pools")
    for label in labels:
        if "/" in label or label.startswith(".") or label != label.strip():
            raise RuntimeError(f"label {label!r} cannot be a file name")


_check_pools()


# ------------------------------------------------------------------------------------------ config


@dataclass
class RoomConfig:
    """Configuration of the ``room`` preset (every field can be overridden from the CLI)."""

    seed: int = field(default=0, metadata=rule(ge=0))
    """Random seed: room size, labels, layout, textures, light and camera path all follow from it."""
    width: int = field(default=320, metadata=rule(ge=16, le=16384))
    """Full-resolution image width in pixels (as ``tabletop``: the semantic stage then works at 80x60)."""
    height: int = field(default=240, metadata=rule(ge=16, le=16384))
    """Full-resolution image height in pixels."""
    n_views: int = field(default=60, metadata=rule(ge=4, le=1000))
    """Number of views; the camera turns once around over them."""
    annotate_every: int = field(default=10, metadata=rule(ge=1, le="n_views"))
    """Every ``annotate_every``-th view is annotated, the middle one of each block (``n_views //
    annotate_every`` views spread evenly when ``annotate_every`` does not divide ``n_views``)."""
    n_annotated: int | None = field(default=None, metadata=rule(ge=1, le="n_views"))
    """If set, this many annotated views spread evenly instead of every ``annotate_every``-th."""
    supersample: int = field(default=2, metadata=rule(ge=1, le=16))
    """Anti-aliasing samples per pixel side for RGB (instance maps always use the pixel centre)."""
    semantic_downscale: float = field(default=4.0, metadata=rule(ge=1, le=1000))
    """Downscale of the semantic stage; only used by the object-size check."""
    n_objects: tuple[int, int] = field(default=(4, 6), metadata=rule(ge=0, le=len(FURNITURE_KINDS), ordered=True))
    """Inclusive range of the number of pieces of furniture against the walls."""
    n_small: tuple[int, int] = field(default=(2, 4), metadata=rule(ge=0, le=len(SMALL_KINDS), ordered=True))
    """Inclusive range of the number of small objects on the furniture."""
    n_pictures: tuple[int, int] = field(default=(1, 2), metadata=rule(ge=0, le=len(PICTURE_KINDS), ordered=True))
    """Inclusive range of the number of framed pictures (besides the clock and the blinds)."""
    hfov_deg: float = field(default=80.0, metadata=rule(ge=30, le=120))
    """Horizontal field of view in degrees."""
    camera_height: float = field(default=1.5, metadata=rule(ge=0.6, le=2.0))
    """Mean height of the cameras above the floor (metres)."""
    height_jitter: float = field(default=0.12, metadata=rule(ge=0, le=0.4))
    """Largest deviation of a camera's height from ``camera_height``."""
    position_jitter: float = field(default=0.3, metadata=rule(ge=0, le=0.5))
    """Largest horizontal distance of a camera from the room centre."""
    pitch_deg: float = field(default=-10.0, metadata=rule(ge=-45, le=45))
    """Mean pitch of the cameras (negative looks down)."""
    pitch_jitter_deg: float = field(default=7.0, metadata=rule(ge=0, le=30))
    """Amplitude of the pitch's slow variation around ``pitch_deg``."""
    min_area_factor: float = field(default=0.4, metadata=rule(ge=0))
    """Minimum visible pixels of a label where it must be visible, in units of ``(min(H, W) / 10)^2``."""
    min_size_factor: float = field(default=0.6, metadata=rule(ge=0))
    """Minimum short side of a label's bounding box in its best annotated view, in smallest CLIP patches."""
    min_train_views: int = field(default=3, metadata=rule(ge=0))
    """Every label must be visible (``min_area_factor``) in at least this many training views."""
    max_layout_tries: int = field(default=40, metadata=rule(ge=1))
    """Layouts to draw before giving up when none passes the validity check."""

    def validate(self, name: Callable[[str], str] = field_name) -> None:
        """Raise :class:`OVS3DError` on values that cannot make a scene (one line).

        Args:
            name: how a setting is named in the message (default: the field; the CLI passes its flags).
        """
        check_preset_config(self, name)
        if len(self.annotated) >= self.n_views:
            raise OVS3DError(
                f"all {self.n_views} views would be annotated; raise {name('annotate_every')} or lower "
                f"{name('n_annotated')} so that some views remain for training"
            )
        if self.n_small[1] > 0 and self.n_objects[1] == 0:
            raise OVS3DError(f"{name('n_small')} > 0 needs furniture to stand on: raise {name('n_objects')}")

    @property
    def annotated(self) -> list[int]:
        """Sorted indices of the annotated views."""
        n = self.n_annotated if self.n_annotated is not None else max(1, self.n_views // self.annotate_every)
        return annotated_views(self.n_views, n)


# ------------------------------------------------------------------------------------------ scene


@dataclass
class WallDisc(rc.Shape):
    """A disc lying against a wall: radius ``radius`` around the local ``z`` axis, ``z`` in ``[0, thickness]``.

    It is a :class:`~ovs3d.scenegen.raycast.Cylinder` with the local ``y`` and ``z`` axes swapped, so the
    flat face looks along local ``+z`` (into the room once placed with the wall's inward yaw).
    """

    radius: float
    thickness: float
    kind = "wall disc"

    def _cyl(self) -> rc.Cylinder:
        return rc.Cylinder(self.radius, self.thickness)

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        return self._cyl().intersect(ox, oz, oy, dx, dz, dy, t_min)

    def normal(self, x, y, z):
        nx, ny, nz = self._cyl().normal(x, z, y)
        return nx, nz, ny

    def bounds(self):
        return np.array([0.0, 0.0, self.thickness / 2]), float(np.hypot(self.radius, self.thickness / 2))

    def footprint(self):
        return self.radius

    def top(self):
        return self.radius


@dataclass
class Part:
    """One primitive of an instance, with its material."""

    placed: rc.Placed
    """The primitive in the world."""
    texture: Texture
    """Albedo texture, evaluated at instance-local coordinates (see ``offset``)."""
    offset: np.ndarray
    """``[3]`` position of the part's local origin in the instance's frame (part-local + offset =
    instance-local, as all parts of an instance share its yaw)."""
    specular: float = 0.05
    """Blinn-Phong highlight strength."""
    shininess: float = 10.0
    """Blinn-Phong exponent."""


@dataclass
class Item:
    """A labelled instance of the room: a plane (wall, floor, ceiling) or a set of primitives."""

    instance_id: int
    """Id in the instance maps (``>= 1``)."""
    label: str
    """Text label."""
    category: str
    """``wall``, ``floor``, ``ceiling``, ``rug``, ``furniture``, ``wall item`` or ``small``."""
    parts: list[Part] = field(default_factory=list)
    """Primitives (empty for the planes)."""
    texture: Texture | None = None
    """Albedo texture of a plane, evaluated at world coordinates."""
    axis: int = -1
    """A plane's normal axis (0 = x, 1 = y, 2 = z)."""
    side: float = 0.0
    """A plane's position: ``+1`` at the room's maximum along ``axis``, ``-1`` at its minimum."""
    specular: float = 0.02
    """A plane's Blinn-Phong highlight strength."""


@dataclass
class Footprint:
    """The floor rectangle of a piece of furniture (world, axis-aligned) and where things may stand on it."""

    x: tuple[float, float]
    """World x range."""
    z: tuple[float, float]
    """World z range."""
    height: float
    """Top height."""
    wall: int
    """Index of the wall it stands against (0: +x, 1: -x, 2: +z, 3: -z)."""
    position: np.ndarray
    """``[3]`` world position of its local origin (base centre)."""
    yaw: float
    """Yaw of its local frame (local ``+z`` faces the room)."""
    top: tuple[float, float] | None = None
    """Half extents ``(x, z)`` of its flat top in the local frame (``None``: nothing stands on it)."""


@dataclass
class RoomScene:
    """A drawn room: geometry, materials, light and cameras; renders views on demand."""

    config: RoomConfig
    """The configuration it was drawn from."""
    attempt: int
    """Sub-seed of the layout that passed the validity check."""
    half: tuple[float, float]
    """Half extents ``(hx, hz)`` of the room along world x and z."""
    ceiling: float
    """Ceiling height ``H``."""
    items: list[Item]
    """Every instance, in id order: walls (+x, -x, +z, -z), floor, ceiling, rug, furniture, wall items,
    small objects."""
    c2w: np.ndarray
    """``[N, 3, 4]`` float64 OpenCV camera-to-world."""
    focal: float
    """Focal length in full-resolution pixels."""
    light: np.ndarray
    """``[3]`` position of the point light."""
    ambient: float = 0.42
    """Ambient light (fraction of the albedo every point gets, shadowed or not)."""
    diffuse: float = 0.68
    """Strength of the point light's Lambert term."""
    annotated: list[int] = field(default_factory=list)
    """Sorted indices of the annotated views."""

    def __post_init__(self) -> None:
        self._planes = [it for it in self.items if it.category in PLANE_CATEGORIES]
        # flat list of (instance id, part) for casting; the index into it is the "part id" of a hit
        self._parts = [(it.instance_id, p) for it in self.items for p in it.parts]
        self._spheres = [p.placed.bounding_sphere() for _, p in self._parts]
        # the rug is too thin to cast a visible shadow; skipping it saves a shadow test per point
        self._occluders = [k for k, (iid, _) in enumerate(self._parts) if self.item(iid).category != "rug"]

    # ------------------------------------------------------------------ labels
    def item(self, instance_id: int) -> Item:
        """The instance with id ``instance_id``."""
        return self.items[instance_id - 1]

    @property
    def labels(self) -> dict[int, str]:
        """Instance id to label."""
        return {it.instance_id: it.label for it in self.items}

    @property
    def classes(self) -> list[str]:
        """The scene's labels, sorted alphabetically (as the 3D-OVS loader sorts them)."""
        return sorted(set(self.labels.values()))

    @property
    def box(self) -> np.ndarray:
        """``[2, 3]`` the room's box (world), min and max corner."""
        hx, hz = self.half
        return np.array([[-hx, 0.0, -hz], [hx, self.ceiling, hz]])

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in full-resolution pixels."""
        cfg = self.config
        return self.focal, self.focal, cfg.width / 2.0, cfg.height / 2.0

    # --------------------------------------------------------------- casting
    def rays(self, view: int, ss: int, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World directions of the sub-pixel rays of pixel rows ``[r0, r1)`` (``t`` is the z-depth).

        Returns:
            ``(dx, dy, dz)``, each ``[(r1 - r0) * ss * W * ss]`` float64, row-major.
        """
        f, _, cx, cy = self.intrinsics
        dirs = rc.pinhole_ray_dirs(self.c2w[view, :, :3], f, cx, cy, self.config.width, ss, r0, r1)
        return tuple(d.ravel() for d in dirs)

    def cast(self, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray):
        """First hits of rays from one origin inside the room.

        Args:
            origin: ``[3]`` ray origin (a camera centre).
            dx, dy, dz: ``[M]`` direction components.

        Returns:
            ``t`` ``[M]`` float64 ray parameter of the hit, ``ids`` ``[M]`` uint16 instance id and
            ``part`` ``[M]`` int64 index of the primitive hit (``-1`` on a plane).
        """
        m = dx.shape[0]
        box = self.box
        t = np.full(m, np.inf)
        plane = np.zeros(m, dtype=np.intp)
        # exit from the room box: the plane with the smallest positive t
        codes = ((0, 1), (5, 4), (2, 3))  # (plane index when d > 0, when d < 0) per axis
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis, d in enumerate((dx, dy, dz)):
                o = origin[axis]
                ta = np.where(d > 0, (box[1, axis] - o) / d, np.where(d < 0, (box[0, axis] - o) / d, np.inf))
                better = ta < t
                t = np.where(better, ta, t)
                plane = np.where(better, np.where(d > 0, codes[axis][0], codes[axis][1]), plane)
        ids = np.array([it.instance_id for it in self._planes], dtype=np.uint16)[plane]
        part = np.full(m, -1, dtype=np.intp)
        ox, oy, oz = (float(v) for v in origin)
        dd = dx * dx + dy * dy + dz * dz
        for k, ((iid, p), (centre, radius)) in enumerate(zip(self._parts, self._spheres)):
            wx, wy, wz = centre[0] - ox, centre[1] - oy, centre[2] - oz
            wd = wx * dx + wy * dy + wz * dz
            # rays that pass within the bounding sphere, in front of the origin
            cand = np.nonzero((wx * wx + wy * wy + wz * wz) * dd - wd * wd <= radius * radius * 1.0001 * dd)[0]
            if cand.size == 0:
                continue
            tk = p.placed.intersect(ox, oy, oz, dx[cand], dy[cand], dz[cand], 0.0)
            hit = tk < t[cand]
            sel = cand[hit]
            t[sel] = tk[hit]
            ids[sel] = iid
            part[sel] = k
        return t, ids, part

    def _chunks(self, ss: int) -> list[tuple[int, int]]:
        return rc.row_chunks(self.config.width, self.config.height, ss, CHUNK_RAYS)

    def render_ids(self, view: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact instance map and z-depth of view ``view`` (pixel-centre rays).

        Returns:
            ``ids`` ``[H, W]`` uint16 (never 0: the room is closed) and ``depth`` ``[H, W]`` float64.
        """
        cfg = self.config
        origin = self.c2w[view, :, 3]
        ts, ids = [], []
        for r0, r1 in self._chunks(1):
            t, i, _ = self.cast(origin, *self.rays(view, 1, r0, r1))
            ts.append(t)
            ids.append(i)
        shape = (cfg.height, cfg.width)
        return np.concatenate(ids).reshape(shape), np.concatenate(ts).reshape(shape)

    # --------------------------------------------------------------- shading
    def _materials(self, part: np.ndarray, plane_ids: np.ndarray, px, py, pz):
        """Normals ``([M],) * 3``, albedo ``[M, 3]``, specular and shininess ``[M]`` at hit points."""
        m = part.shape[0]
        nx, ny, nz = np.zeros(m), np.zeros(m), np.zeros(m)
        rgb = np.zeros((m, 3))
        ks, shin = np.zeros(m), np.full(m, 10.0)
        box = self.box
        for it in self._planes:
            sel = np.nonzero((part < 0) & (plane_ids == it.instance_id))[0]
            if sel.size == 0:
                continue
            coords = [px[sel], py[sel], pz[sel]]
            # snap to the exact plane: rounding noise must not flip floor() in the textures
            coords[it.axis] = float(box[1 if it.side > 0 else 0, it.axis])
            (nx, ny, nz)[it.axis][sel] = -it.side  # planes face into the room
            rgb[sel] = room_albedo(it.texture, *coords)
            ks[sel] = it.specular
        for k in np.unique(part[part >= 0]):
            sel = np.nonzero(part == k)[0]
            p = self._parts[k][1]
            x, y, z = px[sel], py[sel], pz[sel]
            a, b, c = p.placed.normal(x, y, z)
            nx[sel], ny[sel], nz[sel] = a, b, c
            lx, ly, lz = p.placed.to_local(x, y, z)
            rgb[sel] = room_albedo(p.texture, lx + p.offset[0], ly + p.offset[1], lz + p.offset[2])
            ks[sel] = p.specular
            shin[sel] = p.shininess
        return (nx, ny, nz), rgb, ks, shin

    def _shadowed(self, px, py, pz) -> np.ndarray:
        """Whether the segments from points ``p`` (each ``[M]``) to the light hit a primitive."""
        lx, ly, lz = (float(v) for v in self.light)
        vx, vy, vz = lx - px, ly - py, lz - pz
        vv = vx * vx + vy * vy + vz * vz
        occ = np.zeros(px.shape, dtype=bool)
        for k in self._occluders:
            centre, radius = self._spheres[k]
            wx, wy, wz = centre[0] - px, centre[1] - py, centre[2] - pz
            s = np.clip((wx * vx + wy * vy + wz * vz) / vv, 0.0, 1.0)
            ex, ey, ez = wx - s * vx, wy - s * vy, wz - s * vz
            cand = np.nonzero((ex * ex + ey * ey + ez * ez <= (radius * 1.001) ** 2) & ~occ)[0]
            if cand.size == 0:
                continue
            placed = self._parts[k][1].placed
            t = placed.intersect(px[cand], py[cand], pz[cand], vx[cand], vy[cand], vz[cand], 1e-9)
            occ[cand] = t < 1.0
        return occ

    def render_rgb(self, view: int) -> np.ndarray:
        """Anti-aliased RGB of view ``view``: ``[H, W, 3]`` uint8."""
        cfg = self.config
        ss = cfg.supersample
        origin = self.c2w[view, :, 3]
        out = np.zeros((cfg.height, cfg.width, 3), dtype=np.uint8)
        for r0, r1 in self._chunks(ss):
            dx, dy, dz = self.rays(view, ss, r0, r1)
            t, ids, part = self.cast(origin, dx, dy, dz)
            px, py, pz = origin[0] + t * dx, origin[1] + t * dy, origin[2] + t * dz
            (nx, ny, nz), rgb, ks, shin = self._materials(part, ids, px, py, pz)
            lx, ly, lz = self.light[0] - px, self.light[1] - py, self.light[2] - pz
            dist = np.sqrt(lx * lx + ly * ly + lz * lz)
            lx, ly, lz = lx / dist, ly / dist, lz / dist
            ndotl = nx * lx + ny * ly + nz * lz
            lit = np.nonzero(ndotl > 0.0)[0]
            vis = np.zeros(t.shape)
            eps = 1e-5  # start shadow rays just off the surface so that they do not hit it again
            occ = self._shadowed(px[lit] + eps * nx[lit], py[lit] + eps * ny[lit], pz[lit] + eps * nz[lit])
            vis[lit] = np.where(occ, 0.0, 1.0)
            dn = np.sqrt(dx * dx + dy * dy + dz * dz)
            hx, hy, hz = lx - dx / dn, ly - dy / dn, lz - dz / dn
            hn = np.maximum(np.sqrt(hx * hx + hy * hy + hz * hz), 1e-12)
            ndoth = np.maximum(nx * hx + ny * hy + nz * hz, 0.0) / hn
            spec = ks * ndoth**shin * vis
            light = self.ambient + self.diffuse * np.maximum(ndotl, 0.0) * vis
            color = rgb * light[:, None] + spec[:, None] * np.array([1.0, 0.97, 0.9])[None, :]
            color = color.reshape(r1 - r0, ss, cfg.width, ss, 3).mean(axis=(1, 3))
            out[r0:r1] = np.round(np.clip(color, 0.0, 1.0) * 255.0).astype(np.uint8)
        return out


# --------------------------------------------------------------------------------------- drawing


JITTER = 0.03
"""Default std of the colour jitter (:func:`~ovs3d.scenegen.textures.jitter_color`)."""


def _rot_y(yaw: float) -> np.ndarray:
    """``[3, 3]`` rotation about ``+y`` (the local-to-world rotation of :class:`~ovs3d.scenegen.raycast.Placed`)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _walls(hx: float, hz: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per wall (+x, -x, +z, -z): ``(centre [3] at floor level, inward normal [3], half length)``."""
    return [
        (np.array([hx, 0.0, 0.0]), np.array([-1.0, 0.0, 0.0]), hz),
        (np.array([-hx, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]), hz),
        (np.array([0.0, 0.0, hz]), np.array([0.0, 0.0, -1.0]), hx),
        (np.array([0.0, 0.0, -hz]), np.array([0.0, 0.0, 1.0]), hx),
    ]


def _inward_yaw(normal: np.ndarray) -> float:
    """Yaw whose local ``+z`` is ``normal`` (horizontal)."""
    return float(np.arctan2(normal[0], normal[2]))


def _assemble(
    position: np.ndarray, yaw: float, pieces: list[tuple[rc.Shape, tuple[float, float, float], Texture, float, float]]
) -> list[Part]:
    """Parts of an instance at ``position`` / ``yaw`` from ``(shape, local offset, texture, ks, shininess)``."""
    rot = _rot_y(yaw)
    parts = []
    for shape, offset, tex, ks, shin in pieces:
        off = np.asarray(offset, dtype=np.float64)
        parts.append(Part(rc.Placed(shape, position + rot @ off, yaw), tex, off, specular=ks, shininess=shin))
    return parts


def _furniture_pieces(rng: np.random.Generator, kind: FurnitureKind, w: float, d: float, h: float):
    """Shapes of a piece of furniture in its local frame (front along ``+z``) and its flat top, if any.

    Returns:
        ``(pieces, top)``: ``pieces`` as :func:`_assemble` takes them; ``top`` the half extents of the
        surface small objects may stand on (``None`` when the kind holds nothing).
    """
    main = make_texture(
        rng,
        kind.texture,
        jitter_color(rng, kind.color1, JITTER),
        jitter_color(rng, kind.color2, JITTER),
        kind.scale,
        direction=(1.0, 0.05, 0.0),
    )
    ks = rng.uniform(0.03, 0.08)
    top = (w / 2, d / 2) if kind.holder else None
    if kind.build == "box":
        return [(rc.Box((w / 2, h / 2, d / 2)), (0.0, 0.0, 0.0), main, ks, 12.0)], top
    if kind.build == "table":
        thick = rng.uniform(0.04, 0.06)
        leg = 0.03
        pieces = [(rc.Box((w / 2, thick / 2, d / 2)), (0.0, h - thick, 0.0), main, ks, 12.0)]
        for sx in (-1, 1):
            for sz in (-1, 1):
                off = (sx * (w / 2 - 2 * leg), 0.0, sz * (d / 2 - 2 * leg))
                pieces.append((rc.Box((leg, (h - thick) / 2, leg)), off, main, ks, 12.0))
        return pieces, top
    if kind.build == "sofa":
        seat_h, arm = 0.44, 0.12
        back = 0.18
        return [
            (rc.Box((w / 2 - arm, seat_h / 2, d / 2 - back / 2)), (0.0, 0.0, back / 2), main, ks, 8.0),
            (rc.Box((w / 2, h / 2, back / 2)), (0.0, 0.0, -d / 2 + back / 2), main, ks, 8.0),
            (rc.Box((arm / 2, 0.31, d / 2)), (-w / 2 + arm / 2, 0.0, 0.0), main, ks, 8.0),
            (rc.Box((arm / 2, 0.31, d / 2)), (w / 2 - arm / 2, 0.0, 0.0), main, ks, 8.0),
        ], None
    if kind.build == "plant":
        pot_r, pot_h = w * 0.28, rng.uniform(0.32, 0.42)
        pot = make_texture(rng, "solid", jitter_color(rng, (0.72, 0.38, 0.22), JITTER), (0.6, 0.3, 0.18), 0.3)
        leaves = (w / 2, (h - pot_h) / 2, w / 2 * rng.uniform(0.85, 1.0))
        return [
            (rc.Cylinder(pot_r, pot_h), (0.0, 0.0, 0.0), pot, 0.05, 10.0),
            (rc.Ellipsoid(leaves, pot_h + leaves[1] * 0.95), (0.0, 0.0, 0.0), main, 0.03, 6.0),
        ], None
    if kind.build == "lamp":
        metal = make_texture(rng, "solid", jitter_color(rng, (0.18, 0.18, 0.2), JITTER), (0.25, 0.25, 0.27), 0.3)
        shade_h = rng.uniform(0.3, 0.36)
        return [
            (rc.Cylinder(0.16, 0.03), (0.0, 0.0, 0.0), metal, 0.2, 30.0),
            (rc.Cylinder(0.02, h - shade_h), (0.0, 0.0, 0.0), metal, 0.2, 30.0),
            (rc.Cylinder(w / 2, shade_h), (0.0, h - shade_h, 0.0), main, 0.03, 6.0),
        ], None
    raise ValueError(f"unknown furniture builder {kind.build!r}")


def _small_pieces(rng: np.random.Generator, kind: SmallKind, r: float):
    """Shapes of a small object in its local frame (base centre at the origin)."""
    c1, c2 = jitter_color(rng, kind.color1, JITTER), jitter_color(rng, kind.color2, JITTER)
    u = rng.uniform
    if kind.build == "vase":
        h = r * u(2.8, 3.6)
        tex = make_texture(rng, kind.texture, c1, c2, 0.3, height=h)
        return [(rc.Cylinder(r, h), (0.0, 0.0, 0.0), tex, 0.25, 40.0)]
    if kind.build == "books":
        h = r * u(0.9, 1.3)
        tex = make_texture(rng, kind.texture, c1, c2, 0.3, height=h)
        return [(rc.Box((r * 0.8, h / 2, r * 0.6)), (0.0, 0.0, 0.0), tex, 0.04, 8.0)]
    if kind.build == "lamp":
        base_h = r * u(1.6, 2.0)
        base = make_texture(rng, "solid", c2, c2, 0.3)
        shade = make_texture(rng, kind.texture, c1, c1, 0.3)
        return [
            (rc.Cylinder(r * 0.4, base_h), (0.0, 0.0, 0.0), base, 0.2, 30.0),
            (rc.Cylinder(r, r * 1.2), (0.0, base_h, 0.0), shade, 0.03, 6.0),
        ]
    if kind.build == "succulent":
        pot_h = r * u(1.0, 1.3)
        pot = make_texture(rng, "solid", c2, c2, 0.3)
        leaves = make_texture(rng, kind.texture, c1, jitter_color(rng, (0.25, 0.48, 0.25), JITTER), r * 0.6)
        return [
            (rc.Cylinder(r * 0.85, pot_h), (0.0, 0.0, 0.0), pot, 0.05, 10.0),
            (rc.Sphere(r, pot_h + r * 0.6), (0.0, 0.0, 0.0), leaves, 0.03, 6.0),
        ]
    if kind.build == "teapot":
        axes = (r, r * u(0.7, 0.85), r * u(0.85, 1.0))
        tex = make_texture(rng, kind.texture, c1, c2, 0.3)
        return [(rc.Ellipsoid(axes, axes[1]), (0.0, 0.0, 0.0), tex, 0.3, 40.0)]
    if kind.build == "bowl":
        h = r * u(0.5, 0.65)
        bowl = make_texture(rng, kind.texture, c1, c1, 0.3)
        fruit = make_texture(rng, "noise", c2, jitter_color(rng, (0.9, 0.45, 0.05), JITTER), 0.05)
        fr = r * 0.42
        return [
            (rc.Cylinder(r, h), (0.0, 0.0, 0.0), bowl, 0.15, 30.0),
            (rc.Sphere(fr, h + fr * 0.4), (-fr * 0.9, 0.0, 0.0), fruit, 0.1, 20.0),
            (rc.Sphere(fr, h + fr * 0.4), (fr * 0.9, 0.0, 0.0), fruit, 0.1, 20.0),
        ]
    if kind.build == "box":
        h = r * u(0.8, 1.0)
        tex = make_texture(rng, kind.texture, c1, c2, r * 0.8, direction=(1.0, 0.0, 0.1))
        return [(rc.Box((r * 0.8, h / 2, r * 0.6)), (0.0, 0.0, 0.0), tex, 0.08, 15.0)]
    if kind.build == "globe":
        stand = make_texture(rng, "solid", (0.3, 0.22, 0.15), (0.3, 0.22, 0.15), 0.3)
        tex = make_texture(rng, kind.texture, c1, c2, r * 0.5)
        return [
            (rc.Cylinder(r * 0.45, r * 0.3), (0.0, 0.0, 0.0), stand, 0.1, 20.0),
            (rc.Sphere(r, r * 1.25), (0.0, 0.0, 0.0), tex, 0.15, 25.0),
        ]
    raise ValueError(f"unknown small-object builder {kind.build!r}")


def _overlaps(a: tuple[float, float], b: tuple[float, float], gap: float) -> bool:
    return a[0] < b[1] + gap and b[0] < a[1] + gap


def _place_furniture(
    rng: np.random.Generator, hx: float, hz: float, sizes: list[tuple[float, float, float]]
) -> list[tuple[int, float]] | None:
    """Wall index and position along it for each piece (``sizes`` = ``(w, d, h)``), or ``None``.

    Larger pieces go first; a wall is drawn with weight ``1 / (1 + pieces already on it)`` so that the
    furniture spreads around the room (and every direction the camera faces holds something).
    """
    walls = _walls(hx, hz)
    placed: dict[int, tuple[int, float, tuple[float, float], tuple[float, float]]] = {}
    on_wall = np.zeros(4)
    for i in np.argsort([-s[0] * s[1] for s in sizes], kind="stable"):
        w, d, _ = sizes[i]
        for _ in range(200):
            p = 1.0 / (1.0 + on_wall)
            wall = int(rng.choice(4, p=p / p.sum()))
            centre, normal, half_len = walls[wall]
            room = half_len - w / 2 - 0.05
            if room <= 0:
                continue
            s = rng.uniform(-room, room)
            tangent = _rot_y(_inward_yaw(normal)) @ np.array([1.0, 0.0, 0.0])
            mid = centre + s * tangent + normal * (WALL_GAP + d / 2)
            ext = np.abs(tangent) * w / 2 + np.abs(normal) * d / 2
            rx, rz = (mid[0] - ext[0], mid[0] + ext[0]), (mid[2] - ext[2], mid[2] + ext[2])
            if any(_overlaps(rx, q[2], 0.15) and _overlaps(rz, q[3], 0.15) for q in placed.values()):
                continue
            placed[int(i)] = (wall, s, rx, rz)
            on_wall[wall] += 1
            break
        else:
            return None
    return [(placed[i][0], placed[i][1]) for i in range(len(sizes))]


def _wall_slot(
    rng: np.random.Generator,
    walls,
    footprints: list[Footprint],
    taken: list[tuple[int, tuple[float, float]]],
    half_w: float,
    y_range: tuple[float, float],
) -> tuple[int, float] | None:
    """A free spot ``(wall, position along it)`` for a wall item of half width ``half_w`` and vertical
    extent ``y_range``: clear of the corners, of other wall items and of furniture that would hide it."""
    for _ in range(200):
        wall = int(rng.integers(4))
        centre, normal, half_len = walls[wall]
        room = half_len - half_w - 0.2
        if room <= 0:
            continue
        s = rng.uniform(-room, room)
        span = (s - half_w, s + half_w)
        if any(w == wall and _overlaps(span, sp, 0.2) for w, sp in taken):
            continue
        tangent = _rot_y(_inward_yaw(normal)) @ np.array([1.0, 0.0, 0.0])
        blocked = False
        for fp in footprints:
            # furniture within reach of this wall whose projection on it overlaps the item and is taller
            # than the item's bottom would hide (or cut through) it
            lo = np.array([fp.x[0], 0.0, fp.z[0]])
            hi = np.array([fp.x[1], 0.0, fp.z[1]])
            dist = min(abs(float((lo - centre) @ normal)), abs(float((hi - centre) @ normal)))
            near_wall = dist < 0.3
            along = sorted((float((lo - centre) @ tangent), float((hi - centre) @ tangent)))
            if near_wall and _overlaps(span, (along[0], along[1]), 0.08) and fp.height > y_range[0] - 0.08:
                blocked = True
                break
        if not blocked:
            return wall, s
    return None


def _draw_cameras(rng: np.random.Generator, cfg: RoomConfig) -> np.ndarray:
    """``[N, 3, 4]`` cameras near the room centre turning once around (see the module docstring)."""
    n = cfg.n_views
    phase = rng.random() * 2 * np.pi
    turn = 1.0 if rng.random() < 0.5 else -1.0
    # a smooth closed loop: random low harmonics of the yaw, scaled to the jitter amplitudes
    harmonics = np.arange(1, 4)
    coef = rng.normal(size=(3, harmonics.size, 2)) / harmonics[None, :, None]
    pitch_phase = rng.random(2) * 2 * np.pi
    theta = phase + turn * 2 * np.pi * np.arange(n) / n
    basis = np.concatenate([np.cos(np.outer(theta, harmonics)), np.sin(np.outer(theta, harmonics))], axis=1)
    weights = np.concatenate([coef[:, :, 0], coef[:, :, 1]], axis=1).T  # [2 * harmonics, 3], as basis
    offsets = basis @ weights  # [N, 3]
    offsets /= np.maximum(np.abs(offsets).max(0), 1e-9)  # each component in [-1, 1]
    horizontal = offsets[:, [0, 2]] * cfg.position_jitter / np.sqrt(2.0)
    heights = cfg.camera_height + cfg.height_jitter * offsets[:, 1]
    pitch = np.deg2rad(
        cfg.pitch_deg
        + cfg.pitch_jitter_deg * (0.7 * np.sin(2 * theta + pitch_phase[0]) + 0.3 * np.sin(3 * theta + pitch_phase[1]))
        + rng.normal(scale=0.5, size=n)
    )
    yaw = theta + np.deg2rad(rng.normal(scale=1.5, size=n))
    c2w = []
    for i in range(n):
        position = np.array([horizontal[i, 0], heights[i], horizontal[i, 1]]) + rng.normal(scale=0.01, size=3)
        fwd = np.array([np.sin(yaw[i]) * np.cos(pitch[i]), np.sin(pitch[i]), np.cos(yaw[i]) * np.cos(pitch[i])])
        c2w.append(look_at(position, position + fwd))
    return np.stack(c2w)


def _draw_scene(config: RoomConfig, attempt: int) -> RoomScene | None:
    rng = np.random.default_rng([config.seed, attempt])
    hx, hz, ceiling = rng.uniform(*ROOM_HALF_X), rng.uniform(*ROOM_HALF_Z), rng.uniform(*ROOM_HEIGHT)
    walls = _walls(hx, hz)
    items: list[Item] = []

    def add(label: str, category: str, **kw) -> Item:
        it = Item(len(items) + 1, label, category, **kw)
        items.append(it)
        return it

    # --- planes: 4 walls (one texture, one label), floor, ceiling
    wall_kind = WALL_KINDS[rng.integers(len(WALL_KINDS))]
    wall_tex = make_texture(
        rng,
        wall_kind.texture,
        jitter_color(rng, wall_kind.color1, 0.02),
        jitter_color(rng, wall_kind.color2, 0.02),
        0.8,
    )
    for axis, side in ((0, 1.0), (0, -1.0), (2, 1.0), (2, -1.0)):
        add(wall_kind.label, "wall", texture=wall_tex, axis=axis, side=side, specular=0.02)
    floor_kind = FLOOR_KINDS[rng.integers(len(FLOOR_KINDS))]
    floor_tex = make_texture(
        rng,
        floor_kind.texture,
        jitter_color(rng, floor_kind.color1, 0.02),
        jitter_color(rng, floor_kind.color2, 0.02),
        floor_kind.scale,
        direction=(1.0, 0.0, rng.normal(scale=0.05)),
    )
    add(floor_kind.label, "floor", texture=floor_tex, axis=1, side=-1.0, specular=0.06)
    ceiling_kind = CEILING_KINDS[rng.integers(len(CEILING_KINDS))]
    ceiling_tex = make_texture(rng, ceiling_kind.texture, ceiling_kind.color1, ceiling_kind.color2, 1.0)
    add(ceiling_kind.label, "ceiling", texture=ceiling_tex, axis=1, side=1.0, specular=0.0)

    # --- rug, off-centre so that the cameras see it from above at a moderate angle
    rug_kind = RUG_KINDS[rng.integers(len(RUG_KINDS))]
    rug_tex = make_texture(
        rng,
        rug_kind.texture,
        jitter_color(rng, rug_kind.color1, JITTER),
        jitter_color(rng, rug_kind.color2, JITTER),
        rug_kind.scale,
    )
    ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.7, 1.1)
    if rug_kind.label.startswith("a round"):
        rx = rz = rng.uniform(0.8, 1.0)
        rug_shape: rc.Shape = rc.Cylinder(rx, 0.012)
    else:
        rx, rz = rng.uniform(1.0, 1.3), rng.uniform(0.65, 0.9)
        rug_shape = rc.Box((rx, 0.006, rz))
    rug_pos = np.array(
        [
            np.clip(dist * np.cos(ang), -hx + rx + 0.25, hx - rx - 0.25),
            0.0,
            np.clip(dist * np.sin(ang), -hz + rz + 0.25, hz - rz - 0.25),
        ]
    )
    add(rug_kind.label, "rug", parts=_assemble(rug_pos, 0.0, [(rug_shape, (0.0, 0.0, 0.0), rug_tex, 0.02, 6.0)]))

    # --- furniture against the walls
    lo, hi = config.n_objects
    n_furn = int(rng.integers(lo, hi + 1))
    kinds = [FURNITURE_KINDS[i] for i in rng.choice(len(FURNITURE_KINDS), size=n_furn, replace=False)]
    lo, hi = config.n_small
    n_small = int(rng.integers(lo, hi + 1))
    if n_small and kinds and not any(k.holder for k in kinds):
        holders = [k for k in FURNITURE_KINDS if k.holder]
        kinds[0] = holders[rng.integers(len(holders))]  # small objects need somewhere to stand
    sizes = [(rng.uniform(*k.width), rng.uniform(*k.depth), rng.uniform(*k.height)) for k in kinds]
    spots = _place_furniture(rng, hx, hz, sizes)
    if spots is None:
        return None
    footprints: list[Footprint] = []
    for kind, (w, d, h), (wall, s) in zip(kinds, sizes, spots):
        centre, normal, _ = walls[wall]
        yaw = _inward_yaw(normal)
        tangent = _rot_y(yaw) @ np.array([1.0, 0.0, 0.0])
        pos = centre + s * tangent + normal * (WALL_GAP + d / 2)
        pieces, top = _furniture_pieces(rng, kind, w, d, h)
        add(kind.label, "furniture", parts=_assemble(pos, yaw, pieces))
        ext = np.abs(tangent) * w / 2 + np.abs(normal) * d / 2
        footprints.append(
            Footprint((pos[0] - ext[0], pos[0] + ext[0]), (pos[2] - ext[2], pos[2] + ext[2]), h, wall, pos, yaw, top)
        )

    # --- wall items: a clock, window blinds and framed pictures
    taken: list[tuple[int, tuple[float, float]]] = []

    def wall_frame(wall: int, s: float, y: float) -> tuple[np.ndarray, float]:
        centre, normal, _ = walls[wall]
        yaw = _inward_yaw(normal)
        return centre + s * (_rot_y(yaw) @ np.array([1.0, 0.0, 0.0])) + np.array([0.0, y, 0.0]), yaw

    blinds_kind = BLINDS_KINDS[rng.integers(len(BLINDS_KINDS))]
    bw, bh = rng.uniform(0.5, 0.7), rng.uniform(0.55, 0.7)  # half width, half height
    by = rng.uniform(0.9, 1.05)
    slot = _wall_slot(rng, walls, footprints, taken, bw, (by, by + 2 * bh))
    if slot is None:
        return None
    taken.append((slot[0], (slot[1] - bw, slot[1] + bw)))
    pos, yaw = wall_frame(slot[0], slot[1], by)
    tex = slats_texture(rng, jitter_color(rng, blinds_kind.color1, 0.02), blinds_kind.color2, blinds_kind.scale)
    blinds = Part(rc.Placed(rc.Box((bw, bh, 0.02)), pos, yaw), tex, np.zeros(3), specular=0.03)
    add(blinds_kind.label, "wall item", parts=[blinds])

    cr = rng.uniform(0.15, 0.2)
    cy = min(rng.uniform(1.75, 2.05), ceiling - cr - 0.2)
    slot = _wall_slot(rng, walls, footprints, taken, cr, (cy - cr, cy + cr))
    if slot is None:
        return None
    taken.append((slot[0], (slot[1] - cr, slot[1] + cr)))
    pos, yaw = wall_frame(slot[0], slot[1], cy)
    rim = make_texture(rng, "solid", jitter_color(rng, (0.15, 0.15, 0.16), JITTER), (0.2, 0.2, 0.2), 0.3)
    face = make_texture(rng, "solid", (0.95, 0.95, 0.93), (0.95, 0.95, 0.93), 0.3)
    clock = _assemble(
        pos,
        yaw,
        [
            (WallDisc(cr, 0.035), (0.0, 0.0, 0.0), rim, 0.2, 30.0),
            (WallDisc(cr * 0.82, 0.045), (0.0, 0.0, 0.0), face, 0.1, 20.0),
        ],
    )
    add(CLOCK_LABEL, "wall item", parts=clock)

    lo, hi = config.n_pictures
    n_pic = int(rng.integers(lo, hi + 1))
    for i in rng.choice(len(PICTURE_KINDS), size=n_pic, replace=False):
        kind = PICTURE_KINDS[i]
        pw, ph = rng.uniform(0.25, 0.45), rng.uniform(0.2, 0.32)  # canvas half width, half height
        py = rng.uniform(1.35, 1.6) - ph
        slot = _wall_slot(rng, walls, footprints, taken, pw + 0.03, (py - 0.03, py + 2 * ph + 0.03))
        if slot is None:
            return None
        taken.append((slot[0], (slot[1] - pw - 0.03, slot[1] + pw + 0.03)))
        pos, yaw = wall_frame(slot[0], slot[1], py)
        canvas = make_texture(
            rng,
            kind.texture,
            jitter_color(rng, kind.color1, JITTER),
            jitter_color(rng, kind.color2, JITTER),
            kind.scale,
            height=2 * ph,
        )
        frame = make_texture(rng, "solid", jitter_color(rng, kind.frame, 0.02), kind.frame, 0.3)
        pieces = [
            (rc.Box((pw + 0.03, ph + 0.03, 0.015)), (0.0, -0.03, 0.0), frame, 0.1, 20.0),
            (rc.Box((pw, ph, 0.02)), (0.0, 0.0, 0.0), canvas, 0.04, 10.0),
        ]
        add(kind.label, "wall item", parts=_assemble(pos, yaw, pieces))

    # --- small objects on the furniture tops
    holders = [fp for fp in footprints if fp.top is not None]
    kinds_small = [SMALL_KINDS[i] for i in rng.choice(len(SMALL_KINDS), size=n_small, replace=False)]
    spots_on: dict[int, list[tuple[float, float, float]]] = {}
    for kind in kinds_small:
        r = rng.uniform(*kind.radius)
        for _ in range(100):
            j = int(rng.integers(len(holders)))
            fp = holders[j]
            ax, az = fp.top[0] - r - 0.03, fp.top[1] - r - 0.03
            if ax < 0 or az < 0:
                continue
            lx, lz = rng.uniform(-ax, ax), rng.uniform(-az, az)
            if any(np.hypot(lx - x, lz - z) < r + q + 0.05 for x, z, q in spots_on.get(j, [])):
                continue
            spots_on.setdefault(j, []).append((lx, lz, r))
            break
        else:
            return None
        pos = fp.position + _rot_y(fp.yaw) @ np.array([lx, fp.height, lz])
        yaw = fp.yaw + rng.uniform(-0.6, 0.6)
        add(kind.label, "small", parts=_assemble(pos, yaw, _small_pieces(rng, kind, r)))

    light = np.array([rng.uniform(-0.5, 0.5), ceiling - rng.uniform(0.3, 0.45), rng.uniform(-0.5, 0.5)])
    c2w = _draw_cameras(np.random.default_rng([config.seed, attempt, 1]), config)
    focal = config.width / 2.0 / np.tan(np.deg2rad(config.hfov_deg) / 2.0)
    return RoomScene(
        config=config,
        attempt=attempt,
        half=(float(hx), float(hz)),
        ceiling=float(ceiling),
        items=items,
        c2w=c2w,
        focal=float(focal),
        light=light,
        annotated=config.annotated,
    )


# -------------------------------------------------------------------------------------- validity


def layout_problem(scene: RoomScene, id_maps: dict[int, np.ndarray] | None = None) -> str | None:
    """Why ``scene`` fails the validity check (``None`` if it passes; see the module docstring).

    Args:
        scene: the drawn scene.
        id_maps: instance maps of every view, when already rendered (``[H, W]`` uint16 each).
    """
    cfg = scene.config
    w, h = cfg.width, cfg.height
    sw, sh = scaled_size(w, h, cfg.semantic_downscale)
    min_side = cfg.min_size_factor * min(sw, sh) / 10.0  # at the semantic resolution
    min_area = cfg.min_area_factor * (min(w, h) / 10.0) ** 2  # at full resolution
    labels = scene.labels
    names = scene.classes
    lut = np.zeros(max(labels) + 1, dtype=np.intp)
    for iid, label in labels.items():
        lut[iid] = names.index(label) + 1  # 0 = no surface

    def label_map(view: int) -> np.ndarray:
        ids = id_maps[view] if id_maps is not None else scene.render_ids(view)[0]
        return lut[ids]

    annotated = set(scene.annotated)
    best: dict[int, tuple[int, int]] = {}  # label index -> (pixels, view) in its best annotated view
    maps = {}
    for view in scene.annotated:
        lab = maps[view] = label_map(view)
        counts = np.bincount(lab.ravel(), minlength=len(names) + 1)
        if counts[0] > 0:
            return f"view {view} has {counts[0]} pixels without a surface"
        for k in range(1, len(names) + 1):
            if counts[k] > best.get(k, (0, -1))[0]:
                best[k] = (int(counts[k]), view)
    for k, label in enumerate(names, start=1):
        pixels, view = best.get(k, (0, -1))
        if pixels < max(min_area, 1):
            return f"label {label!r} covers at most {pixels} px (< {min_area:.0f}) in the annotated views"
        rows = np.nonzero((maps[view] == k).any(axis=1))[0]
        cols = np.nonzero((maps[view] == k).any(axis=0))[0]
        bw, bh = (cols[-1] - cols[0] + 1) * sw / w, (rows[-1] - rows[0] + 1) * sh / h
        if min(bw, bh) < min_side:
            return (
                f"label {label!r} is {bw:.1f}x{bh:.1f} px at the semantic resolution in its best annotated "
                f"view {view} (< {min_side:.1f})"
            )
    if cfg.min_train_views > 0:
        seen = np.zeros(len(names) + 1, dtype=int)
        for view in range(cfg.n_views):
            if view in annotated:
                continue
            counts = np.bincount(label_map(view).ravel(), minlength=len(names) + 1)
            seen += counts >= max(min_area, 1)
        for k, label in enumerate(names, start=1):
            if seen[k] < cfg.min_train_views:
                return f"label {label!r} is visible in only {seen[k]} training views (< {cfg.min_train_views})"
    return None


def build_room(config: RoomConfig) -> RoomScene:
    """Draw the room of ``config``: the first sub-seed whose layout passes the validity check.

    Raises:
        OVS3DError: bad configuration, or no valid layout within ``config.max_layout_tries`` sub-seeds.
    """
    config.validate()
    return first_valid_layout(config, _draw_scene, layout_problem, "room")


def write_room(scene: RoomScene, folder: Path) -> None:
    """Render every view of ``scene`` and write the SPEC §1 files into ``folder`` (which must be empty)."""
    write_scene(scene, folder, "room", lambda depth: (NEAR_FACTOR * depth.min(), FAR_FACTOR * depth.max()))


def make_room(config: RoomConfig, out: Path) -> Path:
    """Generate the ``room`` scene of ``config`` into the folder ``out`` (SPEC §1 layout).

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
    return generate_scene(config, out, build_room, write_room, "room")
