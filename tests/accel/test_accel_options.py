"""The speed switches (sd2_app/accel/options.py), what a GPU of each compute capability gets
(accel/capability.py), and the process-wide backend flags (accel/backends.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sd2_app.accel import SPEED_MODES, AccelOptions, options_for, setup_backends
from sd2_app.accel.capability import options_for_capability


def test_speed_modes_map_to_their_switches() -> None:
    assert SPEED_MODES == ("default", "compile", "eager")
    default, compiled, eager = (options_for(mode) for mode in SPEED_MODES)
    assert default.cuda_graphs and default.fused_ops and not default.compile
    assert default.channels_last and default.vae_channels_last  # measured faster on an H200 (PERFORMANCE.md)
    assert compiled.compile and compiled.cuda_graphs and compiled.fused_ops  # fused kernels stay in the VAE
    assert not (eager.cuda_graphs or eager.fused_ops or eager.compile or eager.channels_last)
    with pytest.raises(ValueError, match="unknown speed mode 'fast'"):
        options_for("fast")


def test_the_switches_are_few() -> None:
    """The speed modes' switches and a few debug ones; experiments that lost on the GPU are gone."""
    assert [f.name for f in dataclasses.fields(AccelOptions)] == [
        "cuda_graphs", "fused_ops", "channels_last", "compile", "cudnn_benchmark", "tf32", "vae_attention_fp16"]


def test_the_vae_is_channels_last_only_with_the_fused_kernels() -> None:
    """NHWC with PyTorch's GroupNorm is slower than NCHW in the VAE (PERFORMANCE.md, run 1)."""
    assert AccelOptions().vae_channels_last
    assert not AccelOptions(fused_ops=False).vae_channels_last
    assert not AccelOptions(channels_last=False).vae_channels_last


@pytest.mark.parametrize("capability,kernels", [((7, 5), False), ((8, 0), True), ((8, 6), True), ((8, 9), True),
                                                ((9, 0), True)])
def test_each_gpu_generation_gets_the_switches_it_runs_well(capability: tuple[int, int], kernels: bool) -> None:
    """T4 (sm_75) below Triton's supported 8.0: no Triton kernels and no compile, the UNet still channels_last,
    the VAE then NCHW; A100 (80), A10G (86), L4 (89), H100/H200 (90): everything the mode asks for."""
    default = options_for_capability(AccelOptions(), capability, triton_installed=True)
    assert default.fused_ops is kernels and default.vae_channels_last is kernels
    assert default.cuda_graphs and default.channels_last and default.vae_attention_fp16
    compiled = options_for_capability(AccelOptions.compiled(), capability, triton_installed=True)
    assert compiled.compile is kernels and compiled.cuda_graphs
    eager = options_for_capability(AccelOptions.eager(), capability, triton_installed=True)
    assert eager == AccelOptions.eager()  # nothing is ever turned on
    without_triton = options_for_capability(AccelOptions(), capability, triton_installed=False)
    assert not (without_triton.fused_ops or without_triton.vae_channels_last) and without_triton.cuda_graphs


def test_the_device_capability_is_read_from_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """What accelerate_unet/accelerate_vae ask: a (mocked) sm_75 device gets no fused ops; CPU is left alone."""
    from sd2_app.accel import capability
    from sd2_app.accel.fused import triton_available

    asked = []
    monkeypatch.setattr(capability.torch.cuda, "get_device_capability", lambda device: asked.append(device) or (7, 5))
    chosen = capability.options_for_device(AccelOptions(), torch.device("cuda", 0))
    assert asked == [torch.device("cuda", 0)] and not chosen.fused_ops and chosen.channels_last
    monkeypatch.setattr(capability.torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert capability.options_for_device(AccelOptions(), torch.device("cuda", 0)).fused_ops == triton_available()
    assert capability.options_for_device(AccelOptions(), torch.device("cpu")) == AccelOptions()


def test_setup_backends_on_cpu_leaves_cudnn_alone() -> None:
    before = torch.backends.cudnn.benchmark
    state = setup_backends("cpu")
    assert torch.backends.cudnn.benchmark == before == state.cudnn_benchmark


def test_the_manager_applies_the_cudnn_benchmark_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sd2_app.manager import core

    calls = []
    monkeypatch.setattr(core, "setup_backends", lambda device, **flags: calls.append((str(device), flags)))
    for benchmark in (False, True):
        core.ModelManager(torch.device("cuda", 0), torch.float16, registry={}, device_budget=1 << 30,
                          cache_dir=tmp_path, accel=AccelOptions(cudnn_benchmark=benchmark))
    assert calls == [("cuda:0", {"allow_tf32": False, "cudnn_benchmark": False}),
                     ("cuda:0", {"allow_tf32": False, "cudnn_benchmark": True})]


@pytest.mark.gpu
def test_setup_backends_sets_cudnn_benchmark_as_asked() -> None:
    before = torch.backends.cudnn.benchmark
    try:
        assert setup_backends("cuda", cudnn_benchmark=False).cudnn_benchmark is False
        assert torch.backends.cudnn.benchmark is False
        assert setup_backends("cuda").cudnn_benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
