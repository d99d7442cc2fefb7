"""A tab's width and height controls show the size a run makes of what was typed in them.

A side typed off the multiples of 8 (100) runs rounded (104, `task_checks.image_side`, the service's one rule); the
control kept showing 100. Now, as A1111's sliders snap to their step of 8, the control shows the rounded side when
the visitor leaves it (a Number's `blur`; a Slider's `release`, which its number box sends on blur) and again after
each run, so what the visitor sees is what ran. A side the run would refuse (not a whole number, out of range) or
an empty box (Image to image: the image's own side) is left as it is, for the run to say why or to use the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, TYPE_CHECKING

import gradio as gr
from gradio.events import Dependency

from sd2_app.api.task_checks import image_side
from sd2_app.errors import InvalidRequest

if TYPE_CHECKING:
    from sd2_app.api.checks import Limits


def side_used(limits: Limits, value: Any) -> Any:
    """The side a run makes of `value`, or `value` itself where the run refuses it. (Not gr.skip(): an update makes
    Gradio keep a new copy of the control for the session, gradio/state_holder.py `SessionState.__setitem__`,
    without the preprocess `raw_values.server_checked` gave it, and Generate then met Gradio's own range check.)"""
    try:
        return image_side(value, "Width", limits, [])
    except InvalidRequest:
        return value


def show_sides_used(limits: Limits, boxes: Sequence[gr.Number | gr.Slider], run: Dependency) -> None:
    """Each of `boxes` shows the side used when the visitor leaves it and after each `run` (a Generate event)."""
    for box in boxes:
        left = box.blur if isinstance(box, gr.Number) else box.release
        left(partial(side_used, limits), box, box, api_name=f"{_named(box)}_used", api_visibility="private",
             queue=False, show_progress="hidden")

    def sides_used(*values: Any) -> tuple:
        return tuple(side_used(limits, value) for value in values)

    run.then(sides_used, list(boxes), list(boxes), api_name=f"{_named(boxes[0])}_sizes_used",
             api_visibility="private", queue=False, show_progress="hidden")


def _named(box: gr.Number | gr.Slider) -> str:
    return str(box.elem_id).replace("-", "_")  # "txt2img-width" -> "txt2img_width"
