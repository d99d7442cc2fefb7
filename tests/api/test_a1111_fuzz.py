"""The A1111 API's txt2img and img2img bodies fuzzed (hypothesis): any JSON an API client may send is refused in
words (`InvalidRequest`, HTTP 422) or becomes a request the Service accepts; never another exception (HTTP 500).

The body goes through the routes' own reading (`a1111.txt2img_job` / `img2img_job`, then `Service.validate`), with
a Service that validates only (no model is loaded)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd2_app.api import a1111
from sd2_app.api.checks import Limits
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import read_styles
from sd2_app.samplers.registry import SCHEDULES
from tests.reliability_support import noise_image, png_bytes

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.text(max_size=12),
                         st.floats(allow_nan=False, allow_infinity=False))
JUNK = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3),
                 st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=2),
                 st.sampled_from(["not base64", "", "nope", "DPM fast", "sd2-depth", -1, 0, 10**6, 1e300, "NaN"]))
IMAGE = base64.b64encode(png_bytes(noise_image(64, 64))).decode()
SIDE = st.integers(8, 64).map(lambda n: n * 8)
COMMON = {
    "prompt": st.text(max_size=40), "negative_prompt": st.text(max_size=20), "steps": st.integers(1, 150),
    "cfg_scale": st.floats(0, 30), "seed": st.integers(-1, 2**32 - 1), "batch_size": st.integers(1, 4),
    "n_iter": st.integers(1, 4), "width": SIDE, "height": SIDE, "eta": st.floats(0, 1),
    "sampler_name": st.sampled_from(["Euler", "euler a", "DPM++ 2M Karras", "PLMS", "DPM++ 2M"]),
    "scheduler": st.sampled_from(["karras", "Automatic", "sgm_uniform", "SGMUniform", *SCHEDULES]),
    "styles": st.lists(st.just("oil"), max_size=1),
    "override_settings": st.fixed_dictionaries({"sd_model_checkpoint": st.sampled_from(["sd21-base", "sd2"])}),
    "send_images": st.booleans(), "subseed": st.integers(-1, 2**32 - 1), "subseed_strength": st.floats(0, 1),
    "script_name": st.sampled_from([None, ""]), "restore_faces": st.just(False), "alwayson_scripts": st.just({}),
    "s_noise": st.sampled_from([1, 1.0]), "unknown_extension_field": JSON_SCALARS,
}
TXT2IMG = {
    **COMMON,
    "enable_hr": st.just(True), "hr_scale": st.floats(1, 2), "tiling": st.booleans(),
    "hr_upscaler": st.sampled_from(["Latent", "latent (nearest-exact)", "Lanczos"]),
    "hr_resize_x": st.sampled_from([0, 64, 128]), "hr_resize_y": st.sampled_from([0, 64, 128]),
    "hr_second_pass_steps": st.integers(0, 150), "denoising_strength": st.floats(0.05, 1),
    "hr_sampler_name": st.sampled_from(["Use same sampler", "Euler", "DPM++ 2M Karras", "DDIM", ""]),
    "hr_scheduler": st.sampled_from(["Use same scheduler", "karras", "Exponential", None]),
    "hr_checkpoint_name": st.sampled_from([None, "", "Use same checkpoint"]),
    "hr_prompt": st.text(max_size=20), "hr_negative_prompt": st.text(max_size=20),
    "seed_resize_from_w": st.sampled_from([-1, 0, 64]), "seed_resize_from_h": st.sampled_from([-1, 0, 64]),
}
IMG2IMG = {
    **COMMON,
    "mask": st.sampled_from([None, IMAGE]), "denoising_strength": st.floats(0, 1),
    "mask_blur": st.integers(0, 64), "inpainting_fill": st.integers(0, 3), "inpaint_full_res": st.booleans(),
    "inpaint_full_res_padding": st.integers(0, 256), "inpainting_mask_invert": st.integers(0, 1),
    "resize_mode": st.integers(0, 2),
}


@pytest.fixture(scope="module")
def api():
    from sd2_app.api.a1111_routes import A1111Api
    from sd2_app.api.service import Service

    styles = read_styles('name,prompt,negative_prompt\noil,"oil painting of {prompt}",photo\n')
    service = Service(None, outputs_dir=None, limits=Limits(max_side=512), allowed_repos=(), styles=styles)
    return A1111Api(service)


def _bodies(task: str, fields: dict[str, st.SearchStrategy], junk_in: str) -> st.SearchStrategy:
    """A body of valid values with junk of any JSON type in the field `junk_in`: a field's junk must meet a body
    the other checks let through, or an earlier check would refuse the body first every time."""
    required = {"init_images": st.just([IMAGE])} if task == "img2img" else {}
    return st.tuples(st.fixed_dictionaries(required, optional=fields), JUNK).map(
        lambda pair: {**pair[0], junk_in: pair[1]})


def _read(api, task: str, body: dict) -> str:
    """"refused" or "accepted": the body read as the route reads it, then validated."""
    service = api.service
    make = a1111.txt2img_job if task == "txt2img" else a1111.img2img_job
    try:
        job = make(body, api.checkpoint_for, service.samplers(), service.limits, service.styles)
        service.validate(job.request)
    except InvalidRequest as error:
        assert str(error) and "Traceback" not in str(error)
        return "refused"
    return "accepted"


CASES = [(task, field) for task, fields in (("txt2img", TXT2IMG), ("img2img", IMG2IMG))
         for field in sorted({*fields, *(("init_images",) if task == "img2img" else ())})]


@pytest.mark.parametrize(("task", "field"), CASES, ids=[f"{task}-{field}" for task, field in CASES])
def test_fuzzed_a1111_bodies_are_refused_in_words_or_accepted(api, task: str, field: str) -> None:
    """Junk in `field` of an otherwise valid body: refused in words or accepted, never another exception."""
    fields = TXT2IMG if task == "txt2img" else IMG2IMG
    tally = {"refused": 0, "accepted": 0}

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=_bodies(task, fields, field))
    def read(body: dict) -> None:
        tally[_read(api, task, body)] += 1

    read()
    assert tally["refused"] + tally["accepted"] == 40 and tally["refused"] > 0, tally


EXTRAS = {
    "image": st.just(IMAGE), "upscaler_1": st.sampled_from(["None", "Lanczos", "nearest", "SD2 x4", None]),
    "upscaling_resize": st.sampled_from([1, 2, 4]), "resize_mode": st.sampled_from([0, 1]),
    "upscaling_resize_w": st.sampled_from([64, 128]), "upscaling_resize_h": st.sampled_from([48, 96]),
    "upscaling_crop": st.booleans(), "show_extras_results": st.booleans(), "gfpgan_visibility": st.just(0),
}


def _extras(api, body: dict) -> str:
    """"refused" or "accepted": `/extra-single-image`'s reading of `body` (`a1111_extras.extras_routes`), its
    CPU answer or its x4 job validated."""
    from sd2_app.api import a1111_extras as extras
    from sd2_app.api.upscaler_names import resampler_named

    service = api.service
    try:
        resampler = resampler_named(body.get("upscaler_1"))
        key = None if resampler else extras.upscaler_checkpoint(api, body.get("upscaler_1"))
        if key is None:
            pixels = service.limits.max_input_pixels
            extras.cpu_answer(body, resampler, pixels, pixels)
        else:
            service.validate(extras.upscale_job(body, key).request)
    except InvalidRequest as error:
        assert str(error) and "Traceback" not in str(error)
        return "refused"
    return "accepted"


@pytest.mark.parametrize("field", sorted(EXTRAS))
def test_fuzzed_extras_bodies_are_refused_in_words_or_answered(api, field: str) -> None:
    """Junk in `field` of an otherwise valid `/extra-single-image` body: refused in words or answered."""
    tally = {"refused": 0, "accepted": 0}
    optional = {name: value for name, value in EXTRAS.items() if name != "image"}

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(body=st.tuples(st.fixed_dictionaries({"image": EXTRAS["image"]}, optional=optional), JUNK).map(
        lambda pair: {**pair[0], field: pair[1]}))
    def read(body: dict) -> None:
        tally[_extras(api, body)] += 1

    read()
    assert tally["refused"] + tally["accepted"] == 40, tally
