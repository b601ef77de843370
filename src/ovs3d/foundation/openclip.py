"""CLIP through open_clip (``--clip open_clip:<arch>:<tag or weights file>``).

Weights are never downloaded implicitly: a weights file is used as given (see
:mod:`ovs3d.foundation.weights` for the search order), and a pretrained tag (``openai``,
``laion2b_s34b_b88k``, ...) must already be in ``$OVS3D_WEIGHTS_DIR``, ovs3d's cache, the Hugging Face hub
cache or ``~/.cache/clip``, unless the caller allows a download.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovs3d.errors import BackendError
from ovs3d.foundation import weights
from ovs3d.foundation.base import ViewImage

logger = logging.getLogger(__name__)

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise BackendError("the open_clip CLIP backend needs open_clip: pip install 'ovs3d[clip]'") from e
    return open_clip


def _tag_file_candidates(arch: str, tag: str, cfg: dict, cache_dir: str | os.PathLike | None) -> Path | None:
    """A local file holding the weights of an open_clip tag, without any network access."""
    names = [f"{arch}-{tag}{suffix}" for suffix in (".safetensors", ".bin", ".pt", ".pth")]
    url = cfg.get("url", "")
    if url:
        names.append(os.path.basename(url))
    extra: list[Path] = []
    hf = cfg.get("hf_hub", "")
    if hf:
        repo, filename = os.path.split(hf)  # "org/repo/" (default file) or "org/repo/file.bin"
        filenames = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename and filename.endswith(".bin"):
            filenames.insert(0, filename[: -len(".bin")] + ".safetensors")
        found = weights.hf_cached_file(repo, filenames, cache_dir=cache_dir)
        if found is not None:
            extra.append(found)
    if url:
        extra.append(Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url))
    return weights.find_weights(names, extra)


class OpenClipBackend:
    """A :class:`~ovs3d.foundation.base.ClipBackend` on an open_clip model.

    ``encode_crops`` cuts the boxes out of the view's RGB (zero padding where a box reaches outside the image or,
    with ``content`` boxes, outside its content box) and applies CLIP's preprocessing on tensors, in batches: for
    ``resize_mode="shortest"`` (CLIP, OpenCLIP) resizing the short side to 224 and centre-cropping 224 equals taking
    the centred square of side ``min(w, h)`` (offset rounded as torchvision's ``CenterCrop``) and resizing it to
    224×224, done here with antialiased bicubic interpolation, grouped by square size (it matches open_clip's PIL
    pipeline up to sub-pixel rounding and the resampling kernel); ``"squash"`` (SigLIP) resizes the whole box. Then
    the model's mean/std, ``encode_image`` under ``torch.inference_mode`` (fp16 autocast on CUDA). Embeddings are
    returned raw (not normalised), CPU float32.

    ``encode_text`` tokenises the prompts exactly as given; with ``templates`` (e.g.
    ``["a photo of a {}."]``) each text's embedding is the normalised mean of its normalised template
    embeddings. Output: ``[T, D]`` CPU float32, L2-normalised.

    Args:
        arch: open_clip architecture (``open_clip.list_models()``), e.g. ``"ViT-B-16"``.
        pretrained: an open_clip tag (``open_clip.list_pretrained_tags_by_model(arch)``) or a weights file.
        device: torch device for the model.
        batch_size: crops per ``encode_image`` call.
        templates: optional prompt templates with one ``{}``.
        cache_dir: open_clip/Hugging Face cache folder for tags (default: the libraries' defaults).
        allow_download: allow downloading a tag's weights when they are not cached (never when
            ``HF_HUB_OFFLINE`` is set).

    Raises:
        BackendError: open_clip is missing, the architecture or tag is unknown, the weights are missing
            or do not fit the architecture.
    """

    def __init__(
        self,
        arch: str,
        pretrained: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        *,
        templates: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        allow_download: bool = False,
    ) -> None:
        open_clip = _import_open_clip()
        self.arch = arch
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.templates = list(templates) if templates else None
        if self.templates and any("{}" not in t for t in self.templates):
            raise BackendError(f"every CLIP prompt template needs a '{{}}' placeholder, got {self.templates}")
        if arch not in open_clip.list_models():
            raise BackendError(
                f"unknown open_clip architecture {arch!r}; pick one of open_clip.list_models(), e.g. ViT-B-16 "
                "(--clip open_clip:ViT-B-16:/path/to/weights.bin)"
            )
        pretrained = str(pretrained)
        flag = f"--clip open_clip:{arch}:/path/to/weights.bin"
        kwargs: dict = {}
        tag: str | None = None
        cfg: dict = {}
        if weights.looks_like_path(pretrained):
            path = weights.resolve_weights_file(pretrained, what=f"open_clip {arch} weights file", flag=flag)
            source = str(path)
            self.weights_id = f"file={weights.fingerprint(path)}"
        else:
            tag = pretrained
            cfg = open_clip.get_pretrained_cfg(arch, tag)
            if not cfg:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise BackendError(
                    f"unknown open_clip tag {tag!r} for {arch} (known: {', '.join(tags) or 'none'}); "
                    f"or pass a weights file: {flag}"
                )
            kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
            local = _tag_file_candidates(arch, tag, cfg, cache_dir)
            if local is not None:
                source = str(local)
                # keep the tag's preprocessing, as if loaded by tag
                kwargs.update({f"image_{k}": cfg[k] for k in _PREPROCESS_KEYS if k in cfg})
                logger.info("open_clip %s:%s weights from %s", arch, tag, local)
            else:
                where = cfg.get("hf_hub") or cfg.get("url") or tag
                weights.check_download_allowed(
                    allow_download,
                    what=f"open_clip {arch} weights for tag {tag!r} ({where})",
                    hint=f"download them and pass the file ({flag}) or put it in $OVS3D_WEIGHTS_DIR",
                )
                source = tag
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                arch,
                pretrained=source,
                cache_dir=str(cache_dir) if cache_dir else None,
                require_pretrained=True,
                **kwargs,
            )
        except BackendError:
            raise
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(
                f"could not load open_clip {arch} weights from {source}: {first[:300]}; "
                f"check that the file is a {arch} checkpoint ({flag})"
            ) from e
        if tag is not None:  # name the file the tag's weights came from (after a download: if found)
            local = Path(source) if source != tag else _tag_file_candidates(arch, tag, cfg, cache_dir)
            self.weights_id = tag + (f":file={weights.fingerprint(local)}" if local is not None else "")
        self.model = model.to(self.device).eval()
        pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = pp.get("size", 224)
        self.image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.mean = torch.tensor(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=torch.float32)
        self.std = torch.tensor(pp.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=torch.float32)
        self.interpolation = "bilinear" if pp.get("interpolation") == "bilinear" else "bicubic"
        self.resize_mode = pp.get("resize_mode", "shortest")
        if self.resize_mode not in ("shortest", "squash"):
            logger.warning("open_clip resize_mode %r is treated as 'shortest'", self.resize_mode)
            self.resize_mode = "shortest"
        self.tokenizer = open_clip.get_tokenizer(arch)
        model_cfg = open_clip.get_model_config(arch) or {}
        self.dim = int(model_cfg.get("embed_dim") or self.encode_text(["a"]).shape[1])
        ident = f"open_clip:{arch}:{self.weights_id}"
        if self.templates:
            digest = hashlib.sha256("\n".join(self.templates).encode()).hexdigest()[:8]
            ident += f":templates={digest}"
        self.identity = ident

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return torch.autocast("cpu", enabled=False)

    # -- text --

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``[T, D]`` float32 L2-normalised text embeddings (CPU); see the class docstring."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        texts = list(texts)
        if not texts:
            return torch.zeros(0, getattr(self, "dim", 0))
        templates = self.templates or ["{}"]
        prompts = [t.format(s) for s in texts for t in templates]
        chunks = []
        with torch.inference_mode(), self._autocast():
            for i in range(0, len(prompts), 256):
                tokens = self.tokenizer(prompts[i : i + 256]).to(self.device)
                chunks.append(self.model.encode_text(tokens).float())
        emb = F.normalize(torch.cat(chunks), dim=-1).view(len(texts), len(templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1).cpu()

    # -- images --

    def _source_regions(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` ``(x0, y0, w, h)`` of the part of each box that CLIP's resize+centre-crop keeps."""
        x0, y0 = boxes[:, 0], boxes[:, 1]
        bw, bh = boxes[:, 2] - x0, boxes[:, 3] - y0
        if self.resize_mode == "squash":
            return np.stack([x0, y0, bw, bh], axis=1)
        s = np.minimum(bw, bh)
        # torchvision CenterCrop: offset = int(round((L - s) / 2)) (round half to even, as Python's round)
        ox = np.round((bw - s) / 2.0).astype(np.int64)
        oy = np.round((bh - s) / 2.0).astype(np.int64)
        return np.stack([x0 + ox, y0 + oy, s, s], axis=1)

    def preprocess_crops(
        self, image: torch.Tensor, boxes: np.ndarray, content: np.ndarray | None = None
    ) -> torch.Tensor:
        """CLIP input for crops of one image.

        Args:
            image: ``[3, H, W]`` float RGB in [0, 1] on the model's device.
            boxes: ``[N, 4]`` int boxes, possibly reaching outside the image (zero padding).
            content: optional ``[N, 4]`` int boxes (image coordinates): pixels of a crop outside its content
                box are set to zero before the resize, like padding. ``None``: nothing is zeroed.

        Returns:
            ``[N, 3, S, S]`` normalised float32 batch (``S`` = the model's image size).
        """
        _, h, w = image.shape
        regions = self._source_regions(boxes)
        pad = int(
            max(
                0,
                -regions[:, 0].min(),
                -regions[:, 1].min(),
                (regions[:, 0] + regions[:, 2]).max() - w,
                (regions[:, 1] + regions[:, 3]).max() - h,
            )
        )
        if pad:
            image = F.pad(image, (pad, pad, pad, pad))
            regions = regions.copy()
            regions[:, :2] += pad
        out = torch.empty(len(boxes), 3, *self.image_size, device=image.device)
        sizes = regions[:, 2:4]
        keys, inverse = np.unique(sizes, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for g, (rw, rh) in enumerate(keys):
            idx = np.nonzero(inverse == g)[0]
            rx = torch.as_tensor(regions[idx, 0], device=image.device)
            ry = torch.as_tensor(regions[idx, 1], device=image.device)
            cols = rx[:, None] + torch.arange(int(rw), device=image.device)[None]  # [n, rw]
            rows = ry[:, None] + torch.arange(int(rh), device=image.device)[None]  # [n, rh]
            patch = image[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)  # [n, 3, rh, rw]
            if content is not None:  # zero what lies outside the content box (coordinates of the padded image)
                c = torch.as_tensor(content[idx] + pad, device=image.device)  # [n, 4]
                in_rows = (rows >= c[:, 1:2]) & (rows < c[:, 3:4])  # [n, rh]
                in_cols = (cols >= c[:, 0:1]) & (cols < c[:, 2:3])  # [n, rw]
                patch = patch * (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(patch.dtype)
            resized = F.interpolate(
                patch, size=self.image_size, mode=self.interpolation, align_corners=False, antialias=True
            )
            out[torch.as_tensor(idx, device=image.device)] = resized.clamp_(0.0, 1.0)
        mean = self.mean.to(out.device)[None, :, None, None]
        std = self.std.to(out.device)[None, :, None, None]
        return (out - mean) / std

    def encode_crops(self, view: ViewImage, boxes: np.ndarray, *, content: np.ndarray | None = None) -> torch.Tensor:
        """Embed crops of ``view``.

        Args:
            view: the image (its ``rgb`` is used).
            boxes: ``[N, 4]`` int ``(x0, y0, x1, y1)``, exclusive ends (may reach outside: zero padding).
            content: optional ``[N, 4]`` int ``(x0, y0, x1, y1)`` boxes: the pixels of each crop outside its
                content box are zeros (before CLIP's resize and mean/std), as padding. ``None``: none.

        Returns:
            ``[N, D]`` float32 raw image embeddings (CPU).
        """
        if isinstance(boxes, torch.Tensor):
            boxes = boxes.detach().cpu().numpy()
        b = np.rint(np.asarray(boxes)).astype(np.int64).reshape(-1, 4)
        if len(b) and ((b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any()):
            raise ValueError("boxes must be non-empty: x1 > x0 and y1 > y0")
        c = None
        if content is not None:
            if isinstance(content, torch.Tensor):
                content = content.detach().cpu().numpy()
            c = np.rint(np.asarray(content)).astype(np.int64)
            if c.shape != b.shape:
                raise ValueError(f"content boxes must be [N, 4] like the boxes {b.shape}, got shape {c.shape}")
        if len(b) == 0:
            return torch.zeros(0, self.dim)
        image = torch.as_tensor(np.ascontiguousarray(view.rgb), dtype=torch.float32, device=self.device)
        image = image.permute(2, 0, 1)  # [3, H, W]
        # sort by source size so that a batch holds few distinct sizes; results are put back in order
        regions = self._source_regions(b)
        order = np.lexsort((regions[:, 3], regions[:, 2]))
        out = torch.empty(len(b), self.dim)
        with torch.inference_mode():
            for i in range(0, len(b), self.batch_size):
                idx = order[i : i + self.batch_size]
                batch = (
                    self.preprocess_crops(image, b[idx]) if c is None else self.preprocess_crops(image, b[idx], c[idx])
                )
                with self._autocast():
                    emb = self.model.encode_image(batch)
                out[torch.as_tensor(idx)] = emb.float().cpu()
        return out
