"""Text to image's workflow options: the "Hires fix" group, the "Extra seed options" and "Tiling".

`build_extras` makes the widgets (accordions under the main settings, closed: the options are off by
default; Image to image gets the tiling and variation ones from `build_img2img_extras`); `request_fields` turns
their values into the request's `hires`, `seed_extras` and `tiling` fields (API callers may leave any of them out:
None means the default); `from_parameters` fills them back from a PNG's parsed A1111 parameters (PNG info ->
"Send to text to image").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app import infotext_keys as keys
from sd2_app.api.checks import flag
from sd2_app.api.requests import HIRES_UPSCALERS, HiresFix, SeedExtras
from sd2_app.samplers.registry import AUTOMATIC, SCHEDULES
from sd2_app.ui.debounce import debounce_js
from sd2_app.ui.sending import hires_in, hires_sampler_fields, tiling_in

if TYPE_CHECKING:
    from sd2_app.api.service import Service

SAME_AS_FIRST_PASS = "Same as first pass"  # the hires sampler's and schedule type's first choice (A1111's "Use same")
HIRES_NAMES = ("hires_fix", "hires_upscaler", "hires_scale", "hires_width", "hires_height", "hires_steps",
               "denoising_strength", "hires_sampler", "hires_schedule", "hires_prompt",
               "hires_negative_prompt")  # the API's names
NAMES = (*HIRES_NAMES, "variation_seed", "variation_strength", "seed_resize_from_width", "seed_resize_from_height",
         "tiling")
DEFAULTS = HiresFix()


@dataclass
class HiresControls:
    """The "Hires fix" group (`build_hires`): its accordion, its size line and the widgets `inputs` lists."""

    accordion: gr.Accordion
    hires: gr.Checkbox
    hires_size: gr.Markdown  # the sizes the hires fix goes from and to (`wire_hires_size`)
    upscaler: gr.Dropdown
    scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    steps: gr.Slider
    strength: gr.Slider
    sampler: gr.Dropdown
    schedule: gr.Dropdown  # A1111's "Hires schedule type"
    prompt: gr.Textbox  # A1111's "Hires prompt": empty for the first pass's
    negative: gr.Textbox

    def inputs(self) -> list[gr.components.Component]:
        """The widgets in the order of `HIRES_NAMES`."""
        return [self.hires, self.upscaler, self.scale, self.width, self.height, self.steps, self.strength,
                self.sampler, self.schedule, self.prompt, self.negative]


@dataclass
class Txt2ImgExtras:
    fix: HiresControls
    variation_seed: gr.Number
    variation_strength: gr.Slider
    resize_width: gr.Slider
    resize_height: gr.Slider
    tiling: gr.Checkbox

    def inputs(self) -> list[gr.components.Component]:
        """The widgets in the order of `NAMES`."""
        return [*self.fix.inputs(), self.variation_seed, self.variation_strength, self.resize_width,
                self.resize_height, self.tiling]


def build_hires(service: Service, max_side: int, side: int, prefix: str = "txt2img") -> HiresControls:
    """The "Hires fix" accordion (closed, the fix off), its elem_ids starting with `prefix` (Text to image's and
    the X/Y/Z plot's own), its size line for a first pass of `side` x `side`."""
    with gr.Accordion("Hires fix", open=False, elem_id=f"{prefix}-hires-accordion") as accordion:
        hires = gr.Checkbox(False, label="Use hires fix", info="generate at this size, upscale, then redraw details",
                            elem_id=f"{prefix}-hires")
        hires_size = gr.Markdown(hires_size_note(side, side, DEFAULTS.scale, 0, 0, max_side),
                                 elem_id=f"{prefix}-hires-size", elem_classes=["field-note"])
        with gr.Row():
            upscaler = gr.Dropdown(list(HIRES_UPSCALERS), value=DEFAULTS.upscaler, label="Upscaler",
                                   elem_id=f"{prefix}-hires-upscaler")
            scale = gr.Slider(1, 4, DEFAULTS.scale, step=0.05, label="Upscale by", elem_id=f"{prefix}-hires-scale")
        with gr.Row():
            width = gr.Slider(0, max_side, 0, step=8, label="Resize width to", info="0 = by the factor",
                              elem_id=f"{prefix}-hires-width")
            height = gr.Slider(0, max_side, 0, step=8, label="Resize height to", info="0 = by the factor",
                               elem_id=f"{prefix}-hires-height")
        with gr.Row():
            steps = gr.Slider(0, 150, 0, step=1, label="Hires steps", info="0 = same as Steps",
                              elem_id=f"{prefix}-hires-steps")
            strength = gr.Slider(0, 1, DEFAULTS.denoising_strength, step=0.01, label="Denoising strength",
                                 elem_id=f"{prefix}-hires-strength")
        with gr.Row():
            sampler = gr.Dropdown([SAME_AS_FIRST_PASS, *service.samplers()], value=SAME_AS_FIRST_PASS,
                                  label="Hires sampler", elem_id=f"{prefix}-hires-sampler")
            schedule = gr.Dropdown([SAME_AS_FIRST_PASS, *SCHEDULES], value=SAME_AS_FIRST_PASS,
                                   label="Hires schedule type", elem_id=f"{prefix}-hires-schedule")
        prompt = gr.Textbox(label="Hires prompt", placeholder="Empty: the prompt", lines=2, max_lines=6,
                            elem_id=f"{prefix}-hires-prompt")
        negative = gr.Textbox(label="Hires negative prompt", placeholder="Empty: the negative prompt", lines=1,
                              max_lines=6, elem_id=f"{prefix}-hires-negative")
    return HiresControls(accordion, hires, hires_size, upscaler, scale, width, height, steps, strength, sampler,
                         schedule, prompt, negative)


def build_extras(service: Service, max_side: int, side: int) -> Txt2ImgExtras:
    """The widgets, in the order of `NAMES` (the hires size line for a first pass of `side` x `side`)."""
    tiling = gr.Checkbox(False, label="Tiling", info="seamless: the image's edges continue each other",
                         elem_id="txt2img-tiling")
    fix = build_hires(service, max_side, side)
    with gr.Accordion(SEED_EXTRAS, open=False, elem_id="txt2img-seed-extras") as accordion:
        with gr.Row():
            variation_seed, variation_strength = _variation_row("txt2img")
        with gr.Row():
            resize_width = gr.Slider(0, max_side, 0, step=8, label="Resize seed from width", info="0 = off")
            resize_height = gr.Slider(0, max_side, 0, step=8, label="Resize seed from height", info="0 = off")
    _wire_seed_extras_label(accordion, [variation_seed, variation_strength, resize_width, resize_height], "txt2img")
    return Txt2ImgExtras(fix, variation_seed, variation_strength, resize_width, resize_height, tiling)


SEED_EXTRAS = "Extra seed options"


def seed_extras_label(seed: Any, strength: Any, resize_width: Any = 0, resize_height: Any = 0) -> str:
    """The "Extra seed options" accordion's label: the bare name while the options are off, else what is on
    ("Extra seed options: variation seed 123 at 0.3, seed resize from 96x64"), so a send that sets them shows it
    with the accordion closed, as the Hires fix header does (`hires_label`). Values that are not numbers (the run's
    check says why) count as off."""
    on = []
    if _finite(strength) and strength > 0:
        whose = f"variation seed {int(seed)}" if _finite(seed) and seed >= 0 else "random variation seed"
        on.append(f"{whose} at {strength:g}")
    if _finite(resize_width) and _finite(resize_height) and resize_width > 0 and resize_height > 0:
        on.append(f"seed resize from {int(resize_width)}x{int(resize_height)}")
    return f"{SEED_EXTRAS}: {', '.join(on)}" if on else SEED_EXTRAS


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _wire_seed_extras_label(accordion: gr.Accordion, inputs: list[gr.components.Component], prefix: str) -> None:
    """The accordion's label follows its widgets (`seed_extras_label`; `inputs`: variation seed and strength, then
    the seed resize's width and height where the tab has them)."""
    api_name = f"{prefix}_seed_extras_label"
    gr.on([box.change for box in inputs], lambda *values: gr.update(label=seed_extras_label(*values)), inputs,
          accordion, queue=False, show_progress="hidden", js=debounce_js(api_name), api_name=api_name,
          api_visibility="private")


def hires_size_note(width: Any, height: Any, scale: Any, resize_width: Any, resize_height: Any, max_side: int) -> str:
    """"Upscales from 512x512 to 1024x1024." (A1111 shows the same under its hires settings), with what to change
    when the target is over the server's limit; empty for values that are not sizes (the run's check says why)."""
    sizes = _hires_sizes(width, height, scale, resize_width, resize_height, max_side)
    if sizes is None:
        return ""
    (w, h), target = sizes
    note = f"Upscales from {w}x{h} to {target[0]}x{target[1]}."
    if max(target) > max_side:
        note += f" That is over this server's {max_side} pixels per side: lower the upscale or the size."
    return note


def hires_label(on: Any, width: Any, height: Any, scale: Any, resize_width: Any, resize_height: Any,
                max_side: int) -> str:
    """The hires accordion's label: "Hires fix" while the fix is off, "Hires fix: on, 256x256 → 512x512" while
    it is on, so a send that turns it on shows it with the accordion closed (A1111 has the fix's checkbox in the
    accordion's header: modules/ui_components.py, InputAccordion)."""
    if not on:
        return "Hires fix"
    sizes = _hires_sizes(width, height, scale, resize_width, resize_height, max_side)
    if sizes is None:
        return "Hires fix: on"
    (w, h), (tw, th) = sizes
    return f"Hires fix: on, {w}x{h} → {tw}x{th}"


def _hires_sizes(width: Any, height: Any, scale: Any, resize_width: Any, resize_height: Any,
                 max_side: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(first pass size, hires target) from widget values; None for values that are not sizes."""
    values = (width, height, scale, resize_width or 0, resize_height or 0)
    if not all(_finite(v) for v in values):
        return None
    w, h = int(width), int(height)
    if not (0 < w <= 100 * max_side and 0 < h <= 100 * max_side and 0 < scale <= 100):
        return None
    hires = HiresFix(scale=float(scale), width=int(resize_width or 0) or None, height=int(resize_height or 0) or None)
    target = hires.target(w, h)
    return (w, h), (target[0], target[1])


def wire_hires_size(width: gr.Slider, height: gr.Slider, fix: HiresControls, max_side: int,
                    prefix: str = "txt2img") -> None:
    """Keep the hires fix's size line and its accordion's label up to date with the first pass's size and the
    upscale settings. One event sets both: with two events of the default trigger mode ("always_last") on the same
    widgets, Gradio's page called both again and again without end once two of those widgets changed at once (a
    send setting width and height), for as long as the page stayed open. Debounced (`sd2_app.ui.debounce`): a
    paste sets the six widgets one after another, and a call carrying the first ones could land last."""
    inputs = [fix.hires, width, height, fix.scale, fix.width, fix.height]

    def follow(on: Any, *sizes: Any) -> tuple:
        return hires_size_note(*sizes, max_side), gr.update(label=hires_label(on, *sizes, max_side))

    api_name = f"{prefix}_hires_size"
    gr.on([box.change for box in inputs], follow, inputs, [fix.hires_size, fix.accordion], queue=False,
          show_progress="hidden", js=debounce_js(api_name), api_name=api_name, api_visibility="private")


def wire_hires_schedule(sampler: gr.Dropdown, fix: HiresControls, service: Service, prefix: str = "txt2img") -> None:
    """The Hires schedule type offered while the hires pass's sampler (the Hires sampler, or the first pass's
    `sampler` for "Same as first pass") offers schedule types, as the first pass's Schedule type is; for one that
    offers none it is fixed: Automatic beside a hires sampler of its own (the first pass's schedule type may be one
    that sampler lacks), "Same as first pass" beside the first pass's sampler (whose Schedule type is Automatic)."""
    def offered(first: Any, hires: Any) -> Any:
        own = hires not in (None, "", SAME_AS_FIRST_PASS)
        if service.offers_schedules(hires if own else first):
            return gr.update(interactive=True)
        return gr.update(interactive=False, value=AUTOMATIC if own else SAME_AS_FIRST_PASS)

    api_name = f"{prefix}_hires_schedules_offered"  # debounced: a send sets both samplers, one after the other
    gr.on([sampler.change, fix.sampler.change], offered, [sampler, fix.sampler], fix.schedule, queue=False,
          show_progress="hidden", js=debounce_js(api_name), api_name=api_name, api_visibility="private")


IMG2IMG_NAMES = ("variation_seed", "variation_strength", "tiling")


def _variation_row(prefix: str) -> tuple[gr.Number, gr.Slider]:
    variation_seed = gr.Number(-1, label="Variation seed (-1 = random)", precision=0,
                               elem_id=f"{prefix}-variation-seed")
    variation_strength = gr.Slider(0, 1, 0, step=0.01, label="Variation strength",
                                   elem_id=f"{prefix}-variation-strength")
    return variation_seed, variation_strength


def build_img2img_extras() -> list[gr.components.Component]:
    """Image to image's Tiling checkbox and variation seed, in the order of `IMG2IMG_NAMES`."""
    tiling = gr.Checkbox(False, label="Tiling", info="seamless: the image's edges continue each other",
                         elem_id="img2img-tiling")
    with gr.Accordion(SEED_EXTRAS, open=False, elem_id="img2img-seed-extras") as accordion:
        with gr.Row():
            variation_seed, variation_strength = _variation_row("img2img")
    _wire_seed_extras_label(accordion, [variation_seed, variation_strength], "img2img")
    return [variation_seed, variation_strength, tiling]


def img2img_fields(variation_seed: Any = None, variation_strength: Any = None, tiling: Any = None) -> dict[str, Any]:
    """Image to image's widget (or API) values -> its request's seed_extras and tiling."""
    fields = request_fields(variation_seed=variation_seed, variation_strength=variation_strength, tiling=tiling)
    return {"seed_extras": fields["seed_extras"], "tiling": fields["tiling"]}


def _or(value: Any, default: Any) -> Any:
    return default if value is None or value == "" else value


def request_fields(hires_on: Any = None, upscaler: Any = None, scale: Any = None, width: Any = None,
                   height: Any = None, steps: Any = None, strength: Any = None, sampler: Any = None,
                   schedule: Any = None, hires_prompt: Any = None, hires_negative: Any = None, variation_seed: Any = None,
                   variation_strength: Any = None, resize_width: Any = None, resize_height: Any = None,
                   tiling: Any = None) -> dict[str, Any]:
    """Widget (or API) values -> the Txt2ImgRequest's hires, seed_extras and tiling; the service validates. The
    two checkboxes' values must be true or false (`checks.flag`; None: off): the text "false" from an API caller
    turned the hires fix on, as anything non-empty is true."""
    hires = None
    if hires_on is not None and flag(hires_on, "Hires fix"):
        hires = HiresFix(
            upscaler=_or(upscaler, DEFAULTS.upscaler), scale=_or(scale, DEFAULTS.scale), width=width or None,
            height=height or None, steps=steps or None,
            denoising_strength=_or(strength, DEFAULTS.denoising_strength),
            sampler=None if sampler in (None, "", SAME_AS_FIRST_PASS) else sampler,
            schedule="" if schedule in (None, "", SAME_AS_FIRST_PASS) else schedule,
            prompt=_or(hires_prompt, ""), negative_prompt=_or(hires_negative, ""),
        )
    resize = None if not resize_width and not resize_height else (resize_width or 0, resize_height or 0)
    extras = SeedExtras(variation_seed=_or(variation_seed, None), variation_strength=_or(variation_strength, 0.0),
                        resize_from=resize)
    return {"hires": hires, "seed_extras": extras, "tiling": False if tiling is None else tiling}  # checked there


def _size(text: Any) -> tuple[int, int] | None:
    width, sep, height = str(text or "").partition("x")
    return (int(width), int(height)) if sep and width.isdigit() and height.isdigit() else None


def from_parameters(parsed: dict[str, Any], samplers: list[str]) -> tuple:
    """Widget values (in `NAMES` order) that reproduce a PNG's hires fix, seed extras and tiling."""
    hires_on = hires_in(parsed)
    resize = _size(parsed.get(keys.HIRES_RESIZE)) or (0, 0)
    seed_resize = _size(parsed.get(keys.SEED_RESIZE_FROM)) or (0, 0)
    upscaler = parsed.get(keys.HIRES_UPSCALER, DEFAULTS.upscaler)
    hires_sampler, hires_schedule = hires_sampler_fields(parsed, samplers) if hires_on else (None, None)
    return (
        hires_on,
        upscaler if upscaler in HIRES_UPSCALERS else DEFAULTS.upscaler,
        parsed.get(keys.HIRES_UPSCALE, DEFAULTS.scale),
        resize[0],
        resize[1],
        parsed.get(keys.HIRES_STEPS, 0) if hires_on else 0,
        parsed.get(keys.DENOISING_STRENGTH, DEFAULTS.denoising_strength) if hires_on else DEFAULTS.denoising_strength,
        hires_sampler or SAME_AS_FIRST_PASS,  # as the API reads them
        hires_schedule or SAME_AS_FIRST_PASS,
        str(parsed.get(keys.HIRES_PROMPT, "")) if hires_on else "",  # absent: the prompt (A1111 writes it if other)
        str(parsed.get(keys.HIRES_NEGATIVE_PROMPT, "")) if hires_on else "",
        parsed.get(keys.VARIATION_SEED, -1),
        parsed.get(keys.VARIATION_SEED_STRENGTH, 0.0),
        seed_resize[0],
        seed_resize[1],
        tiling_in(parsed),
    )
