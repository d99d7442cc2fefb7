"""Server-side checks of every request, so the API cannot bypass what the UI's widgets limit.

`validate(request, catalog, limits)` returns a complete request (seed drawn, size filled in and rounded,
images converted to RGB) and the warnings the user should see; anything it cannot repair becomes an
`InvalidRequest` whose message is shown to the user as is. It imports no torch: the UI may call it too.

The checks live by what they check: single values and the server's `Limits`/`Catalog` in `checks`, uploaded
images in `image_inputs`, one task request in `task_checks` (text-to-image options in `txt2img_options`), an
X/Y/Z plot in `plot` (every cell through `task_checks`).
"""

from __future__ import annotations

from sd2_app.api.checks import Catalog, Limits
from sd2_app.api.plot import validate_plot
from sd2_app.api.requests import Request, XYZPlotRequest
from sd2_app.api.task_checks import validate_task


def validate(request: Request, catalog: Catalog, limits: Limits = Limits()) -> tuple[Request, list[str]]:
    """A complete, in-range copy of `request` and the warnings to show; `InvalidRequest` otherwise.

    The checked request's cost (`sd2_app.api.cost`) must also be within `limits.max_job_cost`.
    """
    if isinstance(request, XYZPlotRequest):
        return validate_plot(request, catalog, limits)  # every cell, and the plot's total cost
    return validate_task(request, catalog, limits)
