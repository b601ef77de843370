"""Guard for issue 8: a small object that each view's own CLIP relevancy finds must not vanish in 3D."""

import json

import numpy as np
import pytest

from ovs3d.eval.baseline import run_baseline
from ovs3d.run import FitConfig, evaluate, fit


def _label_iou(metrics: dict, label: str) -> float:
    return float(np.mean([v["iou"][label] for v in metrics["per_view"].values()]))


@pytest.mark.slow
def test_small_object_found_in_2d_is_found_in_3d(tmp_path, short_fit_settings):
    from ovs3d.scenegen import make_scene

    # two ordinary objects and one small one (about 0.7 % of the image) on the table
    scene = make_scene(
        "tabletop",
        2,
        tmp_path / "scene",
        width=128,
        height=96,
        n_views=10,
        n_annotated=2,
        supersample=1,
        n_objects=(2, 2),
        n_small=(1, 1),
        min_size_factor=0.6,
    )
    labels = json.loads((scene / "sim" / "instances.json").read_text())["labels"]
    small = labels[str(max(map(int, labels)))]
    recon, semantic, features = (short_fit_settings[k] for k in ("recon", "semantic", "features"))
    base = run_baseline(scene, tmp_path / "baseline", cfg=features, normalize=True, cache_dir=tmp_path / "cache")
    iou_2d = _label_iou(base, small)
    assert iou_2d >= 0.3, f"the guard scene is broken: 2D finds {small!r} at IoU {iou_2d:.2f} only"

    run, cache = tmp_path / "run", tmp_path / "cache"
    cfg = FitConfig(scene=scene, out=run, recon=recon, semantic=semantic, features=features, cache_dir=cache)
    fit(cfg)
    iou_3d = _label_iou(evaluate(run), small)
    # the floor the 2D baseline sets: 3D may lose a little at the object's rim, never the object
    assert iou_3d >= iou_2d - 0.15, f"{small!r}: 2D IoU {iou_2d:.2f}, 3D IoU {iou_3d:.2f}"
