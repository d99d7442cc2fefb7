"""The API of the UI and the CLI: validate a request, run its pipeline under the model manager, keep the result.

Only this module knows the `ModelManager`. `Service.run` reports progress through a callback (step, total,
preview image or None) and checks a `should_stop` callable at every step, raising `Cancelled` when it says
so; the UI runs it in a worker thread and streams the callbacks. Every result is kept by the Service's
`ResultKeeper` (`sd2_app.api.keeper`): encoded as PNG once, with its parameters, written to a dated outputs
folder (unless saving is off; `sd2_app.api.saver`, on a writer thread with `save_in_background`) and kept in a
short in-memory history. Each phase's seconds go into the Result's `timings` (`sd2_app.api.timing`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from PIL import Image

from sd2_app.api.batch_count import run_request
from sd2_app.api.checked import Checked, check
from sd2_app.api.checks import Catalog, Limits, catalog_of
from sd2_app.api.gate import GpuGate
from sd2_app.api.hires_x4 import run_hires_x4
from sd2_app.api.keeper import HISTORY_SIZE, ResultKeeper
from sd2_app.api.lora_tools import LoraTools
from sd2_app.api.model_host import ModelHost
from sd2_app.api.plot import CellFn, CheckedPlot, check_plot, run_plot
from sd2_app.api.progress import PreviewFn, kept_so_far, latent_preview, placed, step_callback, with_result
from sd2_app.api.prompt_tools import PromptTools
from sd2_app.api.requests import X4_UPSCALER, Request, TaskRequest, XYZPlotRequest
from sd2_app.api.results import Backend, HistoryEntry, ProgressFn, Result, result_of  # noqa: F401  # Backend re-exported
from sd2_app.api.timing import log_split
from sd2_app.api.tasks import pipeline_of
from sd2_app.api.validation import validate
from sd2_app.checkpoints.catalog import REGISTRY, CheckpointSpec
from sd2_app.checkpoints.files import CheckpointFiles, operator_checkpoints
from sd2_app.errors import Cancelled, InvalidRequest, shown
from sd2_app.pipelines.metadata import parse_parameters, read_png_parameters
from sd2_app.prompt_styles import StyleBook

if TYPE_CHECKING:
    from sd2_app.api.batching import Batcher
    from sd2_app.checkpoints.components import Components
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.loading.loras import LoraLibrary
    from sd2_app.pipelines.loop import LatentProgressFn
    from sd2_app.pipelines.output import PipelineOutput

# The imports left inside functions below are of modules that load torch (the task pipelines and the fallback
# ladder over them): the UI imports this module, and the UI imports no torch.

log = logging.getLogger(__name__)

TaskFn = Callable[..., "PipelineOutput"]  # (components, request, on_step, *, mode) -> output


class Service:
    """Validation, seeds, progress, cancellation, saving and history around the task pipelines."""

    def __init__(
        self,
        manager: ModelHost | None,
        *,
        registry: Mapping[str, CheckpointSpec] | None = None,
        catalog: Catalog | None = None,
        tasks: Mapping[str, TaskFn] | None = None,
        preview: PreviewFn | None = None,  # None: latent_preview
        limits: Limits = Limits(),
        allowed_repos: Iterable[str] | None = None,  # Hub repos users may pick; None: $SD2APP_ALLOWED_REPOS
        checkpoint_files: CheckpointFiles | None = None,  # the operator's single-file checkpoints; None: none
        outputs_dir: str | Path | None = "outputs",
        keep_outputs_days: float | None = None,  # delete saved results older than this (None: keep them)
        history_size: int = HISTORY_SIZE,
        preview_every: int = 5,
        watermark: bool = True,  # the invisible "SDV2" watermark in every result (--no-watermark turns it off)
        backend: Backend | None = None,
        concurrency: int = 1,
        embeddings: EmbeddingLibrary | None = None,  # None: no textual-inversion embeddings
        loras: LoraLibrary | None = None,  # None: no LoRAs
        save_in_background: bool = False,  # write results on a writer thread after the request returns
        styles: StyleBook = StyleBook(),  # the host's prompt styles (--styles)
    ) -> None:
        """`manager` None gives a service that validates but cannot run (tools and tests)."""
        self.manager = manager
        self.styles = styles
        self._prompt_tools = PromptTools(self, embeddings)  # the embeddings folder, read again when it changes
        self.loras = LoraTools(loras)
        self.backend = backend  # where validated requests run: None, this process's manager (serve: a remote one)
        self.concurrency = concurrency  # jobs the GPU queue runs at once: 1 locally, the replicas' total remotely
        if registry is None:
            registry = manager.registry if manager is not None else REGISTRY
        self.registry: dict[str, CheckpointSpec] = dict(registry)
        custom = operator_checkpoints(allowed_repos, checkpoint_files, self.registry)
        if custom:  # the manager must know them too, the UI lists them
            self.registry.update(custom)
            if manager is not None:
                manager.add_checkpoints(custom)
        self.catalog = catalog or catalog_of(self.registry, loras=self.loras.names())
        self._tasks = dict(tasks) if tasks is not None else None
        self._preview = preview or latent_preview
        self.limits = limits
        self.keeper = ResultKeeper(outputs_dir, keep_days=keep_outputs_days, history_size=history_size,
                                   watermark=watermark, save_in_background=save_in_background)
        self.preview_every = max(1, preview_every)
        self.gate = GpuGate()  # one job at a time on the GPU, whichever front end sent it
        self.batcher: Batcher | None = None  # requests that share one UNet batch (api.batching.enable turns it on)

    # ---- catalog ---------------------------------------------------------------------------------
    def samplers(self) -> list[str]:
        """Sampler names in the order the UI lists them."""
        return list(self.catalog.samplers)

    def offers_schedules(self, sampler: str) -> bool:
        return bool(self.catalog.samplers.get(sampler, False))

    def checkpoints(self, task: str) -> list[tuple[str, str]]:
        """(label, key) pairs of the checkpoints that can run `task` (a dropdown's choices)."""
        return [(self.catalog.labels.get(k, k), k) for k, tasks in self.catalog.tasks.items() if task in tasks]

    def resolution(self, checkpoint: str) -> int:
        """The checkpoint's native side in pixels (the UI's default width and height)."""
        if checkpoint not in self.catalog.resolutions:
            raise InvalidRequest(f"Unknown checkpoint {shown(checkpoint)}.")
        return self.catalog.resolutions[checkpoint]

    # ---- models ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The manager's report: per checkpoint where it is loaded and from which repo, and memory per tier."""
        models, memory = self._host().report()
        return {"models": models, "memory": memory}

    def load(self, checkpoint: str) -> None:
        if checkpoint not in self.registry:
            raise InvalidRequest(f"Unknown checkpoint {shown(checkpoint)}.")
        with self.gate.enter():
            self._host().load(checkpoint)

    def unload(self, checkpoint: str | None = None) -> list[str]:
        """Unload one checkpoint, or everything when `checkpoint` is None; the keys that were loaded."""
        if checkpoint is not None and checkpoint not in self.registry:
            raise InvalidRequest(f"Unknown checkpoint {shown(checkpoint)}.")
        host = self._host()
        return [key for key in ([checkpoint] if checkpoint is not None else list(self.registry)) if host.unload(key)]

    # ---- prompts -----------------------------------------------------------------------------------
    def count_tokens(self, text: str, checkpoint: str, *, negative: bool = False) -> str:
        """The prompt box's counter, "23/75" (A1111's count), without touching the GPU queue."""
        return self._prompt_tools.count(text, checkpoint, negative=negative)

    def embedding_names(self) -> list[str]:
        """Names of the textual-inversion embeddings a prompt may use."""
        return self._prompt_tools.embedding_names()

    def embedding_library(self, refresh: bool = False) -> EmbeddingLibrary | None:
        """The embeddings folder as last read, its unused files in `refused` (`refresh`: looked at now); or None."""
        return self._prompt_tools.embedding_library(refresh)

    # ---- running ---------------------------------------------------------------------------------
    def _host(self) -> ModelHost:
        if self.manager is None:
            raise RuntimeError("this Service was made without a model manager: it validates, it cannot run")
        return self.manager

    def validate(self, request: Request) -> tuple[Request, list[str]]:
        """The checked request and its warnings (raises `InvalidRequest`), its prompts within the pipeline's
        limits (`PromptTools.check`: tokenized here, no model). A plot goes through `check_plot` (the host's
        styles, every cell's prompts)."""
        if isinstance(request, XYZPlotRequest):
            plot = self.check_plot(request)
            return plot.request, plot.warnings
        checked, warnings = validate(request, self.loras.current_in(self.catalog), self.limits)
        self._prompt_tools.check(checked)
        return checked, warnings

    def check_plot(self, request: XYZPlotRequest) -> CheckedPlot:
        """`validate` for a plot, with the validated cells kept for whoever runs or prices them, every cell's
        prompts within the pipeline's limits (`PromptTools.check_cells`)."""
        plot = check_plot(request, self.loras.current_in(self.catalog), self.limits, self.styles)
        self._prompt_tools.check_cells(plot.cells)
        return plot

    def _task_fn(self, task: str) -> TaskFn:
        return self._tasks[task] if self._tasks is not None else pipeline_of(task)

    def run_task(
        self,
        task: str,
        request: TaskRequest,
        timings: dict[str, float],
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        done_before: int = 0,
        total: int | None = None,
        so_far: bool = True,
    ) -> PipelineOutput:
        """One pipeline job of a validated request after its turn at the GPU gate (`should_stop` may end the
        wait), maybe batched; nothing is kept. `done_before` and `total` place its steps inside a longer job's
        progress (the SD2 x4 hires route's jobs); `so_far` False: a Stop makes no image so far (a stage)."""
        on_step = step_callback(on_progress, should_stop, timings, self._preview, self.preview_every,
                                done_before=done_before, total=total, so_far=so_far)
        if self.batcher is not None and self.batcher.takes(task, request):
            return self.batcher.run(task, request, on_step, timings, should_stop)
        waited = time.perf_counter()
        with self.gate.enter(should_stop):
            timings["gate"] = timings.get("gate", 0.0) + time.perf_counter() - waited
            return self.run_on_gpu(task, request, on_step, timings)

    def jobs_ahead(self, should_stop: Callable[[], bool]) -> int | None:
        """Jobs before the one whose caller passed `should_stop` to `run` (the same callable), while it waits for
        its turn at the GPU gate (alone, or in its batch's group); None when it is not waiting here."""
        if self.batcher is not None:
            ahead = self.batcher.ahead_of(should_stop)
            if ahead is not None:
                return ahead
        return self.gate.ahead_of(should_stop)

    @contextmanager
    def use_checkpoint(self, checkpoint: str, prompt: str = "") -> Iterator[Components]:
        """Hold `checkpoint` for one job (the caller holds the gate): its Components with this Service's embeddings
        and prompt plans lent (`PromptTools.lend`), the LoRAs `prompt` names merged in (`LoraTools.merged`)."""
        with self._host().use(checkpoint) as components, self.loras.merged(
                self._prompt_tools.lend(components), prompt) as lent:
            yield lent

    def run_on_gpu(
        self, task: str, request: TaskRequest, on_step: LatentProgressFn, timings: dict[str, float]
    ) -> PipelineOutput:
        """The task's output under the fallback ladder, with the ladder's warnings added to its own; the caller
        holds the gate (`run_task`, or the `Batcher` running a request alone)."""
        from sd2_app.api.fallback import run_with_fallbacks  # torch: see the note at the imports

        started = time.perf_counter()
        with self.use_checkpoint(request.checkpoint, request.prompt) as components:
            loaded = time.perf_counter()
            timings["load"] = timings.get("load", 0.0) + loaded - started
            task_fn = self._task_fn(task)
            output, notes = run_with_fallbacks(
                lambda mode: task_fn(components, request, on_step, mode=mode), self._host().free_memory
            )
        if notes:
            output.warnings = list(getattr(output, "warnings", []) or []) + notes
        timings["run"] = timings.get("run", 0.0) + time.perf_counter() - loaded
        return output

    def run(
        self,
        request: Request | Checked,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        owner: str | None = None,
        timings: dict[str, float] | None = None,
        keep: bool = True,
        keep_stopped: Callable[[], bool] | None = None,
        skip: threading.Event | None = None,
    ) -> Result:
        """Validate, run and keep one request (a `Checked` one is not validated again). Raises `InvalidRequest`
        or `Cancelled`; where Stop came after a sampling step and `keep_stopped()` says so (a visitor's Stop,
        A1111's /interrupt; not the app's close), the image so far instead (`Result.stopped_at`), kept as any.
        `skip` set (A1111's Skip) ends the running batch (a plot's cell) as Stop would; the next one runs.
        `owner` (the UI's session id) tags the history entry, so a public app shows each visitor their own.
        `timings`: a caller's dict of its own phases ("queue"), then it logs the split; None: logged here.
        `keep=False`: the result comes back unkept and the caller keeps it (`keep`) in its own process (a ZeroGPU
        call runs in a forked worker whose History and saver are not the app's: docs/DESIGN.md, "ZeroGPU")."""
        if isinstance(request, XYZPlotRequest) or (isinstance(request, Checked) and request.plot is not None):
            return self.plot(request, on_progress, should_stop, owner=owner, timings=timings, keep=keep, skip=skip)
        phases: dict[str, float] = {} if timings is None else timings
        checked = request if isinstance(request, Checked) else check(self, request)
        self._prompt_tools.adopt(checked.plans)  # checked in another process (ZeroGPU's), planned there
        phases["validate"] = checked.seconds
        if should_stop is not None and should_stop():
            raise Cancelled
        result = kept_so_far(lambda: self.execute(checked.request, on_progress, should_stop,
                                                  keep_stopped=keep_stopped, skip=skip), keep_stopped)
        result.warnings[:0] = [w for w in checked.warnings if w not in result.warnings]
        return self._keep(result, phases, owner, log_here=timings is None, keep=keep)

    def _keep(self, result: Result, phases: dict[str, float], owner: str | None, *, log_here: bool,
              keep: bool = True) -> Result:
        """`result` with its phases after the caller's `phases`, kept (`keep`) unless `keep` is False."""
        phases.update(result.timings)
        result.timings = phases
        return self.keep(result, owner, log_here=log_here) if keep else result

    def keep(self, result: Result, owner: str | None = None, *, log_here: bool = False) -> Result:
        """Keep `result` (sd2_app.api.keeper: provenance, PNG encode, saving, History); the log line with
        `log_here` (else the caller writes it, the UI after its own phases)."""
        self.keeper.keep(result, owner)
        if log_here:
            log_split(result.task, result.timings)
        return result

    def execute(
        self,
        checked: Request,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        done_before: int = 0,
        total: int | None = None,
        keep_stopped: Callable[[], bool] | None = None,
        skip: threading.Event | None = None,
    ) -> Result:
        """Run a validated request where jobs run (the backend, else this process); nothing is saved. Its batches run
        one after another, each a job (`batch_count.run_batches`; `keep_stopped`, `skip` as in `run`); `done_before`
        and `total` place its steps inside a longer job's progress (a plot's cells)."""
        backend = self.backend if self.backend is not None else self
        return run_request(backend.produce, checked, placed(on_progress, done_before, total), should_stop,
                           keep_stopped, skip)

    def produce(
        self,
        checked: Request,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result:
        """Run an already validated request on this process's manager; the Result is not saved or kept. The
        `Backend` side of `run`: a remote worker (sd2_app.serve) calls it on its own Service."""
        task = checked.task
        timings: dict[str, float] = {}
        log.info("%s on %s: %d steps, seed %d", task, checked.checkpoint, checked.sampling.steps, checked.sampling.seed)
        try:
            if getattr(getattr(checked, "hires", None), "upscaler", None) == X4_UPSCALER:  # three manager jobs
                output = run_hires_x4(self, checked, on_progress, should_stop, timings)
            else:
                output = self.run_task(task, checked, timings, on_progress, should_stop)
        except Cancelled as stop:  # the image so far as a Result, which only `run` keeps (not a plot, a replica)
            raise with_result(stop, task, checked, timings)
        return result_of(task, checked, output, timings)

    def plot(
        self,
        request: XYZPlotRequest | Checked,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        owner: str | None = None,
        on_cell: CellFn | None = None,
        timings: dict[str, float] | None = None,
        keep: bool = True,
        skip: threading.Event | None = None,
    ) -> Result:
        """An X/Y/Z plot (`plot_cells`): grids, then each finished cell (`on_cell(cell, image, seconds)` as each ends);
        Stop returns the finished cells (`stopped`; none: Cancelled). `timings`, `keep` and `skip` as in `run`."""
        plot = request.plot if isinstance(request, Checked) else request  # a Checked plot is not checked again
        assert plot is not None, "a Checked plot carries its cells"
        self._prompt_tools.adopt(getattr(request, "plans", ()))  # a Checked plot's, as in `run`
        result = run_plot(self, plot, on_progress, should_stop, on_cell, skip)
        return self._keep(result, {} if timings is None else timings, owner, log_here=timings is None, keep=keep)

    # ---- keeping results (sd2_app.api.keeper) ------------------------------------------------------
    @property
    def outputs_dir(self) -> Path | None:
        """Where results are saved; None when saving is off."""
        return self.keeper.outputs_dir

    @property
    def watermark(self) -> bool:
        """Whether kept results carry the invisible watermark (--no-watermark turns it off)."""
        return self.keeper.watermark

    @watermark.setter
    def watermark(self, on: bool) -> None:
        self.keeper.watermark = on

    @property
    def last_seed(self) -> int | None:  # the seed of the result kept last
        return self.keeper.last_seed

    def flush_saves(self, timeout: float | None = None) -> bool:
        """Wait until every result handed to the background writer is on disk (False: `timeout` passed first)."""
        return self.keeper.flush(timeout)

    def disk_usage(self) -> tuple[int, int, float | None] | None:
        """(files, bytes, days kept) of the saved results; None when saving is off."""
        return self.keeper.disk_usage()

    def history(self, owner: str | None = None) -> list[HistoryEntry]:
        """Recent results, newest first; only `owner`'s when one is given (the UI always gives one)."""
        return self.keeper.history(owner)

    # ---- PNG info ----------------------------------------------------------------------------------
    @staticmethod
    def read_parameters(image: Image.Image | str | Path | BinaryIO) -> tuple[str | None, dict[str, Any]]:
        """The A1111 `parameters` text of a PNG and its parsed fields ({} when it has none)."""
        text = read_png_parameters(image)
        return text, (parse_parameters(text) if text else {})

    read_parameters_text = staticmethod(read_png_parameters)  # a PNG's A1111 `parameters` text, unparsed, or None

    @staticmethod
    def parse_parameters(text: str) -> dict[str, Any]:
        """The fields of an A1111 `parameters` text (`read_parameters`'s second half, for pasted text)."""
        return parse_parameters(text)

