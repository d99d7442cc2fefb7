"""The speed switches as one object: the three modes users choose (`--speed`), and a few debug switches.

The manager (or the bench) decides once, and `Accelerator` applies them after loading; nothing below the
loop knows which switches are on. docs/DESIGN.md ("Speed features") says what each does and how it is
verified; docs/PERFORMANCE.md what each is worth.
"""

from __future__ import annotations

from dataclasses import dataclass

from sd2_app.compute_flags import SPEED_MODES


@dataclass(frozen=True)
class AccelOptions:
    """What `Accelerator` applies on a CUDA device (on CPU the modules run as loaded).

    A switch the GPU cannot run well is turned off there (accel/capability.py), so these are requests.
    """

    # replay the UNet and text-encoder forwards as CUDA graphs, one per input shape (accel/graphs/)
    cuda_graphs: bool = True
    # the fused twins of the UNet's and VAE's modules and their Triton kernels (accel/fused/, accel/kernels/)
    fused_ops: bool = True
    # NHWC activations (accel/layout.py): the UNet always; the VAE only with the fused kernels, whose NHWC
    # GroupNorm replaces PyTorch's (which copies an NHWC tensor to NCHW and back)
    channels_last: bool = True
    # torch.compile of the whole UNet (accel/compile.py); the VAE keeps the fused kernels
    compile: bool = False
    # cuDNN's per-shape algorithm search at each new shape's first call (torch.backends.cudnn.benchmark);
    # off, cuDNN's heuristics pick the algorithms
    cudnn_benchmark: bool = True
    # fp32 matmuls in TF32 (~1e-3 relative error); off, so fp32 runs (the NaN retry's attention) stay exact
    tf32: bool = False
    # in an fp32 VAE decode (the x4 upscaler's), the mid-block attention product from fp16 inputs with fp32
    # accumulation, unless they would overflow (accel/fused/vae_attention.py)
    vae_attention_fp16: bool = True

    @property
    def vae_channels_last(self) -> bool:
        """The VAE runs NHWC only with the fused kernels (NHWC with PyTorch's GroupNorm is slower than NCHW)."""
        return self.channels_last and self.fused_ops

    @classmethod
    def eager(cls) -> AccelOptions:
        """Everything off: the plain modules (the baseline the bench compares against)."""
        return cls(cuda_graphs=False, fused_ops=False, channels_last=False, compile=False, tf32=False,
                   vae_attention_fp16=False)

    @classmethod
    def compiled(cls) -> AccelOptions:
        """The whole UNet compiled by Inductor (which fuses its element-wise ops itself), replayed by CUDA
        graphs; the VAE keeps the fused kernels."""
        return cls(compile=True)


def options_for(mode: str) -> AccelOptions:
    """The switches behind `--speed`: default (graphs + fused ops + channels_last, seconds of warm-up),
    compile (whole-UNet torch.compile + graphs, about a minute of warm-up per resolution), eager (plain
    modules, for comparison or debugging)."""
    if mode not in SPEED_MODES:
        raise ValueError(f"unknown speed mode {mode!r}; choose one of {', '.join(SPEED_MODES)}")
    return {"default": AccelOptions, "compile": AccelOptions.compiled, "eager": AccelOptions.eager}[mode]()
