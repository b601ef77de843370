"""Simulated foundation models (SPEC §2): test doubles for CLIP, DINO and SAM with documented behaviour.

Real weights cannot be downloaded on our machines, so every stage can also run with these models. Each
one sees a view only through the scene's ``sim/`` folder:

- ``sim/instances.json``: ``{"labels": {"<id>": "<label>", ...}, "sim": {<overrides>}}``; several
  instance ids may share one label; id 0 means "no surface".
- ``sim/instances/<stem>.png``: 16-bit instance-id map of view ``<stem>`` at full resolution.

The view handed to a model (:class:`~ovs3d.foundation.base.ViewImage`) may be at a lower resolution
than its instance map: pixel boxes and feature cells are mapped to instance-map coordinates (scale by
``W0 / W`` and ``H0 / H``, round, at least one pixel) and area fractions are measured there, with
summed-area tables per label / per instance (cached per stem in a small LRU), so that thousands of crops
per view cost a few vectorised array lookups.

Everything is deterministic given the scene and ``seed``: random vectors come from a stable hash
(SHA-256 of the parts and the seed, seeding ``numpy.random.default_rng``) or, for per-crop and per-cell
noise, from a vectorised SplitMix64 counter hash of the crop's instance-map box.

The bracketed defaults of SPEC §2 can be overridden per scene under ``"sim"`` in ``instances.json``;
the accepted keys are those of :data:`SIM_DEFAULTS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovs3d.errors import BackendError
from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.superpixel import SuperpixelMasks

logger = logging.getLogger(__name__)

SIM_DEFAULTS: dict[str, float] = {
    "clip_dim": 512,  # D
    "clip_alpha": 0.35,  # α: weight of the image content against the shared direction g
    "clip_lambda": 0.35,  # λ: leak of each label into its confuser
    "clip_sigma_crop": 0.1,  # σ_c: per-crop noise
    "clip_sigma_view": 0.1,  # σ_v: per-(view, label) noise
    "clip_beta_min": 0.1,  # hubness β(s) ~ U[beta_min, beta_max] from the hash of s
    "clip_beta_max": 0.35,
    "dino_dim": 64,
    "dino_sigma": 0.15,
    "masks_p_split": 0.25,
    "masks_p_merge": 0.15,
    "masks_min_area": 0.002,  # fraction of the image
    "masks_p_drop": 0.1,
}
"""Parameters of the simulated models (SPEC §2 defaults); a scene overrides them under ``"sim"``."""

_INT_PARAMS = {"clip_dim", "dino_dim"}
_PROB_PARAMS = {"masks_p_split", "masks_p_merge", "masks_min_area", "masks_p_drop"}


# ---------------------------------------------------------------------------------------------------
# Stable hashing


def _digest(*parts: Any) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def _seed(*parts: Any) -> int:
    """A 64-bit seed from a stable hash of ``parts``."""
    return int.from_bytes(_digest(*parts)[:8], "little")


def _unit(dim: int, *parts: Any) -> np.ndarray:
    """``[dim]`` float64 unit Gaussian direction seeded by ``parts``."""
    v = np.random.default_rng(_seed(*parts)).standard_normal(dim)
    return v / np.linalg.norm(v)


def _uniform(low: float, high: float, *parts: Any) -> float:
    return float(np.random.default_rng(_seed(*parts)).uniform(low, high))


def clip_confuser(label: str, labels: Sequence[str], seed: int = 0) -> str | None:
    """The label SimCLIP makes ``label`` leak into: a hash pick among the other scene labels (SPEC §2).

    Args:
        label: a scene label.
        labels: all labels of the scene (any order; duplicates ignored).
        seed: the SimCLIP seed.

    Returns:
        The confuser, or ``None`` when the scene has no other label.
    """
    others = [k for k in sorted(set(labels)) if k != label]
    if not others:
        return None
    i = np.random.default_rng(_seed("sim-clip", seed, "confuser", label)).integers(len(others))
    return others[int(i)]


def clip_hubness(
    text: str,
    seed: int = 0,
    beta_range: tuple[float, float] = (SIM_DEFAULTS["clip_beta_min"], SIM_DEFAULTS["clip_beta_max"]),
) -> float:
    """SimCLIP's hubness ``β(s)`` of a string (SPEC §2): how much of the shared direction its text carries."""
    return _uniform(*beta_range, "sim-clip", seed, "beta", text)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _box_keys(base: int, boxes: np.ndarray) -> np.ndarray:
    """``[N]`` uint64 keys from a base seed and ``[N, 4]`` int boxes."""
    keys = np.full(len(boxes), base & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    for c in range(boxes.shape[1]):
        keys = _splitmix64(keys ^ boxes[:, c].astype(np.int64).astype(np.uint64))
    return keys


def _unit_noise(keys: np.ndarray, dim: int) -> np.ndarray:
    """``[N, dim]`` float64 unit Gaussian directions, one per uint64 key (vectorised Box–Muller)."""
    half = (dim + 1) // 2
    with np.errstate(over="ignore"):
        ctr = keys[:, None] + np.arange(1, half + 1, dtype=np.uint64)[None, :] * _GOLDEN
    r = _splitmix64(ctr)  # [N, half]
    u1 = ((r >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0**32
    u2 = ((r & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0**32
    rad = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([rad * np.cos(2 * np.pi * u2), rad * np.sin(2 * np.pi * u2)], axis=1)[:, :dim]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = max(1, int(size))

    def get_or(self, key: Any, make: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


# ---------------------------------------------------------------------------------------------------
# The scene as the simulated models see it


def _summed_area(indicator_maps: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """``[H + 1, W + 1, K]`` int32 summed-area tables of ``K`` boolean ``[H, W]`` maps."""
    sat = np.zeros((height + 1, width + 1, len(indicator_maps)), dtype=np.int32)
    for k, m in enumerate(indicator_maps):
        sat[1:, 1:, k] = np.cumsum(np.cumsum(m, axis=0, dtype=np.int32), axis=1, dtype=np.int32)
    return sat


def _box_sums(sat: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[N, K]`` pixel counts inside ``[N, 4]`` ``(x0, y0, x1, y1)`` boxes (clipped, exclusive ends)."""
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


class _StemTables:
    """Instance map of one view and its lazily built summed-area tables."""

    def __init__(self, scene: SimScene, stem: str, instance_map: np.ndarray) -> None:
        self.scene = scene
        self.stem = stem
        self.map = instance_map  # [H0, W0] int32
        self.height, self.width = instance_map.shape
        self._label_sat: np.ndarray | None = None
        self._inst: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def label_sat(self) -> np.ndarray:
        """``[H0 + 1, W0 + 1, L]`` tables of the scene's labels (in ``scene.label_names`` order)."""
        if self._label_sat is None:
            lab = self.scene.label_index_map(self.map)
            maps = [lab == k for k in range(len(self.scene.label_names))]
            self._label_sat = _summed_area(maps, self.height, self.width)
        return self._label_sat

    @property
    def instance_sat(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [I], tables [H0 + 1, W0 + 1, I])`` of the non-zero instance ids present in the map."""
        if self._inst is None:
            ids = np.unique(self.map)
            ids = ids[ids != 0]
            self._inst = ids, _summed_area([self.map == i for i in ids], self.height, self.width)
        return self._inst

    def map_boxes(self, boxes: np.ndarray, view_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Map view-pixel boxes to instance-map pixels.

        Args:
            boxes: ``[N, 4]`` int ``(x0, y0, x1, y1)`` at the view's resolution (may reach outside).
            view_size: ``(W, H)`` of the view.

        Returns:
            ``(full [N, 4] int64 unclipped boxes, clipped [N, 4] int64 boxes)`` in instance-map pixels;
            every unclipped box is at least one pixel wide and high.
        """
        w, h = view_size
        sx, sy = self.width / w, self.height / h
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        full = np.floor(b * np.array([sx, sy, sx, sy]) + 0.5).astype(np.int64)
        full[:, 2] = np.maximum(full[:, 2], full[:, 0] + 1)
        full[:, 3] = np.maximum(full[:, 3], full[:, 1] + 1)
        clipped = full.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, self.width)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, self.height)
        return full, clipped

    def fractions(
        self, boxes: np.ndarray, view_size: tuple[int, int], by: str, content: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Area fractions of labels (``by="label"``) or instances (``by="instance"``) in view boxes.

        The denominator is the box's whole area in instance-map pixels: pixels outside the image
        (padding) and pixels with id 0 count as nothing, so rows sum to at most 1. With ``content``
        (``[N, 4]`` view-pixel boxes, mapped like ``boxes``) only pixels inside ``box ∩ content`` are
        counted; the rest of the box counts as padding (the denominator is unchanged).

        Returns:
            ``(fractions [N, K] float64, full boxes [N, 4] int64)``.
        """
        full, clipped = self.map_boxes(boxes, view_size)
        if content is not None:
            _, c = self.map_boxes(content, view_size)
            clipped = clipped.copy()
            clipped[:, :2] = np.maximum(clipped[:, :2], c[:, :2])
            clipped[:, 2:] = np.maximum(np.minimum(clipped[:, 2:], c[:, 2:]), clipped[:, :2])  # empty: x1 = x0
        sat = self.label_sat if by == "label" else self.instance_sat[1]
        counts = _box_sums(sat, clipped).astype(np.float64)
        area = ((full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])).astype(np.float64)
        return counts / area[:, None], full


class SimScene:
    """What the simulated models observe of a scene: ``sim/instances.json`` and ``sim/instances/*.png``.

    Args:
        root: the scene folder (must contain ``sim/instances.json``).
        cache_size: instance maps (with their summed-area tables) kept in memory.

    Attributes:
        root: the scene folder.
        labels: ``{instance id: label}``.
        label_names: the distinct labels, sorted.
        params: :data:`SIM_DEFAULTS` updated by the scene's ``"sim"`` overrides.
        overrides: the overrides alone.
        content_hash: SHA-256 (hex) of ``instances.json`` and every instance map (name and bytes).

    Raises:
        BackendError: ``sim/instances.json`` is missing or malformed, or an override is unknown/invalid.
    """

    def __init__(self, root: str | Path, cache_size: int = 8) -> None:
        self.root = Path(root)
        self.sim_dir = self.root / "sim"
        json_path = self.sim_dir / "instances.json"
        if not json_path.is_file():
            raise BackendError(
                f"simulated backends need {json_path}, which only synthetic scenes have (ovs3d make-scene); "
                "for a real scene pass real backends, e.g. --clip open_clip:ViT-B-16:/path/to/weights.bin"
            )
        raw = json_path.read_bytes()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise BackendError(f"{json_path} is not valid JSON ({e}); re-generate the scene") from e
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, dict) or not labels:
            raise BackendError(f'{json_path} needs a non-empty "labels": {{"<id>": "<label>"}} mapping')
        self.labels: dict[int, str] = {}
        for key, name in labels.items():
            try:
                iid = int(key)
            except (TypeError, ValueError):
                iid = -1
            if iid < 1 or iid > 65535 or not isinstance(name, str) or not name:
                raise BackendError(
                    f"{json_path}: bad label entry {key!r}: {name!r} (ids are integers 1..65535, labels strings)"
                )
            self.labels[iid] = name
        self.label_names: list[str] = sorted(set(self.labels.values()))
        overrides = data.get("sim", {}) or {}
        if not isinstance(overrides, dict):
            raise BackendError(f'{json_path}: "sim" must be an object of parameter overrides')
        unknown = sorted(set(overrides) - set(SIM_DEFAULTS))
        if unknown:
            raise BackendError(
                f'{json_path}: unknown simulated-model parameter(s) {unknown} under "sim"; '
                f"accepted: {', '.join(SIM_DEFAULTS)}"
            )
        self.params: dict[str, float] = dict(SIM_DEFAULTS)
        for k, v in overrides.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise BackendError(f"{json_path}: sim.{k} must be a number, got {v!r}")
            if k in _INT_PARAMS and (int(v) != v or v < 1):
                raise BackendError(f"{json_path}: sim.{k} must be a positive integer, got {v!r}")
            if k in _PROB_PARAMS and not 0.0 <= v <= 1.0:
                raise BackendError(f"{json_path}: sim.{k} must be in [0, 1], got {v!r}")
            if v < 0:
                raise BackendError(f"{json_path}: sim.{k} must be >= 0, got {v!r}")
            self.params[k] = int(v) if k in _INT_PARAMS else float(v)
        if self.params["clip_beta_min"] > self.params["clip_beta_max"]:
            raise BackendError(f"{json_path}: sim.clip_beta_min must not exceed sim.clip_beta_max")
        self.overrides = {k: self.params[k] for k in sorted(overrides)}

        h = hashlib.sha256(raw)
        inst_dir = self.sim_dir / "instances"
        if inst_dir.is_dir():
            for p in sorted(inst_dir.glob("*.png")):
                h.update(p.name.encode("utf-8") + b"\0")
                h.update(p.read_bytes())
        self.content_hash = h.hexdigest()

        max_id = max(self.labels)
        self._lut = np.full(max_id + 1, -1, dtype=np.int32)
        index = {name: i for i, name in enumerate(self.label_names)}
        for iid, name in self.labels.items():
            self._lut[iid] = index[name]
        self._tables = _LRU(cache_size)

    def override_tag(self, prefix: str) -> str:
        """``":k=v"`` for each override whose key starts with ``prefix`` (empty if none)."""
        return "".join(f":{k}={v:g}" for k, v in self.overrides.items() if k.startswith(prefix))

    def map_path(self, stem: str) -> Path:
        """``sim/instances/<stem>.png``."""
        return self.sim_dir / "instances" / f"{stem}.png"

    def has_map(self, stem: str | None) -> bool:
        """Whether the view has an instance map."""
        return stem is not None and self.map_path(stem).is_file()

    def label_index_map(self, instance_map: np.ndarray) -> np.ndarray:
        """``[H, W]`` int32 index into :attr:`label_names` per pixel; -1 for id 0 and unlabelled ids."""
        m = instance_map
        out = np.full(m.shape, -1, dtype=np.int32)
        inside = m < len(self._lut)
        out[inside] = self._lut[m[inside]]
        return out

    def instance_map(self, stem: str) -> np.ndarray:
        """``[H0, W0]`` int32 instance ids of view ``stem`` (full resolution)."""
        return self.tables(stem, "SimScene").map

    def tables(self, stem: str | None, who: str) -> _StemTables:
        """The (cached) instance map and tables of a view; ``who`` names the model in errors.

        Raises:
            BackendError: the view has no stem (a rendered novel view) or no instance map.
        """
        if stem is None:
            raise BackendError(
                f"{who} sees a view only through its sim/ instance map, and a rendered novel view (stem=None) "
                "has none; simulated features exist only for the scene's own images"
            )
        return self._tables.get_or(stem, lambda: _StemTables(self, stem, self._read_map(stem, who)))

    def _read_map(self, stem: str, who: str) -> np.ndarray:
        path = self.map_path(stem)
        if not path.is_file():
            raise BackendError(
                f"{who} needs the instance map {path}, which does not exist; re-generate the scene "
                "(ovs3d make-scene) or use a real backend"
            )
        from PIL import Image

        with Image.open(path) as im:
            arr = np.array(im)
        if arr.ndim != 2:
            raise BackendError(f"{path} must be a single-channel 16-bit instance-id PNG, got shape {arr.shape}")
        return arr.astype(np.int32)


def _as_boxes(boxes: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    b = np.asarray(boxes)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x0, y0, x1, y1), got shape {b.shape}")
    b = np.rint(b).astype(np.int64)
    if len(b) and ((b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any()):
        raise ValueError("boxes must be non-empty: x1 > x0 and y1 > y0")
    return b


def _as_content(content: np.ndarray | torch.Tensor | None, boxes: np.ndarray) -> np.ndarray | None:
    """``[N, 4]`` int64 content boxes matching ``boxes``, or ``None``."""
    if content is None:
        return None
    if isinstance(content, torch.Tensor):
        content = content.detach().cpu().numpy()
    c = np.rint(np.asarray(content)).astype(np.int64)
    if c.shape != boxes.shape:
        raise ValueError(f"content boxes must be [N, 4] like the boxes {boxes.shape}, got shape {c.shape}")
    return c


# ---------------------------------------------------------------------------------------------------
# SimCLIP


class SimCLIP:
    """Simulated CLIP (SPEC §2): a :class:`~ovs3d.foundation.base.ClipBackend` test double.

    Behaviour (``D``, ``α``, ``λ``, ``σ_c``, ``σ_v``, β range from :attr:`SimScene.params`):

    - **Text.** Any string ``s`` gets a unit vector ``u(s)`` (stable hash of ``s`` and the seed) and a
      hubness ``β(s) ~ U[0.1, 0.35]`` (hash). A shared unit direction ``g`` is what all images have in
      common. ``encode_text(s) = t(s) = normalize(u(s) + β(s)·g)``; strings that are not scene labels
      work the same way. High-β labels score high everywhere (the absolute-relevancy ambiguity of
      3D-OVS, Fig. 2), so a raw per-pixel argmax is biased towards them; per-label min–max
      normalisation over a view removes most of the bias.
    - **Confusers.** Each scene label ``k`` leaks into one other scene label ``confuser(k)`` (hash pick
      among the other labels): ``e_k = normalize(u(k) + λ·u(confuser(k)))``.
    - **Crops.** For a box, ``a_k`` is the fraction of its pixels (measured on the full-resolution
      instance map; padding outside the image, id 0 and ids without a label count as nothing) showing
      label ``k`` (all its instances together), ``w_k = a_k² / Σ_j a_j²`` (all zero for an empty crop),
      and the embedding (unit norm, although the interface does not require it) is
      ``f = normalize(α·Σ_k w_k (e_k + σ_v·n(view, k)) + g + σ_c·n(view, box))``.
      ``n(view, k)`` is a unit vector seeded by (seed, stem, label): the same object looks a little
      different from view to view. ``n(view, box)`` is seeded by (seed, stem, the box in instance-map
      pixels): overlapping crops disagree a little.

    Boxes may reach outside the image (the outside counts as nothing); likewise, with ``content`` boxes
    the part of a crop outside its content box counts as nothing (a zero-padded crop). Raises
    :class:`~ovs3d.errors.BackendError` for a view without stem or instance map. Outputs are CPU float32.

    Args:
        scene: the scene's ``sim/`` data.
        seed: seed of every random direction.
    """

    def __init__(self, scene: SimScene, seed: int = 0) -> None:
        self.scene = scene
        self.seed = int(seed)
        p = scene.params
        self.dim = int(p["clip_dim"])
        self.alpha = float(p["clip_alpha"])
        self.lam = float(p["clip_lambda"])
        self.sigma_crop = float(p["clip_sigma_crop"])
        self.sigma_view = float(p["clip_sigma_view"])
        self.beta_range = (float(p["clip_beta_min"]), float(p["clip_beta_max"]))
        self.identity = f"sim-clip:v1:seed={self.seed}:scene={scene.content_hash[:12]}{scene.override_tag('clip_')}"
        self._g = _unit(self.dim, "sim-clip", self.seed, "g")
        self._text_cache: dict[str, np.ndarray] = {}
        self._confusers = {k: self._pick_confuser(k) for k in scene.label_names}
        self._e = np.stack([self.label_embedding(k) for k in scene.label_names])  # [L, D]
        self._view_cache = _LRU(64)
        self._crop_base = _seed("sim-clip", self.seed, "crop")

    @classmethod
    def from_scene(cls, root: str | Path, seed: int = 0) -> SimCLIP:
        """Build from a scene folder that has ``sim/instances.json``."""
        return cls(SimScene(root), seed=seed)

    # -- the documented parts, exposed for tests and diagnostics --

    @property
    def common_direction(self) -> np.ndarray:
        """``g``: ``[D]`` float64 unit vector shared by all images."""
        return self._g.copy()

    def text_direction(self, text: str) -> np.ndarray:
        """``u(s)``: ``[D]`` float64 unit vector of a string."""
        return _unit(self.dim, "sim-clip", self.seed, "u", text)

    def hubness(self, text: str) -> float:
        """``β(s)`` in ``[beta_min, beta_max]``."""
        return clip_hubness(text, self.seed, self.beta_range)

    def confuser(self, label: str) -> str | None:
        """The scene label that ``label`` leaks into (``None`` if the scene has a single label)."""
        if label not in self._confusers:
            raise KeyError(f"{label!r} is not a label of the scene ({self.scene.label_names})")
        return self._confusers[label]

    def _pick_confuser(self, label: str) -> str | None:
        return clip_confuser(label, self.scene.label_names, self.seed)

    def label_embedding(self, label: str) -> np.ndarray:
        """``e_k``: ``[D]`` float64 unit vector of what a scene label looks like (with its confuser leak)."""
        conf = self.confuser(label)
        v = self.text_direction(label)
        if conf is not None:
            v = v + self.lam * self.text_direction(conf)
        return v / np.linalg.norm(v)

    def label_fractions(self, view: ViewImage, boxes: np.ndarray, content: np.ndarray | None = None) -> np.ndarray:
        """``a``: ``[N, L]`` fractions of each box showing each label (columns = ``scene.label_names``);
        ``content`` as in :meth:`encode_crops`."""
        b = _as_boxes(boxes)
        tables = self.scene.tables(view.stem, "SimCLIP")
        return tables.fractions(b, view.size, by="label", content=_as_content(content, b))[0]

    def _view_vectors(self, stem: str) -> np.ndarray:
        """``[L, D]``: ``e_k + σ_v·n(view, k)`` for every label."""

        def make() -> np.ndarray:
            noise = np.stack([_unit(self.dim, "sim-clip", self.seed, "view", stem, k) for k in self.scene.label_names])
            return self._e + self.sigma_view * noise

        return self._view_cache.get_or(stem, make)

    # -- ClipBackend --

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``[T, D]`` float32 unit text embeddings ``t(s) = normalize(u(s) + β(s)·g)``."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        out = np.zeros((len(texts), self.dim))
        for i, s in enumerate(texts):
            if s not in self._text_cache:
                v = self.text_direction(s) + self.hubness(s) * self._g
                self._text_cache[s] = v / np.linalg.norm(v)
            out[i] = self._text_cache[s]
        return torch.from_numpy(out.astype(np.float32))

    def encode_crops(self, view: ViewImage, boxes: np.ndarray, *, content: np.ndarray | None = None) -> torch.Tensor:
        """Embed crops; see the class docstring.

        Args:
            view: the image (only ``stem`` and ``size`` are used).
            boxes: ``[N, 4]`` int ``(x0, y0, x1, y1)`` view-pixel boxes, exclusive ends.
            content: optional ``[N, 4]`` int view-pixel boxes: only label pixels inside ``box ∩ content``
                count, the rest of the box is padding (the denominator ``a_k`` stays the whole box area);
                the per-crop noise is still keyed by the whole box. ``None``: the whole box.

        Returns:
            ``[N, D]`` float32 (unit norm).
        """
        b = _as_boxes(boxes)
        c = _as_content(content, b)
        tables = self.scene.tables(view.stem, "SimCLIP")
        if len(b) == 0:
            return torch.zeros(0, self.dim)
        a, full = tables.fractions(b, view.size, by="label", content=c)  # [N, L]
        sq = a * a
        tot = sq.sum(axis=1, keepdims=True)
        w = np.divide(sq, tot, out=np.zeros_like(sq), where=tot > 0)
        content = w @ self._view_vectors(view.stem)  # [N, D]
        noise = _unit_noise(_box_keys(self._crop_base ^ _seed(view.stem), full), self.dim)
        f = self.alpha * content + self._g[None, :] + self.sigma_crop * noise
        return torch.from_numpy(_normalize_rows(f).astype(np.float32))


# ---------------------------------------------------------------------------------------------------
# SimDINO


class SimDINO:
    """Simulated DINO (SPEC §2): a :class:`~ovs3d.foundation.base.DinoBackend` test double.

    Every instance id gets a unit vector ``v(id)`` (dim [64], hash of seed and id; the same in every
    view). The view is cut into ``stride × stride`` cells (``[H // stride, W // stride]``, the remainder
    at the right/bottom is dropped, as a ViT/8 on a cropped input); cell ``(i, j)`` covers view pixels
    ``[stride·j, stride·(j+1)) × [stride·i, stride·(i+1))``, mapped to the full-resolution instance
    map, where ``a_id`` is the fraction of the cell showing instance ``id`` (id 0 counts as nothing).
    The feature is ``normalize(Σ_id a_id·v(id) + σ·n(cell))`` (σ [0.15]), ``n(cell)`` a unit vector
    seeded by (seed, stem, the cell's instance-map box). So features are sharp at instance borders,
    label-free (two instances of one label differ) and consistent across views; two pure cells of one
    instance have cosine ≈ 1/(1+σ²) ≈ 0.98, of two instances ≈ 0.

    Raises :class:`~ovs3d.errors.BackendError` for a view without stem or instance map. Outputs are CPU
    float32.

    Args:
        scene: the scene's ``sim/`` data.
        seed: seed of every random direction.
        stride: pixels per feature cell.
    """

    def __init__(self, scene: SimScene, seed: int = 0, stride: int = 8) -> None:
        self.scene = scene
        self.seed = int(seed)
        self.stride = int(stride)
        self.dim = int(scene.params["dino_dim"])
        self.sigma = float(scene.params["dino_sigma"])
        self.identity = (
            f"sim-dino:v1:seed={self.seed}:stride={self.stride}:scene={scene.content_hash[:12]}"
            f"{scene.override_tag('dino_')}"
        )
        self._vec_cache: dict[int, np.ndarray] = {}
        self._cell_base = _seed("sim-dino", self.seed, "cell")

    @classmethod
    def from_scene(cls, root: str | Path, seed: int = 0, stride: int = 8) -> SimDINO:
        """Build from a scene folder that has ``sim/instances.json``."""
        return cls(SimScene(root), seed=seed, stride=stride)

    def instance_vector(self, iid: int) -> np.ndarray:
        """``v(id)``: ``[dim]`` float64 unit vector of an instance."""
        iid = int(iid)
        if iid not in self._vec_cache:
            self._vec_cache[iid] = _unit(self.dim, "sim-dino", self.seed, "v", iid)
        return self._vec_cache[iid]

    def cell_boxes(self, view: ViewImage) -> np.ndarray:
        """``[h·w, 4]`` view-pixel boxes of the feature cells, row-major."""
        w, h = view.size
        gh, gw = h // self.stride, w // self.stride
        jj, ii = np.meshgrid(np.arange(gw), np.arange(gh))
        x0, y0 = (jj * self.stride).ravel(), (ii * self.stride).ravel()
        return np.stack([x0, y0, x0 + self.stride, y0 + self.stride], axis=1)

    def dense_features(self, view: ViewImage) -> torch.Tensor:
        """``[H // stride, W // stride, dim]`` float32 unit features; see the class docstring."""
        tables = self.scene.tables(view.stem, "SimDINO")
        w, h = view.size
        gh, gw = h // self.stride, w // self.stride
        if gh == 0 or gw == 0:
            return torch.zeros(gh, gw, self.dim)
        ids, _ = tables.instance_sat
        a, full = tables.fractions(self.cell_boxes(view), view.size, by="instance")  # [N, I]
        vecs = np.stack([self.instance_vector(i) for i in ids]) if len(ids) else np.zeros((0, self.dim))
        noise = _unit_noise(_box_keys(self._cell_base ^ _seed(view.stem), full), self.dim)
        f = _normalize_rows(a @ vecs + self.sigma * noise)
        return torch.from_numpy(f.reshape(gh, gw, self.dim).astype(np.float32))


# ---------------------------------------------------------------------------------------------------
# SimMasks


@dataclass
class SimMasksStats:
    """What :class:`SimMasks` did to one view (for tests and diagnostics).

    Attributes:
        components: connected components of all instances.
        split: components split in two.
        pieces: masks after splitting.
        merge_eligible: pieces touching at least one other instance.
        merged: pieces merged with a touching instance.
        dropped_small: masks under the minimum area.
        dropped_random: masks dropped at random.
        kept: masks returned.
    """

    components: int = 0
    split: int = 0
    pieces: int = 0
    merge_eligible: int = 0
    merged: int = 0
    dropped_small: int = 0
    dropped_random: int = 0
    kept: int = 0


_EIGHT = np.ones((3, 3), dtype=bool)


class SimMasks:
    """Simulated SAM automatic masks / panoptic proposals (SPEC §2): a :class:`MaskBackend` test double.

    For a view with an instance map, at the view's resolution (the full-resolution map is resampled by
    nearest neighbour at pixel centres), with one random stream per (seed, stem, view size):

    1. every 8-connected component of every instance id (id 0 excluded) is a candidate mask;
    2. each component is split in two with probability ``p_split`` [0.25] by a straight line of random
       direction, placed at a random quantile (30–70 %) of the component's extent along the line's
       normal (so both halves are non-empty);
    3. each resulting piece that touches (8-neighbourhood) another instance is, with probability
       ``p_merge`` [0.15], merged with one touching instance picked at random: the union with that
       instance's components that touch the piece replaces the piece (pieces touching nothing stay);
    4. masks under ``min_area`` [0.2 %] of the image are dropped;
    5. each remaining mask is dropped with probability ``p_drop`` [10 %];
    6. masks are sorted by area, largest first (stable).

    Masks may overlap (a merged piece covers part of its neighbour). A view with ``stem=None`` or no
    instance map (a rendered novel view) gets the masks of ``fallback`` (superpixels by default).

    Args:
        scene: the scene's ``sim/`` data.
        seed: seed of every random choice.
        fallback: proposer for views without an instance map.
    """

    def __init__(self, scene: SimScene, seed: int = 0, fallback: SuperpixelMasks | None = None) -> None:
        self.scene = scene
        self.seed = int(seed)
        p = scene.params
        self.p_split = float(p["masks_p_split"])
        self.p_merge = float(p["masks_p_merge"])
        self.min_area = float(p["masks_min_area"])
        self.p_drop = float(p["masks_p_drop"])
        self.fallback = fallback if fallback is not None else SuperpixelMasks()
        self.identity = (
            f"sim-masks:v1:seed={self.seed}:scene={scene.content_hash[:12]}{scene.override_tag('masks_')}"
            f":fallback={self.fallback.identity}"
        )

    @classmethod
    def from_scene(cls, root: str | Path, seed: int = 0) -> SimMasks:
        """Build from a scene folder that has ``sim/instances.json``."""
        return cls(SimScene(root), seed=seed)

    def view_instance_map(self, view: ViewImage) -> np.ndarray:
        """``[H, W]`` int32 instance ids at the view's resolution (nearest neighbour)."""
        full = self.scene.tables(view.stem, "SimMasks").map
        w, h = view.size
        h0, w0 = full.shape
        rows = np.minimum(((np.arange(h) + 0.5) * h0 / h).astype(np.int64), h0 - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * w0 / w).astype(np.int64), w0 - 1)
        return full[rows][:, cols]

    def propose(self, view: ViewImage) -> np.ndarray:
        """``[M, H, W]`` bool masks, sorted by area, largest first; see the class docstring."""
        return self.propose_with_stats(view)[0]

    def propose_with_stats(self, view: ViewImage) -> tuple[np.ndarray, SimMasksStats | None]:
        """:meth:`propose` plus what happened (``None`` stats when the fallback proposer was used)."""
        if not self.scene.has_map(view.stem):
            logger.debug("SimMasks: no instance map for view %s, using %s", view.stem, self.fallback.identity)
            return self.fallback.propose(view), None
        from scipy import ndimage

        m = self.view_instance_map(view)
        h, w = m.shape
        rng = np.random.default_rng(_seed("sim-masks", self.seed, view.stem, w, h))
        stats = SimMasksStats()
        ids = np.unique(m)
        ids = ids[ids != 0]
        comp_labels: dict[int, np.ndarray] = {}
        pieces: list[tuple[int, np.ndarray]] = []
        yy, xx = np.mgrid[0:h, 0:w]
        for iid in ids:
            lab, n = ndimage.label(m == iid, structure=_EIGHT)
            comp_labels[int(iid)] = lab
            for c in range(1, n + 1):
                comp = lab == c
                stats.components += 1
                r_split, theta, q = rng.random(), rng.uniform(0.0, np.pi), rng.uniform(0.3, 0.7)
                if r_split < self.p_split:
                    proj = xx[comp] * np.cos(theta) + yy[comp] * np.sin(theta)
                    thr = np.quantile(proj, q)
                    side = proj > thr
                    if side.any() and not side.all():
                        half = np.zeros_like(comp)
                        half[comp] = side
                        pieces += [(int(iid), half), (int(iid), comp & ~half)]
                        stats.split += 1
                        continue
                pieces.append((int(iid), comp))
        stats.pieces = len(pieces)

        masks: list[np.ndarray] = []
        for iid, piece in pieces:
            r_merge, r_pick = rng.random(), rng.random()
            ring = ndimage.binary_dilation(piece, structure=_EIGHT) & ~piece
            near = np.unique(m[ring])
            near = near[(near != 0) & (near != iid)]
            if len(near):
                stats.merge_eligible += 1
                if r_merge < self.p_merge:
                    j = int(near[int(r_pick * len(near))])
                    touching = np.unique(comp_labels[j][ring & (m == j)])
                    touching = touching[touching != 0]
                    piece = piece | np.isin(comp_labels[j], touching)
                    stats.merged += 1
            masks.append(piece)

        min_px = self.min_area * h * w
        kept = []
        for mk in masks:
            if mk.sum() < min_px:
                stats.dropped_small += 1
            else:
                kept.append(mk)
        survivors = []
        for mk in kept:
            if rng.random() < self.p_drop:
                stats.dropped_random += 1
            else:
                survivors.append(mk)
        stats.kept = len(survivors)
        if not survivors:
            return np.zeros((0, h, w), dtype=bool), stats
        out = np.stack(survivors)
        order = np.argsort(-out.sum(axis=(1, 2)), kind="stable")
        return out[order], stats
