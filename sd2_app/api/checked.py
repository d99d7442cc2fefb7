"""A request the Service checked (`check`): what a ZeroGPU call is priced by and what it then runs.

On ZeroGPU the duration asked for a call comes from the job's cost (sd2_app.api.gpu_time), so the request must be
built and validated before the GPU call; handing the `Checked` request into the call lets `Service.run` run it
without validating it again (docs/DESIGN.md, "ZeroGPU"). It carries the prompt plans its check made: a worker
forked before the request came does not plan its prompts again (`PromptPlans.adopt`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sd2_app.api.plot import CheckedPlot
from sd2_app.api.requests import Request, XYZPlotRequest

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.pipelines.prompt_plan import CarriedPlan


@dataclass
class Checked:
    """A validated request, its warnings and the seconds validating took (the run's "validate" phase)."""

    request: Request
    warnings: list[str]
    seconds: float = 0.0
    plot: CheckedPlot | None = None  # an X/Y/Z plot's validated cells (`Service.check_plot`)
    plans: tuple[CarriedPlan, ...] = ()  # the prompt plans its check made, for a run in another process


def check(service: Service, request: Request) -> Checked:
    """`request` validated by `service` (`Service.validate`, or `Service.check_plot` for a plot); raises
    `InvalidRequest`."""
    started = time.perf_counter()
    if isinstance(request, XYZPlotRequest):
        plot = service.check_plot(request)
        seconds = time.perf_counter() - started
        return Checked(plot.request, plot.warnings, seconds, plot, plans(service, (c.request for c in plot.cells)))
    checked, warnings = service.validate(request)
    return Checked(checked, warnings, time.perf_counter() - started, plans=plans(service, [checked]))


def plans(service: Service, requests: Iterable[Request]) -> tuple[CarriedPlan, ...]:
    """The prompt plans `service` made validating `requests`, as plain data for the process that runs them."""
    return service._prompt_tools.carried(requests)  # the Service's own tools: this module is its `check`
