"""Relevancy of free text against rendered CLIP features (LERF §3.4; facts B.3–B.4), as pure functions.

A rendered language feature ``φ`` (unit), a query's text embedding ``q`` and the canonical negatives
``n_i`` ("object", "things", "stuff", "texture") give::

    r_i = exp(T·φ·q) / (exp(T·φ·q) + exp(T·φ·n_i)) = sigmoid(T·(φ·q − φ·n_i)),   relevancy = min_i r_i

with ``T = 10``. Values are in [0, 1]; below 0.5 means "less like the query than like some negative".
A scale-conditioned field (LERF) renders ``φ`` at several world scales; the map of one query in one image
uses the single scale whose highest relevancy over the image is highest (LERF's two passes: choose the scale
over the whole image, then take that scale's map).
"""

from __future__ import annotations

import torch
from torch import Tensor

CANONICAL_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")
"""LERF's negatives (no prompt templates)."""
TEMPERATURE = 10.0
"""LERF's factor on the cosine inside the pairwise softmax."""


def relevancy_from_dots(pos: Tensor, neg: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """Relevancy from cosines with the queries and the negatives.

    Args:
        pos: ``[..., Q]`` cosine of each feature with each query.
        neg: ``[..., N]`` cosine of each feature with each negative.
        temperature: factor on the cosines (10).

    Returns:
        ``[..., Q]`` ``min_i sigmoid(T·(pos − neg_i))`` in [0, 1].
    """
    diff = pos.unsqueeze(-1) - neg.unsqueeze(-2)  # [..., Q, N]
    return torch.sigmoid(temperature * diff).amin(-1)


def relevancy(features: Tensor, queries: Tensor, negatives: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """Relevancy of unit features against queries (LERF's formula).

    Args:
        features: ``[..., D]`` unit rendered features (any float dtype; bfloat16 stored renders are fine).
        queries: ``[Q, D]`` unit text embeddings.
        negatives: ``[N, D]`` unit text embeddings of the negatives.
        temperature: factor on the cosines.

    Returns:
        ``[..., Q]`` float32 relevancy in [0, 1].
    """
    texts = torch.cat([queries, negatives]).to(features.dtype)  # [Q + N, D]
    dots = (features @ texts.T).float()  # [..., Q + N]
    q = queries.shape[0]
    return relevancy_from_dots(dots[..., :q], dots[..., q:], temperature)


def best_scale_relevancy(
    features: Tensor, queries: Tensor, negatives: Tensor, temperature: float = TEMPERATURE
) -> tuple[Tensor, Tensor]:
    """Relevancy at the best scale per query over a whole image (LERF's two passes).

    Pass 1 scores every scale by the highest relevancy over the image's rays; pass 2 keeps the map of the
    winning scale (ties: the smallest scale index).

    Args:
        features: ``[R, S, D]`` unit features of the image's ``R`` rays at ``S`` scales (``S = 1`` for a field
            without scales).
        queries: ``[Q, D]`` unit text embeddings.
        negatives: ``[N, D]`` unit negative embeddings.
        temperature: factor on the cosines.

    Returns:
        ``(relevancy [R, Q] float32, scale index [Q] int64)``.
    """
    rel = relevancy(features, queries, negatives, temperature)  # [R, S, Q]
    best = rel.amax(0).argmax(0)  # [Q]
    out = rel.gather(1, best[None, None, :].expand(rel.shape[0], 1, -1))[:, 0]  # [R, Q]
    return out, best
