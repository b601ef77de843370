"""LERF relevancy (ovs3d.relevancy) against the direct formula."""

import math

import torch
import torch.nn.functional as F

from ovs3d.relevancy import best_scale_relevancy, relevancy, relevancy_from_dots


def _direct(phi, q, negs, temp=10.0):
    """min over negatives of exp(T phi.q) / (exp(T phi.q) + exp(T phi.n))."""
    out = []
    for n in negs:
        a, b = math.exp(temp * float(phi @ q)), math.exp(temp * float(phi @ n))
        out.append(a / (a + b))
    return min(out)


def test_relevancy_matches_the_pairwise_softmax_formula():
    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(7, 16, generator=g, dtype=torch.float64), dim=-1)
    queries = F.normalize(torch.randn(3, 16, generator=g, dtype=torch.float64), dim=-1)
    negs = F.normalize(torch.randn(4, 16, generator=g, dtype=torch.float64), dim=-1)
    rel = relevancy(feats, queries, negs)
    assert rel.shape == (7, 3) and rel.dtype == torch.float32
    for i in range(7):
        for j in range(3):
            assert abs(float(rel[i, j]) - _direct(feats[i], queries[j], negs)) < 1e-6
    assert (rel >= 0).all() and (rel <= 1).all()


def test_relevancy_is_one_half_when_the_query_is_a_negative():
    feats = F.normalize(torch.randn(5, 8), dim=-1)
    negs = F.normalize(torch.randn(4, 8), dim=-1)
    rel = relevancy(feats, negs[1:2], negs)
    assert torch.all(rel <= 0.5 + 1e-6)  # the min includes the query against itself: exactly 0.5
    assert torch.allclose(relevancy_from_dots(torch.zeros(2, 1), torch.zeros(2, 4)), torch.full((2, 1), 0.5))


def test_best_scale_takes_the_scale_with_the_highest_peak_per_query():
    negs = torch.eye(4, 6)[:, :]  # negatives on axes 0..3
    q = torch.zeros(2, 6)
    q[0, 4], q[1, 5] = 1.0, 1.0
    feats = torch.zeros(3, 2, 6)  # 3 scales, 2 rays
    feats[0, :, 0] = 1.0  # scale 0: like a negative everywhere
    feats[1, 0, 4] = 1.0  # scale 1: ray 0 is query 0
    feats[1, 1, 0] = 1.0
    feats[2, :, 5] = 1.0  # scale 2: both rays are query 1
    rel, best = best_scale_relevancy(feats.transpose(0, 1), q, negs)  # [rays, scales, D]
    assert best.tolist() == [1, 2]
    assert torch.allclose(rel[:, 0], relevancy(feats[1], q[:1], negs)[:, 0])
    assert torch.allclose(rel[:, 1], relevancy(feats[2], q[1:], negs)[:, 0])


def test_bfloat16_features_give_nearly_the_same_relevancy():
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(100, 512, generator=g), dim=-1)
    q = F.normalize(torch.randn(2, 512, generator=g), dim=-1)
    negs = F.normalize(torch.randn(4, 512, generator=g), dim=-1)
    exact = relevancy(feats, q, negs)
    stored = relevancy(feats.to(torch.bfloat16), q, negs)
    assert (exact - stored).abs().max() < 0.02
