"""Opt-in speed features behind one boundary: backend flags, CUDA graphs of the UNet and text encoder,
fused twins of the networks' modules with their Triton kernels, channels_last, whole-UNet compile.

    options.py      AccelOptions: the `--speed` modes and a few debug switches
    capability.py   which switches a GPU gets (compute capability, triton)
    accelerator.py  Accelerator: prepare(components) per job, on_moved(module) after a manager move
    backends.py     process-wide torch flags (cuDNN search, TF32, SDPA kernels)
    graphs/         CUDA-graph wrappers (an LRU of graphs per input signature)
    fused/          the fused twins and the swaps that install them; twins.py, layout.py: how
    kernels/        the Triton kernels and their start-up check
    compile.py      torch.compile of the whole UNet

Importing this package touches no GPU and imports no triton; every switch is applied by an explicit call
(`setup_backends`, then `Accelerator(options).prepare(components)` per job) from whoever owns the models
(the manager, the bench). docs/DESIGN.md, "Speed features", describes each switch and how it is verified.
"""

from sd2_app.accel.accelerator import Accelerator, accelerate_unet, accelerate_vae
from sd2_app.accel.backends import BackendState, setup_backends
from sd2_app.accel.graphs import CudaGraphTextEncoder, CudaGraphUNet
from sd2_app.accel.options import SPEED_MODES, AccelOptions, options_for

__all__ = ["SPEED_MODES", "options_for", "AccelOptions", "Accelerator", "BackendState", "CudaGraphTextEncoder",
           "CudaGraphUNet", "accelerate_unet", "accelerate_vae", "setup_backends"]
