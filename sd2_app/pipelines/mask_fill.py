"""Filling a masked area from the pixels around it: A1111's "fill" masked content, and outpainting's "blur" fill.

The idea of A1111's modules/masking.py (`fill`): blur the known pixels with their coverage (normalised
convolution: blur(colour x known) / blur(known) is the mean colour of the known pixels nearby, whatever the
hole's shape), at coarse radii first, and lay each finer blur over the coarser ones in proportion to how much
known area it reaches. Far inside a hole the result is a smooth average of the surroundings; near the hole's
edge it follows the nearby colours. Pixels outside the hole are returned exactly as they were.

Computed in float32 with torch on the tensors' device (the pipeline's, so on a GPU it takes milliseconds and
asks nothing of the host): each Gaussian is three box blurs (running sums), the wide ones on a reduced copy,
and beyond the image's edge there is nothing known (zero weight), so borders need no padding rule. The reduced
copy is made and enlarged back exactly as PIL's BOX and BILINEAR resizes of a float image would (Pillow's
src/libImaging/Resample.c, `precompute_coeffs`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# (Gaussian radius in pixels, coarse to fine; times laid over what is below): A1111's modules/masking.py `fill`.
FILL_LAYERS = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))
SMALL_SIGMA = 4  # a blur of sigma >= 2 * SMALL_SIGMA runs on a copy reduced by sigma // SMALL_SIGMA (`_blurred`)
_MIN_COVER = 1e-6  # blurred coverage below this counts as none (the layer adds nothing there)


def _box_means(values: torch.Tensor, half: int) -> torch.Tensor:
    """Mean over the window [i - half, i + half] along the last axis at every i, counting zeros beyond the ends:
    differences of running sums, a cost that does not grow with the window."""
    size = values.shape[-1]
    sums = F.pad(values, (half + 1, half)).cumsum(-1)
    return (sums[..., 2 * half + 1:] - sums[..., :size]) / (2 * half + 1)


def _gaussian(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """`values` (K, H, W) blurred by about a Gaussian of std `sigma` over the two last axes, zero beyond the edges:
    three box passes of the width whose variance adds up to sigma^2 (W. Wells, "Efficient synthesis of Gaussian
    filters by cascaded uniform filters", IEEE PAMI 1986), along the rows, then along the columns (transposed:
    running sums are fastest along the last axis)."""
    half = max(0, round((math.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0))  # 3 * ((2h+1)^2 - 1) / 12 = sigma^2
    for _ in range(2):
        for _ in range(3):
            values = _box_means(values, half)
        values = values.transpose(1, 2).contiguous()
    return values


def _box_bounds(size: int, reduced: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[start, end) of the input pixels each of `reduced` outputs averages in PIL's BOX resize from `size`, found
    as Pillow's `precompute_coeffs` finds them (in doubles): its window around the output's centre, and within it
    the pixels where the box filter (-0.5, 0.5] is 1."""
    scale = size / reduced
    starts, ends = [], []
    for i in range(reduced):
        center = (i + 0.5) * scale
        low = max(int(center - 0.5 * scale + 0.5), 0)
        high = min(int(center + 0.5 * scale + 0.5), size)
        inside = [j for j in range(low, high) if -0.5 < (j - center + 0.5) / scale <= 0.5]
        starts.append(inside[0])
        ends.append(inside[-1] + 1)
    return torch.tensor(starts, device=device), torch.tensor(ends, device=device)


def _box_reduced(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) averaged down to `size` (height, width) as PIL's BOX resize does: the rows, then the columns
    (transposed)."""
    for reduced in (size[1], size[0]):
        starts, ends = _box_bounds(values.shape[-1], reduced, values.device)
        sums = F.pad(values.cumsum(-1), (1, 0))
        values = ((sums[..., ends] - sums[..., starts]) / (ends - starts)).transpose(1, 2).contiguous()
    return values


def _blurred(planes: torch.Tensor, sigma: float) -> torch.Tensor:
    """`_gaussian`, for a large `sigma` on a copy reduced by sigma // SMALL_SIGMA (box-averaged) and enlarged back
    (bilinear, which on enlarging is PIL's BILINEAR): such a blur has no detail to lose, and its cost stays that of
    a small one."""
    step = int(sigma) // SMALL_SIGMA
    height, width = planes.shape[1:]
    if step <= 1:
        return _gaussian(planes, sigma)
    small = (max(1, round(height / step)), max(1, round(width / step)))
    reduced = _gaussian(_box_reduced(planes, small), sigma * small[1] / width)
    return F.interpolate(reduced[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def fill_from_surroundings(pixels: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """`pixels` (H, W, C) float with the `hole` (H, W, bool) painted from the known pixels around it; the known
    pixels are returned unchanged. With no known pixel there is nothing to fill from: `pixels` come back as they are.
    Runs on the tensors' device without reading anything back to the host."""
    known = (~hole)[None].to(torch.float32)
    # The planes blurred together: the known colours, the known area, and the image's own area (its edges).
    colours = pixels.permute(2, 0, 1).to(torch.float32) * known
    planes = torch.cat([colours, known, torch.ones_like(known)])
    colour = torch.zeros_like(colours)
    cover = torch.zeros_like(known[0])  # how much of `colour` is laid down so far (alpha)
    for radius, times in FILL_LAYERS:
        blurred = _blurred(planes, radius)
        weight, inside = blurred[-2], blurred[-1].clamp(min=_MIN_COVER)
        alpha = (weight / inside).clamp(0.0, 1.0)
        alpha = torch.where(weight > _MIN_COVER * inside, 1.0 - (1.0 - alpha) ** times, 0.0)  # laid `times` over
        layer = blurred[:-2] / weight.clamp(min=_MIN_COVER)
        new_cover = alpha + cover * (1.0 - alpha)
        colour = torch.where(new_cover > 0, (layer * alpha + colour * cover * (1.0 - alpha))
                             / new_cover.clamp(min=_MIN_COVER), colour)
        cover = new_cover
    painted = hole & (known.amax() > 0)  # a device-side test: nothing known leaves the pixels as they are
    return torch.where(painted[..., None], colour.permute(1, 2, 0).to(pixels.dtype), pixels)
