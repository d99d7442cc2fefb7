"""Cold start as a user sees it: `python app.py --preload KEY` in a fresh process, to the first image returned to
a client through the app's HTTP API (gradio_client), by phase. Download excluded: the weights are a local
folder (`--repo KEY=FOLDER`), read once beforehand so they sit in the page cache, and their hashes are in
the app cache (as after any earlier start). Triton's cache starts empty unless `--warm-triton-cache`.

    python -m bench.appstart --ckpt /tmp/sd2-bench --out OUT                 # sd21-base, 512, 25 steps
    python -m bench.appstart --tiny --size 64 --steps 2 --ckpt /tmp/ck --out OUT   # CPU check of the harness

The phases end at events seen from outside (the server answering, the client's calls returning) and at the
app's own log lines (the checkpoint loaded, the fused-module swap, the CUDA-graph captures). Writes
OUT/appstart.json and OUT/appstart.md; the second image's time shows the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# (phase name, text of the log line that ends it); phases whose line never comes are left out
LOG_PHASES = (("interpreter, imports (torch, transformers, gradio), CUDA set-up", "backends for"),
              ("checkpoint read to the device", "{key}: loaded from"))
REQUEST_PHASES = (("request: queue, validation, load check", "txt2img on"),
                  ("start-up kernel check + fused-module swaps", "fused ops: swapped"),
                  ("text encoder: warm-up + CUDA-graph capture", "captured a CUDA graph of CLIPTextModel"),
                  ("UNet: warm-up + CUDA-graph capture", "captured a CUDA graph of UNet"))


class ServerLines:
    """The app's output lines, each with the seconds since the process was started."""

    def __init__(self, process: subprocess.Popen[str], start: float) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(process, start), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str], start: float) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append((time.perf_counter() - start, line.rstrip()))

    def first(self, text: str, after: float = 0.0) -> float | None:
        return next((t for t, line in list(self.lines) if t >= after and text in line), None)


def prepare_checkpoints(folder: Path, app_cache: Path) -> None:
    """Every file of `folder` read once (page cache) and its sha256 in the app's hash cache."""
    from sd2_app.manager.identity import HashCache

    cache = HashCache(app_cache / "hashes.json")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            cache.sha256(path)


def app_cache_and_folder(args: argparse.Namespace, work: Path) -> tuple[Path, Path | None]:
    """The started app's cache folder under `work` (the tiny repos linked in, or the hashes of the full-size
    folder) and the full-size folder its `--repo` names (None with `args.tiny`)."""
    app_cache = work / "app-cache"
    app_cache.mkdir(parents=True)
    if args.tiny:
        from sd2_app.testing.tiny import ensure_tiny_repos

        ensure_tiny_repos(args.ckpt / "tiny")
        (app_cache / "tiny").symlink_to(args.ckpt / "tiny", target_is_directory=True)  # what --tiny reads
        return app_cache, None
    from bench.write_checkpoints import ensure_checkpoints

    folder = ensure_checkpoints(args.ckpt / "full", ("sd2-base",))["sd2-base"]  # sd21-base's architecture
    prepare_checkpoints(folder, app_cache)
    return app_cache, folder


def wait_for_server(url: str, process: subprocess.Popen[str], timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with code {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the app did not answer at {url} within {timeout:.0f} s")


def stop(process: subprocess.Popen[str], timeout: float) -> None:
    """End the app: SIGTERM (app.py closes its server), then SIGKILL if it is still there after `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_command(key: str, port: int, folder: Path | None, *flags: str) -> list[str]:
    """`python app.py` preloading `key` on 127.0.0.1:`port` with `flags`: the tiny checkpoints on CPU when
    `folder` is None, else `key` served from `folder` (app_cache_and_folder's)."""
    command = [sys.executable, "-u", str(ROOT / "app.py"), "--preload", key, "--port", str(port),
               "--host", "127.0.0.1", *flags]
    if folder is None:
        return command + ["--tiny", "--device", "cpu"]
    return command + ["--repo", f"{key}={folder}"]


def app_env(app_cache: Path, work: Path) -> dict[str, str]:
    """The started app's environment: its cache, no Hub, no analytics, Gradio's files under `work`."""
    return {**os.environ, "SD2APP_CACHE": str(app_cache), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(work / "gradio")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the app, wait for it, ask for two images; the phases of the first, in seconds."""
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="appstart-"))
    app_cache, folder = app_cache_and_folder(args, work)
    env = app_env(app_cache, work)
    if not args.warm_triton_cache:
        env["TRITON_CACHE_DIR"] = str(work / "triton")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    process = subprocess.Popen(app_command(args.key, port, folder, "--no-save"), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = ServerLines(process, start)
    events: dict[str, float] = {}
    row: dict[str, Any] = {"label": args.label, "key": args.key, "size": args.size, "steps": args.steps}
    try:
        wait_for_server(url, process, args.timeout)
        events["server answering"] = time.perf_counter() - start
        client = Client(url, verbose=False)
        events["client connected"] = time.perf_counter() - start
        request = {"checkpoint": args.key, "prompt": "a photograph of an astronaut riding a horse", "width": args.size,
                   "height": args.size, "steps": args.steps, "seed": 1234, "api_name": "/txt2img"}
        sent = time.perf_counter() - start
        _, gallery, _ = client.predict(**request)
        events["first image returned"] = time.perf_counter() - start
        second = time.perf_counter()
        client.predict(**request)
        row["second_image_s"] = time.perf_counter() - second
        row["images_returned"] = len(gallery)
        row.update(_phases(lines, events, sent, args.key))
    finally:
        stop(process, 30)
    row["log_tail"] = [line for _, line in lines.lines[-5:]]
    return row


def _phases(lines: ServerLines, events: dict[str, float], sent: float, key: str) -> dict[str, Any]:
    """Consecutive phases from the process start to the first image, each named by what ends it."""
    marks: list[tuple[str, float]] = []
    for name, text in LOG_PHASES:
        at = lines.first(text.format(key=key))
        if at is not None:
            marks.append((name, at))
    marks.append(("UI build, server start", events["server answering"]))
    marks.append(("client connected (API info)", events["client connected"]))
    for name, text in REQUEST_PHASES:
        at = lines.first(text, after=sent)
        if at is not None:
            marks.append((name, at))
    marks.append(("sampling, decode, PNG, transfer to the client", events["first image returned"]))
    marks.sort(key=lambda mark: mark[1])
    phases, previous = {}, 0.0
    for name, at in marks:
        phases[name] = at - previous
        previous = at
    return {"first_image_s": events["first image returned"], "phases_s": phases}


def markdown(row: dict[str, Any]) -> str:
    lines = [f"## {row['label']}: `app.py --preload {row['key']}` -> first {row['size']}x{row['size']} image "
             f"({row['steps']} steps) returned to a client", "",
             f"first image **{row['first_image_s']:.2f} s** after the process started; second image "
             f"{row['second_image_s']:.2f} s", "", "| phase | s |", "| --- | --- |"]
    lines += [f"| {name} | {seconds:.2f} |" for name, seconds in row["phases_s"].items()]
    return "\n".join(lines) + "\n\n"


def served_app_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of every benchmark that starts `app.py` on the written checkpoints and times requests."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ckpt", type=Path, required=True, help="root written by bench.write_checkpoints (full/)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--key", default="sd21-base")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the server")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = served_app_parser(__doc__.splitlines()[0])
    p.add_argument("--label", default="cold")
    p.add_argument("--warm-triton-cache", action="store_true", help="keep Triton's cache (default: an empty one)")
    p.add_argument("--tiny", action="store_true", help="tiny checkpoints on CPU (a check of the harness)")
    args = p.parse_args(argv)
    row = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "appstart.json", "a") as f:
        f.write(json.dumps(row) + "\n")
    with open(args.out / "appstart.md", "a") as f:
        f.write(markdown(row))
    print(markdown(row))
    return row


if __name__ == "__main__":
    main()
