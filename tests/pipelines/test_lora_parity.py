"""LoRAs merged for a job: parity with diffusers' `load_lora_weights` on the same file, the weights put back bit for
bit, and a LoRA for another model refused before anything changes."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from tests.pipeline_fixtures import ComponentCache, assert_matches_reference, reference_pipeline, reference_run

from sd2_app.api.lora_tools import LoraTools
from sd2_app.api.requests import Img2ImgRequest, Sampling, Txt2ImgRequest
from sd2_app.errors import InvalidRequest
from sd2_app.loading.loras import LoraLibrary
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.lora import backup_device, lora_targets
from sd2_app.pipelines.metadata import parse_parameters
from sd2_app.pipelines.txt2img import txt2img
from sd2_app.testing.tiny_lora import random_lora, write_lora

pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers' LoRA loading needs it

PROMPT = "a red fox in snow"


def _state(components) -> dict[str, torch.Tensor]:
    return {name: weight.detach().clone() for name, weight in lora_targets(components).items()}


def _same_weights(components, before: dict[str, torch.Tensor]) -> None:
    after = lora_targets(components)
    assert all(torch.equal(after[name], weight) for name, weight in before.items())


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two LoRAs for the tiny SD 2 base: a LoCon (UNet convs and text encoder too), and a UNet-only one whose
    layers are stored in the 4-D form some trainers write for Linear layers."""
    from tests.pipeline_fixtures import load_components

    components = load_components("sd2-base")
    folder = tmp_path_factory.mktemp("loras")
    write_lora(folder / "tiny-locon.safetensors", random_lora(components, seed=1))
    unet_only = random_lora(components, seed=2, text_encoder=False, conv=False, alpha=None)
    write_lora(folder / "tiny-unet.safetensors",
               {k: v[..., None, None] if v.ndim == 2 else v for k, v in unet_only.items()})
    write_lora(folder.parent / "tiny-unet-2d.safetensors", unet_only)  # the same for diffusers (2-D only)
    return folder


def _run_with(tools: LoraTools, components, request):
    with tools.merged(dataclasses.replace(components), request.prompt) as lent:
        return txt2img(lent, request) if isinstance(request, Txt2ImgRequest) else img2img(lent, request)


@pytest.mark.parametrize(("tag", "adapter_weight"), [("<lora:tiny-locon:0.8>", 0.8), ("<lyco:tiny-locon>", 1.0)])
def test_txt2img_with_a_lora_matches_diffusers(components: ComponentCache, lora_folder: Path, tag: str,
                                               adapter_weight: float) -> None:
    ours_components = components("sd2-base")
    before = _state(ours_components)
    tools = LoraTools(LoraLibrary.scan(lora_folder))
    sampling = Sampling(sampler="DPM++ 2M", steps=4, cfg_scale=7.5, seed=42, batch_size=1)
    request = Txt2ImgRequest(prompt=f"{PROMPT} {tag}", negative_prompt="blurry", width=64, height=48,
                             sampling=sampling)
    ours = _run_with(tools, ours_components, request)
    _same_weights(ours_components, before)

    pipe = reference_pipeline("sd2-base", "DPM++ 2M")
    pipe.load_lora_weights(str(lora_folder / "tiny-locon.safetensors"), adapter_name="locon")
    pipe.set_adapters(["locon"], [adapter_weight])
    reference = reference_run(pipe, 42, prompt=PROMPT, negative_prompt="blurry", width=64, height=48,
                              num_inference_steps=4, guidance_scale=7.5)
    assert_matches_reference(ours, reference)
    plain = reference_run(reference_pipeline("sd2-base", "DPM++ 2M"), 42, prompt=PROMPT, negative_prompt="blurry",
                          width=64, height=48, num_inference_steps=4, guidance_scale=7.5)
    assert (ours.latents - plain[0]).abs().max() > 1e-2  # the LoRA changed the image: the parity is no accident
    params = parse_parameters(ours.images[0].info["parameters"])
    assert params["Prompt"] == request.prompt  # the tag stays in the prompt, as A1111 writes it
    digest = hashlib.sha256((lora_folder / "tiny-locon.safetensors").read_bytes()).hexdigest()[:12]
    assert params["Lora hashes"] == f"tiny-locon: {digest}"


def test_unet_multiplier_alone_and_two_loras_add_up(components: ComponentCache, lora_folder: Path) -> None:
    """`<lora:name:0:0.6>` changes only the UNet (diffusers: a UNet-only adapter at 0.6); two LoRAs' changes add
    (diffusers: both adapters active)."""
    ours_components = components("sd2-base")
    before = _state(ours_components)
    tools = LoraTools(LoraLibrary.scan(lora_folder))
    sampling = Sampling(sampler="Euler", steps=3, cfg_scale=5.0, seed=7)
    request = Img2ImgRequest(prompt=f"{PROMPT} <lora:tiny-unet:0.6> <lora:tiny-locon:0:0.5>", image=None,
                             sampling=sampling, strength=0.75)
    from tests.pipeline_fixtures import sample_image

    request = dataclasses.replace(request, image=sample_image(64, 48))
    ours = _run_with(tools, ours_components, request)
    _same_weights(ours_components, before)

    pipe = reference_pipeline("sd2-base", "Euler", img2img=True)
    pipe.load_lora_weights(str(lora_folder.parent / "tiny-unet-2d.safetensors"), adapter_name="unet")
    pipe.load_lora_weights(str(lora_folder / "tiny-locon.safetensors"), adapter_name="locon")
    pipe.set_adapters(["unet", "locon"], [0.6, {"unet": 0.5, "text_encoder": 0.0}])
    assert_matches_reference(ours, reference_run(pipe, 7, prompt=PROMPT, image=sample_image(64, 48), strength=0.75,
                                                 num_inference_steps=3, guidance_scale=5.0))


def test_weights_come_back_when_the_job_fails(components: ComponentCache, lora_folder: Path) -> None:
    ours_components = components("sd2-base")
    before = _state(ours_components)
    tools = LoraTools(LoraLibrary.scan(lora_folder))
    with pytest.raises(RuntimeError, match="the job failed"):
        with tools.merged(dataclasses.replace(ours_components), "x <lora:tiny-locon:1>") as lent:
            changed = [n for n, w in lora_targets(lent).items() if not torch.equal(w, before[n])]
            assert len(changed) > 50 and lent.loras[0][0] == "tiny-locon"
            raise RuntimeError("the job failed")
    _same_weights(ours_components, before)


def test_a_lora_for_another_model_is_refused_before_any_weight_changes(components: ComponentCache,
                                                                      tmp_path: Path) -> None:
    """The x4 upscaler's UNet has the same layer names with other widths: the SD 2 base LoRA does not fit it."""
    base, upscaler = components("sd2-base"), components("x4-upscaler")
    write_lora(tmp_path / "base.safetensors", random_lora(base, seed=3))
    tools = LoraTools(LoraLibrary.scan(tmp_path))
    before = _state(upscaler)
    with pytest.raises(InvalidRequest, match=r"^The LoRA 'base' does not fit this checkpoint: its layer lora_"):
        with tools.merged(dataclasses.replace(upscaler), "<lora:base:1>"):
            pass
    _same_weights(upscaler, before)


def test_the_weights_copies_stay_on_the_gpu_only_while_it_has_room() -> None:
    gpu, gib = torch.device("cuda", 0), 2**30
    assert backup_device(gpu, needed=1 * gib, free=6 * gib) == gpu  # 1 GiB of copies + 4 GiB for the job
    assert backup_device(gpu, needed=1 * gib, free=5 * gib - 1) == torch.device("cpu")
    assert backup_device(torch.device("cpu"), needed=100 * gib, free=None) == torch.device("cpu")


def test_a_file_replaced_after_start_up_is_read_as_it_is_now(tmp_path: Path) -> None:
    from sd2_app.pipelines.lora import read_lora

    layer = "lora_unet_conv_in"
    write_lora(tmp_path / "x.safetensors", {f"{layer}.lora_down.weight": torch.ones(2, 4, 3, 3),
                                            f"{layer}.lora_up.weight": torch.ones(8, 2, 1, 1)})
    file = LoraLibrary.scan(tmp_path).files["x"]
    write_lora(tmp_path / "x.safetensors", {"something_else": torch.zeros(1)})
    with pytest.raises(InvalidRequest, match=r"^The LoRA file 'x.safetensors' holds no LoRA layers any more\.$"):
        read_lora(file)
    (tmp_path / "x.safetensors").write_bytes(b"broken")
    with pytest.raises(InvalidRequest, match=r"^The LoRA file 'x.safetensors' cannot be read any more \("):
        read_lora(file)
    write_lora(tmp_path / "x.safetensors", {f"{layer}.lora_down.weight": torch.ones(2, 4, 3, 3),
                                            f"{layer}.lora_up.weight": torch.ones(8, 2, 1, 1)})
    weights = read_lora(file)
    assert list(weights.layers) == [layer] and weights.layers[layer][1] == 1.0  # no alpha: alpha = rank
    assert weights.nbytes == (2 * 4 * 9 + 8 * 2) * 4


def test_a_base_models_lora_changes_the_inpainting_unets_first_input_channels_only(components: ComponentCache,
                                                                                  tmp_path: Path) -> None:
    """A1111's rule for the inpainting UNet's 9-channel conv_in (its mask and masked-image channels get no change),
    for the depth UNet's 5 channels too."""
    base = components("sd2-base")
    tensors = random_lora(base, seed=5, dtype=torch.float32)
    conv_in = lora_targets(base)["lora_unet_conv_in"]
    out_channels, in_channels = conv_in.shape[:2]
    g = torch.Generator().manual_seed(6)
    tensors["lora_unet_conv_in.lora_down.weight"] = torch.randn(2, in_channels, 3, 3, generator=g)
    tensors["lora_unet_conv_in.lora_up.weight"] = torch.randn(out_channels, 2, 1, 1, generator=g)
    tensors["lora_unet_conv_in.alpha"] = torch.tensor(2.0)
    write_lora(tmp_path / "base.safetensors", tensors)
    tools = LoraTools(LoraLibrary.scan(tmp_path))
    expected = (tensors["lora_unet_conv_in.lora_up.weight"].flatten(1)
                @ tensors["lora_unet_conv_in.lora_down.weight"].flatten(1)).reshape(out_channels, in_channels, 3, 3)
    for kind, channels in (("sd2-inpainting", 9), ("sd2-depth", 5)):
        model = components(kind)
        before = lora_targets(model)["lora_unet_conv_in"].detach().clone()
        assert before.shape[1] == channels
        with tools.merged(dataclasses.replace(model), "<lora:base:0.5>"):
            change = lora_targets(model)["lora_unet_conv_in"] - before
        torch.testing.assert_close(change[:, :in_channels], 0.5 * expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(change[:, in_channels:], torch.zeros_like(change[:, in_channels:]))
        assert torch.equal(lora_targets(model)["lora_unet_conv_in"], before)
