"""sd2-app: Stable Diffusion 2 on one GPU, with networks, samplers and pipelines of its own.

Importing this package does no work: no downloads, no weights, no CUDA.
"""

__version__ = "0.1.0"
