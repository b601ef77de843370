"""Superpixel mask proposals: a weight-free CPU stand-in for SAM's automatic masks.

Used with ``--masks superpixel`` and as the fallback of :class:`~ovs3d.foundation.sim.SimMasks` for
views that have no instance map (rendered novel views).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ovs3d.foundation.base import ViewImage


def masks_from_segments(segments: np.ndarray, min_area: int = 1) -> np.ndarray:
    """One mask per segment id, sorted by area, largest first (ties: smaller id first).

    Args:
        segments: ``[H, W]`` int segment ids.
        min_area: segments with fewer pixels are left out.

    Returns:
        ``[M, H, W]`` bool.
    """
    ids, areas = np.unique(segments, return_counts=True)
    keep = areas >= min_area
    ids, areas = ids[keep], areas[keep]
    order = np.argsort(-areas, kind="stable")
    ids = ids[order]
    return segments[None, :, :] == ids[:, None, None]


class SuperpixelMasks:
    """Class-agnostic region proposals from superpixels (scikit-image), sorted by area.

    Each superpixel becomes one mask; masks do not overlap and cover the image. Deterministic.

    Args:
        method: ``"slic"`` (k-means in colour + position) or ``"felzenszwalb"`` (graph based).
        n_segments: SLIC's approximate number of segments.
        compactness: SLIC's colour/space trade-off (higher = squarer segments).
        scale: Felzenszwalb's scale (higher = larger segments).
        sigma: Gaussian pre-smoothing (both methods).
        min_size: Felzenszwalb's minimum segment size in pixels.
    """

    def __init__(
        self,
        method: Literal["slic", "felzenszwalb"] = "slic",
        n_segments: int = 64,
        compactness: float = 10.0,
        scale: float = 100.0,
        sigma: float = 0.8,
        min_size: int = 20,
    ) -> None:
        if method not in ("slic", "felzenszwalb"):
            raise ValueError(f"unknown superpixel method {method!r}; use 'slic' or 'felzenszwalb'")
        self.method = method
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.scale = float(scale)
        self.sigma = float(sigma)
        self.min_size = int(min_size)
        if method == "slic":
            self.identity = f"superpixel:slic:n={self.n_segments}:c={self.compactness:g}:s={self.sigma:g}"
        else:
            self.identity = f"superpixel:felzenszwalb:scale={self.scale:g}:s={self.sigma:g}:min={self.min_size}"

    def segments(self, view: ViewImage) -> np.ndarray:
        """``[H, W]`` int superpixel ids of the view."""
        from skimage.segmentation import felzenszwalb, slic

        rgb = np.clip(np.asarray(view.rgb, dtype=np.float64), 0.0, 1.0)
        if self.method == "slic":
            return slic(
                rgb,
                n_segments=self.n_segments,
                compactness=self.compactness,
                sigma=self.sigma,
                start_label=0,
                channel_axis=-1,
            )
        return felzenszwalb(rgb, scale=self.scale, sigma=self.sigma, min_size=self.min_size, channel_axis=-1)

    def propose(self, view: ViewImage) -> np.ndarray:
        """``[M, H, W]`` bool masks of the view's superpixels, sorted by area, largest first."""
        return masks_from_segments(self.segments(view))
