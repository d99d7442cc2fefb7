"""A result's "Zip" button (A1111's, beside its Save): every image of the tab's gallery in one zip file, which the
page then downloads. The images go in as the files the gallery shows (each PNG with its parameters text), stored
without compression (PNG is compressed already), numbered in the gallery's order.

The gallery's value comes from the page, so it is not trusted: its files must be, in order, the shown files
(`shown_files.shown_paths`) of one of the visitor's own results in History; anything else (another visitor's
files, a subset, files of two results) is refused. The zip is made from the result's own PNG bytes, with fixed
entry dates, so zipping a result again gives the same bytes and the same file: a result has at most one zip, and
the zips cost at most the disk their results' files do. It is written as any shown file is (`cached_file`), and
goes after the cache age with the images (`cache_files.sweep`).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from sd2_app.api.results import HistoryEntry
from sd2_app.api.service import Service
from sd2_app.ui.hosting import Visitors
from sd2_app.ui.shown_files import cached_file, shown_paths

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # every entry's date (the zip format's first): the same result, the same bytes
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
    """`<prefix>-images.zip` of `entry`'s PNG files, named as the gallery shows them, as a file in the app's folder
    (`cached_file`; the same result zipped again is the same file, shown again)."""
    archive_bytes = io.BytesIO()
    with zipfile.ZipFile(archive_bytes, "w", compression=zipfile.ZIP_STORED) as archive:
        for number, (path, data) in enumerate(zip(shown_paths(entry), entry.png), start=1):
            archive.writestr(zipfile.ZipInfo(f"{number:02d}-{Path(path).name}", ZIP_DATE), data)
    return cached_file(archive_bytes.getvalue(), f"{prefix}-images.zip")


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
