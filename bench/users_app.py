"""bench/users.py's load through the running app: `python app.py [--batch-users]` in a fresh process, each user
a gradio_client client (its own visitor cookie) sending its requests back to back; latency is the client's
round trip, downloads included. The full-size run serves bench.write_checkpoints' sd2-base folder under the
app's `sd21-base` key (the same architecture, bench/request.py), the tiny run the tiny repos.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.appstart import (ROOT, ServerLines, app_cache_and_folder, app_command, app_env, free_port, stop,
                           wait_for_server)
from sd2_app.api.requests import Txt2ImgRequest
from bench.load import Call, load

APP_KEY = "sd21-base"


def _flags(args: argparse.Namespace, batching: bool) -> list[str]:
    # Every user connects from loopback, where the per-address job limit is off by default; it is turned off
    # explicitly all the same (an $SD2APP_MAX_JOBS_PER_ADDRESS would refuse users beyond it). Each user is still
    # its own visitor (its own cookie, its own per-visitor limit).
    flags = ["--no-save", "--no-watermark", "--queue-size", str(4 * args.users), "--max-jobs-per-address", "0"]
    return flags + (["--batch-users"] if batching else [])


RequestFor = Callable[[int, int], Txt2ImgRequest]  # (user, index) -> that user's request (bench/users.py)


def _calls(args: argparse.Namespace, url: str, downloads: Path, request_for: RequestFor) -> Call:
    """One gradio_client client per user; the call sends that user's request and opens its first image."""
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=str(downloads / str(user)), httpx_kwargs={"timeout": 600})
               for user in range(args.users)]

    def call(user: int, index: int) -> np.ndarray:
        request = request_for(user, index)
        sampling = request.sampling
        _, gallery, _ = clients[user].predict(
            prompt=request.prompt, negative_prompt=request.negative_prompt, checkpoint=APP_KEY,
            width=request.width, height=request.height, steps=sampling.steps, sampler=sampling.sampler,
            cfg_scale=sampling.cfg_scale, seed=sampling.seed, batch_size=1, api_name="/txt2img")
        return np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))

    return call


def app_mode(args: argparse.Namespace, request_for: RequestFor, batching: bool) -> dict[str, Any]:
    """The app started without or with `--batch-users`: one untimed round, then the timed load."""
    work = Path(tempfile.mkdtemp(prefix="users-bench-"))
    app_cache, folder = app_cache_and_folder(args, work)
    env = app_env(app_cache, work)
    if args.tiny:
        env["OMP_NUM_THREADS"] = "1"
    port = free_port()
    process = subprocess.Popen(app_command(APP_KEY, port, folder, *_flags(args, batching)), cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = ServerLines(process, 0.0)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/", process, args.timeout)
        call = _calls(args, f"http://127.0.0.1:{port}/", work / "downloads", request_for)
        load(call, args.users, 1)  # warm: load, captures
        row = load(call, args.users, args.requests)
        row["batches_logged"] = sum("as one batch" in line for _, line in lines.lines)
        return row
    finally:
        stop(process, 60)
