"""Procedural solid textures for the synthetic scenes (numpy, vectorised over surface points).

A :class:`Texture` maps 3D points in the frame of the surface it belongs to (an object's local frame, or
world coordinates for the table and the wall) to an albedo. Solid textures need no uv mapping and are
consistent across views, like a painted object. Everything is deterministic: the only randomness is the
value-noise lattice drawn once when the texture is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LATTICE = 16
"""Period of the value-noise lattice (a power of two)."""

KINDS = (
    "solid",
    "checker",
    "stripes",
    "noise",
    "gradient",
    "dots",
    "wood",
    "fabric",
    "marble",
    "bricks",
    "curtain",
    "planks",
)
"""Texture kinds :func:`albedo` knows."""


@dataclass
class Texture:
    """A procedural texture (all lengths in the units of the points it is evaluated at)."""

    kind: str
    """One of :data:`KINDS`."""
    color1: np.ndarray
    """``[3]`` main colour, display RGB in [0, 1]."""
    color2: np.ndarray
    """``[3]`` secondary colour."""
    scale: float
    """Feature size (checker cell, stripe period, noise cell, dot spacing...)."""
    direction: np.ndarray
    """``[3]`` unit vector: stripe normal / wood grain direction."""
    lattice: np.ndarray
    """``[LATTICE + 1] * 3`` float64 value-noise lattice in [0, 1], wrap-padded by one."""
    height: float = 1.0
    """Height over which ``gradient`` goes from ``color1`` to ``color2``."""
    phase: float = 0.0
    """Phase offset of periodic patterns, in periods."""


def jitter_color(rng: np.random.Generator, color, amount: float) -> np.ndarray:
    """``color`` (RGB in [0, 1]) plus Gaussian noise of std ``amount`` per channel, clipped to [0, 1]."""
    return np.clip(np.asarray(color) + rng.normal(scale=amount, size=3), 0.0, 1.0)


def make_texture(
    rng: np.random.Generator,
    kind: str,
    color1,
    color2,
    scale: float,
    *,
    height: float = 1.0,
    direction=None,
) -> Texture:
    """Draw a texture of ``kind`` (lattice, phase and, unless given, a stripe direction) from ``rng``."""
    if kind not in KINDS:
        raise ValueError(f"unknown texture kind {kind!r}")
    lattice = np.pad(rng.random((LATTICE, LATTICE, LATTICE)), ((0, 1),) * 3, mode="wrap")
    if direction is None:
        direction = rng.normal(size=3) * np.array([0.35, 1.0, 0.35])  # mostly horizontal bands
    direction = np.asarray(direction, dtype=np.float64)
    direction = direction / np.linalg.norm(direction)
    return Texture(
        kind=kind,
        color1=np.asarray(color1, dtype=np.float64),
        color2=np.asarray(color2, dtype=np.float64),
        scale=float(scale),
        direction=direction,
        lattice=lattice,
        height=float(height),
        phase=float(rng.random()),
    )


def _split(c, n: int):
    """Lattice cell (``& (n - 1)`` wraps negatives, ``n`` a power of two) and smoothed fraction."""
    if np.ndim(c) == 0:
        cf = np.floor(c)
        f = float(c - cf)
        return int(cf) & (n - 1), f * f * (3.0 - 2.0 * f)
    cf = np.floor(c)
    f = c - cf
    return cf.astype(np.intp) & (n - 1), f * f * (3.0 - 2.0 * f)


def value_noise(x, y, z, lattice: np.ndarray) -> np.ndarray:
    """Smooth periodic value noise in [0, 1] at points ``(x, y, z)`` (lattice units).

    Args:
        x, y, z: ``[M]`` float64 coordinates; at most two may be Python floats (points on an axis-aligned
            plane, which then cost a 2D interpolation).
        lattice: ``[n + 1] * 3`` wrap-padded lattice (:func:`make_texture`), ``n`` a power of two.

    Returns:
        ``[M]`` float64.
    """
    n = lattice.shape[0] - 1
    (x0, fx), (y0, fy), (z0, fz) = _split(x, n), _split(y, n), _split(z, n)
    scalar = [np.ndim(c) == 0 for c in (x, y, z)]
    if any(scalar):
        # interpolate the lattice along the constant axis first, then bilinear in the other two
        axis = scalar.index(True)
        i0, f = ((x0, fx), (y0, fy), (z0, fz))[axis]
        plane = (1.0 - f) * np.take(lattice, i0, axis=axis) + f * np.take(lattice, i0 + 1, axis=axis)
        (a0, fa), (b0, fb) = [s for k, s in enumerate(((x0, fx), (y0, fy), (z0, fz))) if k != axis]
        flat = plane.ravel()
        base = a0 * (n + 1) + b0
        lo = (1.0 - fb) * flat[base] + fb * flat[base + 1]
        hi = (1.0 - fb) * flat[base + (n + 1)] + fb * flat[base + (n + 2)]
        return (1.0 - fa) * lo + fa * hi
    flat = lattice.ravel()
    base = (x0 * (n + 1) + y0) * (n + 1) + z0
    out = None
    for dx, wx in ((0, 1.0 - fx), (1, fx)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            b = base + (dx * (n + 1) + dy) * (n + 1)
            term = (wx * wy) * ((1.0 - fz) * flat[b] + fz * flat[b + 1])
            out = term if out is None else out + term
    return out


def _lerp(c1: np.ndarray, c2: np.ndarray, m: np.ndarray) -> np.ndarray:
    return c1[None, :] + m[:, None] * (c2 - c1)[None, :]


def albedo(tex: Texture, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Albedo of ``tex`` at points ``(x, y, z)``.

    Args:
        tex: the texture.
        x, y, z: ``[M]`` float64 point coordinates in the texture's frame (up to two may be floats,
            e.g. ``z`` on the wall plane).

    Returns:
        ``[M, 3]`` float64 display RGB in [0, 1].
    """
    s = tex.scale
    kind = tex.kind
    c1, c2 = tex.color1, tex.color2
    if kind == "solid":
        m = 0.15 * value_noise(x / s, y / s, z / s, tex.lattice)
    elif kind == "checker":
        cells = np.floor(x / s + tex.phase) + np.floor(y / s) + np.floor(z / s + tex.phase)
        m = np.mod(cells, 2.0)
    elif kind == "stripes":
        d = tex.direction
        v = (x * d[0] + y * d[1] + z * d[2]) / s + tex.phase
        m = (v - np.floor(v) < 0.4).astype(np.float64)
    elif kind == "noise":
        n1 = value_noise(x / s, y / s, z / s, tex.lattice)
        n2 = value_noise(x * (2.7 / s) + 5.3, y * (2.7 / s), z * (2.7 / s), tex.lattice)
        m = np.clip(1.6 * (0.65 * n1 + 0.35 * n2 - 0.5) + 0.5, 0.0, 1.0)
    elif kind == "gradient":
        m = np.clip(y / tex.height, 0.0, 1.0)
        m = m * m * (3.0 - 2.0 * m)
    elif kind == "dots":
        fx = x / s + tex.phase
        fy = y / s
        fz = z / s + tex.phase
        fx, fy, fz = fx - np.round(fx), fy - np.round(fy), fz - np.round(fz)
        m = (fx * fx + fy * fy + fz * fz < 0.09).astype(np.float64)
    elif kind == "wood":
        d = tex.direction
        warp = value_noise(x * (0.5 / s), y * (0.5 / s), z * (0.5 / s), tex.lattice)
        v = (x * d[0] + y * d[1] + z * d[2]) / s + 1.5 * warp + tex.phase
        m = (0.5 + 0.5 * np.sin(2.0 * np.pi * v)) ** 3
        m = 0.85 * m + 0.15 * value_noise(x * (4.0 / s), y * (4.0 / s), z * (0.4 / s), tex.lattice)
    elif kind == "fabric":
        weave = 0.5 + 0.25 * (np.sin(2.0 * np.pi * x / s) * np.sin(2.0 * np.pi * z / s))
        m = 0.6 * weave + 0.4 * value_noise(x * (0.15 / s), y * (0.15 / s), z * (0.15 / s), tex.lattice)
    elif kind == "marble":
        n1 = value_noise(x * (3.0 / s), y * (3.0 / s), z * (3.0 / s), tex.lattice)
        v = (x + 0.6 * z) / s + 2.5 * n1
        m = (1.0 - np.abs(np.sin(np.pi * v))) ** 10
    elif kind == "bricks":
        bh = 0.45 * s
        row = np.floor(y / bh)
        u = x / s + 0.5 * np.mod(row, 2.0)
        col = np.floor(u)
        mortar = ((y / bh - row) < 0.1) | ((u - col) < 0.05)
        n = tex.lattice.shape[0]
        shade = tex.lattice.ravel()[(col.astype(np.intp) % n) * n + (row.astype(np.intp) % n)]
        out = c1[None, :] * (0.85 + 0.3 * shade)[:, None]
        out[mortar] = c2
        return np.clip(out, 0.0, 1.0)
    elif kind == "curtain":
        v = x / s + 0.12 * np.sin(2.0 * np.pi * y / (5.0 * s)) + 0.3 * value_noise(x / s, y / (4 * s), z, tex.lattice)
        fold = 0.72 + 0.28 * np.sin(2.0 * np.pi * v)
        return np.clip(c1[None, :] * fold[:, None], 0.0, 1.0)
    elif kind == "planks":
        col = np.floor(x / s)
        seam = (x / s - col) < 0.03
        n = tex.lattice.shape[0]
        grain = value_noise((x / s - col) * 0.5 + col * 3.1, y * (0.5 / s), col, tex.lattice)
        m = 0.5 + 0.5 * np.sin(2.0 * np.pi * (8.0 * grain + x / (0.2 * s)))
        m = np.where(seam, 1.0, 0.7 * m + 0.3 * tex.lattice.ravel()[col.astype(np.intp) % n])
    else:  # pragma: no cover - make_texture checks
        raise ValueError(f"unknown texture kind {kind!r}")
    m = np.broadcast_to(m, np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)))
    return np.clip(_lerp(c1, c2, m), 0.0, 1.0)
