import torch

from ovs3d.render.sampling import samples_per_ray, stratified_samples
from ovs3d.render.volume import (
    accumulate,
    accumulate_packed,
    alpha_from_density,
    composite_background,
    depth_spread,
    expected_background_mse,
    render_weights,
)


def naive_render(sigmas, deltas, values):
    out = []
    for r in range(sigmas.shape[0]):
        trans, acc = 1.0, torch.zeros(values.shape[-1], dtype=values.dtype)
        for i in range(sigmas.shape[1]):
            alpha = 1 - torch.exp(-sigmas[r, i] * deltas[r, i])
            acc = acc + trans * alpha * values[r, i]
            trans = trans * (1 - alpha)
        out.append(acc)
    return torch.stack(out)


def test_render_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    sig = torch.rand(7, 13, generator=g, dtype=torch.float64) * 3
    dt = torch.rand(7, 13, generator=g, dtype=torch.float64) * 0.3
    vals = torch.rand(7, 13, 4, generator=g, dtype=torch.float64)
    w, trans = render_weights(alpha_from_density(sig, dt))
    assert torch.allclose(accumulate(w, vals), naive_render(sig, dt, vals), atol=1e-8)
    assert torch.all(w.sum(-1) <= 1 + 1e-9)
    assert torch.allclose(trans[:, 0], torch.ones(7, dtype=torch.float64))


def test_packed_equals_dense():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(5, 6, generator=g)
    w[w < 0.5] = 0
    vals = torch.rand(5, 6, 3, generator=g)
    keep = w > 0
    packed = accumulate_packed(w[keep], vals[keep], keep.nonzero()[:, 0], 5)
    assert torch.allclose(packed, accumulate(w, vals), atol=1e-6)


def test_opaque_first_sample_takes_all_weight():
    alphas = torch.tensor([[1.0, 0.5, 0.5]])
    w, _ = render_weights(alphas)
    assert torch.allclose(w, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6)


def test_stratified_samples_in_bins():
    tn, tf = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 3.0])
    t, dt = stratified_samples(tn, tf, 4, perturb=True, generator=torch.Generator().manual_seed(0))
    edges0 = torch.linspace(0, 1, 5)
    assert torch.all((t[0] >= edges0[:-1]) & (t[0] <= edges0[1:]))
    assert torch.allclose(dt[1], torch.full((4,), 0.5))
    t_det, _ = stratified_samples(tn, tf, 4, perturb=False)
    assert torch.allclose(t_det[0], torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_samples_per_ray_half_voxel_steps():
    d = torch.tensor([[0.0, 0.0, 1.0]])
    n = samples_per_ray(d, torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([0.1, 0.1, 0.1]), 0.5)
    assert n == 40  # 20 voxels crossed, 2 samples per voxel


def test_distortion_loss_matches_pairwise_sum():
    from ovs3d.render.volume import distortion_loss

    g = torch.Generator().manual_seed(3)
    w = torch.rand(4, 9, generator=g, dtype=torch.float64)
    t = torch.sort(torch.rand(4, 9, generator=g, dtype=torch.float64), -1).values
    dt = torch.rand(4, 9, generator=g, dtype=torch.float64) * 0.1
    ref = []
    for r in range(4):
        pair = sum(w[r, i] * w[r, j] * abs(t[r, i] - t[r, j]) for i in range(9) for j in range(9))
        ref.append(pair + (w[r] ** 2 * dt[r]).sum() / 3)
    assert torch.allclose(distortion_loss(w, t, dt), torch.stack(ref).mean())
    # a single sharp peak is cheaper than the same weight spread out
    sharp = torch.zeros(1, 9, dtype=torch.float64)
    sharp[0, 4] = 1.0
    spread = torch.full((1, 9), 1 / 9, dtype=torch.float64)
    ts = torch.linspace(0, 1, 9, dtype=torch.float64)[None]
    assert distortion_loss(sharp, ts, ts * 0 + 0.1) < distortion_loss(spread, ts, ts * 0 + 0.1)


def test_composite_background_against_the_naive_loop():
    g = torch.Generator().manual_seed(0)
    sigmas, deltas = torch.rand(5, 7, generator=g) * 3, torch.rand(5, 7, generator=g) * 0.2
    colours, bg = torch.rand(5, 7, 3, generator=g), torch.rand(5, 3, generator=g)
    weights, _ = render_weights(alpha_from_density(sigmas, deltas))
    out = composite_background(accumulate(weights, colours), weights.sum(-1), bg)
    # the background as one more, fully opaque sample at the end of each ray
    big = torch.full((5, 1), 1e9)
    ref = naive_render(torch.cat([sigmas, big], 1), torch.cat([deltas, big], 1), torch.cat([colours, bg[:, None]], 1))
    assert torch.allclose(out, ref, atol=1e-5)
    # an empty ray shows the background, an opaque one none of it
    assert torch.allclose(composite_background(torch.zeros(1, 3), torch.zeros(1), bg[0]), bg[:1])
    assert torch.allclose(composite_background(colours[:1, 0], torch.ones(1), bg[0]), colours[:1, 0])


def test_expected_background_mse_against_monte_carlo():
    g = torch.Generator().manual_seed(1)
    acc = torch.rand(6, generator=g, dtype=torch.float64)
    rgb = torch.rand(6, 3, generator=g, dtype=torch.float64) * acc[:, None]
    target = torch.rand(6, 3, generator=g, dtype=torch.float64)
    bgs = torch.rand(200_000, 1, 3, generator=g, dtype=torch.float64)
    mc = (((rgb + (1 - acc)[:, None] * bgs) - target) ** 2).mean()
    assert abs(float(expected_background_mse(rgb, acc, target) - mc)) < 2e-3
    mc_half = (((rgb + (1 - acc)[:, None] * 0.5 * bgs) - target) ** 2).mean()
    assert abs(float(expected_background_mse(rgb, acc, target, 0.5) - mc_half)) < 2e-3
    # an opaque ray pays nothing for the background; a transparent one its variance 1/12 on top
    ones = torch.ones(6, dtype=torch.float64)
    assert torch.allclose(expected_background_mse(rgb, ones, target), ((rgb - target) ** 2).mean())


def test_depth_spread_against_weighted_std_loop():
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(5, 7, generator=g, dtype=torch.float64)
    weights[1] = 0.0  # a ray that carries no weight
    weights[2] = torch.tensor([0, 0, 0.4, 0, 0, 0, 0], dtype=torch.float64)  # all at one sample
    t_mid = torch.sort(torch.rand(5, 7, generator=g, dtype=torch.float64), -1).values
    out = depth_spread(weights, t_mid)
    for r in range(5):
        total = float(weights[r].sum())
        if total == 0:
            assert out[r] == 0
            continue
        mean = sum(float(w * t) for w, t in zip(weights[r], t_mid[r])) / total
        var = sum(float(w) * (float(t) - mean) ** 2 for w, t in zip(weights[r], t_mid[r])) / total
        assert abs(float(out[r]) - var**0.5) < 1e-9
    assert out[2] == 0 and out[0] > 0
