"""The HTML run report (``ovs3d.report.build_report``, SPEC §3): one self-contained page.

Most tests build a fake run folder by hand (config, metrics, overlay and relevancy images, logs), so they need
no scene and no training; one end-to-end test fits a tiny RGB-only run and lets the report evaluate it first.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovs3d.errors import OVS3DError
from ovs3d.report import build_report, dedupe_steps, numeric_series, read_jsonl
from ovs3d.run import slugify

LABELS = ["<b>mug</b>", "wooden table"]
MIOU, ACCURACY, MACC, PSNR = 0.61234, 0.93217, 0.77771, 28.5


def _png(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """Write a small random RGB PNG to ``path`` and return its bytes."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _config(run: Path, method: str) -> dict:
    fit = {
        "scene": str(run.parent / "no-such-scene"),
        "out": str(run),
        "method": method,
        "holdout": False,
        "kind": "auto",
        "device": "cpu",
        "clip": "sim",
        "dino": "sim",
        "masks": "auto",
        "recon": {"n_iters": 20, "rgb_downscale": 2.0},
        "features": {"semantic_downscale": 4.0},
        "semantic": {"n_iters": 30} if method != "rgb" else None,
    }
    return {"version": 1, "fit": fit, "scene_kind": "forward", "classes": LABELS}


@pytest.fixture
def semantic_run(tmp_path: Path) -> Path:
    """A hand-made semantic run: config, metrics, one annotated view's overlay and relevancy maps, logs."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_config(run, "3dovs")))
    metrics = {
        "protocol": "3dovs",
        "split": "3dovs",
        "miou": MIOU,
        "accuracy": ACCURACY,
        "macc": MACC,
        "per_view": {"00": {"miou": 0.55, "accuracy": 0.9, "iou": {LABELS[0]: 0.3125, LABELS[1]: 0.7875}}},
        "classes": LABELS,
        "class_iou": {LABELS[0]: 0.3125, LABELS[1]: 0.7875},
        "class_recall": {LABELS[0]: 0.4375, LABELS[1]: 0.9375},
        "n_views": 1,
        "psnr": PSNR,
        "psnr_views": "training views",
        "psnr_per_view": {"00": PSNR},
        "method": "3dovs",
        "resolution": [40, 30],
        "semantic": {"use_fda": True},
        "relevancy": {
            "d_relevancy": 0.1234,
            "recall": 0.8642,
            "localization": 0.9753,
            "per_label": {name: {"d_relevancy": 0.2, "recall": 1.0, "localization": 1.0} for name in LABELS},
        },
    }
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    _png(run / "eval" / "overlays" / "00.png", 0, (120, 30))
    for i, name in enumerate(LABELS):
        _png(run / "eval" / "relevancy" / "00" / f"{slugify(name)}.png", i + 1)
    records = [
        {"step": 10, "loss": 1.0, "feat": -0.5, "seconds": 1.0},
        {"step": 20, "loss": 0.9, "feat": -0.6, "seconds": 2.0},
        {"step": 20, "loss": 0.8, "feat": -0.7, "seconds": 2.5},  # the same step again after a resume
        {"step": 30, "loss": 0.7, "feat": -0.8, "rgb": 0.01, "seconds": 3.75},
    ]
    _jsonl(run / "logs" / "semantic.jsonl", records)
    command = {
        "time": "2025-01-01T12:00:00",
        "argv": ["ovs3d", "fit", "--scene", "s", "--out", "run"],
        "cwd": "/home/<user>",
        "command": "ovs3d fit --scene s --out run --method 3dovs",
    }
    _jsonl(run / "logs" / "commands.jsonl", [command])
    return run


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([\w-]+)">(.*?)</section>', page, flags=re.S))


def _img_payloads(fragment: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment)]


def test_report_is_one_self_contained_page(semantic_run: Path):
    path = build_report(semantic_run)
    assert path == semantic_run / "report" / "index.html"
    page = path.read_text()
    srcs = re.findall(r'\bsrc="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert not re.search(r'(href|src)="(https?:|//|file:)', page)
    assert not [p for p in path.parent.iterdir() if p.name != "index.html"]  # no temporary file left


def test_overlays_and_relevancy_maps_are_inlined(semantic_run: Path):
    page = build_report(semantic_run).read_text()
    views = _sections(page)["views"]
    payloads = _img_payloads(views)
    assert len(payloads) == 1 + len(LABELS)
    assert payloads[0] == (semantic_run / "eval" / "overlays" / "00.png").read_bytes()
    for name, data in zip(LABELS, payloads[1:]):
        assert data == (semantic_run / "eval" / "relevancy" / "00" / f"{slugify(name)}.png").read_bytes()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", views)
    assert captions == ["&lt;b&gt;mug&lt;/b&gt;", "wooden table"]


def test_metrics_appear(semantic_run: Path):
    metrics = _sections(build_report(semantic_run).read_text())["metrics"]
    for number in (f"{MIOU:.4f}", f"{ACCURACY:.4f}", f"{MACC:.4f}", f"{PSNR:.2f}", "0.3125", "0.7875", "0.4375"):
        assert number in metrics
    for number in ("0.1234", "0.8642", "0.9753"):  # the relevancy block
        assert number in metrics
    assert "3dovs" in metrics


def test_curves_figure_and_timings(semantic_run: Path):
    sections = _sections(build_report(semantic_run).read_text())
    curves = _img_payloads(sections["curves"])
    assert len(curves) == 1
    with Image.open(io.BytesIO(curves[0])) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 100
    assert "semantic" in sections["timings"]
    assert "3.8 s" in sections["timings"]  # the last "seconds" of the log (3.75)


def test_labels_and_commands_are_escaped(semantic_run: Path):
    page = build_report(semantic_run).read_text()
    assert "<b>mug</b>" not in page
    assert "&lt;b&gt;mug&lt;/b&gt;" in page
    assert "<user>" not in page and "/home/&lt;user&gt;" in page
    commands = _sections(page)["commands"]
    assert "ovs3d fit --scene s --out run --method 3dovs" in commands
    assert "<details>" in commands and "no-such-scene" in commands  # the stored config


def test_missing_commands_log_says_not_recorded(semantic_run: Path, tmp_path: Path):
    (semantic_run / "logs" / "commands.jsonl").unlink()
    out = tmp_path / "elsewhere"
    path = build_report(semantic_run, out=out)
    assert path == out / "index.html"
    assert not (semantic_run / "report").exists()
    assert "(not recorded)" in _sections(path.read_text())["commands"]


def test_rgb_only_run(tmp_path: Path):
    run = tmp_path / "rgb"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_config(run, "rgb")))
    metrics = {"protocol": "3dovs", "psnr": 24.125, "per_view": {"00": {"psnr": 24.125}}, "n_views": 1, "method": "rgb"}
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    picture = _png(run / "eval" / "rgb" / "00.png", 3, (80, 30))
    _jsonl(run / "logs" / "reconstruction.jsonl", [{"step": 20, "loss": 0.01, "psnr": 20.0, "seconds": 5.0}])
    page = build_report(run).read_text()
    sections = _sections(page)
    assert "24.12" in sections["metrics"]
    assert "Reconstruction-only" in sections["metrics"]
    assert "mIoU" not in page and "relevancy-grid" not in page
    assert _img_payloads(sections["views"]) == [picture]
    assert len(_img_payloads(sections["curves"])) == 1


def test_not_a_run_is_a_user_error(tmp_path: Path):
    with pytest.raises(OVS3DError, match="not an ovs3d run folder"):
        build_report(tmp_path)


def test_missing_metrics_runs_the_evaluation_first(semantic_run: Path, monkeypatch):
    import ovs3d.run

    metrics_path = semantic_run / "eval" / "metrics.json"
    saved = metrics_path.read_text()
    metrics_path.unlink()
    calls = []

    def fake_evaluate(run: Path) -> dict:
        calls.append(Path(run))
        metrics_path.write_text(saved)
        return json.loads(saved)

    monkeypatch.setattr(ovs3d.run, "evaluate", fake_evaluate)
    page = build_report(semantic_run).read_text()
    assert calls == [semantic_run]
    assert f"{MIOU:.4f}" in page


def test_log_helpers(tmp_path: Path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 2, "loss": 1}\n{"step": 1, "loss": 3}\n\n{"step": 2, "loss": 0.5, "x": [1]}\n{"step": 3,')
    records = dedupe_steps(read_jsonl(path))  # the cut last line is skipped
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3), (2, 0.5)]
    series = numeric_series([{"step": 1, "seconds": 1.0, "loss": 2.0, "flag": True, "res": [1, 2]}])
    assert list(series) == ["loss", "seconds"]


def test_settings_say_each_kinds_reconstruction_iterations():
    from ovs3d.report import method_settings

    def iters(recon: dict, kind: str | None) -> str:
        settings = dict(method_settings({"method": "rgb", "recon": recon}, {}, scene_kind=kind))
        return settings["reconstruction iterations"]

    recon = {"n_iters": 400, "bounded_iters_factor": 0.75, "unbounded_iters_factor": 1.5}
    assert iters(recon, "forward") == "400"
    assert iters(recon, "bounded") == "400 × 0.75 (bounded scene)"
    assert iters(recon, "unbounded") == "400 × 1.5 (unbounded scene)"
    assert iters({"n_iters": 300, "unbounded_iters_factor": 2.0}, "bounded") == "300"  # stored before the factor


def test_end_to_end_rgb_run_evaluated_first(tiny_scene_dir: Path, tmp_path: Path):
    """A real 2-iteration reconstruction-only fit; the report evaluates it (no eval/ yet) and inlines the result."""
    from ovs3d.methods.reconstruction import ReconstructionConfig
    from ovs3d.run import FitConfig, fit

    recon = ReconstructionConfig(
        n_iters=2, batch_size=64, init_voxels=4096, final_voxels=8000, upsample_iters=(1,), occupancy_iters=(1,)
    )
    run = fit(FitConfig(scene=tiny_scene_dir, out=tmp_path / "run", method="rgb", device="cpu", recon=recon))
    assert not (run / "eval" / "metrics.json").exists()
    page = build_report(run).read_text()
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    sections = _sections(page)
    assert f"{metrics['psnr']:.2f}" in sections["metrics"]
    pictures = sorted((run / "eval" / "rgb").glob("*.png"))
    assert pictures and _img_payloads(sections["views"]) == [p.read_bytes() for p in pictures]
    assert len(_img_payloads(sections["curves"])) == 1  # logs/reconstruction.jsonl
    scene = sections["scene"]
    assert "64 × 48" in scene and "forward-facing" in scene
    assert all(s.startswith("data:") for s in re.findall(r'\bsrc="([^"]*)"', page))
