"""How one attempt of a task runs, and the signal that makes the fallback ladder try the next rung.

The service's fallback ladder (`sd2_app.api.fallback.run_with_fallbacks`) picks a `RunMode` for each attempt
and passes it to the task function; the pipelines only read it. fp16 overflows show up as NaN/inf either in
the sampled latents (attention logits; SD2.1-768 is known for it) or in the decoded pixels (the VAE
decoder); postprocessing would turn NaN into black pixels silently, so the decode checks both and raises
`NonFiniteError` instead (vae_io.decode).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunMode:
    """The switches of one attempt; the defaults are the normal, fastest run."""

    fp32_attention: bool = False  # every attention product of the UNet in fp32 (per call, nn.attention)
    fp32_decode: bool = False  # the VAE decode in fp32
    tiled_decode: bool = False  # the VAE decode in 2x2 tiles: about a quarter of its activation memory


NORMAL = RunMode()


class NonFiniteError(RuntimeError):
    """A tensor that must become an image holds NaN or inf; `stage` is "latents" or "image"."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        super().__init__(f"non-finite values (NaN/inf) in the {stage}")
