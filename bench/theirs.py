"""The reference side: diffusers' own pipelines on the same folders, the same sampler, steps, CFG and seed.

"diffusers" is what a user gets from the documented fp16 recipe (eager); "diffusers-compiled" adds the
documented torch.compile of the UNet (channels_last, mode="reduce-overhead", fullgraph=True, i.e. with CUDA
graphs).
The depth case passes the same depth map to both sides, so the DPT estimator is not timed on either.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.cases import NEGATIVE, PROMPT, SEED, Case, input_depth, input_image, input_mask, release, synchronize

_PIPELINES = {
    "txt2img": "StableDiffusionPipeline",
    "inpaint": "StableDiffusionInpaintPipeline",
    "depth": "StableDiffusionDepth2ImgPipeline",
    "upscale": "StableDiffusionUpscalePipeline",
}
_SCHEDULERS = {"DPM++ 2M": "DPMSolverMultistepScheduler", "DDIM": "DDIMScheduler"}
VARIANTS = ("diffusers", "diffusers-compiled")


class DiffusersRunner:
    def __init__(self, repos: dict[str, Path], device: torch.device, dtype: torch.dtype, variant: str) -> None:
        import diffusers  # test/bench-only dependency

        self.diffusers = diffusers
        self.repos = repos
        self.device = device
        self.dtype = dtype
        self.variant = variant
        self.pipes: dict[tuple[str, str], Any] = {}

    def _pipe(self, task: str, kind: str, sampler: str) -> Any:
        key = (task, kind)
        if key not in self.pipes:
            cls = getattr(self.diffusers, _PIPELINES[task])
            file_variant = "fp16" if self.dtype == torch.float16 else None
            pipe = cls.from_pretrained(str(self.repos[kind]), torch_dtype=self.dtype, variant=file_variant)
            scheduler_cls = getattr(self.diffusers, _SCHEDULERS[sampler])
            pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
            pipe = pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            if self.variant == "diffusers-compiled":  # the documented recipe, as the issue measured it
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
            self.pipes[key] = pipe
        return self.pipes[key]

    def load(self, task: str, kind: str, sampler: str = "DPM++ 2M") -> float:
        start = time.perf_counter()
        self._pipe(task, kind, sampler)
        synchronize(self.device)
        return time.perf_counter() - start

    def call(self, case: Case, steps: int) -> Callable[[], object]:
        pipe = self._pipe(case.task, case.kind, case.sampler)
        common: dict[str, Any] = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_inference_steps": steps,
                                  "guidance_scale": case.cfg_scale, "num_images_per_prompt": case.batch}
        if case.task == "txt2img":
            common.update(height=case.size, width=case.size)
        elif case.task == "inpaint":
            common.update(image=input_image(case.size), mask_image=input_mask(case.size), height=case.size,
                          width=case.size, strength=1.0)
        elif case.task == "depth":
            depth = torch.from_numpy(np.asarray(input_depth(case.size), dtype=np.float32) / 255.0)[None]
            common.update(image=input_image(case.size), depth_map=depth, strength=1.0)
        elif case.task == "upscale":
            assert case.input_size is not None
            common.update(image=input_image(case.input_size), noise_level=20)

        def run() -> object:
            generator = torch.Generator(self.device).manual_seed(SEED)
            return pipe(generator=generator, output_type="pil", **common).images

        return run

    def unload(self, kind: str) -> None:
        for key in [k for k in self.pipes if k[1] == kind]:
            del self.pipes[key]
        release(self.device)

    def close(self) -> None:
        self.pipes.clear()
        torch._dynamo.reset()
        release(self.device)
