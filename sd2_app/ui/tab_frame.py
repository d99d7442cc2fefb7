"""The frame every generation tab shares (the shape of `layout.py`) and the parts each tab puts into it:

    frame = TabFrame(service, "img2img")
    with frame.columns(send_to=SEND_TO):  # the settings column around the block, then the results column
        image = upload_image(...)
        checkpoint = frame.checkpoint()  # the task's checkpoints; the prompts' token counters follow the pick
        ...the tab's own options...
        controls = frame.sampling(examples, image)  # sampler settings, seed row, batch; then the tab's examples
    panel = frame.panel  # the result panel, its seed buttons wired to the sampling controls

Gradio lays components out in the order they are made, so each part is made where the tab calls for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.api.checks import MIN_SIDE
from sd2_app.api.tasks import TASKS

from sd2_app.ui.result_panel import ResultPanel, result_panel
from sd2_app.ui.sampling_controls import SamplingControls, checkpoint_dropdown, sampling_controls, wire_seed_buttons
from sd2_app.ui.layout import prompt_row, results_column, settings_column, swap_size_button
from sd2_app.ui.prompt_tools import wire_prompt_tools

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.ui.sent_size import SizeBoxes


@dataclass
class ImageTab:
    """What a tab with an input image hands to blocks.py ("send to" into it and out of it)."""

    image: gr.Image
    prompt: gr.Textbox
    negative: gr.Textbox
    sampling: SamplingControls
    panel: ResultPanel
    styles: gr.Dropdown | None = None  # the Styles picker; None where the host has no styles
    tiling: gr.Checkbox | None = None  # the Tiling checkbox, where the tab has one
    size: SizeBoxes | None = None  # width and height that a send sets (Image to image)


class TabFrame:
    """One generation tab under construction: its prompt row is made first, in the constructor."""

    def __init__(self, service: Service, prefix: str, prompt: str = "", *, styled: bool = True,
                 read: bool = True) -> None:
        """`styled`: the tab offers the host's prompt styles (its Generate applies them: `wire_run(styles=...)`);
        `read`: it has A1111's ↙ beside Stop (blocks.py wires it: `read_parameters.wire_read_parameters`). Every
        tab has A1111's Skip for its batch count or its plot's cells (`run_events.wire_run` wires it)."""
        self.service = service
        self.prefix = prefix
        self.top = prompt_row(prefix, prompt, service.styles.names if styled else (), read=read, skip=True)
        self._sampling: tuple[SamplingControls, gr.Button, gr.Button] | None = None
        self._panel: ResultPanel | None = None

    @property
    def prompt(self) -> gr.Textbox:
        return self.top.prompt

    @property
    def negative(self) -> gr.Textbox:
        return self.top.negative

    @property
    def styles(self) -> gr.Dropdown | None:
        """The Styles picker; None where the host has no styles."""
        return self.top.styles

    @property
    def panel(self) -> ResultPanel:
        """The result panel, made when `columns` ends."""
        if self._panel is None:
            raise RuntimeError(f"{self.prefix}: the result panel is made when `columns` ends")
        return self._panel

    def checkpoint(self, task: str | None = None, **kwargs: Any) -> gr.Dropdown:
        """The checkpoints that can run `task` (default: the tab's own), with the prompts' token counters and
        embeddings picker wired to it."""
        checkpoint = checkpoint_dropdown(self.service, task or self.prefix, **kwargs)
        self.prompt_tools(checkpoint)
        return checkpoint

    def prompt_tools(self, checkpoint: gr.Dropdown) -> None:
        """The prompts' token counters, following `checkpoint`, and the embeddings and LoRAs pickers, made here."""
        wire_prompt_tools(self.service, self.prefix, self.top.boxes, checkpoint, self.top.styles,
                          loras=TASKS[self.prefix].lists_loras if self.prefix in TASKS else True)

    def size_sliders(self, checkpoint: gr.Dropdown) -> tuple[gr.Slider, gr.Slider]:
        """Width and height sliders, set to the checkpoint's native resolution, and set again to the resolution of
        each checkpoint the visitor picks (`input` only: PNG info's send and History's reuse set the checkpoint
        together with the size the image was made at, which a `change` event would reset to the square)."""
        side = self.service.resolution(checkpoint.value)
        largest = self.service.limits.max_side
        with gr.Row():
            width = gr.Slider(MIN_SIDE, largest, side, step=8, label="Width", elem_id=f"{self.prefix}-width")
            height = gr.Slider(MIN_SIDE, largest, side, step=8, label="Height", elem_id=f"{self.prefix}-height")
            swap_size_button(self.prefix, width, height)

        def native_size(key: str) -> tuple[int, int]:
            native = self.service.resolution(key)
            return native, native

        checkpoint.input(native_size, checkpoint, [width, height], api_name=f"{self.prefix}_native_size",
                         api_visibility="private", queue=False)
        return width, height

    def sampling(self, examples: Sequence[list[str]] = (), image: gr.components.Component | None = None, *,
                 batch: bool = True, task: str | None = None, eta: bool = True) -> SamplingControls:
        """The sampling controls (`sampling_controls.sampling_controls`), then the tab's examples of (image,
        prompt)."""
        self._sampling = sampling_controls(self.service, self.prefix, batch=batch, task=task, eta=eta)
        self.examples(examples, image)
        return self._sampling[0]

    def examples(self, examples: Sequence[list[str]], image: gr.components.Component | None) -> None:
        """The tab's example rows of (image, prompt), when it has any."""
        if examples:
            gr.Examples(list(examples), [image, self.prompt], label="Examples")

    @contextmanager
    def columns(self, *, extra_label: str | None = None, send_to: Sequence[str] = (),
                extra: Callable[[], gr.components.Component] | None = None) -> Iterator[None]:
        """The settings column around the with-block, then the results column with the result panel (`extra`,
        when given, makes the panel's extra output there instead of an image); then the seed buttons are wired."""
        with gr.Row(equal_height=False):
            with settings_column(self.prefix):
                yield
            with results_column(self.prefix):
                self._panel = result_panel(self.prefix, self.top.run, self.top.stop, extra_label=extra_label,
                                           send_to=send_to, read=self.top.read, skip=self.top.skip)
                if extra is not None:
                    self._panel.extra = extra()
        if self._sampling is not None:
            controls, randomize, reuse = self._sampling
            wire_seed_buttons(randomize, reuse, controls.seed, self._panel.last_seeds, self._panel.selected,
                              self.prefix)
