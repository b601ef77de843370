"""``ovs3d view``: a live viewer of a run in the browser (viser).

Everything is shown in the frame of the scene's *input* poses (what ``poses_bounds.npy`` or
``transforms.json`` used), which is also the frame of the exported points (``ovs3d.export``): the training
cameras as frustums with thumbnails, the exported point cloud (coloured by RGB or by label, one toggle per
label) and, as the background, a live render of the radiance field from the browser's camera: RGB, depth,
the segmentation overlay, or the relevancy of a free-text query (semantic runs).

The module has two layers:

* pure functions: camera conversion between viser's camera (``wxyz``, ``position``; OpenCV axes: x right,
  y down, z forward) and OpenCV camera-to-world matrices of the input frame, the frame size rule, and
  :func:`render_frame`, which turns a camera into a picture;
* the wiring: :class:`FrameScheduler` (one background thread; the newest camera pose of a client supersedes
  any older request, a render in flight is abandoned between ray chunks when a newer pose arrives) and
  :func:`serve`, which builds the viser scene and GUI.

Resolution rule: while the camera moves, frames are rendered with about :data:`INTERACTIVE_BUDGET_S`
seconds' worth of pixels, using the measured seconds per pixel of the same kind of render (an exponential
moving average over the frames drawn so far); once the camera has rested :data:`STILL_DELAY_S` seconds the
frame is rendered again at the run's own resolution (the semantic resolution; the RGB resolution of a
reconstruction-only run), as many pixels as that resolution has, in the browser's aspect ratio.
"""

from __future__ import annotations

import collections
import copy
import html
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ovs3d.errors import OVS3DError

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("RGB", "depth", "segmentation", "relevancy")
"""Render modes of semantic runs (reconstruction-only runs have the first two)."""
INTERACTIVE_BUDGET_S = 0.3
"""Seconds a frame may take while the camera moves."""
STILL_DELAY_S = 0.4
"""Seconds the camera must rest before the frame is rendered again at the run's resolution."""
MIN_PIXELS = 16 * 12
"""Fewest pixels of an interactive frame (also the first frame of a kind, before any timing exists)."""
MAX_POINTS = 500_000
"""At most this many points are sent to the browser (a fixed random subset of larger clouds)."""
THUMBNAIL_WIDTH = 96
"""Width in pixels of the image on each camera frustum."""
UNLABELLED = -1


# ---------------------------------------------------------------------------------------------------
# cameras


def quat_to_matrix(wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion.

    Args:
        wxyz: ``[4]`` quaternion (scalar first; normalised here).

    Returns:
        ``[3, 3]`` float64 rotation.
    """
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion of a rotation matrix (Shepperd's method).

    Args:
        rot: ``[3, 3]`` rotation.

    Returns:
        ``[4]`` float64 ``wxyz`` with ``w >= 0``.
    """
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def viser_to_c2w(wxyz: np.ndarray, position: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world of the input frame from a viser camera (viser's cameras use OpenCV axes and
    ``wxyz`` is the rotation ``R`` of ``P_world = R p_camera + t``; the viewer's world is the input frame).

    Args:
        wxyz: ``[4]`` camera orientation.
        position: ``[3]`` camera centre.

    Returns:
        ``[3, 4]`` float64.
    """
    c2w = np.empty((3, 4))
    c2w[:, :3] = quat_to_matrix(wxyz)
    c2w[:, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def c2w_to_viser(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`viser_to_c2w`: ``[3, 4]`` OpenCV camera-to-world -> ``(wxyz [4], position [3])``."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return matrix_to_quat(c2w[:3, :3]), c2w[:3, 3].copy()


def camera_intrinsics(fov: float, aspect: float, width: int) -> tuple[int, int, np.ndarray]:
    """Image size and pinhole intrinsics of a frame of the browser's camera.

    Args:
        fov: vertical field of view in radians.
        aspect: width over height of the browser's canvas.
        width: frame width in pixels.

    Returns:
        ``(w, h, intrinsics [4] float32 (fx, fy, cx, cy))``; the frame spans the canvas' field of view
        exactly in both directions (``h = round(w / aspect)``).
    """
    w = max(1, int(width))
    h = max(1, int(round(w / aspect)))
    t = math.tan(0.5 * fov)
    fx, fy = w / (2.0 * aspect * t), h / (2.0 * t)
    return w, h, np.array([fx, fy, w / 2.0, h / 2.0], dtype=np.float32)


def training_camera(scene, view: int) -> tuple[np.ndarray, float, float]:
    """A training view as the viewer sees it.

    Returns:
        ``(c2w [3, 4] OpenCV camera-to-world in the input frame, vertical fov in radians, aspect w / h)``.
    """
    from ovs3d.render.scene_rays import c2w_to_input

    w, h = scene.image_size(1.0)
    fy = float(scene.intrinsics_at(1.0)[view][1])
    return c2w_to_input(scene, scene.c2w[view]), 2.0 * math.atan(0.5 * h / fy), w / h


def up_direction(c2w_input: np.ndarray) -> np.ndarray:
    """``[3]`` unit "up" of a set of cameras: the mean of their ``-y`` axes (OpenCV y points down).

    Args:
        c2w_input: ``[N, 3, 4]`` camera-to-world matrices.
    """
    up = -np.asarray(c2w_input, dtype=np.float64)[:, :3, 1].mean(0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


# ---------------------------------------------------------------------------------------------------
# resolution


def frame_size(aspect: float, pixels: int) -> tuple[int, int]:
    """``(w, h)`` of a frame of about ``pixels`` pixels in the canvas' aspect ratio (each side at least 4)."""
    aspect = min(max(float(aspect), 0.1), 10.0)
    w = max(4, int(round(math.sqrt(max(pixels, 16) * aspect))))
    return w, max(4, int(round(w / aspect)))


def interactive_pixels(
    seconds_per_pixel: float | None,
    still_pixels: int,
    budget_s: float = INTERACTIVE_BUDGET_S,
    min_pixels: int = MIN_PIXELS,
) -> int:
    """Pixels of a frame drawn while the camera moves.

    Args:
        seconds_per_pixel: measured time per pixel of this kind of frame (None: not measured yet).
        still_pixels: pixels of the still frame (the run's resolution); never exceeded.
        budget_s: seconds a frame may take.
        min_pixels: fewest pixels (also the size of a first, unmeasured frame).

    Returns:
        ``min(still_pixels, max(min_pixels, budget_s / seconds_per_pixel))``.
    """
    floor = min(min_pixels, still_pixels)
    if seconds_per_pixel is None or seconds_per_pixel <= 0:
        return floor
    return int(max(floor, min(still_pixels, round(budget_s / seconds_per_pixel))))


def update_seconds_per_pixel(previous: float | None, seconds: float, pixels: int) -> float:
    """The running estimate of seconds per pixel after a frame: the mean of the previous estimate and the
    frame's own (an exponential moving average; the frame's fixed costs count as per-pixel, which errs on the
    small side for small frames)."""
    now = seconds / max(int(pixels), 1)
    return now if previous is None else 0.5 * previous + 0.5 * now


# ---------------------------------------------------------------------------------------------------
# the loaded run


@dataclass
class ViewerState:
    """A run ready to render from any camera.

    Attributes:
        run: the run folder.
        scene: its :class:`~ovs3d.io.scene.Scene`.
        method_name: ``cfg.method`` (``rgb`` for reconstruction-only runs).
        method: the trained :class:`~ovs3d.methods.base.SemanticMethod`, or None (``rgb``).
        trained: the radiance field RGB and depth frames are drawn with (the method's for semantic runs).
        still_downscale: the run's resolution (semantic downscale; RGB downscale of ``rgb`` runs).
        holdout: whether the annotated views were held out of training.
        negatives: ``[N, D]`` unit embeddings of the relevancy negatives (semantic runs).
        encode: ``texts -> [Q, D]`` unit text embeddings (semantic runs; builds the CLIP backend on first use).
        palette: ``[C, 3]`` uint8 label colours.
        depth_range: camera depths drawn dark blue and dark red (normalised world units).
    """

    run: Path
    scene: Any
    method_name: str
    method: Any
    trained: Any
    still_downscale: float
    holdout: bool = False
    negatives: Tensor | None = None
    encode: Callable[[list[str]], Tensor] | None = None
    palette: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))
    depth_range: tuple[float, float] = (0.0, 1.0)
    _queries: dict[str, Tensor] = field(default_factory=dict, repr=False)
    _one_scale: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def semantic(self) -> bool:
        """Whether the run has a language field (segmentation and queries)."""
        return self.method is not None

    @property
    def classes(self) -> list[str]:
        return list(self.scene.classes)

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.semantic else MODES[:2]

    @property
    def scales(self) -> np.ndarray | None:
        """``[S]`` world scales (normalised units) of a scale-conditioned method (LERF), else None."""
        s = getattr(self.method, "scales", None)
        return None if s is None else np.asarray(torch.as_tensor(s).cpu(), dtype=np.float64)

    @property
    def still_pixels(self) -> int:
        w, h = self.scene.image_size(self.still_downscale)
        return int(w * h)

    def embed(self, text: str) -> Tensor:
        """``[1, D]`` unit embedding of a query text (cached)."""
        if self.encode is None:
            raise OVS3DError(f"{self.run} is a reconstruction-only run: it has no language to query")
        if text not in self._queries:
            self._queries[text] = self.encode([text]).float().cpu()
        return self._queries[text]

    def method_at_scale(self, index: int):
        """The method rendering its language features at one of its query scales only (LERF; S times
        cheaper than all of them). Falls back to the method itself for methods without scales."""
        if self.scales is None:
            return self.method
        if index not in self._one_scale:
            cls = type(self.method)
            fixed = torch.as_tensor(self.method.scales)[index : index + 1].clone()
            one = copy.copy(self.method)
            one.__class__ = type(f"{cls.__name__}AtOneScale", (cls,), {"scales": property(lambda _self: fixed)})
            self._one_scale[index] = one
        return self._one_scale[index]


def load_state(run: Path) -> ViewerState:
    """Load a run for viewing: a semantic run through :func:`ovs3d.query.load_run`, a reconstruction-only
    run (``--method rgb``) as its trained field (one clear error if it is not a finished run)."""
    from ovs3d.eval.visualize import label_palette
    from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
    from ovs3d.methods.registry import RECONSTRUCTION_ONLY
    from ovs3d.run import _load_scene, fit_config_from_run
    from ovs3d.utils.device import resolve_device

    run = Path(run)
    cfg = fit_config_from_run(run)
    if cfg.method == RECONSTRUCTION_ONLY:
        ckpt = run / "checkpoints" / CHECKPOINT_NAME
        if not ckpt.is_file():
            raise OVS3DError(f"{run} has no reconstruction checkpoint yet; run the same `ovs3d fit` command first")
        scene = _load_scene(cfg.scene, cfg.kind)
        trained = load_trained_field(ckpt, resolve_device(cfg.device))
        state = ViewerState(run, scene, cfg.method, None, trained, float(cfg.recon.rgb_downscale), cfg.holdout)
    else:
        from ovs3d.query import load_run

        loaded = load_run(run)
        scene, method = loaded.scene, loaded.method
        state = ViewerState(
            run,
            scene,
            cfg.method,
            method,
            method.trained,
            float(cfg.features.semantic_downscale),
            cfg.holdout,
            negatives=loaded.negatives.float().cpu(),
            encode=loaded.encode,
        )
    state.palette = label_palette(len(scene.classes))
    nf = np.asarray(scene.near_far)
    state.depth_range = (float(np.percentile(nf[:, 0], 5)), float(np.percentile(nf[:, 1], 95)))  # as ovs3d render
    return state


# ---------------------------------------------------------------------------------------------------
# frames


class Superseded(Exception):
    """A newer request replaced the frame being rendered."""


@dataclass(frozen=True)
class FrameOptions:
    """What a frame shows.

    Attributes:
        mode: one of :data:`MODES`.
        query: free text whose relevancy the ``relevancy`` mode draws ("" : the plain RGB render).
        hidden: label indices left out of the segmentation overlay.
        scale: LERF query-scale index, or None for the best scale per image (``method.relevancy``).
    """

    mode: str = "RGB"
    query: str = ""
    hidden: frozenset[int] = frozenset()
    scale: int | None = None


def cost_key(state: ViewerState, options: FrameOptions) -> str:
    """Which kind of render a frame needs (frames of one kind take about the same time per pixel)."""
    if options.mode in ("RGB", "depth") or (options.mode == "relevancy" and not options.query.strip()):
        return "field"
    if options.mode == "relevancy" and options.scale is not None and state.scales is not None:
        return "language@1"
    return "language"


def frame_rays(scene, c2w_input: np.ndarray, intrinsics: np.ndarray, w: int, h: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rays of a frame of a camera of the input frame, in the field's frame.

    Args:
        scene: the scene.
        c2w_input: ``[3, 4]`` OpenCV camera-to-world in the input frame.
        intrinsics: ``[4]`` ``(fx, fy, cx, cy)`` of the ``w`` x ``h`` frame.
        w: frame width.
        h: frame height.

    Returns:
        ``rays_o [R, 3]``, ``rays_d [R, 3]`` (row-major, ``R = h * w``) and ``valid [R]`` bool: rays the
        field can draw (for forward-facing scenes, those heading into the scene, world ``z < 0``; NDC has no
        meaning for the others).
    """
    from ovs3d.render.rays import camera_rays, pixel_grid
    from ovs3d.render.scene_rays import c2w_from_input, camera_rays_in_field

    c2w = c2w_from_input(scene, np.asarray(c2w_input, dtype=np.float64)).astype(np.float32)
    u, v = pixel_grid(w, h)
    # the NDC frame is view 0's at any resolution (it depends on f / size only), so downscale 1 is fine here
    rays_o, rays_d = camera_rays_in_field(scene, c2w, intrinsics, 1.0, u, v)
    valid = torch.isfinite(rays_o).all(-1) & torch.isfinite(rays_d).all(-1)
    if scene.kind == "forward":
        _, d_world = camera_rays(torch.as_tensor(c2w), torch.as_tensor(intrinsics), u, v)
        valid &= d_world[:, 2] < -1e-6
    return rays_o, rays_d, valid


def _check(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise Superseded


def _render_field(state: ViewerState, rays_o, rays_d, chunk: int, should_stop) -> dict[str, np.ndarray]:
    from ovs3d.methods.reconstruction import render_rays_chunked
    from ovs3d.render.scene_rays import ray_near

    near = ray_near(state.scene)
    rgb, depth = [], []
    for i in range(0, rays_o.shape[0], chunk):
        _check(should_stop)
        o, d = rays_o[i : i + chunk], rays_d[i : i + chunk]
        r = render_rays_chunked(state.trained, o, d, near, (1, o.shape[0]))
        rgb.append(r["rgb"].reshape(-1, 3))
        depth.append(r["depth"].reshape(-1))
    if not rgb:
        return {"rgb": np.zeros((0, 3), np.float32), "depth": np.zeros(0, np.float32)}
    return {"rgb": np.concatenate(rgb), "depth": np.concatenate(depth)}


def _render_method(method, scene, rays_o, rays_d, chunk: int, should_stop) -> dict[str, Tensor]:
    from ovs3d.render.scene_rays import ray_near

    near = ray_near(scene)
    parts: list[dict[str, Tensor]] = []
    for i in range(0, rays_o.shape[0], chunk):
        _check(should_stop)
        parts.append(method.render_rays(rays_o[i : i + chunk], rays_d[i : i + chunk], near))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def frame_relevancy(state: ViewerState, render: dict[str, Tensor], query: Tensor, scale: int | None) -> np.ndarray:
    """``[R]`` float32 relevancy of one query over a frame's rays: the best scale over the frame
    (``method.relevancy``), or, for LERF with a chosen scale index, that scale's features."""
    from ovs3d.relevancy import relevancy

    if scale is not None and state.scales is not None:
        lang = render["language"]
        feats = lang[..., 0, :] if lang.shape[-2] == 1 else lang[..., scale, :]  # one-scale render, or all
        rel = relevancy(feats, query, state.negatives)
    else:
        rel = state.method.relevancy(render, query, state.negatives)
    return rel[..., 0].float().cpu().numpy()


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_frame(
    state: ViewerState,
    c2w_input: np.ndarray,
    fov: float,
    aspect: float,
    width: int,
    options: FrameOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """The picture of a camera of the input frame.

    Args:
        state: the loaded run.
        c2w_input: ``[3, 4]`` OpenCV camera-to-world in the input frame (e.g. :func:`viser_to_c2w`).
        fov: vertical field of view in radians.
        aspect: width over height.
        width: frame width in pixels (height ``round(width / aspect)``).
        options: what to draw (default: RGB).
        should_stop: polled between ray chunks; when it returns True the frame is abandoned
            (:class:`Superseded`).
        chunk: rays rendered between two polls.

    Returns:
        ``[H, W, 3]`` uint8 image; pixels the field cannot draw (forward-facing scenes seen from behind) black.
    """
    from ovs3d.eval.visualize import depth_colormap, overlay_segmentation, relevancy_heatmap
    from ovs3d.run import _depth_to_metric

    options = options or FrameOptions()
    if options.mode not in state.modes:
        raise OVS3DError(f"mode {options.mode!r} is not available for this run; choose one of {list(state.modes)}")
    w, h, intr = camera_intrinsics(fov, aspect, width)
    rays_o, rays_d, valid = frame_rays(state.scene, c2w_input, intr, w, h)
    idx = torch.nonzero(valid)[:, 0]
    rays_o, rays_d = rays_o[idx], rays_d[idx]
    n, sel = h * w, idx.numpy()
    key = cost_key(state, options)
    if len(sel) == 0:
        return np.zeros((h, w, 3), np.uint8)

    def scatter(values: np.ndarray, fill: float) -> np.ndarray:
        out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
        out[sel] = values
        return out

    with torch.no_grad():
        if key == "field":
            r = _render_field(state, rays_o, rays_d, max(1, chunk), should_stop)
            rgb = scatter(np.asarray(r["rgb"], np.float32), 0.0).reshape(h, w, 3)
            depth = scatter(np.asarray(r["depth"], np.float32), np.nan).reshape(h, w)
        else:
            method = state.method_at_scale(options.scale) if key == "language@1" else state.method
            r = _render_method(method, state.scene, rays_o, rays_d, max(1, chunk), should_stop)
            rgb = scatter(r["rgb"].float().clamp(0, 1).cpu().numpy(), 0.0).reshape(h, w, 3)
        _check(should_stop)
        if options.mode == "RGB" or (key == "field" and options.mode == "relevancy"):
            img = _to_uint8(rgb)
        elif options.mode == "depth":
            img = depth_colormap(_depth_to_metric(state.scene, depth), *state.depth_range)
        elif options.mode == "segmentation":
            labels = scatter(state.method.predict_labels(r).cpu().numpy().astype(np.int64), UNLABELLED)
            labels = labels.reshape(h, w)
            img = overlay_segmentation(rgb, labels, state.palette[: max(len(state.classes), 1)])
            hide = np.isin(labels, sorted(options.hidden))
            img[hide] = _to_uint8(rgb)[hide]
        else:  # relevancy of the query
            rel = frame_relevancy(state, r, state.embed(options.query.strip()), options.scale)
            img = relevancy_heatmap(scatter(rel, 0.0).reshape(h, w), rgb)
    img[~valid.numpy().reshape(h, w)] = 0
    return img


# ---------------------------------------------------------------------------------------------------
# scheduling


@dataclass
class FrameRecord:
    """One frame sent to a client.

    Attributes:
        client: the client's key.
        quality: ``interactive`` or ``still``.
        width: frame width.
        height: frame height.
        seconds: render time.
        mode: render mode.
        query: the query text of a relevancy frame.
        version: the request it answers.
        at: ``time.monotonic()`` when it was sent.
    """

    client: int
    quality: str
    width: int
    height: int
    seconds: float
    mode: str
    query: str
    version: int
    at: float


@dataclass
class _Request:
    c2w: np.ndarray
    fov: float
    aspect: float
    version: int
    at: float


@dataclass
class _ClientState:
    latest: _Request
    shown_version: int = -1
    shown_quality: str = "interactive"


class FrameScheduler:
    """Renders frames for clients on one background thread.

    Each client has one slot: a new camera pose replaces the pending one (stale requests are never queued)
    and abandons a render in flight at its next ray chunk. A request is first drawn at the interactive size
    (:func:`interactive_pixels` from the measured time per pixel), then again at the still size once the
    camera has rested ``still_delay_s``.

    Args:
        state: the loaded run.
        options: returns the current :class:`FrameOptions` (read once per frame).
        send: ``send(client, image [H, W, 3] uint8, record)`` delivers a frame.
        on_error: called with ``(client, exception)`` when a frame fails (the thread keeps going).
        budget_s: seconds an interactive frame may take.
        still_delay_s: rest before the still frame.
    """

    def __init__(
        self,
        state: ViewerState,
        options: Callable[[], FrameOptions],
        send: Callable[[int, np.ndarray, FrameRecord], None],
        on_error: Callable[[int, Exception], None] | None = None,
        budget_s: float = INTERACTIVE_BUDGET_S,
        still_delay_s: float = STILL_DELAY_S,
    ) -> None:
        self.state, self._options, self._send, self._on_error = state, options, send, on_error
        self.budget_s, self.still_delay_s = float(budget_s), float(still_delay_s)
        self.seconds_per_pixel: dict[str, float] = {}
        self.records: collections.deque[FrameRecord] = collections.deque(maxlen=1000)
        self.enabled = True
        self._clients: dict[int, _ClientState] = {}
        self._version = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="ovs3d-viewer-render", daemon=True)

    def start(self) -> FrameScheduler:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def request(self, client: int, c2w_input: np.ndarray, fov: float, aspect: float) -> int:
        """Ask for a frame of a client's camera (replacing its pending request); returns the request's version."""
        with self._cond:
            self._version += 1
            req = _Request(
                np.asarray(c2w_input, np.float64), float(fov), float(aspect), self._version, time.monotonic()
            )
            if client in self._clients:
                self._clients[client].latest = req
            else:
                self._clients[client] = _ClientState(req)
            self._cond.notify_all()
            return self._version

    def refresh(self) -> None:
        """Draw every client's current camera again (the options changed)."""
        with self._cond:
            for c in self._clients.values():
                self._version += 1
                c.latest = _Request(c.latest.c2w, c.latest.fov, c.latest.aspect, self._version, time.monotonic())
            self._cond.notify_all()

    def forget(self, client: int) -> None:
        with self._cond:
            self._clients.pop(client, None)

    def set_enabled(self, enabled: bool) -> None:
        with self._cond:
            self.enabled = bool(enabled)
            self._cond.notify_all()
        if enabled:
            self.refresh()

    def _next_job(self, now: float) -> tuple[tuple[int, _Request, str] | None, float | None]:
        """The next frame to draw, else how long until a still frame is due (None: nothing to wait for)."""
        if not self.enabled:
            return None, None
        fresh = [(c.latest.at, k) for k, c in self._clients.items() if c.latest.version > c.shown_version]
        if fresh:
            k = min(fresh)[1]
            return (k, self._clients[k].latest, "interactive"), None
        wait: float | None = None
        for k, c in self._clients.items():
            if c.shown_quality == "interactive":
                due = c.latest.at + self.still_delay_s - now
                if due <= 0:
                    return (k, c.latest, "still"), None
                wait = due if wait is None else min(wait, due)
        return None, wait

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    job, wait = self._next_job(time.monotonic())
                    if job is not None:
                        break
                    self._cond.wait(wait)
            self._draw(*job)

    def _superseded(self, client: int, version: int) -> bool:
        c = self._clients.get(client)
        return self._stopped or not self.enabled or c is None or c.latest.version != version

    def _draw(self, client: int, req: _Request, quality: str) -> None:
        options = self._options()
        state = self.state
        key = cost_key(state, options)
        still = state.still_pixels
        spp = self.seconds_per_pixel.get(key)
        pixels = still if quality == "still" else interactive_pixels(spp, still, self.budget_s)
        w, h = frame_size(req.aspect, pixels)
        chunk = 4096 if spp is None else int(min(8192, max(256, 0.1 / spp)))  # about 0.1 s between polls
        try:
            if options.mode == "relevancy" and options.query.strip() and state.semantic:
                state.embed(options.query.strip())  # encode once, outside the timing
            t0 = time.perf_counter()
            img = render_frame(
                state, req.c2w, req.fov, req.aspect, w, options, lambda: self._superseded(client, req.version), chunk
            )
            seconds = time.perf_counter() - t0
        except Superseded:
            return
        except Exception as e:  # noqa: BLE001 (a failing frame must not end the viewer)
            logger.exception("rendering a frame failed")
            with self._cond:
                c = self._clients.get(client)
                if c is not None and c.latest.version == req.version:
                    c.shown_version, c.shown_quality = req.version, "still"
            if self._on_error is not None:
                self._on_error(client, e)
            return
        h = img.shape[0]
        self.seconds_per_pixel[key] = update_seconds_per_pixel(spp, seconds, w * h)
        done = "still" if quality == "still" or w * h >= still else "interactive"
        with self._cond:
            c = self._clients.get(client)
            if c is None:
                return
            if c.latest.version == req.version:
                c.shown_version, c.shown_quality = req.version, done
        record = FrameRecord(client, done, w, h, seconds, options.mode, options.query, req.version, time.monotonic())
        self.records.append(record)
        self._send(client, img, record)


# ---------------------------------------------------------------------------------------------------
# serving


def _import_viser():
    try:
        import viser
    except ImportError as e:
        raise OVS3DError("the viewer needs viser: pip install 'ovs3d[view]'") from e
    return viser


def check_port(host: str, port: int) -> None:
    """Raise :class:`OVS3DError` (one line) unless ``host:port`` can be listened on (port 0: any free port).

    Binds a throw-away socket with the options asyncio's server uses (``SO_REUSEADDR``) to every address the
    host resolves to.
    """
    if port == 0:
        return
    if not 0 < port < 65536:
        raise OVS3DError(f"port {port} is not a TCP port; pass --port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise OVS3DError(
            f"cannot serve on host {host!r} ({e.strerror}); pass --host 127.0.0.1 or an address of this machine"
        ) from e
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                import errno

                if e.errno == errno.EADDRINUSE:
                    raise OVS3DError(f"port {port} on {host} is in use; pass --port N or stop the other program") from e
                raise OVS3DError(
                    f"cannot listen on port {port} on {host} ({e.strerror}); pass --port N or another --host"
                ) from e


def _url(host: str, port: int) -> str:
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _load_points(run: Path):
    """The run's exported point cloud (:func:`ovs3d.export.load_points`; bakes ``RUN/export`` if missing)."""
    from ovs3d.export import load_points

    return load_points(run)


def _slug(text: str) -> str:
    from ovs3d.run import slugify

    return slugify(text)


class Viewer:
    """A running viewer.

    Attributes:
        server: the :class:`viser.ViserServer`.
        url: where to open it.
        state: the loaded run.
        scheduler: the frame scheduler (``scheduler.records``: the frames sent).
    """

    def __init__(self, server, url: str, state: ViewerState, points=None, points_note: str = "") -> None:
        self.server, self.url, self.state = server, url, state
        self.points, self._points_note = points, points_note
        self._stopped = threading.Event()
        self._gui: dict[str, Any] = {}
        self._label_boxes: list[Any] = []
        self._point_nodes: dict[int, Any] = {}
        self.scheduler = FrameScheduler(state, self.options, self._send, self._on_error)

    # -- options ---------------------------------------------------------------------------------------

    def options(self) -> FrameOptions:
        """The GUI's current :class:`FrameOptions`."""
        g = self._gui
        scale = None
        if "scale" in g and int(g["scale"].value) > 0:
            scale = int(g["scale"].value) - 1
        hidden = frozenset(i for i, box in enumerate(self._label_boxes) if not box.value)
        query = g["query"].value if "query" in g else ""
        return FrameOptions(mode=str(g["mode"].value), query=str(query), hidden=hidden, scale=scale)

    # -- scene -------------------------------------------------------------------------------------------

    def _build(self) -> None:
        from ovs3d.render.scene_rays import c2w_to_input, input_scale

        server, state, scene = self.server, self.state, self.state.scene
        cams = c2w_to_input(scene, np.asarray(scene.c2w))  # [N, 3, 4]
        centres = cams[:, :, 3]
        extent = float(np.max(np.ptp(centres, axis=0))) if len(centres) > 1 else 0.0
        xyz = None if self.points is None else np.asarray(self.points.xyz, dtype=np.float64)
        if xyz is not None and len(xyz):
            lo, hi = np.percentile(xyz, 10, axis=0), np.percentile(xyz, 90, axis=0)  # not distant backgrounds
            extent = max(extent, float(np.max(hi - lo)))
        if extent <= 0:
            extent = float(np.mean(np.asarray(scene.near_far))) * input_scale(scene)
        self.extent = extent = max(extent, 1e-6)
        up = up_direction(cams)
        server.scene.set_up_direction(up)

        train = scene.train_views(state.holdout)
        first = int(train[0]) if len(train) else 0
        c2w0, fov0, _ = training_camera(scene, first)
        look = float(np.mean(np.asarray(scene.near_far)[first])) * input_scale(scene)
        cam = server.initial_camera
        cam.position = c2w0[:, 3]
        cam.look_at = c2w0[:, 3] + c2w0[:, 2] * look
        cam.up = -c2w0[:, 1]
        cam.fov = fov0
        cam.near = extent * 1e-3
        cam.far = extent * 100.0

        self._add_cameras(cams, set(int(v) for v in train), extent)
        self._add_points(extent)
        self._add_gui()

        @server.on_client_connect
        def _(client) -> None:
            @client.camera.on_update
            def _(camera) -> None:
                self._request(camera)

            self._request(client.camera)

        @server.on_client_disconnect
        def _(client) -> None:
            self.scheduler.forget(client.client_id)

    def _request(self, camera) -> None:
        try:
            c2w = viser_to_c2w(camera.wxyz, camera.position)
            aspect = camera.aspect
        except (AssertionError, ZeroDivisionError):  # no camera message yet
            return
        if not np.isfinite(c2w).all() or not aspect or not np.isfinite(aspect):
            return
        self.scheduler.request(camera.client.client_id, c2w, camera.fov, aspect)

    def _add_cameras(self, cams: np.ndarray, train: set[int], extent: float) -> None:
        scene = self.state.scene
        w, h = scene.image_size(1.0)
        ds = max(1.0, w / THUMBNAIL_WIDTH)
        handles = []
        for i in range(scene.n_views):
            _, fov, aspect = training_camera(scene, i)
            wxyz, pos = c2w_to_viser(cams[i])
            held = i not in train
            thumb = _to_uint8(scene.load_image(i, ds))
            frustum = self.server.scene.add_camera_frustum(
                f"/cameras/{'held_out' if held else 'train'}/{i:03d}",
                fov=fov,
                aspect=aspect,
                scale=0.04 * extent,
                thickness=1.5,
                thickness_units="screen",
                color=(230, 120, 20) if held else (40, 40, 40),
                image=thumb,
                format="jpeg",
                jpeg_quality=80,
                wxyz=wxyz,
                position=pos,
            )

            def go(event, wxyz=wxyz, pos=pos, fov=fov) -> None:
                client = event.client
                if client is None:
                    return
                with client.atomic():
                    client.camera.position = pos
                    client.camera.wxyz = wxyz
                    client.camera.fov = fov

            frustum.on_click(go)
            handles.append(frustum)
        self._frustums = handles

    def _point_labels(self) -> np.ndarray:
        """``[N]`` the points' labels as indices into the scene's classes (-1: none)."""
        pc, classes = self.points, self.state.classes
        label = np.asarray(getattr(pc, "label", np.full(len(pc.xyz), -1)), dtype=np.int64)
        names = list(getattr(pc, "classes", classes))
        if names == classes:
            return label
        lookup = np.array([classes.index(n) if n in classes else -1 for n in names] + [-1])
        missing = [n for n in names if n not in classes]
        if missing:
            logger.warning("point labels not among the scene's labels are shown unlabelled: %s", missing)
        return lookup[np.where(label < 0, -1, label)]

    def _add_points(self, extent: float) -> None:
        pc = self.points
        if pc is None or len(pc.xyz) == 0:
            return
        n = len(pc.xyz)
        keep = np.arange(n)
        if n > MAX_POINTS:
            keep = np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))
            logger.info("showing %d of %d points", MAX_POINTS, n)
        xyz = np.asarray(pc.xyz, dtype=np.float32)[keep]
        rgb = np.asarray(pc.rgb, dtype=np.uint8)[keep]
        labels = self._point_labels()[keep] if self.state.semantic else np.full(len(keep), -1)
        radius = np.asarray(getattr(pc, "radius", np.zeros(0)), dtype=np.float64)
        # diameter = the median patch radius: half the size that would cover the surfaces, so the live render
        # shows between the points (the size slider scales it; 2 covers)
        size = float(np.median(radius)) if radius.size and np.median(radius) > 0 else 0.003 * extent
        self.point_size = float(np.clip(size, 1e-4 * extent, 0.02 * extent))
        groups = sorted(set(labels.tolist())) if self.state.semantic else [-1]
        self._point_data = {}
        for g in groups:
            m = labels == g
            name = "/points/unlabelled" if g < 0 else f"/points/{g:02d}_{_slug(self.state.classes[g])}"
            self._point_data[g] = (xyz[m], rgb[m])
            self._point_nodes[g] = self.server.scene.add_point_cloud(
                name, xyz[m], rgb[m], point_size=self.point_size, point_shape="circle", precision="float32"
            )

    def _update_points(self) -> None:
        """Apply the Points and Labels controls (colours and sizes are sent only when they change)."""
        g = self._gui
        show = bool(g["show_points"].value) if "show_points" in g else True
        colour = str(g["point_colour"].value) if "point_colour" in g else "RGB"
        size = self.point_size * float(g["point_size"].value) if "point_size" in g else self.point_size
        for lab, node in self._point_nodes.items():
            node.visible = show and (lab < 0 or lab >= len(self._label_boxes) or bool(self._label_boxes[lab].value))
            if colour != getattr(self, "_colour_shown", "RGB"):
                rgb = self._point_data[lab][1]
                if colour == "label":
                    col = self.state.palette[lab] if lab >= 0 else np.array([128, 128, 128], np.uint8)
                    node.colors = np.broadcast_to(col, rgb.shape).copy()
                else:
                    node.colors = rgb
            if node.point_size != size:
                node.point_size = size
        self._colour_shown = colour

    # -- GUI ---------------------------------------------------------------------------------------------

    def _add_gui(self) -> None:
        gui, state, g = self.server.gui, self.state, self._gui
        n_points = 0 if self.points is None else len(self.points.xyz)
        gui.add_markdown(
            f"**{html.escape(state.run.name)}** — method `{state.method_name}`, {state.scene.kind} scene, "
            f"{state.scene.n_views} views, {n_points} points (input-pose frame)"
        )
        if not state.semantic:
            gui.add_markdown(
                "Reconstruction-only run (`--method rgb`): it has no language field, so there is no "
                "segmentation, no text query and no point labels. Fit with `--method lerf`, `3dovs` or "
                "`ovnerf` for those."
            )
        if self._points_note:
            gui.add_markdown(self._points_note)
        with gui.add_folder("Render"):
            g["live"] = gui.add_checkbox("live render", True, hint="draw the radiance field behind the scene")
            g["mode"] = gui.add_dropdown("mode", list(state.modes), initial_value="RGB")
            if state.semantic:
                g["query"] = gui.add_text("query", "", hint="free text: its relevancy is drawn in 'relevancy' mode")
            scales = state.scales
            if scales is not None:
                s = len(scales)
                g["scale"] = gui.add_slider(
                    "LERF scale", 0, s, 1, 0, marks=((0, "auto"), (s, str(s))), hint="0: best scale per image"
                )
                g["scale_note"] = gui.add_markdown(self._scale_note())
            g["status"] = gui.add_markdown("waiting for a browser camera…")
        with gui.add_folder("Points"):
            g["show_points"] = gui.add_checkbox("show points", self.points is not None, disabled=self.points is None)
            if state.semantic and self.points is not None:
                g["point_colour"] = gui.add_dropdown("colour", ["RGB", "label"], initial_value="RGB")
            g["point_size"] = gui.add_slider("size", 0.25, 4.0, 0.25, 1.0, hint="2: the points cover the surfaces")
            g["show_cameras"] = gui.add_checkbox("show cameras", True)
        if state.semantic:
            with gui.add_folder("Labels"):
                gui.add_html(self._legend_html())
                for i, name in enumerate(state.classes):
                    r, gg, b = (int(c) for c in state.palette[i])
                    hint = f"label {i}, colour rgb({r}, {gg}, {b}): untick to hide its points and its overlay"
                    self._label_boxes.append(gui.add_checkbox(name, True, hint=hint))
        self._wire_gui()

    def _legend_html(self) -> str:
        """The labels' colours as a compact two-column legend (the checkboxes below toggle them)."""
        cells = []
        for i, name in enumerate(self.state.classes):
            r, g, b = (int(c) for c in self.state.palette[i])
            cells.append(
                '<div style="display:flex;align-items:center;gap:5px;min-width:0">'
                '<span style="flex:none;width:11px;height:11px;border:1px solid #333;'
                f'background:rgb({r},{g},{b})"></span>'
                '<span style="overflow:hidden;text-overflow:ellipsis;white-space:nowrap">'
                f"{html.escape(name)}</span></div>"
            )
        return (
            '<div style="display:grid;grid-template-columns:1fr 1fr;gap:2px 8px;font-size:0.75em;'
            f'padding:0 0.5em 4px 0.5em">{"".join(cells)}</div>'
        )

    def _scale_note(self) -> str:
        from ovs3d.render.scene_rays import input_scale

        scales = self.state.scales
        v = int(self._gui["scale"].value) if "scale" in self._gui else 0
        if scales is None or v == 0:
            return "scale: best per image (auto)"
        return f"scale {v} of {len(scales)}: {scales[v - 1] * input_scale(self.state.scene):.3g} input units"

    def _wire_gui(self) -> None:
        g, sched = self._gui, self.scheduler

        def refresh(_=None) -> None:
            sched.refresh()

        g["live"].on_update(lambda _: self._set_live(bool(g["live"].value)))
        g["mode"].on_update(refresh)
        if "query" in g:

            def on_query(_) -> None:
                if g["query"].value.strip() and g["mode"].value != "relevancy":
                    g["mode"].value = "relevancy"  # its own callback refreshes
                sched.refresh()

            g["query"].on_update(on_query)
        if "scale" in g:

            def on_scale(_) -> None:
                g["scale_note"].content = self._scale_note()
                sched.refresh()

            g["scale"].on_update(on_scale)
        for name in ("show_points", "point_colour", "point_size"):
            if name in g:
                g[name].on_update(lambda _: self._update_points())

        def on_cameras(_) -> None:
            for f in getattr(self, "_frustums", []):
                f.visible = bool(g["show_cameras"].value)

        g["show_cameras"].on_update(on_cameras)

        def on_label(_) -> None:
            self._update_points()
            if g["mode"].value == "segmentation":
                sched.refresh()

        for box in self._label_boxes:
            box.on_update(on_label)

    def _set_live(self, live: bool) -> None:
        self.scheduler.set_enabled(live)
        if not live:
            for client in self.server.get_clients().values():
                client.scene.set_background_image(None)

    def _send(self, client_id: int, img: np.ndarray, record: FrameRecord) -> None:
        client = self.server.get_clients().get(client_id)
        if client is None or not self.scheduler.enabled:
            return
        client.scene.set_background_image(img, format="png")
        what = record.mode + (f" of “{record.query}”" if record.mode == "relevancy" and record.query else "")
        self._gui[
            "status"
        ].content = f"{what}: {record.width}×{record.height} {record.quality} frame in {record.seconds:.2f} s"

    def _on_error(self, client_id: int, error: Exception) -> None:
        msg = str(error).splitlines()[0] if str(error) else type(error).__name__
        self._gui["status"].content = f"**frame failed:** {html.escape(msg)}"

    # -- life --------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop rendering and the server."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.scheduler.stop()
        self.server.stop()

    def wait(self) -> None:
        """Block until :meth:`stop` is called or Ctrl-C is pressed (then stop)."""
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def serve(
    run: Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    block: bool = True,
    points=None,
    threads: int | None = None,
) -> Viewer:
    """Serve a live viewer of a run (``ovs3d view``).

    The port is checked first: a port in use is one :class:`OVS3DError` line before anything loads (and
    again after the server starts, since viser would silently move to the next free port).

    Args:
        run: a run folder (semantic or reconstruction-only).
        host: address to listen on (loopback by default; ``0.0.0.0`` exposes the viewer to the network).
        port: TCP port (0: any free port; ``Viewer.url`` tells which).
        block: serve until Ctrl-C; False returns the running :class:`Viewer` at once (call ``stop()``).
        points: a :class:`~ovs3d.export.PointCloud` to show instead of the run's own export (which is
            baked into ``RUN/export`` on first use when missing).
        threads: torch CPU threads for rendering (``torch.set_num_threads``, process-wide); None leaves
            torch's setting. On a small machine shared with other work (or with the browser), 1 avoids the
            slowdown of oversubscribed threads.

    Returns:
        The :class:`Viewer` (stopped again when ``block``).
    """
    viser = _import_viser()
    check_port(host, port)
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    run = Path(run)
    state = load_state(run)
    note = ""
    if points is None:
        try:
            points = _load_points(run)
        except ImportError as e:
            logger.warning("no point cloud: %s", e)
            note = f"No point cloud: {html.escape(str(e))}."
    server = viser.ViserServer(host=host, port=port, verbose=False)
    actual = int(server.get_port())
    if port != 0 and actual != port:
        server.stop()
        raise OVS3DError(f"port {port} on {host} is in use; pass --port N or stop the other program")
    viewer = Viewer(server, _url(host, actual), state, points, note)
    try:
        viewer._build()
    except BaseException:
        server.stop()
        raise
    viewer.scheduler.start()
    logger.info("viewing %s at %s", run, viewer.url)
    if block:
        viewer.wait()
    return viewer
