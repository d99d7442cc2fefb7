"""Per-request set-up shared by the tasks: the seeded noise source, noise draws, the schedule slice, the `Job`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.loop import Conditioning, LatentProgressFn, Tiling, run_sampling
from sd2_app.pipelines.output import PipelineOutput
from sd2_app.pipelines.prompt_plan import PromptSteps, prompt_steps
from sd2_app.pipelines.prompt_schedule import encode_prompt_schedule
from sd2_app.pipelines.run_mode import NORMAL, RunMode
from sd2_app.pipelines.vae_io import decode_in
from sd2_app.api.requests import ETA_SAMPLERS, Sampling, TaskRequest, guidance_on, request_seeds
from sd2_app.checkpoints.components import Components
from sd2_app.samplers import SAMPLERS, keep_last, make_schedule, start_at
from sd2_app.samplers.base import GeneratorParts, NoiseSource, randn_from
from sd2_app.samplers.registry import SamplerSpec
from sd2_app.samplers.schedules import Schedule, SchedulerConfig

if TYPE_CHECKING:
    from sd2_app.loading.embeddings import TextualInversion

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingPlan:
    """The sampler, its (possibly strength-cut) schedule and extra keyword arguments for its function."""

    spec: SamplerSpec
    schedule: Schedule
    options: dict[str, Any]


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator seeded with `seed` on the components' device, so a seed reproduces the reference's draws."""
    return torch.Generator(device=device).manual_seed(int(seed))


def noise_source(device: torch.device, seeds: Sequence[int]) -> NoiseSource:
    """Where a batch of `len(seeds)` images draws its noise: each image's rows from a generator of its own seed
    (api/requests.py, `numbered_seeds`), a plain generator for a single image. Every draw of the batch's shape
    (B, ...) is then the B draws each image makes alone (samplers.base.GeneratorParts), so an image is the same
    whichever batch it is made in; diffusers draws so when given one generator per image (utils/torch_utils.py,
    `randn_tensor` with a list)."""
    generators = [make_generator(device, seed) for seed in seeds]
    return generators[0] if len(generators) == 1 else GeneratorParts(tuple((generator, 1) for generator in generators))


def restarted(source: NoiseSource) -> NoiseSource:
    """`source` anew: the same seeds, nothing drawn yet."""
    if isinstance(source, GeneratorParts):
        return GeneratorParts(tuple((restarted(generator), rows) for generator, rows in source.parts))
    return make_generator(source.device, source.initial_seed())


def draw_noise(
    shape: tuple[int, ...], generator: NoiseSource, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Unit normal noise drawn like the reference's `randn_tensor` (in the model dtype), returned as fp32.

    `generator` may be a batch's `GeneratorParts`: each request's rows then come from its own generator."""
    return randn_from(shape, generator, dtype).to(device=device, dtype=torch.float32)


def plan_sampling(config: SchedulerConfig, sampling: Sampling, strength: float | None = None, *,
                  last_steps: int | None = None) -> SamplingPlan:
    """Schedule for the request's sampler; with `strength`, only its last `int(N * strength)` steps; with
    `last_steps`, only that many of its last steps (the hires fix's second pass)."""
    schedule = make_schedule(config, sampling.sampler, sampling.steps, schedule=sampling.schedule)
    spec = SAMPLERS[sampling.sampler]  # the name is known: validation checked it, make_schedule too
    if last_steps is not None:
        schedule = keep_last(schedule, last_steps)
    if strength is not None:
        schedule = start_at(schedule, strength)
        if len(schedule.sigmas) < 2:
            raise InvalidRequest(
                f"strength {strength} with {sampling.steps} steps leaves no step to run; raise either"
            )
    options: dict[str, Any] = {}
    if sampling.eta > 0 and spec.name in ETA_SAMPLERS:  # only DDIM's function takes eta
        options["eta"] = sampling.eta
    return SamplingPlan(spec=spec, schedule=schedule, options=options)


@dataclass
class Job:
    """What every task sets up the same way; a task adds only its start latents and extra UNet inputs.

    Nothing here draws random numbers, so starting a job first keeps each task's draw order (docs/DESIGN.md,
    "Random draws").
    """

    components: Components
    sampling: Sampling
    generator: NoiseSource  # the images' own (`noise_source`); a batch of requests has all of theirs
    context: torch.Tensor  # ((1+K)B|B, 77·k, D), uncond first when guided; k chunks of 77; (P, ...) with phases
    plan: SamplingPlan
    mode: RunMode = NORMAL  # this attempt's precision and memory switches (the fallback ladder's choice)
    embeddings: list[TextualInversion] = field(default_factory=list)  # what the prompts used (EncodedPrompts)
    phases: tuple[int, ...] = ()  # prompt editing/alternation: the context phase of each UNet call (Conditioning)
    weights: tuple[float, ...] = (1.0,)  # the prompt's K composable parts' weights (Conditioning)
    padded: bool = False  # the context's shorter texts were padded with the empty chunk (EncodedPrompts)

    @property
    def rows(self) -> int:
        """Batch rows the UNet sees: the images, 1 + K times over when guidance is on (K prompt parts)."""
        return self.sampling.batch_size * (1 + len(self.weights) if guidance_on(self.sampling.cfg_scale) else 1)

    def start_noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Text-to-image start latents: unit noise scaled to the schedule's first sigma."""
        device, dtype = self.components.device, self.components.dtype
        return draw_noise(shape, self.generator, device, dtype) * self.plan.schedule.init_noise_sigma

    def denoise(
        self,
        x: torch.Tensor,
        *,
        concat: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        on_step: LatentProgressFn | None = None,
        tiling: Tiling | None = None,
    ) -> torch.Tensor:
        """Run the one loop on `x` (B, 4, h, w) with the task's extra channels; returns VAE-space latents."""
        c = self.components
        return run_sampling(
            c.unet, Conditioning(context=self.context, concat=concat, class_labels=class_labels, phases=self.phases,
                                 weights=self.weights), x,
            self.plan.schedule, self.plan.spec, cfg_scale=self.sampling.cfg_scale,
            guidance_rescale=self.sampling.guidance_rescale, prediction_type=c.scheduler_config.prediction_type,
            generator=self.generator, on_step=on_step, tiling=tiling, sampler_options=self.plan.options,
            fp32_attention=self.mode.fp32_attention,
        )

    def decode(self, latents: torch.Tensor, *, force_fp32: bool = False, tile: int | None = None,
               overlap: int = 0) -> torch.Tensor:
        """VAE-space latents -> pixels in [-1, 1], in this attempt's mode (fp32, quarter tiles)."""
        return decode_in(self.mode, self.components.vae, latents, force_fp32=force_fp32, tile=tile, overlap=overlap)


@dataclass
class PreparedRun:
    """A task's run up to its denoising loop: the job and its start latents, and the step after the loop.

    A task run is `prepared.complete(on_step)`; a batch of requests (pipelines/batch.py) prepares each one, denoises
    their start latents together and finishes each one's slice, so both go through the same code.
    """

    job: Job
    start: torch.Tensor  # (B, 4, h, w) sigma-space start latents, drawn from the job's generator
    finish: Callable[[torch.Tensor], PipelineOutput]  # denoised latents (B, 4, h, w) -> the task's output

    def complete(self, on_step: LatentProgressFn | None = None) -> PipelineOutput:
        """Denoise the start latents and finish: the task's whole run (Stop: `finished`)."""
        return finished(lambda: self.job.denoise(self.start, on_step=on_step), self.finish)


def finished(denoise: Callable[[], torch.Tensor], finish: Callable[[torch.Tensor], T]) -> T:
    """`finish(denoise())`: a task's loop, then its finishing path (decode, paste back, label). When Stop ends the
    loop after a step, the `Cancelled` goes on with `output` = `finish` of that step's x0 estimate, the image so
    far as the task makes its end (docs/DESIGN.md, "Errors"); a finish that fails then leaves it without one."""
    try:
        latents = denoise()
    except Cancelled as stop:
        if stop.so_far and stop.latents is not None and stop.output is None:
            try:
                stop.output = finish(stop.latents)
            except Exception:  # noqa: BLE001  # the Stop stands; only the image so far is lost
                log.warning("could not finish the image so far of a stopped run", exc_info=True)
        stop.latents = None  # used, or not wanted (`Cancelled.so_far`): the exception no longer holds the tensor
        raise
    return finish(latents)


def changed(run: Callable[[], PipelineOutput], change: Callable[[PipelineOutput], PipelineOutput]) -> PipelineOutput:
    """`change(run())`, a task's last touch to an output another task made (outpainting's mask, the hires fix's
    warnings); after Stop, to the image so far that the `Cancelled` carries (`finished`) too."""
    try:
        output = run()
    except Cancelled as stop:
        if stop.output is not None:
            stop.output = change(stop.output)
        raise
    return change(output)


def start_job(components: Components, request: TaskRequest, *, strength: float | None = None,
              last_steps: int | None = None, mode: RunMode = NORMAL, prompt_calls: PromptSteps | None = None) -> Job:
    """Seeded noise source (`noise_source`), encoded prompts ([uncond; cond], a phase per prompt-schedule step)
    and the sampling plan for `request`, run in `mode` (`strength` and `last_steps` cut the schedule,
    `plan_sampling`). `prompt_calls`: the UNet calls the prompt schedule spans when not the request's own
    (`prompt_steps`), e.g. a hires pass's."""
    sampling = request.sampling
    assert sampling.seed is not None, "the service resolves the seed before calling a pipeline"
    generator = noise_source(components.device, [seed for seed, _ in request_seeds(request)])
    encoded = encode_prompt_schedule(components, request.prompt, request.negative_prompt,
                                     batch_size=sampling.batch_size, use_cfg=guidance_on(sampling.cfg_scale),
                                     steps=prompt_calls or prompt_steps(sampling))
    plan = plan_sampling(components.scheduler_config, sampling, strength=strength, last_steps=last_steps)
    return Job(components, sampling, generator, encoded.context, plan, mode, encoded.embeddings, encoded.phases,
               encoded.weights, encoded.padded)
