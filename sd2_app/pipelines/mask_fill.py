"""Filling a masked area from the pixels around it: A1111's "fill" masked content, and outpainting's "blur" fill.

The idea of A1111's modules/masking.py (`fill`): blur the known pixels with their coverage (normalised
convolution: blur(colour x known) / blur(known) is the mean colour of the known pixels nearby, whatever the
hole's shape), at coarse radii first, and lay each finer blur over the coarser ones in proportion to how much
known area it reaches. Far inside a hole the result is a smooth average of the surroundings; near the hole's
edge it follows the nearby colours. Pixels outside the hole are returned exactly as they were.

Computed in float32 with numpy: each Gaussian is three box blurs (running sums), the wide ones on a reduced copy,
and beyond the image's edge there is nothing known (zero weight), so borders need no padding rule.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# (Gaussian radius in pixels, coarse to fine; times laid over what is below): A1111's modules/masking.py `fill`.
FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))
SMALL_SIGMA = 4  # a blur of sigma >= 2 * SMALL_SIGMA runs on a copy reduced by sigma // SMALL_SIGMA (`_blurred`)
_MIN_COVER = 1e-6  # blurred coverage below this counts as none (the layer adds nothing there)


def _box_means(values: np.ndarray, half: int, axis: int) -> np.ndarray:
    """Mean over the window [i - half, i + half] along `axis` at every i, counting zeros beyond the array's ends."""
    pad = [(0, 0)] * values.ndim
    pad[axis] = (half + 1, half)
    sums = np.cumsum(np.pad(values, pad), axis=axis)
    size = values.shape[axis]
    upper = [slice(None)] * values.ndim
    lower = [slice(None)] * values.ndim
    upper[axis], lower[axis] = slice(2 * half + 1, 2 * half + 1 + size), slice(0, size)
    return (sums[tuple(upper)] - sums[tuple(lower)]) / np.float32(2 * half + 1)


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """`values` (K, H, W) blurred by about a Gaussian of std `sigma` over the two last axes, zero beyond the edges:
    three box passes of the width whose variance adds up to sigma^2 (W. Wells, "Efficient synthesis of Gaussian
    filters by cascaded uniform filters", IEEE PAMI 1986)."""
    half = max(0, round((math.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0))  # 3 * ((2h+1)^2 - 1) / 12 = sigma^2
    for _ in range(3):
        for axis in (1, 2):
            values = _box_means(values, half, axis)
    return values


def _resized(channels: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """(K, H, W) float32 resized to `size` (width, height), channel by channel through PIL's float images."""
    return np.stack([np.asarray(Image.fromarray(plane, mode="F").resize(size, resample)) for plane in channels])


def _blurred(channels: np.ndarray, sigma: float) -> np.ndarray:
    """`_gaussian`, for a large `sigma` on a copy reduced by sigma // SMALL_SIGMA (box-averaged) and enlarged back
    (bilinear): such a blur has no detail to lose, and its cost stays that of a small one."""
    step = int(sigma) // SMALL_SIGMA
    height, width = channels.shape[1:]
    if step <= 1:
        return _gaussian(channels, sigma)
    small = (max(1, round(width / step)), max(1, round(height / step)))
    reduced = _gaussian(_resized(channels, small, Image.Resampling.BOX), sigma * small[0] / width)
    return _resized(reduced, (width, height), Image.Resampling.BILINEAR)


def fill_from_surroundings(pixels: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`pixels` (H, W, C) float with the `hole` (H, W, bool) painted from the known pixels around it; the known
    pixels are returned unchanged. With no known pixel there is nothing to fill from: `pixels` come back as they are."""
    known = ~hole
    if not known.any() or not hole.any():
        return pixels.copy()
    # The planes blurred together: the known colours, the known area, and the image's own area (its edges).
    area = known[None].astype(np.float32)
    colours = np.moveaxis(pixels, -1, 0).astype(np.float32) * area
    planes = np.concatenate([colours, area, np.ones_like(area)])
    colour = np.zeros(planes[:-2].shape, np.float32)
    cover = np.zeros(hole.shape, np.float32)  # how much of `colour` is laid down so far (alpha)
    for radius, times in FILL_LAYERS:
        blurred = _blurred(planes, radius)
        weight, inside = blurred[-2], np.maximum(blurred[-1], _MIN_COVER)
        alpha = np.clip(weight / inside, 0.0, 1.0)
        alpha = np.where(weight > _MIN_COVER * inside, 1.0 - (1.0 - alpha) ** times, 0.0)  # laid `times` over
        layer = blurred[:-2] / np.maximum(weight, _MIN_COVER)
        new_cover = alpha + cover * (1.0 - alpha)
        colour = np.where(new_cover > 0, (layer * alpha + colour * cover * (1.0 - alpha))
                          / np.maximum(new_cover, _MIN_COVER), colour)
        cover = new_cover
    out = np.where(hole[..., None], np.moveaxis(colour, 0, -1), pixels)
    return out.astype(pixels.dtype, copy=False)
