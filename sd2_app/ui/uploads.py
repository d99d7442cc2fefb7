"""`upload_image(...)`: a gr.Image whose decode failures reach the user in words.

Gradio opens every uploaded image itself (and decodes PNGs to read their EXIF) before our handler runs;
anything but a `gr.Error` raised there is hidden behind a generic message when show_error is off. The
image's `preprocess` is wrapped (on the instance: a gr.Image subclass would make Gradio write a .pyi stub
into the package) so that PIL's refusals become `gr.Error`s saying what was wrong, without paths.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from sd2_app.api.validation import too_large


def _unreadable(reason: str) -> gr.Error:
    return gr.Error(f"The uploaded image could not be read: {reason}.", print_exception=False)


def upload_image(**kwargs: Any) -> gr.Image:
    """`gr.Image(**kwargs)` with readable errors for files PIL cannot open or decode."""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def readable_preprocess(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as error:
            side = math.isqrt(Image.MAX_IMAGE_PIXELS)  # PIL refuses over twice this
            raise _unreadable(f"it is far larger than {side}x{side} pixels") from error
        except UnidentifiedImageError as error:  # its message holds the server's temporary path
            raise _unreadable("not a PNG, JPEG or WebP image") from error
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for corrupt or truncated data
            raise _unreadable("the file is corrupt or truncated") from error

    image.preprocess = readable_preprocess  # type: ignore[method-assign]
    return image


def check_on_upload(box: gr.Image | gr.ImageMask, max_pixels: int) -> None:
    """Refuse an unreadable or oversized image when it is uploaded rather than at Generate: the visitor reads why
    (unreadable files fail in `upload_image`'s preprocess) and the box empties instead of showing a broken image."""

    def check(value: Any) -> None:
        picture = value.get("background") if isinstance(value, dict) else value
        if not isinstance(picture, Image.Image):
            return
        width, height = picture.size
        if width * height > max_pixels:
            raise gr.Error(too_large("this image", width, height, max_pixels), print_exception=False)

    name = (box.elem_id or f"upload_{box._id}").replace("-", "_")
    box.upload(check, box, None, api_name=f"{name}_check", api_visibility="private").failure(
        lambda: None, None, box, api_name=f"{name}_refused", api_visibility="private", queue=False)
