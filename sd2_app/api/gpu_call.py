"""A job's `spaces.GPU` call and where its result is kept: one rule for every front end (`GpuCall`).

On ZeroGPU a call may run in a worker process forked from the app's (docs/DESIGN.md, "ZeroGPU"): what the call
keeps there (History, the saver's files) stays in the worker's copy of the Service. So where the call may fork
(`gpu_time.gpu_calls_may_fork`), the job runs in it unkept (`keep=False`) and the `Result` that comes back is
kept here, in the app's process, once; where the call runs here, the job keeps its own result, as any run does.
The web UI's Generate (a stream), the MCP tools and the A1111 API's batches (plain calls) all go through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sd2_app.api.checked import Checked
from sd2_app.api.gpu_time import checked_seconds, gpu, gpu_calls_may_fork
from sd2_app.api.results import Result
from sd2_app.api.tasks import import_job_modules
from sd2_app.fork_safety import one_torch_thread_in_forked_child

if TYPE_CHECKING:
    from sd2_app.api.service import Service


class GpuCall:
    """`job(checked, *args, owner=..., keep=..., **kwargs)` as one `spaces.GPU` function, wrapped once, that asks
    for the time its `Checked` request needs (`gpu_time.checked_seconds`), its results kept by the rule above
    for `owner` (`Service.keep`). `job` is `Service.run`, or a generator that yields progress and its `Result`."""

    def __init__(self, service: Service, job: Callable[..., Any]) -> None:
        self.service = service
        self.forks = gpu_calls_may_fork()  # the job's arguments and results are pickled: no callbacks then
        if self.forks and service.backend is None:  # the jobs run in forked copies of this process
            import_job_modules()  # before the first fork: a job there imports nothing
            one_torch_thread_in_forked_child(self)  # this process's torch threads are not copied there
        self._call = gpu(duration=lambda checked, *args, **kwargs: checked_seconds(service, checked))(job)

    def run(self, checked: Checked, *args: Any, owner: str, **kwargs: Any) -> Result:
        """The job's `Result`, kept once; its log line written (`Service.keep`'s `log_here`), as `Service.run`
        writes its own."""
        result = self._call(checked, *args, owner=owner, keep=not self.forks, **kwargs)
        return self.service.keep(result, owner, log_here=True) if self.forks else result

    def stream(self, checked: Checked, *args: Any, owner: str, **kwargs: Any) -> Iterator[Any]:
        """The job's yields, each `Result` among them kept once (the consumer delivers it and writes its log
        line: `ui.runner.deliver`). Closing this closes the call's stream (a Stop reaches the job)."""
        items = self._call(checked, *args, owner=owner, keep=not self.forks, **kwargs)
        try:
            for item in items:
                yield self.service.keep(item, owner) if self.forks and isinstance(item, Result) else item
        finally:
            getattr(items, "close", lambda: None)()  # spaces.GPU's stream is a generator; a plain iterator ends
