"""What app.py does once its flags are parsed (`sd2_app.app_flags`): build the web app (ModelManager ->
Service -> `build_ui`), launch it with app.py's settings, and close it in order when the server stops.

Kept apart from the flags so that `python app.py --help` and flag errors answer without importing Gradio,
transformers or torch; torch itself is imported only for the local models (`local_service`), after `spaces`
where a ZeroGPU Space has it: the Ray Serve front end (--serve) imports it only with --tiny, to write the tiny
checkpoints whose tokenizers it reads.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any

import gradio as gr
from PIL import Image

from sd2_app.api import gpu_time
from sd2_app.api.a1111_auth import parse_auth
from sd2_app.api.a1111_routes import A1111Api, build_router
from sd2_app.api.checks import Limits
from sd2_app.api.keeper import HISTORY_SIZE
from sd2_app.api.service import Service
from sd2_app.api.engine_settings import EngineSettings, ready, registry_of, service_options
from sd2_app.app_flags import api_enabled, is_public
from sd2_app.byte_limits import MAX_IMAGE_FILE_BYTES
from sd2_app.checkpoints.catalog import CheckpointSpec
from sd2_app.serve.config import ServeConfig, load_config
from sd2_app.ui import build_ui
from sd2_app.ui.hosting import Hosting, gradio_max_size
from sd2_app.ui.lifecycle import AppBlocks
from sd2_app.ui.mcp_tools import add_mcp_tools


def mcp_available() -> bool:
    """gradio's MCP server needs the `mcp` package (`pip install "gradio[mcp]"`, requirements-mcp.txt)."""
    return find_spec("mcp") is not None


def build(args: argparse.Namespace) -> AppBlocks:
    """The app `args` describe. With --serve its jobs run on the Ray Serve replicas and this process loads no
    torch (`_serve_service`); otherwise it holds the models (`local_service`)."""
    config = serve_config(args)
    settings = engine_settings(args, config)
    # PIL refuses to open images over twice this many pixels (uploads are decoded lazily, and validation
    # refuses anything over the limit from the header alone, so this only stops bombs PIL would decode).
    Image.MAX_IMAGE_PIXELS = settings.limits.max_input_pixels
    service = local_service(settings) if config is None else _serve_service(args.serve, config, settings)
    hosting = Hosting(queue_size=args.queue_size,
                      max_jobs_per_visitor=args.max_jobs_per_session, max_jobs_per_address=args.max_jobs_per_address,
                      max_upload_mb_per_address=args.max_upload_mb_per_address,
                      trusted_proxy_hops=args.trusted_proxy_hops,
                      model_admin=model_admin(args), max_sessions=args.max_sessions,
                      max_sessions_per_address=args.max_sessions_per_address)
    if service.concurrency > args.queue_size:
        logging.getLogger("app").warning(
            "--queue-size %d is below the %d jobs the GPU queue can run at once: at most %d will run",
            args.queue_size, service.concurrency, args.queue_size)
    demo = build_ui(service, hosting=hosting)
    if args.mcp and mcp_available():
        add_mcp_tools(demo, service)
    age = max(1, round(args.cache_minutes * 60))
    demo.delete_cache = (min(age, 600), age)  # every `frequency` seconds, files older than `age` seconds go
    # The direct REST routes, which would skip the queue, are closed at launch (`AppBlocks.launch`), where the
    # queue's push is wrapped to bound GPU jobs and the other events apart (`sd2_app.ui.hosting`).
    demo.queue(max_size=gradio_max_size(args.queue_size), default_concurrency_limit=1)
    if api_enabled(args):
        # The API's jobs count with the UI's, towards --queue-size and the per-address limit, and stop when the
        # app closes.
        auth = parse_auth(args.api_auth)
        api = A1111Api(service, auth=auth, job_admission=demo.flags.visitors.job_admission,
                       model_admin=api_model_admin(hosting.model_admin, auth))
        demo.stop_at_close(api)
        demo.sd2_routes = build_router(api).routes  # type: ignore[attr-defined]  # read by launch_settings()
    return demo


def model_admin(args: argparse.Namespace) -> bool:
    """Whether visitors may load and unload checkpoints by hand (the Models tab's buttons and their events): on
    locally; in public modes (`is_public`) only with --allow-model-admin, or --auth (every visitor signed in)."""
    return args.allow_model_admin or bool(args.auth) or not is_public(args)


def api_model_admin(visitors_may: bool, api_auth: Sequence[tuple[str, str]]) -> bool:
    """Whether the A1111 API's POST /options may change the shared current checkpoint: where visitors may load
    checkpoints (`model_admin`), and wherever --api-auth's users alone reach the API (`api_auth`, its pairs)."""
    return visitors_may or bool(api_auth)


def local_service(settings: EngineSettings) -> Service:
    """A Service over this process's ModelManager (`sd2_app.api.engine`): the app's path that imports torch
    (the --serve front end imports it only with --tiny)."""
    if find_spec("spaces") is not None:
        import spaces  # noqa: F401  # ZeroGPU patches torch's CUDA calls: it must be imported before torch
    # Everything that loads torch is imported here, after `spaces`.
    from sd2_app.api.engine import build_service

    return build_service(settings)


def serve_config(args: argparse.Namespace) -> ServeConfig | None:
    """With --serve, the deployment's settings (--serve-config; --tiny as `python -m sd2_app.serve --tiny`)."""
    return load_config(args.serve_config, tiny=True if args.tiny else None) if args.serve else None


def engine_settings(args: argparse.Namespace, serve: ServeConfig | None = None) -> EngineSettings:
    """The web app's ModelManager + Service. With --serve (`serve`: the deployment's settings) the front end's
    Service takes them too, but its checkpoint sources are the deployment's (`ServeConfig.checkpoint_sources`),
    as each replica's are: app_flags refuses --repo and --revision with --serve."""
    zerogpu = gpu_time.on_zerogpu()
    sources = serve.checkpoint_sources() if serve is not None else dict(
        repos=tuple(args.repo), revisions=tuple(args.revision), tiny=args.tiny, allowed_repos=None,  # None: env
        checkpoints_dir=args.checkpoints_dir)
    return EngineSettings(
        device=args.device, dtype=args.dtype, speed=args.speed, zerogpu=zerogpu, **sources,
        cache_dir=None, preload=tuple(args.preload or ()),
        limits=Limits(max_side=args.max_side, max_job_cost=args.max_job_cost or None),
        outputs_dir=None if args.no_save else args.outputs, keep_outputs_days=args.keep_outputs_days,
        watermark=not args.no_watermark, save_in_background=True, history_size=HISTORY_SIZE,
        embeddings_dir=args.embeddings_dir, lora_dir=args.lora_dir, styles_file=args.styles,
        batch_users=_batch_users(args, zerogpu),
        # visitors' jobs start on several threads; with --serve they run on the replicas (and torch stays out)
        import_pipelines=not args.serve,
    )


def _batch_users(args: argparse.Namespace, zerogpu: bool) -> bool:
    """--batch-users: batching across users (sd2_app/api/batching.py).

    Not on ZeroGPU: there each job runs inside its own GPU call, so a batch's thread would have no GPU.
    """
    if args.batch_users and zerogpu:
        logging.getLogger(__name__).warning("--batch-users is ignored on ZeroGPU: each job has its own GPU call")
    return args.batch_users and not zerogpu


def launch_settings(args: argparse.Namespace, demo: gr.Blocks | None = None) -> dict[str, Any]:
    """The keyword arguments of `demo.launch` (docs/RELIABILITY.md lists them, with the queue's settings)."""
    auth = tuple(args.auth.split(":", 1)) if args.auth and ":" in args.auth else None
    # The A1111 routes go first in FastAPI's route list, so nothing of Gradio's can shadow them; SSR stays off
    # (its Node front server would stand between clients and these routes).
    routes = list(getattr(demo, "sd2_routes", []))
    # No extra allowed paths; errors show our messages (gr.Error), never tracebacks; no /monitoring endpoint;
    # no run history (it may reach the Hub with the host's token). Every new session id a client sends makes
    # Gradio keep a session's state (gradio/state_holder.py, `StateHolder`): --max-sessions bounds how many it
    # keeps (one address's: `sd2_app.ui.session_addresses`).
    return dict(server_name=args.host, server_port=args.port, share=args.share, show_error=False, allowed_paths=[],
                max_file_size=MAX_IMAGE_FILE_BYTES, enable_monitoring=False, run_history=args.run_history, auth=auth,
                ssr_mode=False, mcp_server=bool(args.mcp and mcp_available()), app_kwargs={"routes": routes},
                state_session_capacity=args.max_sessions)


def _serve_service(address: str, config: ServeConfig, settings: EngineSettings) -> Service:
    """A Service whose jobs run on the Ray Serve deployment at `address`; saving, the watermark and history stay
    here, with the same settings as the local app."""
    # Ray is optional (requirements-serve.txt): imported only on this path.
    from sd2_app.serve.backend import connect, remote_service

    registry = front_registry(settings)
    return ready(remote_service(connect(address, config), registry, config, **service_options(settings)), settings)


def front_registry(settings: EngineSettings) -> dict[str, CheckpointSpec]:
    """The --serve front end's checkpoints (it reads their tokenizers), made as a replica's ModelManager makes
    its own from the same settings. Nothing here imports torch, except writing the tiny repos' random weights
    (`tiny`, a demo mode)."""
    registry = registry_of(settings)
    if settings.tiny:
        from sd2_app.manager import default_cache_dir
        from sd2_app.testing.tiny import tiny_checkpoints

        registry = tiny_checkpoints(registry, default_cache_dir())
    return registry


def configure_logging() -> None:
    """INFO lines for the server log, one per checkpoint load: transformers' per-file "Loading weights" progress
    bars are turned off (the manager logs each load)."""
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transformers_logging.disable_progress_bar()


def run(args: argparse.Namespace) -> None:
    """Serve the app `args` describe until Ctrl+C or SIGTERM, then close it in order."""
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
