"""Service: server-side validation (exact messages), seeds, progress, Stop, saving, history (plots: test_xyz_plot.py).

The pipelines and the manager are replaced by the doubles of tests/ui_doubles.py, so these tests measure the
service's own behaviour in milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from sd2_app.errors import Cancelled, InvalidRequest
from sd2_app.pipelines.metadata import read_png_parameters
from sd2_app.api.requests import (
    DepthRequest,
    Img2ImgRequest,
    InpaintRequest,
    OutpaintRequest,
    Sampling,
    Txt2ImgRequest,
    UpscaleRequest,
)
from sd2_app.api.checks import MAX_SEED, Limits
from sd2_app.api.image_inputs import to_mask, to_rgb
from sd2_app.api.validation import validate
from tests.ui_doubles import fake_catalog, fake_service

CATALOG = fake_catalog()


def _txt(**sampling: object) -> Txt2ImgRequest:
    settings: dict[str, object] = {"seed": 1, "steps": 2, **sampling}
    return Txt2ImgRequest("a cat", width=64, height=64, sampling=Sampling(**settings))  # type: ignore[arg-type]


def _image(w: int = 64, h: int = 64, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (w, h))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_txt(steps=0), "Steps must be between 1 and 150, got 0."),
        (_txt(steps=151), "Steps must be between 1 and 150, got 151."),
        (_txt(steps=2.5), "Steps must be a whole number, got 2.5."),
        (_txt(cfg_scale=math.nan), "Guidance scale must be between 0 and 30, got nan."),
        (_txt(cfg_scale=31), "Guidance scale must be between 0 and 30, got 31."),
        (_txt(cfg_scale="7"), "Guidance scale must be a number, got '7'."),
        (_txt(guidance_rescale=1.5), "Guidance rescale must be between 0 and 1, got 1.5."),
        (_txt(seed=-2), "Seed must be -1 (random) or between 0 and 4294967295, got -2."),
        (_txt(seed=2**32), "Seed must be -1 (random) or between 0 and 4294967295, got 4294967296."),
        (_txt(batch_size=9), "Images per prompt must be between 1 and 8, got 9."),
        (_txt(sampler="Nope"), "Unknown sampler 'Nope'; choose one of: DPM++ 2M, Euler a, Euler, DDIM, UniPC, "
                               "DPM++ 2M SDE, Heun."),
        (_txt(sampler="DDIM", schedule="Karras"), "Schedule type Karras is not available for the DDIM sampler; pick "
                                                  "Automatic."),
        (_txt(schedule="Turbo"), "Schedule type must be one of Automatic, Uniform, Karras, Exponential, Polyexponential, SG"
                                 "M Uniform, KL Optimal, Align Your Steps, Simple, Normal, Beta; got 'Turbo'."),
        (replace(_txt(), prompt=5), "Prompt must be text, got int."),
        (replace(_txt(), prompt="x" * 2001), "Prompt is 2001 characters long; the limit is 2000."),
        (replace(_txt(), width=32), "Width must be between 64 and 1024, got 32."),
        (replace(_txt(), height=4096), "Height must be between 64 and 1024, got 4096."),
        (replace(_txt(), checkpoint="sd3"), "Unknown checkpoint 'sd3'; choose one of: sd2-base, sd2, sd21-base, sd21, "
                                            "sd2-inpainting, sd2-depth, x4-upscaler."),
        (replace(_txt(), checkpoint="sd2-depth"), "Checkpoint 'sd2-depth' cannot do txt2img; use one of: sd2-base, sd2, "
                                                  "sd21-base, sd21."),
        (Img2ImgRequest("x", None), "Upload an init image first."),  # type: ignore[arg-type]
        (Img2ImgRequest("x", "path.png"), "An init image must be an image, got str."),  # type: ignore[arg-type]
        (Img2ImgRequest("x", _image(4, 64)), "An init image is 4x64; each side needs at least 8 pixels."),
        (Img2ImgRequest("x", _image(), strength=1.5), "Strength must be between 0 and 1, got 1.5."),
        (Img2ImgRequest("x", _image(), strength=0.01),
         "Strength 0.01 with 25 steps runs no denoising step; raise the strength or the steps."),
        (InpaintRequest("x", _image(), None), "Paint a mask over the area to repaint (or upload a mask image)."),  # type: ignore[arg-type]
        (InpaintRequest("x", _image(), _image(mode="L")), "The mask is empty: paint over the area to repaint (white = repaint)."),
        (InpaintRequest("x", _image(), Image.new("L", (64, 64), 255), mask_mode="Inpaint not masked"),
         'The mask covers the whole image, and Mask mode "Inpaint not masked" repaints what it does not cover: '
         "nothing."),
        (InpaintRequest("x", _image(), Image.new("L", (64, 64), 255), mask_mode="inverted"),
         "Unknown mask mode 'inverted'; choose one of: Inpaint masked, Inpaint not masked."),
        (UpscaleRequest("x", _image(), noise_level=351), "Noise level must be between 0 and 350, got 351."),
        (UpscaleRequest("x", _image(600, 600)),
         "An image to upscale is 600x600; images up to 512x512 pixels (or the same area in another shape) are accepted."),
        (DepthRequest("x", _image(), depth_map=_image(2, 2)), "The depth map is 2x2; each side needs at least 8 pixels."),
        (OutpaintRequest("x", None), "Upload an image to outpaint first."),  # type: ignore[arg-type]
        (OutpaintRequest("x", _image(), left=0, right=0, up=0, down=0), "Choose how far to extend the image: left, right, up or down (multiples of 8)."),
        (OutpaintRequest("x", _image(), left=12, right=0, up=0, down=3),
         "Outpaint margins must be multiples of 8 pixels; got left 12, down 3."),
        (OutpaintRequest("x", _image(), up=-8), "Outpaint up must be between 0 and 1024, got -8."),
        (OutpaintRequest("x", _image(1000, 64), left=0, right=32, up=0, down=0),
         "The extended image would be 1032x64; each side may be at most 1024 pixels. Extend less or start from a "
         "smaller image."),
        (OutpaintRequest("x", _image(), left=8, fill="mirror"),
         "Unknown outpaint fill 'mirror'; choose one of: edge, blur, solid."),
        (OutpaintRequest("x", _image(), left=8, checkpoint="sd21"),
         "Checkpoint 'sd21' cannot do outpaint; use one of: sd2-inpainting."),
        (OutpaintRequest("x", _image(), left=8, mask_blur=65), "Mask blur must be between 0 and 64, got 65."),
    ],
)
def test_invalid_requests_have_exact_messages(request_: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate(request_, CATALOG)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_seed_minus_one_and_none_draw_a_seed_in_range() -> None:
    seeds = {validate(_txt(seed=s), CATALOG)[0].sampling.seed for s in (None, -1, -1.0, None, -1)}
    assert all(0 <= s <= MAX_SEED for s in seeds)
    assert len(seeds) >= 4  # 5 draws from 2**32 values: a repeat has probability ~2e-9
    assert validate(_txt(seed=12345), CATALOG)[0].sampling.seed == 12345
    assert validate(_txt(seed=float(MAX_SEED)), CATALOG)[0].sampling.seed == MAX_SEED


def test_sizes_default_to_the_checkpoint_and_round_to_multiples_of_8() -> None:
    native, _ = validate(Txt2ImgRequest("x", checkpoint="sd21"), CATALOG)
    assert (native.width, native.height) == (768, 768)
    rounded, warnings = validate(replace(_txt(), width=100, height=67), CATALOG)
    assert (rounded.width, rounded.height) == (104, 64)
    assert warnings == ["Width 100 was rounded to 104 (a multiple of 8).", "Height 67 was rounded to 64 (a multiple of 8)."]
    capped, _ = validate(replace(_txt(), width=2000), CATALOG, Limits(max_side=2048))
    assert capped.width == 2000


def test_control_characters_are_stripped_and_newlines_kept() -> None:
    checked, _ = validate(replace(_txt(), prompt="\x00a\tcat\x1b\nsleeping\x7f ", negative_prompt=None), CATALOG)
    assert checked.prompt == "a cat\nsleeping"
    assert checked.negative_prompt == ""


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "L", "1", "F"])
def test_image_modes_become_rgb(mode: str) -> None:
    image = Image.new(mode, (16, 8))
    checked, _ = validate(Img2ImgRequest("x", image, strength=0.5, sampling=Sampling(steps=4)), CATALOG)
    assert checked.image.mode == "RGB" and checked.image.size == (16, 8)


def test_sixteen_bit_and_transparent_pixels_are_scaled_and_flattened_on_white() -> None:
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))  # mode I;16
    assert to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    half = Image.fromarray(np.full((8, 8), 32896, np.uint16))  # mode I;16
    assert to_rgb(half).getpixel((0, 0)) == (128, 128, 128)
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (32, 16))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = Image.open(_png_bytes(image, exif.tobytes()))
    assert to_rgb(rotated).size == (16, 32)


def _png_bytes(image: Image.Image, exif: bytes):  # -> BytesIO
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    return buffer


def test_masks_use_painted_alpha_or_luminance_and_are_resized_with_a_warning() -> None:
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (8, 8, 16, 16))
    alpha = np.asarray(to_mask(layer))
    assert alpha.sum() == 64 * 255 and alpha[10, 10] == 255
    opaque = Image.new("RGBA", (32, 32), (255, 255, 255, 255))
    assert np.asarray(to_mask(opaque)).min() == 255
    checked, warnings = validate(InpaintRequest("x", _image(64, 64), layer), CATALOG)
    assert checked.mask.size == (64, 64) and checked.mask.mode == "L"
    assert np.asarray(checked.mask).sum() == 256 * 255  # the 8x8 square became 16x16 (nearest)
    assert warnings == ["The mask (32x32) was resized to the image (64x64)."]


def test_large_inputs_are_shrunk_to_the_size_cap_with_a_warning() -> None:
    checked, warnings = validate(DepthRequest("x", _image(2000, 1000)), CATALOG)
    assert checked.image.size == (1024, 512)
    assert warnings == ["The image (2000x1000) was resized to 1024x512 to fit 1024 pixels."]
    with pytest.raises(InvalidRequest, match="images up to 2048x2048 pixels"):
        validate(DepthRequest("x", _image(2100, 2100)), CATALOG)


# ---- Service.run ------------------------------------------------------------------------------------


def test_run_reports_progress_previews_seed_and_saves_png_with_parameters(tmp_path) -> None:
    service = fake_service(tmp_path)
    events: list[tuple[int, int, bool]] = []
    result = service.run(replace(_txt(steps=5), sampling=Sampling(steps=5, seed=None, batch_size=2)),
                         on_progress=lambda d, t, p: events.append((d, t, p is not None)))
    assert [e[:2] for e in events] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert [e[2] for e in events] == [False, True, False, True, False]  # every 2nd step, never the last
    assert 0 <= result.seed <= MAX_SEED and service.last_seed == result.seed
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert len(result.saved) == 2 and all(p.parent.parent == tmp_path for p in result.saved)
    assert read_png_parameters(result.saved[0]) == result.images[0].info["parameters"]
    assert f"Seed: {result.seed}," in read_png_parameters(result.saved[0])
    assert set(result.timings) == {"validate", "gate", "load", "run", "preview", "mark", "encode", "save", "history"}
    history = service.history()
    assert len(history) == 1 and history[0].seed == result.seed and history[0].saved == tuple(result.saved)


def test_progress_total_is_the_steps_the_pipeline_runs() -> None:
    # img2img at strength 0.5 runs int(8 * 0.5) = 4 of the 8 requested steps: the bar must end at 4/4, not 4/8.
    service = fake_service(None)
    events: list[tuple[int, int]] = []
    service.run(Img2ImgRequest("x", _image(), strength=0.5, sampling=Sampling(steps=8, seed=1)),
                on_progress=lambda d, t, p: events.append((d, t)))
    assert events == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_outpaint_runs_on_the_inpainting_checkpoint_with_the_image_unchanged(tmp_path) -> None:
    service = fake_service(tmp_path)
    image = Image.new("RGB", (61, 45), (1, 2, 3))  # not a multiple of 8: outpainting never resizes its input
    result = service.run(OutpaintRequest("x", image, left=8, right=0, up=16, down=0, sampling=Sampling(steps=2, seed=3)))
    assert result.task == "outpaint" and service.manager.used == ["sd2-inpainting"]
    checked = result.request
    assert checked.image.size == (61, 45) and (checked.left, checked.up, checked.fill) == (8, 16, "edge")
    assert result.images[0].size == (69, 61) and result.saved[0].name.endswith("-3-outpaint.png")


def test_saving_can_be_turned_off(tmp_path) -> None:
    service = fake_service(None)
    result = service.run(_txt())
    assert result.saved == [] and len(service.history()) == 1


def test_stop_raises_cancelled_at_the_next_step() -> None:
    service = fake_service(None)
    seen: list[int] = []
    with pytest.raises(Cancelled):
        service.run(_txt(steps=10), on_progress=lambda d, t, p: seen.append(d), should_stop=lambda: len(seen) >= 3)
    assert seen == [1, 2, 3]
    assert service.history() == []


def test_inpaint_result_carries_the_mask_and_depth_the_depth_map() -> None:
    service = fake_service(None)
    mask = Image.new("L", (64, 64), 255)
    inpainted = service.run(InpaintRequest("x", _image(), mask, sampling=Sampling(steps=2, seed=3)))
    assert inpainted.mask_image is not None and inpainted.mask_image.size == (64, 64)
    depth = service.run(DepthRequest("x", _image(), sampling=Sampling(steps=2, seed=3)))
    assert depth.depth_image is not None
    upscaled = service.run(UpscaleRequest("x", _image(16, 16), sampling=Sampling(steps=2, seed=3)))
    assert upscaled.images[0].size == (64, 64)


def test_catalog_views_and_model_operations() -> None:
    service = fake_service(None)
    assert service.checkpoints("inpaint") == [("SD 2 inpainting", "sd2-inpainting")]
    assert service.resolution("sd2") == 768
    service.load("sd2")
    assert service.status()["models"]["loaded"] == ["sd2"]
    assert service.unload("sd2-base") == []  # not loaded
    assert service.unload(None) == ["sd2"]
    assert service.status()["models"]["loaded"] == []
    with pytest.raises(InvalidRequest, match="Unknown checkpoint 'x'."):
        service.load("x")


def test_saved_numbers_continue_after_a_deleted_file_instead_of_overwriting(tmp_path) -> None:
    service = fake_service(tmp_path)
    first = [service.run(_txt()).saved[0] for _ in range(3)]  # seed 1 each time: the names differ by number only
    first[0].unlink()
    again = service.run(_txt()).saved[0]
    assert [p.name[:5] for p in first] == ["00000", "00001", "00002"] and again.name.startswith("00003-1-")
    assert len(list(again.parent.glob("*.png"))) == 3


def test_a_failed_save_keeps_the_result_and_says_so(tmp_path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    service = fake_service(blocker)
    result = service.run(_txt())
    assert result.saved == [] and len(result.images) == 1 and len(service.history()) == 1
    assert len(result.warnings) == 1 and result.warnings[0].startswith("The images could not be saved")
