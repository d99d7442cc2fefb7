"""The numpy implementation of pipelines/mask_fill.py before it moved to torch (commit 4a251eb), kept only as the
reference its parity test (tests/pipelines/test_inpaint_masked_content.py) compares against: float32 running-sum
box blurs and PIL's BOX/BILINEAR resizes of float images."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from sd2_app.pipelines.mask_fill import _MIN_COVER, FILL_LAYERS, SMALL_SIGMA


def _box_means(values: np.ndarray, half: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * values.ndim
    pad[axis] = (half + 1, half)
    sums = np.cumsum(np.pad(values, pad), axis=axis)
    size = values.shape[axis]
    upper = [slice(None)] * values.ndim
    lower = [slice(None)] * values.ndim
    upper[axis], lower[axis] = slice(2 * half + 1, 2 * half + 1 + size), slice(0, size)
    return (sums[tuple(upper)] - sums[tuple(lower)]) / np.float32(2 * half + 1)


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    half = max(0, round((math.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0))
    for _ in range(3):
        for axis in (1, 2):
            values = _box_means(values, half, axis)
    return values


def _resized(channels: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(plane, mode="F").resize(size, resample)) for plane in channels])


def _blurred(channels: np.ndarray, sigma: float) -> np.ndarray:
    step = int(sigma) // SMALL_SIGMA
    height, width = channels.shape[1:]
    if step <= 1:
        return _gaussian(channels, sigma)
    small = (max(1, round(width / step)), max(1, round(height / step)))
    reduced = _gaussian(_resized(channels, small, Image.Resampling.BOX), sigma * small[0] / width)
    return _resized(reduced, (width, height), Image.Resampling.BILINEAR)


def reference_fill(pixels: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`pixels` (H, W, C) float32 with `hole` (H, W, bool) painted, as commit 4a251eb computed it."""
    known = ~hole
    if not known.any() or not hole.any():
        return pixels.copy()
    area = known[None].astype(np.float32)
    colours = np.moveaxis(pixels, -1, 0).astype(np.float32) * area
    planes = np.concatenate([colours, area, np.ones_like(area)])
    colour = np.zeros(planes[:-2].shape, np.float32)
    cover = np.zeros(hole.shape, np.float32)
    for radius, times in FILL_LAYERS:
        blurred = _blurred(planes, radius)
        weight, inside = blurred[-2], np.maximum(blurred[-1], _MIN_COVER)
        alpha = np.clip(weight / inside, 0.0, 1.0)
        alpha = np.where(weight > _MIN_COVER * inside, 1.0 - (1.0 - alpha) ** times, 0.0)
        layer = blurred[:-2] / np.maximum(weight, _MIN_COVER)
        new_cover = alpha + cover * (1.0 - alpha)
        colour = np.where(new_cover > 0, (layer * alpha + colour * cover * (1.0 - alpha))
                          / np.maximum(new_cover, _MIN_COVER), colour)
        cover = new_cover
    out = np.where(hole[..., None], np.moveaxis(colour, 0, -1), pixels)
    return out.astype(pixels.dtype, copy=False)
