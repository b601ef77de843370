"""SAM automatic masks (``--masks sam:<vit_h|vit_l|vit_b>:<checkpoint>``).

segment_anything has no downloader and its ``build_sam`` loads checkpoints without ``map_location``;
this backend builds the model empty and loads the state dict on the CPU with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch

from ovs3d.errors import BackendError
from ovs3d.foundation import weights
from ovs3d.foundation.base import ViewImage

logger = logging.getLogger(__name__)

SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
"""Official checkpoint file names per model type."""
SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/{}"


def _import_sam():
    try:
        import segment_anything
    except ImportError as e:
        raise BackendError("the SAM mask backend needs segment_anything: pip install 'ovs3d[sam]'") from e
    return segment_anything


class SamMaskBackend:
    """A :class:`~ovs3d.foundation.base.MaskBackend` on SAM's automatic mask generator.

    ``propose`` converts the view to uint8, runs ``SamAutomaticMaskGenerator.generate`` under
    ``torch.inference_mode`` and returns the masks as ``[M, H, W]`` bool, sorted by area, largest first
    (ties keep SAM's order). Masks may overlap.

    Args:
        model_type: ``"vit_h"``, ``"vit_l"`` or ``"vit_b"``.
        checkpoint: the checkpoint file. ``None``: look for the official file name
            (:data:`SAM_CHECKPOINTS`) in ``$OVS3D_WEIGHTS_DIR`` and ovs3d's cache, and download it there
            only if ``allow_download`` (never when ``HF_HUB_OFFLINE`` is set).
        device: torch device.
        allow_download: see ``checkpoint``.
        **generator_kwargs: passed to ``SamAutomaticMaskGenerator`` (``points_per_side``,
            ``pred_iou_thresh``, ...); they are part of :attr:`identity`.

    Raises:
        BackendError: segment_anything is missing, the model type is unknown, the checkpoint is missing or
            does not fit the model type, or a generator argument is invalid.
    """

    def __init__(
        self,
        model_type: str = "vit_h",
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        *,
        allow_download: bool = False,
        **generator_kwargs,
    ) -> None:
        _import_sam()
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

        if model_type not in SAM_CHECKPOINTS:
            raise BackendError(
                f"unknown SAM model type {model_type!r}; use vit_h, vit_l or vit_b "
                "(--masks sam:vit_h:/path/sam_vit_h_4b8939.pth)"
            )
        known = SAM_CHECKPOINTS[model_type]
        flag = f"--masks sam:{model_type}:/path/{known}"
        if checkpoint is not None:
            path = weights.resolve_weights_file(checkpoint, what=f"SAM {model_type} checkpoint", flag=flag)
        else:
            found = weights.find_weights([known])
            if found is None:
                weights.check_download_allowed(
                    allow_download,
                    what=f"SAM {model_type} weights ({known})",
                    hint=f"download {SAM_URL.format(known)} and pass it with {flag} or put it in $OVS3D_WEIGHTS_DIR",
                )
                found = weights.download_url(SAM_URL.format(known), known)
            path = found
        if generator_kwargs.get("output_mode", "binary_mask") != "binary_mask":
            raise BackendError("the SAM mask backend needs output_mode='binary_mask'")
        self.model_type = model_type
        self.checkpoint = path
        self.device = torch.device(device)
        sam = sam_model_registry[model_type](checkpoint=None)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            sam.load_state_dict(state)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(
                f"could not load SAM {model_type} checkpoint {path}: {first[:300]}; is it a {model_type} "
                f"checkpoint ({known})? ({flag})"
            ) from e
        self.model = sam.to(self.device).eval()
        try:
            self.generator = SamAutomaticMaskGenerator(self.model, **generator_kwargs)
        except TypeError as e:
            raise BackendError(f"invalid SAM mask-generator option: {e}") from e
        ident = f"sam:{model_type}:file={weights.fingerprint(path)}"
        if generator_kwargs:
            blob = json.dumps(generator_kwargs, sort_keys=True, default=str)
            ident += f":gen={hashlib.sha256(blob.encode()).hexdigest()[:8]}"
        self.identity = ident

    def propose(self, view: ViewImage) -> np.ndarray:
        """``[M, H, W]`` bool masks, sorted by area, largest first."""
        w, h = view.size
        image = (np.clip(np.asarray(view.rgb, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        with torch.inference_mode():
            anns = self.generator.generate(np.ascontiguousarray(image))
        if not anns:
            return np.zeros((0, h, w), dtype=bool)
        masks = np.stack([np.asarray(a["segmentation"], dtype=bool) for a in anns])
        order = np.argsort(-masks.sum(axis=(1, 2)), kind="stable")
        return masks[order]
