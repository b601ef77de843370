"""DINO dense features through timm (``--dino timm:<name>[:<weights file>]``).

3D-OVS uses ``dino_vitb8`` from torch.hub and hooks ``model.blocks[-1]``: the last transformer block's
output, *before* the final LayerNorm, CLS token dropped. timm ships the same weights as
``vit_base_patch8_224.dino`` (``vit_small_patch8_224.dino`` for ViT-S/8) without fetching code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.errors import BackendError
from ovs3d.foundation import weights
from ovs3d.foundation.base import ViewImage

logger = logging.getLogger(__name__)


def _import_timm():
    try:
        import timm
    except ImportError as e:
        raise BackendError("the timm DINO backend needs timm: pip install 'ovs3d[dino]'") from e
    return timm


def _cached_timm_weights(name: str, cfg: dict, cache_dir: str | os.PathLike | None) -> Path | None:
    """A local file with the pretrained weights of a timm model, without network access."""
    names = [f"{name}{suffix}" for suffix in (".safetensors", ".pth", ".bin")]
    url = cfg.get("url") or ""
    if url:
        names.append(os.path.basename(url))
    extra: list[Path] = []
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        found = weights.hf_cached_file(hub_id, files, cache_dir=cache_dir)
        if found is not None:
            extra.append(found)
    if url:
        hub_dir = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
        extra.append(hub_dir / os.path.basename(url))
    return weights.find_weights(names, extra)


class TimmDinoBackend:
    """A :class:`~ovs3d.foundation.base.DinoBackend` on a timm ViT (e.g. ``vit_base_patch8_224.dino``).

    ``dense_features`` normalises the view with the model's mean/std (ImageNet for DINO), crops it to a
    multiple of the patch size (the right/bottom remainder is dropped, so cell ``(i, j)`` covers pixels
    ``[p·j, p·j + p) × [p·i, p·i + p)``; a side shorter than one patch is zero-padded), runs the ViT at
    that size (``dynamic_img_size=True``) under ``torch.inference_mode`` (fp16 autocast on CUDA), and
    returns the last block's patch tokens before the final norm, prefix (CLS/register) tokens dropped:
    ``[H // p, W // p, D]`` CPU float32, not normalised. ``stride`` = patch size ``p`` (8 for ViT-*/8).

    Args:
        name: timm model name with pretrained tag, e.g. ``"vit_base_patch8_224.dino"``.
        weights_path: weights file (timm or original DINO checkpoint; safetensors or torch). ``None``:
            look for the tag's weights in ``$OVS3D_WEIGHTS_DIR`` (``<name>.safetensors``/``.pth``/``.bin``
            or the original file name), ovs3d's cache, the Hugging Face hub cache and
            ``$TORCH_HOME/hub/checkpoints``.
        device: torch device.
        cache_dir: timm/Hugging Face cache folder (default: the libraries' defaults).
        allow_download: let timm download the tag's weights when they are not cached (never when
            ``HF_HUB_OFFLINE`` is set).

    Raises:
        BackendError: timm is missing, the model is unknown or not a patch ViT, weights are missing or do
            not fit.
    """

    def __init__(
        self,
        name: str,
        weights_path: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        *,
        cache_dir: str | os.PathLike | None = None,
        allow_download: bool = False,
    ) -> None:
        timm = _import_timm()
        self.name = name
        self.device = torch.device(device)
        flag = f"--dino timm:{name}:/path/to/weights.safetensors"
        if not timm.is_model(name):
            raise BackendError(
                f"unknown timm model {name!r}; use a ViT with DINO weights such as vit_base_patch8_224.dino ({flag})"
            )
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:
            cfg = None
        cfg_dict = cfg.to_dict() if cfg is not None else {}
        kwargs: dict = {"dynamic_img_size": True, "num_classes": 0}
        if weights_path is not None:
            path = weights.resolve_weights_file(weights_path, what=f"timm {name} weights file", flag=flag)
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
            self.weights_id = f"file={weights.fingerprint(path)}"
            source = str(path)
        else:
            local = _cached_timm_weights(name, cfg_dict, cache_dir) if cfg_dict else None
            if local is not None:
                kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(local)))
                source = str(local)
                logger.info("timm %s weights from %s", name, local)
            else:
                if not cfg_dict or not (cfg_dict.get("hf_hub_id") or cfg_dict.get("url")):
                    raise BackendError(
                        f"timm model {name!r} has no pretrained weights to find; pass a weights file: {flag}"
                    )
                where = cfg_dict.get("hf_hub_id") or cfg_dict.get("url")
                weights.check_download_allowed(
                    allow_download,
                    what=f"timm {name} weights ({where})",
                    hint=f"download them and pass the file ({flag}) or put it in $OVS3D_WEIGHTS_DIR",
                )
                kwargs.update(pretrained=True)
                if cache_dir:
                    kwargs["cache_dir"] = str(cache_dir)
                source = str(where)
            self.weights_id = "hub"
        try:
            model = timm.create_model(name, **kwargs)
        except TypeError as e:
            raise BackendError(f"timm model {name!r} does not support dense ViT features ({e}); {flag}") from e
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(
                f"could not load timm {name} weights from {source}: {first[:300]}; check that the file fits "
                f"the model ({flag})"
            ) from e
        if self.weights_id == "hub":  # the tag's weights: name the file they came from when it is local
            local = _cached_timm_weights(name, cfg_dict, cache_dir) if cfg_dict else None
            if local is not None:
                self.weights_id = f"hub:file={weights.fingerprint(local)}"
        if not hasattr(model, "patch_embed") or not hasattr(model, "forward_intermediates"):
            raise BackendError(f"timm model {name!r} is not a patch ViT; dense DINO features need one ({flag})")
        patch = model.patch_embed.patch_size
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if patch[0] != patch[1]:
            raise BackendError(f"timm model {name!r} has non-square patches {patch}; use a ViT-*/8 model")
        self.stride = int(patch[0])
        self.dim = int(model.num_features)
        pcfg = getattr(model, "pretrained_cfg", {}) or {}
        self.mean = torch.tensor(pcfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        self.std = torch.tensor(pcfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.model = model.to(self.device).eval()
        self.identity = f"timm:{name}:{self.weights_id}:last-block-prenorm"

    def dense_features(self, view: ViewImage) -> torch.Tensor:
        """``[H // stride, W // stride, dim]`` float32 patch features (CPU); see the class docstring."""
        w, h = view.size
        p = self.stride
        gh, gw = h // p, w // p
        x = torch.as_tensor(np.ascontiguousarray(view.rgb), dtype=torch.float32, device=self.device)
        x = x.permute(2, 0, 1)[None]  # [1, 3, H, W]
        x = (x - self.mean.to(self.device)[None, :, None, None]) / self.std.to(self.device)[None, :, None, None]
        hc, wc = max(gh, 1) * p, max(gw, 1) * p
        x = x[:, :, :hc, :wc]
        if x.shape[2] < hc or x.shape[3] < wc:
            x = F.pad(x, (0, wc - x.shape[3], 0, hc - x.shape[2]))
        autocast = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with torch.inference_mode(), autocast:
            feats = self.model.forward_intermediates(
                x, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True
            )[-1]  # [1, D, hc / p, wc / p]
        feats = feats[0].permute(1, 2, 0).float()[:gh, :gw]
        return feats.cpu().contiguous()
