"""Image to image's width and height after a "Send to image to image": the sent image's own size.

A new upload gets the image's shape at the checkpoint's resolution (`img2img._wire_default_size`); a sent result
keeps its own size instead, as A1111's send does (modules/infotext_utils.py, `send_image_and_dimensions`: the
image's width and height, its "Send size when sending prompt or image to another interface" option being on by
default), so a 256x192 result is refined at 256x192, not at 592x440.

The send sets the image, the two sides and a pin naming the image (a digest of its pixels) with those sides. The
box's own change event, which also follows the send, finds the pin naming the image it holds and keeps the sent
sides, so whichever of the two writes last, the sides are the sent ones; a new upload is another image, and gets
the checkpoint's rule again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from sd2_app.api.resize_modes import own_size


@dataclass
class SizeBoxes:
    """Image to image's width and height boxes, the pin a send leaves for its default-size event, and the largest
    side a run may have."""

    width: gr.Number
    height: gr.Number
    pin: gr.State
    max_side: int

    def outputs(self) -> list[gr.components.Component]:
        return [self.width, self.height, self.pin]

    def values(self, image: Image.Image) -> tuple[int, int, dict[str, Any]]:
        """The boxes' values for a sent `image`: its own size (`resize.own_size`) and the pin naming it."""
        width, height = own_size(image.width, image.height, self.max_side)
        return width, height, {"image": image_digest(image), "size": [width, height]}


def image_digest(image: Image.Image) -> str:
    """A digest of `image`'s mode, size and pixels: the same for the image a send puts in the box and the one the
    box sends back (the box keeps it as a PNG, `upload_image`), another for any other image."""
    digest = hashlib.blake2b(f"{image.mode} {image.width}x{image.height}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()


def pinned_size(picture: Image.Image, pin: Any) -> tuple[int, int] | None:
    """The sides a send set for `picture` (`SizeBoxes.values`), or None when `picture` is not the image sent."""
    if not isinstance(pin, dict) or pin.get("image") != image_digest(picture):
        return None
    width, height = pin["size"]
    return width, height
