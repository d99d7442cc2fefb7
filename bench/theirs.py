"""The reference side: diffusers' own pipelines on the same folders, the same sampler, steps, CFG and seed.

"diffusers" is what a user gets from the documented fp16 recipe (eager); "diffusers-compiled" adds the
documented torch.compile of the UNet (channels_last, mode="reduce-overhead", fullgraph=True, i.e. with CUDA
graphs); "diffusers-recipe" is the strongest documented setup, from diffusers' speed guide (docs: tutorials,
"Accelerate inference of text-to-image diffusion models"): the Inductor flags it recommends, fused QKV
projections, channels_last UNet and VAE, and torch.compile(mode="max-autotune", fullgraph=True) of the UNet
and of the VAE decoder. Off the GPU the recipe's compiles use the "eager" backend (they trace, not generate
code: Inductor's CPU code generation would take many minutes on a small CPU), so the CPU check tests the
wiring, not the speed.
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
VARIANTS = ("diffusers", "diffusers-compiled", "diffusers-recipe")
# the Inductor settings diffusers' speed guide recommends (process-wide; put back when the runner closes)
RECIPE_INDUCTOR_FLAGS = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                         "coordinate_descent_check_all_directions": True}


def apply_speed_guide(pipe: Any, device: torch.device) -> dict[str, Any]:
    """The speed guide's recipe on a loaded pipeline, in place; returns the Inductor flags it replaced."""
    import torch._inductor.config as inductor

    saved = {name: getattr(inductor, name) for name in RECIPE_INDUCTOR_FLAGS}
    for name, value in RECIPE_INDUCTOR_FLAGS.items():
        setattr(inductor, name, value)
    pipe.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    options: dict[str, Any] = ({"mode": "max-autotune"} if device.type == "cuda" else {"backend": "eager"})
    pipe.unet = torch.compile(pipe.unet, fullgraph=True, **options)
    pipe.vae.decode = torch.compile(pipe.vae.decode, fullgraph=True, **options)
    return saved


class DiffusersRunner:
    def __init__(self, repos: dict[str, Path], device: torch.device, dtype: torch.dtype, variant: str) -> None:
        import diffusers  # test/bench-only dependency

        self.diffusers = diffusers
        self.repos = repos
        self.device = device
        self.dtype = dtype
        self.variant = variant
        self.pipes: dict[tuple[str, str], Any] = {}
        self._inductor_flags: dict[str, Any] = {}  # what the recipe replaced, to put back on close

    def _pipe(self, task: str, kind: str, sampler: str) -> Any:
        key = (task, kind)
        if key not in self.pipes:
            cls = getattr(self.diffusers, _PIPELINES[task])
            # the fp16 files when the repo has them (the bench's full-size repos have only those; an fp32
            # reference loads them upcast), else the full-precision ones
            has_fp16 = any((self.repos[kind] / "unet").glob("*.fp16.safetensors"))
            file_variant = "fp16" if has_fp16 else None
            pipe = cls.from_pretrained(str(self.repos[kind]), torch_dtype=self.dtype, variant=file_variant)
            scheduler_cls = getattr(self.diffusers, _SCHEDULERS[sampler])
            pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
            pipe = pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            if self.variant == "diffusers-compiled":  # the documented recipe, as the issue measured it
                pipe.unet.to(memory_format=torch.channels_last)
                pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
            elif self.variant == "diffusers-recipe":
                self._inductor_flags = {**apply_speed_guide(pipe, self.device), **self._inductor_flags}
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
            # ours draws each image of a batch from its own seed (sd2_app/api/requests.py, `numbered_seeds`):
            # diffusers does the same job given one generator per image
            generators = [torch.Generator(self.device).manual_seed(SEED + index) for index in range(case.batch)]
            generator = generators[0] if case.batch == 1 else generators
            return pipe(generator=generator, output_type="pil", **common).images

        return run

    def unload(self, kind: str) -> None:
        for key in [k for k in self.pipes if k[1] == kind]:
            del self.pipes[key]
        release(self.device)

    def close(self) -> None:
        self.pipes.clear()
        torch._dynamo.reset()
        if self._inductor_flags:
            import torch._inductor.config as inductor

            for name, value in self._inductor_flags.items():
                setattr(inductor, name, value)
        release(self.device)
