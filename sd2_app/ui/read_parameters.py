"""↙ beside Stop: A1111's "Read generation parameters from prompt or last generation if prompt is empty"
(modules/ui.py's paste button; the reading is modules/infotext_utils.py's parse_generation_parameters).

A prompt box holding a generation's parameters, as A1111 or Civitai copy them, fills the tab as PNG info's "Send
to" does; an empty prompt box reads the parameters of the tab's picked (or first) result instead, A1111's "last
generation", and with no result on show (a reloaded page) the visitor's newest one of the tab's task in History,
as A1111 reads its last generation from params.txt after a restart. One parser for all, PNG info's
(`Service.parse_parameters`); a prompt with no parameters in it is left as it is.

An image dropped onto the tab's prompt boxes puts its parameters text into the prompt box, as A1111's drop onto the
prompt does (javascript/dragdrop.js, into modules/ui_toprow.py's `prompt_img`); ↙ then reads it into the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app import infotext_keys as keys
from sd2_app.ui.pnginfo import MAX_PASTED_CHARS, NO_PARAMETERS, PNG_INFO_QUEUE, TOO_LONG, read_text_unless_unreadable
from sd2_app.ui.sending import picked_image_parameters
from sd2_app.ui.uploads import unopened_path

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.result_panel import ResultPanel
    from sd2_app.ui.visitors import Visitors

NOTHING_TO_READ = ("Paste a generation's parameters into the prompt, or generate an image first: with the prompt "
                   "empty, ↙ reads the last result's.")
IN_PROMPT = "The prompt holds generation parameters (\"Steps: …\"); use ↙ beside Stop to read them into the settings."
DROPPED = "The dropped image's parameters are in the prompt; ↙ beside Stop reads them into the settings."
NOT_PARAMETERS = ("The prompt holds no generation parameters (a last line such as \"Steps: 20, Sampler: Euler a, "
                  "Seed: 1\", or a \"Negative prompt:\" line); nothing was changed.")


def holds_parameters(parsed: dict[str, Any]) -> bool:
    """Whether a parsed text names more than a prompt: a negative prompt or settings."""
    return bool(parsed.get(keys.NEGATIVE_PROMPT)) or any(key not in (keys.PROMPT, keys.NEGATIVE_PROMPT)
                                                         for key in parsed)


def parameters_in_prompt(service: Service, request: Any) -> list[str]:
    """`IN_PROMPT` when the request's prompt ends in a settings line naming Steps and Sampler, as A1111 writes
    them (what ↙ would read: `Service.parse_parameters`, linear in the prompt's length), else nothing."""
    prompt = getattr(request, "prompt", None)
    if not isinstance(prompt, str) or "Steps" not in prompt:
        return []
    parsed = service.parse_parameters(prompt)
    return [IN_PROMPT] if keys.STEPS in parsed and keys.SAMPLER in parsed else []


def wire_read_parameters(service: Service, visitors: Visitors, panel: ResultPanel, prompt: gr.Textbox,
                         fill: Callable[[dict[str, Any]], tuple], outputs: Sequence[gr.components.Component],
                         prefix: str) -> None:
    """The tab's ↙ (`panel.read`): the parameters read from `prompt`, or when the prompt is empty from the panel's
    picked result (none on show: the visitor's newest History result of the task `prefix`; `visitors` names the
    visitor), go through `fill` into `outputs` (the tab's fill of PNG info's send)."""
    if panel.read is None:
        return

    def last_made(request: gr.Request | None) -> dict[str, Any]:
        """The parsed parameters of the visitor's newest result of this tab's task in History."""
        newest = next((entry for entry in service.history(owner=visitors.identify(request)) if entry.task == prefix),
                      None)
        if newest is None:
            raise gr.Error(NOTHING_TO_READ, print_exception=False)
        return service.parse_parameters(newest.parameters)

    def read(text: Any, gallery: Any, index: Any, request: gr.Request = None) -> tuple:  # type: ignore[assignment]
        if not isinstance(text, str) or not text.strip():
            parsed = (picked_image_parameters(service, gallery, index, NOTHING_TO_READ)[1] if gallery
                      else last_made(request))
            if not parsed:
                raise gr.Error(NO_PARAMETERS, print_exception=False)
            return fill(parsed)
        if len(text) > MAX_PASTED_CHARS:
            raise gr.Error(TOO_LONG, print_exception=False)
        parsed = service.parse_parameters(text)
        if not holds_parameters(parsed):
            gr.Info(NOT_PARAMETERS)
            return tuple(gr.skip() for _ in outputs)
        return fill(parsed)

    panel.read.click(read, [prompt, panel.gallery, panel.selected], list(outputs),
                     api_name=f"{prefix}_read_parameters", api_visibility="private")
    wire_prompt_drop(service, prompt, prefix)


def wire_prompt_drop(service: Service, prompt: gr.Textbox, prefix: str) -> None:
    """A hidden image box (`<prefix>-prompt-image`) to which the page script (static/app.js) passes an image
    dropped onto the tab's prompt boxes: its parameters text goes into `prompt` (an image without them leaves
    the prompt as it is, and says so), and the box empties for the next drop. Read as PNG info reads, in its queue."""
    dropped = unopened_path(gr.Image(type="filepath", image_mode=None, sources=["upload"], visible="hidden",
                                     show_label=False, elem_id=f"{prefix}-prompt-image"))

    def read(path: str | None) -> tuple[Any, None]:
        text = read_text_unless_unreadable(service, path) if path else None
        if text is None:
            gr.Warning(NO_PARAMETERS)
            return gr.skip(), None
        gr.Info(DROPPED)
        return text, None

    dropped.upload(read, dropped, [prompt, dropped], api_name=f"{prefix}_prompt_image", api_visibility="private",
                   show_progress="hidden", **PNG_INFO_QUEUE)
