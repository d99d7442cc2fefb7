"""The one place that knows whether the UNet predicts eps or v: it turns the network into a denoiser x -> x0."""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor

from sd2_app.samplers.base import Denoiser

ModelFn = Callable[[Tensor, float], Tensor]  # model_fn(x_in (B,C,H,W), t) -> eps or v, same shape


def make_denoiser(model_fn: ModelFn, prediction_type: str) -> Denoiser:
    """Wrap an eps- or v-predicting network as `denoise(x, sigma, t) -> x0` in sigma space.

    The network sees the variance-preserving input x / sqrt(sigma^2 + 1) (what diffusers' `scale_model_input`
    does for the k-samplers; it is the VP sample itself for DDIM/DPM). v-prediction (Salimans & Ho 2022, used by
    SD2-768 and the x4 upscaler) gives x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1).
    """
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type {prediction_type!r} is not supported (epsilon, v_prediction)")
    is_v = prediction_type == "v_prediction"

    def denoise(x: Tensor, sigma: float, t: float) -> Tensor:
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        out = model_fn(x * c_in, t).to(x.dtype)  # (B, C, H, W)
        if is_v:
            return x * c_in**2 - out * (sigma * c_in)
        return x - out * sigma

    return denoise
