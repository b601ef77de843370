"""A picture of an export folder's per-label meshes, seen from one of the run's cameras (painter's algorithm).

The meshes are read back from the files (input poses' frame) and projected with the scene's camera, so the
picture also checks the frame: it must line up with that view's image.

Usage::

    python bench/mesh_picture.py --export bench/out/export/tabletop0-3dovs --view 0 --out bench/results/x.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection
    from plyfile import PlyData

    from ovs3d.io.loader import load_scene
    from ovs3d.render.scene_rays import input_to_world
    from ovs3d.run import fit_config_from_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--view", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    meta = json.loads((args.export / "labels.json").read_text())
    cfg = fit_config_from_run(Path(meta["run"]))
    scene = load_scene(cfg.scene, cfg.kind)
    c2w = np.asarray(scene.c2w[args.view], dtype=np.float64)
    fx, fy, cx, cy = scene.intrinsics[args.view]
    polys, depths, colors = [], [], []
    for c, name in enumerate(meta["classes"]):
        if name not in meta["meshes"]:
            continue
        ply = PlyData.read(str(args.export / meta["meshes"][name]))
        v = input_to_world(scene, np.stack([ply["vertex"][a] for a in "xyz"], -1))
        cam = (v - c2w[:, 3]) @ c2w[:, :3]
        uv = np.stack([fx * cam[:, 0] / cam[:, 2] + cx, fy * cam[:, 1] / cam[:, 2] + cy], -1)
        f = np.stack(ply["face"]["vertex_indices"])
        ok = (cam[f, 2] > 1e-3).all(1)
        polys.append(uv[f[ok]])
        depths.append(cam[f[ok], 2].mean(1))
        shade = 0.55 + 0.45 * np.abs(np.cross(*(np.diff(cam[f[ok]], axis=1).transpose(1, 0, 2)))[:, 2:3]) / (
            np.linalg.norm(np.cross(*(np.diff(cam[f[ok]], axis=1).transpose(1, 0, 2))), axis=1, keepdims=True) + 1e-12
        )
        colors.append(np.clip(shade * np.asarray(meta["colors"][c]) / 255, 0, 1))
    order = np.argsort(-np.concatenate(depths))  # far to near
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    axes[0].imshow(scene.load_image(args.view))
    axes[0].set_title(f"view {args.view}")
    pc = PolyCollection(np.concatenate(polys)[order], facecolors=np.concatenate(colors)[order], edgecolors="none")
    axes[1].add_collection(pc)
    axes[1].set_xlim(0, scene.width)
    axes[1].set_ylim(scene.height, 0)
    axes[1].set_aspect("equal")
    axes[1].set_title("per-label meshes from the files, projected with the scene's camera")
    for ax in axes:
        ax.set_axis_off()
    names = [n for n in meta["classes"] if n in meta["meshes"]]
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=np.asarray(meta["colors"][meta["classes"].index(n)]) / 255) for n in names
    ]
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90, bbox_inches="tight")


if __name__ == "__main__":
    main()
