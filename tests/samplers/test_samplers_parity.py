"""Every sampler against diffusers' scheduler built from the same scheduler_config.json, step for step.

Both are driven by one deterministic stand-in model. After each of our steps, our x (sigma space) is converted to
diffusers' space (x / sqrt(1 + sigma^2) for the VP schedulers) and compared with the reference sample after the
same number of model calls; the call counts themselves must agree too.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from sd2_app.samplers import SAMPLERS, SchedulerConfig, make_denoiser, make_schedule, start_at, add_noise
from sd2_app.samplers.registry import SCHEDULES

diffusers = pytest.importorskip("diffusers")

SD2_EPS = {  # stable-diffusion-2-base scheduler/scheduler_config.json (as on the Hub)
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None,
}
SD2_V = {**SD2_EPS, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
X4_V = {**SD2_V, "beta_start": 0.0001, "beta_end": 0.02}  # x4 upscaler scheduler/
CONFIGS = {"epsilon": SD2_EPS, "v_prediction": SD2_V}

REFERENCE = {  # our name -> (diffusers class, extra config)
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Heun": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}),
    "DPM++ 3M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    "DPM++ 2S": ("DPMSolverSinglestepScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
}
STEPS = (1, 2, 7, 25, 50)
SHAPE = (2, 4, 8, 8)
TOLERANCE = 1e-5


def stand_in_model(prediction: str) -> callable:
    """A deterministic stand-in UNet: the ideal denoiser for Gaussian data x0 ~ N(0, 0.5^2), perturbed by a
    smooth nonlinear, t-dependent term so multistep history matters; it returns eps or v like the real UNet.
    The same function drives both sides, so trajectories stay at image scale (no blow-up hides errors)."""
    pattern = torch.randn(SHAPE, generator=torch.Generator().manual_seed(123))
    abar = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
    table = ((1 - abar) / abar).sqrt()

    def model(x_in: torch.Tensor, t: float) -> torch.Tensor:
        t = float(t)
        low = min(int(t), 998)
        sigma = float(table[low] + (t - low) * (table[low + 1] - table[low]))
        x = x_in * math.sqrt(1 + sigma**2)
        eps = sigma * x / (sigma**2 + 0.25) + 0.2 * torch.tanh(x_in + t / 1000) + 0.05 * math.sin(t / 50) * pattern.to(x_in.dtype)
        if prediction == "epsilon":
            return eps
        x0 = x - sigma * eps
        return (eps - sigma * x0) / math.sqrt(1 + sigma**2)

    return model


SCHEDULE_OPTIONS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas",
                    "Beta": "use_beta_sigmas"}  # diffusers' switches
# A1111's other schedule types have no diffusers switch. Their numbers are checked against A1111's definitions in
# test_samplers_schedules.py; here diffusers steps on them given our table, as its set_timesteps takes one:
# Euler takes the sigmas (and finds each one's timestep itself), DPM++ 2M the timesteps (and reads each one's sigma
# off its training table, as ours does for the schedule types that place timesteps).
GIVEN_SIGMAS = [s for s in SCHEDULES if s not in ("Automatic", *SCHEDULE_OPTIONS)]
GIVEN_TIMESTEPS = ["Uniform", "SGM Uniform", "Simple", "Normal"]


def reference_scheduler(name: str, config: dict, schedule: str, steps: int):
    """diffusers' scheduler after set_timesteps; Euler a has no Karras or Exponential option there, so it gets
    Euler's table."""
    cls_name, extra = REFERENCE[name]
    cls = getattr(diffusers, cls_name)
    kwargs = dict(extra)
    option = SCHEDULE_OPTIONS.get(schedule)
    if option and name != "Euler a":
        kwargs[option] = True
    sched = cls.from_config(config, **kwargs)
    if schedule in GIVEN_SIGMAS:
        ours = make_schedule(SchedulerConfig.from_dict(config), name, steps, schedule=schedule)
        given = {"sigmas": ours.sigmas} if name == "Euler" else {"timesteps": [int(t) for t in ours.timesteps]}
        sched.set_timesteps(**given)
    else:
        sched.set_timesteps(steps)
    if hasattr(sched, "set_begin_index"):
        # From the first index: without it diffusers' index_for_timestep takes the second of a repeated first
        # timestep, skips a sigma and runs off the end (Beta's dense ends floor to 998 twice at 50 steps).
        sched.set_begin_index(0)
    if option and name == "Euler a":
        table = diffusers.EulerDiscreteScheduler.from_config(config, **{option: True})
        table.set_timesteps(steps)
        sched.sigmas, sched.timesteps = table.sigmas.clone(), table.timesteps.clone()
    if name == "DPM2 a":
        _accurate_ancestral_tables(sched)
    return sched


def _accurate_ancestral_tables(sched) -> None:
    """Rebuild KDPM2-ancestral's sigma_up/down/midpoint tables in float64 (stored back as fp32).

    diffusers forms sigma_down = sqrt(sigma_next^2 - sigma_up^2) in fp32; for 2 steps (14.6 -> 0.029) that
    cancels catastrophically (sigma_down ~ 6e-5 with a few % error) and the midpoint inherits it. Our sampler does
    this scalar math in float64, so the reference gets the same accurate tables; its stepping code is unchanged.
    """
    expanded = sched.sigmas.double()
    base = torch.cat([expanded[:1], expanded[1:-1:2]])  # (N+1,) sigmas, last 0
    nxt = torch.cat([base[1:], base.new_zeros(1)])
    up = (nxt**2 * (base**2 - nxt**2) / base**2) ** 0.5
    down = (nxt**2 - up**2).clamp(min=0) ** 0.5
    down[-1] = 0.0
    mid = (base.log().lerp(down.log(), 0.5)).exp()
    mid[-2:] = 0.0

    def expand(v):
        return torch.cat([v[:1], v[1:].repeat_interleave(2), v[-1:]]).float()

    sched.sigmas_up, sched.sigmas_down, sched.sigmas_interpol = expand(up), expand(down), expand(mid)
    log_sigmas = sched.log_sigmas.cpu().numpy()
    for k in range(len(base) - 2):  # the midpoint timesteps sit between the main ones
        t_mid = sched._sigma_to_t(np.array(float(sched.sigmas_interpol[2 * k])), log_sigmas)
        sched.timesteps[2 * k + 1] = float(t_mid)


def run_reference(name: str, config: dict, schedule: str, steps: int, noise: torch.Tensor, seed: int,
                  eta: float = 0.0) -> list[torch.Tensor]:
    """diffusers' txt2img loop; returns the sample after every model call."""
    model = stand_in_model(config.get("prediction_type", "epsilon"))
    sched = reference_scheduler(name, config, schedule, steps)
    if name == "PNDM" and config.get("prediction_type") == "v_prediction":
        # Our PLMS combines eps (the SD2 original's way); diffusers combines raw v. Reference = diffusers' PLMS
        # on eps, with the v model converted to eps at the current VP sample.
        sched = reference_scheduler(name, {**config, "prediction_type": "epsilon"}, schedule, steps)
        v_model = model

        def model(x_in, t):  # noqa: F811
            abar = float(sched.alphas_cumprod[int(t)])
            return math.sqrt(abar) * v_model(x_in, t) + math.sqrt(1 - abar) * x_in

    if noise.dtype == torch.float64:  # float64 mode: the reference's own tables too, to see algorithm, not rounding
        for attr in ("sigmas", "alphas_cumprod", "alpha_t", "sigma_t", "lambda_t"):
            if isinstance(getattr(sched, attr, None), torch.Tensor):
                setattr(sched, attr, getattr(sched, attr).double())
    generator = torch.Generator().manual_seed(seed)
    params = inspect.signature(sched.step).parameters
    step_kwargs = {"generator": generator} if "generator" in params else {}
    if name == "DDIM":
        step_kwargs["eta"] = eta
    x = noise * sched.init_noise_sigma
    states = []
    for t in sched.timesteps:
        out = model(sched.scale_model_input(x, t), float(t))
        x = sched.step(out, t, x, **step_kwargs).prev_sample
        states.append(x)
    return states


def run_ours(name: str, config: dict, schedule: str, steps: int, noise: torch.Tensor, seed: int,
             eta: float = 0.0, strength: float | None = None, x0_image: torch.Tensor | None = None):
    """Our sampler; returns per step (x in diffusers' space, model calls so far) and the timesteps fed."""
    cfg = SchedulerConfig.from_dict(config)
    schedule = make_schedule(cfg, name, steps, schedule=schedule)
    model = stand_in_model(cfg.prediction_type)
    calls: list[float] = []

    def counted(x_in, t):
        calls.append(t)
        return model(x_in, t)

    denoise = make_denoiser(counted, cfg.prediction_type)
    vp = SAMPLERS[name].schedule.integer_timesteps
    if strength is None:
        x = noise * schedule.init_noise_sigma
    else:
        schedule = start_at(schedule, strength)
        x = add_noise(x0_image, noise, schedule.sigmas[0])
    trajectory = []

    def on_step(i, x_i, x0):
        sigma = schedule.sigmas[i + 1]
        trajectory.append((x_i / math.sqrt(1 + sigma**2) if vp else x_i, len(calls)))

    kwargs = {"eta": eta} if name == "DDIM" else {}
    fn = SAMPLERS[name].fn
    fn(denoise, x, schedule,
       generator=torch.Generator().manual_seed(seed), on_step=on_step, **kwargs)
    return trajectory, calls, schedule


def max_difference(name: str, prediction: str, schedule: str, steps: int, eta: float = 0.0,
                   config: dict | None = None, dtype: torch.dtype = torch.float32) -> float:
    """Largest |ours - diffusers| over the trajectory, relative to max(1, |sample|)."""
    config = config or CONFIGS[prediction]
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    ref = run_reference(name, config, schedule, steps, noise, seed=1, eta=eta)
    ours, calls, _ = run_ours(name, config, schedule, steps, noise, seed=1, eta=eta)
    assert len(ours) == steps
    assert len(calls) == len(ref), f"{len(calls)} model calls, diffusers makes {len(ref)}"
    worst = 0.0
    for x, n_calls in ours:
        expected = ref[n_calls - 1]
        scale = max(1.0, expected.abs().max().item())  # sigma-space samples reach ~50: fp32 spacing is 4e-6 there
        worst = max(worst, (x - expected).abs().max().item() / scale)
    return worst


CASES = [
    pytest.param(name, prediction, schedule, steps, id=f"{name}-{prediction}-{schedule.lower()}-{steps}")
    for name, spec in SAMPLERS.items()
    for prediction in CONFIGS
    for schedule in (("Automatic", *SCHEDULE_OPTIONS) if spec.offers_schedules else ("Automatic",))
    for steps in STEPS
] + [
    pytest.param(name, prediction, schedule, steps, id=f"{name}-{prediction}-{schedule.lower()}-{steps}")
    for name, schedules in (("Euler", GIVEN_SIGMAS), ("DPM++ 2M", GIVEN_TIMESTEPS))
    for prediction in CONFIGS
    for schedule in schedules
    for steps in STEPS
]


@pytest.mark.parametrize(("name", "prediction", "schedule", "steps"), CASES)
def test_trajectory_matches_diffusers(name: str, prediction: str, schedule: str, steps: int) -> None:
    # DEIS: diffusers takes differences of fp32 log-terms for its coefficients (~1e-6 off per step); the
    # float64 test below shows the algorithms agree to 1e-9, so only fp32 rounding accumulates over 50 steps.
    # Beta packs its first sigmas closest (50 steps: 14.615, 14.573, 14.484, ...): there those differences keep
    # the fewest digits.
    tolerance = (1e-4 if schedule == "Beta" else 2e-5) if name == "DEIS" else TOLERANCE
    assert max_difference(name, prediction, schedule, steps) < tolerance


@pytest.mark.parametrize("name", ["DEIS", "UniPC", "DPM++ 2S"])  # the references that keep float64 throughout
@pytest.mark.parametrize("schedule", ["Automatic", *SCHEDULE_OPTIONS])
def test_float64_trajectory_matches_diffusers(name: str, schedule: str) -> None:
    assert max_difference(name, "v_prediction", schedule, 50, dtype=torch.float64) < 1e-12


def run_reference_img2img(name: str, steps: int, strength: float, image: torch.Tensor, noise: torch.Tensor):
    """diffusers' img2img: cut the timesteps at t_start * order, set_begin_index, add_noise at the first one."""
    model = stand_in_model("epsilon")
    sched = reference_scheduler(name, SD2_EPS, "Automatic", steps)
    t_start = max(steps - min(int(steps * strength), steps), 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    x = sched.add_noise(image, noise, timesteps[:1])
    generator = torch.Generator().manual_seed(1)
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}
    states = []
    for t in timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), float(t)), t, x, **step_kwargs).prev_sample
        states.append(x)
    return states


@pytest.mark.parametrize("name", ["Euler", "Euler a", "Heun", "DPM2", "DDIM", "DDPM", "DPM++ 2M", "DPM++ 2S",
                                  "UniPC", "DEIS", "DPM++ 3M SDE"])
@pytest.mark.parametrize("strength", [0.3, 0.75])
def test_img2img_start_matches_diffusers(name: str, strength: float) -> None:
    _assert_img2img_matches(name, 25, strength)


@pytest.mark.parametrize(("steps", "strength"), [(10, 0.75), (20, 0.5)])
def test_img2img_keeps_3m_sde_s_orders_of_the_whole_schedule(steps: int, strength: float) -> None:
    """diffusers' 3M drops to second order on the last but one step where the whole schedule is under 15 steps:
    an img2img slice of 7 of 10 steps does, one of 10 of 20 steps does not."""
    _assert_img2img_matches("DPM++ 3M SDE", steps, strength)


def _assert_img2img_matches(name: str, steps: int, strength: float) -> None:
    image = 0.5 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ref = run_reference_img2img(name, steps, strength, image, noise)
    ours, calls, schedule = run_ours(name, SD2_EPS, "Automatic", steps, noise, seed=1, strength=strength,
                                     x0_image=image)
    assert len(schedule) == int(steps * strength) and len(calls) == len(ref)
    for x, n_calls in ours:
        assert (x - ref[n_calls - 1]).abs().max().item() < TOLERANCE * max(1.0, ref[n_calls - 1].abs().max().item())


@pytest.mark.parametrize("steps", (2, 25))
def test_ddim_with_eta_matches_diffusers(steps: int) -> None:
    assert max_difference("DDIM", "epsilon", "Automatic", steps, eta=0.7) < TOLERANCE


@pytest.mark.parametrize("name", ["DDIM", "Euler", "DPM++ 2M", "UniPC", "Heun"])
def test_x4_upscaler_config_matches_diffusers(name: str) -> None:
    assert max_difference(name, "v_prediction", "Automatic", 20, config=X4_V) < TOLERANCE
