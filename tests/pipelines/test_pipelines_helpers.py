"""The pipelines' small pieces: metadata round trip, image/mask processing vs diffusers, masks, preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sd2_app.pipelines.images import postprocess, preprocess_image, preprocess_mask, round_size
from sd2_app.pipelines.masks import crop_box, feather, paste_back
from sd2_app.pipelines.metadata import (
    attach_parameters,
    format_parameters,
    parse_parameters,
    read_png_parameters,
    save_png,
    size_of,
)
from sd2_app.pipelines.preview import latents_to_rgb, preview_images
from sd2_app.pipelines.loop import rescale_guidance

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                max_size=40)
_value = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   _text)
_key = st.from_regex(r"[A-Z][a-z]{0,8}( [a-z]{1,6})?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(prompt=_text, negative=_text, settings_=st.dictionaries(_key, _value, max_size=8))
def test_parameters_round_trip(prompt: str, negative: str, settings_: dict) -> None:
    if prompt.startswith("Negative prompt: ") or "\nNegative prompt: " in prompt:
        return  # ambiguous by the format's design (A1111 has the same limitation)
    settings_ = {"Steps": 25, "Sampler": "Euler", "Seed": 1, **settings_}  # as every image we write: 3+ pairs
    parsed = parse_parameters(format_parameters(prompt, negative, settings_))
    assert parsed.pop("Prompt") == prompt
    assert parsed.pop("Negative prompt") == negative
    assert parsed == settings_


def test_a1111_text_parses() -> None:
    text = ("a castle, highly detailed\nNegative prompt: blurry, lowres\nSteps: 25, Sampler: DPM++ 2M, "
            "Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 512x768, Model: sd21-base, "
            "Denoising strength: 0.7")
    params = parse_parameters(text)
    assert params == {"Prompt": "a castle, highly detailed", "Negative prompt": "blurry, lowres", "Steps": 25,
                      "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.5, "Seed": 1,
                      "Size": "512x768", "Model": "sd21-base", "Denoising strength": 0.7}
    assert size_of(params) == (512, 768)


def test_png_text_chunk_round_trip(tmp_path: Path) -> None:
    text = format_parameters("a cat", "dog", {"Steps": 3, "Seed": 42, "Size": "8x8"})
    image = attach_parameters(Image.new("RGB", (8, 8)), text)
    path = save_png(image, tmp_path / "x.png")
    assert read_png_parameters(path) == text
    with Image.open(path) as opened:
        assert read_png_parameters(opened) == text
    assert read_png_parameters(Image.new("RGB", (4, 4))) is None


def test_image_processing_matches_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    ref = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=8)
    assert torch.equal(preprocess_image(image), ref.preprocess(image))
    assert torch.equal(preprocess_image(image, 40, 24), ref.preprocess(image, height=24, width=40))
    x4 = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=4, resample="bicubic")
    assert torch.equal(preprocess_image(image, factor=4, resample=Image.Resampling.BICUBIC), x4.preprocess(image))
    mask = Image.fromarray(rng.integers(0, 256, (45, 61), dtype=np.uint8))
    masks = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True,
                                                        do_convert_grayscale=True)
    assert torch.equal(preprocess_mask(mask, 56, 40), masks.preprocess(mask, height=40, width=56))
    x = torch.rand(2, 3, 8, 8) * 2.4 - 1.2
    expected = ref.postprocess(x, output_type="pil")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(postprocess(x), expected, strict=True))


def test_round_size() -> None:
    assert round_size(60, 43) == (64, 40) and round_size(512, 768) == (512, 768) and round_size(3, 3) == (8, 8)


def test_feather_is_zero_outside_and_one_deep_inside() -> None:
    mask = Image.new("L", (60, 50), 0)
    mask.paste(255, (10, 5, 50, 45))
    alpha = feather(mask, 6)
    binary = np.asarray(mask) > 0
    assert (alpha[~binary] == 0).all()
    assert alpha[25, 30] == 1.0 and 0 < alpha[5, 30] < 0.2  # centre, and the edge row inside the mask
    assert (np.diff(alpha[5:25, 30]) >= 0).all()  # a ramp, rising towards the inside
    assert np.array_equal(feather(mask, 0), binary.astype(np.float32))
    original, generated = Image.new("RGB", (60, 50), (10, 20, 30)), Image.new("RGB", (60, 50), (200, 100, 0))
    pasted = np.asarray(paste_back(original, generated, mask, 6))
    assert (pasted[~binary] == (10, 20, 30)).all() and (pasted[25, 30] == (200, 100, 0)).all()


def test_crop_box_pads_squares_and_stays_inside() -> None:
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (150, 40, 190, 60))
    box = crop_box(mask, padding=8, aspect=1.0)
    assert box is not None
    left, top, right, bottom = box
    assert 0 <= left and right <= 200 and 0 <= top and bottom <= 100
    assert right - left == bottom - top == 56  # 40 + 2*8 wide, squared
    assert left <= 142 and right >= 198 - 0  # contains the padded mask box (clipped to the image)
    assert crop_box(Image.new("L", (10, 10)), 4, 1.0) is None
    edge = Image.new("L", (64, 64), 0)
    edge.paste(255, (0, 0, 10, 64))  # touches three borders: the box is clamped, not shifted outside
    assert crop_box(edge, 8, 1.0) == (0, 0, 64, 64)


def test_preview_colours() -> None:
    latents = torch.zeros(1, 4, 2, 3)
    latents[0, 0] = 1.0  # first latent channel: warm grey-ish (0.298, 0.207, 0.208)
    rgb = latents_to_rgb(latents)
    assert rgb.shape == (1, 3, 2, 3)
    assert torch.allclose(rgb[0, :, 0, 0], torch.tensor([0.298, 0.207, 0.208]))
    images = preview_images(torch.randn(2, 4, 8, 6) * 3)
    assert len(images) == 2 and images[0].size == (6, 8) and images[0].mode == "RGB"  # latent size


def test_guidance_rescale_matches_its_definition() -> None:
    torch.manual_seed(0)
    cond, pred = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5) * 3
    out = rescale_guidance(pred, cond, 0.7)
    std_c = cond.std(dim=(1, 2, 3), keepdim=True)
    std_p = pred.std(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(out, 0.7 * pred * std_c / std_p + 0.3 * pred)
    assert torch.allclose(rescale_guidance(pred, cond, 1.0).std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))


def test_plan_sampling_strength_edges() -> None:
    """Strength 1 runs the whole schedule from its first sigma; a strength that leaves no step is refused in words
    (the pipelines' own guard, behind the service's validation); eta only reaches DDIM."""
    from sd2_app.errors import InvalidRequest
    from sd2_app.pipelines.sampling import plan_sampling
    from sd2_app.api.requests import Sampling
    from sd2_app.samplers import SchedulerConfig, make_schedule

    config = SchedulerConfig.from_dict({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                        "set_alpha_to_one": False, "steps_offset": 1})
    full = make_schedule(config, "DDIM", 10)
    plan = plan_sampling(config, Sampling(sampler="DDIM", steps=10, eta=0.5), strength=1.0)
    assert plan.schedule.sigmas == full.sigmas and plan.schedule.timesteps[0] == 901
    assert plan.options == {"eta": 0.5}
    assert len(plan_sampling(config, Sampling(steps=10), strength=0.1).schedule) == 1
    assert plan_sampling(config, Sampling(sampler="Euler", steps=10, eta=0.5)).options == {}
    with pytest.raises(InvalidRequest, match="leaves no step"):
        plan_sampling(config, Sampling(steps=10), strength=0.09)


def _reference_bytes(x: torch.Tensor) -> np.ndarray:
    """diffusers' numpy path: denormalize, clamp, to numpy, * 255, round half to even, uint8."""
    import diffusers

    ref = diffusers.image_processor.VaeImageProcessor(vae_scale_factor=8)
    return np.stack([np.asarray(a) for a in ref.postprocess(x, output_type="pil")])


def test_postprocess_bytes_equal_the_reference_on_a_dense_grid() -> None:
    """Every fp32 value on a fine grid over [-1.1, 1.1] (rounding ties included) gives the reference's byte."""
    pytest.importorskip("diffusers")
    grid = torch.linspace(-1.1, 1.1, 3 * 64 * 256)
    ties = ((torch.arange(256, dtype=torch.float32) + 0.5) / 255 - 0.5) * 2  # values that land near k + 0.5
    x = torch.cat([grid, ties.repeat(3 * 64 * 256 // 256)]).reshape(2, 3, 64, 256)
    ours = np.stack([np.asarray(a) for a in postprocess(x)])
    assert ours.shape == (2, 64, 256, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, _reference_bytes(x))


@pytest.mark.gpu
def test_postprocess_on_the_gpu_gives_the_cpu_bytes() -> None:
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3)) * 2.2 - 1.1
    on_gpu = np.stack([np.asarray(a) for a in postprocess(x.cuda())])
    assert np.array_equal(on_gpu, np.stack([np.asarray(a) for a in postprocess(x)]))


class _RecordingVAE(torch.nn.Module):
    """Just enough of a VAE for `decode`: records its calls; decodes to 8x the size (NaN when asked)."""

    def __init__(self, events: list[str], nan: bool = False) -> None:
        super().__init__()
        self.post_quant_conv, self.decoder = torch.nn.Conv2d(4, 4, 1), torch.nn.Identity()
        self.config = type("Config", (), {"block_out_channels": [1, 1, 1, 1], "scaling_factor": 0.18215})()
        self.events, self.nan = events, nan

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.events.append("decode")
        out = torch.zeros(z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8)
        return out.fill_(float("nan")) if self.nan else out


def test_decode_reads_the_device_once_after_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """No host read before the decode (it would let the GPU idle while the decoder's kernels are launched):
    one read of both checks after it. Non-finite latents or pixels are refused after that one read; what to
    try next is the fallback ladder's decision, not the decode's."""
    from sd2_app.pipelines.run_mode import NonFiniteError
    from sd2_app.pipelines.vae_io import decode

    events: list[str] = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: events.append("read") or tolist(self))
    pixels = decode(_RecordingVAE(events), torch.zeros(1, 4, 3, 2))
    assert pixels.shape == (1, 3, 24, 16) and events == ["decode", "read"]
    events.clear()
    with pytest.raises(NonFiniteError, match="latents"):
        decode(_RecordingVAE(events), torch.full((1, 4, 3, 2), float("nan")))
    assert events == ["decode", "read"]
    events.clear()
    with pytest.raises(NonFiniteError, match="image"):  # finite latents, NaN pixels: no retry here
        decode(_RecordingVAE(events, nan=True), torch.zeros(1, 4, 3, 2))
    assert events == ["decode", "read"]
