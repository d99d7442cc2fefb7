"""No sampler and no part of the shared loop reads a latent back to the host during sampling.

On CUDA a `.item()`, `.tolist()`, `.cpu()`, `float(t)` or `if tensor:` on a latent would stall the GPU once per
step. We cannot time that on CPU, but the "meta" device has no data at all: every one of those calls raises
there, while ordinary tensor arithmetic works. So each sampler, and `run_sampling` with guidance, rescale,
extra channels, class labels and tiling, is run end to end on meta latents.
"""

from __future__ import annotations

import pytest
import torch

from sd2_app.pipelines.loop import Conditioning, Tiling, run_sampling
from sd2_app.samplers import SAMPLERS, SchedulerConfig, make_denoiser, make_schedule, start_at
from sd2_app.samplers.registry import SCHEDULES

SD2 = SchedulerConfig.from_dict({
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "v_prediction",
})
META = torch.device("meta")


def test_meta_tensors_refuse_host_reads() -> None:
    """The premise of this file: each way of reading a value back fails on meta."""
    x = torch.zeros(2, device=META)
    for read in (lambda: x.sum().item(), lambda: bool(x.sum() > 0), lambda: x.tolist(), lambda: x.cpu(),
                 lambda: float(x.sum())):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sampler_runs_on_meta_latents(name: str, schedule: str) -> None:
    spec = SAMPLERS[name]
    if schedule != "Automatic" and not spec.offers_schedules:
        pytest.skip(f"no {schedule} schedule")
    calls: list[float] = []

    def model(x_in: torch.Tensor, t: float) -> torch.Tensor:
        assert isinstance(t, float)  # timesteps stay Python floats
        calls.append(t)
        return 0.5 * x_in

    denoise = make_denoiser(model, "v_prediction")
    schedule = make_schedule(SD2, name, 6, schedule=schedule)
    steps: list[int] = []
    for sched in (schedule, start_at(schedule, 0.5)):  # txt2img and an img2img slice
        x = torch.empty(2, 4, 8, 8, device=META)
        out = spec.fn(denoise, x, sched, generator=torch.Generator().manual_seed(0),
                      on_step=lambda i, x_i, x0: steps.append(i))
        assert out.device == META and out.shape == x.shape
    assert steps == [*range(6), *range(3)] and len(calls) >= 9


class _MetaUNet(torch.nn.Module):
    """Stands in for the UNet on meta: checks what the loop feeds it and returns (B, 4, h, w)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(4, in_channels, device=META, dtype=torch.float16))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        assert sample.dtype == context.dtype == torch.float16
        assert timestep.shape == (sample.shape[0],) and context.shape[0] == sample.shape[0]
        if class_labels is not None:
            assert class_labels.shape == (sample.shape[0],)
        self.seen.append(tuple(sample.shape))
        return torch.einsum("oc,bchw->bohw", self.weight, sample)


@pytest.mark.parametrize("cfg_scale", [7.5, 1.0])
@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE", "UniPC", "Euler a"])
def test_run_sampling_runs_on_meta(sampler: str, cfg_scale: float) -> None:
    rows = 2 * (2 if cfg_scale > 1 else 1)
    unet = _MetaUNet(in_channels=7)
    cond = Conditioning(
        context=torch.empty(rows, 77, 16, device=META),
        concat=torch.empty(rows, 3, 24, 20, device=META),
        class_labels=torch.zeros(rows, dtype=torch.long, device=META),
    )
    schedule = make_schedule(SD2, sampler, 3)
    progress: list[tuple[int, int]] = []
    out = run_sampling(
        unet, cond, torch.empty(2, 4, 24, 20, device=META), schedule, SAMPLERS[sampler],
        cfg_scale=cfg_scale, guidance_rescale=0.7, prediction_type="v_prediction",
        generator=torch.Generator().manual_seed(0), on_step=lambda i, n, x0: progress.append((i, n)),
        tiling=Tiling(tile=16, overlap=8),
    )
    assert out.shape == (2, 4, 24, 20) and out.dtype == torch.float32
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert set(unet.seen) == {(rows, 7, 16, 16)}  # every call is one tile with its extra channels
