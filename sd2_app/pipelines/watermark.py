"""The invisible "SDV2" watermark Stability's SD 2 scripts put in every image, on numpy alone.

Stability-AI/stablediffusion scripts/txt2img.py (`put_watermark`) embeds the bytes "SDV2" with the
`invisible-watermark` package's "dwtDct" method. That package needs OpenCV (which needs libGL on a bare Linux
machine) and PyWavelets, neither a run-time dependency of this app, so this module does the same embedding
with numpy; `invisible-watermark`'s own decoder reads the result (tests/api/test_provenance.py).

The scheme, as invisible-watermark's imwatermark/maxDct.py (`EmbedMaxDct`, default settings) defines it:
- the image's U channel (OpenCV's 8-bit RGB->YUV: U = 0.492 (B - Y) + 128) is cut to a multiple of 4 pixels
  per side and transformed by one level of the Haar DWT; only the approximation band cA is used;
- cA is split into 4x4 blocks in row-major order; block n carries bit n mod 32 of the message;
- in each block the entry of largest magnitude, the block's first entry excepted, is moved to the nearest
  value whose magnitude modulo 36 is 9 (bit 0) or 27 (bit 1), sign kept; the decoder averages each bit's
  votes (magnitude mod 36 above 18) over all its blocks.

Only cA changes here, so the change in the image is the Haar synthesis of that change alone: each cA entry
is half the sum of its 2x2 pixels, so a change d in it is d / 2 on each of those pixels' U. That U change is
made in RGB with Y and V kept (B by dU / 0.492, G by -0.114/0.587 of that, R unchanged), and the result is
rounded once. The package itself also swaps the horizontal and vertical detail bands when it reassembles the
image (an extra, needless change the decoder never looks at); we leave them in place.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MESSAGE = b"SDV2"  # Stability's SD 2 watermark text
SCALE = 36.0  # quantisation step of the U channel (imwatermark's default scales [0, 36, 36]: Y unused, V unused)
BLOCK = 4  # side of the cA blocks
MIN_PIXELS = 256 * 256  # smaller images are left unmarked: invisible-watermark refuses to encode or decode them

# OpenCV's RGB -> YUV coefficients (docs: "Color conversions", RGB <-> YUV)
_R_TO_Y, _G_TO_Y, _B_TO_Y, _U_GAIN = 0.299, 0.587, 0.114, 0.492


def message_bits(message: bytes = MESSAGE) -> np.ndarray:
    """The message as bits, most significant first (numpy.unpackbits, as the decoder packs them back)."""
    return np.unpackbits(np.frombuffer(message, dtype=np.uint8))


def _u_channel(rgb: np.ndarray) -> np.ndarray:
    y = _R_TO_Y * rgb[..., 0] + _G_TO_Y * rgb[..., 1] + _B_TO_Y * rgb[..., 2]
    return _U_GAIN * (rgb[..., 2] - y) + 128.0


def _approximation(u: np.ndarray) -> np.ndarray:
    """One level of the 2D Haar DWT, approximation band only: (a + b + c + d) / 2 per 2x2 square."""
    return (u[0::2, 0::2] + u[0::2, 1::2] + u[1::2, 0::2] + u[1::2, 1::2]) / 2.0


def _approximation_change(ca: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The change to cA that writes `bits`, repeated over its 4x4 blocks, as maxDct's encoder does."""
    rows, cols = ca.shape[0] // BLOCK, ca.shape[1] // BLOCK
    blocks = ca[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)
    blocks = blocks.reshape(rows * cols, BLOCK * BLOCK)  # (blocks, 16), row-major block order
    index = np.arange(blocks.shape[0])
    position = np.abs(blocks[:, 1:]).argmax(axis=1) + 1  # largest entry, the first one excepted
    value = blocks[index, position]
    bit = bits[index % bits.size]
    magnitude = (np.floor(np.abs(value) / SCALE) + 0.25 + 0.5 * bit) * SCALE
    change = np.zeros_like(blocks)
    change[index, position] = np.where(value >= 0, magnitude, -magnitude) - value
    change = change.reshape(rows, cols, BLOCK, BLOCK).swapaxes(1, 2).reshape(rows * BLOCK, cols * BLOCK)
    full = np.zeros_like(ca)
    full[: rows * BLOCK, : cols * BLOCK] = change
    return full


def embed(image: Image.Image, message: bytes = MESSAGE) -> Image.Image:
    """A copy of `image` (RGB) carrying `message`; `info` (the parameters text) is kept.

    Images under MIN_PIXELS pixels are returned unchanged (a copy), as invisible-watermark's encoder refuses
    them (its decoder would too).
    """
    pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    height, width = (pixels.shape[0] // BLOCK) * BLOCK, (pixels.shape[1] // BLOCK) * BLOCK
    if image.width * image.height < MIN_PIXELS:
        marked = Image.fromarray(pixels.copy(), "RGB")
    else:
        region = pixels[:height, :width].astype(np.float32)
        ca_change = _approximation_change(_approximation(_u_channel(region)), message_bits(message))
        u_change = np.repeat(np.repeat(ca_change / 2.0, 2, axis=0), 2, axis=1)  # Haar synthesis of cA alone
        blue = u_change / _U_GAIN
        out = pixels.astype(np.int16)  # the pixels are whole numbers: rounding the change rounds the sum
        out[:height, :width, 2] += np.rint(blue).astype(np.int16)
        out[:height, :width, 1] -= np.rint((_B_TO_Y / _G_TO_Y) * blue).astype(np.int16)  # keeps Y (and V)
        marked = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")
    marked.info.update({k: v for k, v in image.info.items() if isinstance(k, str)})
    return marked


def read(image: Image.Image, length: int = len(MESSAGE)) -> bytes:
    """The message in `image` by maxDct's decoding rule (a check for our own tests and tools)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = (rgb.shape[0] // BLOCK) * BLOCK, (rgb.shape[1] // BLOCK) * BLOCK
    u = np.rint(np.clip(_u_channel(rgb[:height, :width]), 0, 255))  # the decoder sees 8-bit YUV
    ca = _approximation(u)
    rows, cols = ca.shape[0] // BLOCK, ca.shape[1] // BLOCK
    blocks = ca[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)
    blocks = blocks.reshape(rows * cols, BLOCK * BLOCK)
    position = np.abs(blocks[:, 1:]).argmax(axis=1) + 1
    votes = (np.abs(blocks[np.arange(blocks.shape[0]), position]) % SCALE) > SCALE / 2
    n_bits = 8 * length
    scores = np.array([votes[i::n_bits].mean() if votes[i::n_bits].size else 0.0 for i in range(n_bits)])
    return np.packbits(scores * 255 > 127).tobytes()


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two RGB images of the same size."""
    diff = np.asarray(a.convert("RGB"), dtype=np.float64) - np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)
