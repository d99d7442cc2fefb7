"""`UploadImage`: gr.Image whose decode failures reach the user in words.

Gradio opens every uploaded image itself (and decodes PNGs to read their EXIF) before our handler runs;
anything but a `gr.Error` raised there is hidden behind a generic message when show_error is off. This
subclass turns PIL's refusals into `gr.Error`s that say what was wrong, without paths or tracebacks.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.data_classes import ImageData
from PIL import Image, UnidentifiedImageError


class UploadImage(gr.Image):
    """A gr.Image (same frontend component) with readable errors for unreadable uploads."""

    is_template = True  # Gradio then renders it with gr.Image's frontend

    def preprocess(self, payload: ImageData | None) -> Any:
        try:
            return super().preprocess(payload)
        except Image.DecompressionBombError as error:
            raise _unreadable(f"it has more than {Image.MAX_IMAGE_PIXELS * 2} pixels") from error
        except UnidentifiedImageError as error:  # its message holds the server's temporary path
            raise _unreadable("not a PNG, JPEG or WebP image") from error
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for corrupt or truncated data
            raise _unreadable("the file is corrupt or truncated") from error


def _unreadable(reason: str) -> gr.Error:
    return gr.Error(f"The uploaded image could not be read: {reason}.", print_exception=False)
