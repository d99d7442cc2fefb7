"""The tasks: one shared denoising loop (`loop.run_sampling`) and thin builders that differ only in their
start latents and extra UNet inputs. Each task is
`task(components, request, on_step=None, mode=NORMAL) -> PipelineOutput`; `mode` (run_mode.RunMode) is the
fallback ladder's choice of precision and memory switches for this attempt.
"""

from sd2_app.pipelines.depth import depth2img
from sd2_app.pipelines.img2img import img2img
from sd2_app.pipelines.inpaint import inpaint
from sd2_app.pipelines.loop import Conditioning, LatentProgressFn, Tiling, run_sampling
from sd2_app.pipelines.metadata import parse_parameters, read_png_parameters, save_png
from sd2_app.pipelines.output import PipelineOutput
from sd2_app.pipelines.txt2img import txt2img
from sd2_app.pipelines.upscale import upscale

__all__ = [
    "Conditioning", "PipelineOutput", "LatentProgressFn", "Tiling", "depth2img", "img2img", "inpaint",
    "parse_parameters", "read_png_parameters", "run_sampling", "save_png", "txt2img", "upscale",
]
