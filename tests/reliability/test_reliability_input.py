"""Bad input gets a clear message (or a repaired request and a warning) and the service keeps serving.

Field checks run through `Service.validate` (the code path of the UI and the API); the cases that only show
in a real run (long and exotic prompts, odd uploads, masks, depth maps) run on the tiny checkpoints.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sd2_app.errors import InvalidRequest
from sd2_app.api.requests import (HIRES_UPSCALERS, DepthRequest, HiresFix, Img2ImgRequest, InpaintRequest, Sampling,
                                  Txt2ImgRequest, UpscaleRequest)
from sd2_app.api.checks import MAX_SEED, Limits
from sd2_app.samplers.registry import SCHEDULES
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import fast, noise_image, one_thread, png_bytes, tiny, txt2img  # noqa: F401

AREA = "Bad input"


@pytest.fixture(scope="module")
def checker():
    """A Service used for validation only (no model is loaded), with a configured side cap of 512."""
    from sd2_app.api.service import Service

    return Service(None, outputs_dir=None, limits=Limits(max_side=512), allowed_repos=())


def _sampling(**changes: object) -> Sampling:
    return replace(Sampling(steps=20, seed=1), **changes)  # type: ignore[arg-type]


FIELD_CASES: list[tuple[str, object, str]] = [
    ("steps 0", {"sampling": _sampling(steps=0)}, "Steps must be between 1 and 150, got 0."),
    ("steps -5", {"sampling": _sampling(steps=-5)}, "Steps must be between 1 and 150, got -5."),
    ("steps 10**9", {"sampling": _sampling(steps=10**9)}, "Steps must be between 1 and 150, got 1000000000."),
    ("steps 2.5", {"sampling": _sampling(steps=2.5)}, "Steps must be a whole number, got 2.5."),
    ("steps '20' (text)", {"sampling": _sampling(steps="20")}, "Steps must be a whole number, got '20'."),
    ("guidance NaN", {"sampling": _sampling(cfg_scale=math.nan)}, "Guidance scale must be between 0 and 30, got nan."),
    ("guidance -1", {"sampling": _sampling(cfg_scale=-1.0)}, "Guidance scale must be between 0 and 30, got -1.0."),
    ("guidance 1e9", {"sampling": _sampling(cfg_scale=1e9)}, "Guidance scale must be between 0 and 30, got 1000000000.0."),
    ("guidance inf", {"sampling": _sampling(cfg_scale=math.inf)}, "Guidance scale must be between 0 and 30, got inf."),
    ("width 0", {"width": 0}, "Width must be between 64 and 512, got 0."),
    ("height -64", {"height": -64}, "Height must be between 64 and 512, got -64."),
    ("width 4096 (cap 512)", {"width": 4096}, "Width must be between 64 and 512, got 4096."),
    ("width 100.5", {"width": 100.5}, "Width must be a whole number, got 100.5."),
    ("seed -5", {"sampling": _sampling(seed=-5)}, "Seed must be -1 (random) or between 0 and 4294967295, got -5."),
    ("seed 2**40", {"sampling": _sampling(seed=2**40)},
     "Seed must be -1 (random) or between 0 and 4294967295, got 1099511627776."),
    ("seed 1.5", {"sampling": _sampling(seed=1.5)}, "Seed must be a whole number, got 1.5."),
    ("seed 'abc'", {"sampling": _sampling(seed="abc")}, "Seed must be a whole number, got 'abc'."),
    ("images per prompt 0", {"sampling": _sampling(batch_size=0)}, "Images per prompt must be between 1 and 8, got 0."),
    ("images per prompt 1000", {"sampling": _sampling(batch_size=1000)},
     "Images per prompt must be between 1 and 8, got 1000."),
    ("unknown sampler", {"sampling": _sampling(sampler="Euler z")}, "Unknown sampler 'Euler z'; choose one of: "),
    ("unknown checkpoint", {"checkpoint": "sd3"}, "Unknown checkpoint 'sd3'; choose one of: "),
    ("checkpoint path '../../etc'", {"checkpoint": "../../etc"}, "Custom model repos such as '../../etc' are not allowed"),
    ("checkpoint of another task", {"checkpoint": "sd2-depth"}, "Checkpoint 'sd2-depth' cannot do txt2img; use one of:"),
    ("prompt of 5000 characters", {"prompt": "a" * 5000}, "Prompt is 5000 characters long; the limit is 2000."),
    ("prompt not text", {"prompt": 12}, "Prompt must be text, got int."),
]


@pytest.mark.parametrize(("case", "changes", "message"), FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_out_of_range_fields_are_refused_in_words(checker, reliability, case: str, changes: dict, message: str) -> None:
    request = replace(Txt2ImgRequest("a cat", width=64, height=64, sampling=_sampling()), **changes)
    with pytest.raises(InvalidRequest) as caught:
        checker.validate(request)
    assert str(caught.value).startswith(message)
    reliability(AREA, case, f"refused: {str(caught.value)[:110]}")


@pytest.mark.parametrize(("width", "expected"), [(65, 64), (100, 104), (509, 512)])
def test_sizes_off_the_grid_are_rounded_with_a_warning(checker, reliability, width: int, expected: int) -> None:
    checked, warnings = checker.validate(Txt2ImgRequest("x", width=width, height=64, sampling=_sampling()))
    assert checked.width == expected and warnings == [f"Width {width} was rounded to {expected} (a multiple of 8)."]
    reliability(AREA, f"width {width} (odd / not a multiple of 8)", f"rounded to {expected}; warning: {warnings[0]}")


def test_seed_minus_one_or_missing_draws_a_seed_in_range(checker, reliability) -> None:
    seeds = {checker.validate(Txt2ImgRequest("x", width=64, height=64, sampling=_sampling(seed=s)))[0].sampling.seed
             for s in (-1, None, -1, None)}
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds) and len(seeds) >= 3
    reliability(AREA, "seed -1 / missing", f"a fresh seed in [0, 2**32-1] is drawn and reported ({len(seeds)} distinct of 4)")


def test_upscale_noise_level_and_strength_out_of_range(checker, reliability) -> None:
    image = noise_image(32, 32)
    for level in (-1, 351, 20.5):
        with pytest.raises(InvalidRequest, match="Noise level must be"):
            checker.validate(UpscaleRequest("x", image, noise_level=level))
    reliability(AREA, "noise level -1 / 351 / 20.5", "refused: Noise level must be between 0 and 350 / a whole number")
    with pytest.raises(InvalidRequest, match=r"Strength must be between 0 and 1, got 1.5"):
        checker.validate(Img2ImgRequest("x", image, strength=1.5))
    reliability(AREA, "img2img strength 1.5", "refused: Strength must be between 0 and 1, got 1.5.")


# ---- images -------------------------------------------------------------------------------------------


def _opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))  # lazy, as Gradio hands uploads over (image_mode=None)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def test_missing_tiny_and_broken_images_are_refused(checker, reliability) -> None:
    good = png_bytes(noise_image())
    cases = [
        ("image missing", None, "Upload an init image first."),
        ("image 1x1", Image.new("RGB", (1, 1)), "An init image is 1x1; each side needs at least 8 pixels."),
        ("truncated PNG", _opened(good[: len(good) // 2]), "An init image could not be read (image file is truncated)"),
        ("corrupt PNG (scrambled data)", _opened(good[:100] + b"x" * 400 + good[500:]), "An init image could not be read ("),
        ("truncated JPEG", _opened(_half(png_bytes(noise_image(), "JPEG"))), "An init image could not be read ("),
    ]
    for case, image, message in cases:
        with pytest.raises(InvalidRequest) as caught:
            checker.validate(Img2ImgRequest("x", image))  # type: ignore[arg-type]
        assert str(caught.value).startswith(message), str(caught.value)
        reliability(AREA, case, f"refused: {caught.value}")


def test_decompression_bomb_is_refused_from_its_header_without_decoding(checker, reliability,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Our header check, not PIL's global cap (which webapp.build lowers), is under test: PIL's default cap here.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(1024 * 1024 * 1024 // 4 // 3))
    data = png_bytes(Image.new("1", (10000, 10000)))  # 100 Mpixel, 12 kB on disk
    bomb = _opened(data)
    with pytest.raises(InvalidRequest) as caught:
        checker.validate(Img2ImgRequest("x", bomb))
    assert str(caught.value) == (
        "An init image is 10000x10000; images up to 2048x2048 pixels (or the same area in another shape) are accepted.")
    assert bomb._im is None  # the pixel data was never decoded
    reliability(AREA, f"decompression bomb (10000x10000 PNG of {len(data) // 1024} kB)",
                f"refused before decoding: {caught.value}")


def _exif_rotated() -> Image.Image:
    landscape = noise_image(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _opened(png_bytes(landscape, "JPEG", exif=exif.tobytes()))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "EXIF-rotated"])
def test_image_modes_become_upright_rgb(checker, reliability, mode: str) -> None:
    if mode == "EXIF-rotated":
        image = _exif_rotated()
    elif mode == "I;16":
        image = Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16))
    else:
        image = noise_image().convert("RGBA").convert(mode)
    if mode in ("RGBA", "LA"):
        image.putalpha(0)  # fully transparent: flattened on white
    checked, _ = checker.validate(Img2ImgRequest("x", image))
    array = np.asarray(checked.image)
    assert checked.image.mode == "RGB" and array.shape[2] == 3
    if mode == "EXIF-rotated":
        assert checked.image.size == (32, 64)  # the landscape JPEG is shown upright (portrait)
    if mode in ("RGBA", "LA", "I;16"):
        assert array.min() == 255  # transparent -> white; 16-bit full scale -> 255
    reliability(AREA, f"image mode {mode}", f"accepted as upright RGB {checked.image.width}x{checked.image.height}")


def test_masks_empty_full_and_of_another_size(checker, reliability) -> None:
    image = noise_image()
    with pytest.raises(InvalidRequest) as caught:
        checker.validate(InpaintRequest("x", image, Image.new("L", (64, 64), 0)))
    assert str(caught.value) == "The mask is empty: paint over the area to repaint (white = repaint)."
    reliability(AREA, "mask empty", f"refused: {caught.value}")
    checked, warnings = checker.validate(InpaintRequest("x", image, Image.new("L", (64, 64), 255)))
    assert np.asarray(checked.mask).min() == 255 and warnings == []
    reliability(AREA, "mask full", "accepted: the whole image is repainted")
    checked, warnings = checker.validate(InpaintRequest("x", image, Image.new("L", (40, 24), 255)))
    assert checked.mask.size == (64, 64)
    assert warnings == ["The mask (40x24) was resized to the image (64x64)."]
    reliability(AREA, "mask 40x24 for a 64x64 image", f"resized; warning: {warnings[0]}")
    with pytest.raises(InvalidRequest, match="The mask could not be read"):
        checker.validate(InpaintRequest("x", image, _opened(png_bytes(Image.new("L", (64, 64), 255))[:60])))
    reliability(AREA, "mask truncated file", "refused: The mask could not be read (...)")


# ---- real runs on the tiny checkpoints ----------------------------------------------------------------


def test_long_exotic_and_control_character_prompts_run(tiny, reliability) -> None:
    service, _ = tiny
    long_prompt = " ".join(["a photo of a cat"] * 40)  # 160 words, 200 tokens: three chunks of 75
    result = service.run(txt2img(long_prompt))
    assert len(result.images) == 1 and not [w for w in result.warnings if "token" in w]
    reliability(AREA, "prompt of 160 words (200 tokens)", "runs in three 75-token chunks; no token dropped, no warning")
    with pytest.raises(InvalidRequest) as refused:
        service.run(txt2img(", ".join(["cat"] * 390)))  # 779 tokens in 1,948 characters: over 8 chunks of 75
    assert str(refused.value).startswith("The prompt is too long: it makes 11 chunks of 75 tokens")
    assert "at most 8 chunks (600 tokens) are allowed" in str(refused.value)
    reliability(AREA, "prompt of 779 tokens", f"refused: {str(refused.value)[:90]}...")

    exotic = "Ünïcödé 日本語の猫 🐱🚀 ∑∞ ‮right-to-left"
    result = service.run(txt2img(exotic))
    parameters = result.images[0].info["parameters"]
    assert parameters.startswith(exotic + "\n") and result.images[0].size == (64, 64)
    reliability(AREA, "unicode, emoji and bidi prompt", "runs; the prompt is kept verbatim in the PNG parameters")

    result = service.run(txt2img("a\x00 cat\x07\x1b[31m in\tred\r\n"))
    assert result.request.prompt == "a cat[31m in red"
    assert "\x00" not in result.images[0].info["parameters"]
    reliability(AREA, "control characters (NUL, BEL, ESC, CR, tab)", f"stripped; ran with {result.request.prompt!r}")


def test_depth_map_of_another_size_and_mode_runs(tiny, reliability) -> None:
    service, _ = tiny
    image = noise_image(64, 64)
    for depth_map, label in ((noise_image(40, 24).convert("RGBA"), "RGBA 40x24"),
                             (Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20), "16-bit 64x48")):
        result = service.run(DepthRequest("x", image, checkpoint="sd2-depth", depth_map=depth_map, strength=1.0,
                                          sampling=fast()))
        assert result.images[0].size == (64, 64) and result.depth_image.size == (64, 64)
        assert result.depth_image.mode == "L"
        reliability(AREA, f"depth map {label} for a 64x64 image", "converted to grayscale and resized to 64x64; runs")
    with pytest.raises(InvalidRequest, match="The depth map is 4x4"):
        service.run(DepthRequest("x", image, checkpoint="sd2-depth", depth_map=Image.new("L", (4, 4)), sampling=fast()))
    reliability(AREA, "depth map 4x4", "refused: The depth map is 4x4; each side needs at least 8 pixels.")
    assert service.run(txt2img()).images[0].size == (64, 64)  # still serving


# ---- property-based fuzzing of validation ---------------------------------------------------------------

_anything = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["Euler", "DDIM", "20", "", "sd2-depth", "a/b", "Turbo"]),  # near misses: a wrong task, a repo
)


def _maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    # One in eight draws is junk of any type; the rest stay near the valid range, so some requests pass.
    return st.integers(0, 7).flatmap(lambda k: _anything if k == 0 else valid)


def _rarely(valid: st.SearchStrategy) -> st.SearchStrategy:
    # A hires fix has many fields: one draw in 24 each is junk, so some fixes pass whole.
    return st.integers(0, 23).flatmap(lambda k: _anything if k == 0 else valid)


_requests = st.builds(
    Txt2ImgRequest,
    prompt=_maybe(st.text(max_size=300)),
    negative_prompt=st.one_of(st.text(max_size=50), st.none()),
    checkpoint=_maybe(st.sampled_from(["sd21-base", "sd2", "sd2-base", "sd21"])),
    width=_maybe(st.integers(min_value=40, max_value=520)),
    height=_maybe(st.integers(min_value=40, max_value=520)),
    sampling=st.builds(
        Sampling,
        sampler=_maybe(st.sampled_from(["DPM++ 2M", "Euler a", "DDIM", "Heun", "UniPC"])),
        steps=_maybe(st.integers(min_value=-1, max_value=160)),
        schedule=_maybe(st.sampled_from(SCHEDULES)),
        cfg_scale=_maybe(st.floats(min_value=-1, max_value=31)),
        guidance_rescale=_maybe(st.floats(min_value=0, max_value=1.1)),
        eta=_maybe(st.floats(min_value=0, max_value=1.1)),
        seed=_maybe(st.integers(min_value=-3, max_value=2**32 + 5)),
        batch_size=_maybe(st.integers(min_value=0, max_value=9)),
    ),
    hires=st.one_of(st.none(), st.builds(
        HiresFix,
        upscaler=_rarely(st.sampled_from([*HIRES_UPSCALERS, "latent", "ESRGAN"])),
        scale=_rarely(st.sampled_from([1.0, 1.25, 1.5, 2.0, 0.5])),
        width=_rarely(st.sampled_from([None, 0, 64, 136, 256, 600])),
        height=_rarely(st.sampled_from([None, 0, 64, 136, 256, 600])),
        steps=_rarely(st.integers(min_value=-1, max_value=160)),
        denoising_strength=_rarely(st.floats(min_value=0, max_value=1.05)),
        sampler=_rarely(st.sampled_from([None, "", "DDIM", "Euler", "UniPC"])),
        schedule=_rarely(st.sampled_from(["", *SCHEDULES])),
        prompt=_rarely(st.text(max_size=50)),
        negative_prompt=_rarely(st.text(max_size=20)),
    )),
)

@pytest.fixture(scope="module")
def fuzz_counts() -> dict[str, int]:
    """The fuzz test's tally, which the summary after it reads (one module-scoped fixture: under `-n N` both run in
    the same process, tests/conftest.py)."""
    return {"accepted": 0, "refused": 0, "hires": 0}


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=_requests)
def test_fuzzed_requests_are_refused_in_words_or_normalised(checker, fuzz_counts: dict[str, int],
                                                            request: Txt2ImgRequest) -> None:
    try:
        checked, warnings = checker.validate(request)
    except InvalidRequest as error:
        assert str(error) and "Traceback" not in str(error)
        fuzz_counts["refused"] += 1
        return
    fuzz_counts["accepted"] += 1
    s = checked.sampling
    assert type(checked.width) is int and 64 <= checked.width <= 512 and checked.width % 8 == 0
    assert type(checked.height) is int and 64 <= checked.height <= 512 and checked.height % 8 == 0
    assert type(s.steps) is int and 1 <= s.steps <= 150
    assert type(s.seed) is int and 0 <= s.seed <= MAX_SEED
    assert type(s.batch_size) is int and 1 <= s.batch_size <= 8
    assert isinstance(s.cfg_scale, float) and 0 <= s.cfg_scale <= 30
    assert 0 <= s.guidance_rescale <= 1 and 0 <= s.eta <= 1
    assert s.sampler in checker.catalog.samplers and checked.checkpoint in checker.catalog.tasks
    assert isinstance(checked.prompt, str) and all(ch == "\n" or ch >= " " for ch in checked.prompt)
    assert all(isinstance(w, str) for w in warnings)
    if checked.hires is not None:
        fuzz_counts["hires"] += 1
        fix = checked.hires
        assert fix.upscaler in HIRES_UPSCALERS and fix.schedule in ("", *SCHEDULES)
        assert fix.sampler is None or fix.sampler in checker.catalog.samplers
        sampler, schedule = fix.sampler_and_schedule(s)
        assert schedule == "Automatic" or checker.catalog.samplers[sampler]
        assert max(fix.target(checked.width, checked.height)) <= 512 and 0 < fix.denoising_strength <= 1
        assert isinstance(fix.prompt, str) and isinstance(fix.negative_prompt, str)


def test_fuzz_summary(reliability, fuzz_counts: dict[str, int]) -> None:
    assert fuzz_counts["accepted"] > 10 and fuzz_counts["refused"] > 10 and fuzz_counts["hires"] > 3, fuzz_counts
    reliability(AREA, f"hypothesis fuzz: {fuzz_counts['accepted'] + fuzz_counts['refused']} random text-to-image "
                "requests, half with a hires fix",
                f"{fuzz_counts['refused']} refused with InvalidRequest, {fuzz_counts['accepted']} accepted and "
                f"normalised in range ({fuzz_counts['hires']} with a hires fix); no other exception")
