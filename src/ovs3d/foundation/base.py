"""Backend interfaces for the foundation models.

Training and evaluation code only ever holds objects with these interfaces; it never knows whether a
backend is a real network (open_clip, timm, segment_anything) or a simulated test double (SPEC §2).

A view is passed as a :class:`ViewImage`: the RGB pixels (what real models see) plus the image stem
that names the view (what the simulated models key on to find their ``sim/`` instance map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class ViewImage:
    """One image as the foundation models receive it.

    Attributes:
        stem: image file stem (``images/<stem>.png``); ``None`` for a rendered novel view.
        rgb: ``[H, W, 3]`` float32 RGB in [0, 1], at whatever resolution the stage works at.
    """

    stem: str | None
    rgb: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """``(W, H)``."""
        return int(self.rgb.shape[1]), int(self.rgb.shape[0])


@runtime_checkable
class ClipBackend(Protocol):
    """A CLIP-like image/text encoder.

    Attributes:
        identity: string that names model and weights (stamped into feature caches).
        dim: embedding dimension ``D``.
    """

    identity: str
    dim: int

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Embed text prompts exactly as given: ``[T, D]`` float32, L2-normalised."""
        ...

    def encode_crops(self, view: ViewImage, boxes: np.ndarray, *, content: np.ndarray | None = None) -> torch.Tensor:
        """Embed image crops.

        Args:
            view: the image.
            boxes: ``[N, 4]`` int ``(x0, y0, x1, y1)`` pixel boxes, x1/y1 exclusive; a box may reach outside
                the image, where the crop shows zeros (padding).
            content: optional ``[N, 4]`` int ``(x0, y0, x1, y1)`` boxes (same coordinates): the part of each
                crop that shows the image; every other pixel of the crop is zeros, as padding (e.g. a
                segment's bounding box zero-padded to a square). ``None``: the whole crop shows the image.

        Returns:
            ``[N, D]`` float32 image embeddings (not normalised, like CLIP's ``encode_image``).
        """
        ...


@runtime_checkable
class DinoBackend(Protocol):
    """A DINO-like dense, label-free feature extractor.

    Attributes:
        identity: model and weights name.
        dim: feature dimension.
        stride: pixels per feature cell (8 for ViT-*/8).
    """

    identity: str
    dim: int
    stride: int

    def dense_features(self, view: ViewImage) -> torch.Tensor:
        """``[H // stride, W // stride, dim]`` float32 features of the view (not normalised)."""
        ...


@runtime_checkable
class MaskBackend(Protocol):
    """A class-agnostic mask proposer (SAM automatic masks, superpixels, SimMasks).

    Attributes:
        identity: model and weights name.
    """

    identity: str

    def propose(self, view: ViewImage) -> np.ndarray:
        """``[M, H, W]`` bool masks, sorted by area, largest first."""
        ...
