"""Helpers any tab puts under its prompt boxes: a live token counter, the embeddings list and the LoRAs list.

The counter shows A1111's "23/75" ("93/150" once a second chunk starts), computed by the service from the
same tokenizer and parser generation uses. It is fetched outside the GPU queue (`queue=False`; the service
bounds how many run at once) and only once typing pauses (`sd2_app.ui.debounce`: each keystroke's event waits
in the browser and goes to the server only if no newer keystroke came meanwhile). A change while a count is on
its way is counted when it answers (Gradio's `trigger_mode="always_last"`): with several on their way, a count
that came back late (a slow answer, the tokenizer's first read) replaced the newer one and the counter was stale.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, TYPE_CHECKING

import gradio as gr

from sd2_app.errors import InvalidRequest
from sd2_app.ui.debounce import debounce_js

if TYPE_CHECKING:
    from sd2_app.api.service import Service
    from sd2_app.loading.embeddings import EmbeddingLibrary
    from sd2_app.loading.loras import LoraLibrary
    from sd2_app.ui.layout import PromptBoxes

log = logging.getLogger(__name__)

def _count(service: Service, text: Any, checkpoint: Any, styles: Any = None, negative: bool = False) -> Any:
    """The counter's line for `text` with the picked `styles` applied (its negative texts for the negative
    prompt), as A1111's counter counts (modules/ui.py, `update_token_counter`)."""
    try:
        if styles and isinstance(text, str):
            text = service.styles.apply(text, text, styles)[1 if negative else 0]
        shown = service.count_tokens(text, checkpoint, negative=negative)
    except InvalidRequest as error:
        return str(error)
    return gr.skip() if shown is None else shown


COUNT_PLACEHOLDER = "&nbsp;"  # a blank line of the count's height, until the first count lands


def token_count_line(elem_id: str) -> gr.Markdown:
    """The counter line, blank until counted; create it right under its prompt box (layout.prompt_boxes does).
    It holds its line from the start: an empty Markdown takes no room, and the first count (14 of them on a
    page's load, two per tab) pushed what is below down by a line each, on a phone while Generate's scroll to
    the results was on its way."""
    return gr.Markdown(COUNT_PLACEHOLDER, elem_id=elem_id, elem_classes=["token-counter"], padding=False)


def wire_counter(service: Service, box: gr.Textbox, counter: gr.Markdown, checkpoint: gr.Dropdown, *,
                 api_name: str, styles: gr.Dropdown | None = None, negative: bool = False) -> None:
    """Fill `counter` from `box` on page load, as the user types and when the checkpoint (or the picked `styles`,
    where the tab has the picker; `negative`: the box is the negative prompt) changes.

    `api_name` "count_tokens" is the one public endpoint; the other counters are private twins.
    """
    inputs = [box, checkpoint] if styles is None else [box, checkpoint, styles]

    def count(text: Any, key: Any, styles: Any = None) -> Any:  # parameter names: the endpoint's
        return _count(service, text, key, styles, negative)

    gr.on(None, count, inputs, counter, queue=False,
          trigger_mode="always_last", show_progress="hidden", js=debounce_js(api_name), api_name=api_name,
          api_visibility="public" if api_name == "count_tokens" else "private")


def wire_prompt_tools(service: Service, prefix: str, boxes: PromptBoxes, checkpoint: gr.Dropdown,
                      styles: gr.Dropdown | None = None, *, loras: bool = True) -> None:
    """Everything issue 20 adds to a tab's prompts: both counters (counting the picked `styles` too, where the tab
    has the picker) and, at the current place in the layout, the embeddings list and (`loras`) the LoRAs list. Call
    it right after the checkpoint dropdown."""
    prompt_api = "count_tokens" if prefix == "txt2img" else f"{prefix}_prompt_count"
    wire_counter(service, boxes.prompt, boxes.prompt_tokens, checkpoint, api_name=prompt_api, styles=styles)
    wire_counter(service, boxes.negative, boxes.negative_tokens, checkpoint, api_name=f"{prefix}_negative_count",
                 styles=styles, negative=True)
    embeddings_picker(service, boxes.prompt, boxes.negative, prefix)
    if loras:
        loras_picker(service, boxes.prompt, prefix)


def _insert(name: str, text: str) -> str:
    """`text` with the embedding's name added after a comma (or alone in an empty box)."""
    text = text or ""
    return f"{text.rstrip()}, {name}" if text.strip() else name


def embeddings_picker(service: Service, prompt: gr.Textbox, negative: gr.Textbox, prefix: str) -> None:
    """A closed accordion listing the embeddings of the host's folder, where it has one; clicking one adds its name
    to the chosen prompt box. Files that were refused are listed with the reason, so a missing name is explained.
    Opening it lists the folder as it is now (read again when its files changed, `Service.embedding_library`)."""
    library = service.embedding_library()
    if library is None or not (library.embeddings or library.refused or _is_folder(library.folder)):
        return
    with gr.Accordion(_embeddings_title(library), open=False, elem_id=f"{prefix}-embeddings") as accordion:
        target = gr.Radio(["Prompt", "Negative prompt"], value="Prompt", label="Click a name to add it to",
                          elem_id=f"{prefix}-embeddings-target", visible=bool(library.embeddings))
        listing = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(library.names()),
                             label="Available embeddings", type="values", elem_id=f"{prefix}-embeddings-list",
                             visible=bool(library.embeddings))
        said = _notes(library.refused, bool(library.embeddings), "embedding")
        notes = gr.Markdown(said, elem_id=f"{prefix}-embeddings-refused", visible=bool(said))

    def add(sample: Any, where: str, text: str, negative_text: str) -> tuple[Any, Any]:
        name = str(sample[0]) if isinstance(sample, (list, tuple)) and sample else str(sample)
        if name not in service.embedding_names():
            return gr.skip(), gr.skip()
        if where == "Negative prompt":
            return gr.skip(), _insert(name, negative_text)
        return _insert(name, text), gr.skip()

    def shown() -> tuple[Any, ...]:
        now = service.embedding_library() or library  # the Service's folder: a library, as when this was built
        said = _notes(now.refused, bool(now.embeddings), "embedding")
        return (gr.Accordion(label=_embeddings_title(now)), gr.Radio(visible=bool(now.embeddings)),
                gr.Dataset(samples=_samples(now.names()), visible=bool(now.embeddings)),
                gr.Markdown(said, visible=bool(said)))

    listing.click(add, [listing, target, prompt, negative], [prompt, negative], queue=False,
                  api_name=f"{prefix}_add_embedding", api_visibility="private")
    accordion.expand(shown, None, [accordion, target, listing, notes], queue=False,
                     api_name=f"{prefix}_list_embeddings", api_visibility="private")


def _embeddings_title(library: EmbeddingLibrary) -> str:
    return f"Embeddings ({len(library.embeddings)})"


def _is_folder(folder: Path | None) -> bool:
    return folder is not None and folder.is_dir()


def _samples(names: list[str]) -> list[list[str]]:
    return [[name] for name in names]


def _notes(refused: dict[str, str], any_used: bool, kind: str) -> str:
    """Each refused file of a folder with the reason (each reason names its file), or, for a folder with no file
    at all, how to add some."""
    if refused:
        return "Not used:\n" + "\n".join(f"- {why}" for _, why in sorted(refused.items()))
    return "" if any_used else (f"No {kind} files in the folder yet: put them there (.safetensors) and open this "
                                "list again.")


def toggled_lora(name: str, text: str) -> str:
    """`text` with `<lora:name:1>` added after a space, or with its tags for `name` taken out when it has some
    (A1111's extra-network cards do both: javascript/extraNetworks.js, `cardClicked`)."""
    text = text or ""
    tag = re.compile(rf"\s?<(?:lora|lyco):{re.escape(name)}(?::[^>]*)?>")
    if tag.search(text):
        return tag.sub("", text).strip()
    return f"{text.rstrip()} <lora:{name}:1>" if text.strip() else f"<lora:{name}:1>"


def loras_picker(service: Service, prompt: gr.Textbox, prefix: str) -> None:
    """A closed accordion listing the LoRAs of the host's folder, where it has one; clicking one adds its tag to
    the prompt, or takes it out again. Files that were refused are listed with the reason, so a missing name is
    explained. Opening it lists the folder as it is now (its files changed: read again, `LoraTools.library`), as
    A1111's Refresh of its list does."""
    library = service.loras.library
    if not (library.files or library.refused or _is_folder(library.folder)):
        return
    with gr.Accordion(_loras_title(library), open=False, elem_id=f"{prefix}-loras") as accordion:
        listing = gr.Dataset(components=[gr.Textbox(visible=False)], samples=_samples(library.names()),
                             label="Click a LoRA to add its tag to the prompt (again: take it out); the number "
                                   "after its name is its strength", type="values", elem_id=f"{prefix}-loras-list",
                             visible=bool(library.files))
        said = _notes(library.refused, bool(library.files), "LoRA")
        notes = gr.Markdown(said, elem_id=f"{prefix}-loras-refused", visible=bool(said))

    def toggle(sample: Any, text: str) -> Any:
        name = str(sample[0]) if isinstance(sample, (list, tuple)) and sample else str(sample)
        return toggled_lora(name, text) if name in service.loras.names() else gr.skip()

    def shown() -> tuple[Any, Any, Any]:
        now = service.loras.library
        said = _notes(now.refused, bool(now.files), "LoRA")
        return (gr.Accordion(label=_loras_title(now)), gr.Dataset(samples=_samples(now.names()),
                                                                  visible=bool(now.files)),
                gr.Markdown(said, visible=bool(said)))

    listing.click(toggle, [listing, prompt], prompt, queue=False, api_name=f"{prefix}_toggle_lora",
                  api_visibility="private")
    accordion.expand(shown, None, [accordion, listing, notes], queue=False, api_name=f"{prefix}_list_loras",
                     api_visibility="private")


def _loras_title(library: LoraLibrary) -> str:
    return f"LoRAs ({len(library.files)})"

