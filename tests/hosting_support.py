"""The public-mode app the hosting tests share: `python app.py --host 0.0.0.0` (bound to loopback), saving on.

sd2's repos point at a private folder and a private repo id (unreachable), so a failed load can be checked
for what it shows a visitor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.reliability_support import serve

FAST = {"width": 64, "height": 64, "steps": 2, "cfg_scale": 1.0, "sampler": "Euler", "batch_size": 1}
PRIVATE_FOLDER, PRIVATE_REPO = "/srv/private/models/sd21", "acme-internal/secret-finetune"


@pytest.fixture(scope="module")
def public_app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object, Path]]:
    """The app in a public mode, saving to a temporary folder, with a private repo override for sd2."""
    import sd2_app.manager.core as manager_core

    tiny_registry = manager_core.tiny_registry

    def with_private_sd2(*args: object, **kwargs: object) -> dict:  # --tiny points every key at a tiny repo
        registry = tiny_registry(*args, **kwargs)
        return {**registry, "sd2": replace(registry["sd2"], repos=(PRIVATE_FOLDER, PRIVATE_REPO))}

    outputs = tmp_path_factory.mktemp("outputs")
    argv = ["--tiny", "--device", "cpu", "--host", "0.0.0.0", "--outputs", str(outputs), "--queue-size", "8"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager_core, "tiny_registry", with_private_sd2)
        with serve(argv, tmp_path_factory.mktemp("app-cache"), bind="127.0.0.1") as (url, demo):
            yield url, demo, outputs


_PARAMETERS: dict[str, list[tuple[str, object]]] = {}


def txt2img_data(url: str, **values: object) -> list[object]:
    """The positional `data` of a raw /txt2img call: the API's defaults (from its description), then `values`."""
    if url not in _PARAMETERS:
        from gradio_client import Client

        info = Client(url, verbose=False).view_api(print_info=False, return_format="dict")
        _PARAMETERS[url] = [(p["parameter_name"], p.get("parameter_default"))
                            for p in info["named_endpoints"]["/txt2img"]["parameters"]]
    merged = {"prompt": "x", "seed": 1, **FAST, **values}
    return [merged.get(name, default) for name, default in _PARAMETERS[url]]


