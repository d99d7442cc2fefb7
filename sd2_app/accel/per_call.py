"""The speed switches for hosts where every job may start in a fresh process: ZeroGPU Spaces.

On ZeroGPU the GPU exists only inside a `spaces.GPU` call, and each call runs in a worker process forked
from the app's main process: whatever a job sets up on the GPU (captured CUDA graphs, Triton kernels and
their start-up checks, cuDNN's algorithm search) is gone when the call ends, so each call pays it again.
The switches that pay off within one call are kept; the reasoning (with the figures of
docs/perf/JOURNAL.md) is in docs/DESIGN.md ("ZeroGPU"):

- CUDA graphs off: a capture (warm-up forwards plus the capture) costs about what it saves over a 25-step job;
- fused Triton ops off: their compiles and checks cost seconds in a new process, the gain is milliseconds;
- torch.compile off: ZeroGPU does not support it (hub-docs spaces-zerogpu.md, "Compilation");
- cuDNN's per-shape search off: each call is a first call, where the search costs and the speed is the same;
- channels_last for the UNet on: a layout change of the weights (milliseconds on the GPU) that makes every
  convolution faster with no warm-up; the VAE stays NCHW (AccelOptions does so without the fused kernels).
"""

from __future__ import annotations

import logging

from sd2_app.accel.options import AccelOptions, options_for

logger = logging.getLogger(__name__)


def per_call_options() -> AccelOptions:
    """The fastest switches for a job that starts in a fresh process (see the module docstring)."""
    return AccelOptions(cuda_graphs=False, fused_ops=False, channels_last=True, compile=False, cudnn_benchmark=False)


def options_for_host(mode: str, *, zerogpu: bool) -> AccelOptions:
    """`--speed mode` on this host: as asked, except on ZeroGPU, where "default" (and "compile", which ZeroGPU
    cannot run) means the per-call switches; "eager" stays eager everywhere."""
    options = options_for(mode)  # also refuses an unknown mode
    if not zerogpu or mode == "eager":
        return options
    if mode == "compile":
        logger.warning("--speed compile is not available on ZeroGPU (no torch.compile there); using the per-call switches")
    return per_call_options()
