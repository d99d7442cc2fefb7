"""The task table is the one source of per-task defaults: requests, the CLI and the catalog agree with it."""

from __future__ import annotations

import importlib

import pytest

from sd2_app.__main__ import build_parser
from sd2_app.api.requests import REQUEST_TYPES, Sampling, XYZPlotRequest, task_sampling
from sd2_app.api.tasks import TASKS, default_checkpoint
from sd2_app.checkpoints.catalog import REGISTRY, checkpoints_for_task


def test_every_task_has_one_request_type_named_after_it() -> None:
    assert list(REQUEST_TYPES) == list(TASKS)
    assert all(cls.task == name for name, cls in REQUEST_TYPES.items())
    assert XYZPlotRequest.task == "xyz_plot"  # runs the other tasks, so it has no row


@pytest.mark.parametrize("task", list(TASKS))
def test_request_defaults_come_from_the_table(task: str) -> None:
    spec = TASKS[task]
    fields = REQUEST_TYPES[task].__dataclass_fields__
    assert fields["checkpoint"].default == spec.checkpoint
    sampling = fields["sampling"].default_factory()  # type: ignore[misc]
    assert (sampling.sampler, sampling.steps, sampling.cfg_scale) == (spec.sampler, spec.steps, spec.cfg_scale)
    assert sampling == task_sampling(task)
    assert ("strength" in fields) == (spec.strength is not None)
    if spec.strength is not None:
        assert fields["strength"].default == spec.strength


def test_upscale_differs_from_the_shared_sampling_defaults() -> None:
    assert task_sampling("upscale") == Sampling(sampler="DDIM", steps=50, cfg_scale=9.0)
    assert task_sampling("txt2img") == Sampling()


@pytest.mark.parametrize("task", list(TASKS))
def test_default_checkpoint_qualifies_and_pipeline_resolves(task: str) -> None:
    spec = TASKS[task]
    assert spec.checkpoint in checkpoints_for_task(task, REGISTRY)
    module, function = spec.pipeline.split(":")
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("task", list(TASKS))
def test_cli_defaults_are_the_table(task: str) -> None:
    spec = TASKS[task]
    argv = [task, "--prompt", "x"] + ([] if task == "txt2img" else ["--image", "in.png"])
    argv += ["--mask", "m.png"] if task == "inpaint" else []
    args = build_parser().parse_args(argv)
    assert (args.model, args.sampler, args.steps, args.cfg_scale) == (spec.checkpoint, spec.sampler, spec.steps,
                                                                     spec.cfg_scale)
    assert getattr(args, "strength", None) == spec.strength


def test_default_checkpoint_falls_back_to_the_first_available() -> None:
    assert default_checkpoint("txt2img", ["sd2-base", "sd21-base"]) == "sd21-base"
    assert default_checkpoint("txt2img", ["sd2-base", "sd2"]) == "sd2-base"


def test_import_pipelines_imports_every_tasks_module_in_the_calling_thread() -> None:
    """The engine builder calls it at start-up (app.py, each Serve replica) so no two jobs' threads import the
    pipelines at once."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from sd2_app.api.tasks import TASKS, import_pipelines\n"
        "import_pipelines()\n"
        "names = [spec.pipeline.split(':')[0] for spec in TASKS.values()] + ['sd2_app.pipelines.prompt_chunks']\n"
        "print(len(names), all(name in sys.modules for name in names))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, imported = done.stdout.split()
    assert int(count) >= 7 and imported == "True"
