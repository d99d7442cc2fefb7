"""How many times a web txt2img run plans its prompts, and the time that takes (issue 24 section 3), on CPU.

A web run on ZeroGPU does, in order: the check (`sd2_app.api.checked.check`: validation), the duration estimate
of the checked request (`sd2_app.api.gpu_time.checked_seconds`), the Service's run of it (`Service.run`: the
pipeline's `start_job`). This script runs
exactly that on the tiny checkpoints (the tiny tokenizer: a small vocabulary, so the same text has more tokens
than with CLIP's) and counts the plans computed (`prompt_plan.tokenize_prompts`, called once per plan) and the
time spent where the run plans or looks a plan up (every `plan_prompts` binding, and on trees that have it the
Service's `PromptPlans.plan`), per run, for a short prompt and a ~600-token prompt with editing and alternation,
each run's text new (the run's number at its end).

    python -m bench.prompt_plans --n 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SHORT = "a red hat on a cat"
# ~600 tiny-tokenizer tokens in 8 chunks, with an edit and an alternation (3 phases)
LONG = ", ".join(["a [red:blue:0.5] hat on a [cat|dog], oil painting"] * 24)


class Meter:
    """Wraps callables: counts the calls and sums the seconds of the outermost ones."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.depth += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.seconds += time.perf_counter() - started

        return timed


def instrument(meter: Meter, plans: list[int]) -> None:
    """Every place the run plans (old and new trees) timed by `meter`; each plan computed counted in `plans`."""
    from sd2_app.pipelines import prompt_plan

    original = prompt_plan.plan_prompts
    for module in list(sys.modules.values()):
        if getattr(module, "plan_prompts", None) is original:
            module.plan_prompts = meter.wrap(original)  # type: ignore[attr-defined]
    tokenize = prompt_plan.tokenize_prompts

    def counted(*args: Any, **kwargs: Any) -> Any:
        plans.append(1)
        return tokenize(*args, **kwargs)

    prompt_plan.tokenize_prompts = counted
    memo = getattr(prompt_plan, "PromptPlans", None)
    if memo is not None:
        memo.plan = meter.wrap(memo.plan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="runs per prompt (after one warm-up)")
    args = parser.parse_args(argv)
    import torch

    from sd2_app.api import gpu_time, service as service_module  # noqa: F401  # loads every call site
    from sd2_app.api.checked import check
    from sd2_app.api.requests import Sampling, Txt2ImgRequest
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.manager import ModelManager
    from sd2_app.pipelines import sampling as _sampling  # noqa: F401
    from sd2_app.testing.tiny import ensure_tiny_repos

    torch.set_num_threads(1)
    registry = tiny_registry(ensure_tiny_repos(Path(tempfile.gettempdir()) / "sd2-app-tiny-0"))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=Path(tempfile.mkdtemp())), outputs_dir=None,
                      allowed_repos=())
    meter, plans = Meter(), []
    instrument(meter, plans)
    for name, prompt in (("short", SHORT), ("long", LONG)):
        print(f"{name}: {service.count_tokens(prompt, 'sd21-base')} tokens")
        seconds, counts = [], []
        for run in range(args.n + 1):
            # a new text each run, so no run finds a plan an earlier run made (a repeat with a new seed would)
            request = Txt2ImgRequest(f"{prompt} {run}", "blurry", checkpoint="sd21-base", width=64, height=64,
                                     sampling=Sampling(sampler="Euler", steps=20, cfg_scale=7.0, seed=run))
            meter.seconds, plans[:] = 0.0, []
            checked = check(service, request)
            gpu_time.checked_seconds(service, checked)  # ZeroGPU's duration estimate
            service.run(checked)
            if run:
                seconds.append(meter.seconds * 1e3)
                counts.append(len(plans))
        print(f"{name}: plans per run {sorted(set(counts))}, planning ms per run: median "
              f"{statistics.median(seconds):.2f}, min {min(seconds):.2f}, max {max(seconds):.2f}")


if __name__ == "__main__":
    main()
