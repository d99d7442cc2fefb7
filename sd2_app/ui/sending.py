"""The "Send to <tab>" buttons: under every result, and in History for a picked past image.

An image sent to Inpaint becomes the editor's value on the server (gradio/components/image_editor.py,
ImageEditor.postprocess: a single image is the background and the composite, no layers). Set so, the editor shows
it however its tab was drawn: Gradio's editor empties its canvas whenever its value is empty once the canvas is
ready (js/imageeditor/shared/ImageEditor.svelte, the effect that calls reset_canvas), so an image only uploaded
into it on the page was wiped when the send itself first drew the Inpaint tab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app import infotext_keys as keys
from sd2_app.api.a1111_hires import A1111_SAME
from sd2_app.api.a1111_samplers import read_sampler, schedule_label
from sd2_app.api.requests import HIRES_UPSCALERS, MASK_MODES, MASKED_CONTENT, HiresFix, InpaintRequest
from sd2_app.errors import shown
from sd2_app.pipelines.metadata import whole_number
from sd2_app.prompt_styles import with_styles_read
from sd2_app.ui.layout import RUNNING
from sd2_app.ui.result_panel import ResultPanel, box_value, seed_of, selected_image
from sd2_app.ui.sampling_controls import SamplingControls

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.history import HistoryView
    from sd2_app.ui.inpaint import InpaintTab
    from sd2_app.ui.sent_size import SizeBoxes
    from sd2_app.ui.tab_frame import ImageTab
    from sd2_app.ui.txt2img import Txt2ImgTab

    SendSource = ImageTab | InpaintTab | Txt2ImgTab  # a tab with results, its prompts and sampling controls


@dataclass
class SendTarget:
    """Where "Send to <tab>" puts things: the image box, the prompts and, where they apply, the sampling controls."""

    image: gr.Image | gr.ImageMask  # Inpaint's editor takes the image as its value
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls | None = None
    tiling: gr.Checkbox | None = None  # the Tiling checkbox, where the tab has one
    styles: gr.Dropdown | None = None  # the Styles picker, where the host has prompt styles
    size: SizeBoxes | None = None  # width and height set to the image's own size (Image to image)
    masked_content: gr.Radio | None = None  # Inpaint's "Masked content", set from a PNG's text
    mask_mode: gr.Radio | None = None  # Inpaint's "Mask mode", set from a PNG's text


def wire_send(panel: ResultPanel, tab: SendSource, tabs: gr.Tabs, targets: dict[str, SendTarget],
              prefix: str) -> None:
    """Each "Send to X" button copies the picked result, the prompts and the picked prompt styles (and seed,
    sampler, steps, CFG and eta where X samples the same way, Tiling where X has it: the source tab's, off from a
    tab without one, and the image's own size where X has width and height) into tab X and switches to it.
    Queued, so "Generate an image first." reaches the user (or, while Generate's label says a run is on and the
    gallery it emptied is still empty, that the run must finish first)."""
    for target, button in panel.send_buttons.items():
        into = targets[target]
        carry, tiled = into.sampling is not None, into.tiling is not None
        source_tiling = tab.tiling if tiled else None  # None: the source tab has no Tiling
        styled = tab.styles is not None and into.styles is not None

        def send(gallery: Any, index: Any, run_label: Any, text: str, negative: str, seeds: Any, *rest: Any,
                 target: str = target, into: SendTarget = into, carry: bool = carry, tiled: bool = tiled,
                 tiling_given: bool = source_tiling is not None, styled: bool = styled) -> tuple:
            rest_left = list(rest)
            image = selected_image(gallery, index, running=run_label == RUNNING)
            seed = seed_of(seeds, index)  # the picked image's own
            values = (box_value(image), text, negative, gr.Tabs(selected=target), *sized_values(into, image))
            if carry:
                sampler, schedule, steps, cfg, eta = rest_left[:5]
                del rest_left[:5]
                values += (sampler, schedule, steps, cfg, gr.skip() if seed is None else seed, eta)
            if tiled:
                values += (bool(rest_left.pop(0)) if tiling_given else False,)
            return values + ((rest_left[0] or [],) if styled else ())

        inputs = [panel.gallery, panel.selected, panel.run, tab.prompt, tab.negative, panel.last_seeds]
        outputs = [into.image, into.prompt, into.negative, tabs, *sized_outputs(into)]
        if carry:
            source, dest = tab.sampling, into.sampling
            inputs += [source.sampler, source.schedule, source.steps, source.cfg, source.eta]
            outputs += [dest.sampler, dest.schedule, dest.steps, dest.cfg, dest.seed, dest.eta]
        if tiled:
            inputs += [source_tiling] if source_tiling is not None else []
            outputs.append(into.tiling)
        if styled:
            inputs.append(tab.styles)
            outputs.append(into.styles)
        button.click(send, inputs, outputs, api_name=f"{prefix}_send_to_{target}", api_visibility="private")


def sized_outputs(into: SendTarget) -> list[gr.components.Component]:
    """The widgets a send sets to the image's own size, where `into` has them (`sent_size`)."""
    return [] if into.size is None else into.size.outputs()


def sized_values(into: SendTarget, image: Image.Image) -> tuple:
    """The values of `sized_outputs(into)` for the sent `image`."""
    return () if into.size is None else into.size.values(image)


def picked_image_parameters(service: Service, gallery: Any, index: Any,
                            empty: str = "There is nothing in History yet.") -> tuple[Image.Image, dict[str, Any]]:
    """The gallery image picked (or the first) and the settings parsed from its PNG text; `empty` is said when
    the gallery has none."""
    if not gallery:
        raise gr.Error(empty, print_exception=False)
    image = selected_image(gallery, index)
    return image, service.read_parameters(image)[1]


def sampling_values(parsed: dict[str, Any], dest: SamplingControls) -> tuple:
    """Sampler, schedule type, steps, CFG, seed and eta from parsed parameters, for `dest`'s widgets (gr.skip() where
    absent; eta 0 where the text has none: it is written only when on)."""
    names = [value for _, value in dest.sampler.choices]
    sampler, schedule = sampler_fields(parsed, names)
    seed = parsed.get(keys.SEED)
    return (gr.skip() if sampler is None else sampler, schedule,
            clamp_to(parsed.get(keys.STEPS), dest.steps, keys.STEPS),
            clamp_to(parsed.get(keys.CFG_SCALE), dest.cfg, keys.CFG_SCALE), seed if isinstance(seed, int) else gr.skip(),
            clamp_to(parsed.get(keys.ETA_DDIM, 0.0), dest.eta, keys.ETA_DDIM))


def wire_history_send(service: Service, view: HistoryView, tabs: gr.Tabs, targets: dict[str, SendTarget]) -> None:
    """History's "Send to X": the picked image with the prompts and settings it was made with."""
    wire_parameters_send(service, view.send_buttons, view.gallery, view.selected, tabs, targets, "history")


def wire_parameters_send(service: Service, buttons: dict[str, gr.Button], gallery: gr.Gallery, selected: gr.State,
                         tabs: gr.Tabs, targets: dict[str, SendTarget], prefix: str,
                         empty: str = "There is nothing in History yet.") -> None:
    """"Send to X" of a gallery whose images carry their own settings (History; the X/Y/Z plot's cells, each
    with its own infotext): the picked image with the prompts and settings its PNG text names
    (`parameter_values`). `empty`: what is said when the gallery has no image."""
    for target, button in buttons.items():
        into = targets[target]

        def send(images: Any, index: Any, target: str = target, into: SendTarget = into) -> tuple:
            image, parsed = picked_image_parameters(service, images, index, empty)
            return (box_value(image), gr.Tabs(selected=target), *sized_values(into, image),
                    *parameter_values(service, parsed, into))

        outputs = [into.image, tabs, *sized_outputs(into), *parameter_outputs(into)]
        button.click(send, [gallery, selected], outputs,
                     api_name=f"{prefix}_send_to_{target}", api_visibility="private")


def parameter_values(service: Service, parsed: dict[str, Any], into: SendTarget) -> tuple:
    """Parsed parameters as values of `into`'s `parameter_outputs`: the prompts, the sampling settings where `into`
    has them, Tiling, Masked content and Mask mode where it has them, and, where it has the Styles picker, the host's styles
    found in the prompts (the prompts keep the rest, as PNG info's send does:
    `sd2_app.prompt_styles.with_styles_read`; none found: none stays picked)."""
    if into.styles is not None:
        parsed = with_styles_read(parsed, service.styles)
    values: tuple = (parsed.get(keys.PROMPT, ""), parsed.get(keys.NEGATIVE_PROMPT, ""))
    values += sampling_values(parsed, into.sampling) if into.sampling is not None else ()
    values += () if into.tiling is None else (tiling_in(parsed),)
    values += () if into.masked_content is None else (
        inpaint_choice_in(parsed, keys.MASKED_CONTENT, MASKED_CONTENT, InpaintRequest.masked_content),)
    values += () if into.mask_mode is None else (
        inpaint_choice_in(parsed, keys.MASK_MODE, MASK_MODES, InpaintRequest.mask_mode),)
    return values + (() if into.styles is None else (parsed.get(keys.STYLES_ARRAY, []),))


def size_values(parsed: dict[str, Any], width_box: gr.Slider | gr.Number, height_box: gr.Slider | gr.Number) -> tuple:
    """Width and height from parsed parameters' "Size" ("768x512"), each fitted to its box or slider (`clamp_to`:
    a multiple of 8 within the server's sides), as A1111's paste sets them; gr.skip() for a side the text lacks."""
    width, _, height = str(parsed.get(keys.SIZE, "")).partition("x")
    return tuple(clamp_to(whole_number(side), box, name) if side.isdigit() else gr.skip()
                 for side, box, name in ((width, width_box, "Width"), (height, height_box, "Height")))


def parameter_outputs(into: SendTarget) -> list[gr.components.Component]:
    """The widgets of `into` that parsed parameters set (`parameter_values`), all but the image."""
    outputs: list[gr.components.Component] = [into.prompt, into.negative]
    if into.sampling is not None:
        dest = into.sampling
        outputs += [dest.sampler, dest.schedule, dest.steps, dest.cfg, dest.seed, dest.eta]
    outputs += [] if into.tiling is None else [into.tiling]
    outputs += [] if into.masked_content is None else [into.masked_content]
    outputs += [] if into.mask_mode is None else [into.mask_mode]
    return outputs + ([] if into.styles is None else [into.styles])


def sampler_fields(parsed: dict[str, Any], names: list[str]) -> tuple[str | None, str]:
    """(sampler, schedule type) from parsed parameters' "Sampler" and "Schedule type" (`read_sampler`, the A1111 API's
    reading too); sampler None when the dropdown (`names`) has no sampler of that name: it would only fail later,
    at Generate, with Gradio's "not in the list of choices"."""
    return read_sampler(parsed.get(keys.SAMPLER), parsed.get(keys.SCHEDULE_TYPE), names)


def hires_sampler_fields(parsed: dict[str, Any], names: list[str]) -> tuple[str | None, str | None]:
    """(hires sampler, hires schedule type) from parsed parameters, None for "the first pass's": A1111's reading
    (modules/sd_samplers.py, `get_hr_sampler_and_scheduler`): "Hires sampler" and "Hires schedule type", each
    absent for the first pass's, read together as "Sampler" and "Schedule type" are (a schedule at the end of the
    sampler's name winning), and what equals the first pass's reading is the first pass's. A hires sampler or
    schedule type we lack is the first pass's too (`unreproduced` says so)."""
    def own(key: str, first_key: str) -> Any:
        value = parsed.get(key)
        return parsed.get(first_key) if value in A1111_SAME else value

    schedule = own(keys.HIRES_SCHEDULE_TYPE, keys.SCHEDULE_TYPE)
    if schedule_label(schedule) is None:
        schedule = parsed.get(keys.SCHEDULE_TYPE)
    sampler, schedule = read_sampler(own(keys.HIRES_SAMPLER, keys.SAMPLER), schedule, names)
    first_sampler, first_schedule = sampler_fields(parsed, names)
    return (None if sampler == first_sampler else sampler), (None if schedule == first_schedule else schedule)


# Settings of A1111's that text to image here has no control for: what is used instead.
_NOT_HERE = {keys.HIRES_CHECKPOINT: "the first pass's checkpoint", keys.EMPHASIS: 'A1111\'s default ("Original")',
             keys.REFINER: "no refiner", keys.ETA_ANCESTRAL: "the ancestral samplers' full noise (eta 1)"}


def unreproduced(parsed: dict[str, Any], sampler: str | None, names: Sequence[str]) -> list[str]:
    """What of a parsed A1111 parameters text "Send to text to image" cannot set here, one sentence each (shown
    as warnings): an unknown sampler (`sampler`: `sampler_fields`' reading, None for none of ours), schedule type,
    hires upscaler or hires sampler (`names`: the samplers offered), and A1111 settings we do not have."""
    notes = []
    if parsed.get(keys.SAMPLER) and sampler is None:
        notes.append(f"Sampler {shown(parsed[keys.SAMPLER])} is not available here; the current sampler is kept.")
    schedule = parsed.get(keys.SCHEDULE_TYPE)
    if schedule is not None and schedule_label(schedule) is None:
        notes.append(f"Schedule type {shown(schedule)} is not available here; the sampler's own schedule is used.")
    upscaler = parsed.get(keys.HIRES_UPSCALER)
    if hires_in(parsed) and upscaler is not None and upscaler not in HIRES_UPSCALERS:
        notes.append(f"Hires upscaler {shown(upscaler)} is not available here; {HiresFix().upscaler} is used.")
    hires_sampler = parsed.get(keys.HIRES_SAMPLER)
    if (hires_in(parsed) and hires_sampler not in A1111_SAME
            and read_sampler(str(hires_sampler), None, names)[0] is None):
        notes.append(f"Hires sampler {shown(hires_sampler)} is not available here; the first pass's sampler is used.")
    hires_schedule = parsed.get(keys.HIRES_SCHEDULE_TYPE)
    if hires_in(parsed) and hires_schedule not in A1111_SAME and schedule_label(hires_schedule) is None:
        notes.append(f"Hires schedule type {shown(hires_schedule)} is not available here; the first pass's schedule "
                     "type is used.")
    for key, instead in _NOT_HERE.items():
        if key in parsed:
            notes.append(f"{key} ({shown(parsed[key])}) is not supported here; {instead} is used.")
    return notes


def padding_note(parsed: dict[str, Any], count: Callable[[str, bool], str | None]) -> str | None:
    """What a text of A1111's without "Pad conds" cannot remake: where guidance read a prompt and a negative
    prompt of other chunk counts, A1111 ran the two unpadded (its "Pad prompt/negative prompt" setting off), and
    here the shorter is padded with the encoded empty chunk (pipelines/prompt.py), so the image differs a little.
    `count(text, negative)` is the prompt box's counter ("93/150", `Service.count_tokens`; None: not counted)."""
    cfg = parsed.get(keys.CFG_SCALE)
    if parsed.get(keys.PAD_CONDS) or (isinstance(cfg, (int, float)) and cfg <= 1):
        return None
    chunks = [_chunks(count(str(parsed.get(key, "")), negative))
              for key, negative in ((keys.PROMPT, False), (keys.NEGATIVE_PROMPT, True))]
    if None in chunks or chunks[0] == chunks[1]:
        return None
    return (f"The prompt ({_plural(chunks[0])}) and the negative prompt ({_plural(chunks[1])}) have other lengths "
            "and the text has no \"Pad conds\": A1111 ran them unpadded, here the shorter is padded with empty "
            "chunks, so the image will differ a little.")


def _chunks(counter: str | None) -> int | None:
    """Chunks of 75 tokens from a counter text ("93/150" -> 2); None for none."""
    limit = (counter or "").partition("/")[2].split(" ")[0]
    return int(limit) // 75 if limit.isdigit() else None


def _plural(chunks: int | None) -> str:
    return f"{chunks} chunk{'' if chunks == 1 else 's'} of 75 tokens"


def hires_in(parsed: dict[str, Any]) -> bool:
    """Whether parameters describe a hires fix: A1111's rule (modules/ui.py, the paste field of "Hires fix"),
    a denoising strength with any hires key (older A1111 versions wrote no "Hires upscaler")."""
    hires_keys = (keys.HIRES_UPSCALE, keys.HIRES_UPSCALER, keys.HIRES_RESIZE)
    return keys.DENOISING_STRENGTH in parsed and any(key in parsed for key in hires_keys)


def tiling_in(parsed: dict[str, Any]) -> bool:
    """Whether parsed parameters say the image was made as a seamless tile ("Tiling: True"; absent: not)."""
    return bool(parsed.get(keys.TILING, False))


def inpaint_choice_in(parsed: dict[str, Any], key: str, choices: tuple[str, ...], unwritten: str) -> Any:
    """One of Inpaint's radios from parsed parameters, as A1111 writes its setting `key` (modules/processing.py,
    StableDiffusionProcessingImg2Img.init: "Masked content" but for "original", "Mask mode" only for "Inpaint not
    masked"): `unwritten`, the choice A1111 writes nothing for, where the text has none; a value this app lacks is
    said in a warning and the radio keeps its choice."""
    value = parsed.get(key, unwritten)
    if value in choices:
        return value
    gr.Warning(f"{key} {shown(value)} is not available here; the current choice is kept.")
    return gr.skip()


def clamp_to(value: Any, slider: gr.Slider, key: str = "") -> Any:
    """A number read from parameters text (pasted into PNG info, or a PNG's) made one `slider` takes: clamped into
    its range and, on a slider of whole steps (steps, images per prompt, sizes), rounded to its step, halves up;
    gr.skip() when it is not a number. A value that had to change is said in a warning naming it (`key`: its name
    in the text; default: the slider's label, else its elem_id): it would otherwise reach the slider as it is and
    be refused only at Generate ("Batch size must be a whole number, got 2.5.")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return gr.skip()
    low, high, step = slider.minimum, slider.maximum, slider.step
    fitted = min(max(value, low), high)
    whole = float(step).is_integer()
    if whole:  # the grid the slider moves on, from its minimum
        fitted = min(low + math.floor((fitted - low) / step + 0.5) * step, high)
    if fitted != value:
        grid = (", whole numbers" if step == 1 else f", in steps of {step:g}") if whole else ""
        name = key or slider.label or slider.elem_id or "A value"
        gr.Warning(f"{name} {value:g} cannot be set here ({low:g} to {high:g}{grid}); "
                   f"{fitted:g} is used.")
    return fitted


