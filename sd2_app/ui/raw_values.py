"""Widget values as a visitor sent them: the service, not Gradio's widgets, judges what reaches a Generate
endpoint (`run_events.wire_run` applies `server_checked` to every input of one); every other event answers a value
it cannot use with a message, not HTTP 500 (`guard_quick_events`, applied by `AppBlocks.launch` to the whole app)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from sd2_app.errors import shown

log = logging.getLogger(__name__)

RAW_VALUE_COMPONENTS = (gr.Number, gr.Slider, gr.Textbox, gr.Checkbox)


def server_checked(components: Sequence[gr.components.Component]) -> None:
    """Let the service, not the widgets, judge every value a visitor sends to a Generate endpoint.

    Gradio's Number rounds to its precision, Slider compares against its range and Textbox calls str() on
    whatever arrives, so through the API a seed of 1.5 became 2 and a prompt of 123 became "123". Their
    values now reach `validate` as sent. Any other input's refusal (a Dropdown's "not in the list of
    choices", an unreadable upload) is logged as one line, without a traceback.
    """
    for component in components:
        if getattr(component.preprocess, "sd2_checked", False):
            continue
        if isinstance(component, RAW_VALUE_COMPONENTS):
            def preprocess(payload: Any) -> Any:
                return payload
        else:
            preprocess = _quiet(component)
        preprocess.sd2_checked = True  # type: ignore[attr-defined]
        component.preprocess = preprocess


def guard_quick_events(blocks: gr.Blocks) -> None:
    """Every event of `blocks` but the Generate runs (whose inputs `server_checked` already takes as sent) refuses
    a value one of its components cannot read in words that name the component (`_quiet`): Gradio's Dropdown
    answered with its whole message, the value sent repeated in full and every choice. (Raw /gradio_api/run/<name>
    and /gradio_api/call/<name> reach private events too: gradio/route_utils.py `get_fn`.) What fails past the
    components answers through `refusal` (`lifecycle.AppBlocks.process_api`)."""
    for fn in blocks.fns.values():
        if not quick_event(fn):
            continue
        for component in fn.inputs:
            # An image editor keeps its own guard (uploads.guard_editor, editor_blobs): wrapped again, the inpaint
            # editor's refusal of an oversized upload left the page inert under the toast.
            if not (getattr(component.preprocess, "sd2_checked", False) or isinstance(component, gr.ImageEditor)):
                component.preprocess = _quiet(component)
                component.preprocess.sd2_checked = True  # type: ignore[attr-defined]


def quick_event(fn: Any) -> bool:
    """Whether a Gradio event (a BlockFunction) is one with a plain function: not a Generate run (a generator,
    with its own refusals, `run_stream.refuse`), nor a page-only script."""
    function = fn.fn
    return function is not None and not (inspect.isgeneratorfunction(function)
                                         or inspect.isasyncgenfunction(function))


def refusal(fn: Any, error: Exception) -> gr.Error:
    """The answer to a quick event whose values Gradio could not read (a file or gallery of the wrong shape, event
    data missing) or its function could not use: Gradio answered HTTP 500 with `{"error": null}`. Logged in one
    line, without the traceback."""
    name = fn.api_name or "this event"
    log.info("refused a request: %s: %s: %s", name, type(error).__name__, shown(str(error)))
    return gr.Error(f"The values sent to {name} could not be used: send what the page sends (/gradio_api/info "
                    "lists the app's public endpoints).", print_exception=False)


def _quiet(component: gr.components.Component) -> Callable[[Any], Any]:
    """`component`'s preprocess, whose refusal of a value is logged in one line and answered in words that name
    the component (its label, else its elem_id) and repeat at most a little of the value (`errors.shown`)."""
    original = component.preprocess
    label = getattr(component, "label", None) or component.elem_id or "a value"

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except gr.Error as error:
            log.info("refused a request: %s: %s", label, shown(error.message))
            if isinstance(component, gr.Dropdown):  # its message repeats the whole value and every choice
                message = f"{label}: {shown(payload)} is not one of the choices."
            else:
                message = error.message
            raise gr.Error(message, print_exception=False) from None
        except Exception as error:  # noqa: BLE001  # a visitor's bad value must not become a traceback
            log.info("refused a request: %s: %s: %s", label, type(error).__name__, shown(str(error)))
            raise gr.Error(f"{label}: the value sent could not be read.", print_exception=False) from None

    return preprocess
