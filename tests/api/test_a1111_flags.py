"""The A1111 API's true-or-false fields through the running API (`tests.api.test_a1111_api`'s app, raw HTTP).

The text "false" (or any non-empty value) of enable_hr, send_images and inpaint_full_res was read by its truth:
it turned the hires fix on (a 64x64 request came back 128x128, at a second pass's cost), sent the images, and
inpainted the masked area only.
"""

from __future__ import annotations

import base64

import pytest

from tests.api.test_a1111_api import FAST, _post, app, gpu_spans, job_admission  # noqa: F401 (fixtures)
from tests.reliability_support import noise_image, png_bytes


@pytest.mark.parametrize("value", ["false", 0, {"on": True}])
def test_enable_hr_that_is_not_true_or_false_is_refused(app, value: object) -> None:  # noqa: F811
    _, port, _ = app
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "width": 64, "height": 64, "enable_hr": value})
    assert (status, body["detail"]) == (422, f"enable_hr must be true or false, got {value!r}.")


def test_enable_hr_false_or_absent_runs_without_the_fix(app) -> None:  # noqa: F811
    _, port, _ = app
    for extra in ({"enable_hr": False}, {"enable_hr": None}, {}):
        status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "width": 64, "height": 64, **extra})
        assert status == 200 and "Hires" not in body["info"], (extra, body.get("info"))


def test_send_images_and_inpaint_full_res_that_are_not_true_or_false_are_refused(app) -> None:  # noqa: F811
    _, port, _ = app
    image = base64.b64encode(png_bytes(noise_image(64, 64))).decode()
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "width": 64, "height": 64, "send_images": "false"})
    assert (status, body["detail"]) == (422, "send_images must be true or false, got 'false'.")
    status, body = _post(port, "txt2img", {"prompt": "x", **FAST, "width": 64, "height": 64, "send_images": False})
    assert status == 200 and body["images"] == []
    status, body = _post(port, "img2img", {"prompt": "x", **FAST, "init_images": [image], "mask": image,
                                           "inpaint_full_res": "false"})
    assert (status, body["detail"]) == (422, "inpaint_full_res must be true or false, got 'false'.")
