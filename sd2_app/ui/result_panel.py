"""The result panel of a generation tab: the gallery (whole images, the grid sized to the batch), the info line
under it (`describe`: seeds, timings, warnings, and the picked image's parameters text, `with_parameters`), "send
to" buttons, the live preview and the tab's extra output; `selected_image` is the gallery item a "send to"
carries, `seed_of` its seed.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import gradio as gr
from PIL import Image

from sd2_app.api.timing import summary
from sd2_app.pipelines.metadata import read_png_parameters
from sd2_app.ui.cache_files import shown_again

if TYPE_CHECKING:
    from sd2_app.api.service import Result


@dataclass
class ResultPanel:
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Markdown
    extra: gr.components.Component | None  # an image; the X/Y/Z plot's tables (a File)
    last_seeds: gr.State  # each image's seed of the tab's last result (`Result.image_seeds`); None before one
    selected: gr.State
    send_buttons: dict[str, gr.Button]
    run: gr.Button
    stop: gr.Button
    read: gr.Button | None = None  # the tab's ↙ (ui/read_parameters.py): it reads the picked result's parameters
    skip: gr.Button | None = None  # the tab's Skip (A1111's): the running batch ends, the next one starts
    zip_button: gr.Button | None = None  # Zip (A1111's): blocks.py wires it (ui/zip_results.py)


SEEDS_NAMED = 4  # a result's seeds the info line names, where they do not count up (`seed_span`)
ZIP = "zip"  # the send row's Zip button (ui/zip_results.py), not a tab to send to
GALLERY_HEIGHT = 440  # px: with the prompt row above, the whole result fits a 900 px high window
# Every tab a "Send to" button can send to, with the button's words, in the order of the buttons. One row of them
# after a "Send to" label keeps each button to a tab's name, as A1111's result buttons are short ones.
SEND_TARGETS = {"txt2img": "Text to image", "img2img": "Image to image", "inpaint": "Inpaint",
                "outpaint": "Outpaint", "upscale": "Upscale ×4", "depth": "Depth"}
IMAGE_TARGETS = ("img2img", "inpaint", "outpaint", "upscale", "depth")  # the tabs that take the image sent


def gallery_columns(count: int) -> int:
    """Columns for `count` results: one image fills the box, a batch makes a near-square grid."""
    return max(1, math.ceil(math.sqrt(count)))


def _picked(gallery: Any, info: Any, event: gr.SelectData) -> tuple[int, Any]:
    """The picked image's index, and the info under the gallery showing that image's parameters text, as A1111
    shows the picked image's (each image of a batch has its own seed); the info is kept where the file has none."""
    index = int(event.index)
    if not isinstance(gallery, list) or not 0 <= index < len(gallery) or not isinstance(info, str):
        return index, gr.skip()
    image = _item_image(gallery, index)
    text = read_png_parameters(image) if isinstance(image, (str, Image.Image)) else None
    return index, gr.skip() if not text else with_parameters(info, text)


def _item_image(gallery: list[Any], index: int) -> Any:
    """The image of gallery item `index`: items are (image, caption) pairs or bare images, each a file path (the
    panels' galleries decode nothing ahead) or a PIL image."""
    item = gallery[index]
    return item[0] if isinstance(item, (tuple, list)) else item


def result_panel(
    prefix: str,
    run: gr.Button,
    stop: gr.Button,
    *,
    extra_label: str | None = None,
    send_to: Sequence[str] = (),
    read: gr.Button | None = None,
    skip: gr.Button | None = None,
) -> ResultPanel:
    """PNG gallery (parameters embedded, downloadable; whole images, the grid sized to the batch), info text,
    "send to" buttons, the live preview and the tab's extra image."""
    gallery = gr.Gallery(label="Results", format="png", columns=1, height=GALLERY_HEIGHT, object_fit="contain",
                         type="filepath", interactive=False, buttons=["download", "fullscreen"],
                         elem_id=f"{prefix}-gallery")
    info = gr.Markdown(elem_id=f"{prefix}-info", elem_classes=["result-info"])
    buttons = send_row(prefix, send_to, zip_button=True)
    zip_button = buttons.pop(ZIP)
    with gr.Row(equal_height=False):
        preview = gr.Image(label="Live preview", type="pil", interactive=False, height=160, format="png",
                           elem_id=f"{prefix}-preview")
        extra = None
        if extra_label:
            extra = gr.Image(label=extra_label, type="pil", interactive=False, format="png", height=160,
                             elem_id=f"{prefix}-extra")
    selected = gr.State(0)
    gallery.select(_picked, [gallery, info], [selected, info], api_name=f"{prefix}_select", api_visibility="private",
                   queue=False)
    return ResultPanel(preview, gallery, info, extra, gr.State(None), selected, buttons, run, stop, read, skip,
                       zip_button)


def send_row(prefix: str, targets: Sequence[str], *, zip_button: bool = False) -> dict[str, gr.Button]:
    """"Send to" and a small button per target tab (keys of `SEND_TARGETS`), then with `zip_button` "Zip" (key
    `ZIP`), wrapping as whole buttons on a phone (static/app.css, `.send-row`); none without targets. Ids:
    `<prefix>-send-<target>`, `<prefix>-zip`."""
    if not targets:
        return {}
    with gr.Row(elem_classes=["send-row"], elem_id=f"{prefix}-send-row"):
        gr.HTML("Send to", elem_classes=["send-label"], scale=0, min_width=0)
        buttons = {target: gr.Button(SEND_TARGETS[target], size="sm", scale=0, min_width=0,
                                     elem_id=f"{prefix}-send-{target}") for target in targets}
        if zip_button:  # A1111's Zip, last in the row: all the gallery's images in one file (ui/zip_results.py)
            buttons[ZIP] = gr.Button("Zip", size="sm", scale=0, min_width=0, elem_id=f"{prefix}-zip",
                                     elem_classes=["zip-button"])
        return buttons


def warning_text(warning: str) -> str:
    """A warning as the info line and the toast show it: `<`, `>` and `&` as HTML entities, so the prompt text a
    warning quotes (`<lora:name:0.8>`) is shown, not read as a tag or a link by the Markdown and HTML renderers."""
    return html.escape(warning, quote=False)


def describe(result: Result) -> str:
    """Markdown under the gallery: seed, timings, warnings and the parameters text."""
    seconds = summary(result.timings)
    seeds = result.image_seeds
    lines = [f"**Seed{'s' if len(set(seeds)) > 1 else ''}** {seed_span(seeds)} · {seconds}"]
    lines += [f"- ⚠️ {warning_text(w)}" for w in result.warnings]
    return "\n".join(lines) + parameters_block(result.parameters)


def parameters_block(text: str) -> str:
    """The info's parameters text as a fenced block after an empty line ("" for none); the fence is longer than
    any backtick run in the text, so a prompt with ``` cannot close it early."""
    if not text:
        return ""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"\n\n{fence}text\n{text}\n{fence}"


def with_parameters(info: str, text: str) -> str:
    """`info` (`describe`'s) with its parameters block replaced by `text`'s: the seed line and warnings stay."""
    head = re.split(r"\n\n`{3,}text\n", info, maxsplit=1)[0]
    return head + parameters_block(text)


def seed_span(seeds: Sequence[int]) -> str:
    """A result's seeds in words, each once: "40" for one (or the same for all: a variation seed's batch, a plot's
    grid and its cells), "40–43" for seeds that count up (a batch: api/requests.py, `numbered_seeds`), else the
    seeds themselves ("7, 912, 35", a plot's cells of a Seed axis or kept random seeds; past `SEEDS_NAMED`, how
    many more)."""
    distinct = list(dict.fromkeys(seeds))
    if len(distinct) == 1:
        return str(distinct[0])
    if distinct == list(range(distinct[0], distinct[0] + len(distinct))):
        return f"{distinct[0]}–{distinct[-1]}"
    named = ", ".join(str(seed) for seed in distinct[:SEEDS_NAMED])
    return named if len(distinct) <= SEEDS_NAMED else f"{named} and {len(distinct) - SEEDS_NAMED} more"


def seed_of(seeds: Any, index: Any) -> int | None:
    """The seed of the picked image of a result with `seeds` (the `last_seeds` state), the first where no image
    is picked (A1111's reuse of a seed, modules/ui.py `connect_reuse_seed`, the same); None before a result."""
    if not seeds:
        return None
    return seeds[index] if isinstance(index, int) and 0 <= index < len(seeds) else seeds[0]


def too_large_to_send(limit: int) -> str:
    """What a "send to" of a gallery image over PIL's pixel limit (twice `Image.MAX_IMAGE_PIXELS`) says."""
    return (f"This image is too large to send on (over {limit:,} pixels, as a big X/Y/Z grid can be); pick one of "
            "its cells instead.")


def box_value(image: Image.Image) -> Image.Image | str:
    """What a send puts in an image box: the gallery's own file (a PNG in Gradio's cache) where the picked `image`
    was opened from one, its cache age started anew (`cache_files.shown_again`); else `image`.
    Given a PIL image, Gradio encodes it again and writes it to a file named by its bytes, rewriting that file at
    each send of the same image (gradio/processing_utils.py, `save_pil_to_cache`): a page still fetching it for an
    earlier send got it cut short (uvicorn: "Response content shorter than Content-Length")."""
    path = getattr(image, "filename", "")
    if not path:
        return image
    try:
        shown_again(path)
    except FileNotFoundError:
        raise gr.Error("That image is no longer on the server: generate it again.", print_exception=False) from None
    return path


NOTHING_TO_SEND = "Generate an image first."
STILL_RUNNING = "This tab is still making its images; send one when the run has finished."


def selected_image(gallery: Any, index: Any, running: bool = False) -> Image.Image:
    """The picked gallery item as a PIL image; gallery values are (image, caption) pairs, the image a file path
    (the panels' galleries decode nothing ahead: a grid over PIL's pixel limit failed every event that took the
    gallery) or a PIL image. A file PIL refuses to open is said in words. An empty gallery is said as the tab's
    state is: `running` (Generate emptied the gallery and the run is on) or nothing generated yet."""
    if not gallery:
        raise gr.Error(STILL_RUNNING if running else NOTHING_TO_SEND, print_exception=False)
    image = _item_image(gallery, index if isinstance(index, int) and 0 <= index < len(gallery) else 0)
    if isinstance(image, str):
        try:
            image = Image.open(image)
        except Image.DecompressionBombError as error:
            raise gr.Error(too_large_to_send(2 * (Image.MAX_IMAGE_PIXELS or 0)), print_exception=False) from error
    return image
