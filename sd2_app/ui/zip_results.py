"""A result's "Zip" button (A1111's, beside its Save): every image of the tab's gallery in one zip file, which the
page then downloads. The images go in as the files the gallery shows (each PNG with its parameters text), stored
without compression (PNG is compressed already), numbered in the gallery's order.

The gallery's value comes from the page, so it is not trusted: its files must be, in order, the shown files
(`shown_files.shown_paths`) of one of the visitor's own results in History; anything else (another visitor's
files, a subset, files of two results) is refused. So a result has at most one zip, named by its files, and the
zips cost at most the disk their results' files do; they are written to the app's folder in Gradio's cache and go
after the cache age with the images (`cache_files.sweep`).
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from sd2_app.api.results import HistoryEntry
from sd2_app.api.service import Service
from sd2_app.ui.cache_files import results_folder, shown_again
from sd2_app.ui.hosting import Visitors
from sd2_app.ui.shown_files import shown_files, shown_paths

NOTHING_TO_ZIP = "No images to zip yet: generate first."
NOT_IN_HISTORY = "These images are not among your results in History any more, so they cannot be zipped."
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


def gallery_paths(gallery: Any) -> list[str]:
    """The gallery's files as the page names them (its items: (path, caption) pairs or bare paths)."""
    return [str(item[0] if isinstance(item, (tuple, list)) else item) for item in (gallery or [])]


def entry_shown_as(entries: list[HistoryEntry], paths: list[str]) -> HistoryEntry | None:
    """The entry of `entries` whose shown files are `paths`, in that order."""
    return next((entry for entry in entries if shown_paths(entry) == paths), None)


def zip_entry(entry: HistoryEntry, prefix: str) -> str:
    """The zip of `entry`'s shown files as `<prefix>-images.zip` in the app's folder, named by those files (the
    same result zipped again is the same file, shown again)."""
    paths = [Path(path) for path in shown_files(entry)]  # written again where the cache's sweep took them
    digest = hashlib.sha256("\n".join(entry.png_sha256).encode()).hexdigest()[:32]
    target = results_folder() / f"zip-{digest}" / f"{prefix}-images.zip"
    if target.exists():
        shown_again(target)
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")  # whole or absent
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, path in enumerate(paths, start=1):
            archive.write(path, f"{number:02d}-{path.name}")
    os.replace(temporary, target)
    return str(target)


def wire_zip(service: Service, visitors: Visitors, button: gr.Button, gallery: gr.Gallery, prefix: str) -> None:
    """`button` zips the result `gallery` shows (one of the visitor's, `visitors` names them) into a hidden File
    and the page downloads it. Queued (a quick event of its own, never behind the GPU jobs), so its toasts reach
    the page."""
    holder = gr.File(visible="hidden", interactive=False, elem_id=f"{prefix}-zip-file")

    def zipped(shown: Any, request: gr.Request = None) -> str | None:  # type: ignore[assignment]
        paths = gallery_paths(shown)
        if not paths:
            gr.Warning(NOTHING_TO_ZIP)
            return None
        entry = entry_shown_as(service.history(owner=visitors.identify(request)), paths)
        if entry is None:
            gr.Warning(NOT_IN_HISTORY)
            return None
        return zip_entry(entry, prefix)

    button.click(zipped, gallery, holder, api_name=f"{prefix}_zip", api_visibility="private",
                 show_progress="hidden").then(None, holder, None, js=DOWNLOAD_JS)
