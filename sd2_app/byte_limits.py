"""The sizes of what a visitor may send, from one fact: the size of one image file.

Gradio refuses a file over its `max_file_size` (`sd2_app.webapp.launch_settings`), on its upload route and in
the inpaint editor's parts (gradio/route_utils.py, `GradioMultiPartParser`); the A1111-compatible API takes the
same images as base64 text (`sd2_app.api.a1111.image_bytes`); and the web server refuses bodies and uploads
larger than those files need (`sd2_app.ui.request_limits`, `sd2_app.ui.upload_budget`). Each of those limits is
written here in terms of `MAX_IMAGE_FILE_BYTES`, so they cannot disagree. No gradio, no torch.
"""

from __future__ import annotations

MB = 1024 * 1024  # Gradio's "mb" too (gradio/utils.py, `FileSize`)
MAX_IMAGE_FILE_BYTES = 25 * MB  # one image file, uploaded or sent to the API
FORM_ROOM_BYTES = MB  # what a request carries besides its files: multipart framing, form fields, other JSON fields
DATA_URL_ROOM = 256  # an A1111 API image may start "data:image/png;base64," (any media type of sensible length)
FILES_PER_UPLOAD_REQUEST = 5  # the browser and gradio_client send one file per request; a few fit in one


def base64_chars(size: int) -> int:
    """The length of the base64 text (with padding, RFC 4648) of `size` bytes."""
    return 4 * ((size + 2) // 3)


MAX_BASE64_CHARS = base64_chars(MAX_IMAGE_FILE_BYTES) + DATA_URL_ROOM  # one A1111 API image, as sent
MAX_UPLOAD_REQUEST_BYTES = FILES_PER_UPLOAD_REQUEST * (MAX_IMAGE_FILE_BYTES + FORM_ROOM_BYTES)
