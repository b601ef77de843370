"""Label pools of the procedural scenes: long-tail object phrases and background surfaces.

Each entry ties a text label (the prompt, as in the 3D-OVS dataset) to how it looks: which primitive
shapes may stand for it, its colours, which procedural textures fit it and its size class. Colours are
display RGB in [0, 1] and roughly match the words of the label, so that RGB alone is informative.
Labels are used as file names (``segmentations/NN/<label>.png``): no ``/`` and no leading dot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Shape = Literal["sphere", "ellipsoid", "box", "cylinder", "cone", "capsule", "torus"]
SizeClass = Literal["S", "M", "L"]
RGB = tuple[float, float, float]


@dataclass(frozen=True)
class ObjectKind:
    """One object phrase of the pool and its appearance."""

    label: str
    """The text label (prompt)."""
    shapes: tuple[Shape, ...]
    """Primitive shapes that may stand for it (one is drawn)."""
    color1: RGB
    """Main colour."""
    color2: RGB
    """Secondary colour (stripes, checks, dots, noise)."""
    textures: tuple[str, ...]
    """Procedural textures that fit it (see :mod:`ovs3d.scenegen.textures`)."""
    size: SizeClass = "M"
    """Size class: ``S`` small, ``M`` medium, ``L`` large."""
    duplicable: bool = False
    """Whether a scene may hold two instances of it (two grapes, two eggs)."""
    glossy: bool = False
    """Shiny material (stronger specular highlight)."""


@dataclass(frozen=True)
class SurfaceKind:
    """A background surface: the table top or the back wall."""

    label: str
    """The text label (prompt)."""
    color1: RGB
    """Main colour."""
    color2: RGB
    """Secondary colour."""
    texture: str
    """Procedural texture (see :mod:`ovs3d.scenegen.textures`)."""
    scale: float
    """Feature size of the texture in world units."""


def _o(label, shapes, c1, c2, textures, size="M", dup=False, glossy=False) -> ObjectKind:
    return ObjectKind(label, tuple(shapes), c1, c2, tuple(textures), size, dup, glossy)


OBJECTS: tuple[ObjectKind, ...] = (
    _o("a beige mug", ["cylinder"], (0.86, 0.78, 0.62), (0.74, 0.64, 0.48), ["solid", "stripes"], glossy=True),
    _o("stapler", ["box", "capsule"], (0.12, 0.12, 0.14), (0.55, 0.55, 0.58), ["solid", "gradient"]),
    _o("Pikachu", ["capsule", "ellipsoid"], (0.98, 0.84, 0.12), (0.85, 0.15, 0.1), ["dots", "gradient"]),
    _o(
        "a red Nintendo Switch joy-con controller",
        ["capsule", "box"],
        (0.9, 0.12, 0.12),
        (0.15, 0.15, 0.15),
        ["solid", "dots"],
        glossy=True,
    ),
    _o("green grape", ["sphere", "ellipsoid"], (0.45, 0.75, 0.25), (0.6, 0.85, 0.35), ["noise"], "S", True),
    _o("an orange", ["sphere"], (0.98, 0.55, 0.08), (0.9, 0.45, 0.05), ["noise"], "S", True),
    _o("a red apple", ["sphere", "ellipsoid"], (0.8, 0.08, 0.1), (0.95, 0.8, 0.2), ["gradient"], "S", True),
    _o("a banana", ["ellipsoid", "capsule"], (0.98, 0.88, 0.25), (0.6, 0.5, 0.1), ["gradient", "noise"]),
    _o("a Rubik's cube", ["box"], (0.95, 0.15, 0.12), (0.98, 0.85, 0.1), ["checker"], "S"),
    _o("a tennis ball", ["sphere"], (0.82, 0.95, 0.22), (0.97, 0.97, 0.95), ["stripes"], "S", True),
    _o(
        "a blue water bottle",
        ["cylinder", "capsule"],
        (0.15, 0.4, 0.9),
        (0.85, 0.9, 0.95),
        ["stripes", "gradient"],
        "L",
    ),
    _o("a coke can", ["cylinder"], (0.85, 0.05, 0.08), (0.98, 0.98, 0.98), ["stripes"], glossy=True),
    _o("a glazed donut", ["torus"], (0.82, 0.6, 0.35), (0.95, 0.55, 0.7), ["dots", "noise"], "L"),
    _o("a roll of tape", ["torus"], (0.75, 0.75, 0.72), (0.55, 0.55, 0.5), ["noise"], "L"),
    _o("a bagel", ["torus"], (0.72, 0.48, 0.25), (0.92, 0.85, 0.7), ["dots", "noise"], "L"),
    _o("a traffic cone toy", ["cone"], (1.0, 0.42, 0.05), (0.98, 0.98, 0.98), ["stripes"]),
    _o("a party hat", ["cone"], (0.55, 0.2, 0.85), (0.98, 0.85, 0.2), ["stripes", "dots"]),
    _o("a soccer ball", ["sphere"], (0.97, 0.97, 0.97), (0.08, 0.08, 0.08), ["dots", "checker"]),
    _o("a pink eraser", ["box"], (0.97, 0.6, 0.7), (0.9, 0.5, 0.6), ["solid", "noise"], "S"),
    _o("a yellow sticky note pad", ["box"], (0.99, 0.92, 0.3), (0.95, 0.85, 0.2), ["stripes", "solid"]),
    _o("a computer mouse", ["ellipsoid"], (0.55, 0.56, 0.6), (0.2, 0.2, 0.22), ["gradient"], "S", glossy=True),
    _o("an egg", ["ellipsoid"], (0.96, 0.92, 0.84), (0.88, 0.8, 0.68), ["noise"], "S", True),
    _o("a lemon", ["ellipsoid", "sphere"], (0.99, 0.9, 0.15), (0.85, 0.82, 0.1), ["noise"], "S", True),
    _o("a kiwi fruit", ["ellipsoid"], (0.5, 0.36, 0.2), (0.38, 0.27, 0.15), ["noise"], "S", True),
    _o(
        "a green cactus in a pot", ["capsule", "cylinder"], (0.25, 0.6, 0.3), (0.75, 0.4, 0.25), ["stripes", "gradient"]
    ),
    _o("a red toy car", ["box"], (0.88, 0.1, 0.08), (0.2, 0.2, 0.25), ["solid", "stripes"], glossy=True),
    _o("a wooden block", ["box", "cylinder"], (0.78, 0.58, 0.35), (0.6, 0.42, 0.22), ["wood"], "S", True),
    _o("a white candle", ["cylinder"], (0.97, 0.95, 0.88), (0.9, 0.88, 0.8), ["gradient", "noise"]),
    _o("a pepper grinder", ["cylinder", "capsule"], (0.15, 0.1, 0.08), (0.45, 0.3, 0.2), ["wood", "stripes"], "L"),
    _o("a purple eggplant", ["ellipsoid", "capsule"], (0.32, 0.12, 0.4), (0.2, 0.45, 0.15), ["gradient"]),
    _o("Hatsune Miku figure", ["capsule", "cone"], (0.2, 0.75, 0.75), (0.9, 0.9, 0.95), ["stripes", "gradient"], "L"),
    _o("a brown teddy bear", ["ellipsoid", "capsule"], (0.55, 0.35, 0.18), (0.72, 0.52, 0.3), ["noise"], "L"),
    _o("a rubber duck", ["ellipsoid", "sphere"], (1.0, 0.86, 0.1), (1.0, 0.5, 0.05), ["gradient", "solid"]),
    _o("a blue ceramic bowl", ["cylinder"], (0.18, 0.3, 0.7), (0.9, 0.92, 0.95), ["stripes", "dots"], glossy=True),
    _o("a tin can", ["cylinder"], (0.72, 0.74, 0.78), (0.9, 0.3, 0.2), ["stripes"], glossy=True),
    _o("a jar of honey", ["cylinder"], (0.9, 0.6, 0.1), (0.5, 0.3, 0.1), ["gradient", "stripes"], glossy=True),
    _o("a black chess pawn", ["cone", "capsule"], (0.08, 0.08, 0.09), (0.25, 0.25, 0.27), ["solid"], "S", True, True),
    _o("a snow globe", ["sphere"], (0.7, 0.85, 0.98), (0.98, 0.98, 1.0), ["dots"], glossy=True),
    _o("a golf ball", ["sphere"], (0.97, 0.97, 0.95), (0.85, 0.85, 0.83), ["dots"], "S", True),
    _o("a strawberry", ["cone", "ellipsoid"], (0.9, 0.1, 0.15), (0.98, 0.9, 0.4), ["dots"], "S", True),
    _o("a marshmallow", ["cylinder"], (0.98, 0.96, 0.94), (0.95, 0.85, 0.88), ["noise"], "S", True),
    _o("a lavender bar of soap", ["box", "ellipsoid"], (0.72, 0.6, 0.88), (0.82, 0.72, 0.95), ["noise"]),
    _o("a green matcha tin", ["cylinder", "box"], (0.35, 0.6, 0.25), (0.9, 0.88, 0.75), ["stripes", "solid"]),
    _o("a gift box", ["box"], (0.85, 0.12, 0.15), (0.15, 0.6, 0.25), ["stripes", "checker"]),
    _o("a tissue box", ["box"], (0.4, 0.7, 0.85), (0.97, 0.97, 0.97), ["dots", "checker"], "L"),
    _o("a dice", ["box"], (0.97, 0.97, 0.97), (0.05, 0.05, 0.05), ["dots"], "S", True),
    _o("a striped pencil cup", ["cylinder"], (0.2, 0.25, 0.3), (0.9, 0.75, 0.2), ["stripes"]),
    _o("a pink macaron", ["cylinder", "ellipsoid"], (0.98, 0.62, 0.72), (0.95, 0.88, 0.8), ["stripes"], "S", True),
    _o("a chocolate cupcake", ["cylinder", "cone"], (0.4, 0.22, 0.12), (0.98, 0.7, 0.8), ["gradient", "stripes"]),
    _o("a cookie", ["cylinder"], (0.82, 0.62, 0.38), (0.3, 0.18, 0.1), ["dots"], "S", True),
    _o("an avocado", ["ellipsoid"], (0.2, 0.35, 0.12), (0.3, 0.45, 0.15), ["noise"], "S", True),
    _o("a perfume bottle", ["box", "cylinder"], (0.95, 0.7, 0.8), (0.98, 0.9, 0.6), ["gradient"], glossy=True),
    _o("a red lipstick", ["cylinder", "capsule"], (0.75, 0.05, 0.15), (0.85, 0.75, 0.3), ["gradient"], "S"),
    _o("a black headphones case", ["ellipsoid"], (0.1, 0.1, 0.12), (0.3, 0.3, 0.33), ["noise"], "L"),
    _o("a lego brick", ["box"], (0.9, 0.15, 0.1), (0.95, 0.25, 0.2), ["dots", "solid"], "S", True),
    _o("a pink piggy bank", ["ellipsoid"], (0.98, 0.7, 0.75), (0.9, 0.55, 0.6), ["solid", "noise"], glossy=True),
    _o("a green frog plush", ["ellipsoid", "capsule"], (0.35, 0.72, 0.25), (0.95, 0.95, 0.6), ["dots", "noise"]),
    _o("a cardboard box", ["box"], (0.72, 0.55, 0.35), (0.6, 0.45, 0.28), ["noise", "stripes"], "L"),
    _o("a blue rubber ball", ["sphere"], (0.15, 0.35, 0.85), (0.95, 0.95, 0.2), ["stripes", "solid"], glossy=True),
    _o("a gingerbread man", ["capsule", "ellipsoid"], (0.7, 0.42, 0.2), (0.98, 0.98, 0.98), ["dots"]),
)
"""The object pool (at least 40 long-tail phrases)."""

TABLES: tuple[SurfaceKind, ...] = (
    SurfaceKind("wooden table", (0.6, 0.4, 0.22), (0.42, 0.26, 0.13), "wood", 0.12),
    SurfaceKind("white desk", (0.88, 0.88, 0.86), (0.8, 0.8, 0.78), "noise", 0.4),
    SurfaceKind("grey sofa", (0.48, 0.48, 0.5), (0.38, 0.38, 0.4), "fabric", 0.03),
    SurfaceKind("blue bed sheet", (0.35, 0.5, 0.78), (0.28, 0.42, 0.68), "fabric", 0.04),
    SurfaceKind("black marble countertop", (0.14, 0.14, 0.15), (0.55, 0.55, 0.56), "marble", 0.5),
    SurfaceKind("red checkered tablecloth", (0.82, 0.15, 0.15), (0.95, 0.93, 0.9), "checker", 0.25),
    SurfaceKind("green yoga mat", (0.32, 0.62, 0.38), (0.28, 0.55, 0.33), "fabric", 0.05),
    SurfaceKind("beige carpet", (0.8, 0.72, 0.58), (0.7, 0.62, 0.48), "fabric", 0.03),
)
"""Table-top surfaces (the horizontal plane the objects stand on)."""

WALLS: tuple[SurfaceKind, ...] = (
    SurfaceKind("lime wall", (0.72, 0.85, 0.38), (0.66, 0.8, 0.32), "noise", 0.6),
    SurfaceKind("white wall", (0.9, 0.9, 0.88), (0.84, 0.84, 0.82), "noise", 0.6),
    SurfaceKind("brick wall", (0.62, 0.27, 0.18), (0.82, 0.8, 0.74), "bricks", 0.22),
    SurfaceKind("blue curtain", (0.25, 0.36, 0.66), (0.18, 0.26, 0.5), "curtain", 0.3),
    SurfaceKind("striped wallpaper", (0.88, 0.82, 0.62), (0.66, 0.5, 0.4), "stripes", 0.14),
    SurfaceKind("pink wall", (0.93, 0.72, 0.76), (0.88, 0.66, 0.7), "noise", 0.6),
    SurfaceKind("wooden panel wall", (0.55, 0.38, 0.22), (0.4, 0.26, 0.14), "planks", 0.3),
    SurfaceKind("grey concrete wall", (0.58, 0.58, 0.57), (0.45, 0.45, 0.44), "noise", 0.15),
)
"""Back walls (the vertical plane behind the table)."""


def _check_pools() -> None:
    labels = [k.label for k in OBJECTS] + [k.label for k in TABLES] + [k.label for k in WALLS]
    if len(set(labels)) != len(labels):
        raise RuntimeError("duplicate label in the scenegen pools")
    for label in labels:
        if "/" in label or label.startswith(".") or label != label.strip():
            raise RuntimeError(f"label {label!r} cannot be a file name")


_check_pools()
