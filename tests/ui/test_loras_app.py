"""LoRAs through the running app (gradio_client) on the tiny checkpoints: a tag changes the image and is recorded
with the file's hash, the weights are back for the next visitor, the PNG's parameters reproduce the image,
and a missing, malformed or misfitting LoRA gets its message while the app keeps serving."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from sd2_app.pipelines.metadata import parse_parameters  # noqa: E402
from tests.lora_support import write_test_loras  # noqa: E402
from tests.reliability_support import launched  # noqa: E402

FAST = {"steps": 2, "seed": 5, "cfg_scale": 7.5, "width": 64, "height": 64, "negative_prompt": ""}


@pytest.fixture(scope="module")
def loras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_loras(tmp_path_factory.mktemp("loras"))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, loras_dir: Path) -> Iterator[Client]:
    from sd2_app.api.service import Service
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.loading.loras import LoraLibrary
    from sd2_app.manager import ModelManager
    from sd2_app.testing.tiny import ensure_tiny_repos
    from sd2_app.ui import build_ui
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    service = Service(ModelManager("cpu", registry=registry, cache_dir=tmp_path_factory.mktemp("cache")),
                      outputs_dir=None, loras=LoraLibrary.scan(loras_dir))
    with launched(build_ui(service)) as url:
        yield Client(url, verbose=False)


def _txt2img(client: Client, prompt: str, **kwargs) -> tuple[Image.Image, str]:
    _, gallery, info = client.predict(api_name="/txt2img", **{**FAST, "prompt": prompt, **kwargs})
    image = Image.open(gallery[0]["image"])
    image.load()
    return image, info


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_lora_changes_the_image_is_recorded_and_is_gone_for_the_next_run(client: Client, loras_dir: Path) -> None:
    plain, _ = _txt2img(client, "a red hat")
    with_lora, info = _txt2img(client, "a red hat <lora:tiny-detail:0.8>")
    assert np.abs(_pixels(with_lora) - _pixels(plain)).mean() > 2  # the LoRA changed the image
    params = parse_parameters(with_lora.info["parameters"])
    digest = hashlib.sha256((loras_dir / "tiny-detail.safetensors").read_bytes()).hexdigest()[:12]
    assert params["Prompt"] == "a red hat <lora:tiny-detail:0.8>"
    assert params["Lora hashes"] == f"tiny-detail: {digest}"
    assert f'Lora hashes: "tiny-detail: {digest}"' in with_lora.info["parameters"]  # quoted as A1111 quotes it
    assert "⚠️" not in info
    after, _ = _txt2img(client, "a red hat")
    assert np.array_equal(_pixels(after), _pixels(plain))  # the weights were put back
    again, _ = _txt2img(client, params["Prompt"], steps=params["Steps"], seed=params["Seed"])
    assert np.array_equal(_pixels(again), _pixels(with_lora))  # the parameters reproduce the image
    half, _ = _txt2img(client, "a red hat <lora:tiny-detail:0.4>")
    assert 0 < np.abs(_pixels(half) - _pixels(plain)).mean() < np.abs(_pixels(with_lora) - _pixels(plain)).mean()


def test_a_lora_the_server_lacks_is_named_and_left_out(client: Client) -> None:
    plain, _ = _txt2img(client, "a blue hat")
    image, info = _txt2img(client, "a blue hat <lora:no-such-lora:1>", negative_prompt="<lora:tiny-detail:1>")
    assert ("- ⚠️ LoRA not found: 'no-such-lora' (the LoRAs here are tiny-detail, upscaler-detail); its tag is "
            "left out of the prompt.") in info.splitlines()
    assert ('- ⚠️ The negative prompt has a LoRA tag, "&lt;lora:tiny-detail:1&gt;": as in A1111, LoRAs are read '
            "from the prompt only; in the negative prompt the tag is read as plain text.") in info.splitlines()
    assert "Lora hashes" not in image.info["parameters"]
    without_negative, _ = _txt2img(client, "a blue hat <lora:no-such-lora:1>")
    assert np.array_equal(_pixels(without_negative), _pixels(plain))


def test_malformed_and_misfitting_loras_are_refused_and_the_app_keeps_serving(client: Client) -> None:
    before, _ = _txt2img(client, "a red hat")
    with pytest.raises(AppError, match=r"^The LoRA tag <lora:tiny-detail:lots> has the multiplier 'lots'; a "
                                       r"multiplier is a number from -10 to 10\.$"):
        _txt2img(client, "a hat <lora:tiny-detail:lots>")
    with pytest.raises(AppError, match=r"^The LoRA 'upscaler-detail' does not fit this checkpoint: its layer "
                                       r"lora_\w+ is \([\d, ]+\), the model's \([\d, ]+\) \(a LoRA made for "
                                       r"another model\)\.$"):
        _txt2img(client, "a hat <lora:upscaler-detail:1>")
    after, _ = _txt2img(client, "a red hat")
    assert np.array_equal(_pixels(after), _pixels(before))  # nothing of the refused LoRA stayed in the weights


def test_the_cli_reads_the_lora_folder_as_the_app_does(tmp_path: Path, loras_dir: Path, client: Client,
                                                      capsys: pytest.CaptureFixture) -> None:
    import json

    from sd2_app.__main__ import main
    from tests.pipeline_fixtures import tiny_dir

    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny").symlink_to(tiny_dir(), target_is_directory=True)
    prompt = "a red hat <lora:tiny-detail:0.8>"
    assert main(["txt2img", "--tiny", "--model-dir", str(models), "--lora-dir", str(loras_dir), "--prompt", prompt,
                 "--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--json",
                 "--out", str(tmp_path / "out")]) == 0
    made = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert made["warnings"] == []
    app_image, _ = _txt2img(client, prompt)
    with Image.open(made["paths"][0]) as cli_image:
        assert np.array_equal(_pixels(cli_image), _pixels(app_image))
        assert parse_parameters(cli_image.info["parameters"])["Lora hashes"].startswith("tiny-detail: ")


def test_a_plot_compares_a_loras_strengths_as_in_a1111(client: Client) -> None:
    """The X/Y/Z plot's Prompt S/R over a tag's multiplier, A1111 users' way to compare a LoRA's strengths: each
    cell is the /txt2img run of its prompt."""
    _, gallery, _, _ = client.predict(api_name="/xyz_plot", prompt="a red hat <lora:tiny-detail:0>",
                                      negative_prompt="", sampler="Euler", steps=2, seed=5, cfg_scale=7.5, width=64,
                                      height=64, x_type="prompt_sr", x_values=":0>, :0.4>, :0.8>")
    cells = [Image.open(item["image"]) for item in gallery[1:]]
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["Grid", ":0>", ":0.4>", ":0.8>"]
    for cell, strength in zip(cells, ("0", "0.4", "0.8"), strict=True):
        alone, _ = _txt2img(client, f"a red hat <lora:tiny-detail:{strength}>", sampler="Euler")
        assert np.array_equal(_pixels(cell), _pixels(alone)), strength
    assert not np.array_equal(_pixels(cells[0]), _pixels(cells[2]))
