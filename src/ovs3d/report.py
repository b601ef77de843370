"""The run report (``ovs3d report --run RUN``, SPEC §3): one self-contained HTML page about a run.

:func:`build_report` writes ``RUN/report/index.html``: a single file that opens anywhere (every image is a
base64 ``data:`` URI, the CSS is inline, nothing is fetched) and shows

- the scene: labels with their colours, number of views, annotated views, kind, image size; the method and
  its key settings;
- the metrics of ``RUN/eval/metrics.json`` (scene scores, per view, per label, LERF relevancy metrics);
- per annotated view, the evaluation overlay (RGB | GT | prediction | legend) and the relevancy map of every
  label; for a reconstruction-only run (``--method rgb``) the rendered | real pictures instead;
- training curves of every ``RUN/logs/*.jsonl`` (matplotlib, Agg, rendered in memory);
- timings (training time of each stage) and the exact commands (``RUN/logs/commands.jsonl``), with the
  stored configuration.

A run without ``eval/metrics.json`` is evaluated first (:func:`ovs3d.run.evaluate`). The page only reads the
run folder (and, when it is still there, the scene folder for its view count and image size); every string
read from a file is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovs3d.methods.reconstruction import ITERS_FACTOR_FIELDS
from ovs3d.run import COMMANDS_LOG
from ovs3d.utils.files import atomic_write_text

__all__ = [
    "COMMANDS_LOG",
    "ReportSection",
    "StageLog",
    "build_report",
    "curves_png",
    "data_uri",
    "dedupe_steps",
    "numeric_series",
    "read_commands",
    "read_jsonl",
    "read_stage_logs",
    "render_page",
]

logger = logging.getLogger(__name__)


_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_SEGMENTATION_KEYS = ("miou", "accuracy", "macc")
_NOT_RECORDED = "(not recorded)"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:0 1.2em 3em;color:#222;line-height:1.45}
h1{margin-top:1em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
img{max-width:100%;height:auto}
table{border-collapse:collapse;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
.scroll{overflow-x:auto}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #000;margin-right:.4em;vertical-align:-.1em}
.legend{list-style:none;padding:0;columns:3 14em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.8em}
.grid figure{margin:0}.grid img{width:100%;image-rendering:pixelated}
figcaption{font-size:.9em;text-align:center;word-break:break-word}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.note{color:#555;font-style:italic}nav ol{columns:2 16em}
"""


@dataclass(frozen=True)
class ReportSection:
    """One part of the page: its anchor, heading and HTML body (already escaped)."""

    anchor: str
    title: str
    body: str


@dataclass(frozen=True)
class StageLog:
    """The training log of one stage: its records (one per step, the last written wins) and where it is from."""

    name: str
    """The stage, from the file name (``reconstruction``, ``semantic``...)."""
    path: Path
    records: list[dict[str, Any]]
    note: str = ""
    """Why the log lives elsewhere (e.g. a reconstruction copied from another run), or empty."""


# ---------------------------------------------------------------------------------------------------
# small pure helpers


def esc(value: Any) -> str:
    """``value`` as text, HTML-escaped (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """A ``data:`` URI holding ``data`` in base64."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def file_uri(path: Path) -> str:
    """The ``data:`` URI of an image file (PNG or JPEG by its extension)."""
    return data_uri(Path(path).read_bytes(), _MIME.get(Path(path).suffix.lower(), "application/octet-stream"))


def img_tag(uri: str, alt: str, css_class: str = "") -> str:
    """An ``<img>`` element for a ``data:`` URI; ``alt`` is escaped."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<img src="{uri}" alt="{esc(alt)}"{cls}>'


def fmt(value: Any, digits: int = 4) -> str:
    """A value for a table cell: floats with ``digits`` decimals, ``None``/NaN as ``n/a``; escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return esc(", ".join(str(v) for v in value))
    return esc(value)


def fmt_setting(value: Any) -> str:
    """A configuration value: like :func:`fmt`, but floats as short as they are (``2``, ``0.001``)."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return esc(", ".join(fmt_setting(v) for v in value))
    return fmt(value)


def fmt_size(value: Any) -> str:
    """A ``[width, height]`` pair as ``W × H`` (anything else as :func:`fmt_setting`)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{fmt_setting(value[0])} × {fmt_setting(value[1])}"
    return fmt_setting(value)


def fmt_seconds(seconds: float | None) -> str:
    """``seconds`` as ``12.3 s`` or ``4 min 05 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """A table; ``header`` is escaped, cells are HTML already. Columns from ``numeric_from`` align right."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def key_value_table(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column table; keys are escaped, values are HTML already."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<div class="scroll"><table><tbody>{rows}</tbody></table></div>'


def _hex(color: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color[:3])


def label_colors(classes: Sequence[str]) -> dict[str, str]:
    """Label -> ``#rrggbb``, the colours of the evaluation overlays (:func:`ovs3d.eval.visualize.label_palette`)."""
    from ovs3d.eval.visualize import label_palette

    return {name: _hex(c) for name, c in zip(classes, label_palette(len(classes)))}


def swatch(color: str | None) -> str:
    """A small coloured square (empty when ``color`` is ``None``)."""
    return f'<span class="swatch" style="background:{esc(color)}"></span>' if color else ""


def legend_html(classes: Sequence[str]) -> str:
    """The label colour legend as a list of swatches and escaped names."""
    if not classes:
        return '<p class="note">The scene has no labels.</p>'
    colors = label_colors(classes)
    items = "".join(f"<li>{swatch(colors[c])}{esc(c)}</li>" for c in classes)
    return f'<ul class="legend">{items}</ul>'


# ---------------------------------------------------------------------------------------------------
# reading the run


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; blank, broken (e.g. cut by a crash) and non-object lines skipped."""
    out: list[dict[str, Any]] = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not JSON; skipped", path, i + 1)
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def dedupe_steps(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with a numeric ``step``, one per step (the last one written: a resumed run logs a step again),
    sorted by step."""
    by_step: dict[float, dict[str, Any]] = {}
    for rec in records:
        step = rec.get("step")
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            by_step[step] = rec
    return [by_step[s] for s in sorted(by_step)]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def numeric_series(records: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Every numeric key but ``step`` -> (steps, values) over the records that have it, in first-seen key order
    (``seconds`` last)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        for key, value in rec.items():
            if key != "step" and _is_number(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(float(rec["step"]))
                values.append(float(value))
    if "seconds" in series:
        series["seconds"] = series.pop("seconds")
    return series


def read_stage_logs(run: Path, fit: dict[str, Any]) -> list[StageLog]:
    """The training logs of a run (``RUN/logs/*.jsonl`` with ``step`` records), reconstruction first.

    A run made with ``--recon-from`` has no reconstruction log of its own: the source run's is used when it is
    still on disk, marked with a note.
    """
    logs_dir = Path(run) / "logs"
    found: list[StageLog] = []
    paths = sorted(logs_dir.glob("*.jsonl")) if logs_dir.is_dir() else []
    for path in paths:
        if path.name == COMMANDS_LOG:
            continue
        records = dedupe_steps(read_jsonl(path))
        if records:
            found.append(StageLog(path.stem, path, records))
    source = fit.get("recon_from")
    if source and not any(s.name == "reconstruction" for s in found):
        path = Path(source) / "logs" / "reconstruction.jsonl"
        records = dedupe_steps(read_jsonl(path)) if path.is_file() else []
        if records:
            found.append(StageLog("reconstruction", path, records, f"copied with the reconstruction from {source}"))
    order = {"reconstruction": 0, "semantic": 1}
    return sorted(found, key=lambda s: (order.get(s.name, 2), s.name))


def read_commands(path: Path) -> list[dict[str, Any]]:
    """The recorded commands of a run (``RUN/logs/commands.jsonl``); empty when the file is missing."""
    return read_jsonl(path) if Path(path).is_file() else []


def _ensure_metrics(run: Path) -> dict[str, Any]:
    """``RUN/eval/metrics.json``, running the evaluation first when it is missing."""
    from ovs3d.errors import OVS3DError

    path = Path(run) / "eval" / "metrics.json"
    if not path.is_file():
        import ovs3d.run as run_mod

        logger.info("%s has no eval/metrics.json: evaluating the run first", run)
        run_mod.evaluate(Path(run))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OVS3DError(f"{path} cannot be read ({type(e).__name__}); run `ovs3d eval --run {run}` again") from e


def _scene_facts(scene: Path | None) -> dict[str, Any]:
    """What the scene folder says, when it is still there: view count, image size, annotated views."""
    from ovs3d.io.loader import IMAGE_SUFFIXES

    facts: dict[str, Any] = {}
    if scene is None or not (scene / "images").is_dir():
        return facts
    images = sorted(p for p in (scene / "images").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    facts["n_views"] = len(images)
    if images:
        try:
            from PIL import Image

            with Image.open(images[0]) as im:
                facts["size"] = im.size
        except Exception:  # noqa: BLE001 - a broken image only loses this line of the page
            pass
    seg = scene / "segmentations"
    if seg.is_dir():
        facts["annotated"] = sorted(int(d.name) for d in seg.iterdir() if d.is_dir() and d.name.isdigit())
    facts["synthetic"] = (scene / "sim").is_dir()
    return facts


# ---------------------------------------------------------------------------------------------------
# sections


def _is_segmentation(metrics: dict[str, Any]) -> bool:
    return all(k in metrics for k in _SEGMENTATION_KEYS)


def _classes(config: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    return [str(c) for c in (metrics.get("classes") or config.get("classes") or [])]


def _view_keys(metrics: dict[str, Any], folder: Path) -> list[str]:
    """The evaluated views: keys of ``per_view`` and image stems in ``folder``, in numeric order."""
    keys = {str(k) for k in (metrics.get("per_view") or {})}
    if folder.is_dir():
        keys |= {p.stem for p in folder.iterdir() if p.suffix.lower() in _MIME}
    return sorted(keys, key=lambda k: (int(k) if k.isdigit() else math.inf, k))


def scene_section(run: Path, config: dict[str, Any], metrics: dict[str, Any]) -> ReportSection:
    """The scene (labels, views, kind, size) and the method with its key settings."""
    from ovs3d.methods.registry import METHODS, RECONSTRUCTION_ONLY

    fit = config.get("fit") or {}
    scene = Path(fit["scene"]) if fit.get("scene") else None
    facts = _scene_facts(scene)
    classes = _classes(config, metrics)
    kind = {"forward": "forward-facing", "bounded": "bounded (inside-out / 360°)"}.get(
        str(config.get("scene_kind")), str(config.get("scene_kind", "unknown"))
    )
    if fit.get("kind") not in (None, "auto"):
        kind += " (set with --kind)"
    annotated = facts.get("annotated")
    if annotated is None and _is_segmentation(metrics):
        annotated = [int(k) for k in metrics.get("per_view", {}) if str(k).isdigit()]
    size = facts.get("size")
    holdout = bool(fit.get("holdout"))
    pairs = [
        ("run folder", esc(Path(run).resolve())),
        ("scene folder", esc(scene) + ("" if facts or scene is None else " <em>(not found on this machine)</em>")),
        ("kind", esc(kind)),
        ("views", fmt(facts.get("n_views", _NOT_RECORDED))),
        ("image size", fmt_size(list(size)) if size else "n/a"),
        (
            "annotated views",
            _NOT_RECORDED
            if annotated is None
            else f"{len(annotated)} ({esc(', '.join(f'{v:02d}' for v in annotated))})",
        ),
        (
            "protocol",
            "novel-view (--holdout): annotated views take no part in training"
            if holdout
            else "3D-OVS: every view trains, the annotated views' masks are held out",
        ),
        ("labels", str(len(classes))),
    ]
    if metrics.get("resolution"):
        pairs.append(("segmentation scored at", fmt_size(metrics["resolution"])))
    if metrics.get("rgb_resolution"):
        pairs.append(("PSNR measured at", fmt_size(metrics["rgb_resolution"])))
    method = str(fit.get("method", metrics.get("method", "unknown")))
    description = "reconstruction only (RGB radiance field)" if method == RECONSTRUCTION_ONLY else ""
    description = description or (METHODS[method][2] if method in METHODS else "")
    body = (
        key_value_table(pairs)
        + "<h3>Labels</h3>"
        + legend_html(classes)
        + f"<h3>Method: {esc(method)}</h3>"
        + (f"<p>{esc(description)}</p>" if description else "")
        + key_value_table(
            method_settings(fit, metrics, synthetic=facts.get("synthetic"), scene_kind=config.get("scene_kind"))
        )
    )
    return ReportSection("scene", "Scene and method", body)


def _backend(spec: Any, synthetic: bool | None) -> str:
    """A backend flag; ``auto`` says what it stands for when the scene folder tells."""
    if spec != "auto" or synthetic is None:
        return fmt(spec)
    return "auto (simulated: synthetic scene)" if synthetic else "auto (real model: the scene has no sim/)"


def method_settings(
    fit: dict[str, Any], metrics: dict[str, Any], synthetic: bool | None = None, scene_kind: str | None = None
) -> list[tuple[str, str]]:
    """The key settings of a run: backends, schedule, resolutions and the method's summary settings.

    Args:
        fit: the stored ``FitConfig`` (``config.json`` "fit").
        metrics: ``eval/metrics.json`` (its ``semantic`` entry holds the method's summary settings).
        synthetic: whether the scene is synthetic (has ``sim/``), to say what ``auto`` backends are; None:
            unknown (scene folder gone).
        scene_kind: the run's scene kind (bounded and unbounded scenes scale the reconstruction iterations).
    """
    recon = fit.get("recon") or {}
    features = fit.get("features") or {}
    semantic = fit.get("semantic") or {}
    iters = fmt_setting(recon.get("n_iters"))
    factor = recon.get(ITERS_FACTOR_FIELDS.get(str(scene_kind), ""))
    if isinstance(factor, (int, float)) and factor != 1:
        iters += f" × {fmt_setting(factor)} ({scene_kind} scene)"
    pairs = [
        ("reconstruction iterations", iters),
        ("RGB downscale", fmt_setting(recon.get("rgb_downscale"))),
    ]
    if fit.get("recon_from"):
        pairs.append(("reconstruction copied from", esc(fit["recon_from"])))
    if fit.get("method", "rgb") != "rgb":
        pairs += [
            ("CLIP", _backend(fit.get("clip"), synthetic)),
            ("DINO", _backend(fit.get("dino"), synthetic)),
            ("masks", _backend(fit.get("masks"), synthetic)),
            ("semantic downscale", fmt_setting(features.get("semantic_downscale"))),
            ("semantic iterations", fmt_setting(semantic.get("n_iters"))),
        ]
        summary = metrics.get("semantic") if isinstance(metrics.get("semantic"), dict) else {}
        pairs += [(str(k), fmt_setting(v)) for k, v in summary.items() if k != "n_iters"]
    pairs.append(("device", fmt_setting(fit.get("device"))))
    return pairs


def metrics_section(metrics: dict[str, Any], classes: Sequence[str]) -> ReportSection:
    """Scene scores, per-view scores, per-label IoU and the LERF relevancy metrics (or PSNR only)."""
    seg = _is_segmentation(metrics)
    scores = [("protocol", fmt(metrics.get("protocol")))]
    if metrics.get("split"):
        scores.append(("split", fmt(metrics["split"])))
    if seg:
        scores += [
            ("mIoU", fmt(metrics["miou"])),
            ("accuracy", fmt(metrics["accuracy"])),
            ("mAcc", fmt(metrics["macc"])),
        ]
        if "pixel_accuracy" in metrics:
            scores.append(("pixel accuracy", fmt(metrics["pixel_accuracy"])))
    if "psnr" in metrics:
        where = ", ".join(str(metrics[k]) for k in ("psnr_views", "psnr_field") if metrics.get(k))
        scores.append(
            ("PSNR (dB)", fmt(metrics["psnr"], 2) + (f" <span class='note'>({esc(where)})</span>" if where else ""))
        )
    if "n_views" in metrics:
        scores.append(("views scored", fmt(metrics["n_views"])))
    body = key_value_table(scores)
    if seg:
        body += "<h3>Per view</h3>" + _per_view_table(metrics)
        body += "<h3>Per label</h3>" + _per_label_table(metrics, classes)
        if isinstance(metrics.get("relevancy"), dict):
            body += "<h3>Relevancy (LERF metrics)</h3>" + _relevancy_tables(metrics["relevancy"], classes)
    else:
        body += (
            '<p class="note">Reconstruction-only run: no labels are segmented, so there are no segmentation '
            "metrics, overlays or relevancy maps; the field is scored by PSNR.</p>"
        )
    psnr_views = metrics.get("psnr_per_view") or (
        {k: v.get("psnr") for k, v in (metrics.get("per_view") or {}).items() if isinstance(v, dict)} if not seg else {}
    )
    if psnr_views:
        rows = [[esc(k), fmt(v, 2)] for k, v in psnr_views.items()]
        body += "<h3>PSNR per view</h3>" + html_table(["view", "PSNR (dB)"], rows)
    return ReportSection("metrics", "Metrics", body)


def _per_view_table(metrics: dict[str, Any]) -> str:
    rows = []
    for key, m in (metrics.get("per_view") or {}).items():
        m = m if isinstance(m, dict) else {}
        rows.append([esc(key), fmt(m.get("miou")), fmt(m.get("accuracy"))])
    return html_table(["view", "mIoU", "accuracy"], rows)


def _per_label_table(metrics: dict[str, Any], classes: Sequence[str]) -> str:
    per_view = metrics.get("per_view") or {}
    views = list(per_view)
    colors = label_colors(classes)
    class_iou = metrics.get("class_iou") or {}
    class_recall = metrics.get("class_recall") or {}
    rows = []
    for name in classes:
        ious = [fmt(((per_view[v] or {}).get("iou") or {}).get(name)) for v in views]
        rows.append(
            [swatch(colors.get(name)) + esc(name), fmt(class_iou.get(name)), fmt(class_recall.get(name)), *ious]
        )
    header = ["label", "IoU (all views)", "recall", *[f"IoU view {v}" for v in views]]
    return html_table(header, rows)


def _relevancy_tables(rel: dict[str, Any], classes: Sequence[str]) -> str:
    summary = [
        (k, fmt(rel.get(k))) for k in ("d_relevancy", "recall", "localization", "n_pairs", "recall_reading") if k in rel
    ]
    body = key_value_table(summary)
    per_label = rel.get("per_label") or {}
    if per_label:
        colors = label_colors(classes)
        names = [c for c in classes if c in per_label] + [c for c in per_label if c not in classes]
        rows = [
            [
                swatch(colors.get(n)) + esc(n),
                *(fmt((per_label[n] or {}).get(k)) for k in ("d_relevancy", "recall", "localization", "n_views")),
            ]
            for n in names
        ]
        body += html_table(["label", "D_relevancy", "recall", "localization", "views"], rows)
    return body


def views_section(run: Path, metrics: dict[str, Any], classes: Sequence[str]) -> ReportSection:
    """Per annotated view: the evaluation overlay and a grid of relevancy maps (or, for an RGB-only run, the
    rendered | real pictures)."""
    eval_dir = Path(run) / "eval"
    if not _is_segmentation(metrics):
        keys = _view_keys({}, eval_dir / "rgb")
        parts = [
            '<p class="note">Reconstruction-only run: rendered | real image of each scored view (no segmentation).</p>'
        ]
        for key in keys:
            path = _image_file(eval_dir / "rgb", key)
            if path is not None:
                parts.append(f"<h3>View {esc(key)}</h3>" + img_tag(file_uri(path), f"view {key}: rendered | real"))
        if not keys:
            parts.append('<p class="note">No pictures in eval/rgb.</p>')
        return ReportSection("views", "Rendered views", "".join(parts))
    from ovs3d.run import slugify

    parts = []
    for key in _view_keys(metrics, eval_dir / "overlays"):
        m = (metrics.get("per_view") or {}).get(key) or {}
        parts.append(
            f'<h3 id="view-{esc(key)}">View {esc(key)} <small>mIoU {fmt(m.get("miou"))}, '
            f"accuracy {fmt(m.get('accuracy'))}</small></h3>"
        )
        overlay = _image_file(eval_dir / "overlays", key)
        if overlay is not None:
            parts.append(img_tag(file_uri(overlay), f"view {key}: RGB | ground truth | prediction | legend", "overlay"))
        else:
            parts.append('<p class="note">No overlay image.</p>')
        parts.append(relevancy_grid(eval_dir / "relevancy" / key, classes, slugify))
    return ReportSection("views", "Annotated views: overlays and relevancy", "".join(parts))


def _image_file(folder: Path, stem: str) -> Path | None:
    for suffix in _MIME:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def relevancy_grid(folder: Path, classes: Sequence[str], slug: Callable[[str], str]) -> str:
    """A grid of the relevancy heat maps of one view, captioned with the labels.

    Args:
        folder: ``RUN/eval/relevancy/NN``, one ``<slug>.png`` per label.
        classes: the labels, in grid order.
        slug: label -> file stem (:func:`ovs3d.run.slugify`); files that match no label come last, captioned
            with their file name.
    """
    if not folder.is_dir():
        return '<p class="note">No relevancy maps for this view.</p>'
    figures, used = [], set()
    for name in classes:
        path = _image_file(folder, slug(name))
        if path is not None and path not in used:
            used.add(path)
            figures.append((name, path))
    rest = sorted(p for p in folder.iterdir() if p.suffix.lower() in _MIME and p not in used)
    figures += [(p.stem, p) for p in rest]
    if not figures:
        return '<p class="note">No relevancy maps for this view.</p>'
    cells = "".join(
        f"<figure>{img_tag(file_uri(p), f'relevancy of {name}', 'relevancy')}"
        f"<figcaption>{esc(name)}</figcaption></figure>"
        for name, p in figures
    )
    return (
        '<h4>Relevancy per label <small class="note">(turbo colour map over the render: 0 blue, 1 red, '
        f'one absolute scale)</small></h4><div class="grid relevancy-grid">{cells}</div>'
    )


def curves_png(log: StageLog, dpi: int = 90) -> bytes | None:
    """A PNG of one stage's curves: a subplot per numeric key against the step; ``None`` if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = numeric_series(log.records)
    if not series:
        return None
    n_cols = min(3, len(series))
    n_rows = math.ceil(len(series) / n_cols)
    fig = Figure(figsize=(4.2 * n_cols, 2.7 * n_rows), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (key, (steps, values)) in enumerate(series.items()):
        ax = fig.add_subplot(n_rows, n_cols, i + 1)
        ax.plot(steps, values, "-", marker="." if len(steps) < 60 else None, lw=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(log.name)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def curves_section(logs: Sequence[StageLog]) -> ReportSection:
    """One figure of training curves per stage log."""
    if not logs:
        return ReportSection("curves", "Training curves", '<p class="note">No training logs (RUN/logs/*.jsonl).</p>')
    parts = []
    for log in logs:
        png = curves_png(log)
        note = f' <span class="note">({esc(log.note)})</span>' if log.note else ""
        parts.append(f"<h3>{esc(log.name)}{note}</h3>")
        parts.append(
            img_tag(data_uri(png), f"training curves of {log.name}", "curves") if png else "<p>No numbers.</p>"
        )
    return ReportSection("curves", "Training curves", "".join(parts))


def stage_seconds(log: StageLog) -> float | None:
    """The training time of a stage: the last ``seconds`` its log records (cumulative over resumes)."""
    values = [r["seconds"] for r in log.records if _is_number(r.get("seconds"))]
    return float(values[-1]) if values else None


def timings_section(logs: Sequence[StageLog], metrics: dict[str, Any]) -> ReportSection:
    """Training time per stage (from the logs) and whatever else the run records."""
    rows, total = [], 0.0
    for log in logs:
        seconds = stage_seconds(log)
        last = log.records[-1].get("step")
        per_step = f"{1000 * seconds / last:.1f}" if seconds is not None and _is_number(last) and last else "n/a"
        total += seconds or 0.0
        rows.append(
            [
                esc(log.name) + (f" <span class='note'>({esc(log.note)})</span>" if log.note else ""),
                fmt(last),
                fmt_seconds(seconds),
                per_step,
            ]
        )
    body = html_table(["stage", "steps", "train time", "ms / step"], rows) if rows else ""
    if rows:
        body += f"<p>Total training time: {fmt_seconds(total)} (feature extraction and evaluation not included).</p>"
    else:
        body += '<p class="note">No stage logs record times.</p>'
    if _is_number(metrics.get("seconds")):
        body += f"<p>Evaluation: {fmt_seconds(float(metrics['seconds']))}.</p>"
    return ReportSection("timings", "Timings", body)


def commands_section(commands: Sequence[dict[str, Any]], config: dict[str, Any]) -> ReportSection:
    """The recorded commands (time, working folder, shell-quoted command) and the stored configuration."""
    if commands:
        rows = [
            [
                fmt(c.get("time", "")),
                fmt(c.get("cwd", "")),
                f"<code>{esc(c.get('command') or ' '.join(map(str, c.get('argv', []))))}</code>",
            ]
            for c in commands
        ]
        body = html_table(["time", "working folder", "command"], rows, numeric_from=99)
    else:
        body = f"<p>{_NOT_RECORDED}</p>"
    stored = json.dumps(config.get("fit", {}), indent=2, sort_keys=False, default=str)
    body += f"<details><summary>Stored configuration (config.json, “fit”)</summary><pre>{esc(stored)}</pre></details>"
    return ReportSection("commands", "Commands and configuration", body)


def render_page(title: str, sections: Sequence[ReportSection], subtitle: str = "") -> str:
    """The whole HTML document: inline CSS, a table of contents, the sections."""
    toc = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    sub = f'<p class="note">{esc(subtitle)}</p>' if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{esc(title)}</h1>{sub}<nav><h2>Contents</h2><ol>{toc}</ol></nav>{body}</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------------
# public entry point


def build_report(run: Path, out: Path | None = None) -> Path:
    """Write the HTML report of a run (SPEC §3): ``OUT/index.html``, one self-contained page.

    Args:
        run: run folder (``ovs3d fit --out``).
        out: output folder (default ``RUN/report``).

    Returns:
        The path of ``index.html``.

    Raises:
        OVS3DError: ``run`` is not a run folder, or it has no evaluation and cannot be evaluated (unfinished
            run, missing scene...).
    """
    from ovs3d.run import read_run_config
    from ovs3d.version import __version__

    run = Path(run)
    config = read_run_config(run)
    metrics = _ensure_metrics(run)
    fit = config.get("fit") or {}
    classes = _classes(config, metrics)
    logs = read_stage_logs(run, fit)
    sections = [
        scene_section(run, config, metrics),
        metrics_section(metrics, classes),
        views_section(run, metrics, classes),
        curves_section(logs),
        timings_section(logs, metrics),
        commands_section(read_commands(run / "logs" / COMMANDS_LOG), config),
    ]
    method = fit.get("method", metrics.get("method", "?"))
    scene_name = Path(fit["scene"]).name if fit.get("scene") else "?"
    title = f"ovs3d report: {run.resolve().name} ({method} on {scene_name})"
    subtitle = f"{run.resolve()} — generated {time.strftime('%Y-%m-%d %H:%M:%S')} by ovs3d {__version__}"
    page = render_page(title, sections, subtitle)
    path = Path(out or run / "report") / "index.html"
    atomic_write_text(path, page)
    logger.info("wrote the report of %s to %s (%.0f KB)", run, path, len(page.encode("utf-8")) / 1024)
    return path
