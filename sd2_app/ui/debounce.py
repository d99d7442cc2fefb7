"""Quick events that only show what some widgets now hold (a token counter, a group's label, a size line): one
call once the widgets stop changing, not one per change.

Gradio's page starts an event for each change of each of its widgets, and a send or paste that sets several at
once changes them one after another, each start reading the values set so far. Several calls are then on their
way together, with the earlier ones carrying values already replaced, and whichever answer lands last is what
stays: on a loaded server an older answer landed last and the label stayed stale (the hires fix's "512x512 →
1024x1024" after a paste of "Hires upscale: 1.5"). With `debounce_js` as the event's `js`, each start waits
`DEBOUNCE_MS` in the browser and goes to the server only if no newer start of the same event came meanwhile
(rejecting its promise sends nothing), so the one call made carries the values the widgets settled on.
"""

from __future__ import annotations

DEBOUNCE_MS = 300


def debounce_js(key: str, ms: int = DEBOUNCE_MS) -> str:
    """An event's `js`: pass its values on after `ms`, or drop the call when a newer start of the event `key`
    (unique per event on the page: its api_name) came meanwhile."""
    return (
        "(...values) => { const seen = window.sd2Debounced = window.sd2Debounced || {}; "
        f"const mine = seen['{key}'] = (seen['{key}'] || 0) + 1; "
        "return new Promise((send, drop) => setTimeout(() => "
        f"mine === seen['{key}'] ? send(values) : drop('superseded'), {ms})); }}"
    )
