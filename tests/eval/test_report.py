"""Evaluation folder writing (SPEC §4)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from ovs3d.eval.report import write_rgb_eval, write_segmentation_eval

CLASSES = ["apple", "bowl", "cup"]


def _data():
    rng = np.random.default_rng(0)
    preds, gts, rgbs = {}, {}, {}
    for v in (2, 11):
        preds[v] = rng.integers(0, 3, (5, 7))
        gt = np.zeros((3, 5, 7), dtype=bool)
        gt[0, :2] = True
        gt[1, 2:4] = True
        gt[2, 4:] = True
        gts[v] = gt
        rgbs[v] = rng.random((5, 7, 3)).astype(np.float32)
    return preds, gts, rgbs


def test_write_segmentation_eval(tmp_path):
    preds, gts, rgbs = _data()
    out = tmp_path / "eval"
    m = write_segmentation_eval(out, CLASSES, preds, gts, rgbs, "3dovs", {"psnr": 25.0, "method": "x"})
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for key in ("protocol", "miou", "accuracy", "macc", "per_view", "classes", "psnr", "method"):
        assert key in on_disk
    assert on_disk["protocol"] == "3dovs" and on_disk["classes"] == CLASSES
    assert set(on_disk["per_view"]) == {"02", "11"}
    assert all(0.0 <= on_disk[k] <= 1.0 for k in ("miou", "accuracy", "macc"))
    assert (out / "legend.png").is_file()
    for v in (2, 11):
        fig = iio.imread(out / "overlays" / f"{v:02d}.png")
        assert fig.ndim == 3 and fig.shape[0] >= 256
        for c, name in enumerate(CLASSES):
            png = iio.imread(out / "pred" / f"{v:02d}" / f"{name}.png")
            assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
            np.testing.assert_array_equal(png == 255, preds[v] == c)
    assert not list(out.rglob(".*"))  # no temporary files left behind


def test_write_segmentation_eval_errors(tmp_path):
    preds, gts, rgbs = _data()
    with pytest.raises(ValueError):
        write_segmentation_eval(tmp_path, CLASSES, preds, {2: gts[2]}, rgbs, "3dovs", {})
    with pytest.raises(ValueError):
        write_segmentation_eval(tmp_path, CLASSES, preds, gts, rgbs, "3dovs", {"miou": 1.0})
    # no RGB: overlays on grey still work
    m = write_segmentation_eval(tmp_path / "e", CLASSES, preds, gts, None, "novel-view", None)
    assert m["protocol"] == "novel-view"


def test_write_rgb_eval(tmp_path):
    gt = {0: np.zeros((4, 6, 3)), 5: np.full((4, 6, 3), 0.5)}
    pred = {0: np.full((4, 6, 3), 0.1), 5: np.full((4, 6, 3), 0.51)}
    m = write_rgb_eval(tmp_path, None, pred, gt, "3dovs", {"resolution": [6, 4]})
    assert m["per_view"]["00"]["psnr"] == pytest.approx(20.0)
    assert m["per_view"]["05"]["psnr"] == pytest.approx(40.0)
    assert m["psnr"] == pytest.approx(30.0)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(m))
    img = iio.imread(tmp_path / "rgb" / "05.png")
    assert img.dtype == np.uint8 and img.shape[0] >= 256 and img.shape[1] > 2 * 256
    given = write_rgb_eval(tmp_path / "b", {0: 33.0, 5: 31.0}, pred, gt, "novel-view")
    assert given["psnr"] == pytest.approx(32.0)
