"""`app.py --serve`: the front end holds no models, so it runs without torch (no GPU, no seconds of import).

A subprocess builds the app through the real `webapp.build(args)` with `--serve`; only the Ray connection is
replaced by a stand-in deployment handle whose replica answers every job with the landscape asset (the replica
side is tests/serve/test_serve.py's). Through the running app (gradio_client) it counts tokens with an embedding
and runs a txt2img job that the front end watermarks, marks and saves; then torch must still be unimported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sd2_app.pipelines import watermark
from sd2_app.pipelines.metadata import DIGITAL_SOURCE_TYPE, digital_source_type, read_png_parameters
from tests.pipeline_fixtures import tiny_repo
from tests.reliability_support import free_port

pytest.importorskip("ray.serve")

ROOT = Path(__file__).resolve().parents[2]

_FRONT = r"""
import json, sys

import app
from PIL import Image
from sd2_app.api.results import Result
from sd2_app.serve import backend

ASSET, OUTPUTS, CONFIG, EMBEDDINGS, PORT = sys.argv[1:]


class Stream:
    # what `handle.options(...).produce.remote(checked)` gives: the replica's events for one job
    def __init__(self, checked):
        self.checked = checked

    def __iter__(self):
        c = self.checked
        image = Image.open(ASSET).convert("RGB").resize((c.width, c.height))
        image.info["parameters"] = f"{c.prompt}\nSteps: {c.sampling.steps}, Seed: {c.sampling.seed}, Model: {c.checkpoint}"
        yield ("progress", 1, c.sampling.steps, None)
        yield ("result", Result(task=c.task, request=c, images=[image], seed=c.sampling.seed))

    def cancel(self):
        pass


class Handle:
    # the surface of a Serve deployment handle that ServeBackend uses
    def options(self, **kwargs):
        return self

    @property
    def produce(self):
        return self

    def remote(self, checked):
        return Stream(checked)


backend.connect = lambda address, config: Handle()
from sd2_app import webapp

args = app.parse_args(["--serve", "auto", "--outputs", OUTPUTS, "--serve-config", CONFIG,
                       "--embeddings-dir", EMBEDDINGS])
demo = webapp.build(args)
built = "torch" in sys.modules
_, url, _ = demo.launch(server_port=int(PORT), prevent_thread_lock=True, quiet=True)
try:
    from gradio_client import Client

    client = Client(url, verbose=False)
    counts = [client.predict(text, "sd21-base", api_name="/count_tokens") for text in ("a " * 10, "a tiny-style")]
    _, gallery, info = client.predict(prompt="a red fox", checkpoint="sd21-base", width=512, height=512,
                                      sampler="Euler", steps=2, cfg_scale=1.0, seed=5, api_name="/txt2img")
finally:
    demo.close()  # waits for the writer thread's saves
print(json.dumps({"built_with_torch": built, "torch": "torch" in sys.modules, "counts": counts,
                  "images": len(gallery), "info": info}))
"""


@pytest.mark.slow
def test_the_serve_front_end_counts_tokens_and_saves_marked_pngs_without_torch(tmp_path: Path) -> None:
    embeddings = tmp_path / "embeddings"
    embeddings.mkdir()
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(3))},
              str(embeddings / "tiny-style.safetensors"))
    outputs = tmp_path / "outputs"
    config = tmp_path / "serve.toml"  # the deployment's repos: the front end reads the tokenizers from them
    config.write_text(f"[serve]\nrepos = [{json.dumps('sd21-base=' + str(tiny_repo('sd21')))}]\n")
    argv = [str(ROOT / "assets" / "landscape.png"), str(outputs), str(config), str(embeddings), str(free_port())]
    done = subprocess.run([sys.executable, "-c", _FRONT, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["built_with_torch"] is False and report["torch"] is False
    assert report["counts"] == ["10/75", "3/75"]  # the tiny tokenizer, and the embedding's 2 vectors + "a"
    assert report["images"] == 1 and "**Seed** 5" in report["info"]
    saved = sorted(outputs.glob("*/*-5-txt2img.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as png:
        assert png.size == (512, 512)
        assert watermark.read(png.convert("RGB")) == b"SDV2"
    assert digital_source_type(saved[0]) == DIGITAL_SOURCE_TYPE
    assert read_png_parameters(saved[0]).startswith("a red fox\nSteps: 2, Seed: 5, Model: sd21-base")
