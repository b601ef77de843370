"""Evaluation folder writing (SPEC §4)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest

from ovs3d.eval.metrics import aggregate, ovnerf_aggregate, ovnerf_view_metrics, segmentation_view_metrics
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


def test_write_segmentation_eval_metric_choice(tmp_path):
    preds, gts, rgbs = _data()
    gts[11][:, 0, 0] = True  # a multi-labelled pixel: void under the OV-NeRF protocol
    gts[11][2] = False  # cup absent from this view's GT
    # default and metric="3dovs": the 3D-OVS scores
    default = write_segmentation_eval(tmp_path / "d", CLASSES, preds, gts, rgbs, "3dovs")
    ref = aggregate({v: segmentation_view_metrics(gts[v], preds[v], CLASSES) for v in preds}, CLASSES)
    assert default == {"protocol": "3dovs", **ref}
    explicit = write_segmentation_eval(tmp_path / "t", CLASSES, preds, gts, rgbs, "3dovs", metric="3dovs")
    assert explicit == {**default, "split": "3dovs"}
    # metric="ovnerf": the OV-NeRF scores, "protocol" names the metric
    ov = write_segmentation_eval(tmp_path / "o", CLASSES, preds, gts, rgbs, "3dovs", {"psnr": 20.0}, metric="ovnerf")
    ref = ovnerf_aggregate({v: ovnerf_view_metrics(gts[v], preds[v], CLASSES) for v in preds}, CLASSES)
    assert ov == {"protocol": "ovnerf", "split": "3dovs", **ref, "psnr": 20.0}
    assert ov["miou"] != default["miou"]
    on_disk = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(ov)) and on_disk["protocol"] == "ovnerf"
    assert "pixel_accuracy" in on_disk and (tmp_path / "o" / "overlays" / "11.png").is_file()
    # the caller's view protocol is kept as "split" (here: the annotated views were held out)
    held = write_segmentation_eval(tmp_path / "h", CLASSES, preds, gts, None, "novel-view", metric="ovnerf")
    assert held["protocol"] == "ovnerf" and held["split"] == "novel-view"
    with pytest.raises(ValueError):
        write_segmentation_eval(tmp_path / "x", CLASSES, preds, gts, rgbs, "3dovs", metric="lerf")


def test_write_segmentation_eval_ovnerf_all_void_view(tmp_path):
    preds, gts, rgbs = _data()
    gts[2][:] = False  # view 2 has no labelled pixel
    m = write_segmentation_eval(tmp_path, CLASSES, preds, gts, rgbs, "3dovs", metric="ovnerf")
    assert m["per_view"]["02"]["miou"] is None and m["n_scored_views"] == 1
    assert m["miou"] == pytest.approx(m["per_view"]["11"]["miou"])
    assert json.loads((tmp_path / "metrics.json").read_text())["per_view"]["02"]["miou"] is None


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
