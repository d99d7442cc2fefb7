"""`build_ui(service)`: the whole Gradio app, one tab per task, and the wiring between tabs ("send to")."""

from __future__ import annotations

import json
from functools import partial
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.addresses import ClientAddresses
from sd2_app.checkpoints.catalog import checkpoint_named
from sd2_app import infotext_keys as keys
from sd2_app.errors import InvalidRequest
from sd2_app.prompt_styles import with_styles_read
from sd2_app.ui import depth, history, img2img, inpaint, models, outpaint, pnginfo, txt2img, upscale, xyz_plot
from sd2_app.ui.hosting import Hosting, Visitors
from sd2_app.ui.lifecycle import AppBlocks
from sd2_app.ui.notify import notify_switch
from sd2_app.ui.progress_targets import keep_progress_on_leaves
from sd2_app.ui.read_parameters import wire_read_parameters
from sd2_app.ui.result_panel import ResultPanel
from sd2_app.ui.runner import StopFlags
from sd2_app.ui.sending import (  # noqa: F401  # clamp_to, sampler_fields: also imported from here
    SendTarget, clamp_to, padding_note, parameter_outputs, parameter_values, picked_image_parameters, sampler_fields,
    size_values, unreproduced, wire_history_send, wire_parameters_send, wire_send)
from sd2_app.ui.txt2img_extras import from_parameters
from sd2_app.ui.zip_results import wire_zip

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.sending import SendSource
    from sd2_app.ui.sent_size import SizeBoxes

ASSETS = Path(__file__).resolve().parents[2] / "assets"
STATIC = Path(__file__).resolve().parent / "static"
TITLE = "Stable Diffusion 2"
NO_PLOT_YET = "Make a plot first."  # an X/Y/Z "Send to" with no grid or cell to send


def _examples(assets: Path) -> dict[str, list[list[str]]]:
    """Example rows per tab, only for the asset files that exist."""

    def rows(*items: tuple[str, str]) -> list[list[str]]:
        return [[str(assets / name), prompt] for name, prompt in items if (assets / name).is_file()]

    return {
        "img2img": rows(("landscape.png", "a fantasy landscape at sunset, oil painting")),
        "inpaint": rows(("landscape.png", "a white cat sitting on a rock")),
        "upscale": rows(("cat_128.png", "a white cat")),
        "depth": rows(("still_life.png", "two tigers")),
    }


def build_ui(service: Service, *, assets: Path = ASSETS, hosting: Hosting = Hosting()) -> AppBlocks:
    """The app. `service` is a `sd2_app.api.service.Service` (or a test double with the same methods).

    `hosting` holds the operator's settings for visitors (job limits per visitor and per address, model
    loading); every launch of the returned app serves visitor cookies and keeps the queue's direct routes
    closed (`AppBlocks.launch`, `sd2_app.ui.hosting`). The app owns its job threads and stop flags; its
    `close()` stops the jobs and waits for the results still being saved (`sd2_app.ui.lifecycle`).
    """
    visitors = Visitors(max_jobs=hosting.max_jobs_per_visitor, max_jobs_per_address=hosting.max_jobs_per_address,
                        addresses=ClientAddresses(trusted_hops=hosting.trusted_proxy_hops),
                        queue_size=hosting.queue_size)
    flags = StopFlags(visitors)
    examples = _examples(assets)
    with AppBlocks(service, flags, hosting, title=TITLE, analytics_enabled=False) as demo:
        _header()
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # on a phone: rows of tabs, each where it was
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
                plot = xyz_plot.build(service, flags)
            with gr.Tab("Models", id="models") as models_tab:
                refresh_models, models_outputs = models.build(service, admin=hosting.model_admin)
            with gr.Tab("History", id="history") as history_tab:
                past = history.build(service, visitors)
            with gr.Tab("PNG info", id="pnginfo"):
                png_image, png_text, png_send = pnginfo.build(service)
        targets = {  # the tabs of result_panel.IMAGE_TARGETS; Upscale takes no sampling settings (its own)
            "img2img": SendTarget(i2i.image, i2i.prompt, i2i.negative, i2i.sampling, styles=i2i.styles,
                                  tiling=i2i.tiling, size=i2i.size),
            "inpaint": SendTarget(inp.editor, inp.prompt, inp.negative, inp.sampling, styles=inp.styles,
                                  masked_content=inp.masked_content, mask_mode=inp.mask_mode),
            **{key: SendTarget(tab.image, tab.prompt, tab.negative, tab.sampling, styles=tab.styles)
               for key, tab in (("outpaint", out), ("depth", dep))},
            "upscale": SendTarget(up.image, up.prompt, up.negative, styles=up.styles)}
        tabs_with_results = (("txt2img", t2i), ("img2img", i2i), ("inpaint", inp), ("outpaint", out), ("upscale", up),
                             ("depth", dep))
        _wire_result_sends(service, visitors, tabs_with_results, tabs, targets)
        models_tab.select(refresh_models, None, models_outputs, api_name="models_tab",
                          api_visibility="private", queue=False)
        _wire_history_tab(history_tab, past)
        wire_history_send(service, past, tabs, targets)
        plot_sends = {target: button for target, button in plot.send_buttons.items() if target in targets}
        wire_parameters_send(service, plot_sends, plot.gallery, plot.selected, tabs, targets, "xyz", NO_PLOT_YET)
        wire_zip(service, visitors, plot.zip_button, plot.gallery, "xyz")
        _wire_reuse(service, visitors, t2i, tabs, png_send, png_text, past, plot)
        # Gradio 6 takes style sheets and scripts only at launch(); the page script adds ours on load instead, so
        # every launcher (app.py, Spaces, the tests) gets them.
        css = json.dumps((STATIC / "app.css").read_text(encoding="utf-8") + models.table_css() + history.phone_css())
        demo.load(None, js=f"() => ({(STATIC / 'app.js').read_text(encoding='utf-8')})({css})")
    return keep_progress_on_leaves(demo)  # once every event is wired


def _header() -> None:
    """The page's title and what it offers, with "Notify me when a run ends" (`notify_switch`) on the right."""
    with gr.Row(equal_height=False, elem_id="app-header"):
        gr.Markdown(f"# {TITLE}\nText to image, image to image, inpainting, outpainting, ×4 upscaling, depth to "
                    "image and X/Y/Z plots.", elem_id="app-title")
        notify_switch()


def _wire_result_sends(service: Service, visitors: Visitors, tabs_with_results: Sequence[tuple[str, SendSource]],
                       tabs: gr.Tabs, targets: dict[str, SendTarget]) -> None:
    """Each tab's "Send to" buttons, and its ↙ where the tab is a send target: ↙ fills the widgets a send into the
    tab fills (text to image's ↙ fills it as PNG info's send does: `_wire_reuse`)."""
    for prefix, tab in tabs_with_results:
        wire_send(tab.panel, tab, tabs, targets, prefix)
        wire_zip(service, visitors, tab.panel.zip_button, tab.panel.gallery, prefix)
        if prefix in targets:
            into = targets[prefix]
            fill, outputs = partial(parameter_values, service, into=into), parameter_outputs(into)
            if into.size is not None:  # Image to image: its width and height from "Size" too
                fill, outputs = _with_size(fill, into.size), [*outputs, into.size.width, into.size.height]
            wire_read_parameters(service, visitors, tab.panel, tab.prompt, fill, outputs, prefix)


def _with_size(fill: Callable[[dict[str, Any]], tuple], size: SizeBoxes) -> Callable[[dict[str, Any]], tuple]:
    """`fill`'s values, then the width and height the parameters' "Size" names (`size_values`)."""
    return lambda parsed: (*fill(parsed), *size_values(parsed, size.width, size.height))


def _wire_history_tab(history_tab: gr.Tab, past: history.HistoryView) -> None:
    """Selecting History refreshes it and forgets the image picked before."""
    history_tab.select(past.refresh, None, past.outputs, api_name="history_tab", api_visibility="private",
                       queue=False)
    history_tab.select(lambda: 0, None, past.selected, api_name="history_tab_unpick", api_visibility="private",
                       queue=False)


def _wire_reuse(service: Service, visitors: Visitors, t2i: txt2img.Txt2ImgTab, tabs: gr.Tabs, png_send: gr.Button,
                png_text: gr.Textbox, past: history.HistoryView, plot: ResultPanel) -> None:
    """PNG info's "Send to text to image", text to image's own ↙ (read_parameters.py), History's "Reuse its
    settings" and the X/Y/Z plot's "Send to text to image" (the picked grid's or cell's own settings) fill text to
    image."""
    to_txt2img, txt2img_fields = _png_to_txt2img(t2i, tabs, service)
    png_send.click(lambda text: to_txt2img(pnginfo.parsed_text(service, text)), png_text, txt2img_fields,
                   api_name="png_info_send", api_visibility="private")
    wire_read_parameters(service, visitors, t2i.panel, t2i.prompt, to_txt2img, txt2img_fields, "txt2img")
    past.reuse.click(lambda gallery, index: to_txt2img(picked_image_parameters(service, gallery, index)[1]),
                     [past.gallery, past.selected], txt2img_fields, api_name="history_reuse",
                     api_visibility="private")
    plot.send_buttons["txt2img"].click(
        lambda gallery, index: to_txt2img(picked_image_parameters(service, gallery, index, NO_PLOT_YET)[1]),
        [plot.gallery, plot.selected], txt2img_fields, api_name="xyz_send_to_txt2img", api_visibility="private")


def _count(service: Service, checkpoint: str, text: str, negative: bool) -> str | None:
    """The prompt box's counter of `text` with `checkpoint`'s tokenizer (every SD 2 checkpoint's is the same);
    None for a text over the length limit (the prompt box says so) or an unknown checkpoint."""
    try:
        return service.count_tokens(text, checkpoint, negative=negative)
    except InvalidRequest:
        return None


def _png_to_txt2img(
    t2i: txt2img.Txt2ImgTab, tabs: gr.Tabs, service: Service,
) -> tuple[Callable[[dict[str, Any] | None], tuple], list[gr.components.Component]]:
    """(function, outputs) putting parsed PNG parameters into text to image: prompt, negative prompt, sampler,
    steps, CFG, guidance rescale and DDIM's eta (0 where the text has none: each is written only when on), seed,
    images per prompt ("Batch size", 1 where the text has none; the image's own seed makes it the first of that
    batch), size and checkpoint. PNG info's send and History's reuse use it. Where
    the host has prompt styles, those found in the prompts are picked and the prompts keep the rest, as A1111's
    paste does; where none is found none stays picked (A1111 keeps the visitor's pick), so the prompts alone
    remake the image."""
    controls = t2i.sampling
    names = [value for _, value in controls.sampler.choices]
    # "Model" is our key or label, or A1111's name of the original file; any other name keeps the checkpoint.
    offered = {key: spec for key, spec in service.registry.items()
               if key in {key for _, key in t2i.checkpoint.choices}}
    styles = service.styles

    def send(parsed: dict[str, Any] | None) -> tuple:
        if not parsed or not isinstance(parsed, dict):  # nothing read (no text, or none that parses to settings)
            raise gr.Error(pnginfo.NOTHING_TO_SEND, print_exception=False)
        checkpoint = checkpoint_named(str(parsed.get(keys.MODEL, "")), offered)
        padding = padding_note(parsed, partial(_count, service, checkpoint or t2i.checkpoint.value))  # as run
        parsed = with_styles_read(parsed, styles)
        keep = gr.skip()
        sampler, schedule = sampler_fields(parsed, names)
        for note in [*unreproduced(parsed, sampler, names), padding]:
            if note:
                gr.Warning(note)
        return (
            parsed.get(keys.PROMPT, ""),
            parsed.get(keys.NEGATIVE_PROMPT, ""),
            keep if sampler is None else sampler,
            schedule,
            clamp_to(parsed.get(keys.STEPS), controls.steps, keys.STEPS),
            clamp_to(parsed.get(keys.CFG_SCALE), controls.cfg, keys.CFG_SCALE),
            clamp_to(parsed.get(keys.GUIDANCE_RESCALE, 0.0), controls.rescale, keys.GUIDANCE_RESCALE),
            clamp_to(parsed.get(keys.ETA_DDIM, 0.0), controls.eta, keys.ETA_DDIM),
            parsed.get(keys.SEED, keep),
            clamp_to(parsed.get(keys.BATCH_SIZE, 1), controls.batch, keys.BATCH_SIZE),
            *size_values(parsed, t2i.width, t2i.height),
            keep if checkpoint is None else checkpoint,
            gr.Tabs(selected="txt2img"),
            *from_parameters(parsed, names),  # hires fix, seed extras, tiling
            *(() if t2i.styles is None else (parsed.get(keys.STYLES_ARRAY, []),)),
        )

    outputs = [t2i.prompt, t2i.negative, controls.sampler, controls.schedule, controls.steps, controls.cfg,
               controls.rescale, controls.eta, controls.seed, controls.batch, t2i.width, t2i.height, t2i.checkpoint, tabs, *t2i.extras.inputs()]
    if t2i.styles is not None:
        outputs.append(t2i.styles)
    return send, outputs
