"""app.py's command-line flags and the hosting defaults they show: parsed without importing Gradio or torch.

`python app.py --help` and a flag error answer in a fraction of a second: app.py imports the web app
(`sd2_app.webapp`: Gradio, transformers, and torch after `spaces`) only once the flags are parsed. The
per-address, per-visitor, upload and session defaults live here, the one place the flags and
`sd2_app.ui.hosting` read them from.
"""

from __future__ import annotations

import argparse
import os
from importlib.util import find_spec

from sd2_app.api.job_admission import DEFAULT_QUEUE_SIZE
from sd2_app.api.cost import DEFAULT_MAX_JOB_COST
from sd2_app.compute_flags import add_compute_arguments
from sd2_app.serve.config import process_sources

# GPU jobs one visitor may have queued or running at once.
DEFAULT_MAX_JOBS_PER_VISITOR = 2
# GPU jobs queued or running from one network address in public modes (`is_public`): more than one visitor's,
# since offices, universities and mobile networks put many visitors behind one address; 0 turns the limit off.
# Locally (loopback) there is no limit unless one is given: every client there is the operator's.
DEFAULT_MAX_JOBS_PER_ADDRESS = 6
# MB one network address may upload per cache age (--cache-minutes); 0 turns the budget off.
DEFAULT_UPLOAD_MB_PER_ADDRESS = 1024
# Minutes a file stays in Gradio's cache (uploads and shown results); also the upload budget's window.
DEFAULT_CACHE_MINUTES = 60.0
# Sessions whose state Gradio keeps (`launch(state_session_capacity=...)`, the least recently used go first);
# any client can start a new session with every request. A new session hash's state costs about 40 KB, a page
# that made a result about 135 KB (docs/DESIGN.md, "Sessions"): at most about 0.2 GB and 0.7 GB. Gradio's own
# default is 10,000 (each of its sessions copied every component's settings, about 750 KB).
DEFAULT_MAX_SESSIONS = 5000
# Of those, the sessions one network address may hold in public modes (`is_public`): past it, that address's own
# least recently used session goes, never another address's (`sd2_app.ui.session_addresses`). Each browser tab
# and page load is a session, and offices and mobile networks put many visitors behind one address; 0 turns the
# bound off. Locally (loopback) there is none unless one is given: every client there is the operator's.
DEFAULT_MAX_SESSIONS_PER_ADDRESS = 100


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
# With --serve the replicas load the weights and this process reads the tokenizers: the checkpoints' sources are
# the deployment's settings, read by both (sd2_app/serve/config.py, ServeConfig.checkpoint_sources).
_SERVE_SOURCE = ("{what} with --serve: the replicas load the weights and this front end reads the tokenizers, both "
                 "from the deployment's settings: set {setting} in --serve-config (deploy/serve.toml) instead")
SERVE_REPO = _SERVE_SOURCE.format(what="--repo is refused", setting='repos = ["KEY=REPO"]')
SERVE_REVISION = _SERVE_SOURCE.format(what="--revision is refused", setting='revisions = ["KEY=REV"]')
SERVE_VARIABLES = _SERVE_SOURCE.format(what="setting {names} in the environment is refused",
                                       setting="repos, revisions or allowed_repos")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    spaces = on_spaces()
    p = argparse.ArgumentParser(description="Stable Diffusion 2 web app")
    _server_arguments(p, spaces)
    _visitor_arguments(p, spaces)
    _extension_arguments(p, spaces)
    args = p.parse_args(argv)
    if args.max_jobs_per_address is None:  # neither the flag nor its variable: the mode decides
        args.max_jobs_per_address = DEFAULT_MAX_JOBS_PER_ADDRESS if is_public(args) else 0
    if args.max_sessions_per_address is None:
        args.max_sessions_per_address = DEFAULT_MAX_SESSIONS_PER_ADDRESS if is_public(args) else 0
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth takes USER:PASSWORD")
    if min(args.max_jobs_per_address, args.trusted_proxy_hops, args.max_upload_mb_per_address,
           args.max_sessions_per_address) < 0:
        p.error("--max-jobs-per-address, --max-upload-mb-per-address, --max-sessions-per-address and "
                "--trusted-proxy-hops take 0 or more")
    if min(args.max_sessions, args.queue_size) < 1:
        p.error("--max-sessions and --queue-size take 1 or more")
    if args.serve:
        _refuse_local_settings(p, args)
    return args


def _refuse_local_settings(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--serve: the settings of the jobs' own process belong to the deployment's settings (--serve-config)."""
    if args.batch_users:
        p.error(SERVE_BATCH_USERS)
    if args.repo:
        p.error(SERVE_REPO)
    if args.revision:
        p.error(SERVE_REVISION)
    variables = process_sources()
    if variables:
        p.error(SERVE_VARIABLES.format(names=", ".join(variables)))


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
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
                   help="GPU jobs the app takes waiting or running at once, from the web UI, MCP tools and the A1111 "
                        "API together; the next is refused with 'The server is busy' (default %(default)s)")
    p.add_argument("--max-jobs-per-session", type=int,
                   default=_env_number("SD2APP_MAX_JOBS_PER_SESSION", DEFAULT_MAX_JOBS_PER_VISITOR),
                   help="GPU jobs one visitor may have queued or running (default %(default)s, "
                        "$SD2APP_MAX_JOBS_PER_SESSION)")
    p.add_argument("--max-jobs-per-address", type=int,
                   default=_env_number("SD2APP_MAX_JOBS_PER_ADDRESS", None),
                   help="GPU jobs one network address (an IPv6 /64) may have queued or running, whatever its "
                        f"cookies; 0 = no limit (default {DEFAULT_MAX_JOBS_PER_ADDRESS} in public modes: Spaces, "
                        "--share, a non-loopback --host; else no limit; $SD2APP_MAX_JOBS_PER_ADDRESS)")
    p.add_argument("--max-upload-mb-per-address", type=int, metavar="MB",
                   default=_env_number("SD2APP_MAX_UPLOAD_MB_PER_ADDRESS", DEFAULT_UPLOAD_MB_PER_ADDRESS),
                   help="MB one network address may upload within one --cache-minutes, 0 = no limit (default "
                        "%(default)s, $SD2APP_MAX_UPLOAD_MB_PER_ADDRESS)")
    p.add_argument("--max-sessions", type=int, default=_env_number("SD2APP_MAX_SESSIONS", DEFAULT_MAX_SESSIONS),
                   help="browser/API sessions whose state the server keeps, the least recently used dropped first "
                        "(default %(default)s, $SD2APP_MAX_SESSIONS)")
    p.add_argument("--max-sessions-per-address", type=int,
                   default=_env_number("SD2APP_MAX_SESSIONS_PER_ADDRESS", None),
                   help="of those, the sessions one network address (an IPv6 /64) may hold, its own least recently "
                        f"used dropped first; 0 = no limit (default {DEFAULT_MAX_SESSIONS_PER_ADDRESS} in public "
                        "modes, else no limit; $SD2APP_MAX_SESSIONS_PER_ADDRESS)")
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
    p.add_argument("--cache-minutes", type=float,
                   default=_env_number("SD2APP_CACHE_MINUTES", DEFAULT_CACHE_MINUTES, float),
                   help="delete Gradio's cached uploads and results older than this (default %(default)g)")
    p.add_argument("--allow-model-admin", action="store_true",
                   default=os.environ.get("SD2APP_ALLOW_MODEL_ADMIN") == "1",
                   help="let visitors load and unload checkpoints in public modes (always allowed on loopback)")
    p.add_argument("--auth", default=os.environ.get("SD2APP_AUTH"), metavar="USER:PASSWORD",
                   help="require a Gradio login (then visitors may load and unload checkpoints; $SD2APP_AUTH)")
    p.add_argument("--run-history", action="store_true",
                   help="turn on Gradio's run history page (off: it could use the host's HF token)")
    p.add_argument("--max-side", type=int, default=1024, help="largest width/height a user may ask for")


def _extension_arguments(p: argparse.ArgumentParser, spaces: bool) -> None:
    """Checkpoint sources, the extra front ends (A1111 API, MCP), the watermark, Ray Serve, embeddings and LoRAs."""
    p.add_argument("--repo", action="append", default=[], metavar="KEY=REPO[,REPO]",
                   help="override a checkpoint's repos (with --serve: repos in --serve-config instead)")
    p.add_argument("--revision", action="append", default=[], metavar="KEY=REV",
                   help="pin a checkpoint's revision (with --serve: revisions in --serve-config instead)")
    p.add_argument("--api", action=argparse.BooleanOptionalAction, default=None,
                   help="the A1111-compatible REST API under /sdapi/v1 (default: on locally, off in public modes)")
    p.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER:PASS]",
                   help="HTTP basic auth for the A1111 API")
    p.add_argument("--mcp", action=argparse.BooleanOptionalAction, default=spaces,
                   help="serve MCP tools at /gradio_api/mcp (needs gradio[mcp]; default: on on Spaces)")
    p.add_argument("--batch-users", action=argparse.BooleanOptionalAction, default=False,
                   help="run queued requests that can share one UNet batch as one (same model, size, sampler, steps "
                        "and guidance): more images per second under load, each within rounding of its solo run "
                        "(with --serve: batch_users in --serve-config instead)")
    p.add_argument("--no-watermark", action="store_true",
                   help="do not embed the invisible SDV2 watermark in results (the AI-generated XMP marker stays)")
    p.add_argument("--serve", default=None, metavar="ADDRESS",
                   help="run jobs on the Ray Serve deployment of the Ray cluster at ADDRESS ('auto': this machine's) "
                        "instead of this process's GPU; see README 'Scaling out'")
    p.add_argument("--serve-config", default=None, metavar="TOML",
                   help="the deployment's settings (deploy/serve.toml) when --serve is given")
    p.add_argument("--checkpoints-dir", default="checkpoints",
                   help="folder of single-file SD2 checkpoints (.safetensors, as A1111's models/Stable-diffusion), "
                        "read at start-up: each file is one more checkpoint, named by its file name (default "
                        "./checkpoints)")
    p.add_argument("--embeddings-dir", default="embeddings",
                   help="folder of SD2 textual-inversion embeddings (.safetensors), read at start-up; a prompt uses "
                        "one by its file name (default ./embeddings)")
    p.add_argument("--lora-dir", default="loras",
                   help="folder of SD2 LoRAs (.safetensors, A1111's layout), read at start-up; a prompt uses one "
                        "with <lora:NAME:0.8> (default ./loras)")
    p.add_argument("--styles", metavar="PATH", default=None,
                   help="prompt styles visitors may pick (A1111's styles.csv: name,prompt,negative_prompt), read at "
                        "start-up; none by default")


def api_enabled(args: argparse.Namespace) -> bool:
    return (not is_public(args)) if args.api is None else bool(args.api)
