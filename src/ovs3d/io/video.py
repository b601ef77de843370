"""Writing videos (imageio + the ffmpeg binary shipped by imageio-ffmpeg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovs3d.utils.files import atomic_path


def _even_frame(frame: np.ndarray, min_side: int) -> np.ndarray:
    """Upscale small frames (nearest) and pad to multiples of 16 (H.264 macro blocks)."""
    h, w = frame.shape[:2]
    k = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if k > 1:
        frame = frame.repeat(k, axis=0).repeat(k, axis=1)
    h, w = frame.shape[:2]
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return frame


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 24, min_side: int = 240) -> Path:
    """Write uint8 ``[H, W, 3]`` frames as an H.264 MP4, atomically.

    Args:
        path: destination ``.mp4``.
        frames: frames of equal size.
        fps: frame rate.
        min_side: small frames are upscaled (nearest) so their short side reaches this.

    Returns:
        ``path``.
    """
    import imageio.v2 as imageio

    path = Path(path)
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(
            tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error"
        )
        try:
            for f in frames:
                writer.append_data(_even_frame(np.asarray(f, dtype=np.uint8), min_side))
        finally:
            writer.close()
    return path
