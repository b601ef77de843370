"""The in-memory scene: cameras, images, labels and ground truth of a SPEC §1 scene folder.

Build one with :func:`ovs3d.io.loader.load_scene`. Cameras are OpenCV camera-to-world in the loader's
normalised world (see :mod:`ovs3d.io.conventions`). Images and masks are read lazily, at the downscale
factor each stage asks for (the reference trains RGB at 1/2 and semantics at 1/8 of the original).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

SceneKind = Literal["forward", "bounded", "unbounded"]

CONTRACTED_AABB = ((-2.0, -2.0, -2.0), (2.0, 2.0, 2.0))
"""The box of mip-NeRF 360's contracted space: the ``aabb`` of an unbounded scene's field."""


def scaled_size(width: int, height: int, downscale: float) -> tuple[int, int]:
    """Image size ``(W, H)`` at ``1/downscale`` of ``(width, height)`` (``int(W / ds)`` as the reference)."""
    return max(1, int(width / downscale)), max(1, int(height / downscale))


@dataclass
class Scene:
    """A loaded scene folder.

    Attributes:
        root: the scene folder.
        image_paths: ``N`` image files in sorted filename order (view ``i`` = ``image_paths[i]``).
        width: full-resolution image width in pixels.
        height: full-resolution image height in pixels.
        c2w: ``[N, 3, 4]`` float32 OpenCV camera-to-world in the normalised world.
        intrinsics: ``[N, 4]`` float32 ``(fx, fy, cx, cy)`` in full-resolution pixels.
        near_far: ``[N, 2]`` float32 per-view depth bounds in normalised world units.
        kind: ``"forward"`` (NDC rays), ``"bounded"`` (world box ``aabb``) or ``"unbounded"`` (360° with
            distant background: world rays, positions contracted into ``aabb`` = ``[-2, 2]^3``).
        aabb: ``[2, 3]`` float32 world box (min, max) enclosing the content of a bounded scene; for
            forward-facing scenes the NDC box the field uses.
        classes: text labels, sorted alphabetically as the 3D-OVS loader does (class index = position).
        annotated: sorted indices of the views that have ground-truth masks (the test views).
        world_from_file: ``[4, 4]`` float64 similarity transform from the file's world to the
            normalised world (used to export points back into the user's frame).
        has_sim: whether ``sim/`` exists (only the simulated backends may read it).
    """

    root: Path
    image_paths: list[Path]
    width: int
    height: int
    c2w: np.ndarray
    intrinsics: np.ndarray
    near_far: np.ndarray
    kind: SceneKind
    aabb: np.ndarray
    classes: list[str]
    annotated: list[int]
    world_from_file: np.ndarray = field(default_factory=lambda: np.eye(4))
    has_sim: bool = False

    @property
    def n_views(self) -> int:
        """Number of views ``N``."""
        return len(self.image_paths)

    @property
    def stems(self) -> list[str]:
        """Image file stems, the view names the simulated backends key on."""
        return [p.stem for p in self.image_paths]

    def image_size(self, downscale: float = 1.0) -> tuple[int, int]:
        """``(W, H)`` of images at ``1/downscale``."""
        return scaled_size(self.width, self.height, downscale)

    def intrinsics_at(self, downscale: float = 1.0) -> np.ndarray:
        """``[N, 4]`` ``(fx, fy, cx, cy)`` for images at ``1/downscale`` (scaled by the exact size ratio)."""
        w, h = self.image_size(downscale)
        sx, sy = w / self.width, h / self.height
        return (self.intrinsics * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)

    def load_image(self, index: int, downscale: float = 1.0) -> np.ndarray:
        """View ``index`` as ``[H, W, 3]`` float32 RGB in [0, 1] at ``1/downscale`` (LANCZOS, as the reference)."""
        img = Image.open(self.image_paths[index]).convert("RGB")
        size = self.image_size(downscale)
        if img.size != size:
            img = img.resize(size, Image.LANCZOS)
        return np.asarray(img, dtype=np.float32) / 255.0

    def load_images(self, indices: list[int], downscale: float = 1.0) -> np.ndarray:
        """Several views stacked: ``[len(indices), H, W, 3]`` float32."""
        return np.stack([self.load_image(i, downscale) for i in indices])

    def mask_path(self, view: int, label: str) -> Path:
        """Path of the ground-truth mask of ``label`` in annotated view ``view``."""
        folder = self._mask_folders().get(view)
        if folder is None:
            raise KeyError(f"view {view} is not annotated")
        return folder / f"{label}.png"

    def _mask_folders(self) -> dict[int, Path]:
        seg = self.root / "segmentations"
        out: dict[int, Path] = {}
        if seg.is_dir():
            for d in seg.iterdir():
                if d.is_dir():
                    try:
                        out[int(d.name)] = d
                    except ValueError:
                        continue
        return out

    def load_masks(self, view: int, downscale: float = 1.0) -> np.ndarray:
        """Ground-truth masks of an annotated view (evaluation only).

        Masks are resized with NEAREST and only pixels exactly 255 count, as in the reference loader.

        Returns:
            ``[C, H, W]`` bool, one mask per entry of :attr:`classes`.
        """
        size = self.image_size(downscale)
        out = []
        for label in self.classes:
            img = Image.open(self.mask_path(view, label)).convert("L")
            if img.size != size:
                img = img.resize(size, Image.NEAREST)
            out.append(np.asarray(img) == 255)
        return np.stack(out)

    def train_views(self, holdout: bool = False) -> list[int]:
        """Views that train the field: all of them (3D-OVS protocol) or all but the annotated (``--holdout``)."""
        if not holdout:
            return list(range(self.n_views))
        test = set(self.annotated)
        return [i for i in range(self.n_views) if i not in test]
