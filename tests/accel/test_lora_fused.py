"""A LoRA merged into a UNet with accel's fused twins (on the CPU, where each twin computes the plain math): the
stacked projection views and the sub-pixel upsampler's summed kernels follow the merged weights, and go back
with them; on a GPU (skipped without one) the default path's captured CUDA graphs replay them too."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sd2_app.accel.fused import fuse_modules
from sd2_app.accel.fused.upsample import SubpixelUpsample2D
from sd2_app.pipelines.lora import lora_weights, merged
from sd2_app.testing.tiny_lora import random_lora


def test_fused_unet_with_a_lora_computes_the_plain_unet_with_it() -> None:
    from tests.pipeline_fixtures import load_components

    plain = load_components("sd2-base")
    fused = dataclasses.replace(plain, unet=copy.deepcopy(plain.unet))
    assert fuse_modules(fused.unet) > 0
    assert sum(type(m) is SubpixelUpsample2D for m in fused.unet.modules()) > 0
    tensors = random_lora(plain, seed=4, scale=1.0, dtype=torch.float32)
    assert any("upsamplers_0_conv" in key for key in tensors)
    lora = [(lora_weights("locon", tensors), 1.0, 1.0)]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    t = torch.tensor([500, 500])
    context = torch.randn(2, 77, plain.unet.config.cross_attention_dim, generator=generator)

    def run(components) -> torch.Tensor:
        with torch.no_grad():
            return components.unet(sample, t, context)

    before = run(fused)
    with merged(plain, lora), merged(fused, lora):
        expected, got = run(plain), run(fused)
    assert (expected - before).abs().max() > 1e-2  # the LoRA changed the output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run(fused), before, rtol=0, atol=0)  # put back, the summed kernels too


@pytest.mark.gpu
def test_default_path_graphs_replay_the_merged_weights_and_the_plain_ones_after(tmp_path: Path) -> None:
    """On a GPU, fp16, CUDA graphs captured before the merge: the LoRA job's image is the eager fp32 path's LoRA
    image within the plain images' own fp16 budget, and the job after it replays the first image exactly."""
    from tests.accel.test_gpu_numerics import _as_array, _manager
    from tests.pipeline_fixtures import load_components

    from sd2_app.api.lora_tools import LoraTools
    from sd2_app.api.requests import Sampling, Txt2ImgRequest
    from sd2_app.loading.loras import LoraLibrary
    from sd2_app.pipelines.txt2img import txt2img
    from sd2_app.testing.tiny_lora import write_lora

    write_lora(tmp_path / "loras" / "locon.safetensors", random_lora(load_components("sd2-base"), seed=1))
    tools = LoraTools(LoraLibrary.scan(tmp_path / "loras"))
    plain = Txt2ImgRequest(prompt="two tigers", width=64, height=64,
                           sampling=Sampling(sampler="DPM++ 2M", steps=8, seed=3))
    with_lora = dataclasses.replace(plain, prompt="two tigers <lora:locon:1>")
    images = {}
    for name, accel, dtype in (("ours", "default", torch.float16), ("eager32", "eager", torch.float32)):
        with _manager("sd2-base", tmp_path / name, accel, dtype).use("sd2-base") as components:
            images[f"{name}-plain"] = _as_array(txt2img(components, plain).images)  # captures the graphs
            with tools.merged(dataclasses.replace(components), with_lora.prompt) as lent:
                images[f"{name}-lora"] = _as_array(txt2img(lent, with_lora).images)
            images[f"{name}-after"] = _as_array(txt2img(components, plain).images)
    budget = float(np.abs(images["ours-plain"] - images["eager32-plain"]).max()) + 2 / 255
    assert float(np.abs(images["ours-lora"] - images["eager32-lora"]).max()) <= budget
    assert float(np.abs(images["ours-lora"] - images["ours-plain"]).mean()) > 4 * budget  # the LoRA showed
    assert np.array_equal(images["ours-after"], images["ours-plain"])
