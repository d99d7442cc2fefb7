"""LyCORIS LoHa and LoKr files through the running app (`python app.py --tiny --device cpu --api --lora-dir ...`,
served in-process): listed with the LoRAs, and a LoHa and a LoKr that encode a LoRA's changes give that LoRA's
image through the web UI's API and the A1111 API, each recorded under its own file's hash."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from sd2_app.pipelines.metadata import parse_parameters  # noqa: E402
from sd2_app.testing.tiny_lora import as_loha, as_lokr, random_lora, write_lora  # noqa: E402
from tests.hosting_support import API_FAST  # noqa: E402
from tests.reliability_support import one_thread, serve  # noqa: E402,F401 (a fixture)

FAST = {"steps": 2, "seed": 5, "cfg_scale": 7.5, "width": 64, "height": 64, "negative_prompt": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.pipeline_fixtures import load_components

    folder = tmp_path_factory.mktemp("lycoris")
    lora = random_lora(load_components("sd2-base"), seed=11, scale=0.5, dtype=torch.float32)
    write_lora(folder / "plain.safetensors", lora)
    write_lora(folder / "hada.safetensors", as_loha(lora))
    write_lora(folder / "kron.safetensors", as_lokr(lora))
    return folder


@pytest.fixture(scope="module")
def app(one_thread: None, folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    argv = ["--tiny", "--device", "cpu", "--no-save", "--api", "--lora-dir", str(folder)]
    with serve(argv, tmp_path_factory.mktemp("app-cache")) as (url, _):
        yield url


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_loha_and_a_lokr_of_a_loras_changes_make_its_image_in_the_web_ui(app: str, folder: Path) -> None:
    client = Client(app, verbose=False)
    made = {}
    for name in ("plain", "hada", "kron"):
        _, gallery, _ = client.predict(api_name="/txt2img", **{**FAST, "prompt": f"a red hat <lora:{name}:0.8>"})
        made[name] = Image.open(gallery[0]["image"])
        made[name].load()
        digest = hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest()[:12]
        assert parse_parameters(made[name].info["parameters"])["Lora hashes"] == f"{name}: {digest}"
    _, gallery, _ = client.predict(api_name="/txt2img", **{**FAST, "prompt": "a red hat"})
    without = Image.open(gallery[0]["image"])
    assert np.array_equal(_pixels(made["hada"]), _pixels(made["plain"]))
    assert np.array_equal(_pixels(made["kron"]), _pixels(made["plain"]))
    assert np.abs(_pixels(made["plain"]) - _pixels(without)).mean() > 2  # the LoRA changed the image


def test_the_a1111_api_lists_them_and_uses_them(app: str) -> None:
    api = app.rstrip("/") + "/sdapi/v1"
    assert [item["name"] for item in httpx.get(f"{api}/loras", timeout=60).json()] == ["hada", "kron", "plain"]
    images = []
    for name in ("plain", "hada"):
        answer = httpx.post(f"{api}/txt2img", json={"prompt": f"a hat <lora:{name}:1>", "seed": 9, **API_FAST},
                            timeout=300)
        assert answer.status_code == 200, answer.text
        images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["images"][0])))))
    assert np.array_equal(images[0], images[1])
