"""Schedules against diffusers' set_timesteps results for the SD2 config (values recorded from diffusers),
and the img2img/denoiser contract."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from sd2_app.samplers import SAMPLERS, SchedulerConfig, add_noise, make_denoiser, make_schedule, start_at
from sd2_app.samplers.beta_quantiles import beta_ppf
from sd2_app.samplers.schedule_types import sigmas_karras
from sd2_app.samplers.schedules import train_sigmas

SD2 = SchedulerConfig.from_dict({
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
})
X4 = SchedulerConfig.from_dict({**SD2.__dict__, "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "v_prediction",
                                "trained_betas": None})


def approx(values, expected, tol=1e-3):
    return all(abs(a - b) <= tol for a, b in zip(values, expected, strict=True))


@pytest.mark.parametrize(("name", "first", "last", "init"), [
    ("DDIM", [981, 961, 941], [41, 21, 1], None),  # VP inits: see the next test
    ("DDPM", [981, 961, 941], [41, 21, 1], None),
    ("PNDM", [981, 961, 941], [41, 21, 1], None),
    ("Euler", [999, 978.612, 958.224], [40.776, 20.388, 0], 14.6146),
    ("Euler a", [999, 978.612, 958.224], [40.776, 20.388, 0], 14.6146),
    ("LMS", [999, 978.612, 958.224], [40.776, 20.388, 0], 14.6146),
    ("Heun", [999, 978.612, 958.224], [40.776, 20.388, 0], 14.6146),
    ("DPM2", [999, 978.612, 958.224], [40.776, 20.388, 0], 14.6146),
    ("DPM++ 2M", [999, 979, 959], [60, 40, 20], None),
    ("DPM++ 2S", [999, 979, 959], [60, 40, 20], None),
    ("UniPC", [999, 979, 959], [60, 40, 20], None),
    ("DEIS", [999, 979, 959], [60, 40, 20], None),
])
def test_timesteps_match_reference_table(name, first, last, init) -> None:
    schedule = make_schedule(SD2, name, 50)
    assert len(schedule) == 50 and len(schedule.sigmas) == 51
    assert approx(schedule.timesteps[:3], first) and approx(schedule.timesteps[-3:], last)
    if init is not None and not SAMPLERS[name].schedule.integer_timesteps:
        assert schedule.init_noise_sigma == pytest.approx(init, abs=1e-4)


def test_vp_schedules_start_from_unit_noise_in_vp_space() -> None:
    schedule = make_schedule(SD2, "DDIM", 50)
    assert schedule.init_noise_sigma == pytest.approx(math.sqrt(1 + schedule.sigmas[0] ** 2))
    assert schedule.sigmas[-1] == pytest.approx(0.029168, abs=1e-6)  # set_alpha_to_one false: lands on abar_0
    assert make_schedule(SD2, "DDPM", 50).sigmas[-1] == 0.0
    assert make_schedule(SD2, "DEIS", 50).sigmas[-1] == pytest.approx(0.029168, abs=1e-6)


def test_karras_schedules() -> None:
    dpm = make_schedule(SD2, "DPM++ 2M", 50, schedule="Karras")
    assert dpm.timesteps[:3] == [999, 985, 970] and dpm.timesteps[-3:] == [1, 1, 0]
    euler = make_schedule(SD2, "Euler", 20, schedule="Karras")
    assert approx(euler.sigmas[:4], [14.615, 11.725, 9.340, 7.384]) and approx(euler.sigmas[-3:], [0.048, 0.029, 0])
    # rho = 7 spacing: sigma^(1/7) is linear in the step index
    roots = [s ** (1 / 7) for s in sigmas_karras(20, 0.029168, 14.6146)]
    assert max(abs((b - a) - (roots[1] - roots[0])) for a, b in zip(roots, roots[1:])) < 1e-12
    with pytest.raises(ValueError, match="'DDIM' has no Karras sigma schedule"):
        make_schedule(SD2, "DDIM", 20, schedule="Karras")


def test_exponential_schedules() -> None:
    """Evenly spaced in log sigma between the family's ends: the k-samplers' spaced sigmas (Euler: t 999 to 0),
    the DPM family's training range, its timesteps whole (diffusers casts them to int64), Karras's rounded."""
    euler = make_schedule(SD2, "Euler", 20, schedule="Exponential")
    ratios = [b / a for a, b in zip(euler.sigmas[:19], euler.sigmas[1:20])]
    assert max(ratios) - min(ratios) < 1e-6 and euler.sigmas[-1] == 0.0
    assert approx([euler.sigmas[0], euler.sigmas[19]], [14.615, 0.029])
    assert euler.timesteps[0] == 999 and euler.timesteps[1] != round(euler.timesteps[1])  # fractional t
    dpm = make_schedule(SD2, "DPM++ 2M", 50, schedule="Exponential")
    # sigma_to_t(sigma_max) is 998.99997 in floating point: floored to 998, as diffusers' int64 cast does
    assert all(t == int(t) for t in dpm.timesteps) and dpm.timesteps[:3] == [998, 977, 955]
    exact = [dpm.sigma_to_t(s) for s in dpm.sigmas[:50]]
    assert [int(t) for t in exact] == dpm.timesteps and any(t - int(t) > 0.5 for t in exact)  # floored, not rounded
    with pytest.raises(ValueError, match="unknown schedule 'Turbo'"):
        make_schedule(SD2, "Euler", 20, schedule="Turbo")


def test_beta_schedules() -> None:
    """At a Beta(0.6, 0.6) distribution's quantiles of 1 - linspace(0, 1, N) between the family's ends, denser at both
    ends than in the middle; the quantiles are scipy's to 1e-15 (computed here without it)."""
    stats = pytest.importorskip("scipy.stats")
    euler = make_schedule(SD2, "Euler", 20, schedule="Beta")
    lo, hi = euler.sigmas[19], euler.sigmas[0]
    expected = [lo + stats.beta.ppf(1 - i / 19, 0.6, 0.6) * (hi - lo) for i in range(20)]
    assert max(abs(a - b) for a, b in zip(euler.sigmas[:20], expected)) < 1e-5 and euler.sigmas[20] == 0.0
    gaps = [a - b for a, b in zip(euler.sigmas[:19], euler.sigmas[1:20])]
    assert gaps[0] < gaps[9] > gaps[18]  # dense at both ends
    for a, b in ((0.6, 0.6), (0.5, 0.7), (2.0, 3.0)):
        for p in [0.0, 1e-9, 1e-4, 0.01, 0.3, 0.5, 0.77, 0.999, 1 - 1e-9, 1.0]:
            assert beta_ppf(p, a, b) == pytest.approx(stats.beta.ppf(p, a, b), rel=1e-11, abs=1e-15)
    dpm = make_schedule(SD2, "DPM++ 2M", 50, schedule="Beta")
    assert dpm.timesteps[:4] == [998, 998, 997, 996]  # floored, as diffusers' int64 cast: the first one twice


def test_train_sigmas_and_midpoint_timesteps() -> None:
    sigmas = train_sigmas(SD2)
    assert float(sigmas[0]) == pytest.approx(0.029168, abs=1e-6) and float(sigmas[-1]) == pytest.approx(14.6146, abs=1e-4)
    schedule = make_schedule(SD2, "DPM2", 20)
    mids = [schedule.sigma_to_t(math.sqrt(a * b)) for a, b in zip(schedule.sigmas[:3], schedule.sigmas[1:4])]
    assert approx([schedule.timesteps[0], mids[0], schedule.timesteps[1], mids[1]], [999, 973.205, 946.421, 920.631])
    n50 = make_schedule(SD2, "DPM2", 50)
    assert schedule.sigma_to_t(float(sigmas[500])) == pytest.approx(500, abs=1e-4)
    assert n50.sigma_to_t(math.sqrt(n50.sigmas[0] * n50.sigmas[1])) == pytest.approx(988.88, abs=1e-2)
    assert n50.sigma_to_t(math.sqrt(n50.sigmas[48] * n50.sigmas[49])) == pytest.approx(3.742, abs=1e-3)


def test_x4_upscaler_ddim_timesteps() -> None:
    schedule = make_schedule(X4, "DDIM", 75)
    assert schedule.timesteps[:3] == [963, 950, 937] and schedule.timesteps[-3:] == [27, 14, 1]


def test_start_at_follows_diffusers_strength_rule() -> None:
    schedule = make_schedule(SD2, "DDIM", 50)
    cut = start_at(schedule, 0.8)
    assert len(cut) == 40 and cut.timesteps[0] == 781 and cut.sigmas == schedule.sigmas[10:]
    assert cut.start_index == 10 and start_at(cut, 1.0).timesteps == cut.timesteps
    assert len(start_at(schedule, 0.01)) == 0
    x0, noise = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    assert torch.equal(add_noise(x0, noise, 3.0), torch.full((1, 4, 2, 2), 7.0))


def test_denoiser_handles_eps_and_v() -> None:
    x0, eps, sigma = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), 2.5
    x = x0 + sigma * eps
    alpha, sigma_vp = 1 / math.sqrt(1 + sigma**2), sigma / math.sqrt(1 + sigma**2)
    seen = []

    def eps_model(x_in, t):
        seen.append(x_in)
        return eps

    assert torch.allclose(make_denoiser(eps_model, "epsilon")(x, sigma, 500.0), x0, atol=1e-5)
    assert torch.allclose(seen[0], x * alpha, atol=1e-6)  # the UNet sees the VP sample
    v = alpha * eps - sigma_vp * x0  # Salimans & Ho: v = alpha eps - sigma x0
    assert torch.allclose(make_denoiser(lambda x_in, t: v, "v_prediction")(x, sigma, 500.0), x0, atol=1e-5)
    with pytest.raises(ValueError):
        make_denoiser(eps_model, "sample")


def test_config_absorbs_hub_quirks() -> None:
    config = SchedulerConfig.from_dict({"prediction_type": "velocity", "skip_prk_steps": True, "_class_name": "x"})
    assert config.prediction_type == "v_prediction" and config.timestep_spacing is None
    trailing = SchedulerConfig.from_dict({**SD2.__dict__, "timestep_spacing": "trailing", "trained_betas": None})
    assert make_schedule(trailing, "DDIM", 50).timesteps[:2] == [999, 979]
    assert make_schedule(trailing, "Euler", 50).init_noise_sigma == pytest.approx(14.6146, abs=1e-4)


def test_samplers_without_generator_are_deterministic_and_stochastic_ones_follow_the_seed() -> None:
    denoise = make_denoiser(lambda x_in, t: 0.5 * x_in, "epsilon")
    for name, spec in SAMPLERS.items():
        schedule = make_schedule(SD2, name, 6)
        x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * schedule.init_noise_sigma
        a = spec.fn(denoise, x, schedule, generator=torch.Generator().manual_seed(5))
        b = spec.fn(denoise, x, schedule, generator=torch.Generator().manual_seed(5))
        c = spec.fn(denoise, x, schedule, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b), name
        assert (not torch.equal(a, c)) == spec.is_stochastic, name


def test_lms_warms_up_again_on_an_img2img_slice() -> None:
    """The first step of a sliced LMS run is an Euler step (no earlier derivative exists to extrapolate with)."""
    denoise = make_denoiser(lambda x_in, t: 0.3 * x_in + 0.01 * t, "epsilon")
    schedule = start_at(make_schedule(SD2, "LMS", 20), 0.5)
    one_step = replace(schedule, sigmas=schedule.sigmas[:2], timesteps=schedule.timesteps[:1])
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * schedule.sigmas[0]
    lms, euler = SAMPLERS["LMS"].fn(denoise, x, one_step), SAMPLERS["Euler"].fn(denoise, x, one_step)
    assert torch.allclose(lms, euler, rtol=0, atol=1e-5)  # same step up to the quadrature's rounding
