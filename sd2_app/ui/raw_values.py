"""Widget values as a visitor sent them: the service, not Gradio's widgets, judges what reaches a Generate
endpoint (`run_events.wire_run` applies `server_checked` to every input of one)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

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
            preprocess = _quiet(component.preprocess, getattr(component, "label", None) or "a value")
        preprocess.sd2_checked = True  # type: ignore[attr-defined]
        component.preprocess = preprocess


def _quiet(original: Callable[[Any], Any], label: str) -> Callable[[Any], Any]:
    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except gr.Error as error:
            log.info("refused a request: %s: %s", label, error.message)
            raise gr.Error(error.message, print_exception=False) from None
        except Exception as error:  # noqa: BLE001  # a visitor's bad value must not become a traceback
            log.info("refused a request: %s: %s: %s", label, type(error).__name__, error)
            raise gr.Error(f"{label}: the value sent could not be read.", print_exception=False) from None

    return preprocess
