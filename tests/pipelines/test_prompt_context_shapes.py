"""Contexts of 77·k tokens (k prompt chunks) through the speed paths: fused modules with the shared context
projection, the UNet and text-encoder CUDA graphs (one graph per context shape)."""

from __future__ import annotations

import copy

import pytest
import torch

from sd2_app.accel import AccelOptions, CudaGraphTextEncoder, CudaGraphUNet, accelerate_unet
from sd2_app.accel.fused import fuse_modules
from sd2_app.nn.config import UNetConfig
from sd2_app.nn.unet import UNet
from sd2_app.testing.configs import tiny_unet_config
from sd2_app.testing.tiny_transformers import fill_deterministic


def _tiny_unet() -> UNet:
    unet = UNet(UNetConfig.from_dict(tiny_unet_config("sd2-base")))
    unet.load_state_dict(fill_deterministic(unet, 1234))
    return unet.eval()


def _inputs(unet: UNet, k: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple:
    g = torch.Generator().manual_seed(k)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77 * k, unet.config.cross_attention_dim, generator=g)
    return sample.to(device, dtype), torch.full((2,), 501.0, device=device), context.to(device, dtype)


def test_fused_unet_with_shared_context_projection_handles_every_context_length() -> None:
    """The fused modules (run on CPU through their eager fallbacks) share one k/v matmul over the context;
    alternating lengths checks that it never reuses another call's projection."""
    unet = _tiny_unet()
    fused = copy.deepcopy(unet)
    fuse_modules(fused)
    assert sum(getattr(m, "context_projection", None) is not None for m in fused.modules()) == 16
    with torch.inference_mode():
        expected = {k: unet(*_inputs(unet, k)) for k in (1, 2, 3)}
        first = {}
        for k in (1, 2, 3, 1, 3, 2):
            got = fused(*_inputs(unet, k))
            torch.testing.assert_close(got, expected[k], rtol=1e-5, atol=1e-5)
            assert torch.equal(got, first.setdefault(k, got))
        accelerated = accelerate_unet(unet, AccelOptions())  # on CPU: the graph wrapper running eagerly
        for k in (1, 2, 3):
            assert torch.equal(accelerated(*_inputs(unet, k)), expected[k])
    assert not torch.allclose(expected[1], expected[2])  # the context length matters to the output


def test_unet_graph_key_tells_context_lengths_apart() -> None:
    unet = _tiny_unet()
    wrapped = CudaGraphUNet(unet)
    keys = {wrapped.key(*_inputs(unet, k)) for k in (1, 2, 3)}
    assert len(keys) == 3


@pytest.mark.gpu
def test_cuda_graphs_capture_one_graph_per_context_length() -> None:
    unet = _tiny_unet().to("cuda", torch.float16)
    wrapped = CudaGraphUNet(unet)
    with torch.inference_mode():
        for k in (1, 2, 3, 2, 1):
            inputs = _inputs(unet, k, "cuda", torch.float16)
            got = wrapped(*inputs)
            expected = unet(*inputs)
            torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
    assert wrapped.graph_count == 3 and wrapped.captures == 3


@pytest.mark.gpu
def test_text_encoder_graphs_per_chunk_count_and_embeddings_bypass_them(components) -> None:
    from sd2_app.testing.prompt_pair import encode_prompt_pair
    from sd2_app.loading.embeddings import TextualInversion

    cpu = components("sd2-base")
    encoder = cpu.text_encoder.__class__(cpu.text_encoder.config)
    encoder.load_state_dict(cpu.text_encoder.state_dict())
    encoder = encoder.to("cuda").eval()
    wrapped = CudaGraphTextEncoder(encoder)
    device = torch.device("cuda")
    with torch.inference_mode():
        for k in (1, 2, 3):
            prompt = " BREAK ".join(["a red hat"] * k)
            got = encode_prompt_pair(wrapped, cpu.tokenizer, prompt, "", batch_size=1, use_cfg=True, device=device)
            eager = encode_prompt_pair(encoder, cpu.tokenizer, prompt, "", batch_size=1, use_cfg=True, device=device)
            assert got.context.shape == (2, 77 * k, 32)
            torch.testing.assert_close(got.context, eager.context, rtol=1e-4, atol=1e-4)
        assert wrapped.graph_count == 3
        style = TextualInversion("style", torch.randn(2, 32), "0" * 12)
        with_embedding = encode_prompt_pair(wrapped, cpu.tokenizer, "a style", "", batch_size=1, use_cfg=True,
                                            device=device, embeddings={"style": style})
    assert with_embedding.context.shape == (2, 77, 32) and wrapped.graph_count == 3
