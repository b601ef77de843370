"""3D-OVS training losses as pure tensor functions (paper §3, Eq. 2–14).

Notation (rays ``R``, scales ``S``, feature dim ``D``, classes ``C``; channel-last everywhere):

* ``F̂_s(r)`` ``[R, S, D]``: the stored multi-scale pixel CLIP features, L2-normalised per scale.
* ``S(r)`` ``[R, S]``: the rendered selection vector after the softmax of Eq. 2.
* ``f(r)`` ``[R, D]``: the rendered CLIP feature (Eq. 1), *not* normalised.
* ``T̂`` ``[C, D]``: L2-normalised text features, one row per class.
* ``R̄_s(r)`` ``[R, S, C]``: per-scale relevancies, min–max normalised per view, scale and class (Eq. 7).

The official code (``Kunhao-Liu/3D-OVS``, ``train_seg.py`` and ``models/losses.py``) departs from the
paper in three places, and every function says which reading it follows:

1. RDA (Eq. 5–8): the code predicts ``p = softmax(f · T̂ᵀ)`` with the *unnormalised* feature (its norm acts
   as a learnable temperature) and turns the target into a distribution with ``q = softmax(Σ_s S_s R̄_s)``
   (temperature 1). The paper uses cosine logits and writes ``R̄`` directly where a distribution belongs.
   :func:`rda_loss` has both (``mode="paper"`` / ``"code"``); see there for how the paper target is made
   a distribution.
2. FDA (Eq. 11): the code's ``js_correlation`` builds the mixture before broadcasting, with the same
   tensor twice, so its "JS" matrix is exactly ``KL(p_i ‖ p_j)``. :func:`fda_loss` offers the paper's JS
   (``divergence="js"``, default) and the code's KL (``divergence="kl"``).
3. Sums over rays (Eq. 3, Eq. 8) are means in the code; we use means so the weights do not depend on
   the batch size.

All divergences use the natural logarithm, so the JS divergence is bounded by ``ln 2`` (the paper's
"bounded range of [0, 1]" holds for log base 2 only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

LN2 = math.log(2.0)
"""Upper bound of the Jensen–Shannon divergence in nats."""


def _check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")


# ---------------------------------------------------------------------------------------------------------
# Selection volume and feature supervision (§3.1, Eq. 2–4)
# ---------------------------------------------------------------------------------------------------------


def selection_softmax(select_map_raw: Tensor, temperature: float = 1.0) -> Tensor:
    """Selection vector of each ray (Eq. 2): softmax over the rendered per-scale selection values.

    The official code renders ``Σ_i w_i sigmoid(s_i)`` (values in [0, 1]) and applies this softmax without a
    temperature, so the selection stays soft (each weight between ≈0.16 and ≈0.58 for 3 scales).

    Args:
        select_map_raw: ``[R, S]`` (or ``[..., S]``) volume-rendered selection values.
        temperature: divides the values before the softmax (1 = the code's; lower lets one scale win).

    Returns:
        ``[R, S]`` weights that are positive and sum to 1 over the scales.
    """
    return torch.softmax(select_map_raw / temperature, dim=-1)


def selected_features(clip_feats: Tensor, selection: Tensor, eps: float = 1e-12) -> Tensor:
    """Selection-weighted CLIP target of each ray, ``normalize(Σ_s S_s F̂_s)`` (Eq. 3, as coded).

    Not detached: the feature loss also trains the selection volume through ``selection``.

    Args:
        clip_feats: ``[R, S, D]`` multi-scale pixel CLIP features, L2-normalised per scale.
        selection: ``[R, S]`` selection weights (:func:`selection_softmax`).
        eps: lower bound on the norm in the final L2 normalisation.

    Returns:
        ``[R, D]`` unit-norm target features.
    """
    if clip_feats.shape[:-1] != selection.shape:
        raise ValueError(f"clip_feats {tuple(clip_feats.shape)} must be selection {tuple(selection.shape)} + [D]")
    mixed = torch.einsum("...s,...sd->...d", selection, clip_feats)  # [R, D]
    return F.normalize(mixed, dim=-1, eps=eps)


def feature_loss(rendered: Tensor, target: Tensor) -> Tensor:
    """CLIP feature supervision, the feature term of Eq. 3: ``-mean_r cos(f(r), target(r))``.

    The paper sums over rays; the code (and this function) averages, so the value lies in [-1, 1].

    Args:
        rendered: ``[R, D]`` rendered features ``f`` (any norm).
        target: ``[R, D]`` targets, usually :func:`selected_features`.

    Returns:
        Scalar loss.
    """
    _check_same_shape("rendered", rendered, "target", target)
    return -F.cosine_similarity(rendered, target, dim=-1).mean()


def segmentation_logits(features: Tensor, text: Tensor, normalize: bool = True, eps: float = 1e-12) -> Tensor:
    """Segmentation logits against the class text features (Eq. 4).

    Args:
        features: ``[R, D]`` (or ``[..., D]``) rendered or image CLIP features.
        text: ``[C, D]`` text features (normalised by the caller, as the 3D-OVS code does).
        normalize: ``True``: cosine similarity, both sides L2-normalised (Eq. 4; used by FDA and for
            prediction). ``False``: the raw dot product ``features · textᵀ`` with ``text`` as given; this is
            the official code's RDA prediction, where the norm of the unnormalised rendered feature acts
            as a learnable temperature.
        eps: lower bound on the norms when ``normalize`` is set.

    Returns:
        ``[R, C]`` (or ``[..., C]``) logits. With ``features`` of shape ``[V, H, W, S, D]`` this gives the
        per-scale relevancies ``[V, H, W, S, C]`` of Eq. 6 before the min–max normalisation.
    """
    if features.shape[-1] != text.shape[-1] or text.ndim != 2:
        raise ValueError(f"features {tuple(features.shape)} and text {tuple(text.shape)}: need [..., D], [C, D]")
    if normalize:
        features = F.normalize(features, dim=-1, eps=eps)
        text = F.normalize(text, dim=-1, eps=eps)
    return features @ text.transpose(0, 1)


# ---------------------------------------------------------------------------------------------------------
# Relevancy targets (§3.2, Eq. 6–7)
# ---------------------------------------------------------------------------------------------------------


def minmax_normalize(relevancy: Tensor, dims: Sequence[int] = (1, 2), eps: float = 1e-6) -> Tensor:
    """Min–max normalise relevancies to [0, 1] over the spatial dims, per view and per label (Eq. 7).

    Every slice that ``dims`` leaves out (view, label, and scale if present) is normalised on its own, so
    each one spans exactly [0, 1]. The official loader does this per view × scale × class over all pixels
    of the view.

    Degenerate slices: where ``max - min <= eps`` the slice is set to **0** (the official code divides by
    zero and gets NaN). Rationale: a map with no spatial contrast says nothing about *where* the class is,
    and 0 is the "least relevant" value, so the class gets no extra weight from that view (it is also the
    ``range → 0`` limit of ``(R - min) / (range + eps)``). The default ``eps`` is ten times the float32
    rounding noise of a cosine, so a constant map with rounding noise is not stretched to [0, 1].

    Args:
        relevancy: e.g. ``[V, H, W, C]`` or ``[V, H, W, S, C]`` (``dims=(1, 2)``, the default), or
            flattened pixels ``[V, N, S, C]`` (``dims=(1,)``).
        dims: the spatial dims reduced over.
        eps: ranges at or below this count as constant.

    Returns:
        Tensor shaped like ``relevancy`` with values in [0, 1].
    """
    dims = tuple(dims)
    lo = relevancy.amin(dim=dims, keepdim=True)
    hi = relevancy.amax(dim=dims, keepdim=True)
    rng = hi - lo
    flat = rng <= eps
    out = (relevancy - lo) / torch.where(flat, torch.ones_like(rng), rng)
    return torch.where(flat, torch.zeros_like(out), out)


def relevancy_targets(relevancy: Tensor, selection: Tensor) -> Tensor:
    """Selection-weighted normalised relevancy of each ray, ``R̄(r) = Σ_s S_s(r) R̄_s(r)`` (Eq. 6–7, as coded).

    Order of operations follows the code: the per-scale relevancies are min–max normalised per view ×
    scale × class first (:func:`minmax_normalize`), then mixed with the rendered selection here. (The
    paper's Eq. 6–7 mix first and normalise afterwards; that needs whole views, not ray batches.) Not
    detached: through RDA the gradient also reaches the selection volume, as in the code.

    Args:
        relevancy: ``[R, S, C]`` per-scale normalised relevancies ``R̄_s`` in [0, 1].
        selection: ``[R, S]`` selection weights.

    Returns:
        ``[R, C]`` values in [0, 1] (a convex combination); *not* a distribution over classes.
    """
    if relevancy.shape[:-1] != selection.shape:
        raise ValueError(f"relevancy {tuple(relevancy.shape)} must be selection {tuple(selection.shape)} + [C]")
    return torch.einsum("...s,...sc->...c", selection, relevancy)


# ---------------------------------------------------------------------------------------------------------
# Divergences
# ---------------------------------------------------------------------------------------------------------


def kl_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """``KL(p ‖ q) = Σ_c p_c (log p_c - log q_c)`` in nats, over the last dim.

    Args:
        p: ``[..., C]`` probabilities (rows sum to 1).
        q: ``[..., C]`` probabilities.
        eps: probabilities are clamped to at least ``eps`` inside the logs (``0 · log 0 = 0``).

    Returns:
        ``[...]`` non-negative divergences.
    """
    _check_same_shape("p", p, "q", q)
    return (p * (p.clamp_min(eps).log() - q.clamp_min(eps).log())).sum(-1)


def js_divergence(p: Tensor, q: Tensor, eps: float = 1e-12) -> Tensor:
    """Jensen–Shannon divergence ``½ KL(p ‖ m) + ½ KL(q ‖ m)`` with ``m = (p + q) / 2`` (Eq. 8, Eq. 11).

    Natural log: symmetric, zero iff ``p == q``, bounded by ``ln 2`` (reached for disjoint supports).

    Args:
        p: ``[..., C]`` probabilities.
        q: ``[..., C]`` probabilities.
        eps: clamp inside the logs, see :func:`kl_divergence`.

    Returns:
        ``[...]`` divergences in [0, ln 2].
    """
    _check_same_shape("p", p, "q", q)
    m = 0.5 * (p + q)
    return 0.5 * kl_divergence(p, m, eps) + 0.5 * kl_divergence(q, m, eps)


# ---------------------------------------------------------------------------------------------------------
# RDA (§3.2, Eq. 5–8)
# ---------------------------------------------------------------------------------------------------------


def relevancy_distribution(
    relevancy: Tensor, mode: Literal["paper", "code"] = "paper", eps: float = 1e-6, temperature: float = 1.0
) -> Tensor:
    """Turn the normalised relevancy ``R̄(r) ∈ [0, 1]^C`` into the RDA target distribution.

    * ``"code"``: ``softmax(R̄)`` with temperature 1, as ``train_seg.py`` does. Since ``R̄ ∈ [0, 1]`` this
      target is very flat (largest probability at most ``e / (e + C - 1)``).
    * ``"paper"``: ``(R̄ + eps) / Σ_c (R̄_c + eps)``. Eq. 8 plugs ``R̄`` in where a distribution belongs; the
      smallest change that makes it one is to rescale it to sum to 1, which keeps the class *ratios*
      that Eq. 7 produced (and is the identity if ``R̄`` already sums to 1). A softmax would instead keep
      the *differences* and is the code's own departure, covered by ``"code"``. The additive ``eps``
      makes the target strictly positive and gives the uniform distribution on rays where every class
      has ``R̄ = 0``.

    ``temperature`` sharpens either target (ours, not the paper's or the code's; 1 = both as published):
    ``softmax(R̄ / T)`` in code mode, ``(R̄ + eps)^(1/T)`` rescaled in paper mode.

    Args:
        relevancy: ``[R, C]`` normalised relevancies (:func:`relevancy_targets`).
        mode: which reading, see above.
        eps: additive smoothing of the paper target (unused in code mode).
        temperature: target temperature ``T > 0``.

    Returns:
        ``[R, C]`` distributions over classes.
    """
    if mode == "code":
        return torch.softmax(relevancy / temperature, dim=-1)
    if mode == "paper":
        shifted = relevancy + eps
        if temperature != 1.0:
            shifted = shifted ** (1.0 / temperature)
        return shifted / shifted.sum(-1, keepdim=True)
    raise ValueError(f"mode must be 'paper' or 'code', got {mode!r}")


def rda_loss(
    logits: Tensor,
    relevancy: Tensor,
    mode: Literal["paper", "code"] = "paper",
    eps: float = 1e-6,
    temperature: float = 1.0,
) -> Tensor:
    """Relevancy-Distribution Alignment loss (Eq. 5–8): ``mean_r JS(softmax(z(r)), target(r))``.

    The prediction is ``P = softmax(logits)`` at temperature 1 (Eq. 5). The caller chooses the logits to
    match the mode:

    * ``"paper"``: ``logits = segmentation_logits(f, T̂)`` (cosine, Eq. 4); target
      ``R̄ / Σ_c R̄`` (see :func:`relevancy_distribution` for why a rescaling and not a softmax).
      Cosine logits at temperature 1 give at most an ``e²`` ratio between two classes' probabilities,
      so on rays where the target is sharper than that the loss cannot reach 0; it stays bounded by
      ``ln 2`` and its gradient still ranks the classes as ``R̄`` does.
    * ``"code"``: ``logits = segmentation_logits(f, T̂, normalize=False)`` (unnormalised ``f``, the
      official code); target ``softmax(R̄)``.

    Args:
        logits: ``[R, C]`` segmentation logits.
        relevancy: ``[R, C]`` normalised relevancy ``R̄(r)`` of each ray (:func:`relevancy_targets`), not
            detached by this function (the code lets the gradient reach the selection).
        mode: ``"paper"`` or ``"code"`` (only changes how the target becomes a distribution).
        eps: smoothing of the paper-mode target.
        temperature: target temperature (:func:`relevancy_distribution`; 1 = as published).

    Returns:
        Scalar, the JS divergence averaged over rays (the paper sums; the code averages), in [0, ln 2].
    """
    _check_same_shape("logits", logits, "relevancy", relevancy)
    p = torch.softmax(logits, dim=-1)
    q = relevancy_distribution(relevancy, mode=mode, eps=eps, temperature=temperature)
    return js_divergence(p, q).mean()


# ---------------------------------------------------------------------------------------------------------
# FDA (§3.3, Eq. 9–14)
# ---------------------------------------------------------------------------------------------------------


def _mixture_rows(p: Tensor, start: int, stop: int, eps: float) -> tuple[Tensor, Tensor]:
    """Mixtures ``m_ij = (p_i + p_j)/2`` for rows ``start:stop`` ``[B, k, P, C]`` and ``log(max(m, eps))``."""
    m = 0.5 * (p[:, start:stop, None, :] + p[:, None, :, :])  # [B, k, P, C]
    return m, m.clamp_min(eps).log()


class _PairwiseMixtureNegEntropy(torch.autograd.Function):
    """``X[b, i, j] = Σ_c m_ijc log m_ijc`` with ``m_ij = (p_i + p_j) / 2``, in row chunks.

    The ``[B, P, P, C]`` mixture is never stored whole, in the forward or for the backward: the backward
    recomputes it chunk by chunk, using ``∂X_ij/∂p_ic = ∂X_ij/∂p_jc = ½ (log m_ijc + 1)``, so
    ``∂L/∂p_kc = ½ Σ_j (G_kj + G_jk)(log m_kjc + 1)``. Peak extra memory is ``B · chunk · P · C``.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, p: Tensor, chunk_size: int, eps: float) -> Tensor:  # type: ignore[override]
        B, P, _ = p.shape
        out = p.new_empty(B, P, P)
        for start in range(0, P, chunk_size):
            stop = min(start + chunk_size, P)
            m, log_m = _mixture_rows(p, start, stop, eps)
            out[:, start:stop] = (m * log_m).sum(-1)
        ctx.save_for_backward(p)
        ctx.chunk_size = chunk_size  # type: ignore[attr-defined]
        ctx.eps = eps  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors  # type: ignore[attr-defined]
        chunk_size: int = ctx.chunk_size  # type: ignore[attr-defined]
        eps: float = ctx.eps  # type: ignore[attr-defined]
        g_sym = grad_out + grad_out.transpose(1, 2)  # [B, P, P]; m_ij = m_ji
        grad = torch.empty_like(p)
        for start in range(0, p.shape[1], chunk_size):
            stop = min(start + chunk_size, p.shape[1])
            m, log_m = _mixture_rows(p, start, stop, eps)
            # d(m log max(m, eps))/dm, exact also below eps (where the clamp has zero slope)
            dphi = log_m + (m > eps).to(m.dtype)  # [B, k, P, C]
            grad[:, start:stop] = 0.5 * torch.einsum("bkj,bkjc->bkc", g_sym[:, start:stop], dphi)
        return grad, None, None


def pairwise_js_divergence(log_p: Tensor, chunk_size: int | None = 128, eps: float = 1e-12) -> Tensor:
    """JS divergence between every pair of distributions of each batch item (Eq. 11).

    Uses ``JS_ij = ½(Σ_c p_ic log p_ic + Σ_c p_jc log p_jc) - Σ_c m_ijc log m_ijc``; only the last term
    needs the ``[B, P, P, C]`` mixtures, which are formed ``chunk_size`` rows at a time, in the forward and
    again in the backward (a custom autograd function; first derivatives only).

    Args:
        log_p: ``[B, P, C]`` finite log-probabilities (e.g. ``log_softmax``).
        chunk_size: rows of mixtures formed at once (peak extra memory ``B · chunk_size · P · C``);
            ``None`` forms all ``P`` rows at once.
        eps: clamp of the mixture inside its log.

    Returns:
        ``[B, P, P]`` symmetric, zero on the diagonal (up to rounding), in [0, ln 2].
    """
    if log_p.ndim != 3:
        raise ValueError(f"log_p must be [B, P, C], got {tuple(log_p.shape)}")
    chunk = log_p.shape[1] if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    p = log_p.exp()
    negent = (p * log_p).sum(-1)  # [B, P], Σ_c p log p
    mix = _PairwiseMixtureNegEntropy.apply(p, chunk, eps)  # [B, P, P]
    return 0.5 * (negent[:, :, None] + negent[:, None, :]) - mix


def pairwise_kl_divergence(log_p: Tensor) -> Tensor:
    """``KL(p_i ‖ p_j)`` between every pair of distributions of each batch item, via one matmul.

    ``KL_ij = Σ_c p_ic log p_ic - Σ_c p_ic log p_jc``. This is exactly what the official
    ``CorrelationLoss.js_correlation(P, P)`` returns (its mixture of a tensor with itself is the tensor).
    Not symmetric; summed against a symmetric weight it acts as the symmetric KL.

    Args:
        log_p: ``[B, P, C]`` finite log-probabilities.

    Returns:
        ``[B, P, P]``, row ``i`` = ``p_i`` as the reference distribution, zero diagonal.
    """
    if log_p.ndim != 3:
        raise ValueError(f"log_p must be [B, P, C], got {tuple(log_p.shape)}")
    p = log_p.exp()
    negent = (p * log_p).sum(-1)  # [B, P]
    return negent[:, :, None] - p @ log_p.transpose(1, 2)


@overload
def fda_loss(
    logits: Tensor,
    dino: Tensor,
    tau: float = ...,
    shift: float = ...,
    w_pos: float = ...,
    w_neg: float = ...,
    divergence: Literal["js", "kl"] = ...,
    rebalance: bool = ...,
    chunk_size: int | None = ...,
    return_terms: Literal[False] = ...,
) -> Tensor: ...


@overload
def fda_loss(
    logits: Tensor,
    dino: Tensor,
    tau: float = ...,
    shift: float = ...,
    w_pos: float = ...,
    w_neg: float = ...,
    divergence: Literal["js", "kl"] = ...,
    rebalance: bool = ...,
    chunk_size: int | None = ...,
    *,
    return_terms: Literal[True],
) -> tuple[Tensor, dict[str, Tensor]]: ...


def fda_loss(
    logits: Tensor,
    dino: Tensor,
    tau: float = 0.2,
    shift: float = 0.7,
    w_pos: float = 200.0,
    w_neg: float = 0.2,
    divergence: Literal["js", "kl"] = "js",
    rebalance: bool = True,
    chunk_size: int | None = 128,
    return_terms: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Feature-Distribution Alignment loss (Eq. 9–14) over patches of rays with their DINO tokens.

    Per patch ``b``, over all ordered token pairs ``(i, j)`` (diagonal included):

    * ``Corr_F = cos(dino_i, dino_j)`` (Eq. 9), computed without gradient;
      ``pos = clamp(Corr_F - shift, min=0)``, ``neg = clamp(Corr_F - shift, max=0)`` (Eq. 13).
    * ``Ṕ = softmax(logits / tau)`` (Eq. 10); ``Corr_D`` = pairwise JS (Eq. 11, ``divergence="js"``) or the
      official code's pairwise ``KL(Ṕ_i ‖ Ṕ_j)`` (``"kl"``; see :func:`pairwise_kl_divergence`).
    * ``rebalance=True`` (Eq. 14, the method):
      ``w_pos · Σ(pos · Corr_D) / count_nonzero(pos) + w_neg · Σ(neg · Corr_D) / count_nonzero(neg)``,
      sums and counts over the whole batch. The diagonal (cos = 1 > shift) counts in ``pos``. A term with
      no non-zero entries is 0 (the code would give NaN). The ``neg`` term is ≤ 0: minimising it pushes
      dissimilar tokens apart.
    * ``rebalance=False`` (Eq. 12, the paper's "w/o re-balance" ablation, i.e. the plain correlation
      loss): ``Σ (Corr_F - shift) · Corr_D / (B · P · P)``, the mean over all ordered pairs including the
      diagonal; ``w_pos`` and ``w_neg`` are not applied (Eq. 12 has no weights; scale it outside).

    Args:
        logits: ``[B, P, C]`` (or ``[B, H, W, C]``) segmentation logits ``z`` per patch and token, the
            cosine logits of Eq. 4 (the code uses the normalised rendered feature here).
        dino: ``[B, P, Dd]`` (or ``[B, H, W, Dd]``) DINO features of the same tokens, any norm.
        tau: temperature of Eq. 10 (paper/code: 0.2).
        shift: offset ``b`` of Eq. 12–13 (paper/code: 0.7).
        w_pos: ``λ_pos`` (200).
        w_neg: ``λ_neg`` (0.2; the official per-scene configs use 0.18–0.35).
        divergence: ``"js"`` (paper) or ``"kl"`` (official code).
        rebalance: Eq. 14 (``True``) or Eq. 12 (``False``).
        chunk_size: row chunk of the JS mixtures, see :func:`pairwise_js_divergence`.
        return_terms: also return detached diagnostics.

    Returns:
        The scalar loss; with ``return_terms`` also a dict with ``n_pos`` and ``n_neg`` (int64 counts of
        non-zero ``pos`` / ``neg`` entries), ``pos`` and ``neg`` (the two normalised sums of Eq. 14 before
        the weights ``λ``), all detached.
    """
    if logits.ndim < 3 or dino.ndim != logits.ndim or logits.shape[:-1] != dino.shape[:-1]:
        raise ValueError(f"logits {tuple(logits.shape)} and dino {tuple(dino.shape)} must be [B, P, C] and [B, P, Dd]")
    if divergence not in ("js", "kl"):
        raise ValueError(f"divergence must be 'js' or 'kl', got {divergence!r}")
    B, C = logits.shape[0], logits.shape[-1]
    z = logits.reshape(B, -1, C)  # [B, P, C]
    feats = dino.reshape(B, z.shape[1], dino.shape[-1])  # [B, P, Dd]

    log_p = F.log_softmax(z / tau, dim=-1)  # Eq. 10
    with torch.no_grad():
        fn = F.normalize(feats.to(z.dtype), dim=-1)
        corr_f = fn @ fn.transpose(1, 2) - shift  # [B, P, P], Eq. 9 minus b
        pos = corr_f.clamp(min=0)
        neg = corr_f.clamp(max=0)
        n_pos = torch.count_nonzero(pos)
        n_neg = torch.count_nonzero(neg)

    if divergence == "js":
        corr_d = pairwise_js_divergence(log_p, chunk_size=chunk_size)  # Eq. 11
    else:
        corr_d = pairwise_kl_divergence(log_p)  # the official code's quirk

    pos_term = (pos * corr_d).sum() / n_pos.clamp(min=1)
    neg_term = (neg * corr_d).sum() / n_neg.clamp(min=1)
    if rebalance:
        loss = w_pos * pos_term + w_neg * neg_term  # Eq. 14
    else:
        loss = (corr_f * corr_d).sum() / corr_f.numel()  # Eq. 12, averaged over ordered pairs
    if not return_terms:
        return loss
    terms = {"n_pos": n_pos, "n_neg": n_neg, "pos": pos_term.detach(), "neg": neg_term.detach()}
    return loss, terms
