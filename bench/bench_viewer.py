"""``ovs3d view`` on this CPU (issue 11): frame times of the live render, and a headless browser typing a query.

(a) Render time per frame of :func:`ovs3d.viewer.render_frame` for each mode, at the *still* size (the run's
    semantic resolution; the RGB resolution of reconstruction-only runs) and at the *interactive* size the
    viewer picks while the camera moves (``interactive_pixels`` from the running seconds-per-pixel estimate,
    exactly as :class:`~ovs3d.viewer.FrameScheduler` updates it, starting unmeasured). Cameras are novel views:
    midpoints between consecutive training cameras. Median over the frames (the interactive median leaves out
    the first two frames, drawn while the estimate settles).
(b) A headless Chromium (selenium + chromedriver) opens the viewer of the 3D-OVS run, optionally drags the
    camera, then types a query into the text box; reported: page load to first frame, typing to the first
    relevancy frame and to the still one, frames drawn while dragging, and how much the screenshot changed.

Nothing is written into the run folders: (a) only reads them, and (b) serves a copy of the run in a temporary
folder (the viewer bakes ``RUN/export`` into the copy when it has none). The script checks the runs' and scenes'
files (names, sizes, modification times) before and after and fails if anything changed.

Usage::

    python bench/bench_viewer.py            # (a) on the three runs below and (b)
    python bench/bench_viewer.py --no-browser --frames 5

Results are appended to ``bench/results/issue11-viewer.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "3dovs": ROOT / "bench/out/3dovs/seed0/3dovs/full",
    "lerf": ROOT / "bench/out/lerf/room-seed0/holdout/lerf",
    "rgb": ROOT / "bench/out/3dovs/seed0/3dovs/recon",
}
RESULTS = ROOT / "bench/results/issue11-viewer.jsonl"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,800",
)


# ---------------------------------------------------------------------------------------------------
# (a) frame times


def novel_cameras(scene, n: int) -> list[tuple[np.ndarray, float, float]]:
    """``n`` cameras of the input frame halfway between consecutive training cameras (fov, aspect of the first)."""
    from ovs3d.viewer import matrix_to_quat, quat_to_matrix, training_camera, viser_to_c2w

    views = scene.train_views(False)
    picks = np.linspace(0, len(views) - 2, n).round().astype(int)
    out = []
    for i in picks:
        a, fov, aspect = training_camera(scene, int(views[i]))
        b, _, _ = training_camera(scene, int(views[i + 1]))
        qa, qb = matrix_to_quat(a[:, :3]), matrix_to_quat(b[:, :3])
        q = qa + (qb if qa @ qb >= 0 else -qb)
        c2w = viser_to_c2w(q / np.linalg.norm(q), 0.5 * (a[:, 3] + b[:, 3]))
        assert np.allclose(quat_to_matrix(q) @ quat_to_matrix(q).T, np.eye(3), atol=1e-9)
        out.append((c2w, fov, aspect))
    return out


def bench_mode(state, options, cams, n_still: int, n_interactive: int) -> list[dict]:
    """Still and interactive frame times of one mode (see the module docstring)."""
    from ovs3d.viewer import frame_size, interactive_pixels, render_frame, update_seconds_per_pixel

    if options.mode == "relevancy" and options.query:
        state.embed(options.query)  # encoded once, outside the timing (as the viewer does)
    still = state.still_pixels
    rows = []
    times, size = [], None
    render_frame(state, *cams[0][:2], cams[0][2], frame_size(cams[0][2], 64)[0], options)  # warm-up
    for k in range(n_still):
        c2w, fov, aspect = cams[k % len(cams)]
        w, _ = frame_size(aspect, still)
        t0 = time.perf_counter()
        img = render_frame(state, c2w, fov, aspect, w, options)
        times.append(time.perf_counter() - t0)
        size = img.shape[1], img.shape[0]
    rows.append({"quality": "still", "width": size[0], "height": size[1], "frames": n_still, "times": times})
    spp, times, sizes = None, [], []
    for k in range(n_interactive):
        c2w, fov, aspect = cams[k % len(cams)]
        pixels = interactive_pixels(spp, still)
        w, _ = frame_size(aspect, pixels)
        t0 = time.perf_counter()
        img = render_frame(state, c2w, fov, aspect, w, options)
        t = time.perf_counter() - t0
        spp = update_seconds_per_pixel(spp, t, img.shape[0] * img.shape[1])
        times.append(t)
        sizes.append((img.shape[1], img.shape[0]))
    settled = times[2:] if len(times) > 3 else times
    w, h = sizes[-1]
    rows.append(
        {"quality": "interactive", "width": w, "height": h, "frames": len(settled), "times": settled, "sizes": sizes}
    )
    for r in rows:
        r["median_s"] = statistics.median(r["times"])
        r["pixels"] = r["width"] * r["height"]
    return rows


def mode_options(state) -> list[tuple[str, object]]:
    from ovs3d.viewer import FrameOptions

    query = state.classes[0] if state.classes else "an object"
    out = [(m, FrameOptions(m)) for m in state.modes if m != "relevancy"]
    if state.semantic:
        out.append((f"relevancy ({query!r})", FrameOptions("relevancy", query)))
        if state.scales is not None:
            s = len(state.scales) // 2
            out.append(
                (
                    f"relevancy ({query!r}, scale {s + 1} of {len(state.scales)})",
                    FrameOptions("relevancy", query, scale=s),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------------
# (b) the browser


def _screenshot(driver) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"), dtype=np.int16)


def _wait(pred, timeout: float, step: float = 0.05) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(step)
    return False


def browser_query_check(viewer, query: str, workdir: Path, drag: bool = True, timeout: float = 120.0) -> dict:
    """Open a running viewer in headless Chromium, (drag the camera,) type ``query`` in the text box.

    Returns:
        ``first_frame_s`` (page load to the first frame sent), ``drag_frames`` (frames sent while dragging
        and their sizes), ``query_frame_s`` (typing to the first relevancy frame of the text),
        ``query_still_s`` (to its still frame), ``screenshot_diff`` (mean absolute difference, 0-255, of the
        render area before and after the query), ``changed_fraction`` (pixels that changed by more than 16).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    records = viewer.scheduler.records
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={Path(workdir) / 'chromium-profile'}"):
        opts.add_argument(flag)
    out: dict = {"first_frame_s": None, "query_frame_s": None, "query_still_s": None}
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        t0 = time.monotonic()
        n0 = len(records)
        driver.get(viewer.url)
        if not _wait(lambda: len(records) > n0, timeout):
            return out
        out["first_frame_s"] = records[-1].at - t0

        def settled() -> bool:  # a still frame was sent and nothing since for 1 s
            return bool(records) and records[-1].quality == "still" and time.monotonic() - records[-1].at > 1.0

        _wait(settled, timeout)
        if drag:
            canvas = driver.find_element(By.TAG_NAME, "canvas")
            n1, t1 = len(records), time.monotonic()
            chain = ActionChains(driver).move_to_element(canvas).click_and_hold()
            for _ in range(30):
                chain = chain.move_by_offset(2, 0).pause(0.05)  # a slow orbit of about 60 pixels
            chain.release().perform()
            t2 = time.monotonic()
            _wait(settled, timeout)
            during = [r for r in list(records)[n1:] if r.at <= t2 + 0.05]
            out["drag_s"] = t2 - t1
            out["drag_frames"] = len(during)
            out["drag_sizes"] = sorted({(r.width, r.height) for r in during})
            out["drag_median_frame_s"] = statistics.median([r.seconds for r in during]) if during else None
            out["after_drag_still"] = records[-1].quality == "still"
        before = _screenshot(driver)
        box = driver.find_element(By.XPATH, "//label[normalize-space()='query']/ancestor::div[.//input][1]//input")
        n2, t3 = len(records), time.monotonic()
        box.send_keys(query, Keys.ENTER)

        def of_query(still: bool):
            return [
                r
                for r in list(records)[n2:]
                if r.mode == "relevancy" and r.query == query and (r.quality == "still" or not still)
            ]

        if _wait(lambda: of_query(False), timeout):
            out["query_frame_s"] = of_query(False)[0].at - t3
        if _wait(lambda: of_query(True), timeout):
            out["query_still_s"] = of_query(True)[0].at - t3
        time.sleep(1.5)  # let the browser draw it
        after = _screenshot(driver)
        h, w = before.shape[:2]
        area = (slice(int(0.3 * h), h), slice(0, int(0.65 * w)))  # the render, away from the panel and notices
        diff = np.abs(after[area] - before[area])
        out["screenshot_diff"] = float(diff.mean())
        out["changed_fraction"] = float((diff.max(-1) > 16).mean())
        out["screenshots"] = [str(Path(workdir) / "before.png"), str(Path(workdir) / "after.png")]
        from PIL import Image

        Image.fromarray(before.astype(np.uint8)).save(out["screenshots"][0])
        Image.fromarray(after.astype(np.uint8)).save(out["screenshots"][1])
        out["frames_sent"] = len(records)
    finally:
        driver.quit()
    return out


# ---------------------------------------------------------------------------------------------------


def snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """Every file under ``paths``: (size, mtime_ns) — to prove the bench wrote nothing there."""
    out = {}
    for p in paths:
        for f in sorted(Path(p).rglob("*")):
            if f.is_file():
                st = f.stat()
                out[str(f)] = (st.st_size, st.st_mtime_ns)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--frames", type=int, default=5, help="still frames per mode")
    ap.add_argument("--interactive-frames", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--query", default="a yellow lemon")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ovs3d.run import fit_config_from_run
    from ovs3d.utils.console import set_quiet
    from ovs3d.viewer import STILL_DELAY_S, load_state

    set_quiet(True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    common = {
        "issue": 11,
        "bench": "viewer",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": commit.strip(),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],  # other work on the machine inflates times
    }
    runs = {k: RUNS[k] for k in args.runs}
    read = [*runs.values(), *([] if args.no_browser else [RUNS["3dovs"]])]
    watched = sorted({*read, *(Path(fit_config_from_run(r).scene) for r in read)})
    before = snapshot(watched)
    lines = []
    table = [
        "| run | method | mode | still W×H | still s/frame | interactive W×H | interactive s/frame |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        state = load_state(run)
        cams = novel_cameras(state.scene, max(args.frames, args.interactive_frames))
        for label, opt in mode_options(state):
            rows = bench_mode(state, opt, cams, args.frames, args.interactive_frames)
            still, inter = rows
            table.append(
                f"| {name} | {state.method_name} | {label} | {still['width']}×{still['height']} | "
                f"{still['median_s']:.3f} | {inter['width']}×{inter['height']} | {inter['median_s']:.3f} |"
            )
            print(table[-1], flush=True)
            for r in rows:
                lines.append(
                    {
                        **common,
                        "part": "frame_time",
                        "run": str(run.relative_to(ROOT)),
                        "method": state.method_name,
                        "scene_kind": state.scene.kind,
                        "mode": label,
                        "still_downscale": state.still_downscale,
                        **{k: v for k, v in r.items() if k != "times"},
                        "times": [round(t, 4) for t in r["times"]],
                        "budget_s": 0.3,
                    }
                )
    browser = None
    if not args.no_browser:
        import ovs3d.viewer as viewer_mod

        src = RUNS["3dovs"]
        with tempfile.TemporaryDirectory(prefix="ovs3d-view-bench-") as tmp:
            run = Path(shutil.copytree(src, Path(tmp) / src.name, ignore=shutil.ignore_patterns("eval", "logs")))
            t0 = time.monotonic()
            points = viewer_mod._load_points(run)  # what serve() does: bakes the copy's RUN/export first
            bake = time.monotonic() - t0
            t0 = time.monotonic()
            viewer = viewer_mod.serve(run, port=0, block=False, points=points)
            startup = time.monotonic() - t0
            try:
                browser = browser_query_check(viewer, args.query, Path(tmp))
                browser["export_bake_s"] = bake
                browser["startup_s"] = startup
                browser["points"] = 0 if viewer.points is None else len(viewer.points.xyz)
                browser["still_delay_s"] = STILL_DELAY_S
                shots = browser.pop("screenshots", [])
                keep = ROOT / "bench/out/issue11-viewer"
                keep.mkdir(parents=True, exist_ok=True)
                for s in shots:
                    shutil.copy(s, keep / Path(s).name)
                browser["screenshots"] = [str((keep / Path(s).name).relative_to(ROOT)) for s in shots]
            finally:
                viewer.stop()
        lines.append(
            {**common, "part": "browser", "run": f"copy of {src.relative_to(ROOT)}", "query": args.query, **browser}
        )
    after = snapshot(watched)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        raise SystemExit(f"the bench changed files of the runs or scenes: {changed[:5]}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for line in lines:
            f.write(json.dumps(line, default=str) + "\n")
    print()
    print("\n".join(table))
    if browser is not None:
        print()
        print("| browser | value |\n|---|---|")
        for k, v in browser.items():
            print(f"| {k} | {v if not isinstance(v, float) else f'{v:.3f}'} |")
    print(f"\nload average at start / end: {common['loadavg_at_start']} / {[round(x, 2) for x in os.getloadavg()]}")
    print(f"\nruns and scenes unchanged ({len(before)} files checked); appended {len(lines)} lines to {RESULTS}")


if __name__ == "__main__":
    main()
