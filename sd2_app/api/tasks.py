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
                 sampler="DDIM", steps=50, cfg_scale=9.0),
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
