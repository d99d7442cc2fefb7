"""The keys of the A1111-style `parameters` text ("infotext"), named once for every writer and reader.

The pipelines write them (`pipelines/output.py`, `hires.py`, `seeds.py`, the task builders), PNG info and the
"Send to"/"Reuse" buttons read them back (`ui/blocks.py`, `ui/sending.py`, `ui/txt2img_extras.py`), the X/Y/Z plot
leaves out the ones its axes vary (`api/plot_axes.py`). The names are A1111's where it has the setting
(modules/processing.py, `create_infotext`; modules/infotext_utils.py, `parse_generation_parameters`), so A1111 and
other tools read our PNGs and we read theirs. No imports: every layer may use it (docs/DESIGN.md).
"""

from __future__ import annotations

PARAMETERS_KEY = "parameters"  # the PNG text chunk holding the text (A1111's images.py, `save_image_with_geninfo`)

# The prompts: the first lines of the text; the parser hands them back under these keys.
PROMPT = "Prompt"
NEGATIVE_PROMPT = "Negative prompt"  # written as the line "Negative prompt: ..."

# Every task (pipelines/output.py, `sampling_settings`), in A1111's order.
STEPS = "Steps"
SAMPLER = "Sampler"
SCHEDULE_TYPE = "Schedule type"  # one of sd2_app.samplers.registry.SCHEDULES
CFG_SCALE = "CFG scale"
SEED = "Seed"
SIZE = "Size"  # "WxH"
MODEL_HASH = "Model hash"  # a single-file checkpoint's sha256, first 10 hex digits (A1111's short hash)
MODEL = "Model"
GUIDANCE_RESCALE = "Guidance rescale"
ETA_DDIM = "Eta DDIM"  # DDIM's eta (A1111's sd_samplers_timesteps.py); its "Eta" is the ancestral samplers'
BATCH_SIZE = "Batch size"
BATCH_POS = "Batch pos"
TI_HASHES = "TI hashes"  # "name: shorthash, ..." of the embeddings the prompts used
LORA_HASHES = "Lora hashes"  # "name: shorthash, ..." of the LoRAs merged for the job
# True where a prompt's and the negative prompt's contexts (or the prompt schedule's texts) have other chunk
# counts and the shorter were padded with the encoded empty chunk: A1111's "Pad prompt/negative prompt" setting
# (modules/sd_samplers_cfg_denoiser.py, `pad_cond`), which its text names so, so A1111 pads the same way on paste
PAD_CONDS = "Pad conds"
STOPPED_AT_STEP = "Stopped at step"  # ours: Stop ended the run after this step and kept the image so far

# Image to image, inpainting, depth, and the hires fix's second pass.
DENOISING_STRENGTH = "Denoising strength"

# Text to image's hires fix (pipelines/hires.py).
HIRES_UPSCALE = "Hires upscale"
HIRES_RESIZE = "Hires resize"  # "WxH", 0 for a side that follows the other
HIRES_STEPS = "Hires steps"
HIRES_UPSCALER = "Hires upscaler"
HIRES_SAMPLER = "Hires sampler"

# Extra seed options (pipelines/seeds.py) and Tiling.
VARIATION_SEED = "Variation seed"
VARIATION_SEED_STRENGTH = "Variation seed strength"
SEED_RESIZE_FROM = "Seed resize from"  # "WxH"
TILING = "Tiling"

# Inpainting and outpainting (pipelines/inpaint.py, outpaint.py).
MASK_BLUR = "Mask blur"
INPAINT_AREA = "Inpaint area"
MASKED_AREA_PADDING = "Masked area padding"
KEEP_UNMASKED = "Keep unmasked"
MASK_MODE = "Mask mode"  # A1111's: "Inpaint not masked" ("Inpaint masked" is not written)
MASKED_CONTENT = "Masked content"  # A1111's: "fill", "latent noise" or "latent nothing" ("original" is not written)
OUTPAINT_FILL = "Outpaint fill"
OUTPAINT_LEFT = "Outpaint left"  # the margins added, in pixels
OUTPAINT_RIGHT = "Outpaint right"
OUTPAINT_UP = "Outpaint up"
OUTPAINT_DOWN = "Outpaint down"
OUTPAINT_MARGINS = {"left": OUTPAINT_LEFT, "right": OUTPAINT_RIGHT, "up": OUTPAINT_UP, "down": OUTPAINT_DOWN}

# x4 upscaling (pipelines/upscale.py) and depth to image (pipelines/depth.py).
NOISE_LEVEL = "Noise level"
TILE_SIZE = "Tile size"
DEPTH = "Depth"

# A1111's settings we read but never write (each is named as not reproduced when pasted: ui/sending.py).
HIRES_PROMPT = "Hires prompt"
HIRES_NEGATIVE_PROMPT = "Hires negative prompt"
HIRES_CHECKPOINT = "Hires checkpoint"
HIRES_SCHEDULE_TYPE = "Hires schedule type"  # A1111 writes it where the second pass's differs from "Schedule type"
EMPHASIS = "Emphasis"
REFINER = "Refiner"
ETA_ANCESTRAL = "Eta"  # ancestral samplers' eta, written when not 1 (A1111's sd_samplers_kdiffusion.py, `initialize`)

# What reading adds: the host's styles found in the pasted prompts (A1111's "Styles array", prompt_styles.py).
STYLES_ARRAY = "Styles array"


def plot_axis_keys(axis: str) -> tuple[str, str]:
    """An X/Y/Z plot grid's keys for one axis ("X", "Y" or "Z"): A1111's "X Type" and "X Values"
    (scripts/xyz_grid.py)."""
    return f"{axis} Type", f"{axis} Values"
