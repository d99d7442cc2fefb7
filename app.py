"""Start the sd2-app web UI: flags -> ModelManager -> Service -> build_ui(service) -> launch.

On a Hugging Face ZeroGPU Space (the `spaces` package is importable) the default checkpoint is loaded at
start-up, as ZeroGPU expects, and results are not written to disk unless --outputs is given.

Public modes (a Space, a --host other than loopback, or --share) serve untrusted visitors: loading and
unloading checkpoints by hand is off there unless --allow-model-admin or --auth is given. Every mode caps the
cost of one job (--max-job-cost), the jobs one visitor may have queued (--max-jobs-per-session), the jobs one
network address may have queued (--max-jobs-per-address, by default in public modes only; the address comes
from X-Forwarded-For only behind trusted proxies, --trusted-proxy-hops, 1 by default on a Space), what one
address may upload within the cache age (--max-upload-mb-per-address) and how many sessions' state the server
keeps (--max-sessions; of one address, --max-sessions-per-address, by default in public modes only). It keeps
the queue's direct REST routes closed, deletes Gradio's cached uploads and the app's results after
--cache-minutes and keeps Gradio's run history off unless --run-history is given. README's "Hosting" section
lists them.

The flags are parsed first (`sd2_app.app_flags`: no Gradio, no torch), so --help and flag errors answer at
once; the web app (`sd2_app.webapp`) is imported after them.
"""

from __future__ import annotations

import os

from sd2_app.app_flags import parse_args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)  # --help and flag errors answer here, before Gradio, transformers or torch is imported
    from sd2_app import webapp  # the web app: Gradio and transformers (torch in `build`, after `spaces`)

    webapp.run(args)


if __name__ == "__main__":
    main()
