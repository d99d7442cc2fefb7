"""Several requests in one UNet batch, each image the one its request gets alone (docs/DESIGN.md, "Batching
across users").

Each request is prepared exactly as its solo run prepares it (`PreparedRun`: its own generator, prompt encoding
and start latents), the start latents are concatenated, the one shared loop denoises them together, and each
request's slice of the result is finished (decoded, labelled) on its own, as a batch of its own size. What
the requests share in the loop is only what their solo runs compute the same way: the schedule, the sampler,
the guidance settings. Per request stay:

- noise: the sampler draws through `GeneratorParts`, each request's rows from its own generator;
- text: the context is each request's [uncond; cond] halves regrouped as [all unconds; all conds], the layout
  the guided model splits (pipelines/loop.py, `make_guided_model`);
- progress, previews and Stop: each request's `on_step` sees its own slice of the clean-latent estimate;
  one that raises `Cancelled` drops out (its rows are still computed, its image is not finished), the others
  go on; when every request has stopped, the run stops.

Only requests whose start latents and contexts have the same shape go into one batch (the same prompt chunk
count k: a longer context changes every image's attention, padding is not exact), with the same prompt-editing
phases of their UNet calls (a plain prompt has one; pipelines/prompt_schedule.py), and only runs that call
the same UNet (a seamless-tiling request's run calls its own circular view, pipelines/seamless.py, so it is
never batched); the others run in their own batches, one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from sd2_app.checkpoints.components import Components
from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.loop import LatentProgressFn
from sd2_app.pipelines.output import PipelineOutput
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.sampling import PreparedRun
from sd2_app.samplers.base import GeneratorParts
from sd2_app.api.requests import TaskRequest, guidance_on

PrepareFn = Callable[[Components, TaskRequest, RunMode], PreparedRun]  # a task's `prepare_<task>`
Outcome = PipelineOutput | BaseException  # one request's output, or what went wrong for it alone


def shared_shape(prepared: PreparedRun) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """What must match to share a batch: the start latents' and the context's shapes past the batch axis
    (a scheduled context's phase count too), and the context phase of each UNet call."""
    context = prepared.job.context
    return (tuple(prepared.start.shape[1:]), (*context.shape[:-3], *context.shape[-2:]), prepared.job.phases)


def _stacked_context(runs: Sequence[PreparedRun]) -> torch.Tensor:
    """The runs' contexts as one (2B|B, 77·k, D) batch ((P, 2B|B, 77·k, D) for phases): every uncond half
    first, then every cond half."""
    contexts = [run.job.context for run in runs]
    rows = contexts[0].ndim - 3  # the batch axis: 0, or 1 after the phase axis
    if not guidance_on(runs[0].job.sampling.cfg_scale):  # one half each
        return torch.cat(contexts, dim=rows)
    halves = [context.chunk(2, dim=rows) for context in contexts]
    return torch.cat([uncond for uncond, _ in halves] + [cond for _, cond in halves], dim=rows)


def _split_steps(
    on_steps: Sequence[LatentProgressFn | None], rows: Sequence[int], live: list[bool]
) -> LatentProgressFn:
    """One `on_step` for the batch: each live request's with its own rows; a `Cancelled` one drops out."""
    bounds = [sum(rows[:index]) for index in range(len(rows) + 1)]

    def on_step(step: int, steps: int, x0: torch.Tensor) -> None:
        for index, report in enumerate(on_steps):
            if not live[index] or report is None:
                continue
            try:
                report(step, steps, x0[bounds[index] : bounds[index + 1]])
            except Cancelled:
                live[index] = False
        if not any(live):
            raise Cancelled

    return on_step


def _denoise_together(
    runs: Sequence[PreparedRun], on_steps: Sequence[LatentProgressFn | None], live: list[bool]
) -> list[torch.Tensor]:
    """The runs' denoised latents, each (B_i, 4, h, w), from one loop over their concatenated start latents."""
    rows = [int(run.start.shape[0]) for run in runs]
    generators = GeneratorParts.joined([(run.job.generator, count) for run, count in zip(runs, rows)])
    first = runs[0].job  # the plan and guidance every run shares; the batch's size, noise and text are all of them
    job = replace(first, sampling=replace(first.sampling, batch_size=sum(rows)), generator=generators,
                  context=_stacked_context(runs))
    latents = job.denoise(torch.cat([run.start for run in runs]), on_step=_split_steps(on_steps, rows, live))
    return list(latents.split(rows))


def _finish(run: PreparedRun, latents: torch.Tensor) -> Outcome:
    try:
        return run.finish(latents)
    except Exception as error:  # this request's decode failed (NaN/inf, memory): the others are unaffected
        return error


@torch.inference_mode()
def run_batch(
    components: Components,
    requests: Sequence[TaskRequest],
    on_steps: Sequence[LatentProgressFn | None],
    prepare: PrepareFn,
    mode: RunMode = NORMAL,
) -> list[Outcome]:
    """Each request's output (or its own error, `Cancelled` for one that stopped), in the order given.

    The requests must agree on everything the loop shares (api/batching.py, `batch_key`). A request refused
    while it is prepared (`InvalidRequest`) gets that as its outcome; any other error (out of memory in the
    preparation or in the shared loop) propagates, and the caller decides (api/batching.py reruns each request
    alone).
    """
    outcomes: list[Outcome] = [Cancelled()] * len(requests)
    runs: dict[int, PreparedRun] = {}
    for index, request in enumerate(requests):
        try:
            runs[index] = prepare(components, request, mode)
        except InvalidRequest as error:  # this request's own problem (a prompt too long): the others go on
            outcomes[index] = error
    groups: dict[tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]], list[int]] = {}
    for index, run in runs.items():  # the loop calls its first run's UNet: only runs over the same one share
        groups.setdefault((id(run.job.components.unet), *shared_shape(run)), []).append(index)
    for members in groups.values():
        live = [True] * len(members)
        try:
            latents = _denoise_together([runs[i] for i in members], [on_steps[i] for i in members], live)
        except Cancelled:
            continue  # every request of this group stopped
        for index, alive, member_latents in zip(members, live, latents):
            if alive:
                outcomes[index] = _finish(runs[index], member_latents)
    return outcomes
