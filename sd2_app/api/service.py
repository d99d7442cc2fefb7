"""The API of the UI and the CLI: validate a request, run its pipeline under the model manager, keep the result.

Only this module knows the `ModelManager`. `Service.run` reports progress through a callback (step, total,
preview image or None) and checks a `should_stop` callable at every step, raising `Cancelled` when it says
so; the UI runs it in a worker thread and streams the callbacks. Every result is encoded as PNG once, with
its parameters, written to a dated outputs folder (unless saving is off; `sd2_app.api.saver`, on a writer
thread with `save_in_background`) and kept in a short in-memory history. Each phase's seconds go into the
Result's `timings` (`sd2_app.api.timing`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from sd2_app.api.checks import Catalog, Limits
from sd2_app.api.gate import GpuGate
from sd2_app.api.hires_x4 import run_hires_x4
from sd2_app.api.model_host import ModelHost
from sd2_app.api.outputs import folder_usage
from sd2_app.api.plot import CellFn, run_plot
from sd2_app.api.prompt_tools import PromptTools
from sd2_app.api.requests import Request, TaskRequest, XYZPlotRequest
from sd2_app.api.results import Backend, HistoryEntry, ProgressFn, Result  # noqa: F401  # Backend: re-exported
from sd2_app.api.saver import ResultWriter
from sd2_app.api.timing import log_split, timed
from sd2_app.api.tasks import pipeline_of
from sd2_app.api.validation import validate
from sd2_app.checkpoints.allowlist import allowed_repos as env_allowed_repos, custom_specs
from sd2_app.checkpoints.catalog import REGISTRY, CheckpointSpec
from sd2_app.errors import Cancelled, InvalidRequest

if TYPE_CHECKING:
    from sd2_app.api.batching import Batcher
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.pipelines.loop import LatentProgressFn
    from sd2_app.pipelines.output import PipelineOutput

# The imports left inside functions below are of modules that load torch (sd2_app.samplers, sd2_app.pipelines
# and the fallback ladder over them): the UI imports this module, and the UI imports no torch.

log = logging.getLogger(__name__)

TaskFn = Callable[..., "PipelineOutput"]  # (components, request, on_step, *, mode) -> output


def _default_catalog(registry: Mapping[str, CheckpointSpec]) -> Catalog:
    from sd2_app.samplers import SAMPLERS  # torch: see the note at the imports

    return Catalog(
        samplers={name: bool(spec.supports_karras) for name, spec in SAMPLERS.items()},
        resolutions={key: spec.resolution for key, spec in registry.items()},
        tasks={key: tuple(spec.tasks) for key, spec in registry.items()},
        labels={key: spec.label for key, spec in registry.items()},
        calls_per_step={name: int(spec.order) for name, spec in SAMPLERS.items()},
    )


def _default_preview(latents: Any) -> Image.Image | None:
    from sd2_app.pipelines.preview import preview_images  # torch: see the note at the imports

    # At latent size (1/8 of the image): the job's thread pays a 4x3 product and a small copy; whoever shows it
    # enlarges it (the UI's live preview, the A1111 progress route).
    return preview_images(latents[:1])[0]


class Service:
    """Validation, seeds, progress, cancellation, saving and history around the task pipelines."""

    def __init__(
        self,
        manager: ModelHost | None,
        *,
        registry: Mapping[str, CheckpointSpec] | None = None,
        catalog: Catalog | None = None,
        tasks: Mapping[str, TaskFn] | None = None,
        preview: Callable[[Any], Image.Image | None] | None = None,
        limits: Limits = Limits(),
        allowed_repos: Iterable[str] | None = None,  # Hub repos users may pick; None: $SD2APP_ALLOWED_REPOS
        outputs_dir: str | Path | None = "outputs",
        keep_outputs_days: float | None = None,  # delete saved results older than this (None: keep them)
        history_size: int = 50,
        preview_every: int = 5,
        watermark: bool = True,  # the invisible "SDV2" watermark in every result (--no-watermark turns it off)
        backend: Backend | None = None,
        concurrency: int = 1,
        embeddings: EmbeddingLibrary | None = None,  # None: no textual-inversion embeddings
        save_in_background: bool = False,  # write results on a writer thread after the request returns
    ) -> None:
        """`manager` None gives a service that validates but cannot run (tools and tests)."""
        self.manager = manager
        self.embeddings = embeddings
        self._prompt_tools = PromptTools(self)
        # Where validated requests run: None is this process's manager; sd2_app.serve gives a remote one.
        self.backend = backend
        self.concurrency = concurrency  # jobs the GPU queue runs at once: 1 locally, the replicas' total remotely
        if registry is None:
            registry = manager.registry if manager is not None else REGISTRY
        self.registry: dict[str, CheckpointSpec] = dict(registry)
        custom = custom_specs(env_allowed_repos() if allowed_repos is None else allowed_repos, self.registry)
        if custom:  # the operator's allow-list: the manager must know them too, the UI lists them
            self.registry.update(custom)
            if manager is not None:
                manager.add_checkpoints(custom)
        self.catalog = catalog or _default_catalog(self.registry)
        self._tasks = dict(tasks) if tasks is not None else None
        self._preview = preview or _default_preview
        self.limits = limits
        self.outputs_dir = Path(outputs_dir) if outputs_dir is not None else None
        self.keep_outputs_days = keep_outputs_days
        self._writer = (ResultWriter(self.outputs_dir, keep_days=keep_outputs_days, background=save_in_background)
                        if self.outputs_dir is not None else None)
        self.preview_every = max(1, preview_every)
        self.watermark = watermark
        self.gate = GpuGate()  # one job at a time on the GPU, whichever front end sent it
        self.batcher: Batcher | None = None  # requests that share one UNet batch (api.batching.enable turns it on)
        self._history: deque[HistoryEntry] = deque(maxlen=history_size)
        self._lock = threading.Lock()  # guards the history
        self.last_seed: int | None = None

    # ---- catalog ---------------------------------------------------------------------------------
    def samplers(self) -> list[str]:
        """Sampler names in the order the UI lists them."""
        return list(self.catalog.samplers)

    def supports_karras(self, sampler: str) -> bool:
        return bool(self.catalog.samplers.get(sampler, False))

    def checkpoints(self, task: str) -> list[tuple[str, str]]:
        """(label, key) pairs of the checkpoints that can run `task` (a dropdown's choices)."""
        return [(self.catalog.labels.get(k, k), k) for k, tasks in self.catalog.tasks.items() if task in tasks]

    def resolution(self, checkpoint: str) -> int:
        """The checkpoint's native side in pixels (the UI's default width and height)."""
        if checkpoint not in self.catalog.resolutions:
            raise InvalidRequest(f"Unknown checkpoint {checkpoint!r}.")
        return self.catalog.resolutions[checkpoint]

    # ---- models ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The manager's report: per checkpoint where it is loaded and from which repo, and memory per tier."""
        models, memory = self._host().report()
        return {"models": models, "memory": memory}

    def load(self, checkpoint: str) -> None:
        if checkpoint not in self.registry:
            raise InvalidRequest(f"Unknown checkpoint {checkpoint!r}.")
        with self.gate.enter():
            self._host().load(checkpoint)

    def unload(self, checkpoint: str | None = None) -> None:
        """Unload one checkpoint, or everything when `checkpoint` is None."""
        if checkpoint is not None and checkpoint not in self.registry:
            raise InvalidRequest(f"Unknown checkpoint {checkpoint!r}.")
        for key in [checkpoint] if checkpoint is not None else list(self.registry):
            self._host().unload(key)

    # ---- prompts -----------------------------------------------------------------------------------
    def count_tokens(self, text: str, checkpoint: str) -> str:
        """The prompt box's counter, "23/75" (A1111's count), without touching the GPU queue."""
        return self._prompt_tools.count(text, checkpoint)

    def embedding_names(self) -> list[str]:
        """Names of the textual-inversion embeddings a prompt may use."""
        return self._prompt_tools.embedding_names()

    def refused_embeddings(self) -> dict[str, str]:
        """Files in the embeddings folder that are not used, each with the reason."""
        return dict(self.embeddings.refused) if self.embeddings is not None else {}

    # ---- running ---------------------------------------------------------------------------------
    def _host(self) -> ModelHost:
        if self.manager is None:
            raise RuntimeError("this Service was made without a model manager: it validates, it cannot run")
        return self.manager

    def validate(self, request: Request) -> tuple[Request, list[str]]:
        """The checked request and its warnings (raises `InvalidRequest`)."""
        return validate(request, self.catalog, self.limits)

    def _task_fn(self, task: str) -> TaskFn:
        return self._tasks[task] if self._tasks is not None else pipeline_of(task)

    def _step_callback(
        self,
        done_before: int,
        total: int | None,
        on_progress: ProgressFn | None,
        should_stop: Callable[[], bool] | None,
        timings: dict[str, float] | None = None,
    ) -> LatentProgressFn:
        """The pipeline's `on_step(step, steps, latents)`: stop check first, then progress and a cheap preview.

        `total` None reports the pipeline's own count: the steps it really runs, e.g. int(N * strength) for
        img2img, which is fewer than the requested N. The previews' seconds add up in `timings["preview"]`.
        """
        timings = timings if timings is not None else {}

        def on_step(step: int, steps: int, latents: Any) -> None:
            if should_stop is not None and should_stop():
                raise Cancelled
            if on_progress is None:
                return
            done = done_before + step
            preview = None
            if latents is not None and step < steps and step % self.preview_every == 0:
                with timed(timings, "preview"):
                    preview = self._preview(latents)
            on_progress(done, steps if total is None else total, preview)

        return on_step

    def _run_pipeline(
        self,
        task: str,
        request: TaskRequest,
        on_step: LatentProgressFn,
        timings: dict[str, float],
        should_stop: Callable[[], bool] | None = None,
    ) -> PipelineOutput:
        """The task's output after its turn at the GPU gate (`should_stop` may end the wait), maybe batched."""
        if self.batcher is not None and self.batcher.takes(task, request):
            return self.batcher.run(task, request, on_step, timings, should_stop)
        waited = time.perf_counter()
        with self.gate.enter(should_stop):
            timings["gate"] = timings.get("gate", 0.0) + time.perf_counter() - waited
            return self._run_on_gpu(task, request, on_step, timings)

    def _run_on_gpu(
        self, task: str, request: TaskRequest, on_step: LatentProgressFn, timings: dict[str, float]
    ) -> PipelineOutput:
        """The task's output under the fallback ladder, with the ladder's warnings added to its own."""
        from sd2_app.api.fallback import run_with_fallbacks  # torch: see the note at the imports

        started = time.perf_counter()
        manager = self._host()
        with manager.use(request.checkpoint) as components:
            loaded = time.perf_counter()
            timings["load"] = timings.get("load", 0.0) + loaded - started
            task_fn = self._task_fn(task)
            components = self._prompt_tools.lend_embeddings(components)
            output, notes = run_with_fallbacks(
                lambda mode: task_fn(components, request, on_step, mode=mode), manager.free_memory
            )
        if notes:
            output.warnings = list(getattr(output, "warnings", []) or []) + notes
        timings["run"] = timings.get("run", 0.0) + time.perf_counter() - loaded
        return output

    def run(
        self,
        request: Request,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        owner: str | None = None,
        timings: dict[str, float] | None = None,
    ) -> Result:
        """Validate, run and keep one request. Raises `InvalidRequest` or `Cancelled`.

        `owner` (the UI's session id) tags the history entry, so a public app shows each visitor their own.
        `timings`: a caller's dict of its own phases ("queue"), then it logs the split; None: logged here.
        """
        if isinstance(request, XYZPlotRequest):
            return self.plot(request, on_progress, should_stop, owner=owner)
        phases: dict[str, float] = {} if timings is None else timings
        with timed(phases, "validate"):
            checked, warnings = self.validate(request)
        if should_stop is not None and should_stop():
            raise Cancelled
        result = self.execute(checked, on_progress, should_stop)
        result.warnings[:0] = [w for w in warnings if w not in result.warnings]
        phases.update(result.timings)
        result.timings = phases
        self._keep(result, owner)
        if timings is None:
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
    ) -> Result:
        """Run a validated request where jobs run (the backend, else this process); nothing is saved.

        `done_before` and `total` place its steps inside a longer job's progress (an X/Y/Z plot's cells).
        """
        backend = self.backend if self.backend is not None else self
        report = on_progress
        if report is not None and (done_before or total is not None):
            def report(done: int, steps: int, preview: Image.Image | None) -> None:
                on_progress(done_before + done, steps if total is None else total, preview)
        return backend.produce(checked, report, should_stop)

    def produce(
        self,
        checked: Request,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result:
        """Run an already validated request on this process's manager; the Result is not saved or kept.

        This is the `Backend` side of `run`: a remote worker (sd2_app.serve) calls it on its own Service.
        """
        task = checked.task
        timings: dict[str, float] = {}
        log.info("%s on %s: %d steps, seed %d", task, checked.checkpoint, checked.sampling.steps, checked.sampling.seed)
        if getattr(getattr(checked, "hires", None), "upscaler", None) == "SD2 x4":  # three manager jobs
            output = run_hires_x4(self, checked, on_progress, should_stop, timings)
        else:
            on_step = self._step_callback(0, None, on_progress, should_stop, timings)
            output = self._run_pipeline(task, checked, on_step, timings, should_stop)
        result = Result(
            task=task,
            request=checked,
            images=list(output.images),
            seed=checked.sampling.seed,
            warnings=list(getattr(output, "warnings", []) or []),
            timings=timings,
            mask_image=getattr(output, "mask_image", None),
            depth_image=getattr(output, "depth_image", None),
        )
        return result

    def plot(
        self,
        request: XYZPlotRequest,
        on_progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        *,
        owner: str | None = None,
        on_cell: CellFn | None = None,
    ) -> Result:
        """An X/Y/Z plot (sd2_app.api.plot): grids first, then each finished cell; `on_cell(cell, image,
        seconds)` as each cell finishes. Stop returns the finished cells (`stopped`); none finished: Cancelled."""
        return self._keep(run_plot(self, request, on_progress, should_stop, on_cell), owner)

    # ---- keeping results ---------------------------------------------------------------------------
    def flush_saves(self, timeout: float | None = None) -> bool:
        """Wait until every result handed to the background writer is on disk (False: `timeout` passed first)."""
        return self._writer.flush(timeout) if self._writer is not None else True

    def disk_usage(self) -> tuple[int, int, float | None] | None:
        """(files, bytes, days kept) of the saved results; None when saving is off."""
        if self.outputs_dir is None:
            return None
        files, nbytes = folder_usage(self.outputs_dir)
        return files, nbytes, self.keep_outputs_days

    def _keep(self, result: Result, owner: str | None = None) -> Result:
        """Provenance (the watermark unless off, the XMP marker), one PNG encode, saving, history; each timed."""
        from sd2_app.pipelines.metadata import encode_pngs, mark_ai_generated  # torch: see the note at the imports
        from sd2_app.pipelines.watermark import embed

        timings = result.timings
        with timed(timings, "mark"):
            result.images = [mark_ai_generated(embed(im) if self.watermark else im) for im in result.images]
        with timed(timings, "encode"):
            result.png = encode_pngs(result.images)
        if self._writer is not None:
            with timed(timings, "save"):
                try:
                    result.saved = self._writer.save(result)
                except OSError as error:  # a full disk or a read-only folder must not throw the images away
                    log.warning("could not save to %s: %s", self.outputs_dir, error)
                    result.warnings.append(
                        f"The images could not be saved to the outputs folder ({error.strerror}).")
        with timed(timings, "history"):
            entry = HistoryEntry(result.created, result.task, result.seed, result.parameters, tuple(result.images),
                                 tuple(result.saved), owner)
            with self._lock:
                self._history.appendleft(entry)
                self.last_seed = result.seed
        return result

    def history(self, owner: str | None = None) -> list[HistoryEntry]:
        """Recent results, newest first; only `owner`'s when one is given (the UI always gives one)."""
        with self._lock:
            return [entry for entry in self._history if owner is None or entry.owner == owner]

    # ---- PNG info ----------------------------------------------------------------------------------
    @staticmethod
    def read_parameters(image: Image.Image | str | Path) -> tuple[str | None, dict[str, Any]]:
        """The A1111 `parameters` text of a PNG and its parsed fields ({} when it has none)."""
        from sd2_app.pipelines.metadata import parse_parameters, read_png_parameters  # torch: see the imports

        text = read_png_parameters(image)
        return text, (parse_parameters(text) if text else {})
