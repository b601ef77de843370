"""Region Semantic Ranking (RSR, OV-NeRF §III-B, Alg. 1) as pure tensor functions.

RSR turns a noisy per-pixel class map (the argmax of CLIP relevancy, or of the semantic field's
rendering during Cross-view Self-enhancement) into a region-consistent pseudo label map: every
class-agnostic mask proposal (SAM, superpixels, simulated masks) takes the class most of its pixels
vote for, and paints all its pixels with it.

Two choices differ from the released code on purpose (reference digest §A.4):

- **Overlaps.** The release paints masks in SAM's output order, so the result depends on that order.
  Here masks are painted by area, largest first (stable sort), so the smallest mask covering a pixel wins
  — the finest region decides — and the result does not depend on the input order.
- **Uncovered pixels.** The release leaves them at class 0 (its void class) and trains towards it. Here
  they are void (``-1``) by default so that the loss can ignore them; ``uncovered="keep"`` keeps the raw
  class instead.

:func:`region_crop_classes` is ours, not the paper's: a region takes the class of its own CLIP crop (the
segment tile of the panoptic-prior paper, :func:`ovs3d.foundation.pyramid.encode_segments`) instead of the
majority of its pixels' classes, so a region that the per-pixel windows never see alone (a thin strip at the
image border, an object a few windows wide) is classified from a crop that shows mostly itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ovs3d import losses as L

__all__ = ["region_vote", "region_vote_views", "region_crop_classes", "class_map_from_relevancy"]

# Elements of a [masks, pixels] intermediate processed at once: bounds the working memory of
# region_vote to ~40 MB (two int64 [masks, pixels] temporaries) whatever the number of masks.
_CHUNK_ELEMENTS = 1 << 21


def _as_mask_tensor(masks: np.ndarray | Tensor, device: torch.device) -> Tensor:
    """``[M, H, W]`` bool tensor on ``device`` from a numpy array or a tensor of any dtype (non-zero = in)."""
    m = torch.as_tensor(masks, device=device)
    return m if m.dtype == torch.bool else m != 0


def region_vote(
    class_map: Tensor,
    masks: np.ndarray | Tensor,
    uncovered: Literal["ignore", "keep"] = "ignore",
    void: int = -1,
) -> Tensor:
    """Region Semantic Ranking of one view: each mask takes the majority class of its pixels.

    Rules:

    - **Votes.** Every non-void pixel of a mask votes for its class; void pixels never vote. The mask takes
      the class with the most votes; ties go to the lowest class index. A mask without any vote (all its
      pixels void, or empty) paints nothing.
    - **Overlaps.** Masks are sorted by area (pixel count), largest first, with a stable sort (equal areas
      keep their input order), and painted in that order; a later mask overwrites an earlier one, so the
      smallest covering mask wins. The input order is not trusted.
    - **Uncovered pixels** (covered by no painting mask): ``void`` with ``uncovered="ignore"`` (the
      loss ignores them), the raw ``class_map`` value with ``uncovered="keep"``.

    The result equals this loop (see the tests)::

        out = full_like(class_map, void) if uncovered == "ignore" else class_map.clone()
        for m in sorted(masks, key=area, reverse=True):       # stable
            votes = class_map[m][class_map[m] != void]
            if len(votes):
                out[m] = bincount(votes).argmax()              # lowest class on ties

    Vectorised: per-mask class counts by a scatter-add over ``(mask, class)`` keys, the winning mask of
    each pixel as the largest painting rank covering it; both in chunks of masks so the temporaries stay
    about 40 MB besides a sorted copy of the masks (M≈100 SAM masks at 640×480: 17 chunks of 6 masks).

    Args:
        class_map: ``[H, W]`` int class index per pixel, ``void`` where the pixel has no class.
        masks: ``[M, H, W]`` bool mask proposals (numpy or torch, any order; ``M`` may be 0).
        uncovered: ``"ignore"`` (uncovered pixels become ``void``) or ``"keep"`` (they keep their class).
        void: the no-class value, negative (default ``-1``).

    Returns:
        ``[H, W]`` int64 pseudo label map on ``class_map``'s device, values in ``{void} ∪ [0, C)``.

    Raises:
        ValueError: bad shapes, an unknown ``uncovered`` mode, a non-negative ``void``, or class values
            other than ``void`` that are negative.
    """
    if uncovered not in ("ignore", "keep"):
        raise ValueError(f"uncovered must be 'ignore' or 'keep', got {uncovered!r}")
    if void >= 0:
        raise ValueError(f"void must be negative (class indices are >= 0), got {void}")
    class_map = torch.as_tensor(class_map)
    if class_map.ndim != 2 or class_map.is_floating_point() or class_map.dtype == torch.bool:
        raise ValueError(f"class_map must be [H, W] integer, got {tuple(class_map.shape)} {class_map.dtype}")
    class_map = class_map.long()
    device = class_map.device
    masks = _as_mask_tensor(masks, device)
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(class_map.shape):
        raise ValueError(f"masks must be [M, H, W] with H, W = {tuple(class_map.shape)}, got {tuple(masks.shape)}")
    valid = class_map != void  # [H, W]
    if bool((class_map[valid] < 0).any()):
        raise ValueError(f"class_map holds negative values other than void={void}")

    out = torch.full_like(class_map, void) if uncovered == "ignore" else class_map.clone()
    n_masks = masks.shape[0]
    n_pix = class_map.numel()
    if n_masks == 0 or n_pix == 0 or not bool(valid.any()):
        return out  # nothing can vote, so nothing paints
    n_cls = int(class_map.max()) + 1

    # Painting order: area descending, stable (equal areas keep their input order).
    flat = masks.reshape(n_masks, n_pix)  # [M, P]
    area = flat.sum(dim=1)  # [M]
    order = torch.sort(area, descending=True, stable=True).indices  # [M]
    flat = flat[order]  # [M, P] in painting order

    cls_flat = torch.where(valid, class_map, 0).reshape(n_pix)  # [P] void -> 0, masked out below
    valid_flat = valid.reshape(n_pix)  # [P]
    chunk = max(1, _CHUNK_ELEMENTS // n_pix)

    # 1. votes: counts[m, c] = #{p in mask m, class_map[p] = c != void}
    counts = torch.zeros(n_masks * n_cls, dtype=torch.int64, device=device)
    for s in range(0, n_masks, chunk):
        sel = flat[s : s + chunk] & valid_flat  # [m, P] voting pixels
        rows = torch.arange(s, s + sel.shape[0], device=device)[:, None]  # [m, 1]
        keys = rows * n_cls + cls_flat  # [m, P] flat (mask, class) index
        counts.scatter_add_(0, keys.reshape(-1), sel.reshape(-1).long())
    counts = counts.view(n_masks, n_cls)  # [M, C]
    # argmax of counts·C − c: more votes always win (a difference of one vote outweighs any class offset),
    # equal votes go to the lowest class; exact in int64 and independent of argmax's tie behaviour.
    score = counts * n_cls - torch.arange(n_cls, device=device)  # [M, C]
    mask_class = score.argmax(dim=1)  # [M]
    paints = counts.sum(dim=1) > 0  # [M] masks with at least one vote

    # 2. the winning mask of each pixel = the last painting mask covering it (1-based rank, 0 = none)
    rank = torch.arange(1, n_masks + 1, device=device) * paints  # [M], 0 for masks that do not paint
    winner = torch.zeros(n_pix, dtype=torch.int64, device=device)  # [P]
    for s in range(0, n_masks, chunk):
        r = rank[s : s + chunk, None]  # [m, 1]
        cover = torch.where(flat[s : s + chunk], r, 0)  # [m, P]
        winner = torch.maximum(winner, cover.amax(dim=0))

    covered = winner > 0  # [P]
    labels = mask_class[(winner - 1).clamp(min=0)]  # [P]
    out_flat = out.reshape(n_pix)
    out_flat = torch.where(covered, labels, out_flat)
    return out_flat.view_as(class_map)


def region_vote_views(
    class_maps: Tensor,
    masks: Sequence[np.ndarray | Tensor],
    uncovered: Literal["ignore", "keep"] = "ignore",
    void: int = -1,
) -> Tensor:
    """:func:`region_vote` for several views (one mask set each, of any size).

    Views have different numbers of masks, so this is a loop over views; each view is already vectorised.

    Args:
        class_maps: ``[B, H, W]`` int class maps, ``void`` where a pixel has no class.
        masks: ``B`` mask sets, each ``[M_b, H, W]`` bool.
        uncovered: see :func:`region_vote`.
        void: see :func:`region_vote`.

    Returns:
        ``[B, H, W]`` int64 pseudo label maps.
    """
    class_maps = torch.as_tensor(class_maps)
    if class_maps.ndim != 3:
        raise ValueError(f"class_maps must be [B, H, W], got {tuple(class_maps.shape)}")
    if len(masks) != class_maps.shape[0]:
        raise ValueError(f"{class_maps.shape[0]} class maps but {len(masks)} mask sets")
    if class_maps.shape[0] == 0:
        return class_maps.long().clone()
    return torch.stack([region_vote(c, m, uncovered, void) for c, m in zip(class_maps, masks)])


def region_crop_classes(
    partitions: Sequence[np.ndarray | Tensor],
    crop_cosines: Sequence[Tensor],
    class_maps: Tensor | None = None,
    void: int = -1,
) -> Tensor:
    """Class maps in which every region takes the class of its own CLIP crop (ours; see the module notes).

    Each region's crop relevancy is the cosine of its crop's embedding to every label, min–max normalised per
    label over **every region of every view** (the scene-level reading RSR's pixel maps use: a label's most
    relevant region in the scene gets 1, so CLIP's hub labels do not win everywhere, and no view has to show
    every label); the region takes the argmax (lowest class on ties) and paints all its pixels. Pixels in no
    region are ``void``, or keep their ``class_maps`` value when one is given (``rsr_uncovered="keep"``).

    Equals this loop (see the tests)::

        rel = (cos - cos.min(over all regions)) / (cos.max(...) - cos.min(...))   # per label
        for each view b, region s: out[b][partition[b] == s] = argmax(rel[b][s])

    Args:
        partitions: ``B`` maps ``[H, W]`` int region ids ``0..n_b-1`` (``-1`` = none), e.g.
            :func:`~ovs3d.foundation.pyramid.panoptic_partition` of the view's mask proposals.
        crop_cosines: ``B`` tensors ``[n_b, C]``: cosine of region ``s``'s crop embedding to label ``c``.
        class_maps: ``[B, H, W]`` int classes for the pixels in no region, or None (they become ``void``).
        void: the no-class value, negative.

    Returns:
        ``[B, H, W]`` int64 class maps, values in ``{void} ∪ [0, C)``.
    """
    if void >= 0:
        raise ValueError(f"void must be negative (class indices are >= 0), got {void}")
    if len(partitions) != len(crop_cosines):
        raise ValueError(f"{len(partitions)} partitions but {len(crop_cosines)} crop-cosine sets")
    parts = [torch.as_tensor(np.asarray(p)).long() for p in partitions]
    if not parts:
        return torch.zeros(0, 0, 0, dtype=torch.int64)
    if any(c.ndim != 2 for c in crop_cosines) or len({c.shape[-1] for c in crop_cosines}) > 1:
        raise ValueError("crop_cosines must all be [n_b, C] with the same C")
    for p, c in zip(parts, crop_cosines):
        if p.shape != parts[0].shape:
            raise ValueError(f"partitions differ in size: {tuple(p.shape)} vs {tuple(parts[0].shape)}")
        if int(p.max()) + 1 > c.shape[0]:
            raise ValueError(f"a partition has region id {int(p.max())} but only {c.shape[0]} crops")
    counts = [c.shape[0] for c in crop_cosines]
    allc = torch.cat([torch.as_tensor(c).float() for c in crop_cosines])  # [N, C]
    seg_class = torch.zeros(0, dtype=torch.int64)  # [N]
    if len(allc):  # per label over all regions, then argmax (ties -> lowest)
        seg_class = L.minmax_normalize(allc[None], dims=(1,))[0].argmax(-1)
    out = []
    for b, (p, cls) in enumerate(zip(parts, torch.split(seg_class, counts))):
        if class_maps is not None:
            base = torch.as_tensor(class_maps[b]).long().clone()
            if base.shape != p.shape:
                raise ValueError(f"class_maps are {tuple(base.shape)}, partitions {tuple(p.shape)}")
        else:
            base = torch.full_like(p, void)
        inside = p >= 0
        base[inside] = cls[p[inside]]
        out.append(base)
    return torch.stack(out)


def class_map_from_relevancy(relevancy: Tensor, combine: Literal["mean", "max"] = "mean") -> Tensor:
    """Per-pixel class from multi-scale relevancy: combine the scales, then argmax over classes.

    OV-NeRF's initial pseudo maps are RSR applied to "the argmax class of 2D CLIP", but the release does
    not say how the three CLIP scales were combined (reference digest §A.4). The two choices:

    - ``"mean"``: average the scales' relevancy per class, then argmax. Every scale has a say; a class
      that only one scale sees strongly (a small object at the finest scale) can be outvoted.
    - ``"max"``: best scale per class, then argmax. Keeps a class that any scale sees strongly (small
      objects at fine scales, large surfaces at coarse ones) but also takes every scale's outliers.

    Both expect relevancy that is comparable across scales and classes (e.g. min–max normalised per
    scale and class over the view, as 3D-OVS does); raw cosines favour "hub" texts under ``"max"``.

    Args:
        relevancy: ``[..., S, C]`` relevancy of ``C`` classes at ``S`` scales (``S, C >= 1``).
        combine: ``"mean"`` or ``"max"`` over the scale axis.

    Returns:
        ``[...]`` int64 class index; ties go to the lowest class index.
    """
    relevancy = torch.as_tensor(relevancy)
    if relevancy.ndim < 2 or relevancy.shape[-1] == 0 or relevancy.shape[-2] == 0:
        raise ValueError(f"relevancy must be [..., S, C] with S, C >= 1, got {tuple(relevancy.shape)}")
    if combine == "mean":
        per_class = relevancy.float().mean(dim=-2)  # [..., C]
    elif combine == "max":
        per_class = relevancy.float().amax(dim=-2)  # [..., C]
    else:
        raise ValueError(f"combine must be 'mean' or 'max', got {combine!r}")
    # torch.argmax returns the first maximal index: ties -> lowest class
    return per_class.argmax(dim=-1)
