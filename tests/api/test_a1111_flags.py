"""The A1111 API's enable_hr through the running API (`tests.api.test_a1111_api`'s app, raw HTTP): true or false.

The text "false" (or any non-empty value) turned the hires fix on, as the field was read by its truth: a 64x64
request came back 128x128, at a second pass's cost.
"""

from __future__ import annotations

import pytest

from tests.api.test_a1111_api import FAST, _post, app, gpu_spans, job_admission  # noqa: F401 (fixtures)


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
