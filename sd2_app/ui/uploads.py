"""Uploaded images: only PNG, JPEG and WebP reach PIL, headers are checked before decoding, errors in words.

Gradio opens every uploaded image itself (and decodes PNGs to read their EXIF) before our handler runs, with
whatever PIL plugin the file's first bytes select (EPS, for one, runs Ghostscript). So each image input's
`preprocess` is wrapped (on the instance: a gr.Image subclass would make Gradio write a .pyi stub into the
package): the file's magic bytes must name one of the accepted formats before PIL sees it, data: URLs are
refused (uploads are files, bounded by the upload size cap), and PIL's refusals become `gr.Error`s saying what
was wrong, without paths. The inpaint editor sends a background, painted layers and a composite: the number
of layers is capped and every part's header must declare at most `max_pixels` before any is decoded.

A file input's value in a queue join names the file by its `path`, which may also be an http(s) URL: Gradio
then downloads it into its cache before any handler runs (gradio/processing_utils.py, `_move_to_cache`), whole,
with no size limit and past the upload budget. `local_file_references` is checked when an event joins the
queue (`sd2_app.ui.hosting`): a link to a file of this server's file route becomes that file's path (which
Gradio checks as every path: it must lie in its upload folder), and any other URL is refused.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from typing import Any, TypeVar

import gradio as gr
from gradio.events import Dependency
from PIL import Image, UnidentifiedImageError

from sd2_app.api.image_inputs import too_large
from sd2_app.ui.editor_blobs import guard_blobs
from sd2_app.ui.file_links import linked_file

log = logging.getLogger(__name__)

EditorT = TypeVar("EditorT", bound=gr.ImageEditor)

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")  # PIL format names
MAX_EDITOR_LAYERS = 4  # a person paints with one or two
NOT_AN_IMAGE = "not a PNG, JPEG or WebP image"
REMOTE_FILE_REFUSAL = "Files must be uploaded to this server; it does not download files from other sites."


def image_format(head: bytes) -> str | None:
    """The accepted format the first bytes of a file announce, or None (PNG signature, JPEG SOI, WebP RIFF)."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def local_file_references(data: Any) -> str | None:
    """Make each `path` of a file value in `data` (a queue join's values, changed in place) the path on this
    server it names (`sd2_app.ui.file_links.linked_file`: a link through the file route becomes the file's
    path); where one names another site's file, the refusal message (`REMOTE_FILE_REFUSAL`), and then `data`
    may be partly changed."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            path = node.get("path")
            if isinstance(path, str):
                target = linked_file(path)
                if target is None:
                    return REMOTE_FILE_REFUSAL
                node["path"] = target
            stack.extend(node.values())
    return None


def _unreadable(reason: str) -> gr.Error:
    log.info("refused an upload: %s", reason)  # one line per refused request, no traceback
    return gr.Error(f"The uploaded image could not be read: {reason}.", print_exception=False)


def _source(item: Any) -> Any:
    """A FileData/ImageData payload -> its server path or data URL; bytes (editor blobs) stay bytes."""
    if item is None or isinstance(item, (bytes, str)):
        return item
    url = getattr(item, "url", None)
    if isinstance(url, str) and url.startswith("data:"):
        return url
    return getattr(item, "path", None)


def check_upload(item: Any, max_pixels: int | None = None) -> None:
    """Refuse a payload that is not an accepted format, or whose header declares over `max_pixels` pixels."""
    source = _source(item)
    if source is None:
        return
    if isinstance(source, str) and source.startswith("data:"):
        raise _unreadable("send the image as a file upload, not a data: URL")
    try:
        if isinstance(source, bytes):
            head = source[:16]
        else:
            with open(source, "rb") as file:
                head = file.read(16)
    except OSError as error:
        raise _unreadable("the file is missing") from error
    kind = image_format(head)
    if kind is None:
        raise _unreadable(NOT_AN_IMAGE)
    if max_pixels is None:
        return
    try:
        with warnings.catch_warnings():  # over the cap is refused below, in words
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=[kind]) as image:
                width, height = image.size  # the header only: nothing is decoded
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable("the file is corrupt or truncated") from error
    if width * height > max_pixels:
        raise _unreadable(f"it is {width}x{height} ({width * height} pixels); the limit is {max_pixels} pixels")


def _readable(preprocess: Any) -> Any:
    def readable_preprocess(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except Image.DecompressionBombError as error:
            side = math.isqrt(Image.MAX_IMAGE_PIXELS)  # PIL refuses over twice this
            raise _unreadable(f"it is far larger than {side}x{side} pixels") from error
        except UnidentifiedImageError as error:  # its message holds the server's temporary path
            raise _unreadable(NOT_AN_IMAGE) from error
        except (OSError, SyntaxError, ValueError) as error:  # what PIL raises for corrupt or truncated data
            raise _unreadable("the file is corrupt or truncated") from error

    return readable_preprocess


def guard_image(image: gr.Image, max_pixels: int | None = None) -> gr.Image:
    """Wrap an image input's preprocess: accepted formats only (with `max_pixels`, a header that declares at most
    that many pixels), PIL's errors in words."""
    decode = _readable(image.preprocess)

    def checked_preprocess(payload: Any) -> Any:
        check_upload(payload, max_pixels)
        return decode(payload)

    image.preprocess = checked_preprocess  # type: ignore[method-assign]
    return image


def unopened_path(image: gr.Image) -> gr.Image:
    """An image box (type "filepath") whose handler gets the upload's path without the picture being opened: only
    the format is checked, from the first bytes. For readers of the file's own chunks (PNG info): Gradio's
    preprocess opens the picture, and PIL refuses one over twice `Image.MAX_IMAGE_PIXELS` (a 4096x3072 PNG)."""
    def path_only(payload: Any) -> str | None:
        check_upload(payload)
        return None if payload is None else payload.path

    image.preprocess = path_only  # type: ignore[method-assign]
    return image


def upload_image(*, max_pixels: int | None = None, **kwargs: Any) -> gr.Image:
    """`gr.Image(**kwargs)` that accepts only PNG, JPEG and WebP (with `max_pixels`, of at most that many pixels
    by the header: `guard_image`), with readable errors.

    A box with a clipboard source gets the class "checked-paste" and a checker (`file_check`): its Paste button
    ignores a clipboard without an image, without a word, and Gradio takes the box's own file input away while
    the clipboard is its source; the page script passes what the clipboard held to the checker, which says why.

    An image the server puts in the box (a "Send to") is kept as a PNG unless `format` says otherwise: Gradio's
    default, WebP (gradio/components/image.py, `Image.__init__`'s `format`), is saved lossy by PIL, so a result
    sent on lost detail before the next run read it back."""
    kwargs.setdefault("format", "png")
    pasted = "clipboard" in (kwargs.get("sources") or ())
    if pasted:
        kwargs["elem_classes"] = [*(kwargs.get("elem_classes") or []), "checked-paste"]
    image = guard_image(gr.Image(**kwargs), max_pixels)
    if pasted:
        file_check(image)
    return image


def _editor_parts(editor: gr.ImageEditor, payload: Any) -> tuple[list[Any], list[Any]]:
    """(background and composite, layers) of an ImageEditor payload, files or blobs."""
    source = payload
    if getattr(payload, "id", None) is not None:  # parts sent earlier as blobs (gradio image_editor.py)
        source = editor.blob_storage.get(payload.id)
        if source is None:
            return [], []
    return [source.background, source.composite], list(source.layers or [])


def guard_editor(editor: EditorT, max_pixels: int, max_layers: int = MAX_EDITOR_LAYERS) -> EditorT:
    """Wrap an ImageEditor/ImageMask's preprocess: at most `max_layers` layers, each part checked by header; the
    parts the browser sends ahead are checked and bounded too (`sd2_app.ui.editor_blobs`)."""
    decode = _readable(editor.preprocess)

    def checked_preprocess(payload: Any) -> Any:
        if payload is not None:
            fixed, layers = _editor_parts(editor, payload)
            if len(layers) > max_layers:
                log.info("refused an editor value with %d layers", len(layers))
                raise gr.Error(f"The mask has {len(layers)} layers; paint on at most {max_layers}.",
                               print_exception=False)
            for part in [*fixed, *layers]:
                check_upload(part, max_pixels)
        return decode(payload)

    editor.preprocess = checked_preprocess  # type: ignore[method-assign]
    return guard_blobs(editor)


def file_check(box: gr.Image | gr.ImageEditor, max_pixels: int | None = None) -> gr.Image:
    """A hidden image box (`<box id>-check`) that says why the page could not, or should not, put a file into `box`.

    Gradio's image editor opens an upload in the page; a file the browser cannot decode leaves it blank, with
    nothing sent and nothing said. A Paste button (the editor's or an image box's) ignores a clipboard without
    an image, as silently. The page script (static/app.js) passes such a file to this box, whose upload is
    refused by `upload_image`'s check, in the words every other image box uses. An editor needs the class
    "checked-editor" (uploads, drops and pastes are checked), an image box "checked-paste" (pastes only: its own
    upload check reads the rest); the box is made where this is called.

    An editor's checker (`max_pixels` given) gets every file put into the editor, which it refuses by its header
    when over `max_pixels` pixels, in the words the editor's Generate uses (`guard_editor`); the editor keeps the
    image. The editor itself has no upload event: Gradio's page starts such an event again at each redraw of the
    editor, and each sends the editor's image again (js/imageeditor/Index.svelte, `onupload`)."""
    checker = upload_image(max_pixels=max_pixels, type="filepath", sources=["upload"], visible="hidden",
                           show_label=False, elem_id=f"{box.elem_id}-check")
    name = f"{box.elem_id}_check".replace("-", "_")
    # Reaching the function means the file was readable (and small enough) after all.
    checked = checker.upload(lambda path: None, checker, None, api_name=f"{name}_file", api_visibility="private",
                             show_progress="hidden")
    empty_on_failure(checked, checker)
    return checker


def refuse_oversized(value: Any, max_pixels: int) -> None:
    """Raise the `gr.Error` for an image (or an editor value's background) of more than `max_pixels` pixels."""
    picture = value.get("background") if isinstance(value, dict) else value
    if not isinstance(picture, Image.Image):
        return
    width, height = picture.size
    if width * height > max_pixels:
        raise gr.Error(too_large("this image", width, height, max_pixels), print_exception=False)


def empty_on_failure(event: Dependency, box: gr.Image | gr.ImageMask) -> None:
    """After `event` fails on the image in `box` (unreadable, oversized), the box empties."""
    name = (box.elem_id or f"upload_{box._id}").replace("-", "_")
    event.failure(lambda: None, None, box, api_name=f"{name}_refused", api_visibility="private", queue=False)


def check_on_upload(box: gr.Image, max_pixels: int) -> None:
    """Refuse an unreadable or oversized image when it is uploaded rather than at Generate: the visitor reads why
    (unreadable files fail in `upload_image`'s preprocess) and the box empties instead of showing a broken image.
    A tab whose own event already reads every new image (Image to image's size) checks there instead, so a bad
    upload is said once, not once per event; an image editor's uploads are checked by its `file_check`."""
    name = (box.elem_id or f"upload_{box._id}").replace("-", "_")
    checked = box.upload(lambda value: refuse_oversized(value, max_pixels), box, None, api_name=f"{name}_check",
                         api_visibility="private")
    empty_on_failure(checked, box)
