"""What a run's semantic field can draw when its 2D evidence is perfect: the 3dovs stage trained on GT targets.

Takes a finished ``3dovs`` run of a scene made by ``ovs3d make-scene``, prepares its semantic stage exactly as
``fit`` does (same reconstruction, samples, DINO cells, settings), then replaces every pixel ray's CLIP target
by the text embedding of the label its pixel centre shows (``sim/instances``, read at the ray's point, as the
evaluation reads its GT) at every scale, the per-view relevancy targets by that label's one-hot, and the
balanced draws' classes by those labels. DINO (FDA) is left as it is. The stage is trained into
``<run>-gt-targets`` (the reconstruction copied) and scored like any run.

The score separates two causes of border errors: a field trained on perfect targets that still misses an
object's border pixels cannot represent that border (field, samples, resolution); one that hits them says the
errors come from the targets (CLIP windows, their painting, their normalisation).

Usage::

    python bench/semantic_ceiling.py RUN [RUN ...] [--variant no_fda]
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fusion_ceiling import gt_labels  # bench/ is the script's folder
from ovs3d.methods.base import train_method
from ovs3d.methods.reconstruction import CHECKPOINT_NAME, load_trained_field
from ovs3d.methods.threedovs.ablations import with_ablation
from ovs3d.methods.threedovs.method import ThreeDOVS, balanced_ray_weights, prepare_data
from ovs3d.run import _backends, _load_scene, evaluate, fit_config_from_run


def gt_target_run(run: Path, variant: str | None = None, replace_what: str = "both") -> Path:
    cfg = fit_config_from_run(run)
    if variant:
        semantic = with_ablation(replace(cfg, out=run), variant).semantic
        cfg = replace(cfg, semantic=semantic)
    scene = _load_scene(cfg.scene, cfg.kind)
    which = "" if replace_what == "both" else f"-{replace_what}"
    dest = Path(str(run) + "-gt-targets" + which + (f"+{variant}" if variant else ""))
    if not (dest / "eval" / "metrics.json").exists():
        (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
        shutil.copy(run / "checkpoints" / CHECKPOINT_NAME, dest / "checkpoints" / CHECKPOINT_NAME)
        shutil.copy(run / "config.json", dest / "config.json")
        if variant:  # the run's config with the variant's semantic settings, as evaluate reads it
            conf = json.loads((run / "config.json").read_text())
            conf["semantic"] = asdict(cfg.semantic)
            (dest / "config.json").write_text(json.dumps(conf, indent=2, default=list))
        trained = load_trained_field(dest / "checkpoints" / CHECKPOINT_NAME, "cpu")
        backends = _backends(cfg, scene, "cpu", ThreeDOVS.needs(cfg.semantic))
        views = scene.train_views(cfg.holdout)
        data = prepare_data(scene, trained, cfg, backends["clip"], backends.get("dino"), views)
        gt = torch.from_numpy(gt_labels(scene, Path(cfg.scene), data.view_ids, data.view_size))
        has = gt >= 0
        n_s, n_c = data.clip_targets.shape[1], data.text.shape[0]
        targets = data.clip_targets.clone()
        targets[has] = data.text[gt[has]].to(targets.dtype)[:, None].expand(-1, n_s, -1)
        rel = data.relevancy.clone()
        rel[has] = torch.nn.functional.one_hot(gt[has], n_c).to(rel.dtype)[:, None].expand(-1, n_s, -1)
        if replace_what in ("both", "features"):
            data.clip_targets = targets
        if replace_what in ("both", "relevancy"):
            data.relevancy = rel
        if data.ray_weights is not None and replace_what != "features":  # the draws follow the new pseudo-classes
            power = cfg.semantic.ray_balance_power
            data.ray_weights = balanced_ray_weights(data.relevancy, data.scale_prior, power)
        if data.clip_mean is not None:
            data.clip_mean = data.clip_targets.float().mean((0, 1))
        train_method(ThreeDOVS.from_data(trained, cfg.semantic, data), dest)
        evaluate(dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--replace",
        dest="replace_what",
        default="both",
        choices=["both", "features", "relevancy"],
        help="which targets become the GT's: the CLIP features (Eq. 3), RDA's relevancy, or both",
    )
    ap.add_argument("--variant", default=None, help="a semantic ablation or semantic.<field>=<value> for the stage")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        dest = gt_target_run(run, args.variant, args.replace_what)
        m = json.loads((dest / "eval" / "metrics.json").read_text())
        base = json.loads((run / "eval" / "metrics.json").read_text())
        print(
            json.dumps(
                {
                    "run": str(run),
                    "variant": args.variant,
                    "replaced": args.replace_what,
                    "miou": round(base["miou"], 4),
                    "gt_targets": round(m["miou"], 4),
                    "per_label": {
                        c: [round(base["class_iou"][c], 3), round(m["class_iou"][c], 3)] for c in m["class_iou"]
                    },
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
