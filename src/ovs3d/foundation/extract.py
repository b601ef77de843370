"""``ovs3d features``: run and cache every foundation model a fit needs, on its own."""

from __future__ import annotations

from pathlib import Path

from ovs3d.foundation.features import FeatureConfig, clip_features, dino_features, mask_proposals
from ovs3d.utils.device import resolve_device


def extract_features(
    scene_dir: Path,
    clip_spec: str = "auto",
    dino_spec: str = "auto",
    masks_spec: str = "none",
    cfg: FeatureConfig | None = None,
    holdout: bool = False,
    cache_dir: Path | None = None,
    device: str = "auto",
    allow_download: bool = False,
) -> dict[str, tuple[Path, int, int]]:
    """Compute (or find cached) pixel CLIP and DINO features, and optionally mask proposals.

    Returns:
        ``{name: (cache entry folder, bytes on disk, number of views)}``.
    """
    from ovs3d.foundation.registry import build_clip, build_dino, build_masks, resolve_spec
    from ovs3d.io.loader import load_scene

    cfg = cfg or FeatureConfig()
    scene = load_scene(scene_dir)
    dev = str(resolve_device(device))
    views = scene.train_views(holdout)
    report = {}
    clip = build_clip(
        resolve_spec(clip_spec, scene.has_sim, "clip"), scene.root, device=dev, allow_download=allow_download
    )
    c = clip_features(scene, clip, views, cfg, cache_dir)
    report["pixel CLIP"] = (c.path, c.nbytes, len(c))
    dino = build_dino(
        resolve_spec(dino_spec, scene.has_sim, "dino"), scene.root, device=dev, allow_download=allow_download
    )
    d = dino_features(scene, dino, views, cfg, cache_dir)
    report["DINO"] = (d.path, d.nbytes, len(d))
    if masks_spec != "none":
        masks = build_masks(
            resolve_spec(masks_spec, scene.has_sim, "masks"), scene.root, device=dev, allow_download=allow_download
        )
        m = mask_proposals(scene, masks, views, cfg, cache_dir)
        cached = getattr(m, "cached", m)
        report["mask proposals"] = (cached.path, cached.nbytes, len(cached))
    return report
