"""Backend flags (SPEC §3) -> backend objects.

Accepted specs:

- ``--clip``: ``sim[:<seed>]``, ``open_clip:<arch>:<tag>`` (``open_clip:ViT-B-16:openai``) or
  ``open_clip:<arch>:<weights file>`` (``open_clip:ViT-B-16:/path/to/weights.bin``);
- ``--dino``: ``sim[:<seed>]``, ``timm:<name>[:<weights file>]`` (``timm:vit_base_patch8_224.dino``);
- ``--masks``: ``sim[:<seed>]``, ``sam:<vit_h|vit_l|vit_b>[:<checkpoint>]``, ``superpixel[:slic|felzenszwalb]``.

Everything after the second colon is the weights path, so paths may contain colons. Every problem a user
can fix raises :class:`~ovs3d.errors.BackendError` with one line: what is wrong and the accepted forms.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ovs3d.errors import BackendError
from ovs3d.foundation.base import ClipBackend, DinoBackend, MaskBackend

ACCEPTED = {
    "clip": "sim[:<seed>] | open_clip:<arch>:<tag or weights file> "
    "(e.g. open_clip:ViT-B-16:openai, open_clip:ViT-B-16:/path/to/weights.bin)",
    "dino": "sim[:<seed>] | timm:<name>[:<weights file>] (e.g. timm:vit_base_patch8_224.dino:/path/model.safetensors)",
    "masks": "sim[:<seed>] | sam:<vit_h|vit_l|vit_b>[:<checkpoint>] (e.g. sam:vit_h:/path/sam_vit_h_4b8939.pth) "
    "| superpixel[:slic|felzenszwalb]",
}
"""One-line description of the accepted specs per flag (used in error messages and CLI help)."""


def _split(spec: str, flag: str) -> tuple[str, str]:
    if not isinstance(spec, str) or not spec.strip():
        raise BackendError(f"empty --{flag} backend; accepted: {ACCEPTED[flag]}")
    name, _, rest = spec.strip().partition(":")
    return name.strip().lower(), rest.strip()


def _sim_seed(rest: str, spec: str, flag: str, seed: int) -> int:
    if not rest:
        return int(seed)
    try:
        return int(rest)
    except ValueError:
        raise BackendError(
            f"malformed --{flag} {spec!r}: the sim seed must be an integer; accepted: {ACCEPTED[flag]}"
        ) from None


def _sim_scene(scene_root: str | os.PathLike | None, flag: str):
    from ovs3d.foundation.sim import SimScene

    if scene_root is None:
        raise BackendError(
            f"--{flag} sim needs a synthetic scene with sim/instances.json and none was given; "
            f"pass the scene or a real backend: {ACCEPTED[flag]}"
        )
    try:
        return SimScene(Path(scene_root))
    except BackendError as e:
        raise BackendError(f"--{flag} sim: {e}") from e


def _malformed(spec: str, flag: str, what: str) -> BackendError:
    return BackendError(f"malformed --{flag} {spec!r}: {what}; accepted: {ACCEPTED[flag]}")


def build_clip(
    spec: str,
    scene_root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    *,
    seed: int = 0,
    batch_size: int = 64,
    templates: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> ClipBackend:
    """Build the CLIP backend named by a ``--clip`` spec.

    Args:
        spec: ``sim[:<seed>]`` or ``open_clip:<arch>:<tag or weights file>``.
        scene_root: the scene folder (needed by ``sim``).
        device: torch device of a real model.
        allow_download: allow a real backend to download missing weights.
        seed: seed of ``sim`` when the spec gives none.
        batch_size: crops per forward pass (open_clip).
        templates: prompt templates (open_clip), e.g. ``["a photo of a {}."]``; default: prompts as given.
        cache_dir: open_clip/Hugging Face cache folder.

    Raises:
        BackendError: unknown or malformed spec, missing scene/weights/package.
    """
    name, rest = _split(spec, "clip")
    if name == "sim":
        from ovs3d.foundation.sim import SimCLIP

        s = _sim_seed(rest, spec, "clip", seed)
        return SimCLIP(_sim_scene(scene_root, "clip"), seed=s)
    if name in ("open_clip", "openclip"):
        arch, _, weights = rest.partition(":")
        if not arch.strip() or not weights.strip():
            raise _malformed(spec, "clip", "expected open_clip:<arch>:<tag or weights file>")
        from ovs3d.foundation.openclip import OpenClipBackend

        return OpenClipBackend(
            arch.strip(),
            weights.strip(),
            device=device,
            batch_size=batch_size,
            templates=templates,
            cache_dir=cache_dir,
            allow_download=allow_download,
        )
    raise BackendError(f"unknown --clip backend {name!r} in {spec!r}; accepted: {ACCEPTED['clip']}")


def build_dino(
    spec: str,
    scene_root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> DinoBackend:
    """Build the DINO backend named by a ``--dino`` spec.

    Args:
        spec: ``sim[:<seed>]`` or ``timm:<name>[:<weights file>]``.
        scene_root: the scene folder (needed by ``sim``).
        device: torch device of a real model.
        allow_download: allow timm to download missing weights.
        seed: seed of ``sim`` when the spec gives none.
        cache_dir: timm/Hugging Face cache folder.

    Raises:
        BackendError: unknown or malformed spec, missing scene/weights/package.
    """
    name, rest = _split(spec, "dino")
    if name == "sim":
        from ovs3d.foundation.sim import SimDINO

        s = _sim_seed(rest, spec, "dino", seed)
        return SimDINO(_sim_scene(scene_root, "dino"), seed=s)
    if name == "timm":
        model, _, path = rest.partition(":")
        if not model.strip():
            raise _malformed(spec, "dino", "expected timm:<name>[:<weights file>]")
        from ovs3d.foundation.dino import TimmDinoBackend

        return TimmDinoBackend(
            model.strip(),
            path.strip() or None,
            device=device,
            cache_dir=cache_dir,
            allow_download=allow_download,
        )
    raise BackendError(f"unknown --dino backend {name!r} in {spec!r}; accepted: {ACCEPTED['dino']}")


def build_masks(
    spec: str,
    scene_root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    *,
    seed: int = 0,
    **sam_kwargs,
) -> MaskBackend:
    """Build the mask proposer named by a ``--masks`` spec.

    Args:
        spec: ``sim[:<seed>]``, ``sam:<vit_h|vit_l|vit_b>[:<checkpoint>]`` or ``superpixel[:<method>]``.
        scene_root: the scene folder (needed by ``sim``).
        device: torch device of SAM.
        allow_download: allow downloading a SAM checkpoint that is not in ``$OVS3D_WEIGHTS_DIR``/the cache.
        seed: seed of ``sim`` when the spec gives none.
        **sam_kwargs: ``SamAutomaticMaskGenerator`` options.

    Raises:
        BackendError: unknown or malformed spec, missing scene/weights/package.
    """
    name, rest = _split(spec, "masks")
    if name == "sim":
        from ovs3d.foundation.sim import SimMasks

        s = _sim_seed(rest, spec, "masks", seed)
        return SimMasks(_sim_scene(scene_root, "masks"), seed=s)
    if name == "superpixel":
        from ovs3d.foundation.superpixel import SuperpixelMasks

        method = rest.lower() or "slic"
        if method not in ("slic", "felzenszwalb"):
            raise _malformed(spec, "masks", f"unknown superpixel method {rest!r} (slic or felzenszwalb)")
        return SuperpixelMasks(method=method)
    if name == "sam":
        model_type, _, ckpt = rest.partition(":")
        model_type = model_type.strip().lower()
        if model_type not in ("vit_h", "vit_l", "vit_b"):
            raise _malformed(spec, "masks", f"unknown SAM model type {model_type!r} (vit_h, vit_l or vit_b)")
        from ovs3d.foundation.sam import SamMaskBackend

        return SamMaskBackend(
            model_type, ckpt.strip() or None, device=device, allow_download=allow_download, **sam_kwargs
        )
    raise BackendError(f"unknown --masks backend {name!r} in {spec!r}; accepted: {ACCEPTED['masks']}")


def check_spec(family: str, spec: str, flag: str | None = None) -> None:
    """Check a ``--clip``/``--dino``/``--masks`` spec without building anything (milliseconds): its form, and
    that an explicit weights file exists. ``auto`` passes. What needs the model itself (an architecture
    name, a hub tag, the scene's ``sim/``) is checked when the backend is built.

    Args:
        family: ``clip``, ``dino`` or ``masks``.
        spec: the flag's value.
        flag: the flag as the user typed it (default ``--<family>``).

    Raises:
        BackendError: unknown or malformed spec, or a weights file that does not exist.
    """
    from ovs3d.foundation import weights

    if spec == "auto":
        return
    flag = flag or f"--{family}"
    name, rest = _split(spec, family)
    if name == "sim":
        _sim_seed(rest, spec, family, 0)
        return
    if family == "clip" and name in ("open_clip", "openclip"):
        arch, _, pretrained = rest.partition(":")
        if not arch.strip() or not pretrained.strip():
            raise _malformed(spec, "clip", "expected open_clip:<arch>:<tag or weights file>")
        if weights.looks_like_path(pretrained.strip()):
            weights.resolve_weights_file(
                pretrained.strip(),
                what=f"open_clip {arch.strip()} weights file",
                flag=f"{flag} open_clip:{arch.strip()}:/path/to/weights.bin",
            )
        return
    if family == "dino" and name == "timm":
        model, _, path = rest.partition(":")
        if not model.strip():
            raise _malformed(spec, "dino", "expected timm:<name>[:<weights file>]")
        if path.strip():
            hint = f"{flag} timm:{model.strip()}:/path/to/weights.safetensors"
            weights.resolve_weights_file(path.strip(), what=f"timm {model.strip()} weights file", flag=hint)
        return
    if family == "masks" and name == "superpixel":
        if (rest.lower() or "slic") not in ("slic", "felzenszwalb"):
            raise _malformed(spec, "masks", f"unknown superpixel method {rest!r} (slic or felzenszwalb)")
        return
    if family == "masks" and name == "sam":
        model_type, _, ckpt = rest.partition(":")
        model_type = model_type.strip().lower()
        if model_type not in ("vit_h", "vit_l", "vit_b"):
            raise _malformed(spec, "masks", f"unknown SAM model type {model_type!r} (vit_h, vit_l or vit_b)")
        if ckpt.strip():
            from ovs3d.foundation.sam import SAM_CHECKPOINTS

            hint = f"{flag} sam:{model_type}:/path/{SAM_CHECKPOINTS[model_type]}"
            weights.resolve_weights_file(ckpt.strip(), what=f"SAM {model_type} checkpoint", flag=hint)
        return
    raise BackendError(f"unknown {flag} backend {name!r} in {spec!r}; accepted: {ACCEPTED[family]}")


def spec_rule(family: str):
    """``custom`` of a backend flag's :class:`~ovs3d.utils.config.Rule`: :func:`check_spec` of ``family``."""

    def check(spec: str, flag: str) -> None:
        check_spec(family, spec, flag)

    return check


DEFAULT_REAL = {
    "clip": "open_clip:ViT-B-16:openai",
    "dino": "timm:vit_base_patch8_224.dino",
    "masks": "superpixel",
}
"""What ``auto`` means on a real (non-synthetic) scene: the models the papers used (SAM needs a checkpoint
path, so masks default to the CPU superpixel proposer)."""


def resolve_spec(spec: str, has_sim: bool, family: str) -> str:
    """``auto`` -> ``sim`` on synthetic scenes (``has_sim``), else :data:`DEFAULT_REAL`; other specs unchanged."""
    if spec != "auto":
        return spec
    return "sim" if has_sim else DEFAULT_REAL[family]


def build_backends(
    families: set[str] | Sequence[str],
    specs: dict[str, str],
    scene_root: str | os.PathLike,
    has_sim: bool,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
) -> dict[str, ClipBackend | DinoBackend | MaskBackend]:
    """Build the backends a method needs from the run's flags.

    Args:
        families: which of ``clip``, ``dino``, ``masks`` to build.
        specs: the flags, e.g. ``{"clip": "auto", "dino": "timm:...", "masks": "sam:vit_h:/path"}``.
        scene_root: the scene folder (simulated backends read its ``sim/``).
        has_sim: whether the scene is synthetic (``auto`` resolves to ``sim``).
        device: torch device of real models.
        allow_download: let real backends download weights that are not cached.

    Returns:
        ``{family: backend}``.
    """
    builders = {"clip": build_clip, "dino": build_dino, "masks": build_masks}
    out = {}
    for family in ("clip", "dino", "masks"):
        if family in families:
            spec = resolve_spec(specs[family], has_sim, family)
            out[family] = builders[family](spec, scene_root, device=str(device), allow_download=allow_download)
    return out
