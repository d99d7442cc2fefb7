"""Start the sd2-app web UI: flags -> ModelManager -> Service -> build_ui(service) -> launch.

On a Hugging Face ZeroGPU Space (the `spaces` package is importable) the default checkpoint is loaded at
start-up, as ZeroGPU expects, and results are not written to disk unless --outputs is given.

Public modes (a Space, a --host other than loopback, or --share) serve untrusted visitors: loading and
unloading checkpoints by hand is off there unless --allow-model-admin or --auth is given. Every mode caps the
cost of one job (--max-job-cost), the jobs one visitor may have queued (--max-jobs-per-session), the jobs one
network address may have queued (--max-jobs-per-address; the address comes from X-Forwarded-For only behind
trusted proxies, --trusted-proxy-hops, 1 by default on a Space), what one address may upload within the cache
age (--max-upload-mb-per-address) and how many sessions' state the server keeps (--max-sessions). It keeps
the queue's direct REST routes closed, deletes Gradio's cached uploads and the app's results after
--cache-minutes and keeps Gradio's run history off unless --run-history is given. README's "Hosting" section
lists them.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from importlib.util import find_spec
from typing import Any

import gradio as gr

from sd2_app.api import batching, gpu_time
from sd2_app.api.a1111_routes import A1111Api, build_router, parse_auth
from sd2_app.api.checks import Limits
from sd2_app.api.cost import DEFAULT_MAX_JOB_COST
from sd2_app.api.service import Service
from sd2_app.api.tasks import import_pipelines
from sd2_app.checkpoints.catalog import CheckpointSpec, apply_overrides, parse_assignments, tiny_registry
from sd2_app.compute_flags import add_compute_arguments
from sd2_app.serve.config import load_config
from sd2_app.ui import build_ui
from sd2_app.ui.hosting import DEFAULT_MAX_JOBS_PER_ADDRESS, DEFAULT_MAX_SESSIONS, Hosting
from sd2_app.ui.lifecycle import AppBlocks
from sd2_app.ui.upload_budget import DEFAULT_UPLOAD_MB_PER_ADDRESS
from sd2_app.ui.mcp_tools import add_mcp_tools


def _env_number(name: str, default: float | None, kind: type = int) -> float | None:
    value = os.environ.get(name)
    return default if value in (None, "") else kind(value)


def on_spaces() -> bool:
    return find_spec("spaces") is not None and bool(os.environ.get("SPACE_ID"))


def is_public(args: argparse.Namespace) -> bool:
    """Spaces, --share, or listening beyond loopback: every visitor is untrusted."""
    return on_spaces() or args.share or args.host not in ("127.0.0.1", "localhost", "::1")


# With --serve this process runs no job, so a batcher here would never batch: the replicas do (their setting).
SERVE_BATCH_USERS = ("--batch-users batches the jobs this process runs; with --serve they run on the replicas: "
                     "set batch_users = true in the deployment's settings (--serve-config, deploy/serve.toml)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    spaces = on_spaces()
    p = argparse.ArgumentParser(description="Stable Diffusion 2 web app")
    _server_arguments(p, spaces)
    _visitor_arguments(p, spaces)
    _extension_arguments(p, spaces)
    args = p.parse_args(argv)
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes USER:PASSWORD")
    if min(args.max_jobs_per_address, args.trusted_proxy_hops, args.max_upload_mb_per_address) < 0:
        p.error("--max-jobs-per-address, --max-upload-mb-per-address and --trusted-proxy-hops take 0 or more")
    if args.max_sessions < 1:
        p.error("--max-sessions takes 1 or more")
    if args.serve and args.batch_users:
        p.error(SERVE_BATCH_USERS)
    return args


def _server_arguments(p: argparse.ArgumentParser, spaces: bool) -> None:
    """Where the app listens and how it runs the models."""
    # Spaces (and Docker images) say where to listen through GRADIO_SERVER_NAME; an explicit server_name would
    # override it, so the app would listen on loopback only and the Space would never come up.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 serves the network; default $GRADIO_SERVER_NAME or loopback)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--tiny", action="store_true", help="tiny random-weight checkpoints (no download; noise images)")
    p.add_argument("--preload", nargs="*", default=["sd21-base"] if spaces else [], metavar="KEY",
                   help="checkpoints to load at start-up")
    add_compute_arguments(p, speed_note="; on ZeroGPU, default means the per-call switches (docs/DESIGN.md)")


def _visitor_arguments(p: argparse.ArgumentParser, spaces: bool) -> None:
    """What visitors' jobs may cost, where their results go, and who may manage the models."""
    p.add_argument("--outputs", default=None if spaces else "outputs", help="folder for results and metadata")
    p.add_argument("--no-save", action="store_true", help="do not write results to disk")
    p.add_argument("--queue-size", type=int, default=16, help="jobs that may wait in the queue")
    p.add_argument("--max-jobs-per-session", type=int, default=_env_number("SD2APP_MAX_JOBS_PER_SESSION", 2),
                   help="GPU jobs one visitor may have queued or running (default 2, $SD2APP_MAX_JOBS_PER_SESSION)")
    p.add_argument("--max-jobs-per-address", type=int,
                   default=_env_number("SD2APP_MAX_JOBS_PER_ADDRESS", DEFAULT_MAX_JOBS_PER_ADDRESS),
                   help="GPU jobs one network address (an IPv6 /64) may have queued or running, whatever its "
                        "cookies; 0 = no limit (default %(default)s, $SD2APP_MAX_JOBS_PER_ADDRESS)")
    p.add_argument("--max-upload-mb-per-address", type=int, metavar="MB",
                   default=_env_number("SD2APP_MAX_UPLOAD_MB_PER_ADDRESS", DEFAULT_UPLOAD_MB_PER_ADDRESS),
                   help="MB one network address may upload within one --cache-minutes, 0 = no limit (default "
                        "%(default)s, $SD2APP_MAX_UPLOAD_MB_PER_ADDRESS)")
    p.add_argument("--max-sessions", type=int, default=_env_number("SD2APP_MAX_SESSIONS", DEFAULT_MAX_SESSIONS),
                   help="browser/API sessions whose state the server keeps, the least recently used dropped first "
                        "(default %(default)s, $SD2APP_MAX_SESSIONS)")
    p.add_argument("--trusted-proxy-hops", type=int, metavar="N",
                   default=_env_number("SD2APP_TRUSTED_PROXY_HOPS", 1 if os.environ.get("SPACE_ID") else 0),
                   help="trusted reverse proxies in front of the app, each appending to X-Forwarded-For: a client's "
                        "address is the entry the outermost one appended (default: 1 on a Space, else 0 = ignore "
                        "the header; $SD2APP_TRUSTED_PROXY_HOPS)")
    p.add_argument("--max-job-cost", type=int, default=_env_number("SD2APP_MAX_JOB_COST", DEFAULT_MAX_JOB_COST),
                   help="largest job in UNet evaluations x latent pixels, 0 = no cap (default %(default)s: one "
                        "768x768 image at 150 two-call steps, or an x4 upscale of 256x256 at 50 steps; "
                        "$SD2APP_MAX_JOB_COST)")
    p.add_argument("--keep-outputs-days", type=float,
                   default=_env_number("SD2APP_KEEP_OUTPUTS_DAYS", 1.0 if spaces else None, float),
                   help="delete saved results older than this (default: keep them; 1 day on Spaces)")
    p.add_argument("--cache-minutes", type=float, default=_env_number("SD2APP_CACHE_MINUTES", 60.0, float),
                   help="delete Gradio's cached uploads and results older than this (default 60)")
    p.add_argument("--allow-model-admin", action="store_true",
                   default=os.environ.get("SD2APP_ALLOW_MODEL_ADMIN") == "1",
                   help="let visitors load and unload checkpoints in public modes (always allowed on loopback)")
    p.add_argument("--auth", default=os.environ.get("SD2APP_AUTH"), metavar="USER:PASSWORD",
                   help="require a Gradio login (then visitors may load and unload checkpoints; $SD2APP_AUTH)")
    p.add_argument("--run-history", action="store_true",
                   help="turn on Gradio's run history page (off: it could use the host's HF token)")
    p.add_argument("--max-side", type=int, default=1024, help="largest width/height a user may ask for")


def _extension_arguments(p: argparse.ArgumentParser, spaces: bool) -> None:
    """Checkpoint sources, the extra front ends (A1111 API, MCP), the watermark, Ray Serve and embeddings."""
    p.add_argument("--repo", action="append", default=[], metavar="KEY=REPO[,REPO]", help="override a checkpoint's repos")
    p.add_argument("--revision", action="append", default=[], metavar="KEY=REV", help="pin a checkpoint's revision")
    p.add_argument("--api", action=argparse.BooleanOptionalAction, default=None,
                   help="the A1111-compatible REST API under /sdapi/v1 (default: on locally, off in public modes)")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER:PASS]",
                   help="HTTP basic auth for the A1111 API")
    p.add_argument("--mcp", action=argparse.BooleanOptionalAction, default=spaces,
                   help="serve MCP tools at /gradio_api/mcp (needs gradio[mcp]; default: on on Spaces)")
    p.add_argument("--batch-users", action=argparse.BooleanOptionalAction, default=False,
                   help="run queued requests that can share one UNet batch as one (same model, size, sampler, steps "
                        "and guidance): more images per second under load, each within rounding of its solo run")
    p.add_argument("--no-watermark", action="store_true",
                   help="do not embed the invisible SDV2 watermark in results (the AI-generated XMP marker stays)")
    p.add_argument("--serve", default=None, metavar="ADDRESS",
                   help="run jobs on the Ray Serve deployment of the Ray cluster at ADDRESS ('auto': this machine's) "
                        "instead of this process's GPU; see README 'Scaling out'")
    p.add_argument("--serve-config", default=None, metavar="TOML",
                   help="the deployment's settings (deploy/serve.toml) when --serve is given")
    p.add_argument("--embeddings-dir", default="embeddings",
                   help="folder of SD2 textual-inversion embeddings (.safetensors), read at start-up; a prompt uses "
                        "one by its file name (default ./embeddings)")


def api_enabled(args: argparse.Namespace) -> bool:
    return (not is_public(args)) if args.api is None else bool(args.api)


def mcp_available() -> bool:
    """gradio's MCP server needs the `mcp` package (`pip install "gradio[mcp]"`, requirements-mcp.txt)."""
    return find_spec("mcp") is not None


def build(args: argparse.Namespace) -> AppBlocks:
    if find_spec("spaces") is not None:
        import spaces  # noqa: F401  # ZeroGPU patches torch's CUDA calls: it must be imported before torch
    # Everything that loads torch is imported here, after `spaces`.
    import torch
    from PIL import Image

    from sd2_app.accel.per_call import options_for_host
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.manager import ModelManager

    registry = apply_overrides(repos=parse_assignments(args.repo), revisions=parse_assignments(args.revision))
    outputs = None if args.no_save else args.outputs
    limits = Limits(max_side=args.max_side, max_job_cost=args.max_job_cost or None)
    # PIL refuses to open images over twice this many pixels (uploads are decoded lazily, and validation
    # refuses anything over the limit from the header alone, so this only stops bombs PIL would decode).
    Image.MAX_IMAGE_PIXELS = limits.max_input_pixels
    if args.serve:
        service = _serve_service(args, registry, limits, outputs)
    else:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        manager = ModelManager(args.device, dtype, registry=registry, tiny=args.tiny, preload=args.preload or (),
                               accel=options_for_host(args.speed, zerogpu=gpu_time.on_zerogpu()))
        service = Service(manager, limits=limits, outputs_dir=outputs, watermark=not args.no_watermark,
                          embeddings=EmbeddingLibrary.scan(args.embeddings_dir),
                          keep_outputs_days=args.keep_outputs_days, save_in_background=True)
        _batch_users(args, service)
    hosting = Hosting(max_jobs_per_visitor=args.max_jobs_per_session, max_jobs_per_address=args.max_jobs_per_address,
                      max_upload_mb_per_address=args.max_upload_mb_per_address,
                      trusted_proxy_hops=args.trusted_proxy_hops,
                      model_admin=args.allow_model_admin or bool(args.auth) or not is_public(args))
    import_pipelines()  # in this thread, before any visitor's: lazily, two threads can deadlock on the imports
    demo = build_ui(service, hosting=hosting)
    if args.mcp and mcp_available():
        add_mcp_tools(demo, service)
    age = max(1, round(args.cache_minutes * 60))
    demo.delete_cache = (min(age, 600), age)  # every `frequency` seconds, files older than `age` seconds go
    # The direct REST routes would skip the queue (and its limits): API clients join the queue like the browser.
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1, api_open=False)
    if api_enabled(args):
        api = A1111Api(service, auth=parse_auth(args.api_auth), max_jobs=args.queue_size)
        demo.sd2_routes = build_router(api).routes  # type: ignore[attr-defined]  # read by launch_settings()
    return demo


def _batch_users(args: argparse.Namespace, service: Service) -> None:
    """--batch-users: batching across users (sd2_app/api/batching.py), before the UI reads the queue's limit.

    Not on ZeroGPU: there each job runs inside its own GPU call, so a batch's thread would have no GPU.
    """
    if args.batch_users and gpu_time.on_zerogpu():
        logging.getLogger(__name__).warning("--batch-users is ignored on ZeroGPU: each job has its own GPU call")
    elif args.batch_users:
        batching.enable(service)


def launch_settings(args: argparse.Namespace, demo: gr.Blocks | None = None) -> dict[str, Any]:
    """The keyword arguments of `demo.launch` (docs/RELIABILITY.md lists them, with the queue's settings)."""
    auth = tuple(args.auth.split(":", 1)) if args.auth and ":" in args.auth else None
    # The A1111 routes go first in FastAPI's route list, so nothing of Gradio's can shadow them; SSR stays off
    # (its Node front server would stand between clients and these routes).
    routes = list(getattr(demo, "sd2_routes", []))
    # No extra allowed paths; errors show our messages (gr.Error), never tracebacks; no /monitoring endpoint;
    # no run history (it may reach the Hub with the host's token). Every new session id a client sends makes
    # Gradio keep a copy of every component's config (gradio/state_holder.py, `SessionState`): --max-sessions
    # bounds how many it keeps.
    return dict(server_name=args.host, server_port=args.port, share=args.share, show_error=False, allowed_paths=[],
                max_file_size="25mb", enable_monitoring=False, run_history=args.run_history, auth=auth,
                ssr_mode=False, mcp_server=bool(args.mcp and mcp_available()), app_kwargs={"routes": routes},
                state_session_capacity=args.max_sessions)


def _serve_service(args: argparse.Namespace, registry: dict[str, CheckpointSpec], limits: Limits,
                   outputs: str | None) -> Service:
    """A Service whose jobs run on the Ray Serve deployment; saving, the watermark and history stay here, with
    the same settings as the local app."""
    # Ray is optional (requirements-serve.txt): imported only on this path; the others load torch (after `spaces`).
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.serve.backend import connect, remote_service

    if args.tiny:  # the front end reads the tiny repos' tokenizers for the token counter
        from sd2_app.manager import default_cache_dir
        from sd2_app.testing.tiny import ensure_tiny_repos

        registry = tiny_registry(ensure_tiny_repos(default_cache_dir() / "tiny"), registry)
    config = load_config(args.serve_config)
    return remote_service(connect(args.serve, config), registry, config, limits=limits, outputs_dir=outputs,
                          watermark=not args.no_watermark, embeddings=EmbeddingLibrary.scan(args.embeddings_dir),
                          keep_outputs_days=args.keep_outputs_days, save_in_background=True)


def configure_logging() -> None:
    """INFO lines for the server log, one per checkpoint load: transformers' per-file "Loading weights" progress
    bars are turned off (the manager logs each load)."""
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)  # --help and flag errors answer before transformers' logging is set up
    configure_logging()
    if args.mcp and not mcp_available():
        logging.getLogger("app").warning("--mcp needs the mcp package: pip install -r requirements-mcp.txt; MCP is off")
    demo = build(args)
    # A stop from outside (docker stop, a Space restart) ends the server like Ctrl+C does: `launch` returns.
    if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.launch(**launch_settings(args, demo))
    finally:
        # The app's end, in order: no new jobs, the running ones stopped, the results being written on disk
        # (sd2_app/ui/lifecycle.py, AppBlocks.close).
        demo.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
