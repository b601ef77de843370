"""Tests of the 3D-OVS losses against explicit loop implementations on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovs3d import losses as L

R, S, C, D, P = 5, 3, 3, 4, 6


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _rand(*shape: int, gen: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=dtype)


def _dist(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.softmax(_rand(*shape, gen=gen), dim=-1)


# --- reference implementations (explicit loops) -----------------------------------------------------------


def _kl_ref(p: list[float], q: list[float]) -> float:
    return sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q) if pc > 0)


def _js_ref(p: list[float], q: list[float]) -> float:
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return 0.5 * _kl_ref(p, m) + 0.5 * _kl_ref(q, m)


def _cos_ref(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _fda_ref(logits, dino, tau, shift, w_pos, w_neg, divergence, rebalance):
    B, n, _ = logits.shape
    sum_pos = sum_neg = sum_all = 0.0
    n_pos = n_neg = 0
    for b in range(B):
        probs = [torch.softmax(logits[b, i] / tau, dim=-1).tolist() for i in range(n)]
        for i in range(n):
            for j in range(n):
                corr_f = _cos_ref(dino[b, i].tolist(), dino[b, j].tolist()) - shift
                if divergence == "js":
                    corr_d = _js_ref(probs[i], probs[j])
                else:
                    corr_d = _kl_ref(probs[i], probs[j])
                sum_all += corr_f * corr_d
                if corr_f > 0:
                    sum_pos += corr_f * corr_d
                    n_pos += 1
                elif corr_f < 0:
                    sum_neg += corr_f * corr_d
                    n_neg += 1
    if not rebalance:
        return sum_all / (B * n * n), n_pos, n_neg
    pos = sum_pos / max(n_pos, 1)
    neg = sum_neg / max(n_neg, 1)
    return w_pos * pos + w_neg * neg, n_pos, n_neg


def _official_js_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The official ``CorrelationLoss.js_correlation`` (inputs in log space), re-implemented verbatim."""
    m = torch.log((a.exp() + b.exp()) / 2.0)  # mixture formed before broadcasting
    m = m.unsqueeze(1)
    a = a.unsqueeze(2)
    kl_am = (a.exp() * (a - m)).sum(dim=-1)
    b = b.unsqueeze(2)
    kl_bm = (b.exp() * (b - m)).sum(dim=-1)
    return (kl_am + kl_bm) / 2.0


# --- selection and features -------------------------------------------------------------------------------


def test_selection_temperature_lets_one_scale_win():
    """The code's softmax over rendered sigmoids in [0, 1] keeps every weight within [1/(1+2e), e/(e+2)];
    a temperature below 1 lets one scale take almost all of it."""
    raw = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    e = math.e
    torch.testing.assert_close(L.selection_softmax(raw)[0], torch.tensor([e, 1, 1]) / (e + 2))
    sharp = L.selection_softmax(raw, temperature=0.1)
    torch.testing.assert_close(sharp, torch.softmax(raw * 10, dim=-1))
    assert sharp[0, 0] > 0.99


def test_selection_softmax_sums_to_one(gen):
    raw = _rand(R, S, gen=gen)
    sel = L.selection_softmax(raw)
    assert sel.shape == (R, S)
    torch.testing.assert_close(sel.sum(-1), torch.ones(R, dtype=raw.dtype))
    for r in range(R):
        den = sum(math.exp(v) for v in raw[r].tolist())
        for s in range(S):
            assert sel[r, s].item() == pytest.approx(math.exp(raw[r, s].item()) / den, rel=1e-12)


def test_selected_features_loop_and_unit_norm(gen):
    feats = F.normalize(_rand(R, S, D, gen=gen), dim=-1)
    sel = L.selection_softmax(_rand(R, S, gen=gen))
    out = L.selected_features(feats, sel)
    assert out.shape == (R, D)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(R, dtype=out.dtype))
    for r in range(R):
        mixed = [sum(sel[r, s].item() * feats[r, s, d].item() for s in range(S)) for d in range(D)]
        norm = math.sqrt(sum(x * x for x in mixed))
        for d in range(D):
            assert out[r, d].item() == pytest.approx(mixed[d] / norm, rel=1e-10)
    with pytest.raises(ValueError):
        L.selected_features(feats, sel[:, :2])


def test_feature_loss_loop(gen):
    a, b = _rand(R, D, gen=gen), _rand(R, D, gen=gen)
    ref = -sum(_cos_ref(a[r].tolist(), b[r].tolist()) for r in range(R)) / R
    assert L.feature_loss(a, b).item() == pytest.approx(ref, rel=1e-10)
    assert L.feature_loss(a, 3.0 * a).item() == pytest.approx(-1.0)


def test_segmentation_logits_cosine_and_raw(gen):
    f, t = _rand(R, D, gen=gen), _rand(C, D, gen=gen)
    cos = L.segmentation_logits(f, t)
    raw = L.segmentation_logits(f, t, normalize=False)
    for r in range(R):
        for c in range(C):
            assert cos[r, c].item() == pytest.approx(_cos_ref(f[r].tolist(), t[c].tolist()), rel=1e-10)
            dot = sum(x * y for x, y in zip(f[r].tolist(), t[c].tolist()))
            assert raw[r, c].item() == pytest.approx(dot, rel=1e-10)
    # leading dims: per-scale relevancies of a view stack [V, H, W, S, D] -> [V, H, W, S, C]
    assert L.segmentation_logits(_rand(2, 3, 4, S, D, gen=gen), t).shape == (2, 3, 4, S, C)


# --- relevancy ----------------------------------------------------------------------


def test_minmax_normalize_per_view_and_label(gen):
    V, H, W = 2, 3, 4
    rel = _rand(V, H, W, C, gen=gen)
    out = L.minmax_normalize(rel)
    assert out.shape == rel.shape
    for v in range(V):
        for c in range(C):
            vals = [rel[v, h, w, c].item() for h in range(H) for w in range(W)]
            lo, hi = min(vals), max(vals)
            for h in range(H):
                for w in range(W):
                    expect = (rel[v, h, w, c].item() - lo) / (hi - lo)
                    assert out[v, h, w, c].item() == pytest.approx(expect, abs=1e-12)
            assert out[v, ..., c].min().item() == 0.0
            assert out[v, ..., c].max().item() == pytest.approx(1.0, abs=1e-15)


def test_minmax_normalize_scales_flat_pixels_and_constant_slice(gen):
    V, H, W = 2, 3, 4
    rel = _rand(V, H, W, S, C, gen=gen)
    rel[1, :, :, 2, 0] = 0.25  # constant slice: view 1, scale 2, class 0
    out = L.minmax_normalize(rel)
    assert torch.all(out[1, :, :, 2, 0] == 0)
    mask = torch.ones(V, S, C, dtype=torch.bool)
    mask[1, 2, 0] = False
    flat = out.permute(0, 3, 4, 1, 2).reshape(V, S, C, -1)
    torch.testing.assert_close(flat.amin(-1)[mask], torch.zeros(int(mask.sum()), dtype=out.dtype))
    torch.testing.assert_close(flat.amax(-1)[mask], torch.ones(int(mask.sum()), dtype=out.dtype))
    # flattened pixels [V, N, S, C] with dims=(1,) give the same numbers
    torch.testing.assert_close(L.minmax_normalize(rel.reshape(V, H * W, S, C), dims=(1,)), out.reshape(V, -1, S, C))
    assert torch.isfinite(out).all()


def test_relevancy_targets_loop(gen):
    rel = torch.rand(R, S, C, generator=gen, dtype=torch.float64)
    sel = L.selection_softmax(_rand(R, S, gen=gen))
    out = L.relevancy_targets(rel, sel)
    for r in range(R):
        for c in range(C):
            expect = sum(sel[r, s].item() * rel[r, s, c].item() for s in range(S))
            assert out[r, c].item() == pytest.approx(expect, rel=1e-12)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError):
        L.relevancy_targets(rel, sel[:3])


# --- divergences ----------------------------------------------------------------------


def test_js_properties_and_loop(gen):
    p, q = _dist(R, C, gen=gen), _dist(R, C, gen=gen)
    js = L.js_divergence(p, q)
    assert js.shape == (R,)
    torch.testing.assert_close(js, L.js_divergence(q, p))
    assert torch.all(js >= 0) and torch.all(js <= math.log(2))
    torch.testing.assert_close(L.js_divergence(p, p), torch.zeros(R, dtype=p.dtype))
    for r in range(R):
        assert js[r].item() == pytest.approx(_js_ref(p[r].tolist(), q[r].tolist()), rel=1e-10)
    # disjoint supports reach the bound ln 2
    a = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.5, 0.5]], dtype=torch.float64)
    assert L.js_divergence(a, b).item() == pytest.approx(math.log(2), rel=1e-12)


def test_kl_matches_torch(gen):
    p, q = _dist(R, C, gen=gen), _dist(R, C, gen=gen)
    ref = F.kl_div(q.log(), p, reduction="none").sum(-1)
    torch.testing.assert_close(L.kl_divergence(p, q), ref)
    for r in range(R):
        assert L.kl_divergence(p, q)[r].item() == pytest.approx(_kl_ref(p[r].tolist(), q[r].tolist()))
    # 0 * log 0 = 0
    z = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert L.kl_divergence(z, torch.tensor([[0.5, 0.5]], dtype=torch.float64)).item() == pytest.approx(math.log(2))


def test_js_gradcheck(gen):
    p = _dist(R, C, gen=gen).requires_grad_()
    q = _dist(R, C, gen=gen).requires_grad_()
    assert torch.autograd.gradcheck(L.js_divergence, (p, q))


# --- RDA ----------------------------------------------------------------------


def test_rda_code_mode_matches_official_formula(gen):
    f, t = _rand(R, D, gen=gen), F.normalize(_rand(C, D, gen=gen), dim=-1)
    rel = torch.rand(R, C, generator=gen, dtype=torch.float64)
    logits = L.segmentation_logits(f, t, normalize=False)
    got = L.rda_loss(logits, rel, mode="code")
    # train_seg.py, verbatim in log space
    sel_rel = F.log_softmax(rel, dim=-1)
    rel_map = F.log_softmax(f @ t.T, dim=-1)
    m = torch.log((rel_map.exp() + sel_rel.exp()) / 2.0)
    kl_pm = (rel_map.exp() * (rel_map - m)).sum(-1)
    kl_qm = (sel_rel.exp() * (sel_rel - m)).sum(-1)
    torch.testing.assert_close(got, 0.5 * (kl_pm + kl_qm).mean())


def test_rda_paper_mode_loop(gen):
    logits = _rand(R, C, gen=gen)
    rel = torch.rand(R, C, generator=gen, dtype=torch.float64)
    eps = 1e-6
    total = 0.0
    for r in range(R):
        p = torch.softmax(logits[r], -1).tolist()
        den = sum(v + eps for v in rel[r].tolist())
        q = [(v + eps) / den for v in rel[r].tolist()]
        total += _js_ref(p, q)
    assert L.rda_loss(logits, rel, mode="paper", eps=eps).item() == pytest.approx(total / R, rel=1e-10)
    # all-zero relevancy -> uniform target, finite loss
    zero = torch.zeros(R, C, dtype=torch.float64)
    torch.testing.assert_close(L.relevancy_distribution(zero), torch.full((R, C), 1 / C, dtype=torch.float64))
    assert torch.isfinite(L.rda_loss(logits, zero))
    # a prediction equal to the target gives 0
    q = L.relevancy_distribution(rel)
    assert L.rda_loss(q.log(), rel).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        L.rda_loss(logits, rel, mode="nope")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_gradients_reach_selection(gen, mode):
    feats = F.normalize(_rand(R, S, D, gen=gen), dim=-1)
    rel = torch.rand(R, S, C, generator=gen, dtype=torch.float64)
    text = F.normalize(_rand(C, D, gen=gen), dim=-1)
    rendered = _rand(R, D, gen=gen).requires_grad_()
    raw = _rand(R, S, gen=gen).requires_grad_()
    sel = L.selection_softmax(raw)

    loss_f = L.feature_loss(rendered, L.selected_features(feats, sel))
    (g_raw,) = torch.autograd.grad(loss_f, raw, retain_graph=True)
    assert torch.isfinite(g_raw).all() and g_raw.abs().sum() > 0

    logits = L.segmentation_logits(rendered, text, normalize=(mode == "paper"))
    loss_r = L.rda_loss(logits, L.relevancy_targets(rel, sel), mode=mode)
    g_raw, g_f = torch.autograd.grad(loss_r, (raw, rendered))
    assert torch.isfinite(g_raw).all() and g_raw.abs().sum() > 0
    assert torch.isfinite(g_f).all() and g_f.abs().sum() > 0


# --- FDA ----------------------------------------------------------------------


def _group_dino(groups: list[list[int]], dim: int = 8, sign: list[list[float]] | None = None) -> torch.Tensor:
    """One-hot DINO tokens: same group -> cos 1, different groups -> cos 0 (exactly); sign -1 -> cos -1."""
    out = torch.zeros(len(groups), len(groups[0]), dim, dtype=torch.float64)
    for b, g in enumerate(groups):
        for i, k in enumerate(g):
            out[b, i, k] = 1.0 if sign is None else sign[b][i]
    return out


def test_fda_counts_known_cosines(gen):
    groups = [[0, 0, 1, 1, 1, 2], [0, 1, 2, 3, 3, 3]]
    dino = _group_dino(groups)
    logits = _rand(2, P, C, gen=gen)
    _, terms = L.fda_loss(logits, dino, return_terms=True)
    sizes = [[g.count(k) for k in set(g)] for g in groups]
    n_pos = sum(n * n for sz in sizes for n in sz)  # same-group pairs, diagonal included
    assert terms["n_pos"].item() == n_pos == (4 + 9 + 1) + (1 + 1 + 1 + 9)
    assert terms["n_neg"].item() == 2 * P * P - n_pos

    # shift 0: orthogonal tokens have Corr_F - b == 0 exactly and count in neither term;
    # an opposite token (cos -1) counts in neg.
    sign = [[1, 1, 1, 1, 1, -1], [1, 1, 1, 1, 1, 1]]
    dino = _group_dino([[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5]], sign=sign)
    _, terms = L.fda_loss(logits, dino, shift=0.0, return_terms=True)
    # patch 0: groups {0,1}{2,3}{4,5} but token 5 is flipped: pos = 2*2 + 2*2 + 1 + 1 = 10, neg = (4,5),(5,4)
    # patch 1: all distinct -> pos = the 6 diagonal entries, neg = 0
    assert terms["n_pos"].item() == 10 + 6
    assert terms["n_neg"].item() == 2


@pytest.mark.parametrize("divergence", ["js", "kl"])
@pytest.mark.parametrize("rebalance", [True, False])
def test_fda_matches_loop(gen, divergence, rebalance):
    logits = _rand(2, P, C, gen=gen)
    dino = _rand(2, P, 5, gen=gen) + torch.tensor([2.0, 0, 0, 0, 0], dtype=torch.float64)  # mix of signs
    got, terms = L.fda_loss(
        logits, dino, tau=0.5, shift=0.7, divergence=divergence, rebalance=rebalance, return_terms=True
    )
    ref, n_pos, n_neg = _fda_ref(logits, dino, 0.5, 0.7, 200.0, 0.2, divergence, rebalance)
    assert n_pos > 2 * P and n_neg > 0  # both terms are exercised
    assert got.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert (terms["n_pos"].item(), terms["n_neg"].item()) == (n_pos, n_neg)


def test_fda_kl_equals_official_js_correlation(gen):
    logits = _rand(3, P, C, gen=gen)
    log_p = F.log_softmax(logits / 0.2, dim=-1)
    official = _official_js_correlation(log_p, log_p)
    torch.testing.assert_close(L.pairwise_kl_divergence(log_p), official)
    # and the whole loss against the official CorrelationLoss.forward + weighting
    dino = _rand(3, P, 5, gen=gen) + 1.5
    fn = F.normalize(dino, dim=-1)
    f_corr = fn @ fn.transpose(1, 2) - 0.7
    pos, neg = f_corr.clamp(min=0), f_corr.clamp(max=0)
    ref = 200 * (pos * official).sum() / torch.count_nonzero(pos) + 0.2 * (neg * official).sum() / torch.count_nonzero(
        neg
    )
    torch.testing.assert_close(L.fda_loss(logits, dino, divergence="kl"), ref)


def test_pairwise_js_matches_broadcast_and_loop(gen):
    log_p = F.log_softmax(_rand(2, P, C, gen=gen), dim=-1)
    js = L.pairwise_js_divergence(log_p)
    p = log_p.exp()
    naive = L.js_divergence(p[:, :, None, :].expand(-1, -1, P, -1), p[:, None, :, :].expand(-1, P, -1, -1))
    torch.testing.assert_close(js, naive)
    torch.testing.assert_close(js, js.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(js, dim1=1, dim2=2), torch.zeros(2, P, dtype=js.dtype))
    assert js.max() <= math.log(2)
    for i in range(P):
        for j in range(P):
            assert js[1, i, j].item() == pytest.approx(_js_ref(p[1, i].tolist(), p[1, j].tolist()), abs=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, None])
def test_pairwise_js_chunked_equals_unchunked_with_grads(gen, chunk):
    logits = _rand(2, P, C, gen=gen).requires_grad_()
    weights = _rand(2, P, P, gen=gen)  # asymmetric upstream gradient

    def run(c):
        js = L.pairwise_js_divergence(F.log_softmax(logits, -1), chunk_size=c)
        (g,) = torch.autograd.grad((weights * js).sum(), logits)
        return js.detach(), g

    js_c, g_c = run(chunk)
    js_u, g_u = run(128)
    torch.testing.assert_close(js_c, js_u)
    torch.testing.assert_close(g_c, g_u)
    # custom backward vs plain autograd through the broadcast formula
    p = torch.softmax(logits, -1)
    naive = L.js_divergence(p[:, :, None, :].expand(-1, -1, P, -1), p[:, None, :, :].expand(-1, P, -1, -1))
    (g_n,) = torch.autograd.grad((weights * naive).sum(), logits)
    torch.testing.assert_close(g_c, g_n)


def test_fda_chunking_does_not_change_loss(gen):
    logits = _rand(2, 4, 5, C, gen=gen)  # [B, H, W, C] layout is accepted
    dino = _rand(2, 4, 5, 7, gen=gen) + 1.0
    ref = L.fda_loss(logits, dino, chunk_size=None)
    for chunk in (1, 3, 128):
        torch.testing.assert_close(L.fda_loss(logits, dino, chunk_size=chunk), ref)


@pytest.mark.parametrize("divergence", ["js", "kl"])
def test_fda_gradcheck(gen, divergence):
    logits = (0.3 * _rand(2, 4, C, gen=gen)).requires_grad_()
    dino = _rand(2, 4, 5, gen=gen) + 1.0

    def fn(z):
        return L.fda_loss(z, dino, tau=0.5, divergence=divergence, chunk_size=3)

    assert torch.autograd.gradcheck(fn, (logits,))


def test_fda_no_negatives_is_finite(gen):
    logits = _rand(1, P, C, gen=gen)
    dino = torch.ones(1, P, 4, dtype=torch.float64)  # all tokens identical: every pair positive
    loss, terms = L.fda_loss(logits, dino, return_terms=True)
    assert terms["n_neg"].item() == 0 and terms["neg"].item() == 0.0
    assert torch.isfinite(loss)


def test_fda_float32_and_input_checks(gen):
    logits = torch.randn(2, P, C, generator=gen)
    dino = torch.randn(2, P, 5, generator=gen)
    loss = L.fda_loss(logits, dino)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    with pytest.raises(ValueError):
        L.fda_loss(logits, dino[:, :4])
    with pytest.raises(ValueError):
        L.fda_loss(logits, dino, divergence="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        L.pairwise_js_divergence(F.log_softmax(logits, -1), chunk_size=0)
