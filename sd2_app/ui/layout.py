"""The shape every generation tab shares, as in A1111: the prompts with Generate and Stop beside them on top,
then the tab's settings on the left and its results on the right.

    top = prompt_row("txt2img", "a cat")
    with gr.Row(equal_height=False):
        with settings_column("txt2img"):
            ...inputs and options of the tab (per-tab extras go at the end of this column)...
        with results_column("txt2img"):
            panel = result_panel("txt2img", top.run, top.stop, ...)

The results column is sticky (static/app.css), so progress and results stay in view while the settings
column scrolls. Element ids: `<prefix>-prompt`, `-negative`, `-run`, `-stop`, `-run-status` (the line under
the run buttons that repeats the run's state from `-info`), `-settings`, `-results`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import gradio as gr

from sd2_app.ui.prompt_tools import token_count_line

GENERATE = "Generate"
RUNNING = "Running…"
READ_PARAMETERS = "↙"  # A1111's paste button (modules/ui.py, paste_symbol); static/app.js gives it its tooltip


@dataclass
class PromptBoxes:
    """The two prompt boxes, each with its token counter line right under it (see ui/prompt_tools.py)."""

    prompt: gr.Textbox
    negative: gr.Textbox
    prompt_tokens: gr.Markdown
    negative_tokens: gr.Markdown


@dataclass
class PromptRow:
    prompt: gr.Textbox
    negative: gr.Textbox
    run: gr.Button
    stop: gr.Button
    boxes: PromptBoxes
    status: gr.HTML  # under the run buttons: the run's state where the visitor pressed Generate or Stop
    styles: gr.Dropdown | None = None  # the host's prompt styles to apply (A1111's "Styles"); None: the host has none
    read: gr.Button | None = None  # ↙ beside Stop: read generation parameters (ui/read_parameters.py); None: none
    skip: gr.Button | None = None  # A1111's Skip, shown while a run is on (static/app.css); None: the tab has none


def prompt_boxes(prefix: str, value: str = "") -> PromptBoxes:
    """Prompt and negative prompt; Ctrl+Enter (Cmd+Enter) in either presses the tab's Generate, Esc its Stop
    (static/app.js).
    The counters stay empty until the tab calls `prompt_tools.wire_prompt_tools`."""
    prompt = gr.Textbox(value, label="Prompt", lines=2, max_lines=8,
                        placeholder="What to draw (Ctrl+Enter generates, Esc stops)",
                        elem_id=f"{prefix}-prompt", elem_classes=["prompt-box"])
    prompt_tokens = token_count_line(f"{prefix}-prompt-tokens")
    negative = gr.Textbox("", label="Negative prompt", lines=1, max_lines=6, placeholder="What to avoid",
                          elem_id=f"{prefix}-negative", elem_classes=["prompt-box"])
    negative_tokens = token_count_line(f"{prefix}-negative-tokens")
    return PromptBoxes(prompt, negative, prompt_tokens, negative_tokens)


def run_buttons(prefix: str) -> tuple[gr.Button, gr.Button]:
    """Generate, and Stop (enabled only while a run of this tab is queued or running)."""
    run = gr.Button(GENERATE, variant="primary", size="lg", elem_id=f"{prefix}-run", elem_classes=["run-button"])
    stop = gr.Button("Stop", variant="stop", interactive=False, elem_id=f"{prefix}-stop", elem_classes=["stop-button"])
    return run, stop


def prompt_row(prefix: str, value: str = "", styles: Sequence[str] = (), *, read: bool = False,
               skip: bool = False) -> PromptRow:
    """The row at the top of a generation tab: prompts (wide) and the run buttons (narrow, beside them), with
    `skip`, A1111's Skip beside Stop while a run is on, and `read`, A1111's ↙ after them (static/app.css), and
    under them, where the host has prompt styles (`styles`, their names), the Styles picker, as in A1111."""
    with gr.Row(equal_height=False, elem_classes=["prompt-row"]):
        with gr.Column(scale=8, min_width=300):
            boxes = prompt_boxes(prefix, value)
        with gr.Column(scale=2, min_width=160, elem_classes=["run-column"]):
            run, stop = run_buttons(prefix)
            skipper = None
            if skip:
                skipper = gr.Button("Skip", size="lg", elem_id=f"{prefix}-skip", elem_classes=["skip-button"])
            reader = None
            if read:
                reader = gr.Button(READ_PARAMETERS, size="lg", elem_id=f"{prefix}-read-parameters",
                                   elem_classes=["read-parameters"])
            # Filled by the page script (static/app.js) from the info line under the results, which is below
            # the fold of a laptop screen: while a run is queued or running, after Stop, or why it was refused.
            status = gr.HTML('<p class="run-status-text" aria-live="polite"></p>', elem_id=f"{prefix}-run-status",
                             elem_classes=["run-status"], padding=False)
            picker = None
            if styles:
                picker = gr.Dropdown(list(styles), value=[], multiselect=True, label="Styles",
                                     info="added to the prompts in this order", elem_id=f"{prefix}-styles")
    return PromptRow(boxes.prompt, boxes.negative, run, stop, boxes, status, picker, reader, skipper)


@contextmanager
def settings_column(prefix: str) -> Iterator[gr.Column]:
    """The left column: the tab's inputs and options."""
    with gr.Column(scale=5, min_width=320, elem_id=f"{prefix}-settings", elem_classes=["settings-column"]) as column:
        yield column


@contextmanager
def results_column(prefix: str) -> Iterator[gr.Column]:
    """The right column: progress, results, parameters and "send to" (sticky on wide screens)."""
    with gr.Column(scale=6, min_width=320, elem_id=f"{prefix}-results", elem_classes=["results-column"]) as column:
        yield column


SWAP_SIZE = "⇅"  # A1111's "Switch width/height" button (modules/ui.py, `res_switch_btn`)


def swap_size_button(prefix: str, width: gr.components.Component, height: gr.components.Component) -> gr.Button:
    """A1111's ⇅ beside width and height: swaps their values in the page (no server call); made in the caller's
    row."""
    swap = gr.Button(SWAP_SIZE, size="sm", scale=0, min_width=40, elem_id=f"{prefix}-swap-size",
                     elem_classes=["swap-size"])
    swap.click(None, [width, height], [width, height], js="(width, height) => [height, width]",
               api_name=f"{prefix}_swap_size", api_visibility="private", queue=False)
    return swap
