"""Which widgets an event's progress shows on: never a layout block or an image editor.

Gradio 6.31's page keeps a loading status for every widget an event has ever shown progress on, and at each
status message of any event (pending, each preview, complete) it updates all of them (js/core/src/
dependency.ts, `update_loading_stati_state`). Each update of a widget that carries no new value reads the widget's
value again, and that of every widget inside it (js/core/src/init.svelte.ts, `update_state`). A layout block (a
send's Tabs, an accordion whose label an event sets) thus makes every later event read every widget in it, and
an image editor's read uploads its background and composite anew (js/imageeditor, the editor's `get_data`).
After one "Send to inpaint", every event of the page, a token count as well as each preview of a run, uploaded
the editor's image twice, spending the visitor's upload budget (`sd2_app.ui.upload_budget`).

`keep_progress_on_leaves` gives each event that outputs such a widget an explicit progress list
(`show_progress_on`): its other outputs, or none. Their values still reach the page as before.
"""

from __future__ import annotations

from typing import TypeVar

import gradio as gr
from gradio.blocks import BlockContext

BlocksT = TypeVar("BlocksT", bound=gr.Blocks)


def reread_when_shown(block: object) -> bool:
    """Whether Gradio's page reads `block`'s value again (and its children's) each time a progress shown on it
    changes: a layout block, or an image editor, whose read uploads its images."""
    return isinstance(block, (BlockContext, gr.ImageEditor))


def keep_progress_on_leaves(blocks: BlocksT) -> BlocksT:
    """`blocks`, with `show_progress_on` of every event that outputs a block `reread_when_shown` says so of, and
    has no list of its own, set to its other outputs (possibly none)."""
    for fn in blocks.fns.values():
        if fn.show_progress_on is None and any(reread_when_shown(block) for block in fn.outputs):
            fn.show_progress_on = [block for block in fn.outputs if not reread_when_shown(block)]
    return blocks
