"""The task table: one row per task the app runs, with the defaults every front end shows and sends.

Validation, the service, the CLI and the UI read their per-task defaults here, so a default changes in one
place. A row says what a user gets when they leave a field alone:

- `checkpoint`: the checkpoint preselected (which checkpoints *qualify* is a fact about each checkpoint:
  `CheckpointSpec.tasks` in `sd2_app/checkpoints/catalog.py`, listed by `checkpoints_for_task`);
- `sampler`, `steps`, `cfg_scale`: the sampling defaults (`requests.Sampling` for that task);
- `strength`: the denoising strength of the tasks that start from an image (None: the task has none);
- `pipeline`: the function that runs it, as "module:function" (imported only when a task runs, so this
  module stays free of torch and the UI can import it);
- `prepare`: the function that prepares its run for a batch of several users' requests (`PreparedRun`,
  pipelines/batch.py), as "module:function"; None: its requests always run alone (api/batching.py).

Adding a task: a row here, a request dataclass in `requests.py` (with `task = "<name>"`), its checks in
`task_checks.py`, a pipeline function, a CLI sub-command and a UI tab; each of those reads this row.
This module imports nothing of the app, so any layer may import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sd2_app.samplers.registry import SAMPLERS

DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_STEPS = 25
DEFAULT_CFG_SCALE = 7.5

PLOT_SAMPLERS = ("DPM++ 2M", "Euler a", "Euler", "DDIM", "UniPC", "DPM++ 2M SDE")
"""The samplers an X/Y/Z plot's sampler axis starts with (the most used ones)."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: its name (the request's `task`), what the UI calls it, and its defaults."""

    name: str
    label: str
    checkpoint: str  # the default checkpoint key (sd2_app.checkpoints.catalog.REGISTRY)
    pipeline: str  # "module:function"; the function is (components, request, run) -> output
    sampler: str = DEFAULT_SAMPLER  # a key of sd2_app.samplers.SAMPLERS
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG_SCALE
    strength: float | None = None  # None: the task does not start from a noised image
    prepare: str | None = None  # "module:function" (components, request, mode) -> PreparedRun; None: never batched
    # whether the tab lists the LoRAs: they are made for the SD 2 models, which the x4 upscaler is not (a prompt's
    # tag is still read everywhere, and refused where the LoRA does not fit)
    lists_loras: bool = True


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("txt2img", "Text to image", "sd21-base", "sd2_app.pipelines.txt2img:txt2img",
                 prepare="sd2_app.pipelines.txt2img:prepare_txt2img"),
        TaskSpec("img2img", "Image to image", "sd21-base", "sd2_app.pipelines.img2img:img2img", strength=0.75,
                 prepare="sd2_app.pipelines.img2img:prepare_img2img"),
        TaskSpec("inpaint", "Inpaint", "sd2-inpainting", "sd2_app.pipelines.inpaint:inpaint", strength=1.0),
        TaskSpec("outpaint", "Outpaint", "sd2-inpainting", "sd2_app.pipelines.outpaint:outpaint", strength=1.0),
        TaskSpec("upscale", "Upscale x4", "x4-upscaler", "sd2_app.pipelines.upscale:upscale",
                 sampler="DDIM", steps=50, cfg_scale=9.0, lists_loras=False),
        TaskSpec("depth", "Depth to image", "sd2-depth", "sd2_app.pipelines.depth:depth2img", strength=0.7),
    )
}


def default_checkpoint(task: str, available: list[str]) -> str:
    """The task's default checkpoint when `available` offers it, else the first available one."""
    preferred = TASKS[task].checkpoint
    return preferred if preferred in available else available[0]


def _function(path: str) -> Callable[..., Any]:
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


def pipeline_of(task: str) -> Callable[..., Any]:
    """The pipeline function named in `task`'s row (its module is imported on first use)."""
    return _function(TASKS[task].pipeline)


def prepare_of(task: str) -> Callable[..., Any]:
    """The batch preparation named in `task`'s row (raises KeyError for a task that never batches)."""
    prepare = TASKS[task].prepare
    if prepare is None:
        raise KeyError(f"{task} requests are never batched")
    return _function(prepare)


def import_pipelines() -> None:
    """Import every task's pipeline module (and the prompt tokenizer's, and every sampler's) now, in the calling
    thread.

    The app calls this once at start-up: imported lazily, the first job's thread and the token counter's thread
    can meet in Python's per-module import locks over the package's circular imports (`_DeadlockError`).
    """
    importlib.import_module("sd2_app.pipelines.prompt_chunks")
    for task in TASKS:
        pipeline_of(task)
    for sampler in SAMPLERS.values():  # the table names them; the loop imports one on first use (`SamplerSpec.fn`)
        sampler.fn


# What a job imports inside functions besides the pipelines: the fallback ladder (`Service.run_on_gpu`), the live
# preview (`api.progress.latent_preview`), the loaders (`sd2_app.loading`, read lazily by `manager.plan`), and the
# libraries those import where they are used (transformers' classes, the Hub client, its progress bars, whose
# first bar makes a `multiprocessing` lock: tqdm/std.py, `TqdmDefaultWriteLock`).
JOB_MODULES = ("sd2_app.api.fallback", "sd2_app.pipelines.preview", "sd2_app.loading.parts",
               "sd2_app.loading.tokenizer", "sd2_app.loading.hub", "huggingface_hub", "huggingface_hub.errors",
               "tqdm.auto", "multiprocessing.synchronize", "transformers.modeling_outputs")
TRANSFORMERS_CLASSES = ("CLIPTextConfig", "CLIPTextModel", "CLIPTokenizer", "DPTForDepthEstimation",
                        "DPTImageProcessor")


def import_job_modules() -> None:
    """`import_pipelines`, and every other module a job imports on first use (`JOB_MODULES`), now.

    For a Service whose jobs run in processes forked from this one (ZeroGPU's workers: docs/DESIGN.md,
    "ZeroGPU"): a thread importing a module holds that module's import lock, and in a child forked meanwhile
    nobody releases it, so a job there that imports the same module waits forever (Python docs, `os.fork`).
    Imported here, before the first fork, a job's imports are only lookups in `sys.modules`."""
    import_pipelines()
    for name in JOB_MODULES:
        importlib.import_module(name)
    transformers = importlib.import_module("transformers")
    for name in TRANSFORMERS_CLASSES:  # its lazy module imports each class's module on first access
        getattr(transformers, name)
