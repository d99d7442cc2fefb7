"""Live previews: a latent -> RGB approximation that costs one 4x3 matrix product instead of a VAE decode.

The coefficients are the ones Kevin Turner ("keturn") fitted by least squares for the SD 1.x KL-f8 VAE
and published on the Hugging Face forum ("Decoding latents to RGB without upscaling", thread 23204); ComfyUI
and A1111's "Approx cheap" preview use the same numbers. SD 2 base/768/inpainting/depth share that VAE, so
they apply unchanged to our scaled latents (z * 0.18215). The fit has no offset, so the bias is zero. For the
x4 upscaler's latents (another VAE) the result is only a rough colour impression.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# (4 latent channels, 3 colours): rgb = latents^T @ LATENT_RGB + LATENT_RGB_BIAS, roughly in [-1, 1].
LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
LATENT_RGB_BIAS = (0.0, 0.0, 0.0)


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """(B, 4, h, w) scaled latents -> (B, 3, h, w) approximate image in [-1, 1] (same device, fp32)."""
    weight = torch.tensor(LATENT_RGB, dtype=torch.float32, device=latents.device)  # (4, 3)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)  # (3,)
    rgb = torch.einsum("bchw,cr->brhw", latents.float(), weight) + bias[None, :, None, None]
    return rgb.clamp(-1, 1)


def preview_images(latents: torch.Tensor) -> list[Image.Image]:
    """PIL previews of a latent batch at latent size (one pixel per latent pixel); whoever shows one enlarges
    it (sd2_app.api.progress.latent_preview)."""
    rgb = latents_to_rgb(latents)
    array = ((rgb / 2 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]
