"""Named variants of a fit config: the paper's Table 2 ablations, the paper's and the code's readings."""

from __future__ import annotations

from dataclasses import replace

from ovs3d.methods.threedovs.config import LEGACY_SETTINGS
from ovs3d.utils.config import parse_number


def with_ablation(cfg, name: str):
    """A copy of a fit config with one of the paper's Table 2 ablations (or another variant) applied.

    Table 2: ``full`` (the library defaults), ``no_rda``, ``no_fda``, ``no_rebalance``, ``single_scale``
    (the s/7 patch only), ``half_views`` (CLIP features on 50% of the views), ``tenth_views`` (10%).
    ``smallest_scale``: the smallest window of the configured scales only (issue 8: the 2D baseline at that
    scale beats the three scales on every validation scene).
    Table 4: ``no_selection`` (scales averaged, no Selection Volume), ``no_neg`` (FDA without ``neg_F``).
    ``previous``: the library defaults before issue 8 (settings added since are off).
    Readings: ``paper`` (the paper's cosine RDA at weight 1 and λ_pos 200, uniform ray draws, no scale prior,
    raw-cosine labels read by their argmax, no fill of empty pixels), ``reference`` (the official code's:
    unnormalised-feature RDA at weight 1, pairwise KL in FDA, λ_pos 200, uniform draws, no scale prior,
    raw-cosine labels read by their argmax, no fill of empty pixels), ``code_rda`` / ``code_rda_w5`` /
    ``rda_w5`` (RDA reading and weight alone), ``kl_fda`` (pairwise
    KL in FDA). OV-NeRF (``cfg.method == "ovnerf"``):
    ``no_rsr``, ``no_cse``, ``cse_no_novel``, ``rsr_superpixel``, ``rsr_votes``, ``cse_every_kind``
    (:data:`OVNERF_ABLATIONS`). Any single setting: ``"semantic.<field>=<value>"``,
    ``"features.<field>=<value>"`` or ``"recon.<field>=<value>"``. Combine with ``+``, applied left to right:
    ``"paper+no_fda"``.
    """
    if "+" in name:  # combinations, applied left to right: "code_rda_w5+no_fda"
        for part in name.split("+"):
            cfg = with_ablation(cfg, part)
        return cfg
    sem, feat = cfg.semantic, cfg.features
    if "=" in name:  # a single setting: "semantic.rda_weight=5", "features.dino_downscale=0.5"
        return _with_setting(cfg, name)
    if name == "full":
        return cfg
    if name == "previous":  # the defaults before the small-object work (issue 8): settings added since, off
        return replace(cfg, semantic=replace(sem, **LEGACY_SETTINGS))
    if name == "paper":  # the paper's readings and values (Eq. 4-5 cosine RDA, weight 1; lambda_pos 200)
        return replace(
            cfg,
            semantic=replace(
                sem,
                rda_mode="paper",
                rda_weight=1.0,
                fda_w_pos=200.0,
                ray_sampling="uniform",
                selection_prior="none",
                label_centering=False,
                crf_iters=0,
                empty_fill_opacity=0.0,
            ),
        )
    if name == "reference":  # the official code's readings and values (unnormalised RDA, KL in FDA)
        return replace(
            cfg,
            semantic=replace(
                sem,
                rda_mode="code",
                rda_weight=1.0,
                fda_divergence="kl",
                fda_w_pos=200.0,
                ray_sampling="uniform",
                selection_prior="none",
                label_centering=False,
                crf_iters=0,
                empty_fill_opacity=0.0,
            ),
        )
    if name in OVNERF_ABLATIONS:  # OV-NeRF's Table ablations (its config has these fields)
        if not hasattr(sem, "use_rsr"):
            raise ValueError(f"ablation {name!r} needs --method ovnerf")
        if name == "rsr_superpixel":
            return replace(cfg, masks="superpixel")
        return replace(cfg, semantic=replace(sem, **OVNERF_ABLATIONS[name]))
    if name == "no_rda":
        return replace(cfg, semantic=replace(sem, use_rda=False))
    if name == "no_fda":
        return replace(cfg, semantic=replace(sem, use_fda=False))
    if name == "no_selection":  # Tab. 4: the multi-scale targets averaged instead of selected
        return replace(cfg, semantic=replace(sem, use_selection=False))
    if name == "no_neg":  # Tab. 4: FDA without its dissimilar-pair part neg_F
        return replace(cfg, semantic=replace(sem, fda_w_neg=0.0))
    if name == "no_rebalance":
        return replace(cfg, semantic=replace(sem, fda_rebalance=False))
    if name == "single_scale":
        return replace(cfg, features=replace(feat, pixel_clip=replace(feat.pixel_clip, patch_divisors=(7,))))
    if name == "smallest_scale":
        smallest = max(feat.pixel_clip.patch_divisors)  # window side is min(H, W) // d
        return replace(cfg, features=replace(feat, pixel_clip=replace(feat.pixel_clip, patch_divisors=(smallest,))))
    if name == "half_views":
        return replace(cfg, features=replace(feat, views_fraction=0.5))
    if name == "tenth_views":
        return replace(cfg, features=replace(feat, views_fraction=0.1))
    if name == "code_rda":
        return replace(cfg, semantic=replace(sem, rda_mode="code"))
    if name == "rda_w5":
        return replace(cfg, semantic=replace(sem, rda_weight=5.0))
    if name == "code_rda_w5":
        return replace(cfg, semantic=replace(sem, rda_mode="code", rda_weight=5.0))
    if name == "kl_fda":
        return replace(cfg, semantic=replace(sem, fda_divergence="kl"))
    raise ValueError(f"unknown ablation {name!r}")


def _with_setting(cfg, assignment: str):
    """Apply ``"<section>.<field>=<value>"`` (section ``semantic``, ``features`` or ``recon``) to a fit config."""
    import ast
    from dataclasses import fields

    key, _, raw = assignment.partition("=")
    section, _, field = key.partition(".")
    if section not in ("semantic", "features", "recon"):
        raise ValueError(f"setting {assignment!r}: section must be 'semantic', 'features' or 'recon'")
    sub = getattr(cfg, section)
    if field not in {f.name for f in fields(sub)}:
        raise ValueError(f"setting {assignment!r}: {type(sub).__name__} has no field {field!r}")
    if isinstance(getattr(sub, field), float):
        value = parse_number(raw)  # decimals or fractions, as the CLI reads a float flag ("1/3")
    else:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare string such as code
    return replace(cfg, **{section: replace(sub, **{field: value})})


OVNERF_ABLATIONS: dict[str, dict] = {
    "no_rsr": {"use_rsr": False},
    "no_cse": {"use_cse": False},
    "cse_no_novel": {"cse_novel_views": 0},
    "rsr_superpixel": {},  # the mask proposals replaced by superpixels (the fit's --masks)
    "rsr_votes": {"rsr_class": "votes"},  # the paper's region class: its pixels' majority
    "cse_every_kind": {"cse_kinds": ("forward", "bounded", "unbounded")},  # the paper's: CSE on every scene
}
"""OV-NeRF's ablations (paper §IV): no RSR (raw 2D class maps as targets), no CSE, CSE on the training views
only, RSR with superpixels in place of the mask proposals, and ``rsr_votes`` (the paper's region class, the
majority of its pixels, in place of our default, the region's own CLIP crop) and ``cse_every_kind`` (CSE on
forward-facing scenes too, as the paper; by default it is off there, so there ``cse_no_novel`` is the same
as ``no_cse``); with ``no_fda`` (3D-OVS's FDA off) they are its table's rows."""

ABLATIONS = (
    "full",
    "previous",
    "paper",
    "reference",
    "no_rda",
    "no_fda",
    "no_rebalance",
    "no_selection",
    "no_neg",
    "single_scale",
    "smallest_scale",
    "half_views",
    "tenth_views",
    "rda_w5",
    "code_rda",
    "code_rda_w5",
    "kl_fda",
    *OVNERF_ABLATIONS,
)
