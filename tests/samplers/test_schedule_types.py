"""A1111's schedule types against its own definitions (modules/sd_schedulers.py; k-diffusion's DiscreteSchedule for
the conversions between sigma and timestep), written out here in torch as there, on our checkpoint's training
sigmas. How the samplers step on them is checked against diffusers in test_samplers_parity.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sd2_app.api.a1111_samplers import SCHEDULERS
from sd2_app.samplers import SAMPLERS, SchedulerConfig, make_schedule
from sd2_app.samplers.registry import SCHEDULES
from sd2_app.samplers.schedule_types import ALIGN_YOUR_STEPS, SPACED_SIGMAS, SPACED_TIMESTEPS
from sd2_app.samplers.schedules import train_sigmas

SD2 = SchedulerConfig.from_dict({
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "steps_offset": 1,
})
X4 = SchedulerConfig.from_dict({**SD2.__dict__, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                                "prediction_type": "v_prediction"})
STEPS = (1, 2, 7, 10, 11, 20, 33, 50, 150)


class ModelSigmas:
    """A1111's model wrapper's view of the training sigmas (k-diffusion DiscreteSchedule): `sigmas` ascending,
    `sigma_to_t` and `t_to_sigma` linear in log sigma between neighbouring timesteps."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.sigmas = torch.tensor(train_sigmas(config), dtype=torch.float64)
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        above = (log_sigma - self.log_sigmas[:, None]).ge(0).cumsum(dim=0).argmax(dim=0)
        low = above.clamp(max=len(self.log_sigmas) - 2)
        w = ((self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[low + 1])).clamp(0, 1)
        return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


def a1111_sigmas(schedule: str, n: int, model: ModelSigmas) -> list[float]:
    """The N sigmas before the last of A1111's schedule `schedule` (its sigma_min and sigma_max are the training
    range's ends, as its k-diffusion sampler passes them)."""
    sigma_min, sigma_max = float(model.sigmas[0]), float(model.sigmas[-1])
    if schedule == "Uniform":  # DiscreteSchedule.get_sigmas
        sigmas = model.t_to_sigma(torch.linspace(len(model.sigmas) - 1, 0, n, dtype=torch.float64))
    elif schedule in ("Normal", "SGM Uniform"):
        start = model.sigma_to_t(torch.tensor(sigma_max, dtype=torch.float64))
        end = model.sigma_to_t(torch.tensor(sigma_min, dtype=torch.float64))
        count = n + 1 if schedule == "SGM Uniform" else n
        sigmas = model.t_to_sigma(torch.linspace(float(start), float(end), count, dtype=torch.float64)[:n])
    elif schedule == "Simple":
        stride = len(model.sigmas) / n
        sigmas = torch.stack([model.sigmas[-(1 + int(x * stride))] for x in range(n)])
    elif schedule == "KL Optimal":  # n + 1 points down to sigma_min; the first n are the steps' sigmas
        fraction = torch.arange(n + 1, dtype=torch.float64) / n
        sigmas = torch.tan(fraction * math.atan(sigma_min) + (1 - fraction) * math.atan(sigma_max))[:n]
    elif schedule == "Polyexponential":  # get_sigmas_polyexponential, rho 1
        ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** 1.0
        sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    elif schedule == "Align Your Steps":  # the SD 1.5 list; log-linear interpolation where n is not its length
        listed = np.array(ALIGN_YOUR_STEPS)
        if n == len(listed):
            return list(listed)
        ys = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(listed)), np.log(listed[::-1]))
        return list(np.exp(ys)[::-1])
    else:
        raise AssertionError(schedule)
    return [float(s) for s in sigmas]


OURS_ONLY = [s for s in SCHEDULES if s not in ("Automatic", "Karras", "Exponential", "Beta")]


def test_the_table_names_every_schedule_type_once() -> None:
    assert sorted({**SPACED_SIGMAS, **SPACED_TIMESTEPS}) == sorted(SCHEDULES[1:])
    assert not SPACED_SIGMAS.keys() & SPACED_TIMESTEPS.keys()
    assert tuple(SCHEDULERS.values()) == SCHEDULES  # A1111's names of them, in its order


@pytest.mark.parametrize("schedule", OURS_ONLY)
@pytest.mark.parametrize("steps", STEPS)
def test_k_sampler_sigmas_are_a1111s(schedule: str, steps: int) -> None:
    """Euler's N sigmas are A1111's, then 0; each at its own (fractional) timestep."""
    model = ModelSigmas(SD2)
    ours = make_schedule(SD2, "Euler", steps, schedule=schedule)
    expected = a1111_sigmas(schedule, steps, model)
    assert len(ours) == steps and ours.sigmas[-1] == 0.0
    assert np.allclose(ours.sigmas[:-1], expected, rtol=2e-7, atol=0)
    times = model.sigma_to_t(torch.tensor(ours.sigmas[:-1], dtype=torch.float64))
    assert np.allclose(ours.timesteps, times.numpy(), rtol=0, atol=2e-3)
    assert all(a > b for a, b in zip(ours.sigmas, ours.sigmas[1:]))  # strictly descending


@pytest.mark.parametrize("schedule", ["Uniform", "SGM Uniform", "Simple", "Normal"])
@pytest.mark.parametrize("steps", STEPS + (999, 1000))
def test_the_whole_timestep_samplers_step_at_the_sigma_of_the_timestep_they_give(schedule: str, steps: int) -> None:
    """For the DPM family the schedule types that place timesteps floor them, each step at that timestep's
    training sigma (so it never repeats a sigma, up to 1000 steps)."""
    table = train_sigmas(SD2)
    model = ModelSigmas(SD2)
    ours = make_schedule(SD2, "DPM++ 2M", steps, schedule=schedule)
    expected_t = model.sigma_to_t(torch.tensor(a1111_sigmas(schedule, steps, model), dtype=torch.float64))
    assert ours.timesteps == [float(math.floor(t + 1e-9)) for t in expected_t.tolist()]
    assert ours.sigmas[:-1] == [float(np.float32(table[int(t)])) for t in ours.timesteps]
    assert len(set(ours.timesteps)) == steps and ours.sigmas[-1] == 0.0


def test_known_values() -> None:
    """Spot values: Uniform and Normal are the same steps; Polyexponential at rho 1 is Exponential; SGM Uniform
    stops a step short of the last timestep; Simple takes every 100th timestep at 10 steps; Align Your Steps at 11
    steps is NVIDIA's list as published; KL Optimal is even in arctan(sigma)."""
    for steps in (5, 20):
        uniform, normal = (make_schedule(SD2, "Euler", steps, schedule=name) for name in ("Uniform", "Normal"))
        assert (uniform.sigmas, uniform.timesteps) == (normal.sigmas, normal.timesteps)
        poly = make_schedule(SD2, "Euler", steps, schedule="Polyexponential").sigmas
        assert np.allclose(poly, make_schedule(SD2, "Euler", steps, schedule="Exponential").sigmas, rtol=1e-6)
    sgm = make_schedule(SD2, "Euler", 10, schedule="SGM Uniform")
    assert sgm.timesteps[0] == 999 and sgm.timesteps[-1] == pytest.approx(99.9, abs=1e-3)
    assert make_schedule(SD2, "Euler", 10, schedule="Simple").timesteps == [999 - 100 * i for i in range(10)]
    ays = make_schedule(SD2, "Euler", 11, schedule="Align Your Steps").sigmas
    assert ays == [float(np.float32(s)) for s in ALIGN_YOUR_STEPS] + [0.0]
    kl = make_schedule(SD2, "Euler", 8, schedule="KL Optimal").sigmas[:-1]
    angles = [math.atan(s) for s in kl]
    assert max(abs((a - b) - (angles[0] - angles[1])) for a, b in zip(angles, angles[1:])) < 1e-6
    assert kl[-1] > float(train_sigmas(SD2)[0])  # the last step goes from above sigma_min to 0


def test_align_your_steps_keeps_its_shape_on_another_noise_schedule() -> None:
    """The x4 upscaler's training sigmas end elsewhere (0.0100 to 157.4): the list's log sigmas are stretched onto
    that range, so its first and last steps are the range's ends and the spacing keeps its proportions."""
    table = train_sigmas(X4)
    ours = make_schedule(X4, "Euler", 11, schedule="Align Your Steps").sigmas[:-1]
    assert ours[0] == pytest.approx(float(table[-1]), rel=1e-6) and ours[-1] == pytest.approx(float(table[0]), rel=1e-6)
    listed = np.log(ALIGN_YOUR_STEPS)
    ours_log = np.log(ours)
    expected = (listed - listed[-1]) / (listed[0] - listed[-1])
    assert np.allclose((ours_log - ours_log[-1]) / (ours_log[0] - ours_log[-1]), expected, atol=1e-6)


@pytest.mark.parametrize("name", [name for name, spec in SAMPLERS.items() if spec.offers_schedules])
@pytest.mark.parametrize("schedule", OURS_ONLY)
def test_every_sampler_with_schedule_types_takes_them(name: str, schedule: str) -> None:
    ours = make_schedule(SD2, name, 12, schedule=schedule)
    assert len(ours) == 12 and all(a >= b for a, b in zip(ours.sigmas, ours.sigmas[1:]))
    assert all(a > b for a, b in zip(ours.sigmas[:12], ours.sigmas[1:12]))
