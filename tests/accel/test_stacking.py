"""Stacked projection weights (accel/fused/stacking.py, fused/attention.py, the resnets' shared time projections): the
same numbers and keys as the separate layers, weights that stay views into one tensor, and a restack after a
move split them (CPU; GPU where marked)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sd2_app.accel.fused import fuse_modules, restack
from sd2_app.accel.fused.resnet import FusedResnetBlock2D
from sd2_app.accel.fused.attention import FusedAttention
from sd2_app.accel.fused.stacking import SharedInputProjections, stacked, stacked_linear
from sd2_app.nn.attention import Attention


def _split(module: nn.Module) -> None:
    """What the manager's moves do: every tensor becomes its own allocation."""
    for param in module.parameters():
        param.data = param.data.clone()


def _attention(query_dim: int, context_dim: int, *, upcast: bool = False, bias: bool = False) -> Attention:
    torch.manual_seed(0)
    attention = Attention(query_dim, context_dim, 4, 16, upcast=upcast, bias=bias).eval()
    for param in attention.parameters():
        param.data.normal_(0.0, 0.2)
    return attention


@pytest.mark.parametrize("bias", [False, True])
def test_self_attention_is_one_stacked_matmul_with_the_same_output_and_keys(bias: bool) -> None:
    attention = _attention(64, 64, bias=bias)
    x = torch.randn(2, 10, 64)
    before = {k: v.clone() for k, v in attention.state_dict().items()}
    with torch.no_grad():
        expected = attention(x)
        fused = FusedAttention(attention)
        got = fused(x)
    assert list(fused.state_dict()) == list(before)
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in before.items())
    block = stacked([fused.to_q.weight, fused.to_k.weight, fused.to_v.weight])
    assert block is not None and block.shape == (3 * 64, 64)
    assert (bias and stacked([fused.to_q.bias, fused.to_k.bias, fused.to_v.bias]) is not None) or not bias
    assert torch.equal(block[64:128], fused.to_k.weight)  # the rows are the weights themselves, not copies
    assert (got - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_cross_attention_stacks_k_and_v_only_and_keeps_upcast() -> None:
    attention = _attention(64, 96, upcast=True)
    x, context = torch.randn(2, 10, 64), torch.randn(2, 7, 96)
    with torch.no_grad():
        expected = attention(x, context)
        fused = FusedAttention(attention)
        got = fused(x, context)
    assert isinstance(fused, Attention) and fused.upcast  # what the fp32 fallback and the graph key look for
    assert stacked([fused.to_k.weight, fused.to_v.weight]) is not None
    assert stacked([fused.to_q.weight, fused.to_k.weight]) is None
    assert (got - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_a_split_falls_back_to_separate_matmuls_and_restack_stacks_again() -> None:
    attention = _attention(64, 64)
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        expected = attention(x)
        fused = FusedAttention(attention)
        _split(fused)
        assert stacked([fused.to_q.weight, fused.to_k.weight, fused.to_v.weight]) is None
        split_out = fused(x)
        assert restack(fused) == 1 and restack(fused) == 0  # restacked once; then nothing to do
        assert stacked([fused.to_q.weight, fused.to_k.weight, fused.to_v.weight]) is not None
        again = fused(x)
    for out in (split_out, again):
        assert (out - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


def test_stacked_refuses_tensors_that_are_not_back_to_back() -> None:
    block = torch.arange(24.0).reshape(6, 4)
    assert torch.equal(stacked([block[0:2], block[2:6]]), block)
    assert stacked([block[2:4], block[0:2]]) is None  # wrong order
    assert stacked([block[0:2], block[3:5]]) is None  # a gap
    assert stacked([block[0:2], block[2:4].clone()]) is None  # another allocation
    assert stacked([block[:, :2]]) is None  # not contiguous


def test_fused_unet_restacks_on_the_next_job_after_a_move() -> None:
    """The Accelerator restacks what a manager move split when told of the move (on_moved), and the UNet's
    output is unchanged throughout."""
    from sd2_app.accel import AccelOptions, Accelerator
    from tests.accel_support import tiny_unet as _tiny_unet, unet_inputs as _inputs

    unet = _tiny_unet()
    sample, timestep, context = _inputs(unet)
    accelerator = Accelerator(AccelOptions())
    with torch.inference_mode():
        expected = unet(sample, timestep, context)
        fuse_modules(unet)  # what accelerate_unet does on a GPU
        wrapped = accelerator.unet(unet)
        attentions = [m for m in unet.modules() if isinstance(m, FusedAttention)]
        assert len(attentions) == 2 * 16  # self and cross in each of the 16 transformer blocks
        resnets = [m for m in unet.modules() if isinstance(m, FusedResnetBlock2D)]
        shared = {id(m.time_projection[0]) for m in resnets}
        assert len(resnets) == 22 and len(shared) == 1  # one time projection matmul for all 22
        crossing = [a for a in attentions if a.context_projection is not None]
        assert len(crossing) == 16 and len({id(a.context_projection[0]) for a in crossing}) == 1
        context_block = crossing[0].context_projection[0]
        assert stacked_linear(context_block.linears)[0].shape == (2 * sum(a.to_k.out_features for a in crossing),
                                                                  unet.config.cross_attention_dim)
        stacked_out = wrapped(sample, timestep, context)
        _split(unet)
        split_out = wrapped(sample, timestep, context)  # each layer's own matmul
        accelerator.on_moved(unet)
        assert accelerator.unet(unet) is wrapped
        assert all(stacked([a.to_k.weight, a.to_v.weight]) is not None for a in attentions)
        assert stacked_linear(resnets[0].time_projection[0].linears) is not None
        assert stacked_linear(context_block.linears) is not None
        got = wrapped(sample, timestep, context)
    for out in (stacked_out, split_out, got):
        assert (out - expected).abs().max().item() <= 1e-5


def test_shared_context_projections_follow_a_context_changed_in_place() -> None:
    """A CUDA graph refills its static context in place: the same tensor object with new values must not
    get the cached keys and values of the last forward (the network's pre-hook forgets them)."""
    from tests.accel_support import tiny_unet as _tiny_unet, unet_inputs as _inputs

    reference, unet = _tiny_unet(), _tiny_unet()
    sample, timestep, context = _inputs(unet)
    with torch.inference_mode():
        fuse_modules(unet)
        first = unet(sample, timestep, context)
        context.mul_(-0.5)
        second = unet(sample, timestep, context)
        expected = reference(sample, timestep, context)
    assert (first - second).abs().max().item() > 1e-2  # the context matters
    assert (second - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_x4_unet_shares_the_context_projections_of_its_cross_only_blocks() -> None:
    """The x4 UNet's attn1 of its first three levels is a cross-attention too: 32 share one matmul, and
    the 1024-wide level's attentions (q's input as wide as the context) stack k, v with the others."""
    from tests.accel_support import tiny_unet as _tiny_unet

    unet = _tiny_unet("x4-upscaler")
    config = unet.config
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, config.in_channels, 8, 8, generator=g)
    context = torch.randn(2, 77, config.cross_attention_dim, generator=g)
    labels = torch.tensor([20, 20])
    with torch.inference_mode():
        expected = unet(sample, torch.full((2,), 501.0), context, class_labels=labels)
        fuse_modules(unet)
        got = unet(sample, torch.full((2,), 501.0), context, class_labels=labels)
    crossing = [m for m in unet.modules() if isinstance(m, FusedAttention) and m.context_projection is not None]
    only_cross = sum(1 for m in unet.modules() if getattr(m, "only_cross_attention", False) is True)
    assert len(crossing) == len([m for m in unet.modules() if isinstance(m, FusedAttention)]) - (16 - only_cross)
    assert only_cross > 0 and len({id(a.context_projection[0]) for a in crossing}) == 1
    # packed once, into the shared block: a q as wide as the context (here 32 = 32) is left on its own, not
    # stranded in a q, k, v block whose k, v rows moved on
    q_weights = [a.to_q.weight for a in crossing]
    assert any(a.to_q.in_features == a.to_k.in_features for a in crossing)
    assert all(w.untyped_storage().nbytes() == w.numel() * w.element_size() for w in q_weights)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_shared_projections_run_one_matmul_per_input_tensor() -> None:
    torch.manual_seed(0)
    linears = [nn.Linear(16, width) for width in (8, 12, 8)]
    x, y = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        expected = [[linear(v) for linear in linears] for v in (x, y)]
        shared = SharedInputProjections(linears)
        calls = []
        handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(m))
        try:
            got = [[shared(v, index) for index in range(3)] for v in (x, y)]
        finally:
            handle.remove()
    assert calls == []  # the stacked matmul, not the layers' own forwards
    assert stacked_linear(linears)[0].shape == (28, 16)
    for want_row, got_row in zip(expected, got):
        for want, out in zip(want_row, got_row):
            assert out.shape == want.shape and (out - want).abs().max().item() <= 1e-6
    assert got[0][2].data_ptr() == got[0][0].data_ptr() + 20 * got[0][0].element_size()  # views of one output


@pytest.mark.gpu
def test_stacked_projections_match_in_fp16_on_cuda() -> None:
    attention = _attention(320, 320).cuda().half()
    cross = _attention(320, 1024).cuda().half()
    x, context = torch.randn(2, 4096, 320, device="cuda").half(), torch.randn(2, 77, 1024, device="cuda").half()
    with torch.no_grad():
        expected, expected_cross = attention(x).float(), cross(x, context).float()
        got, got_cross = FusedAttention(attention)(x).float(), FusedAttention(cross)(x, context).float()
    for a, b in ((got, expected), (got_cross, expected_cross)):
        assert (a - b).abs().max().item() <= 2e-3 * b.abs().max().item()


@pytest.mark.gpu
def test_graph_replays_project_a_new_context_on_cuda() -> None:
    """Captured with one text context, replayed with another: the shared k, v matmul is inside the graph and
    reads the refilled static context (a cached projection from before the capture would keep the old one)."""
    from sd2_app.accel.graphs import CudaGraphUNet
    from tests.accel_support import tiny_unet as _tiny_unet, unet_inputs as _inputs

    unet = _tiny_unet("x4-upscaler").cuda().half().to(memory_format=torch.channels_last)
    fuse_modules(unet, channels_last=True)
    wrapped = CudaGraphUNet(unet)
    sample, timestep, context = (t.cuda() for t in _inputs(unet))
    sample = sample.half().contiguous(memory_format=torch.channels_last)
    labels = torch.tensor([20, 20], device="cuda")
    with torch.inference_mode():
        for scale in (1.0, -0.5):  # the second call replays the graph with another context
            got = wrapped(sample, timestep, (context * scale).half(), class_labels=labels).float()
        expected = unet(sample, timestep, (context * -0.5).half(), class_labels=labels).float()
        first = unet(sample, timestep, context.half(), class_labels=labels).float()
    assert wrapped.captures == 1
    assert (got - first).abs().max().item() > 1e-2  # the context matters
    assert (got - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


def test_on_moved_drops_the_graphs_and_restacks_only_back_where_the_unet_was_accelerated(monkeypatch) -> None:
    """The manager's one hook: each move drops the UNet's graphs; the restack walk (milliseconds of host time)
    runs only when the UNet is back on its device, never on the host, where the split tensors are pinned."""
    from sd2_app.accel import AccelOptions, Accelerator, accelerator as accelerator_module
    from tests.accel_support import tiny_unet

    unet = tiny_unet()
    accelerator = Accelerator(AccelOptions())
    wrapped = accelerator.unet(unet)
    calls: list[nn.Module] = []
    monkeypatch.setattr(accelerator_module, "restack", lambda model: calls.append(model) or 0)
    wrapped._graphs["captured"] = object()  # what a capture leaves behind
    accelerator.on_moved(unet)
    assert calls == [unet] and wrapped.graph_count == 0
    accelerator._home[unet] = torch.device("meta")  # as if accelerated there: the UNet is away from home
    wrapped._graphs["captured"] = object()
    accelerator.on_moved(unet)
    assert calls == [unet] and wrapped.graph_count == 0  # dropped, not restacked
