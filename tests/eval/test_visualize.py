"""Overlays, legends and colour maps: shapes, dtypes and the few exact values that matter."""

from __future__ import annotations

import numpy as np
import pytest

from ovs3d.eval.visualize import (
    UNLABELLED_COLOR,
    boundary_mask,
    compose_eval_figure,
    depth_colormap,
    label_palette,
    legend_image,
    overlay_segmentation,
    relevancy_heatmap,
)


def test_palette_distinct_deterministic():
    p = label_palette(64)
    assert p.shape == (64, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 64
    assert not np.any(np.all(p == 0, axis=1))  # black is reserved for boundaries
    np.testing.assert_array_equal(label_palette(64), p)
    np.testing.assert_array_equal(label_palette(5), p[:5])
    assert label_palette(0).shape == (0, 3)


def test_boundary_mask_tiny():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    expected = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(boundary_mask(labels), expected)
    assert not boundary_mask(np.zeros((4, 5), dtype=int)).any()


def test_overlay_values():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    rgb = np.full((3, 3, 3), 0.2)
    pal = label_palette(3)
    out = overlay_segmentation(rgb, labels, pal)
    assert out.shape == (3, 3, 3) and out.dtype == np.uint8
    expect = np.round(0.65 * pal[0].astype(float) + 0.35 * 0.2 * 255).astype(np.uint8)
    np.testing.assert_allclose(out[0, 0], expect, atol=1)
    assert (out[boundary_mask(labels)] == 0).all()
    flat = overlay_segmentation(None, np.array([[-1]]), pal)
    np.testing.assert_array_equal(flat[0, 0], UNLABELLED_COLOR)


def test_legend_and_figure():
    classes = ["apple", "bowl of soup", "cup"]
    pal = label_palette(3)
    leg = legend_image(classes, pal)
    assert leg.dtype == np.uint8 and leg.ndim == 3 and leg.shape[2] == 3
    assert leg.shape[0] >= 3 * 16
    rgb = np.random.default_rng(0).random((6, 8, 3))
    pred = np.random.default_rng(1).integers(0, 3, (6, 8))
    gt = np.zeros((3, 6, 8), dtype=bool)
    gt[0, :3] = True
    gt[2, 3:] = True
    fig = compose_eval_figure(rgb, gt, pred, classes, pal, title="view 00")
    assert fig.dtype == np.uint8 and fig.ndim == 3 and fig.shape[2] == 3
    assert fig.shape[0] >= 256 and fig.shape[1] >= 3 * 8 * 43
    with pytest.raises(ValueError):
        compose_eval_figure(rgb, gt[:, :5], pred, classes, pal)


def test_heatmap_and_depth():
    rel = np.linspace(0, 1, 12).reshape(3, 4)
    h = relevancy_heatmap(rel)
    assert h.shape == (3, 4, 3) and h.dtype == np.uint8
    assert not np.array_equal(h[0, 0], h[-1, -1])
    hb = relevancy_heatmap(rel, rgb=np.zeros((3, 4, 3)))
    assert hb.shape == (3, 4, 3) and (hb <= h).all()
    depth = np.array([[1.0, 2.0], [np.inf, np.nan]])
    d = depth_colormap(depth, near=1.0, far=2.0)
    assert d.shape == (2, 2, 3) and d.dtype == np.uint8
    assert (d[1] == 0).all() and not np.array_equal(d[0, 0], d[0, 1])


def test_legend_flows_into_columns():
    classes = [f"label {i}" for i in range(30)]
    pal = label_palette(30)
    one = legend_image(classes, pal)
    flowed = legend_image(classes, pal, height=200, unlabelled=True)
    assert flowed.shape[0] == 200 and flowed.shape[1] > one.shape[1]
    with pytest.raises(ValueError):
        legend_image(classes, pal[:3])
