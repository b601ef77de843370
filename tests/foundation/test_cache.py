"""Feature cache: hits, invalidation, corruption, atomicity, storage; scene-level feature entry points."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ovs3d.foundation.base import ViewImage
from ovs3d.foundation.cache import CachedFeatures, FeatureCache, dequantise, quantise
from ovs3d.foundation.features import (
    FeatureConfig,
    clip_features,
    default_cache_root,
    dino_features,
    dino_input_downscale,
    mask_proposals,
    masks_to_label_map,
    select_views,
    stem_seed,
)
from ovs3d.foundation.pixel_clip import PixelClipConfig, pixel_clip_features

SHAPE = (3, 6, 8, 16)  # [S, H, W, D]


def make_images(folder: Path, n: int = 5) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    views = []
    for i in range(n):
        p = folder / f"{i:02d}.png"
        p.write_bytes(b"image %d" % i)
        views.append((p.stem, p))
    return views


class Compute:
    """compute(i) for the cache: deterministic features per view, counting calls; may fail on a view."""

    def __init__(self, fail_on: int | None = None, offset: float = 0.0) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.offset = offset

    def __call__(self, i: int) -> np.ndarray:
        self.calls.append(i)
        if i == self.fail_on:
            raise RuntimeError(f"boom on view {i}")
        return np.random.default_rng(i).normal(size=SHAPE).astype(np.float32) + self.offset


def get(cache: FeatureCache, views, compute, identity="m1", settings=None, **kw) -> CachedFeatures:
    return cache.get_or_compute("pixel_clip", identity, settings or {"size": [8, 6]}, views, compute, **kw)


def test_hit_on_second_call_and_memmap(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    first = Compute()
    a = get(cache, views, first)
    assert first.calls == [0, 1, 2, 3, 4]
    again = Compute()
    b = get(FeatureCache(tmp_path / "cache"), views, again)
    assert again.calls == []
    assert len(b) == 5 and b.key == a.key and b.stems == [s for s, _ in views]
    x = b[2]
    assert isinstance(x, np.memmap) and x.dtype == np.float16 and x.shape == SHAPE
    np.testing.assert_array_equal(x, Compute()(2).astype(np.float16))
    assert b.shape == SHAPE and b.path == tmp_path / "cache" / "pixel_clip" / b.key
    meta = json.loads((b.path / "meta.json").read_text())
    assert meta["identity"] == "m1" and meta["dtype"] == "float16" and meta["shape"] == list(SHAPE)
    assert all(len(v["files"]["data"]["sha256"]) == 64 for v in meta["views"])


def test_fp16_size(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images")
    entry = get(FeatureCache(tmp_path / "cache"), views, Compute())
    per_view = np.prod(SHAPE) * 2
    assert per_view * 5 <= entry.nbytes <= (per_view + 256) * 5
    files = list(entry.path.glob("view_*.npy"))
    assert len(files) == 5 and sum(f.stat().st_size for f in files) == entry.nbytes


def test_invalidation(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    base = get(cache, views, Compute())
    keys = {base.key}
    for kw in ({"identity": "m2"}, {"settings": {"size": [8, 6], "patch_divisors": [5, 7]}}):
        c = Compute()
        keys.add(get(cache, views, c, **kw).key)
        assert c.calls == [0, 1, 2, 3, 4]
    c = Compute()
    keys.add(get(cache, views, c, dtype="int8").key)
    assert c.calls == [0, 1, 2, 3, 4]
    # an image file changes (content and size, and separately only its mtime)
    views[1][1].write_bytes(b"another image")
    c = Compute()
    keys.add(get(cache, views, c).key)
    assert c.calls == [0, 1, 2, 3, 4]
    st = views[3][1].stat()
    os.utime(views[3][1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    c = Compute()
    keys.add(get(cache, views, c).key)
    assert c.calls == [0, 1, 2, 3, 4]
    assert len(keys) == 6
    assert len(cache.entries("pixel_clip")) == 6  # old entries remain
    # prune keeps only what is asked for
    assert cache.prune("pixel_clip", keep=[base.key]) > 0
    assert [p.name for p in cache.entries("pixel_clip")] == [base.key]


def test_truncated_file_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    entry = get(cache, views, Compute())
    f = entry.path / "view_00002.npy"
    f.write_bytes(f.read_bytes()[:-100])
    c = Compute()
    with caplog.at_level(logging.WARNING):
        again = get(cache, views, c)
    assert c.calls == [2]
    assert "view_00002.npy" in caplog.text
    np.testing.assert_array_equal(again[2], Compute()(2).astype(np.float16))
    # repaired on disk: the next open is a clean hit
    c2 = Compute()
    get(cache, views, c2, verify=True)
    assert c2.calls == []


def flip_bytes(path: Path, offset: int = -40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    data[offset + 1] ^= 0x0F
    path.write_bytes(bytes(data))


def test_modified_file_detected_on_first_access(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    get(cache, views, Compute())
    entry_path = cache.entries("pixel_clip")[0]
    flip_bytes(entry_path / "view_00001.npy")
    c = Compute()
    lazy = get(cache, views, c)  # sizes match: nothing noticed yet
    assert c.calls == []
    with caplog.at_level(logging.WARNING):
        x = lazy[1]
    assert c.calls == [1] and "checksum" in caplog.text
    np.testing.assert_array_equal(x, Compute()(1).astype(np.float16))


def test_modified_file_detected_with_verify(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    get(cache, views, Compute())
    entry_path = cache.entries("pixel_clip")[0]
    flip_bytes(entry_path / "view_00004.npy", offset=200)
    c = Compute()
    entry = get(cache, views, c, verify=True)
    assert c.calls == [4]
    np.testing.assert_array_equal(entry[4], Compute()(4).astype(np.float16))


def test_corrupt_or_missing_meta(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    entry = get(cache, views, Compute())
    (entry.path / "meta.json").write_text("{not json")
    c = Compute()
    get(cache, views, c)
    assert c.calls == [0, 1, 2, 3, 4]
    (entry.path / "meta.json").unlink()
    c = Compute()
    again = get(cache, views, c)
    assert c.calls == [0, 1, 2, 3, 4] and len(again) == 5


def test_crash_mid_write_leaves_no_entry(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="boom"):
        get(cache, views, Compute(fail_on=3))
    assert cache.entries() == []
    assert list((tmp_path / "cache" / "pixel_clip").iterdir()) == []  # no temporary folder left
    c = Compute()
    entry = get(cache, views, c)
    assert c.calls == [0, 1, 2, 3, 4] and len(entry) == 5
    np.testing.assert_array_equal(entry[3], Compute()(3).astype(np.float16))


def test_int8_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(3, 20, 30, 512)).astype(np.float32) * 3
    q, scale = quantise(x)
    assert q.dtype == np.int8 and q.shape == x.shape and scale.shape == x.shape[:-1]
    y = dequantise(q, scale).astype(np.float32)
    cos = (x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
    assert 1.0 - cos.min() < 1e-2
    assert 1.0 - cos.mean() < 1e-3
    views = make_images(tmp_path / "images", 2)
    f16 = get(FeatureCache(tmp_path / "cache"), views, Compute())
    i8 = get(FeatureCache(tmp_path / "cache"), views, Compute(), dtype="int8")
    assert i8.dtype == "int8" and i8[0].shape == SHAPE and i8[0].dtype == np.float16
    raw = i8.raw(0)
    assert raw["data"].dtype == np.int8 and raw["scale"].shape == SHAPE[:-1] and isinstance(raw["data"], np.memmap)
    a, b = f16[0].astype(np.float32), i8[0].astype(np.float32)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert 1.0 - cos.min() < 1e-2
    # 1 B per value + a 2 B scale per D=16 vector (+ two .npy headers) vs 2 B per value
    assert i8.nbytes < 0.65 * f16.nbytes


def test_non_finite_or_lossy_values_are_refused(tmp_path: Path) -> None:
    views = make_images(tmp_path / "images", 1)
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="float16"):
        get(cache, views, lambda i: np.full(SHAPE, 1e6, dtype=np.float32))
    with pytest.raises(ValueError, match="losslessly"):
        get(cache, views, lambda i: np.full((4,), 300, dtype=np.int64), dtype="uint8")
    assert cache.entries() == []


# ---- scene-level entry points (features.py) -------------------------------------------------------


class FakeClip:
    identity = "fake-clip"
    dim = 8

    def __init__(self) -> None:
        self.n_crops = 0
        self.proj = np.random.default_rng(0).normal(size=(3, self.dim))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode_crops(self, view: ViewImage, boxes: np.ndarray) -> torch.Tensor:
        self.n_crops += len(boxes)
        rows = [view.rgb[y0:y1, x0:x1].reshape(-1, 3).mean(0) @ self.proj for x0, y0, x1, y1 in boxes]
        return torch.from_numpy(np.stack(rows).astype(np.float32))


class FakeDino:
    identity = "fake-dino"
    dim = 4
    stride = 8

    def dense_features(self, view: ViewImage) -> torch.Tensor:
        h, w = view.rgb.shape[0] // 8, view.rgb.shape[1] // 8
        return torch.from_numpy(view.rgb[: h * 8 : 8, : w * 8 : 8].repeat(2, axis=-1)[..., :4].copy())


class FakeMasks:
    identity = "fake-masks"

    def propose(self, view: ViewImage) -> np.ndarray:
        h, w = view.rgb.shape[:2]
        m = np.zeros((3, h, w), dtype=bool)
        m[0] = True
        m[1, : h // 2] = True
        m[2, :3, :3] = True
        return m


def test_clip_features_on_a_scene(tmp_path: Path, image_scene) -> None:
    scene = image_scene(tmp_path / "scene", n=4)
    cfg = FeatureConfig(semantic_downscale=2.0, views_fraction=0.5, pixel_clip=PixelClipConfig(batch_size=32))
    clip = FakeClip()
    feats = clip_features(scene, clip, [0, 1, 2, 3], cfg)
    assert feats.path.parent.parent == default_cache_root(scene) == tmp_path / "scene" / ".ovs3d_cache"
    assert feats.view_ids == select_views([0, 1, 2, 3], 0.5, 0) and len(feats.view_ids) == 2
    assert feats.shape == (3, 30, 40, 8)
    i = feats.view_ids[0]
    view = ViewImage(scene.stems[i], scene.load_image(i, 2.0))
    direct = pixel_clip_features(FakeClip(), view, cfg.pixel_clip, stem_seed(scene.stems[i]))
    np.testing.assert_allclose(feats[0].astype(np.float32), direct.numpy(), rtol=2e-3, atol=2e-3)
    # cached: no crop is encoded again, even with another batch size
    clip2 = FakeClip()
    cfg2 = FeatureConfig(semantic_downscale=2.0, views_fraction=0.5, pixel_clip=PixelClipConfig(batch_size=7))
    assert clip_features(scene, clip2, [0, 1, 2, 3], cfg2).key == feats.key and clip2.n_crops == 0
    # another jitter seed is another entry
    cfg3 = FeatureConfig(semantic_downscale=2.0, views_fraction=0.5, pixel_clip=PixelClipConfig(seed=1))
    assert clip_features(scene, FakeClip(), [0, 1, 2, 3], cfg3).key != feats.key


def test_select_views() -> None:
    assert select_views([3, 1, 2], 1.0) == [1, 2, 3]
    a = select_views(list(range(10)), 0.5, seed=0)
    assert len(a) == 5 and a == sorted(a) and a == select_views(list(range(10)), 0.5, seed=0)
    assert select_views(list(range(10)), 0.5, seed=1) != a
    assert select_views([4], 0.1) == [4]


def test_dino_and_masks_on_a_scene(tmp_path: Path, image_scene) -> None:
    scene = image_scene(tmp_path / "scene", n=2)
    cfg = FeatureConfig(semantic_downscale=2.0, dino_min_cells=None)
    dino = dino_features(scene, FakeDino(), [0, 1], cfg, cache_root=tmp_path / "c")
    assert len(dino) == 2 and dino[1].shape == (7, 10, 4) and dino.view_ids == [0, 1]
    masks = mask_proposals(scene, FakeMasks(), [1], cfg, cache_root=tmp_path / "c")
    m = masks[0]
    assert m.shape == (3, 30, 40) and m.dtype == bool
    np.testing.assert_array_equal(m, FakeMasks().propose(ViewImage("01", np.zeros((30, 40, 3)))))
    label = masks.label_map(0)
    assert label.dtype == np.int32 and label[0, 0] == 2 and label[10, 20] == 1 and label[-1, -1] == 0
    assert masks_to_label_map(np.zeros((1, 2, 2), bool)).tolist() == [[-1, -1], [-1, -1]]


def test_dino_input_downscale_against_the_formula() -> None:
    """DINO's input is enlarged only where its grid would have fewer than dino_min_cells cells (never shrunk)."""
    for (w, h), ds, min_cells, stride in [
        ((160, 120), 1.0, 30, 8),
        ((320, 240), 1.0, 30, 8),
        ((4032, 3024), 4.0, 30, 8),
        ((200, 150), 1.0, 30, 16),
        ((160, 120), 2.0, 10, 8),
    ]:
        cfg = FeatureConfig(dino_downscale=ds, dino_min_cells=min_cells)
        expected = min(ds, min(w, h) / (stride * min_cells))
        assert dino_input_downscale(cfg, w, h, stride) == pytest.approx(expected)
        assert min(w, h) / dino_input_downscale(cfg, w, h, stride) / stride >= min_cells - 1e-6
    assert dino_input_downscale(FeatureConfig(), 160, 120, 8) == pytest.approx(0.5)
    assert dino_input_downscale(FeatureConfig(), 320, 240, 8) == 1.0  # large enough: as given
    assert dino_input_downscale(FeatureConfig(dino_min_cells=None), 160, 120, 8) == 1.0


def test_dino_grid_keeps_its_floor_on_a_small_scene(tmp_path: Path, image_scene) -> None:
    """An 80x60 scene: by default DINO sees it at 320x240 (30 cells across); the floor off, at 80x60 (7)."""
    scene = image_scene(tmp_path / "scene", n=1)
    root = tmp_path / "c"
    floor = dino_features(scene, FakeDino(), [0], FeatureConfig(), cache_root=root)
    plain = dino_features(scene, FakeDino(), [0], FeatureConfig(dino_min_cells=None), cache_root=root)
    assert floor[0].shape == (30, 40, 4) and plain[0].shape == (7, 10, 4)
    assert floor.key != plain.key  # the cache tells the two apart
    coarse = dino_features(scene, FakeDino(), [0], FeatureConfig(dino_min_cells=5), cache_root=root)
    assert coarse[0].shape == (7, 10, 4) and coarse.key == plain.key  # a floor already met changes nothing


def test_a_second_writer_waits_and_reads_the_first_ones_entry(tmp_path: Path) -> None:
    """Two fits of one scene at once (``ovs3d batch``): one computes the entry, the other waits and reads it."""
    import threading

    views = make_images(tmp_path / "images")
    cache = FeatureCache(tmp_path / "cache")
    started = threading.Event()
    release = threading.Event()

    class Slow(Compute):
        def __call__(self, i: int) -> np.ndarray:
            started.set()
            release.wait(10)
            return super().__call__(i)

    first, second = Slow(), Compute()
    out: dict[str, CachedFeatures] = {}
    a = threading.Thread(target=lambda: out.__setitem__("a", get(cache, views, first)))
    a.start()
    started.wait(10)
    b = threading.Thread(target=lambda: out.__setitem__("b", get(cache, views, second)))
    b.start()
    b.join(0.3)
    assert b.is_alive()  # waiting on the entry's lock, not computing
    release.set()
    a.join(10)
    b.join(10)
    assert first.calls == [0, 1, 2, 3, 4] and second.calls == []
    np.testing.assert_array_equal(out["b"][2], out["a"][2])
