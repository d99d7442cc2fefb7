"""The whole request (issue 24 section 3): txt2img through the running app, split by phase, and PNG encoding.

Starts `python app.py` in a fresh process (saving on, into a temporary folder), sends one warm-up and then
`--n` txt2img requests through gradio_client one after another, and reads each request's phases from the
app's log line (`sd2_app.api.timing.log_split`: queue, validate, gate, load, run, preview, mark, encode,
save, history, display, deliver). "Overhead" is the app's time outside the pipeline ("run") as a share of
the pipeline; "client round trip" is the time gradio_client took, download of the images included, so the
round trip minus the app's time is Gradio's and the transfer's part. With `--browser N` (Playwright and
/usr/bin/chromium), N clicks on Generate in the page follow, each timed from the click to the new image
decoded in the page. Then PIL's PNG encoding of one image at 512, 768 and 2048 at PIL's default level (what
Gradio uses for a PIL image) and the app's fast level, and the handing of ten 512 images to a Gallery (History)
as PIL images and as the encoded files.

    python -m bench.request --tiny --size 64 --steps 2 --n 5 --ckpt /tmp/ck --out OUT      # CPU, tiny models
    python -m bench.request --ckpt /tmp/sd2-bench --out OUT    # GPU: sd2-base's architecture, random weights

Writes OUT/request.json and OUT/request.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.appstart import (ROOT, ServerLines, app_cache_and_folder, app_command, app_env, free_port,
                           served_app_parser, stop, wait_for_server)

OVERHEAD_TARGET = 0.15  # app overhead at most 15 % of the pipeline time at 512 on the GPU (issue 24)
PNG_SIZES = (512, 768, 2048)
PNG_DEFAULT_LEVEL = 6  # PIL's default zlib level: what Gradio's encode of a PIL image uses
LINE_PREFIX = "request timings"  # sd2_app.api.timing.LINE_PREFIX (read as text: the app is another process)
CHROMIUM = Path("/usr/bin/chromium")
# Timed in the page: the click on Generate (a capturing listener), then the first animation frame that finds
# the new gallery image decoded (Generate clears the gallery first; each run has a new random seed).
ON_CLICK = ("() => { window.sd2Clicked = null; document.querySelector('#txt2img-run').addEventListener("
            "'click', () => { window.sd2Clicked = performance.now(); }, {once: true, capture: true}); }")
NEW_IMAGE = ("(old) => { const img = document.querySelector('#txt2img-gallery img');"
             " const done = img !== null && img.src !== old && img.complete && img.naturalWidth > 0;"
             " if (done) { window.sd2Shown = performance.now(); } return done; }")


def photo_like(size: int, seed: int = 0) -> Any:
    """A test image whose PNG compresses like a photograph: a smooth asset enlarged, with sensor-like noise
    (a tiny model's noise output would compress like nothing a user sees)."""
    import numpy as np
    from PIL import Image

    base = Image.open(ROOT / "assets" / "landscape.png").convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0.0, 3.0, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def png_costs(sizes: tuple[int, ...] = PNG_SIZES, reps: int = 3) -> list[dict[str, Any]]:
    """Median seconds and bytes of one PNG encode per size, at PIL's default level and the app's fast one."""
    from sd2_app.api.outputs import FAST_PNG_LEVEL

    rows = []
    for size in sizes:
        image = photo_like(size)
        for label, level in (("PIL default (Gradio)", PNG_DEFAULT_LEVEL), ("app (fast)", FAST_PNG_LEVEL)):
            times, nbytes = [], 0
            for _ in range(reps if size < 2048 else 1):
                buffer = io.BytesIO()
                started = time.perf_counter()
                image.save(buffer, format="PNG", compress_level=level)
                times.append(time.perf_counter() - started)
                nbytes = buffer.tell()
            rows.append({"size": size, "setting": label, "level": level, "seconds": statistics.median(times),
                         "bytes": nbytes})
    return rows


def gallery_costs(count: int = 10, size: int = 512, reps: int = 3) -> dict[str, Any]:
    """Median seconds to hand `count` kept images to a Gallery output (History's refresh): as PIL images, which
    Gradio encodes at PIL's default level (how History, masks, depth maps and MCP results went before), and as
    the PNG files the Service encoded (`sd2_app.ui.shown_files.cached_file`: one hash each, no encode)."""
    import gradio as gr

    from sd2_app.pipelines.metadata import encode_png
    from sd2_app.ui.shown_files import cached_file

    images = [photo_like(size, seed) for seed in range(count)]
    encoded = [encode_png(image) for image in images]
    previous = os.environ.get("GRADIO_TEMP_DIR")
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as folder:
        os.environ["GRADIO_TEMP_DIR"] = folder  # Gradio's cache (both ways write there), removed after
        try:
            return {"count": count, "size": size, "seconds": _hand_over_times(gr.Gallery(format="png"), images,
                                                                                encoded, cached_file, reps)}
        finally:
            if previous is None:
                del os.environ["GRADIO_TEMP_DIR"]
            else:
                os.environ["GRADIO_TEMP_DIR"] = previous


def _hand_over_times(gallery: Any, images: list[Any], encoded: list[bytes], cached_file: Any,
                     reps: int) -> dict[str, float]:
    ways = {"PIL images (Gradio encodes)": lambda: gallery.postprocess([(image, "") for image in images]),
            "encoded files": lambda: gallery.postprocess(
                [(cached_file(data, f"{index}.png"), "") for index, data in enumerate(encoded)])}
    seconds = {}
    for label, hand_over in ways.items():
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            hand_over()
            times.append(time.perf_counter() - started)
        seconds[label] = statistics.median(times)
    return seconds


def _split_lines(lines: ServerLines) -> list[dict[str, float]]:
    """The phases of every request the app has logged so far."""
    found = []
    for _, line in list(lines.lines):
        if LINE_PREFIX in line and "{" in line:
            found.append(json.loads(line[line.index("{"):]))
    return found


def browser_clicks(url: str, args: argparse.Namespace) -> list[float]:
    """Seconds from a click on Generate (the txt2img tab's default checkpoint) to the new image decoded in the
    page, for `args.browser` clicks; [] without Playwright or Chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return []
    if not CHROMIUM.exists():
        return []
    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(args.timeout * 1000)
        page.goto(url)
        page.wait_for_function("window.sd2AppReady === true")
        page.locator("#txt2img-prompt textarea").fill("a photograph of an astronaut riding a horse")
        for name, value in (("width", args.size), ("height", args.size), ("steps", args.steps)):
            box = page.locator(f"#txt2img-{name} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        for _ in range(args.browser):
            image = page.locator("#txt2img-gallery img")
            old = image.first.get_attribute("src") if image.count() else None
            page.evaluate(ON_CLICK)
            page.locator("#txt2img-run").click()
            page.wait_for_function(NEW_IMAGE, arg=old, polling="raf")
            times.append(page.evaluate("(window.sd2Shown - window.sd2Clicked) / 1000"))
            page.locator("#txt2img-run:not([disabled])").wait_for()
        browser.close()
    return times


def run_requests(args: argparse.Namespace) -> dict[str, Any]:
    """Start the app, send the warm-up and `args.n` requests; each request's phases and round trip."""
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="request-bench-"))
    app_cache, folder = app_cache_and_folder(args, work)
    env = app_env(app_cache, work)
    port = free_port()
    outputs = work / "outputs"
    command = app_command(args.key, port, folder, "--outputs", str(outputs), "--max-jobs-per-session", "1")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = ServerLines(process, time.perf_counter())
    round_trips: list[float] = []
    try:
        wait_for_server(f"http://127.0.0.1:{port}/", process, args.timeout)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(work / "downloads"))
        request = {"checkpoint": args.key, "prompt": "a photograph of an astronaut riding a horse",
                   "width": args.size, "height": args.size, "steps": args.steps, "api_name": "/txt2img"}
        for index in range(args.n + 1):  # the first is the warm-up
            started = time.perf_counter()
            client.predict(seed=1000 + index, **request)
            round_trips.append(time.perf_counter() - started)
        clicks = browser_clicks(f"http://127.0.0.1:{port}/", args)
        deadline = time.monotonic() + 10
        while len(_split_lines(lines)) < args.n + 1 + len(clicks) and time.monotonic() < deadline:
            time.sleep(0.05)  # the last line follows the answer
    finally:
        stop(process, 60)
    splits = _split_lines(lines)
    saved = sorted(p.name for p in outputs.rglob("*.png"))
    return {"splits": splits[1:args.n + 1], "round_trips_s": round_trips[1:], "warmup_s": round_trips[0],
            "browser_splits": splits[args.n + 1:], "browser_clicks_s": clicks, "saved_files": saved,
            "temporary_files_left": sorted(p.name for p in outputs.rglob("*.tmp")),
            "log_tail": [line for _, line in lines.lines[-5:]]}


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    """Median seconds of every phase, the app's time, the overhead share and the client's round trip."""
    splits = record["splits"]
    phases: dict[str, float] = {}
    for name in dict.fromkeys(name for split in splits for name in split):
        phases[name] = statistics.median(split.get(name, 0.0) for split in splits)
    in_app = [_in_app(split) for split in splits]
    shares = [(total - split["run"]) / split["run"] for split, total in zip(splits, in_app) if split.get("run")]
    round_trip = _median(record["round_trips_s"])
    app_s = _median(in_app)
    browser_app = [_in_app(split) for split in record.get("browser_splits", [])]
    return {"phases_s": phases, "in_app_s": app_s, "overhead_share": _median(shares),
            "round_trip_s": round_trip,
            "outside_app_s": round_trip - app_s if round_trip is not None and app_s is not None else None,
            "browser_click_to_image_s": _median(record.get("browser_clicks_s", [])),
            "browser_in_app_s": _median(browser_app)}


def _in_app(split: dict[str, float]) -> float:
    return sum(seconds for phase, seconds in split.items() if phase != "preview")  # previews are part of run


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def markdown(row: dict[str, Any]) -> str:
    summary = row["summary"]
    share = summary["overhead_share"]
    lines = [f"## The whole request: txt2img {row['size']}x{row['size']}, {row['steps']} steps, {row['key']}"
             f"{' (tiny, CPU)' if row['tiny'] else ''}, {len(row['splits'])} requests after a warm-up", ""]
    if share is not None:
        verdict = "" if row["tiny"] else (" — target ≤ 15 %: " + ("met" if share <= OVERHEAD_TARGET else "NOT met"))
        lines += [f"app overhead **{100 * share:.1f} %** of the pipeline time (median){verdict}; client round trip "
                  f"{summary['round_trip_s']:.3f} s, of which {summary['in_app_s']:.3f} s in the app and "
                  f"{summary['outside_app_s']:.3f} s Gradio and transfer", ""]
    if summary.get("browser_click_to_image_s") is not None:
        lines += [f"browser (Chromium) click on Generate to the new image decoded: "
                  f"{summary['browser_click_to_image_s']:.3f} s (median of {len(row['browser_clicks_s'])}), of which "
                  f"{summary['browser_in_app_s']:.3f} s in the app", ""]
    lines += ["| phase | median s |", "| --- | --- |"]
    lines += [f"| {name} | {seconds:.4f} |" for name, seconds in summary["phases_s"].items()]
    lines += ["", f"saved files: {len(row['saved_files'])}, temporary files left: {len(row['temporary_files_left'])}",
              "", "| PNG encode | setting | ms | KiB |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['size']}x{p['size']} | {p['setting']} (level {p['level']}) | {1000 * p['seconds']:.1f} | "
              f"{p['bytes'] / 1024:.0f} |" for p in row["png"]]
    gallery = row.get("gallery")
    if gallery:
        side = gallery["size"]
        lines += ["", f"| {gallery['count']} images of {side}x{side} to a Gallery (History) | ms |", "| --- | --- |"]
        lines += [f"| {label} | {1000 * seconds:.1f} |" for label, seconds in gallery["seconds"].items()]
    return "\n".join(lines) + "\n\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = served_app_parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10, help="requests timed after the warm-up")
    p.add_argument("--png-sizes", default=",".join(map(str, PNG_SIZES)), help="sizes of the PNG encode table")
    p.add_argument("--gallery-count", type=int, default=10, help="images handed to a Gallery (0: skip)")
    p.add_argument("--browser", type=int, default=0, help="clicks on Generate in Chromium after the client's requests")
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints on CPU")
    args = p.parse_args(argv)
    row: dict[str, Any] = {"key": args.key, "size": args.size, "steps": args.steps, "tiny": args.tiny}
    row.update(run_requests(args))
    row["summary"] = summarize(row)
    row["png"] = png_costs(tuple(int(s) for s in args.png_sizes.split(",") if s))
    if args.gallery_count:
        row["gallery"] = gallery_costs(args.gallery_count)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "request.json").write_text(json.dumps(row, indent=1))
    with open(args.out / "request.md", "a") as f:
        f.write(markdown(row))
    print(markdown(row))
    return row


if __name__ == "__main__":
    main()
