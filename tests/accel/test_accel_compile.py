"""The --speed compile path (sd2_app/accel/compile.py): the whole UNet, in place, one graph."""

from __future__ import annotations

import torch

from sd2_app.accel import AccelOptions, CudaGraphUNet, accelerate_unet
from tests.accel_support import tiny_unet, unet_inputs


def test_compiled_path_compiles_the_whole_unet_in_place_and_never_fuses_it() -> None:
    unet = tiny_unet()
    keys = list(unet.state_dict())
    accelerated = accelerate_unet(unet, AccelOptions.compiled())
    assert isinstance(accelerated, CudaGraphUNet) and accelerated.unet is unet
    assert unet._compiled_call_impl is not None  # lazy: compiles on the first call of each shape
    assert not any(type(m).__name__.startswith("Fused") for m in unet.modules())
    assert list(unet.state_dict()) == keys
    assert accelerate_unet(accelerated, AccelOptions.compiled()) is accelerated  # applied once
    torch._dynamo.reset()


def test_whole_unet_traces_as_one_graph() -> None:
    """fullgraph=True in the compiled path relies on this: no graph break anywhere in the forward."""
    unet = tiny_unet()
    sample, timestep, context = unet_inputs(unet)
    with torch.inference_mode():
        explained = torch._dynamo.explain(unet)(sample, timestep, context)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
