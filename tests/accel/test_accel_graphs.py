"""CUDA-graph wrappers (sd2_app/accel/graphs/): exact on CPU, keys per signature and precision mode, an LRU
of graphs, and replay on a GPU."""

from __future__ import annotations

import gc

import pytest
import torch

from sd2_app.nn.attention import Attention
from sd2_app.accel import AccelOptions, Accelerator, CudaGraphUNet, accelerate_unet
from sd2_app.accel.graphs.base import _Captured
from tests.accel_support import tiny_unet, unet_inputs


def test_graph_wrapper_on_cpu_returns_exactly_the_unet_output() -> None:
    unet = tiny_unet("x4-upscaler")
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = unet_inputs(unet)
    labels = torch.tensor([20, 20])
    with torch.inference_mode():
        expected = unet(sample, timestep, context, class_labels=labels)
        got = wrapped(sample, timestep, context, class_labels=labels)
    assert torch.equal(got, expected)
    assert wrapped.graph_count == 0 and wrapped.captures == 0  # nothing captured on CPU
    # what the pipelines read of it, and no more: it is a graph wrapper, not a UNet
    assert next(wrapped.parameters()) is next(unet.parameters())
    assert wrapped.config is unet.config and wrapped.unet is unet
    assert not isinstance(wrapped, torch.nn.Module)
    with pytest.raises(AttributeError):
        wrapped.conv_in  # noqa: B018


def test_accelerate_unet_default_options_are_exact_on_cpu() -> None:
    unet = tiny_unet()
    sample, timestep, context = unet_inputs(unet)
    with torch.inference_mode():
        expected = unet(sample, timestep, context)
        accelerated = accelerate_unet(unet, AccelOptions())
        got = accelerated(sample, timestep, context)
    assert isinstance(accelerated, CudaGraphUNet)
    assert torch.equal(got, expected)
    assert accelerate_unet(unet, AccelOptions.eager()) is unet


def test_graph_wrapper_drops_graphs_when_weights_move() -> None:
    unet = tiny_unet()
    wrapped = CudaGraphUNet(unet)
    wrapped._check_weights()
    wrapped._graphs[("fake",)] = object()  # stands for a captured graph
    wrapped._check_weights()
    assert wrapped.graph_count == 1  # same addresses: kept
    unet.to(torch.float64)  # new storages, as when the manager offloads and reloads
    wrapped._check_weights()
    assert wrapped.graph_count == 0


def test_per_call_fp32_attention_runs_eagerly_and_records_no_graph() -> None:
    """The fallback ladder's fp32-attention rerun never replays a graph recorded with fp16 attention: the
    wrapper runs the UNet eagerly with the per-call switch, and nothing is set on the shared modules."""
    unet = tiny_unet()
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = unet_inputs(unet)
    expected = unet(sample, timestep, context, fp32_attention=True)
    got = wrapped(sample, timestep, context, fp32_attention=True)
    assert torch.equal(got, expected) and wrapped.graph_count == 0
    assert all(not m.upcast for m in unet.modules() if isinstance(m, Attention))


def test_graph_key_is_per_shape_including_longer_prompts() -> None:
    """Text contexts of 77 * k tokens (long prompts) each get their own graph, as do batch and size."""
    unet = tiny_unet()
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = unet_inputs(unet)
    keys = {wrapped.key(sample, timestep, torch.cat([context] * k, dim=1)) for k in (1, 2, 3)}
    keys.add(wrapped.key(sample[:1], timestep[:1], context[:1]))
    keys.add(wrapped.key(torch.cat([sample, sample], dim=3), timestep, context))
    assert len(keys) == 5


class _FakeGraph:
    """Stands for a captured torch.cuda.CUDAGraph: replay counts, and the output comes from a static buffer."""

    def __init__(self) -> None:
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1


def _fake_capture(wrapped: CudaGraphUNet):
    def capture(key, args):
        static = _Captured(graph=_FakeGraph(), inputs=wrapped._static_inputs(args), output=torch.zeros(1))
        wrapped._graphs[key] = static
        wrapped.captures += 1
        return static
    return capture


def test_the_graph_cache_evicts_the_least_recently_used_of_twelve_shapes() -> None:
    """Twelve image sizes through a wrapper that keeps eight graphs: every call is graphed (the ninth shape
    on evicts the least recently used graph, it does not run eagerly), the cache never holds more than
    eight, and a shape used again recently survives the evictions."""
    unet = tiny_unet()
    wrapped = CudaGraphUNet(unet, max_graphs=8)
    wrapped._capture = _fake_capture(wrapped)  # CPU: the bookkeeping, not the CUDA capture
    _, timestep, context = unet_inputs(unet)
    eager_calls = []
    samples = [torch.zeros(2, 4, 8 + i, 8) for i in range(12)]
    with torch.inference_mode():
        for i, sample in enumerate(samples):
            wrapped._graphed(wrapped.key(sample, timestep, context), (sample, timestep, context, None),
                             lambda: eager_calls.append(1))
            if i >= 1:  # the first size is used again after every new one: always the most recent but one
                first = samples[0]
                wrapped._graphed(wrapped.key(first, timestep, context), (first, timestep, context, None),
                                 lambda: eager_calls.append(1))
            assert wrapped.graph_count == min(i + 1, 8)
    assert eager_calls == []
    assert wrapped.captures == 12 and wrapped.evictions == 4
    kept_heights = [key[0][2] for key in wrapped.graph_keys()]
    assert 8 in kept_heights  # the first size, used throughout
    assert kept_heights[-1] == 8 and kept_heights[:-1] == [8 + i for i in range(5, 12)]
    # the least recently used are gone: sizes 1..4 (heights 9..12)
    assert not {9, 10, 11, 12} & set(kept_heights)


def test_accelerator_keeps_one_wrapper_per_unet_and_lets_go_with_it() -> None:
    accelerator = Accelerator(AccelOptions())
    unet = tiny_unet()
    first = accelerator.unet(unet)
    assert accelerator.unet(unet) is first and isinstance(first, CudaGraphUNet)
    sample, timestep, context = unet_inputs(unet)
    with torch.inference_mode():
        assert torch.equal(first(sample, timestep, context), unet(sample, timestep, context))
    del unet
    gc.collect()
    assert len(accelerator._unets) == 0  # the cache does not keep a freed UNet (or its graphs) alive
    with pytest.raises(ReferenceError):
        first.config  # noqa: B018


@pytest.mark.gpu
def test_graph_replay_matches_eager_on_cuda() -> None:
    unet = tiny_unet("x4-upscaler").cuda().half()
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = (t.cuda() for t in unet_inputs(unet))
    labels = torch.tensor([20, 20], device="cuda")
    with torch.inference_mode():
        expected = unet(sample.half(), timestep, context.half(), class_labels=labels).float()
        for scale in (1.0, 0.5):  # a second call replays with new input values
            got = wrapped(sample.half() * scale, timestep * scale, context.half(), class_labels=labels).float()
        again = unet(sample.half() * 0.5, timestep * 0.5, context.half(), class_labels=labels).float()
    assert wrapped.captures == 1
    assert (got - again).abs().max().item() < 1e-2
    assert not torch.equal(got, expected)


@pytest.mark.gpu
def test_twelve_shapes_on_cuda_stay_graphed_within_eight_graphs() -> None:
    """The LRU on a real device: twelve sizes captured, eight kept, each replay equal to eager."""
    unet = tiny_unet().cuda().half()
    wrapped = CudaGraphUNet(unet, max_graphs=8)
    _, timestep, context = (t.cuda() for t in unet_inputs(unet))
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.inference_mode():
        for i in range(12):
            sample = torch.randn(2, 4, 8, 8 + i, device="cuda", generator=g).half()
            got = wrapped(sample, timestep, context.half())
            expected = unet(sample, timestep, context.half())
            assert (got.float() - expected.float()).abs().max().item() < 1e-2
            assert wrapped.graph_count == min(i + 1, 8)
    assert wrapped.captures == 12 and wrapped.evictions == 4


@pytest.mark.gpu
def test_one_graph_replays_each_phase_of_a_prompt_schedule_on_cuda() -> None:
    """Prompt editing hands the UNet a different context per call, each a view into one stacked (P, 2B, 77, D)
    tensor (pipelines.loop.context_at): one captured graph serves them all, each call equal to eager."""
    unet = tiny_unet().cuda().half()
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = (t.cuda() for t in unet_inputs(unet))
    sample, context = sample.half(), context.half()
    phases = torch.stack([context, context.flip(1), -context])  # three different contexts of one shape
    with torch.inference_mode():
        for call in (0, 1, 2, 1, 0):
            got = wrapped(sample, timestep, phases[call])
            expected = unet(sample, timestep, phases[call])
            assert (got.float() - expected.float()).abs().max().item() < 1e-2, call
        assert not torch.allclose(wrapped(sample, timestep, phases[0]).float(),
                                  wrapped(sample, timestep, phases[2]).float(), atol=1e-2)
    assert wrapped.captures == 1
