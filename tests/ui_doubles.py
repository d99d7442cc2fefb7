"""Test doubles for the Service's collaborators: a manager and task functions that draw plain images.

They let the service and UI tests run before (and independently of) the real pipelines: each fake task
calls `on_step` like the real loop (with a small latent-shaped array) and returns images carrying
parameters text, so progress, previews, cancellation, saving and metadata are all exercised.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sd2_app.api.checks import Catalog
from sd2_app.checkpoints.catalog import REGISTRY

SAMPLER_KARRAS = {"DPM++ 2M": True, "Euler a": False, "Euler": True, "DDIM": False, "UniPC": True,
                  "DPM++ 2M SDE": True, "Heun": True}
CHECKPOINTS = {
    "sd2-base": (512, ("txt2img", "img2img"), "SD 2.0 base (512)"),
    "sd2": (768, ("txt2img", "img2img"), "SD 2.0 (768-v)"),
    "sd21-base": (512, ("txt2img", "img2img"), "SD 2.1 base (512)"),
    "sd21": (768, ("txt2img", "img2img"), "SD 2.1 (768-v)"),
    "sd2-inpainting": (512, ("inpaint", "outpaint"), "SD 2 inpainting"),
    "sd2-depth": (512, ("depth",), "SD 2 depth"),
    "x4-upscaler": (512, ("upscale",), "x4 upscaler"),
}


def fake_catalog() -> Catalog:
    return Catalog(
        samplers=dict(SAMPLER_KARRAS),
        resolutions={k: v[0] for k, v in CHECKPOINTS.items()},
        tasks={k: v[1] for k, v in CHECKPOINTS.items()},
        labels={k: v[2] for k, v in CHECKPOINTS.items()},
    )


@dataclass(frozen=True)
class FakeSpec:
    key: str
    label: str
    resolution: int
    tasks: tuple[str, ...]
    original_file: str = ""


@dataclass
class FakeOutput:
    images: list[Image.Image]
    warnings: list[str] = field(default_factory=list)
    mask_image: Image.Image | None = None
    depth_image: Image.Image | None = None


class FakeManager:
    """Records what was used; `use` yields the key as the "components". Implements api.model_host.ModelHost."""

    def __init__(self) -> None:
        self.registry = {k: FakeSpec(k, v[2], v[0], v[1], REGISTRY[k].original_file) for k, v in CHECKPOINTS.items()}
        self.loaded: list[str] = []
        self.used: list[str] = []

    @contextlib.contextmanager
    def use(self, key: str) -> Iterator[str]:
        self.used.append(key)
        yield key

    def add_checkpoints(self, specs: Any) -> None:
        for key, spec in specs.items():
            self.registry.setdefault(key, spec)

    def free_memory(self) -> None:
        self.freed = getattr(self, "freed", 0) + 1

    def report(self) -> tuple[dict[str, Any], None]:
        return {"device": "cpu", "loaded": list(self.loaded)}, None

    def tokenizer(self, key: str) -> None:
        return None  # no tokenizer: the token counter stays quiet

    def load(self, key: str) -> None:
        self.loaded.append(key)

    def unload(self, key: str | None) -> bool:
        was_loaded = bool(self.loaded) if key is None else key in self.loaded
        self.loaded = [] if key is None else [k for k in self.loaded if k != key]
        return was_loaded


def _size(request: Any) -> tuple[int, int]:
    if hasattr(request, "width") and request.width is not None:
        return request.width, request.height
    image = request.image
    if type(request).__name__ == "OutpaintRequest":
        return image.width + request.left + request.right, image.height + request.up + request.down
    return (image.width * 4, image.height * 4) if type(request).__name__ == "UpscaleRequest" else image.size


def make_task(task: str, step_delay_s: float = 0.0):
    """A task function with the pipeline signature: steps through on_step, then draws seed-coloured images."""

    def run(components: Any, request: Any, on_step: Any, mode: Any = None) -> FakeOutput:
        steps = request.sampling.steps
        if hasattr(request, "strength") and task not in ("inpaint", "outpaint"):
            steps = int(steps * request.strength)
        for step in range(1, steps + 1):
            time.sleep(step_delay_s)
            on_step(step, steps, np.zeros((1, 4, 8, 8), np.float32))
        width, height = _size(request)
        seed = request.sampling.seed
        images = []
        for index in range(request.sampling.batch_size):
            colour = ((seed + index) % 256, (seed // 256) % 256, len(request.sampling.sampler) * 10 % 256)
            image = Image.new("RGB", (width, height), colour)
            image.info["parameters"] = (
                f"{request.prompt}\nSteps: {request.sampling.steps}, Sampler: {request.sampling.sampler}, "
                f"Seed: {seed + index}, Size: {width}x{height}, Model: {components}"
            )
            images.append(image)
        mask = getattr(request, "mask", None) if task == "inpaint" else None
        mask = Image.new("L", (width, height)) if task == "outpaint" else mask
        depth = Image.new("L", (width // 8, height // 8), 128) if task == "depth" else None
        return FakeOutput(images, ["fake warning"] if request.prompt == "warn me" else [], mask, depth)

    return run


def fake_tasks(step_delay_s: float = 0.0) -> dict[str, Any]:
    return {t: make_task(t, step_delay_s) for t in ("txt2img", "img2img", "inpaint", "outpaint", "upscale", "depth")}


def fake_preview(latents: Any) -> Image.Image:
    return Image.new("RGB", (64, 64), (128, 128, 128))


def fake_service(tmp_path: Any = None, step_delay_s: float = 0.0, **kwargs: Any) -> Any:
    from sd2_app.api.service import Service

    return Service(
        FakeManager(),
        catalog=fake_catalog(),
        tasks=fake_tasks(step_delay_s),
        preview=fake_preview,
        outputs_dir=tmp_path,
        preview_every=2,
        **kwargs,
    )


def spy_on_plot_checks(monkeypatch: Any) -> list[Any]:
    """The requests `sd2_app.api.plot` validates from now on (its `validate_task`, still run), in call order."""
    import sd2_app.api.plot as plot_module

    checked: list[Any] = []
    validate_task = plot_module.validate_task
    monkeypatch.setattr(plot_module, "validate_task", lambda request, *args, **kwargs:
                        checked.append(request) or validate_task(request, *args, **kwargs))
    return checked
