"""Every Generate endpoint fuzzed (hypothesis): the values their
Numbers, Sliders, Textboxes and Checkboxes take as sent (`raw_values.server_checked`: any JSON an API caller sends
reaches the request as it is), and the plot's multi-selects that take values of their own, are refused in words
(`InvalidRequest`, the run's message) or make a request the Service accepts; never another exception.

The values go through the endpoint's own request building (the tab's `make_request` with the styles, eta and batch
count wrappers `run_events.wire_run` adds, in its order), then `checked.check`, with a Service that validates only.
Other dropdowns, radios and images are left valid: Gradio refuses a value it cannot read before the function runs."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd2_app.api.checked import check
from sd2_app.api.checks import Limits
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import read_styles
from functools import partial

from PIL import Image

from sd2_app.ui import depth, img2img, inpaint, outpaint, txt2img, upscale, xyz_plot
from sd2_app.ui.run_events import _styled, _with_sampling
from sd2_app.ui.sampling_controls import SAMPLING_NAMES
from sd2_app.ui.txt2img_extras import HIRES_NAMES, IMG2IMG_NAMES, NAMES as EXTRA_NAMES
from tests.reliability_support import noise_image

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.text(max_size=12),
                         st.floats(allow_nan=False, allow_infinity=False))
JUNK = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3),
                 st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=2),
                 st.sampled_from(["", "nan", "1e400", -1, 0, 10**6, 1e300, True, False]))
WRAPPED = ("styles", "eta", "batch_count")  # the parameters `wire_run` adds, in its order
NAMES = {
    "txt2img": ("checkpoint", "prompt", "negative_prompt", "width", "height", *SAMPLING_NAMES, *EXTRA_NAMES, *WRAPPED),
    "img2img": ("image", "checkpoint", "prompt", "negative_prompt", "strength", "width", "height", "resize_mode",
                *SAMPLING_NAMES, *IMG2IMG_NAMES, *WRAPPED),
    "xyz_plot": ("checkpoint", "prompt", "negative_prompt", *(f"{axis}_{part}" for axis in "xyz"
                                                             for part in ("type", "values", "picked")),
                 *SAMPLING_NAMES[:-1], "width", "height", "init_image", "strength", *HIRES_NAMES,
                 *xyz_plot.OPTIONS),  # no styles, eta or batch count: the plot's wire_run adds none
    "inpaint": ("image_and_mask", "mask", "checkpoint", "prompt", "negative_prompt", "strength", "mask_blur",
                "only_masked", "only_masked_padding", *SAMPLING_NAMES, "masked_content", "mask_mode", *WRAPPED),
    "outpaint": ("image", "checkpoint", "prompt", "negative_prompt", *outpaint.SIDES, "fill", "mask_blur", "strength",
                 "keep_original", *SAMPLING_NAMES, *WRAPPED),
    "upscale": ("image", "checkpoint", "prompt", "negative_prompt", "noise_level", *SAMPLING_NAMES, *WRAPPED),
    "depth": ("image", "depth_map", "checkpoint", "prompt", "negative_prompt", "strength", *SAMPLING_NAMES, *WRAPPED),
}
MAKERS = {"txt2img": txt2img.make_request, "inpaint": inpaint.make_request, "outpaint": outpaint.make_request,
          "upscale": upscale.make_request, "depth": depth.make_request}
MASK = Image.new("L", (64, 48), 0)
MASK.paste(255, (16, 16, 48, 40))
# A valid value of each parameter (the widgets' own kinds), and whether Gradio passes what is sent as it is.
VALID = {
    "checkpoint": (st.just("sd21-base"), False), "prompt": (st.text(max_size=30), True),
    "negative_prompt": (st.text(max_size=10), True), "width": (st.sampled_from([64, 128, 256]), True),
    "height": (st.sampled_from([64, 128, 256]), True), "sampler": (st.sampled_from(["Euler", "DDIM"]), False),
    "schedule_type": (st.just("Automatic"), False), "steps": (st.integers(1, 150), True),
    "cfg_scale": (st.floats(0, 30), True), "guidance_rescale": (st.floats(0, 1), True),
    "seed": (st.integers(-1, 2**32 - 1), True), "batch_size": (st.integers(1, 4), True),
    "hires_fix": (st.booleans(), True), "hires_upscaler": (st.just("Latent"), False),
    "hires_scale": (st.floats(1, 2), True), "hires_width": (st.sampled_from([0, 128]), True),
    "hires_height": (st.sampled_from([0, 128]), True), "hires_steps": (st.integers(0, 150), True),
    "denoising_strength": (st.floats(0.05, 1), True), "hires_sampler": (st.just("Same as first pass"), False),
    "hires_schedule": (st.sampled_from(["Same as first pass", "Karras"]), False),
    "hires_prompt": (st.text(max_size=10), True), "hires_negative_prompt": (st.text(max_size=10), True),
    "variation_seed": (st.integers(-1, 2**32 - 1), True), "variation_strength": (st.floats(0, 1), True),
    "seed_resize_from_width": (st.sampled_from([0, 64]), True),
    "seed_resize_from_height": (st.sampled_from([0, 64]), True),
    "tiling": (st.booleans(), True), "styles": (st.lists(st.just("oil"), max_size=1), False),
    "eta": (st.floats(0, 1), True), "batch_count": (st.integers(1, 4), True),
    "image": (st.just(noise_image(64, 48)), False), "strength": (st.floats(0, 1), True),
    "resize_mode": (st.sampled_from(["Just resize", "Crop and resize", "Resize and fill"]), False),
    "x_type": (st.just("steps"), False), "y_type": (st.just("sampler"), False), "z_type": (st.just("nothing"), False),
    "x_values": (st.sampled_from(["1, 2", "1-3", "2"]), True),
    "y_values": (st.just(""), True), "z_values": (st.just(""), True),
    # a multi-select that takes values of its own (allow_custom_value): Gradio passes them as sent
    "x_picked": (st.just([]), True), "y_picked": (st.sampled_from([["Euler"], ["Euler", "DDIM"]]), True),
    "z_picked": (st.just([]), True), "init_image": (st.sampled_from([None, noise_image(64, 48)]), False),
    "draw_legend": (st.booleans(), True), "no_fixed_seeds": (st.booleans(), True),
    "include_sub_grids": (st.booleans(), True), "margin_size": (st.integers(0, 64), True),
    "image_and_mask": (st.just({"background": noise_image(64, 48), "layers": [], "composite": None}), False),
    "mask": (st.just(MASK), False), "mask_blur": (st.integers(0, 64), True), "only_masked": (st.booleans(), True),
    "only_masked_padding": (st.integers(0, 256), True), "masked_content": (st.just("original"), False),
    "mask_mode": (st.just("Inpaint masked"), False), **{side: (st.sampled_from([0, 8, 64]), True)
                                                         for side in outpaint.SIDES},
    "fill": (st.just("edge"), False), "keep_original": (st.booleans(), True),
    "noise_level": (st.integers(0, 350), True), "depth_map": (st.just(None), False),
}
# Each task's checkpoint (the others cannot run it)
CHECKPOINTS = {"inpaint": "sd2-inpainting", "outpaint": "sd2-inpainting", "upscale": "x4-upscaler",
               "depth": "sd2-depth"}
CASES = [(task, name) for task, names in NAMES.items() for name in names if VALID[name][1]]


@pytest.fixture(scope="module")
def service():
    """A Service that validates only, with one prompt style."""
    from sd2_app.api.service import Service

    styles = read_styles('name,prompt,negative_prompt\noil,"oil painting of {prompt}",photo\n')
    return Service(None, outputs_dir=None, limits=Limits(max_side=512), allowed_repos=(), styles=styles)


def _endpoint(service, task: str):
    """The endpoint's request building as `wire_run` composes it."""
    if task == "xyz_plot":
        return xyz_plot.make_request
    make = MAKERS[task] if task in MAKERS else partial(img2img.make_request, service.limits)
    return _with_sampling(_with_sampling(_styled(make, service.styles), "eta", 0.0), "batch_count", 1)


def test_the_names_are_the_endpoints() -> None:
    assert all(set(names) <= set(VALID) and len(names) == len(set(names)) for names in NAMES.values())


@pytest.mark.parametrize(("task", "name"), CASES, ids=[f"{task}-{name}" for task, name in CASES])
def test_junk_in_a_raw_value_is_refused_in_words_or_accepted(service, task: str, name: str) -> None:
    make, names = _endpoint(service, task), NAMES[task]
    tally = {"refused": 0, "accepted": 0}
    valid = {key: VALID[key][0] for key in names} | {"checkpoint": st.just(CHECKPOINTS.get(task, "sd21-base"))}
    values = st.fixed_dictionaries(valid)

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(values=values, junk=JUNK)
    def run(values: dict, junk: object) -> None:
        values[name] = junk
        try:
            check(service, make(*(values[key] for key in names)))
        except InvalidRequest as error:
            assert str(error) and "Traceback" not in str(error)
            tally["refused"] += 1
            return
        tally["accepted"] += 1

    run()
    assert tally["refused"] + tally["accepted"] == 40, tally


@pytest.mark.parametrize("task", list(NAMES))
def test_the_valid_bodies_are_accepted_often(service, task: str) -> None:
    """The bodies the junk goes into pass on their own, so each field's junk meets the checks past the others."""
    make, names = _endpoint(service, task), NAMES[task]
    valid = {key: VALID[key][0] for key in names} | {"checkpoint": st.just(CHECKPOINTS.get(task, "sd21-base"))}
    tally = {"refused": 0, "accepted": 0}

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(values=st.fixed_dictionaries(valid))
    def run(values: dict) -> None:
        try:
            check(service, make(*(values[key] for key in names)))
        except InvalidRequest:
            tally["refused"] += 1
            return
        tally["accepted"] += 1

    run()
    assert tally["accepted"] >= 10, tally
