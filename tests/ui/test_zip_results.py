"""The Zip button's files (ui/zip_results.py): only the app's own result files go in, in the gallery's order, as
they are; anything else a gallery value names is refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from sd2_app.errors import InvalidRequest
from sd2_app.ui.runner import cached_file
from sd2_app.ui.zip_results import NOT_OURS, gallery_files, zip_images
from tests.reliability_support import noise_image, png_bytes


def test_the_zip_holds_the_gallerys_files_as_they_are_in_its_order() -> None:
    first, second = png_bytes(noise_image(16, 8)), png_bytes(noise_image(8, 16))
    gallery = [(cached_file(first, "00001-7-txt2img.png"), "a"), (cached_file(second, "00002-8-txt2img.png"), None)]
    path = zip_images(gallery_files(gallery), "txt2img")
    assert Path(path).name == "txt2img-images.zip"
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["01-00001-7-txt2img.png", "02-00002-8-txt2img.png"]
        assert [archive.read(name) for name in archive.namelist()] == [first, second]
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    assert zip_images(gallery_files(gallery), "txt2img") == path  # the same gallery: the same file
    assert gallery_files(None) == [] and gallery_files([]) == []


@pytest.mark.parametrize("where", ["outside", "missing"])
def test_a_file_the_app_did_not_make_is_refused(tmp_path: Path, where: str) -> None:
    ours = cached_file(png_bytes(noise_image(8, 8)), "00001-1-txt2img.png")
    other = tmp_path / "secret.png" if where == "outside" else Path(ours).with_name("gone.png")
    if where == "outside":
        other.write_bytes(b"not the app's")
    with pytest.raises(InvalidRequest, match=NOT_OURS):
        gallery_files([(ours, None), (str(other), None)])
    with pytest.raises(InvalidRequest, match=NOT_OURS):
        gallery_files([str(Path(ours).parent / ".." / ".." / ".." / "etc" / "passwd")])
