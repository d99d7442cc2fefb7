"""Our side of the benchmark: the ModelManager loads, an Accelerator applies the speed switches, and the
task functions of sd2_app.pipelines run exactly as the service would call them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.cases import NEGATIVE, PROMPT, SEED, Case, input_depth, input_image, input_mask, release, synchronize
from sd2_app.accel import AccelOptions
from sd2_app.checkpoints.components import Components
from sd2_app.manager import ModelManager
from sd2_app.checkpoints.catalog import REGISTRY, CheckpointSpec
from sd2_app.api.requests import DepthRequest, InpaintRequest, Sampling, Txt2ImgRequest, UpscaleRequest

VARIANTS: dict[str, Callable[[], AccelOptions]] = {
    "ours": AccelOptions,  # the default path: graphs + fused ops + channels_last, no long compile
    "ours-nchw": lambda: AccelOptions(channels_last=False),  # the same in NCHW
    "ours-eager": AccelOptions.eager,  # the same networks with every switch off
    "ours-compiled": AccelOptions.compiled,  # --compile
    "ours-cudnn-heuristics": lambda: AccelOptions(cudnn_benchmark=False),  # no cuDNN algorithm search
}


def local_registry(repos: dict[str, Path]) -> dict[str, CheckpointSpec]:
    """The app's registry with every benchmarked key pointed at a local folder (no Hub)."""
    registry = {}
    for key, folder in repos.items():
        base = REGISTRY.get(key) or REGISTRY["sd2-base"]
        registry[key] = CheckpointSpec(key, base.label, (str(folder),), None, base.resolution, base.tasks)
    return registry


def make_request(case: Case, steps: int) -> object:
    sampling = Sampling(sampler=case.sampler, steps=steps, cfg_scale=case.cfg_scale, seed=SEED,
                        batch_size=case.batch)
    if case.task == "txt2img":
        return Txt2ImgRequest(PROMPT, NEGATIVE, checkpoint=case.kind, width=case.size, height=case.size,
                              sampling=sampling)
    if case.task == "inpaint":
        return InpaintRequest(PROMPT, input_image(case.size), input_mask(case.size), NEGATIVE,
                              checkpoint=case.kind, keep_unmasked=False, sampling=sampling)
    if case.task == "depth":
        return DepthRequest(PROMPT, input_image(case.size), NEGATIVE, checkpoint=case.kind,
                            depth_map=input_depth(case.size), strength=1.0, sampling=sampling)
    if case.task == "upscale":
        assert case.input_size is not None
        return UpscaleRequest(PROMPT, input_image(case.input_size), NEGATIVE, checkpoint=case.kind,
                              tile_size=case.tile, sampling=sampling)
    raise ValueError(case.task)


def _pipeline(task: str) -> Callable[..., object]:
    from sd2_app.pipelines.depth import depth2img
    from sd2_app.pipelines.inpaint import inpaint
    from sd2_app.pipelines.txt2img import txt2img
    from sd2_app.pipelines.upscale import upscale

    return {"txt2img": txt2img, "inpaint": inpaint, "depth": depth2img, "upscale": upscale}[task]


class OursRunner:
    """One manager per variant, so in-place switches (fused modules, compile) never leak across variants."""

    def __init__(self, repos: dict[str, Path], device: torch.device, dtype: torch.dtype, variant: str,
                 cache_dir: Path) -> None:
        self.device = device
        self.variant = variant
        # The manager applies the variant's switches itself (as in the app): one Accelerator, applied once.
        self.manager = ModelManager(device, dtype, registry=local_registry(repos), cache_dir=cache_dir,
                                    accel=VARIANTS[variant]())

    def load(self, key: str) -> float:
        """Seconds to load `key` onto the device (disk, page cache warm after the first time)."""
        start = time.perf_counter()
        self.manager.load(key)
        synchronize(self.device)
        return time.perf_counter() - start

    def call(self, case: Case, steps: int) -> Callable[[], object]:
        request = make_request(case, steps)
        pipeline = _pipeline(case.task)

        def run() -> object:
            with self.manager.use(case.kind) as components:
                return pipeline(components, request).images

        return run

    def components(self, key: str) -> Components:
        with self.manager.use(key) as components:
            return components

    def graph_captures(self, key: str) -> int:
        unet = self.components(key).unet
        return getattr(unet, "captures", 0)

    def unload(self, key: str) -> None:
        self.manager.unload(key)
        release(self.device)

    def close(self) -> None:
        for key in list(self.manager.loaded_keys()):
            self.manager.unload(key)
        torch._dynamo.reset()
        release(self.device)
