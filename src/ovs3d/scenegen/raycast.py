"""Analytic ray casting of simple primitives in numpy (vectorised over rays).

Rays are passed as components ``(ox, oy, oz)`` and ``(dx, dy, dz)``: each ``[M]`` float64 arrays, or
Python floats for an origin shared by all rays (a camera centre). Directions need not be unit length:
``t`` is always in units of ``|d|`` (with camera directions ``(x, y, 1)`` in the camera frame, ``t`` is
the z-depth). Every ``intersect`` returns the smallest ``t > t_min`` at which the ray crosses the
primitive's boundary, ``inf`` where it misses; for a ray starting outside a solid that is where it enters.

Primitives are defined in a local frame whose origin is the centre of their base, standing on the
plane ``y = 0`` with ``+y`` up; :class:`Placed` puts one in the world (translation and a yaw about
``+y``). All intersections are closed-form (quadratics and slabs) except the torus quartic, whose first
root is bracketed on a fine grid of the ray's span inside the torus' bounding slab and then bisected to
machine precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INF = np.inf

Vec = tuple[np.ndarray, np.ndarray, np.ndarray]


def pinhole_ray_dirs(rot: np.ndarray, focal: float, cx: float, cy: float, width: int, ss: int, r0: int, r1: int) -> Vec:
    """World directions of the ``ss x ss`` sub-pixel rays of pixel rows ``[r0, r1)`` of a pinhole camera.

    Directions are ``R (x, y, 1)`` in the OpenCV camera frame, so a ray's ``t`` is the z-depth.

    Args:
        rot: ``[3, 3]`` camera-to-world rotation.
        focal: focal length in pixels; ``cx``, ``cy``: principal point in pixels.
        width: image width in pixels.
        ss: sub-pixel samples per pixel side (pixel centres at ``(k + 0.5) / ss``).
        r0: first pixel row; r1: row after the last.

    Returns:
        ``(dx, dy, dz)``, each ``[(r1 - r0) * ss, width * ss]`` float64.
    """
    us = (np.arange(width * ss) + 0.5) / ss
    vs = (np.arange(r0 * ss, r1 * ss) + 0.5) / ss
    xc = ((us - cx) / focal)[None, :]
    yc = ((vs - cy) / focal)[:, None]
    return tuple(rot[i, 0] * xc + rot[i, 1] * yc + rot[i, 2] for i in range(3))


def row_chunks(width: int, height: int, ss: int, chunk_rays: int) -> list[tuple[int, int]]:
    """Row ranges ``[(r0, r1), ...]`` covering ``height`` rows, each with at most ~``chunk_rays`` sub-pixel rays."""
    rows = max(1, chunk_rays // (width * ss * ss))
    return [(r, min(r + rows, height)) for r in range(0, height, rows)]


def _roots(a, b, c):
    """Roots of ``a t^2 + 2 b t + c = 0`` as ``(t_lo, t_hi)``; ``nan`` where there is none (stable form)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        disc = b * b - a * c
        sq = np.sqrt(np.where(disc >= 0.0, disc, np.nan))
        q = -b - np.where(b >= 0.0, sq, -sq)
        r1 = q / a
        r2 = c / q
        return np.fmin(r1, r2), np.fmax(r1, r2)


def _take(best, t, ok, t_min):
    """``min(best, t)`` where ``ok`` and ``t > t_min``; comparisons with ``nan`` are false."""
    with np.errstate(invalid="ignore"):
        return np.where(ok & (t > t_min) & (t < best), t, best)


def _full(shape_like, value=INF) -> np.ndarray:
    return np.full(np.shape(shape_like), value, dtype=np.float64)


def _normalize(x, y, z) -> Vec:
    n = np.sqrt(x * x + y * y + z * z)
    n = np.where(n > 0.0, n, 1.0)
    return x / n, y / n, z / n


class Shape:
    """A primitive in its local frame (base centre at the origin, ``+y`` up)."""

    kind: str = "shape"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min: float = 0.0) -> np.ndarray:
        """First boundary crossing ``t > t_min`` of rays ``o + t d`` (local frame), ``[M]``, ``inf`` on miss."""
        raise NotImplementedError

    def normal(self, x, y, z) -> Vec:
        """Unit outward normals ``([M],) * 3`` at surface points ``(x, y, z)`` (local frame)."""
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, float]:
        """Bounding sphere ``(centre [3], radius)`` in the local frame."""
        raise NotImplementedError

    def footprint(self) -> float:
        """Radius of the disc (around the local ``y`` axis) the primitive covers on the table."""
        raise NotImplementedError

    def top(self) -> float:
        """Height of the highest point."""
        raise NotImplementedError

    def sample_surface(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points on the visible surface (above the table) and their normals, both ``[n, 3]`` local."""
        raise NotImplementedError


@dataclass
class Sphere(Shape):
    """Sphere of radius ``radius`` centred at ``(0, cy, 0)``."""

    radius: float
    cy: float
    kind = "sphere"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        oy = oy - self.cy
        a = dx * dx + dy * dy + dz * dz
        b = ox * dx + oy * dy + oz * dz
        c = ox * ox + oy * oy + oz * oz - self.radius**2
        t1, t2 = _roots(a, b, c)
        best = _take(_full(a), t2, True, t_min)
        return _take(best, t1, True, t_min)

    def normal(self, x, y, z):
        return _normalize(x, y - self.cy, z)

    def bounds(self):
        return np.array([0.0, self.cy, 0.0]), self.radius

    def footprint(self):
        return self.radius

    def top(self):
        return self.cy + self.radius

    def sample_surface(self, rng, n):
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v * self.radius + np.array([0.0, self.cy, 0.0]), v


@dataclass
class Ellipsoid(Shape):
    """Axis-aligned ellipsoid with semi-axes ``axes = (ax, ay, az)`` centred at ``(0, cy, 0)``."""

    axes: tuple[float, float, float]
    cy: float
    kind = "ellipsoid"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        ax, ay, az = self.axes
        return Sphere(1.0, 0.0).intersect(ox / ax, (oy - self.cy) / ay, oz / az, dx / ax, dy / ay, dz / az, t_min)

    def normal(self, x, y, z):
        ax, ay, az = self.axes
        return _normalize(x / ax**2, (y - self.cy) / ay**2, z / az**2)

    def bounds(self):
        return np.array([0.0, self.cy, 0.0]), float(max(self.axes))

    def footprint(self):
        return float(max(self.axes[0], self.axes[2]))

    def top(self):
        return self.cy + self.axes[1]

    def sample_surface(self, rng, n):
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        axes = np.asarray(self.axes)
        p = v * axes
        nrm = v / axes
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        return p + np.array([0.0, self.cy, 0.0]), nrm


@dataclass
class Box(Shape):
    """Box with half extents ``half = (hx, hy, hz)`` standing on ``y = 0`` (centre ``(0, hy, 0)``)."""

    half: tuple[float, float, float]
    kind = "box"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        hx, hy, hz = self.half
        t_near = None
        t_far = None
        with np.errstate(divide="ignore", invalid="ignore"):
            for o, d, h in ((ox, dx, hx), (oy - hy, dy, hy), (oz, dz, hz)):
                inv = 1.0 / d
                ta = (-h - o) * inv
                tb = (h - o) * inv
                lo, hi = np.fmin(ta, tb), np.fmax(ta, tb)
                t_near = lo if t_near is None else np.fmax(t_near, lo)
                t_far = hi if t_far is None else np.fmin(t_far, hi)
            ok = t_near <= t_far
        best = _take(_full(t_near), t_far, ok, t_min)
        return _take(best, t_near, ok, t_min)

    def normal(self, x, y, z):
        hx, hy, hz = self.half
        r = np.stack([np.abs(x) / hx, np.abs(y - hy) / hy, np.abs(z) / hz])
        axis = np.argmax(r, axis=0)
        comps = []
        for i, v in enumerate((x, y - hy, z)):
            comps.append(np.where(axis == i, np.sign(v), 0.0))
        return comps[0], comps[1], comps[2]

    def bounds(self):
        return np.array([0.0, self.half[1], 0.0]), float(np.linalg.norm(self.half))

    def footprint(self):
        return float(np.hypot(self.half[0], self.half[2]))

    def top(self):
        return 2.0 * self.half[1]

    def sample_surface(self, rng, n):
        h = np.asarray(self.half)
        # faces +-x, +-z, +y (the bottom touches the table), area-weighted
        faces = [(0, 1.0), (0, -1.0), (2, 1.0), (2, -1.0), (1, 1.0)]
        areas = np.array([4 * h[(a + 1) % 3] * h[(a + 2) % 3] for a, _ in faces])
        pick = rng.choice(len(faces), size=n, p=areas / areas.sum())
        p = (rng.random((n, 3)) * 2.0 - 1.0) * h
        nrm = np.zeros((n, 3))
        for k, (axis, sign) in enumerate(faces):
            sel = pick == k
            p[sel, axis] = sign * h[axis]
            nrm[sel, axis] = sign
        return p + np.array([0.0, h[1], 0.0]), nrm


@dataclass
class Cylinder(Shape):
    """Vertical cylinder of radius ``radius`` from ``y = 0`` to ``y = height`` (closed by two discs)."""

    radius: float
    height: float
    kind = "cylinder"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        r, h = self.radius, self.height
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        c = ox * ox + oz * oz - r * r
        t1, t2 = _roots(a, b, c)
        best = _full(dy * a)
        for t in (t1, t2):
            y = oy + t * dy
            best = _take(best, t, (y >= 0.0) & (y <= h), t_min)
        with np.errstate(divide="ignore", invalid="ignore"):
            for yc in (0.0, h):
                t = (yc - oy) / dy
                x, z = ox + t * dx, oz + t * dz
                best = _take(best, t, x * x + z * z <= r * r, t_min)
        return best

    def normal(self, x, y, z):
        rho = np.sqrt(x * x + z * z)
        d_side = np.abs(rho - self.radius)
        top = np.abs(y - self.height) < d_side
        bottom = np.abs(y) < np.minimum(d_side, np.abs(y - self.height))
        sx, _, sz = _normalize(x, 0.0 * y, z)
        ny = np.where(top, 1.0, np.where(bottom, -1.0, 0.0))
        side = ~(top | bottom)
        return np.where(side, sx, 0.0), ny, np.where(side, sz, 0.0)

    def bounds(self):
        return np.array([0.0, self.height / 2, 0.0]), float(np.hypot(self.radius, self.height / 2))

    def footprint(self):
        return self.radius

    def top(self):
        return self.height

    def sample_surface(self, rng, n):
        r, h = self.radius, self.height
        side_area, cap_area = 2 * np.pi * r * h, np.pi * r * r
        on_cap = rng.random(n) < cap_area / (side_area + cap_area)
        phi = rng.random(n) * 2 * np.pi
        rho = np.where(on_cap, r * np.sqrt(rng.random(n)), r)
        y = np.where(on_cap, h, rng.random(n) * h)
        p = np.stack([rho * np.cos(phi), y, rho * np.sin(phi)], axis=1)
        nrm = np.where(on_cap[:, None], [0.0, 1.0, 0.0], np.stack([np.cos(phi), 0 * phi, np.sin(phi)], 1))
        return p, nrm


@dataclass
class Cone(Shape):
    """Upright cone: base disc of radius ``radius`` on ``y = 0``, apex at ``(0, height, 0)``."""

    radius: float
    height: float
    kind = "cone"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        r, h = self.radius, self.height
        k2 = (r / h) ** 2
        w = h - oy
        a = dx * dx + dz * dz - k2 * dy * dy
        b = ox * dx + oz * dz + k2 * w * dy
        c = ox * ox + oz * oz - k2 * w * w
        t1, t2 = _roots(a, b, c)
        best = _full(a)
        for t in (t1, t2):
            y = oy + t * dy
            best = _take(best, t, (y >= 0.0) & (y <= h), t_min)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -oy / dy
            x, z = ox + t * dx, oz + t * dz
            best = _take(best, t, x * x + z * z <= r * r, t_min)
        return best

    def normal(self, x, y, z):
        r, h = self.radius, self.height
        k = r / h
        rho = np.sqrt(x * x + z * z)
        d_side = np.abs(rho - k * (h - y)) / np.sqrt(1.0 + k * k)
        bottom = np.abs(y) < d_side
        # gradient of x^2 + z^2 - k^2 (h - y)^2 is (2x, 2 k^2 (h - y), 2z)
        sx, sy, sz = _normalize(x, k * k * (h - y), z)
        return np.where(bottom, 0.0, sx), np.where(bottom, -1.0, sy), np.where(bottom, 0.0, sz)

    def bounds(self):
        return np.array([0.0, self.height / 2, 0.0]), float(np.hypot(self.radius, self.height / 2))

    def footprint(self):
        return self.radius

    def top(self):
        return self.height

    def sample_surface(self, rng, n):
        r, h = self.radius, self.height
        # uniform on the lateral surface: radius fraction ~ sqrt(U) measured from the apex
        s = np.sqrt(rng.random(n))
        phi = rng.random(n) * 2 * np.pi
        rho = r * s
        y = h * (1.0 - s)
        p = np.stack([rho * np.cos(phi), y, rho * np.sin(phi)], axis=1)
        k = r / h
        nrm = np.stack([np.cos(phi), np.full(n, k), np.sin(phi)], axis=1)
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
        return p, nrm


@dataclass
class Capsule(Shape):
    """Vertical capsule of radius ``radius`` from ``y = 0`` to ``y = height`` (``height >= 2 radius``)."""

    radius: float
    height: float
    kind = "capsule"

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        r, h = self.radius, self.height
        lo, hi = r, h - r
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        c = ox * ox + oz * oz - r * r
        t1, t2 = _roots(a, b, c)
        best = _full(dy * a)
        for t in (t1, t2):
            y = oy + t * dy
            best = _take(best, t, (y >= lo) & (y <= hi), t_min)
        a3 = a + dy * dy
        for yc, upper in ((lo, False), (hi, True)):
            w = oy - yc
            t1, t2 = _roots(a3, b + w * dy, c + w * w)
            for t in (t1, t2):
                y = oy + t * dy
                best = _take(best, t, (y >= yc) if upper else (y <= yc), t_min)
        return best

    def normal(self, x, y, z):
        r, h = self.radius, self.height
        return _normalize(x, y - np.clip(y, r, h - r), z)

    def bounds(self):
        return np.array([0.0, self.height / 2, 0.0]), self.height / 2

    def footprint(self):
        return self.radius

    def top(self):
        return self.height

    def sample_surface(self, rng, n):
        r, h = self.radius, self.height
        v = rng.normal(size=(n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        # split: the sphere direction gives the hemispheres, the side gets a uniform height
        side = rng.random(n) < (h - 2 * r) / (h - 2 * r + 2 * r)
        v_side = v.copy()
        v_side[:, 1] = 0.0
        v_side /= np.maximum(np.linalg.norm(v_side, axis=1, keepdims=True), 1e-12)
        nrm = np.where(side[:, None], v_side, v)
        centre_y = np.where(side, r + rng.random(n) * (h - 2 * r), np.where(v[:, 1] >= 0, h - r, r))
        p = nrm * r + np.stack([0 * centre_y, centre_y, 0 * centre_y], axis=1)
        return p, nrm


@dataclass
class Torus(Shape):
    """Torus lying flat (axis ``+y``): ring radius ``major``, tube radius ``minor``, centre ``(0, cy, 0)``."""

    major: float
    minor: float
    cy: float
    kind = "torus"
    n_samples: int = 48
    """Samples along the ray's span to bracket the first root before bisection."""

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min=0.0):
        big, small = self.major, self.minor
        oy = oy - self.cy
        # span of the ray inside the slab |y| <= minor and the cylinder rho <= major + minor
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (-small - oy) / dy, (small - oy) / dy
            lo, hi = np.fmin(ta, tb), np.fmax(ta, tb)
            flat = dy == 0.0
            inside_slab = np.abs(oy) <= small
            lo = np.where(flat, np.where(inside_slab, -INF, INF), lo)
            hi = np.where(flat, np.where(inside_slab, INF, -INF), hi)
            c1, c2 = _roots(dx * dx + dz * dz, ox * dx + oz * dz, ox * ox + oz * oz - (big + small) ** 2)
            lo = np.maximum(np.fmax(lo, c1), t_min)
            hi = np.fmin(hi, c2)
            cand = np.nonzero(hi > lo)[0]
        out = np.full(np.shape(lo), INF)
        if cand.size == 0:
            return out

        def pick(v):
            return v[cand] if np.ndim(v) else np.full(cand.size, float(v))

        dx, dy, dz = pick(dx), pick(dy), pick(dz)
        lo, hi = lo[cand], hi[cand]
        # restart the ray at the start of its span with a unit direction: s = (t - lo) |d|
        dn = np.sqrt(dx * dx + dy * dy + dz * dz)
        ux, uy, uz = dx / dn, dy / dn, dz / dn
        px, py, pz = pick(ox) + lo * dx, pick(oy) + lo * dy, pick(oz) + lo * dz
        # f(s) = (|p + s u|^2 + R^2 - r^2)^2 - 4 R^2 ((px + s ux)^2 + (pz + s uz)^2), a monic quartic in s
        b = px * ux + py * uy + pz * uz
        e = px * px + py * py + pz * pz + big * big - small * small
        r4 = 4.0 * big * big
        k3 = 4.0 * b
        k2 = 4.0 * b * b + 2.0 * e - r4 * (ux * ux + uz * uz)
        k1 = 4.0 * b * e - 2.0 * r4 * (px * ux + pz * uz)
        k0 = e * e - r4 * (px * px + pz * pz)

        def quartic(s, k3=k3, k2=k2, k1=k1, k0=k0):
            return (((s + k3) * s + k2) * s + k1) * s + k0

        span = (hi - lo) * dn
        ss = span[:, None] * np.linspace(0.0, 1.0, self.n_samples)[None, :]  # [m, S]
        inside = quartic(ss, k3[:, None], k2[:, None], k1[:, None], k0[:, None]) < 0.0
        hit = np.nonzero(inside.any(axis=1))[0]
        if hit.size == 0:
            return out
        k = np.argmax(inside[hit], axis=1)
        s_hi = ss[hit, k]
        s_lo = np.where(k > 0, ss[hit, np.maximum(k - 1, 0)], s_hi)
        coeffs = (k3[hit], k2[hit], k1[hit], k0[hit])
        for _ in range(36):  # bracket span / 2^36: far below a pixel's footprint
            mid = 0.5 * (s_lo + s_hi)
            neg = quartic(mid, *coeffs) < 0.0
            s_hi = np.where(neg, mid, s_hi)
            s_lo = np.where(neg, s_lo, mid)
        out[cand[hit]] = lo[hit] + s_hi / dn[hit]
        return out

    def normal(self, x, y, z):
        big, small = self.major, self.minor
        y = y - self.cy
        q = x * x + y * y + z * z + big * big - small * small
        return _normalize(q * x - 2.0 * big * big * x, q * y, q * z - 2.0 * big * big * z)

    def bounds(self):
        return np.array([0.0, self.cy, 0.0]), self.major + self.minor

    def footprint(self):
        return self.major + self.minor

    def top(self):
        return self.cy + self.minor

    def sample_surface(self, rng, n):
        big, small = self.major, self.minor
        # rejection-sample the tube angle so that points are uniform in area
        theta = rng.random(4 * n) * 2 * np.pi
        keep = rng.random(4 * n) < (big + small * np.cos(theta)) / (big + small)
        theta = theta[keep][:n]
        n = theta.size
        phi = rng.random(n) * 2 * np.pi
        nrm = np.stack([np.cos(theta) * np.cos(phi), np.sin(theta), np.cos(theta) * np.sin(phi)], axis=1)
        centre = np.stack([big * np.cos(phi), np.full(n, self.cy), big * np.sin(phi)], axis=1)
        return centre + small * nrm, nrm


@dataclass
class Placed:
    """A primitive placed in the world: local point ``p`` is at ``R_y(yaw) p + position``."""

    shape: Shape
    position: np.ndarray
    """``[3]`` world position of the local origin (the centre of the base)."""
    yaw: float = 0.0
    """Rotation about world ``+y`` in radians."""

    def __post_init__(self) -> None:
        self.position = np.asarray(self.position, dtype=np.float64)
        self._c = float(np.cos(self.yaw))
        self._s = float(np.sin(self.yaw))

    def rotation(self) -> np.ndarray:
        """``[3, 3]`` local-to-world rotation."""
        c, s = self._c, self._s
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])

    def dir_to_local(self, x, y, z) -> Vec:
        """World vectors to local vectors."""
        c, s = self._c, self._s
        return c * x - s * z, y, s * x + c * z

    def to_local(self, x, y, z) -> Vec:
        """World points to local points."""
        p = self.position
        return self.dir_to_local(x - p[0], y - p[1], z - p[2])

    def dir_to_world(self, x, y, z) -> Vec:
        """Local vectors to world vectors."""
        c, s = self._c, self._s
        return c * x + s * z, y, -s * x + c * z

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """``[n, 3]`` local points to world points."""
        return points @ self.rotation().T + self.position

    def intersect(self, ox, oy, oz, dx, dy, dz, t_min: float = 0.0) -> np.ndarray:
        """World rays (see :class:`Shape.intersect`); ``[M]`` ``t`` in units of the world ``|d|``."""
        lo = self.to_local(ox, oy, oz)
        ld = self.dir_to_local(dx, dy, dz)
        return self.shape.intersect(*lo, *ld, t_min=t_min)

    def normal(self, x, y, z) -> Vec:
        """World unit normals at world surface points."""
        return self.dir_to_world(*self.shape.normal(*self.to_local(x, y, z)))

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """``(centre [3], radius)`` in the world."""
        centre, radius = self.shape.bounds()
        return self.rotation() @ centre + self.position, radius
