"""The Zip button's files (ui/zip_results.py): a gallery is zipped only when it shows, in order, the files of one of
the visitor's results in History, and the zip holds those files as they are; a subset, another order, another
result's files or anything else is not one of them."""

from __future__ import annotations

import zipfile
from pathlib import Path

from sd2_app.api.keeper import png_sha256
from sd2_app.api.results import HistoryEntry
from sd2_app.ui.shown_files import shown_files, shown_paths
from sd2_app.ui.zip_results import entry_shown_as, gallery_paths, zip_entry
from tests.reliability_support import noise_image, png_bytes


def _entry(seed: int, *sizes: tuple[int, int]) -> HistoryEntry:
    images = [noise_image(*size) for size in sizes]
    pngs = tuple(png_bytes(image) for image in images)
    return HistoryEntry(1.0, "txt2img", seed, "a cat", tuple(images), (), "visitor", pngs,
                        tuple(png_sha256(data) for data in pngs))


def test_the_zip_holds_the_results_files_as_the_gallery_shows_them() -> None:
    entry = _entry(7, (16, 8), (8, 16))
    gallery = [(path, "caption") for path in shown_files(entry)]
    assert gallery_paths(gallery) == shown_paths(entry)
    assert entry_shown_as([_entry(9, (8, 8)), entry], gallery_paths(gallery)) is entry
    path = zip_entry(entry, "txt2img")
    assert Path(path).name == "txt2img-images.zip"
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["01-7-txt2img-0.png", "02-7-txt2img-1.png"]
        assert tuple(archive.read(name) for name in archive.namelist()) == entry.png
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    assert zip_entry(entry, "txt2img") == path  # the same result: the same bytes, the same file
    for shown in shown_files(entry):  # the cache's sweep took them: zipped from the result's own bytes
        Path(shown).unlink()
    Path(path).unlink()
    assert zip_entry(entry, "txt2img") == path
    with zipfile.ZipFile(path) as archive:
        assert tuple(archive.read(name) for name in archive.namelist()) == entry.png


def test_a_gallery_that_is_not_exactly_one_of_the_visitors_results_is_none_of_them(tmp_path: Path) -> None:
    first, second = _entry(7, (16, 8), (8, 16)), _entry(9, (8, 8))
    both = [first, second]
    shown = shown_paths(first)
    assert entry_shown_as(both, []) is None
    assert entry_shown_as(both, shown[:1]) is None  # a subset
    assert entry_shown_as(both, shown[::-1]) is None  # another order
    assert entry_shown_as(both, shown + shown_paths(second)) is None  # two results
    outside = tmp_path / Path(shown[0]).name
    outside.write_bytes(first.png[0])
    assert entry_shown_as(both, [str(outside), shown[1]]) is None  # the same bytes elsewhere
    assert entry_shown_as([second], shown) is None  # not this visitor's
