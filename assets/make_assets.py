"""Draw the example images procedurally with PIL, so the app's examples carry no third-party licence.

Run `python assets/make_assets.py` to recreate them; the output is deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent


def landscape(size: int = 512) -> Image.Image:
    """A sunset over mountains and a lake."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        t = y / size
        draw.line([(0, y), (size, y)], fill=(int(250 - 120 * t), int(160 - 90 * t), int(90 + 120 * t)))
    draw.ellipse([size * 0.58, size * 0.18, size * 0.78, size * 0.38], fill=(255, 226, 140))
    for (peak_x, peak_y, half, colour) in ((0.25, 0.35, 0.4, (70, 60, 110)), (0.7, 0.45, 0.35, (50, 45, 90))):
        draw.polygon([(size * (peak_x - half), size * 0.7), (size * peak_x, size * peak_y),
                      (size * (peak_x + half), size * 0.7)], fill=colour)
    for y in range(int(size * 0.7), size):
        t = (y - size * 0.7) / (size * 0.3)
        draw.line([(0, y), (size, y)], fill=(int(60 + 40 * t), int(80 + 30 * t), int(130 - 20 * t)))
    return image.filter(ImageFilter.GaussianBlur(1))


def still_life(size: int = 512) -> Image.Image:
    """Shaded spheres on a table: clear depth cues for depth-to-image."""
    image = Image.new("RGB", (size, size), (200, 190, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, size * 0.62, size, size], fill=(120, 80, 50))
    for cx, cy, r, base in ((0.3, 0.55, 0.16, (200, 40, 40)), (0.62, 0.6, 0.12, (40, 120, 200)),
                            (0.47, 0.7, 0.09, (230, 200, 60))):
        for k in range(40, 0, -1):
            f = k / 40
            shade = 0.35 + 0.65 * (1 - f) ** 0.5
            rr = r * size * f
            ox, oy = cx * size - (1 - f) * r * size * 0.35, cy * size - (1 - f) * r * size * 0.35
            draw.ellipse([ox - rr, oy - rr, ox + rr, oy + rr], fill=tuple(int(c * shade) for c in base))
    return image


def cat_sketch(size: int = 128) -> Image.Image:
    """A small flat drawing of a white cat's face: a low-resolution input for the x4 upscaler."""
    image = Image.new("RGB", (size, size), (90, 140, 110))
    draw = ImageDraw.Draw(image)
    s = size / 128
    draw.polygon([(30 * s, 50 * s), (38 * s, 18 * s), (56 * s, 40 * s)], fill=(245, 245, 240))
    draw.polygon([(98 * s, 50 * s), (90 * s, 18 * s), (72 * s, 40 * s)], fill=(245, 245, 240))
    draw.ellipse([26 * s, 32 * s, 102 * s, 106 * s], fill=(245, 245, 240))
    for ex in (48, 80):
        draw.ellipse([(ex - 7) * s, 58 * s, (ex + 7) * s, 72 * s], fill=(120, 180, 60))
        draw.ellipse([(ex - 2) * s, 59 * s, (ex + 2) * s, 71 * s], fill=(20, 20, 20))
    draw.polygon([(60 * s, 80 * s), (68 * s, 80 * s), (64 * s, 85 * s)], fill=(230, 140, 150))
    for side in (-1, 1):
        for dy in (-3, 2):
            draw.line([(64 + side * 10) * s, 86 * s, (64 + side * 34) * s, (86 + dy * 2) * s], fill=(60, 60, 60))
    return image


def wave_depth(size: int = 512) -> Image.Image:
    """A synthetic depth map (white = near): a floor rising towards the viewer with a round bump."""
    image = Image.new("L", (size, size))
    pixels = image.load()
    for y in range(size):
        for x in range(size):
            bump = math.exp(-(((x - size / 2) ** 2 + (y - size * 0.55) ** 2) / (2 * (size * 0.15) ** 2)))
            pixels[x, y] = int(255 * min(1.0, 0.25 + 0.5 * y / size + 0.4 * bump))
    return image


def main() -> None:
    for name, draw in (("landscape.png", landscape), ("still_life.png", still_life), ("cat_128.png", cat_sketch),
                       ("depth_bump.png", wave_depth)):
        draw().save(HERE / name, format="PNG", optimize=True)


if __name__ == "__main__":
    main()
