"""The one denoising loop every task shares: classifier-free guidance around the UNet, a sampler, progress.

A task only prepares the start latents, the `Conditioning` and the schedule slice; `run_sampling` does the
rest. The UNet sees `cat([x_in, x_in])` (uncond half first; one more x_in for each further part of a composable
prompt, A1111's AND) with the task's extra channels appended after
the input scaling (diffusers pipeline_stable_diffusion_inpaint.py, __call__: scale_model_input, then the
concat). Latents and sampler arithmetic stay fp32; only the UNet call runs in the UNet's dtype. Nothing here
reads a tensor back to the host, so steps queue on the GPU unblocked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sd2_app.api.requests import guidance_on
from sd2_app.errors import Cancelled
from sd2_app.nn.unet import Denoiser
from sd2_app.samplers.base import NoiseSource, StepFn
from sd2_app.pipelines.tiling import TileWeights, run_tiled
from sd2_app.samplers.denoiser import make_denoiser
from sd2_app.samplers.registry import SamplerSpec
from sd2_app.samplers.schedules import Schedule

LatentProgressFn = Callable[[int, int, torch.Tensor], None]  # (steps done, total steps, x0 latents (B, 4, h, w))
# The progress callbacks, one name each: samplers.base.StepFn (i, x, x0) inside a sampler; LatentProgressFn
# from the loop to the service; api.service.ProgressFn (done, total, preview image) to the UI and CLI;
# loading.hub.LoadProgressFn (message) while loading.


@dataclass
class Conditioning:
    """What the UNet gets besides the latents, already batched for guidance ([uncond; cond] halves; with a
    composable prompt of K parts, [uncond; cond of part 1; ...; cond of part K])."""

    context: torch.Tensor  # ((1+K)B|B, 77·k, D) text-encoder states (k prompt chunks), uncond first when guided;
    # with `phases`: (P, (1+K)B|B, 77·k, D), one context per phase of a prompt-editing/alternation schedule
    concat: torch.Tensor | None = None  # ((1+K)B|B, c, h, w) extra input channels (mask+masked latents, depth, ...)
    class_labels: torch.Tensor | None = None  # ((1+K)B|B,) long, the x4 noise level
    phases: tuple[int, ...] = ()  # the context phase of UNet call 0, 1, ... (past the end: the last); () = one
    weights: tuple[float, ...] = (1.0,)  # the K prompt parts' weights (`prompt_syntax.subprompts`)

    @property
    def rows(self) -> int:
        """Batch rows of the context: the images, twice over with guidance."""
        return int(self.context.shape[-3])


def context_at(cond: Conditioning, dtype: torch.dtype) -> Callable[[int], torch.Tensor]:
    """`context_at(i)` -> the (2B|B, 77·k, D) context of UNet call i, cast to `dtype` once for the run.

    A schedule's phases all have one shape, so a CUDA-graphed UNet copies each into its one static buffer;
    picking a phase is a view by a host-side index, no device read.
    """
    context = cond.context.to(dtype)
    if not cond.phases:
        return lambda call: context
    phases, last = cond.phases, len(cond.phases) - 1
    return lambda call: context[phases[min(call, last)]]


@dataclass(frozen=True)
class Tiling:
    """Run the UNet over overlapping latent tiles (x4 upscaling of large inputs)."""

    tile: int  # latent pixels per tile side
    overlap: int  # latent pixels shared by neighbouring tiles


def guide(outputs: tuple[torch.Tensor, ...], weights: tuple[float, ...], cfg_scale: float,
          guidance_rescale: float) -> torch.Tensor:
    """Classifier-free guidance of the UNet's (uncond, cond of each part) outputs: uncond + sum over the parts of
    (cond - uncond) x (weight x cfg_scale), A1111's composable guidance (modules/sd_samplers_cfg_denoiser.py,
    `combine_denoised`; Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models",
    eq. 11), which for one part of weight 1 is diffusers' `uncond + cfg_scale * (cond - uncond)`, number for number.
    A1111 combines the x0 estimates, a per-step affine map of these outputs, so the sum is the same. The rescale's
    conditional prediction is the guidance at scale 1: the prompt's own for one part."""
    uncond, conds = outputs[0], outputs[1:]
    pred = uncond + (weights[0] * cfg_scale) * (conds[0] - uncond)
    for weight, cond in zip(weights[1:], conds[1:]):
        pred = pred + (weight * cfg_scale) * (cond - uncond)
    if guidance_rescale > 0:
        at_scale_one = conds[0] if len(conds) == 1 else uncond + sum(w * (c - uncond) for w, c in zip(weights, conds))
        pred = rescale_guidance(pred, at_scale_one, guidance_rescale)
    return pred


def rescale_guidance(pred: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules are Flawed", eq. 15-16).

    Pulls the guided prediction's per-sample std back to the conditional one's, mixed with weight phi.
    """
    dims = list(range(1, pred.ndim))
    std_cond = pred_cond.std(dim=dims, keepdim=True)
    std_pred = pred.std(dim=dims, keepdim=True)
    rescaled = pred * (std_cond / std_pred)
    return phi * rescaled + (1 - phi) * pred


GuidedModel = Callable[[torch.Tensor, float, torch.Tensor, slice | None, slice | None], torch.Tensor]


def make_guided_model(
    unet: Denoiser,
    cond: Conditioning,
    *,
    cfg_scale: float,
    guidance_rescale: float,
    use_cfg: bool,
    fp32_attention: bool = False,
) -> GuidedModel:
    """Build, once, `model(x_in, t, context, rows, cols) -> guided eps/v` for the whole latent or one tile of
    it; `context` is the call's (2B|B, 77·k, D) text context in the UNet's dtype (`context_at`).

    `fp32_attention` runs every attention product in fp32 (nn.attention.Attention's per-call switch); the
    UNet gets the keyword only then, so the normal call is the plain four-argument one.
    """
    dtype = next(unet.parameters()).dtype
    switches = {"fp32_attention": True} if fp32_attention else {}
    concat = None if cond.concat is None else cond.concat.to(dtype)
    labels = cond.class_labels
    copies = 1 + len(cond.weights)  # the uncond and each prompt part

    def model(x_in: torch.Tensor, t: float, context: torch.Tensor, rows: slice | None,
              cols: slice | None) -> torch.Tensor:
        x_in = x_in.to(dtype)  # cast before duplicating: no fp32 (2B, 4, h, w) copy per step
        batch = torch.cat([x_in] * copies) if use_cfg else x_in  # ((1+K)B|B, 4, h, w)
        if concat is not None:
            extra = concat if rows is None or cols is None else concat[:, :, rows, cols]
            batch = torch.cat([batch, extra], dim=1)  # ((1+K)B|B, 4 + c, h, w)
        timestep = torch.full((batch.shape[0],), t, dtype=torch.float32, device=batch.device)
        out = unet(batch, timestep, context, class_labels=labels, **switches).float()  # ((1+K)B|B, 4, h, w)
        if not use_cfg:
            return out
        return guide(out.chunk(copies), cond.weights, cfg_scale, guidance_rescale)

    return model


def _tiled(model: GuidedModel, tiling: Tiling) -> Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]:
    weights: TileWeights = {}  # this job's blend weights, built at its first step

    def tiled_model(x_in: torch.Tensor, t: float, context: torch.Tensor) -> torch.Tensor:
        height, width = x_in.shape[-2:]

        def one_tile(top: int, left: int, h: int, w: int) -> torch.Tensor:
            rows, cols = slice(top, top + h), slice(left, left + w)
            return model(x_in[:, :, rows, cols], t, context, rows, cols)

        return run_tiled(one_tile, height, width, tiling.tile, tiling.overlap, weights=weights)

    return tiled_model


def _reporting(on_step: LatentProgressFn | None, total: int) -> StepFn:
    """The sampler's `on_step(i, x, x0)` as the loop's `on_step(i + 1, total, x0)`; a `Cancelled` from that (Stop
    after step i + 1) goes on with that step's x0 estimate as its `latents` (a reference, no copy)."""

    def step_done(i: int, x_now: torch.Tensor, x0: torch.Tensor) -> None:
        if on_step is None:
            return
        try:
            on_step(i + 1, total, x0)
        except Cancelled as stop:
            if stop.latents is None:
                stop.latents = x0
            raise

    return step_done


def run_sampling(
    unet: Denoiser,
    cond: Conditioning,
    x: torch.Tensor,
    schedule: Schedule,
    sampler: SamplerSpec,
    *,
    cfg_scale: float,
    guidance_rescale: float,
    prediction_type: str,
    generator: NoiseSource | None,
    on_step: LatentProgressFn | None = None,
    tiling: Tiling | None = None,
    sampler_options: dict[str, Any] | None = None,
    fp32_attention: bool = False,
) -> torch.Tensor:
    """Denoise `x` (B, 4, h, w), fp32, in sigma space at `schedule.sigmas[0]`; return clean latents.

    `sampler` is a `SamplerSpec`; `sampler_options` are extra keyword arguments for its function (DDIM's eta).
    Guidance is on where `guidance_on(cfg_scale)`; then `cond` must hold both halves.
    `on_step(done, total, x0)` runs after every sampler step with the current clean-latent estimate, for
    progress and previews; raising `sd2_app.errors.Cancelled` there stops the run: it propagates, carrying that
    step's x0 estimate as `latents` (a reference: no copy, no device read) for the task to finish as the image so
    far (`pipelines.sampling.finished`). A1111's Interrupt keeps the same: modules/sd_samplers_kdiffusion.py,
    `launch_sampling` returns `last_latent`, the `denoised` its step callback kept. The x0 estimate, not the noisy
    latents: at step 10 of 60 those still hold most of the noise, while x0 is what the live preview showed.
    `fp32_attention` computes every attention product in fp32 (the fallback ladder's rerun after NaN/inf).
    The UNet's calls are counted from 0 to pick each one's context phase (`cond.phases`, prompt editing).
    The result is converted from sigma space back to the VAE's latent space, ready for decoding.
    """
    use_cfg = guidance_on(cfg_scale)
    assert cond.rows == x.shape[0] * (1 + len(cond.weights) if use_cfg else 1), "context batch does not match guidance"
    guided = make_guided_model(unet, cond, cfg_scale=cfg_scale, guidance_rescale=guidance_rescale, use_cfg=use_cfg,
                               fp32_attention=fp32_attention)
    context_of = context_at(cond, next(unet.parameters()).dtype)
    calls = itertools.count()  # this run's UNet calls (a tiled call is one call over all its tiles)
    if tiling is not None and max(x.shape[-2:]) > tiling.tile:
        tiled = _tiled(guided, tiling)

        def model_fn(x_in: torch.Tensor, t: float) -> torch.Tensor:
            return tiled(x_in, t, context_of(next(calls)))
    else:

        def model_fn(x_in: torch.Tensor, t: float) -> torch.Tensor:
            return guided(x_in, t, context_of(next(calls)), None, None)

    denoise = make_denoiser(model_fn, prediction_type)
    total = len(schedule.sigmas) - 1

    with torch.inference_mode():
        x = sampler.fn(denoise, x.float(), schedule, generator=generator, on_step=_reporting(on_step, total),
                       **(sampler_options or {}))
    return x / math.sqrt(1.0 + schedule.sigmas[-1] ** 2)
