"""Inpainting mask geometry: binarising, the "only masked" crop box, and the feathered paste-back.

The paste-back feathers *inward*: the blend weight is 0 on and outside the mask's edge and ramps up to 1
over `blur` pixels inside it, so every pixel outside the mask keeps the input's value exactly while the
repainted region still fades into its surroundings.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def binarize(mask: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
    """Grayscale 0/255 mask (white = repaint), thresholded at 0.5 like the reference's mask processor."""
    gray = mask.convert("L")
    if size is not None and gray.size != size:
        gray = gray.resize(size, Image.Resampling.LANCZOS)
    array = np.asarray(gray, dtype=np.float32) / 255.0
    return Image.fromarray(np.where(array >= 0.5, 255, 0).astype(np.uint8), mode="L")


def feather(mask: Image.Image, blur: int) -> np.ndarray:
    """(H, W) float32 blend weight in [0, 1] for a binary mask: 0 outside, ramping to 1 inside over `blur` px."""
    binary = np.asarray(mask, dtype=np.float32) / 255.0
    if blur <= 0:
        return binary
    # Pull the edge in by blur/2, then blur with sigma blur/3: the weight is ~0.07 at the mask's edge and
    # reaches 1 about `blur` pixels inside; multiplying by the binary mask zeroes what leaked outside.
    eroded = mask.filter(ImageFilter.MinFilter(2 * (blur // 2) + 1))
    soft = eroded.filter(ImageFilter.GaussianBlur(radius=blur / 3))
    return np.asarray(soft, dtype=np.float32) / 255.0 * binary


def paste_back(original: Image.Image, generated: Image.Image, mask: Image.Image, blur: int) -> Image.Image:
    """original * (1 - a) + generated * a with the inward-feathered weight a; all images the same size."""
    alpha = feather(mask, blur)[..., None]  # (H, W, 1)
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    mixed = base * (1.0 - alpha) + new * alpha
    out = np.where(alpha > 0, np.clip(np.round(mixed), 0, 255), base).astype(np.uint8)
    return Image.fromarray(out, mode="RGB")


def crop_box(
    mask: Image.Image, padding: int, aspect: float
) -> tuple[int, int, int, int] | None:
    """Box (left, top, right, bottom) around the mask's white pixels plus `padding`, widened to `aspect`
    (width / height) as far as the image allows; None when the mask is empty."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    full_w, full_h = mask.size
    left, top, right, bottom = bbox
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(full_w, right + padding), min(full_h, bottom + padding)
    width, height = right - left, bottom - top
    if width / height < aspect:
        target = min(full_w, round(height * aspect))
        left, right = _grow(left, right, target, full_w)
    else:
        target = min(full_h, round(width / aspect))
        top, bottom = _grow(top, bottom, target, full_h)
    return left, top, right, bottom


def _grow(start: int, end: int, target: int, limit: int) -> tuple[int, int]:
    """Widen [start, end) to `target` around its centre, shifted to stay inside [0, limit)."""
    extra = target - (end - start)
    start -= extra // 2
    end += extra - extra // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(0, start - (end - limit)), limit
    return start, end
