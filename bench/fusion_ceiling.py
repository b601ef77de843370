"""What a run's reconstruction lets 3D fusion keep of each label, given perfect 2D labels.

Every training view's ground-truth label (from the simulated scene's instance maps, ``sim/instances``) is pooled
over the reconstruction's voxels exactly as the agreement scale prior pools CLIP's votes
(:func:`ovs3d.methods.targets.voxel_consensus`: each ray's vote splatted into the voxels of its 8 heaviest
samples, each ray reading back the weighted mean). Per label: the mean pooled share of its own pixels
(``own``) and the share of its pixels whose pooled argmax is still the label (``argmax``). A label far below
the others is one the geometry does not separate from what surrounds it (issue 8, round 9: a black pawn that
the reconstruction left empty kept 0.35). Also per label and scale: each view's own CLIP label and the pooled CLIP
vote.

Usage::

    python bench/fusion_ceiling.py RUN [RUN ...]      # a 3dovs run of a scene made by ovs3d make-scene
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.targets import voxel_consensus
from ovs3d.methods.threedovs.method import prepare_data
from ovs3d.run import _backends, _load_scene, fit_config_from_run


def gt_labels(scene, scene_dir: Path, view_ids, size) -> np.ndarray:
    """``[R]`` label index (−1: none) at the centre of every semantic pixel of ``view_ids``, row-major, read from
    a simulated scene's instance maps (``sim/instances``) as the evaluation reads its GT: one point per pixel."""
    meta = json.loads((scene_dir / "sim" / "instances.json").read_text())
    label_of = {int(k): list(scene.classes).index(v) for k, v in meta["labels"].items()}
    w, h = size
    out = []
    for v in view_ids:
        ids = np.asarray(Image.open(scene_dir / "sim" / "instances" / f"{scene.stems[v]}.png"))
        rows = ((np.arange(h) + 0.5) * ids.shape[0] / h).astype(int)
        cols = ((np.arange(w) + 0.5) * ids.shape[1] / w).astype(int)
        small = ids[np.ix_(rows, cols)]
        gt = np.full(small.shape, -1)
        for k, c in label_of.items():
            gt[small == k] = c
        out.append(gt.reshape(-1))
    return np.concatenate(out)


@torch.no_grad()
def pooled_shares(run: Path) -> list[dict]:
    """Per label of ``run``'s scene: what pooling perfect 2D labels through its reconstruction keeps.

    Args:
        run: a run directory with a reconstruction checkpoint (a ``3dovs`` run or a bare reconstruction).

    Returns:
        One dict per label present in the training views: ``label``, ``pixels`` (at the semantic resolution),
        ``own`` (mean pooled share of its own pixels), ``argmax`` (share whose pooled argmax is the label) and
        ``clip`` (per scale, largest first: [own view's CLIP label right, pooled CLIP vote right]).
    """
    cfg = fit_config_from_run(run)
    if cfg.semantic is None:  # a bare reconstruction: pool at the 3dovs defaults' resolution and samples
        cfg = replace(cfg, method="3dovs", semantic=None)
    scene = _load_scene(cfg.scene, cfg.kind)
    trained = load_trained_field(run / "checkpoints" / CHECKPOINT_NAME, "cpu")
    backends = _backends(cfg, scene, "cpu", {"clip", "dino"})
    data = prepare_data(scene, trained, cfg, backends["clip"], backends.get("dino"), scene.train_views(cfg.holdout))
    gt = gt_labels(scene, Path(cfg.scene), data.view_ids, data.view_size)
    n_c = len(scene.classes)
    field = trained.field
    pool = lambda votes: voxel_consensus(  # noqa: E731
        data.pixels.xyz, data.pixels.weights, votes, field.aabb.cpu(), field.grid_resolution
    )
    votes = torch.zeros(len(gt), n_c)
    ok = np.nonzero(gt >= 0)[0]
    votes[torch.from_numpy(ok), torch.from_numpy(gt[ok])] = 1
    pooled_gt = pool(votes)
    own_clip = data.relevancy.argmax(-1)  # [R, S]
    pooled_clip = [pool(F.one_hot(own_clip[:, s], n_c).float()) for s in range(own_clip.shape[1])]
    out = []
    for c, name in enumerate(scene.classes):
        m = torch.from_numpy(gt == c)
        if not m.any():
            continue
        clip = [
            [round(float((own_clip[m, s] == c).float().mean()), 4), round(float(pooled_clip[s][m, c].mean()), 4)]
            for s in range(own_clip.shape[1])
        ]
        out.append(
            {
                "label": name,
                "pixels": int(m.sum()),
                "own": round(float(pooled_gt[m, c].mean()), 4),
                "argmax": round(float((pooled_gt[m].argmax(1) == c).float().mean()), 4),
                "clip": clip,
            }
        )
    return out


def ceiling(run: Path) -> None:
    """Print :func:`pooled_shares` of ``run`` as a markdown table."""
    print(f"\n## {run}\n")
    print("| label | pixels | GT pooled: own | GT pooled: argmax | CLIP own / pooled per scale (largest first) |")
    print("|---|---|---|---|---|")
    for r in pooled_shares(run):
        per_scale = " ".join(f"{a:.2f}/{b:.2f}" for a, b in r["clip"])
        print(f"| {r['label']} | {r['pixels']} | {r['own']:.2f} | {r['argmax']:.2f} | {per_scale} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    for run in ap.parse_args().runs:
        ceiling(run)


if __name__ == "__main__":
    main()
