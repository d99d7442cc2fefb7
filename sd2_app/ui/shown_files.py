"""The files the app shows in the browser: each result's PNG files as the Service encoded them (`shown_files`),
its mask or depth map, the live previews, written to the app's folder in Gradio's cache (`cached_file`,
`cache_files.results_folder`), which Gradio serves as they are: no second encode, no copy.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from gradio.processing_utils import hash_bytes
from PIL import Image

from sd2_app.api.keeper import png_sha256
from sd2_app.api.outputs import fast_png
from sd2_app.api.progress import enlarged
from sd2_app.api.results import HistoryEntry, Result
from sd2_app.ui.cache_files import results_folder, shown_again

PREVIEW_SIDE = 256  # px: the live preview's box is 160 px high


def shown_files(result: Result | HistoryEntry) -> list[str] | list[Image.Image]:
    """The images of a result (or a History entry) for a Gallery or Image output: the PNG files the Service
    encoded (`Result.png`) as files in Gradio's cache (`cached_file`), named like the saved files (what a
    download is called); the images themselves when there are none (Gradio encodes those). Calling it again
    writes nothing, and hashes nothing: the files are named by the digests the Service computed with the encode
    (`Result.png_sha256`)."""
    if len(result.png) != len(result.images):
        return list(result.images)
    return [cached_file(data, name, digest) for data, name, digest in _shown_pngs(result)]


def shown_paths(result: Result | HistoryEntry) -> list[str]:
    """Where `shown_files` puts the result's PNG files, written or not (none: its images are not encoded)."""
    if len(result.png) != len(result.images):
        return []
    return [str(cached_path(name, digest or png_sha256(data))) for data, name, digest in _shown_pngs(result)]


def _shown_pngs(result: Result | HistoryEntry) -> list[tuple[bytes, str, str | None]]:
    """Each PNG file of `result` with the name it is shown as and its sha256 (None where the result has none)."""
    names = [path.name for path in result.saved[:len(result.png)]]
    names += [f"{result.seed}-{result.task}-{index}.png" for index in range(len(names), len(result.png))]
    digests: list[str | None] = list(result.png_sha256)
    if len(digests) != len(result.png):
        digests = [None] * len(result.png)
    return list(zip(result.png, names, digests))


def shown_aux(result: Result, name: str, image: Image.Image | None) -> str | None:
    """The result's mask or depth map (`name`: "mask" or "depth") for an Image output: the PNG the Service
    encoded (`Result.aux_png`) as a file in Gradio's cache; else `image` (what the request brought) encoded once,
    fast (`fast_png_file`); None without either."""
    data = result.aux_png.get(name)
    file_name = next((path.name for path in result.saved if path.name.endswith(f"-{name}.png")),
                     f"{result.seed}-{result.task}-{name}.png")
    if data is not None:
        return cached_file(data, file_name)
    return fast_png_file(image, file_name) if image is not None else None


def shown_preview(preview: Image.Image) -> str:
    """A live preview (latent size, from the Service) enlarged without smoothing to about `PREVIEW_SIDE` and
    encoded fast, as a file in Gradio's cache."""
    return fast_png_file(enlarged(preview, PREVIEW_SIDE // max(preview.size)), "preview.png")


def fast_png_file(image: Image.Image, name: str) -> str:
    """An image the Service did not encode, PNG-encoded once at the fast level (`FAST_PNG_LEVEL`, where Gradio
    would use PIL's default), as `name` in Gradio's cache."""
    return cached_file(fast_png(image), name)


def cached_file(data: bytes, name: str, sha256: str | None = None) -> str:
    """`data` as `name` in the app's folder in Gradio's cache (`cache_files.results_folder`), which Gradio serves
    as it is: no second encode, no copy (gradio/blocks.py, `Block.move_resource_to_block_cache`). The sub-folder
    is named by Gradio's salted hash (gradio/processing_utils.py, `hash_bytes`, as Gradio names its own copies
    in `save_pil_to_cache`) of the data's sha256: `sha256` when the caller has it (computed once, when the PNG
    was encoded: `keeper.png_sha256`), else computed here. The URL is as hard to guess as that of an image
    Gradio encoded. The file goes after the cache age whether or not Gradio ever sees it (`cache_files.sweep`)."""
    path = cached_path(name, sha256 or png_sha256(data))
    folder = path.parent
    if path.exists():
        shown_again(path)
        return str(path)
    temporary = folder / f".{name}.{threading.get_ident()}.tmp"  # whole or absent, as Gradio's own copies
    for attempt in range(2):  # a sweep may delete the (old, empty) folder between mkdir and the write
        folder.mkdir(parents=True, exist_ok=True)
        try:
            temporary.write_bytes(data)
            break
        except FileNotFoundError:
            if attempt:
                raise
    os.replace(temporary, path)
    return str(path)


def cached_path(name: str, sha256: str) -> Path:
    """Where `cached_file` writes the file `name` whose data has this sha256."""
    return results_folder() / hash_bytes(sha256.encode()) / name
