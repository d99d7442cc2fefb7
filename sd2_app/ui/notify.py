"""The page's "Notify me when a run ends" switch: A1111 tells a visitor on another browser tab that images are
ready with a browser notification (its javascript/notification.js, once the visitor allowed notifications with
Settings' "Request browser notifications"). Here the switch beside the page's title asks the browser for that
permission when turned on; the page script (static/app.js) then shows a notification when a run of any tab ends
while the page is not in front, and remembers the switch in the browser (localStorage), so it stays on after a
reload. Nothing of it reaches the server.
"""

from __future__ import annotations

import gradio as gr

NOTIFY_ID = "notify-when-done"  # the switch's checkbox; its note (why it cannot be on) is `<NOTIFY_ID>-note`
NOTIFY_LABEL = "Notify me when a run ends"
NOTIFY_HINT = "A browser notification when a run ends while this page is in the background"


def notify_switch() -> gr.HTML:
    """The switch: a plain checkbox the page script reads (`js_on_load` off: it sends no event to the server)."""
    return gr.HTML(f'<label class="notify-switch" title="{NOTIFY_HINT}"><input type="checkbox" id="{NOTIFY_ID}"> '
                   f'{NOTIFY_LABEL}</label><div id="{NOTIFY_ID}-note" class="notify-note" role="status"></div>',
                   js_on_load=None, elem_id="notify", min_width=0, scale=0)
