"""Fused twins of the UNet's and VAE's modules (the Triton kernels behind them are in accel/kernels/)."""

from sd2_app.accel.fused.ops import triton_available
from sd2_app.accel.fused.swap import fuse_modules, restack
from sd2_app.accel.fused.vae_attention import use_half_products

__all__ = ["fuse_modules", "restack", "triton_available", "use_half_products"]
