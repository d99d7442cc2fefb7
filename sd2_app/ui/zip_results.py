"""A result's "Zip" button (A1111's, beside its Save): every image of the tab's gallery in one zip file, which the
page then downloads. The images go in as the files the gallery shows (each PNG with its parameters text), stored
without compression (PNG is compressed already), numbered in the gallery's order. Only the app's own files
(`cache_files.results_folder`) are read: a gallery value that names anything else is refused. The zip is written
there too, so it goes after the cache age with the images (`cache_files.sweep`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from sd2_app.errors import InvalidRequest
from sd2_app.ui.cache_files import results_folder, shown_again

NOTHING_TO_ZIP = "No images to zip yet: generate first."
NOT_OURS = "The gallery names a file this server did not make; generate again."
MAX_ZIPPED = 64  # files: a batch count's 32 images, a plot's grids and cells
# The page script downloads the zip the click made (a hidden File's value), as the gallery's own download button does.
DOWNLOAD_JS = """(file) => {
  if (!file || !file.url) return;
  const link = document.createElement("a");
  link.href = file.url;
  link.download = file.orig_name || "images.zip";
  document.body.appendChild(link);
  link.click();
  link.remove();
}"""


def gallery_files(gallery: Any) -> list[Path]:
    """The gallery's image files (its items: (path, caption) pairs or bare paths), each one of the app's own."""
    items = list(gallery or [])[:MAX_ZIPPED]
    paths = [Path(item[0] if isinstance(item, (tuple, list)) else item) for item in items]
    root = results_folder().resolve()
    for path in paths:
        if not path.resolve().is_relative_to(root) or not path.is_file():
            raise InvalidRequest(NOT_OURS)
    return paths


def zip_images(paths: list[Path], prefix: str) -> str:
    """The zip of `paths` as `<prefix>-images.zip` in the app's folder, named by what it holds (the same gallery
    zipped again is the same file, shown again)."""
    digest = hashlib.sha256("\n".join(str(path) for path in paths).encode()).hexdigest()[:32]
    folder = results_folder() / f"zip-{digest}"
    target = folder / f"{prefix}-images.zip"
    if target.exists():
        shown_again(target)
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{target.name}.{threading.get_ident()}.tmp"  # whole or absent
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, path in enumerate(paths, start=1):
            archive.write(path, f"{number:02d}-{path.name}")
    os.replace(temporary, target)
    return str(target)


def zip_button_click(prefix: str):
    """The click's handler: the zip's path, or None with a toast when the gallery is empty or not the app's."""

    def zipped(gallery: Any) -> str | None:
        try:
            paths = gallery_files(gallery)
        except InvalidRequest as refused:
            gr.Warning(str(refused))
            return None
        if not paths:
            gr.Warning(NOTHING_TO_ZIP)
            return None
        return zip_images(paths, prefix)

    return zipped


def wire_zip(button: gr.Button, gallery: gr.Gallery, prefix: str) -> None:
    """`button` zips `gallery` into a hidden File and the page downloads it. Queued (a quick event of its own,
    never behind the GPU jobs), so its toasts reach the page."""
    holder = gr.File(visible="hidden", interactive=False, elem_id=f"{prefix}-zip-file")
    button.click(zip_button_click(prefix), gallery, holder, api_name=f"{prefix}_zip", api_visibility="private",
                 show_progress="hidden").then(None, holder, None, js=DOWNLOAD_JS)
