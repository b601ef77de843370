"""Settings of the 3D-OVS semantic stage (a plain dataclass: the CLI builds its flags from it without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ovs3d.utils.config import rule


@dataclass
class SemanticConfig:
    """Settings of the 3D-OVS semantic stage (CPU-sized defaults; the reference's in comments)."""

    n_iters: int = field(default=600, metadata=rule(ge=1))
    """Iterations (reference: 15000)."""
    joint_start: int = field(default=200, metadata=rule(ge=0))
    """Iteration at which appearance and RGB join the training (reference: 5000)."""
    batch_size: int = field(default=1024, metadata=rule(ge=1))
    """Pixel rays per step for the feature loss and RDA (reference: 4096)."""
    n_patches: int = field(default=8, metadata=rule(ge=1))
    """DINO patches per step for FDA (reference: 8)."""
    patch_cells: int = field(default=12, metadata=rule(ge=1))
    """Patch side in DINO cells (reference: 32 = 256 px / 8)."""
    samples_per_ray: int = field(default=8, metadata=rule(ge=1))
    """Heaviest samples kept per ray from the frozen geometry (the reference marches 482 every step)."""
    feature_activation: bool = True
    """ReLUs in the CLIP-feature MLP (paper's "MLP"); False = the official code's affine decoder."""
    mlp_width: int = field(default=128, metadata=rule(ge=1))
    """Hidden width of the CLIP-feature MLP (reference: 128)."""
    select_components: tuple[int, int, int] = field(default=(16, 4, 4), metadata=rule(ge=1))
    """Selection Volume components per plane-line pair (reference: density's 16, 4, 4)."""
    semantic_components: tuple[int, int, int] = field(default=(0, 0, 0), metadata=rule(ge=0))
    """Components per plane-line pair of a semantic VM grid whose features join the appearance feature at the
    CLIP-feature MLP's input (ours); (0, 0, 0) = none: the CLIP branch reads the appearance volume alone, as
    in the paper and the code."""
    lr_grid: float = field(default=0.02, metadata=rule(ge=0))
    """Selection grids (reference: 0.02)."""
    lr_net: float = field(default=1e-3, metadata=rule(ge=0))
    """Feature MLP and selection basis (reference: 1e-4 over 15k iterations; higher for the short CPU schedule)."""
    lr_app_joint: float = field(default=5e-3, metadata=rule(ge=0))
    """Appearance grids after joint_start (reference: 5e-3)."""
    lr_rgb_joint: float = field(default=5e-5, metadata=rule(ge=0))
    """Appearance basis and RGB MLP after joint_start (reference: 5e-5)."""
    lr_decay_ratio: float = field(default=0.1, metadata=rule(gt=0, le=1))
    """Every learning rate decays exponentially to this fraction over n_iters (reference: 0.1)."""
    use_rda: bool = True
    """Relevancy-Distribution Alignment (ablation: False)."""
    rda_weight: float = field(default=5.0, metadata=rule(ge=0))
    """Weight of RDA (reference: 1; 0.1 for office_desk). 5 here: with 600 iterations instead of 15,000, weight
    1 leaves CLIP's absolute-relevancy ambiguity in place (bench/RESULTS.md §3)."""
    rda_mode: Literal["paper", "code"] = "code"
    """``code`` (default): unnormalised feature, softmax(R̄), as the official code; ``paper``: cosine logits
    (Eq. 4-5 at temperature 1), R̄ rescaled to a distribution. The paper's reading cannot overcome the
    ambiguity on our scenes (bench/RESULTS.md §3); ``variant paper`` restores all the paper's choices."""
    rda_temperature: float = field(default=1.0, metadata=rule(gt=0))
    """Temperature of the RDA target (``softmax(R̄ / T)`` in code mode); 1 = the paper's and the code's."""
    rda_detach_selection: bool = False
    """Stop RDA's gradient from reaching the Selection Volume through its target ``Σ_s S_s R̄_s``. False = the
    official code (the target may then move towards the prediction instead of the reverse)."""
    feature_detach_selection: bool = False
    """Stop the feature loss's gradient (Eq. 3) from reaching the Selection Volume, which then learns only from
    RDA (and the scale prior). False = the paper and the code: the feature loss drives the selection towards the
    largest window, whose smooth features are the easiest to match (issue 8, §4 of bench/RESULTS.md)."""
    selection_prior: Literal["none", "dino", "agreement"] = "agreement"
    """Which CLIP scale each pixel ray should read (ours, not the paper's). ``agreement`` (default): the finest
    window whose label a majority of the views that see the ray's surface point confirm
    (``selection_agreement``), else the most confirmed one: a small window sees small objects that the larger
    ones average away, and where a small window misreads (too little context) the views disagree and a larger
    one takes over. With ``prior_targets`` the targets read that scale. ``dino``: the largest Alg. 1 window
    that is mostly the pixel's own DINO segment, else the smallest. ``none``: the Selection Volume learns only
    from the feature loss and RDA, as in the paper and the code; with the paper's softmax it keeps every scale
    in every target, and the coarse windows' targets erase small objects (issue 8; bench/RESULTS.md §4,
    rounds 4 and 5)."""
    selection_prior_weight: float = field(default=1.0, metadata=rule(ge=0))
    """Weight of the selection-prior loss (cross-entropy of the rendered selection to the preferred scale)."""
    selection_purity: float = field(default=0.5, metadata=rule(ge=0, le=1))
    """Share of a window that must be the pixel's own DINO segment for the window to count as fitting."""
    prior_targets: bool = True
    """With a ``selection_prior`` (default): the feature loss (Eq. 3) and RDA read their targets at the prior's
    scale (one-hot) instead of through the Selection Volume's softmax, which still learns the prior (its
    cross-entropy) for what it renders. False: the prior only teaches the Selection Volume, whose softmax
    keeps every scale in the targets (a smaller gain; bench/RESULTS.md §4, round 5). No effect without a
    prior."""
    selection_agreement: float = field(default=0.5, metadata=rule(ge=0, le=1))
    """``selection_prior="agreement"``: share of the views' pooled votes at a point that must agree with a ray's
    own label at a scale for that scale to count as confirmed (0.5: a majority)."""
    ray_sampling: Literal["uniform", "balanced"] = "balanced"
    """``balanced`` (default, ours): each pixel ray is drawn with probability inversely proportional to the size
    of its pseudo-class (the argmax of its view's normalised relevancy), so that a label covering 0.5 % of the
    pixels is not 0.5 % of every batch; with uniform draws the shared field fits the large labels and small
    objects vanish (bench/RESULTS.md §4). ``uniform``: the paper's and the code's draws."""
    ray_balance_power: float = field(default=1.0, metadata=rule(ge=0))
    """Exponent γ of the balanced draws: a ray's weight is (size of its pseudo-class)^-γ; 1 gives every
    pseudo-class the same share, 0 is uniform."""
    skip_label_borders: bool = False
    """Draw no pixel ray on the border of its pseudo-class region (a 4-neighbour in its view has another
    pseudo-class), so that the feature loss and RDA never fit the window mixtures at a region's edge and the field
    draws the border from the regions' interiors instead; a region with no interior pixel (1–2 pixels thick)
    keeps all its rays (ours). Measured on five validation scenes: −0.005 on the mean, the small objects losing
    the rays that kept them (bench/RESULTS.md §4, round 13), so off."""
    label_ce_weight: float = field(default=0.0, metadata=rule(ge=0))
    """Weight of a cross-entropy (ours) between the rendered prediction, ``score_scale`` × its centred cosines
    (the logits ``eval`` ranks and the CRF reads), and each drawn ray's pseudo-class (the argmax of its view's
    normalised relevancy at the ray's preferred scale, as the balanced draws read it). RDA's target
    ``softmax(R̄)`` is met by a soft prediction; this term asks for the pseudo-class to win outright, as
    OV-NeRF's region cross-entropy does with its labels. Trained on GT labels the field then draws a validation
    scene at 0.994 mIoU (0.957 without it), but on the relevancy's own pseudo-classes it fits their mistakes:
    −0.061 on the mean of 10 validation scenes, all down; with ``label_ce_targets="render"`` +0.001. 0 = the
    paper (bench/RESULTS.md §4, round 14)."""
    label_ce_targets: Literal["relevancy", "render"] = "relevancy"
    """The classes ``label_ce_weight`` trains towards. ``relevancy``: each ray's pseudo-class from its view's
    CLIP relevancy, from the first step. ``render`` (ours): from ``label_ce_start`` on, the field's own labels of
    each training view read out as ``eval`` reads them (the dense CRF on the view's render, when on), made again
    every ``label_ce_every`` steps: the borders the CRF draws from the render's colour and depth become the
    field's own (self-training, as OV-NeRF's CSE with the CRF instead of masks)."""
    label_ce_start: int = field(default=300, metadata=rule(ge=0))
    """First step of ``label_ce_targets="render"`` (its labels are made after this step)."""
    label_ce_every: int = field(default=100, metadata=rule(ge=1))
    """Steps between two read-outs of ``label_ce_targets="render"``."""
    target_filter_radius: int = field(default=0, metadata=rule(ge=0))
    """Half-size of an edge-aware filter of every training view's pixel CLIP targets before training (ours): each
    pixel's features (every scale) become the joint bilateral average of its neighbours' within this many pixels,
    weighted by likeness in the view's photo and the reconstruction's depth, then re-normalised; RDA's relevancy
    is computed from them (:func:`ovs3d.methods.targets.edge_aware_targets`). A border pixel's window straddles
    the next object; its neighbours on its own side of the edge do less. Measured on 10 validation scenes: the
    training views' pseudo-classes gain (2D mIoU 0.828 → 0.862 at radius 2), the 3D result does not (0.911 →
    0.911, 4 up, 5 down; the CRF read-out already draws on the same colour and depth). 0 = off, the paper
    (bench/RESULTS.md §4, round 14)."""
    target_filter_sigma_rgb: float = field(default=0.1, metadata=rule(gt=0))
    """Colour bandwidth of the target filter (colours in [0, 1])."""
    target_filter_sigma_depth: float = field(default=0.05, metadata=rule(gt=0))
    """Relative-depth bandwidth of the target filter."""
    balance_classes: Literal["view", "consensus"] = "view"
    """Where the balanced draws' pseudo-classes come from. ``view``: each ray's own view (argmax of that view's
    normalised relevancy). ``consensus`` (ours): that relevancy pooled over every training ray that reaches the
    same voxel of the reconstruction (the field's grid), so a pseudo-class is what all views that see a point
    say, and one view's mistake on a small object is not drawn as often as a whole wall. Measured on the
    validation scenes: no better than ``view`` (bench/RESULTS.md §4, round 3), so off."""
    rda_targets: Literal["view", "consensus"] = "view"
    """RDA's per-scale relevancy targets. ``view``: min–max normalised per view (the paper's and the code's).
    ``consensus`` (ours): pooled across views in the reconstruction's voxels as for ``balance_classes``, then
    min–max normalised per view again. Measured on the validation scenes: level with ``view`` (0.733 against
    0.735 over 8 scenes, bench/RESULTS.md §4, round 3), so off."""
    label_centering: bool = True
    """Centre the label logits on the scene's mean CLIP image feature (ours): ``cos(f, t_c) − μ·t_c``, with ``μ``
    the mean of the training views' pixel CLIP features over all pixels and scales, wherever the labels are
    ranked: RDA's prediction (the code's unnormalised logits minus ``|f| μ·t_c``), FDA's distributions, and the
    predicted labels (``eval``, ``export``, the viewer). A label that every crop leans towards (CLIP's hubness,
    the absolute-relevancy ambiguity of the paper's Fig. 2) then no longer takes the pixels of a small object
    whose own label is only slightly more relevant, and training and prediction rank the labels alike. The
    rendered features and ``query``'s relevancy are unchanged. On the scene kinds of ``label_centering_kinds``
    (forward-facing by default). False = the paper and the code: raw cosines (bench/RESULTS.md §4, round 7)."""
    label_centering_kinds: tuple[Literal["forward", "bounded", "unbounded"], ...] = ("forward",)
    """The scene kinds ``label_centering`` runs on. Forward-facing by default: the centre is each label's mean
    cosine over the training views, which removes CLIP's hub offsets where every label is in every view (the
    3D-OVS setting, as its per-view min–max assumes too); in inside-out rooms a label seen in few views has a low
    mean and is then favoured everywhere (measured on the validation rooms: 0.41 / 0.37 → 0.30 / 0.28,
    bench/RESULTS.md §4, round 7). Bounded and unbounded scenes keep the raw cosines."""
    crf_iters: int = field(default=5, metadata=rule(ge=0))
    """Mean-field iterations of a dense CRF over each rendered view's label scores before the argmax (ours): a
    Potts model over a window whose pairwise kernel is a joint bilateral one on the render's own colour and
    relative depth (:func:`ovs3d.render.crf.dense_crf`, unaries = CLIP's logit scale × the prediction
    logits), so that a border pixel takes the label of the neighbours that look like it and lie at its depth.
    Applies where a whole view is rendered (``eval``, ``render``, ``export``), on the scene kinds of
    ``crf_kinds``; per-ray predictions (the viewer's frames) keep the argmax. Chosen on the validation scenes:
    +0.008 mIoU on the mean of 11, 10 up (bench/RESULTS.md §4, round 13). 0 = the argmax (the paper)."""
    crf_weight: float = field(default=4.0, metadata=rule(ge=0))
    """Weight of the CRF's pairwise term, in logit units (the unaries are 100 × cosines)."""
    crf_radius: int = field(default=2, metadata=rule(ge=1))
    """Half-size of the CRF's window in pixels of the rendered view."""
    crf_sigma_rgb: float = field(default=0.1, metadata=rule(gt=0))
    """Colour bandwidth of the CRF's kernel (colours in [0, 1])."""
    crf_sigma_depth: float = field(default=0.05, metadata=rule(gt=0))
    """Relative-depth bandwidth of the CRF's kernel."""
    crf_kinds: tuple[Literal["forward", "bounded", "unbounded"], ...] = ("forward",)
    """The scene kinds the CRF runs on: forward-facing, where it was measured (the depth it compares is NDC's
    ray parameter there); rooms and 360° scenes keep the argmax."""
    empty_fill_opacity: float = field(default=0.5, metadata=rule(ge=0, le=1))
    """In a whole rendered view, pixels whose ray opacity is below this take the prediction logits of the
    nearest pixel at or above it, before the CRF (ours; 0 = off, the paper). A ray that hits no surface (a
    held-out view's corner that no training view saw) renders an empty feature, whose label is then decided by
    the labels' offsets alone, the same label for every such pixel. Chosen on the validation scenes held out
    (0.914 → 0.916, none lower; level under the 3D-OVS protocol) and read out on the test scenes before it
    became the default (bench/RESULTS.md §4, rounds 19–20). Per-ray predictions (the viewer) are unchanged.
    Runs on the scene kinds of ``empty_fill_kinds``."""
    empty_fill_kinds: tuple[Literal["forward", "bounded", "unbounded"], ...] = ("forward",)
    """The scene kinds ``empty_fill_opacity`` applies on: forward-facing, where it was measured (and where the
    reconstruction trains over a random background, so only a ray that hits nothing stays empty). Rooms and
    360° scenes train over black, where a dark surface may render empty too: on both validation rooms the fill
    was lower, a black TV stand the most (bench/RESULTS.md §4, round 20), so they keep their predictions."""
    use_selection: bool = True
    """The Selection Volume (Eq. 2–3). False (the paper's Tab. 4 "w/o Selection Volume"): every ray's feature
    and RDA targets are the plain average over the scales."""
    selection_temperature: float = field(default=1.0, metadata=rule(gt=0))
    """Temperature of the Selection Volume's softmax over its rendered sigmoids. 1 = the paper's and the code's:
    every scale's weight then stays within [0.16, 0.58] for 3 scales, so no scale is ever chosen alone;
    below 1 one scale can win (ours). 0.25 was level with 1 on the validation scenes (0.738 against 0.735
    over 8 scenes, bench/RESULTS.md §4, round 3), so 1 stays."""
    use_fda: bool = True
    """Feature-Distribution Alignment (ablation: False)."""
    fda_rebalance: bool = True
    """Eq. 14's rebalanced weights; False (Table 2 "w/o re-balance"): the plain correlation loss of Eq. 12 (all
    ordered pairs, one mean), scaled by fda_w_pos."""
    fda_divergence: Literal["js", "kl"] = "js"
    """``js``: the paper's Eq. 11; ``kl``: the official code's pairwise KL."""
    fda_tau: float = field(default=0.2, metadata=rule(gt=0))
    """Temperature of Eq. 10 (reference: 0.2)."""
    fda_shift: float = field(default=0.7, metadata=rule())
    """DINO similarity offset b (reference: 0.7)."""
    fda_w_pos: float = field(default=20.0, metadata=rule(ge=0))
    """λ_pos (reference: 200). 20 here: at 200 the similar-pair term spreads the label of each region's
    majority over whole objects and small objects vanish into the table or wall (bench/RESULTS.md §3)."""
    fda_w_neg: float = field(default=0.2, metadata=rule(ge=0))
    """λ_neg (reference: 0.2)."""
    rgb_weight: float = field(default=1.0, metadata=rule(ge=0))
    """Weight of the RGB loss after joint_start (reference: 1)."""
    seed: int = field(default=20230417, metadata=rule(ge=0))
    """Seed of initialisation and sampling (reference's)."""
    checkpoint_every: int = field(default=200, metadata=rule(ge=1))
    """Iterations between checkpoints."""
    log_every: int = field(default=50, metadata=rule(ge=1))
    """Iterations between log records."""


LEGACY_SETTINGS: dict = {
    "rda_temperature": 1.0,
    "rda_detach_selection": False,
    "feature_detach_selection": False,
    "selection_prior": "none",
    "ray_sampling": "uniform",
    "ray_balance_power": 1.0,
    "semantic_components": (0, 0, 0),
    "balance_classes": "view",
    "rda_targets": "view",
    "selection_temperature": 1.0,
    "prior_targets": False,
    "selection_agreement": 0.5,
    "label_centering": False,
    "label_centering_kinds": ("forward", "bounded", "unbounded"),
    "skip_label_borders": False,
    "crf_iters": 0,
    "label_ce_weight": 0.0,
    "target_filter_radius": 0,
    "empty_fill_opacity": 0.0,
}
"""What settings added later meant before they existed: a run stored without them is read with these
(``ThreeDOVS.legacy_settings``)."""
