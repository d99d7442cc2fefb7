"""Opt-in speed features: backend flags, CUDA-graph UNet and text encoder, fused Triton ops (UNet and VAE),
regional compile. The VAE's fp16 decode with its fp32 retry is in pipelines/vae_io.py.

Importing this package touches no GPU and imports no triton; every switch is applied by an explicit call
(`setup_backends`, then `Accelerator(options).prepare(components)` per job) from whoever owns the models (the manager, the bench).
"""

from sd2_app.accel.backends import BackendState, setup_backends
from sd2_app.accel.cuda_graph import CudaGraphTextEncoder, CudaGraphUNet
from sd2_app.accel.hooks import Accelerator
from sd2_app.accel.options import SPEED_MODES, AccelOptions, accelerate_unet, accelerate_vae, options_for

__all__ = ["SPEED_MODES", "options_for", "AccelOptions", "Accelerator", "BackendState", "CudaGraphTextEncoder",
           "CudaGraphUNet", "accelerate_unet", "accelerate_vae", "setup_backends"]
