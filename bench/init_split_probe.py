"""Which of a reconstruction's random draws decides how good it ends: the field's density grids, its other
initial parameters, or the ray draws of its training loop.

``--recon.seed`` (``ReconstructionConfig.seed``) seeds all three. This probe fits the RGB reconstruction with the
density planes and lines drawn from ``--density-seed``, every other initial parameter (appearance grids, basis,
RGB MLP) from ``--init-seed``, and the loop (ray batches, jitter, random background) from ``--loop-seed``, then
scores it as ``ovs3d eval`` does (PSNR on the training views). A diagnosis tool: the library itself always
draws all three from one seed. Appends one JSON line to ``--results``.

Usage::

    python bench/init_split_probe.py --scene bench/out/test/hard-test-2005 --out bench/out/split/d7-i1-l1 \\
        --density-seed 7 --init-seed 20211202 --loop-seed 20211202 --results bench/out/split/results.jsonl
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

import ovs3d.methods.reconstruction as reconstruction
from ovs3d.field.tensorf import TensoRFField
from ovs3d.methods.reconstruction import ReconstructionConfig
from ovs3d.run import FitConfig, evaluate, fit
from ovs3d.utils.console import set_quiet


def split_field(density_seed: int, init_seed: int) -> type:
    """A :class:`TensoRFField` whose density grids come from ``density_seed`` and the rest from ``init_seed``
    (whatever seed the caller passes is ignored)."""

    class SplitField(TensoRFField):
        def __init__(self, *args, seed: int = 0, **kwargs) -> None:
            super().__init__(*args, seed=init_seed, **kwargs)
            donor = TensoRFField(*args, seed=density_seed, **kwargs)
            self.density_planes, self.density_lines = donor.density_planes, donor.density_lines

    return SplitField


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="run folder (an existing one resumes)")
    ap.add_argument("--density-seed", type=int, required=True)
    ap.add_argument("--init-seed", type=int, required=True, help="the other initial parameters")
    ap.add_argument("--loop-seed", type=int, required=True, help="ray draws, jitter, background colours")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_quiet(True)
    reconstruction.TensoRFField = split_field(args.density_seed, args.init_seed)  # build_field's class
    try:
        recon = replace(ReconstructionConfig(), seed=args.loop_seed)
        run = fit(FitConfig(scene=args.scene, out=args.out, method="rgb", recon=recon))
    finally:
        reconstruction.TensoRFField = TensoRFField
    psnr = evaluate(run)["psnr"]
    rec = {
        "scene": str(args.scene),
        "run": str(run),
        "density_seed": args.density_seed,
        "init_seed": args.init_seed,
        "loop_seed": args.loop_seed,
        "psnr": psnr,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
