"""Single-file checkpoints through the running app (`python app.py --tiny --checkpoints-dir DIR`): each usable file
of the folder is one more checkpoint, picked by its name in the web API and the A1111 API, and gives the images of
the repo it was written from, seed for seed; a file the folder refuses is not offered."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sd2_app.testing.ldm_file import write_ldm_file  # noqa: E402
from sd2_app.testing.tiny import ensure_tiny_repos  # noqa: E402
from tests.pipeline_fixtures import tiny_dir  # noqa: E402
from tests.reliability_support import serve  # noqa: E402

FAST = {"steps": 2, "seed": 11, "cfg_scale": 7.5, "width": 64, "height": 64, "negative_prompt": ""}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repos = ensure_tiny_repos(tiny_dir())
    folder = tmp_path_factory.mktemp("checkpoints")
    # the weights the app loads from sd21-base's and sd21's tiny repos: their fp16 variants
    write_ldm_file(repos["sd2-base"], folder / "my-base.safetensors", variant="fp16")
    (folder / "my-base.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    write_ldm_file(repos["sd21"], folder / "my-v.safetensors", variant="fp16")
    (folder / "my-v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    (folder / "old.ckpt").write_bytes(b"\x80\x02")
    cut = write_ldm_file(repos["sd2-base"], folder / "cut.safetensors", variant="fp16")
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])  # its header is whole: listed, found out on load
    return folder


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[str]:
    argv = ["--tiny", "--device", "cpu", "--no-save", "--checkpoints-dir", str(folder)]
    with serve(argv, tmp_path_factory.mktemp("cache")) as (url, _):
        yield url.rstrip("/")


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _txt2img(client: Client, checkpoint: str) -> tuple[np.ndarray, str]:
    _, gallery, info = client.predict(api_name="/txt2img", prompt="a lighthouse", checkpoint=checkpoint, **FAST)
    return _pixels(gallery[0]["image"]), info


def test_a_file_gives_the_images_of_the_repo_it_holds(app: str, folder: Path) -> None:
    client = Client(app, verbose=False)
    from_repo, repo_info = _txt2img(client, "sd21-base")
    from_file, info = _txt2img(client, "my-base")
    assert np.array_equal(from_file, from_repo)
    short_hash = hashlib.sha256((folder / "my-base.safetensors").read_bytes()).hexdigest()[:10]
    assert f"Size: 64x64, Model hash: {short_hash}, Model: my-base\n" in info  # A1111's short hash of the file
    assert "Size: 64x64, Model: sd21-base\n" in repo_info  # a repo has no one file to hash
    v_repo, _ = _txt2img(client, "sd21")
    v_file, _ = _txt2img(client, "my-v")  # its yaml says v: SD 2.1 768's configs and scheduler
    assert np.array_equal(v_file, v_repo) and not np.array_equal(v_file, from_file)
    with pytest.raises(AppError, match="old"):
        client.predict(api_name="/txt2img", prompt="x", checkpoint="old", **FAST)


def test_the_a1111_api_lists_and_picks_the_files(app: str) -> None:
    models = httpx.get(f"{app}/sdapi/v1/sd-models", timeout=30).json()
    files = {m["title"]: m["filename"] for m in models if m["filename"].endswith(".safetensors")}
    assert files == {"cut": "cut.safetensors", "my-base": "my-base.safetensors", "my-v": "my-v.safetensors"}
    images = []
    for checkpoint in ("my-v.safetensors [0123456789]", "sd21"):
        body = {"prompt": "a lighthouse", "steps": 2, "seed": 11, "width": 64, "height": 64,
                "override_settings": {"sd_model_checkpoint": checkpoint}}
        reply = httpx.post(f"{app}/sdapi/v1/txt2img", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        images.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0])))))
    assert np.array_equal(images[0], images[1])


def test_a_truncated_file_gets_its_message_without_the_servers_path_and_the_app_serves_on(app: str) -> None:
    client = Client(app, verbose=False)
    with pytest.raises(AppError) as error:
        _txt2img(client, "cut")
    assert str(error.value) == "The cut.safetensors model could not be loaded; the operator has the details."
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "cut"}}
    reply = httpx.post(f"{app}/sdapi/v1/txt2img", json=body, timeout=120)
    assert reply.status_code == 500
    assert reply.json()["detail"] == "The model could not be loaded; the operator has the details."
    image, _ = _txt2img(client, "my-base")  # the next visitor's run
    assert image.shape == (64, 64, 3)
