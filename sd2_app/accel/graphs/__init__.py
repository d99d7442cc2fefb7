"""CUDA-graph wrappers of the UNet and the text encoder (base.py: what they share)."""

from sd2_app.accel.graphs.base import GraphedModule
from sd2_app.accel.graphs.text_encoder import CudaGraphTextEncoder
from sd2_app.accel.graphs.unet import CudaGraphUNet

__all__ = ["CudaGraphTextEncoder", "CudaGraphUNet", "GraphedModule"]
