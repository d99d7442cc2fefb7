"""`build_ui(service)`: the whole Gradio app, one tab per task, and the wiring between tabs ("send to")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.ui import depth, history, img2img, inpaint, models, outpaint, pnginfo, txt2img, upscale, xyz_plot
from sd2_app.ui.common import ResultPanel, SamplingControls, selected_image
from sd2_app.ui.hosting import Hosting, Visitors, install
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.txt2img_extras import from_parameters

if TYPE_CHECKING:
    from sd2_app.api.service import Service

ASSETS = Path(__file__).resolve().parents[2] / "assets"
STATIC = Path(__file__).resolve().parent / "static"
TITLE = "Stable Diffusion 2"


def _examples(assets: Path) -> dict[str, list[list[Any]]]:
    """Example rows per tab, only for the asset files that exist."""

    def rows(*items: tuple[str, str]) -> list[list[Any]]:
        return [[str(assets / name), prompt] for name, prompt in items if (assets / name).is_file()]

    return {
        "img2img": rows(("landscape.png", "a fantasy landscape at sunset, oil painting")),
        "inpaint": rows(("landscape.png", "a white cat sitting on a rock")),
        "upscale": rows(("cat_128.png", "a white cat")),
        "depth": rows(("still_life.png", "two tigers")),
    }


@dataclass
class SendTarget:
    """Where "Send to <tab>" puts things: the image box, the prompts and, where they apply, the sampling controls."""

    image: Any
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls | None = None
    editor: gr.ImageMask | None = None  # set when `image` is only the courier of an image editor


def _wire_send(tab: Any, tabs: gr.Tabs, targets: dict[str, SendTarget], prefix: str) -> None:
    """Each "Send to X" button copies the picked result, the prompts (and seed, sampler, steps and CFG where X
    samples the same way) into tab X and switches to it. Queued, so "Generate an image first." reaches the user."""
    panel: ResultPanel = tab.panel
    for target, button in panel.send_buttons.items():
        into = targets[target]
        carry = into.sampling is not None

        def send(gallery: Any, index: Any, text: str, negative: str, seed: Any, *sampling: Any,
                 target: str = target, carry: bool = carry) -> tuple:
            image = selected_image(gallery, index)
            if not carry:
                return image, text, negative, gr.Tabs(selected=target)
            sampler, karras, steps, cfg = sampling
            return (image, text, negative, gr.Tabs(selected=target), sampler, karras, steps, cfg,
                    gr.skip() if seed is None else seed)

        inputs = [panel.gallery, panel.selected, tab.prompt, tab.negative, panel.last_seed]
        outputs = [into.image, into.prompt, into.negative, tabs]
        if carry:
            source, dest = tab.sampling, into.sampling
            inputs += [source.sampler, source.karras, source.steps, source.cfg]
            outputs += [dest.sampler, dest.karras, dest.steps, dest.cfg, dest.seed]
        sent = button.click(send, inputs, outputs, api_name=f"{prefix}_send_to_{target}", api_visibility="private")
        if into.editor is not None:
            editor_id, courier_id = into.editor.elem_id, into.image.elem_id
            sent.success(None, js=f"() => window.sd2SendToEditor({courier_id!r}, {editor_id!r})").then(
                lambda: None, None, into.image, api_name=f"{prefix}_sent_to_{target}", api_visibility="private",
                queue=False, show_progress="hidden")


def build_ui(service: Service, *, assets: Path = ASSETS, hosting: Hosting = Hosting()) -> gr.Blocks:
    """The app. `service` is a `sd2_app.api.service.Service` (or a test double with the same methods).

    `hosting` holds the operator's settings for visitors (per-visitor job limit, model loading); every launch
    of the returned app serves visitor cookies and keeps the queue's direct routes closed (`sd2_app.ui.hosting`).
    """
    visitors = Visitors(max_jobs=hosting.max_jobs_per_visitor)
    flags = StopFlags(visitors)
    examples = _examples(assets)
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nText to image, image to image, inpainting, outpainting, ×4 upscaling, depth to "
                    "image and X/Y/Z plots.", elem_id="app-title")
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image", id="txt2img"):
                t2i = txt2img.build(service, flags)
            with gr.Tab("Image to image", id="img2img"):
                i2i = img2img.build(service, flags, examples["img2img"])
            with gr.Tab("Inpaint", id="inpaint"):
                inp = inpaint.build(service, flags, examples["inpaint"])
            with gr.Tab("Outpaint", id="outpaint"):
                out = outpaint.build(service, flags)
            with gr.Tab("Upscale ×4", id="upscale"):
                up = upscale.build(service, flags, examples["upscale"])
            with gr.Tab("Depth to image", id="depth"):
                dep = depth.build(service, flags, examples["depth"])
            with gr.Tab("X/Y/Z plot", id="xyz"):
                xyz_plot.build(service, flags)
            with gr.Tab("Models", id="models") as models_tab:
                refresh_models, models_outputs = models.build(service, admin=hosting.model_admin)
            with gr.Tab("History", id="history") as history_tab:
                refresh_history, history_outputs = history.build(service, visitors)
            with gr.Tab("PNG info", id="pnginfo"):
                png_image, png_fields, png_send = pnginfo.build(service)
        targets = {
            "img2img": SendTarget(i2i.image, i2i.prompt, i2i.negative, i2i.sampling),
            "inpaint": SendTarget(inp.incoming, inp.prompt, inp.negative, inp.sampling, editor=inp.editor),
            "upscale": SendTarget(up.image, up.prompt, up.negative),
        }
        tabs_with_results = (("txt2img", t2i), ("img2img", i2i), ("inpaint", inp), ("outpaint", out), ("upscale", up),
                             ("depth", dep))
        for prefix, tab in tabs_with_results:
            _wire_send(tab, tabs, targets, prefix)
        models_tab.select(refresh_models, None, models_outputs, api_name="models_tab",
                          api_visibility="private", queue=False)
        history_tab.select(refresh_history, None, history_outputs, api_name="history_tab", api_visibility="private",
                           queue=False)
        _wire_png_send(png_send, png_fields, t2i, tabs)
        # Gradio 6 takes style sheets and scripts only at launch(); the page script adds ours on load instead, so
        # every launcher (app.py, Spaces, the tests) gets them.
        css = json.dumps((STATIC / "app.css").read_text(encoding="utf-8"))
        demo.load(None, js=f"() => ({(STATIC / 'app.js').read_text(encoding='utf-8')})({css})")
    install(demo, visitors)
    return demo


def sampler_fields(parsed: dict[str, Any], names: list[str]) -> tuple[str | None, bool]:
    """(sampler, Karras) from parsed parameters; sampler None when we have no sampler of that name.

    A1111 wrote Karras into the name before it had "Schedule type" ("DPM++ 2M Karras"); a name the dropdown
    does not list would only fail later, at Generate, with Gradio's "not in the list of choices".
    """
    name = str(parsed.get("Sampler", ""))
    karras = parsed.get("Schedule type") == "Karras"
    if name not in names and name.endswith(" Karras") and name[: -len(" Karras")] in names:
        name, karras = name[: -len(" Karras")], True
    return (name if name in names else None), karras


def clamp_to(value: Any, slider: Any) -> Any:
    """A number read from another tool's PNG, clamped into `slider`'s range (gr.skip() when not a number).

    Out-of-range values would otherwise reach the slider as they are and fail later, at Generate.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return gr.skip()
    return min(max(value, slider.minimum), slider.maximum)


def _wire_png_send(button: gr.Button, fields: gr.JSON, t2i: txt2img.Txt2ImgTab, tabs: gr.Tabs) -> None:
    """PNG info -> text to image: prompt, negative prompt, sampler, steps, CFG, seed and size."""
    controls = t2i.sampling
    names = [value for _, value in controls.sampler.choices]

    def send(parsed: dict[str, Any] | None) -> tuple:
        if not parsed:
            raise gr.Error("Upload a PNG with parameters first.", print_exception=False)
        size = str(parsed.get("Size", ""))
        width, _, height = size.partition("x")
        keep = gr.skip()
        sampler, karras = sampler_fields(parsed, names)
        if sampler is None and parsed.get("Sampler"):
            gr.Warning(f"Sampler {parsed['Sampler']!r} is not available here; the current sampler is kept.")
        return (
            parsed.get("Prompt", ""),
            parsed.get("Negative prompt", ""),
            keep if sampler is None else sampler,
            karras,
            clamp_to(parsed.get("Steps"), controls.steps),
            clamp_to(parsed.get("CFG scale"), controls.cfg),
            parsed.get("Seed", keep),
            clamp_to(int(width), t2i.width) if width.isdigit() else keep,
            clamp_to(int(height), t2i.height) if height.isdigit() else keep,
            gr.Tabs(selected="txt2img"),
            *from_parameters(parsed, names),  # hires fix, seed extras, tiling
        )

    outputs = [t2i.prompt, t2i.negative, controls.sampler, controls.karras, controls.steps, controls.cfg,
               controls.seed, t2i.width, t2i.height, tabs, *t2i.extras.inputs()]
    button.click(send, fields, outputs, api_name="png_info_send", api_visibility="private", queue=False)
