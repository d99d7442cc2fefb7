"""Overlapping tiles for inputs larger than one UNet/VAE pass: window placement and feathered blend weights.

Each tile gets a weight that ramps linearly from its inner edges over the overlap (edges on the image border
stay at full weight); the blended result is sum(w * tile) / sum(w), so neighbouring tiles cross-fade and no
seam shows. Used by the x4 upscaler for the UNet (per step) and for the VAE decode.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: evenly spread, each neighbour pair overlapping by at least `overlap`."""
    if length <= tile:
        return [0]
    assert 0 <= overlap < tile, "tiles must advance"
    count = math.ceil((length - overlap) / (tile - overlap))
    last = length - tile
    return [round(k * last / (count - 1)) for k in range(count)]


def _ramp(size: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D weight (size,): 1 inside, linear ramp over `overlap` on sides that meet another tile."""
    position = torch.arange(size, dtype=torch.float32) + 0.5
    weight = torch.ones(size)
    if overlap > 0 and not at_start:
        weight = torch.minimum(weight, position / overlap)
    if overlap > 0 and not at_end:
        weight = torch.minimum(weight, (size - position) / overlap)
    return weight


def blend_weight(
    top: int, left: int, height: int, width: int, full_height: int, full_width: int, overlap: int
) -> torch.Tensor:
    """(height, width) weight of the tile at (top, left) inside a (full_height, full_width) canvas."""
    rows = _ramp(height, overlap, top == 0, top + height >= full_height)
    cols = _ramp(width, overlap, left == 0, left + width >= full_width)
    return rows[:, None] * cols[None, :]


TileWeights = dict[tuple[object, ...], torch.Tensor]  # one job's blend weights, by tile layout and device


def _device_weight(
    cache: TileWeights, top: int, left: int, h: int, w: int, height: int, width: int, overlap: int, scale: int,
    device: torch.device,
) -> torch.Tensor:
    """The blend weight at output resolution, built once per tile layout in `cache` and kept on the device (no
    host-to-device copy every step). The cache belongs to one job: the weights go with it."""
    key = (top, left, h, w, height, width, overlap, scale, device)
    if key not in cache:
        weight = blend_weight(top, left, h, w, height, width, overlap)
        if scale > 1:
            weight = torch.nn.functional.interpolate(
                weight[None, None], scale_factor=scale, mode="bilinear", align_corners=False
            )[0, 0]
        cache[key] = weight.to(device)
    return cache[key]


def run_tiled(
    fn: Callable[[int, int, int, int], torch.Tensor],
    height: int,
    width: int,
    tile: int,
    overlap: int,
    *,
    scale: int = 1,
    weights: TileWeights | None = None,
) -> torch.Tensor:
    """Blend `fn(top, left, h, w) -> (B, C, h*scale, w*scale)` over tiles covering an (height, width) input.

    `scale` is the output/input size ratio (1 for the UNet, the VAE factor for decoding). `weights` keeps the
    blend weights between calls of one job (the UNet's, once per step); None builds them for this call. Returns
    (B, C, height*scale, width*scale) in fp32 on the tiles' device.
    """
    weights = {} if weights is None else weights
    out: torch.Tensor | None = None
    total: torch.Tensor | None = None
    for top in tile_starts(height, tile, overlap):
        for left in tile_starts(width, tile, overlap):
            h, w = min(tile, height), min(tile, width)
            piece = fn(top, left, h, w).float()  # (B, C, h*scale, w*scale)
            weight = _device_weight(weights, top, left, h, w, height, width, overlap, scale, piece.device)
            if out is None or total is None:
                out = piece.new_zeros(piece.shape[0], piece.shape[1], height * scale, width * scale)
                total = piece.new_zeros(height * scale, width * scale)
            rows = slice(top * scale, (top + h) * scale)
            cols = slice(left * scale, (left + w) * scale)
            out[:, :, rows, cols] += piece * weight
            total[rows, cols] += weight
    assert out is not None and total is not None
    return out / total
