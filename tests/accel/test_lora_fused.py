"""A LoRA merged into a UNet with accel's fused twins (on the CPU, where each twin computes the plain math): the
stacked projection views and the sub-pixel upsampler's summed kernels follow the merged weights, and go back
with them."""

from __future__ import annotations

import copy
import dataclasses

import torch

from sd2_app.accel.fused import fuse_modules
from sd2_app.accel.fused.upsample import SubpixelUpsample2D
from sd2_app.pipelines.lora import LoraWeights, merged
from sd2_app.testing.tiny_lora import random_lora


def _weights(tensors: dict[str, torch.Tensor]) -> LoraWeights:
    layers = {key.removesuffix(".lora_down.weight"): None for key in tensors if key.endswith(".lora_down.weight")}
    return LoraWeights("locon", "0" * 12, {
        layer: (tensors[f"{layer}.lora_down.weight"].float(), tensors[f"{layer}.lora_up.weight"].float(),
                float(tensors[f"{layer}.alpha"]) / tensors[f"{layer}.lora_down.weight"].shape[0]) for layer in layers})


def test_fused_unet_with_a_lora_computes_the_plain_unet_with_it() -> None:
    from tests.pipeline_fixtures import load_components

    plain = load_components("sd2-base")
    fused = dataclasses.replace(plain, unet=copy.deepcopy(plain.unet))
    assert fuse_modules(fused.unet) > 0
    assert sum(type(m) is SubpixelUpsample2D for m in fused.unet.modules()) > 0
    tensors = random_lora(plain, seed=4, scale=1.0, dtype=torch.float32)
    assert any("upsamplers_0_conv" in key for key in tensors)
    lora = [(_weights(tensors), 1.0, 1.0)]
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
