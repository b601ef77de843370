"""Prompt ensembling for CLIP text embeddings (CLIP §3.1.4; OV-NeRF's evaluation text embeddings).

OV-NeRF scores its pseudo-label updates and its evaluation with 85 templates per label: CLIP's 80
ImageNet templates plus 5 scene templates, each embedding normalised, averaged, renormalised (reference
digest §A.6). Its training losses use the raw label names (``"none"`` here).

The 80 ImageNet templates are read from the installed open_clip (``OPENAI_IMAGENET_TEMPLATES``), an
optional extra; nothing here imports it until a template set needs it.

Note: a backend built with its own templates (``OpenClipBackend(templates=...)``) already ensembles inside
``encode_text``; combine it with ``templates="none"`` here, or ensembles get nested.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ovs3d.errors import BackendError
from ovs3d.foundation.base import ClipBackend

__all__ = ["TEMPLATE_SETS", "SCENE_TEMPLATES", "imagenet_templates", "templates_for", "encode_prompts"]

TEMPLATE_SETS: tuple[str, ...] = ("none", "imagenet", "imagenet+scene")
"""Named template sets: ``"none"`` (the raw label), ``"imagenet"`` (CLIP's 80), ``"imagenet+scene"``
(the 80 plus :data:`SCENE_TEMPLATES`: OV-NeRF's 85)."""

SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)
"""OV-NeRF's 5 scene templates, appended to the ImageNet ones."""


def imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates as format strings with one ``{}``, in open_clip's order.

    open_clip ships them as lambdas (``lambda c: f"a photo of a {c}."``); calling each with ``"{}"``
    turns it back into its template string.

    Raises:
        BackendError: open_clip is not installed (it is the ``clip`` extra).
    """
    try:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    except ImportError as e:
        raise BackendError(
            "the 'imagenet' prompt templates come from open_clip: pip install 'ovs3d[clip]' (or use templates='none')"
        ) from e
    return [t("{}") if callable(t) else str(t) for t in OPENAI_IMAGENET_TEMPLATES]


def templates_for(templates: str | Sequence[str]) -> list[str]:
    """The template strings of a named set (:data:`TEMPLATE_SETS`) or of an explicit list.

    Args:
        templates: a set name, or templates that each hold exactly one ``{}`` (the label's place).

    Returns:
        The templates, ``["{}"]`` for ``"none"``.
    """
    if isinstance(templates, str):
        if templates == "none":
            return ["{}"]
        if templates == "imagenet":
            return imagenet_templates()
        if templates == "imagenet+scene":
            return imagenet_templates() + list(SCENE_TEMPLATES)
        raise ValueError(f"unknown template set {templates!r}; expected one of {TEMPLATE_SETS} or a list of templates")
    out = [str(t) for t in templates]
    bad = [t for t in out if t.count("{}") != 1]
    if not out or bad:
        raise ValueError(f"templates need exactly one '{{}}' each (and at least one template), got {bad or out}")
    return out


def encode_prompts(
    clip: ClipBackend,
    labels: Sequence[str],
    templates: str | Sequence[str] = "none",
    batch_size: int = 256,
) -> torch.Tensor:
    """Ensembled text embedding of each label: normalise(mean over templates of normalise(encode(prompt))).

    Each template's ``{}`` is replaced by the label (plain substitution, so braces in a label are safe),
    the prompts go to ``clip.encode_text`` in batches of ``batch_size``, every embedding is L2-normalised,
    the ``T`` embeddings of a label are averaged and the mean is renormalised. With ``"none"`` the result
    is exactly ``normalize(clip.encode_text(labels))``.

    Args:
        clip: a :class:`~ovs3d.foundation.base.ClipBackend` (only ``encode_text`` and ``dim`` are used).
        labels: the ``C`` label texts.
        templates: a name in :data:`TEMPLATE_SETS` or an explicit list of templates with one ``{}`` each.
        batch_size: prompts per ``encode_text`` call (bounds the text encoder's memory).

    Returns:
        ``[C, D]`` float32 unit vectors, on the device ``encode_text`` returns.
    """
    if isinstance(labels, str):
        raise TypeError("labels must be a list of strings, not one string")
    labels = [str(s) for s in labels]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    temps = templates_for(templates)
    if not labels:
        return torch.zeros(0, int(clip.dim))
    prompts = [t.replace("{}", s) for s in labels for t in temps]  # label-major: [C * T]
    emb = torch.cat([clip.encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)])
    emb = F.normalize(emb.float(), dim=-1)  # [C * T, D]
    if temps == ["{}"]:
        return emb  # one raw label per row: normalize(encode_text(labels)), no second normalisation
    emb = emb.view(len(labels), len(temps), -1)  # [C, T, D]
    return F.normalize(emb.mean(dim=1), dim=-1)
