"""``ovs3d query``: relevancy of free text on any semantic run, without retraining (SPEC §3–§4).

Every semantic method renders a CLIP-space feature (LERF at each of its query scales); the relevancy of a
text is LERF's formula against the canonical negatives (:mod:`ovs3d.relevancy`), the scale chosen per text
and image. Output folder::

    DIR/queries.json        {"queries": [{"text", "slug"}], "views": [NN, ...], "run", "method", "seconds"}
    DIR/NN/<slug>.npy       float32 [H, W] relevancy in [0, 1] at the run's semantic resolution
    DIR/NN/<slug>.png       its heat map over the RGB render
    DIR/path/<slug>.mp4     (``--path``) the heat map along a smooth camera path

Every file is written atomically and ``queries.json`` last, so a folder with a ``queries.json`` is complete.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.errors import OVS3DError

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A semantic run ready to answer queries.

    Attributes:
        run: the run folder.
        cfg: its :class:`~ovs3d.run.FitConfig`.
        scene: its scene.
        method: the trained :class:`~ovs3d.methods.base.SemanticMethod`.
        negatives: ``[N, D]`` unit embeddings of the canonical negatives.
        clip: the CLIP backend that encodes query texts (built on first use).
    """

    run: Path
    cfg: object
    scene: object
    method: object
    negatives: torch.Tensor
    clip: object = None

    def backend(self):
        """The run's CLIP backend, built on first use."""
        if self.clip is None:
            from ovs3d.run import _backends

            self.clip = _backends(self.cfg, self.scene, self.method.device, {"clip"})["clip"]
        return self.clip

    def encode(self, texts: list[str]) -> torch.Tensor:
        """``[Q, D]`` unit text embeddings from the run's CLIP backend."""
        return F.normalize(self.backend().encode_text(list(texts)).float(), dim=-1)


def check_texts(texts: list[str] | None) -> list[str]:
    """The query texts, stripped; one clear error if there are none or one is empty."""
    if not texts:
        raise OVS3DError("no --text given: pass at least one, e.g. --text 'a red mug'")
    out = [t.strip() for t in texts]
    if any(not t for t in out):
        raise OVS3DError("an empty --text was given: every --text needs some words, e.g. --text 'a red mug'")
    return out


def load_run(run: Path) -> LoadedRun:
    """Load a finished semantic run for querying (one clear error for a reconstruction-only or unfinished run)."""
    from ovs3d.methods.base import semantic_checkpoint, semantic_finished
    from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
    from ovs3d.run import RECONSTRUCTION_ONLY, _load_method, _load_scene, fit_config_from_run, method_negatives
    from ovs3d.utils.device import resolve_device

    cfg = fit_config_from_run(run)
    if cfg.method == RECONSTRUCTION_ONLY:
        raise OVS3DError(
            f"{run} is a reconstruction-only run (--method rgb): it has no language to query; "
            "fit a semantic run with --method lerf, 3dovs or ovnerf"
        )
    if not semantic_finished(run, cfg.semantic.n_iters):
        what = "has no" if not semantic_checkpoint(run).exists() else "has not finished its"
        raise OVS3DError(f"{run} {what} semantic stage; run the same `ovs3d fit` command again to finish it")
    scene = _load_scene(cfg.scene, cfg.kind)
    device = resolve_device(cfg.device)
    trained = load_trained_field(Path(run) / "checkpoints" / CHECKPOINT_NAME, device)
    method = _load_method(cfg, trained, Path(run), device)
    loaded = LoadedRun(Path(run), cfg, scene, method, torch.zeros(0))
    # the CLIP backend is built (once) here only when the method has no negatives of its own
    own = getattr(method, "negatives", None)
    loaded.negatives = own if own is not None else method_negatives(cfg, scene, method, loaded.backend())
    return loaded


def check_views(scene, views: list[int] | None) -> list[int]:
    """The views to query: as given (each checked), else the annotated views, else first, middle and last."""
    n = scene.n_views
    if views is None:
        return list(scene.annotated) or sorted({0, n // 2, n - 1})
    bad = [v for v in views if not 0 <= int(v) < n]
    if bad:
        raise OVS3DError(f"view {bad[0]} is not in the scene: it has {n} views, indices 0 to {n - 1}")
    return [int(v) for v in views]


def unique_slugs(texts: list[str]) -> list[str]:
    """A distinct file-name slug per text (``_2``, ``_3``... appended on collisions)."""
    from ovs3d.run import slugify

    out: list[str] = []
    for t in texts:
        base, k = slugify(t), 1
        slug = base
        while slug in out:
            k += 1
            slug = f"{base}_{k}"
        out.append(slug)
    return out


def view_relevancy(loaded: LoadedRun, view: int, queries: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``([H, W, Q] float32 relevancy, [H, W, 3] float RGB render)`` of one view at the semantic resolution."""
    ds = loaded.cfg.features.semantic_downscale
    render = loaded.method.render_view(loaded.scene, view, ds)
    rel = loaded.method.relevancy(render, queries, loaded.negatives)
    return rel.float().cpu().numpy(), render["rgb"].float().cpu().numpy()


def query(
    run: Path,
    texts: list[str],
    views: list[int] | None = None,
    out: Path | None = None,
    path_frames: int = 0,
    fps: int = 24,
) -> Path:
    """Relevancy maps of free texts on views of a semantic run (and optionally along a camera path).

    Args:
        run: a finished semantic run folder.
        texts: the query texts (any words, not only the run's labels).
        views: view indices (default: the annotated views).
        out: output folder (default ``RUN/query``).
        path_frames: frames of a video along the camera path per text (0: none).
        fps: video frame rate.

    Returns:
        The output folder.
    """
    from ovs3d.eval.metrics import view_key
    from ovs3d.eval.visualize import relevancy_heatmap
    from ovs3d.utils.console import Work, progress
    from ovs3d.utils.files import atomic_write_bytes, atomic_write_image, atomic_write_json

    texts = check_texts(texts)
    loaded = load_run(run)
    views = check_views(loaded.scene, views)
    out = Path(out) if out is not None else Path(run) / "query"
    slugs = unique_slugs(texts)
    t0 = time.perf_counter()
    queries = loaded.encode(texts)
    seconds = {"encode_text": time.perf_counter() - t0, "views": {}}
    for v in progress(views, desc="querying views", work=Work("views")):
        t1 = time.perf_counter()
        rel, rgb = view_relevancy(loaded, v, queries)
        seconds["views"][view_key(v)] = time.perf_counter() - t1
        for q, slug in enumerate(slugs):
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(rel[..., q], dtype=np.float32))
            atomic_write_bytes(out / view_key(v) / f"{slug}.npy", buf.getvalue())
            atomic_write_image(out / view_key(v) / f"{slug}.png", relevancy_heatmap(rel[..., q], np.clip(rgb, 0, 1)))
    if path_frames > 0:
        _path_videos(loaded, queries, slugs, out / "path", path_frames, fps)
    atomic_write_json(
        out / "queries.json",
        {
            "queries": [{"text": t, "slug": s} for t, s in zip(texts, slugs)],
            "views": [view_key(v) for v in views],
            "run": str(Path(run).resolve()),
            "method": loaded.cfg.method,
            "resolution": list(loaded.scene.image_size(loaded.cfg.features.semantic_downscale)),
            "seconds": seconds,
        },
    )
    return out


def _path_videos(loaded: LoadedRun, queries: torch.Tensor, slugs: list[str], out: Path, frames: int, fps: int) -> None:
    """One heat-map video per text along the scene's smooth camera path."""
    from ovs3d.eval.visualize import relevancy_heatmap
    from ovs3d.io.video import write_video
    from ovs3d.methods.base import as_view
    from ovs3d.render.rays import pixel_grid
    from ovs3d.render.scene_rays import camera_rays_in_field, ray_near
    from ovs3d.run import camera_path
    from ovs3d.utils.console import Work, progress

    scene, method = loaded.scene, loaded.method
    ds = loaded.cfg.features.semantic_downscale
    w, h = scene.image_size(ds)
    u, v = pixel_grid(w, h)
    intr = scene.intrinsics_at(ds)[0]
    videos: list[list[np.ndarray]] = [[] for _ in slugs]
    for c2w in progress(list(camera_path(scene, frames)), desc="rendering the camera path", work=Work("frames")):
        o, d = camera_rays_in_field(scene, c2w, intr, ds, u, v)
        r = method.render_rays(o, d, ray_near(scene))
        r = as_view(r, h, w)
        rel = method.relevancy(r, queries, loaded.negatives).float().cpu().numpy()
        rgb = np.clip(r["rgb"].float().cpu().numpy(), 0, 1)
        for q in range(len(slugs)):
            videos[q].append(relevancy_heatmap(rel[..., q], rgb))
    for q, slug in enumerate(slugs):
        write_video(out / f"{slug}.mp4", videos[q], fps=fps)
