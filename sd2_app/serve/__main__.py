"""Deploy the Serve application: `python -m sd2_app.serve [--config deploy/serve.toml] [--address auto]`.

With `--address auto` it joins the Ray cluster started by `ray start` on this machine and returns once the
replicas are up (the deployment lives on in the cluster); without it, it starts a Ray instance of its own and
keeps serving until interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

import ray
from ray import serve

from sd2_app.serve.config import load_config
from sd2_app.serve.deployment import build_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Deploy sd2-app's workers on Ray Serve")
    p.add_argument("--config", default=None, help="TOML file with a [serve] table (see deploy/serve.toml)")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto' = the local `ray start`)")
    p.add_argument("--tiny", action="store_true", help="tiny random-weight checkpoints (no download)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, tiny=True if args.tiny else None)
    ray.init(address=args.address, namespace="serve")
    serve.run(build_app(config), name=config.app_name, route_prefix=None)
    logging.getLogger(__name__).info("Serve application %r is running", config.app_name)
    if args.address is None:  # our own Ray instance lives as long as this process
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
