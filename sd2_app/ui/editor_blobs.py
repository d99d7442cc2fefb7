"""The inpaint editor's pending image parts, bounded: in count of layers, in bytes and in age.

The browser sends an ImageEditor's background, painted layers and composite to the editor before the job
(POST /gradio_api/component_server, `fn_name` "accept_blobs"; gradio/components/image_editor.py,
`ImageEditor.accept_blobs`), under an id of its choosing, and the job then names that id. Gradio keeps the parts
in memory in a dict on the component that every visitor shares (`blob_storage`), removes an id's parts only
when a job uses them, and grows a layer list to whatever index a request names. So one request naming layer
10**9 would allocate gigabytes, and a stream of requests under new ids would hold their bytes for good.

`guard_blobs` makes an editor refuse a part that is not the background, the composite or one of its first
`MAX_LAYERS_SENT` layers (422, in words: more than the job accepts, so that a person who painted a few layers
too many reads the job's own refusal, `sd2_app.ui.uploads.guard_editor`), or whose id is longer than the
browser's (`MAX_PART_ID_CHARS`), or that would make its id's parts count more than `max_bytes` (413: the store
keeps the newest id whole, so one id would otherwise hold 66 parts of the upload size). It keeps the parts in
`PendingBlobs`: parts older than `max_age_s` go, and over `max_bytes` in all or `max_ids` ids the oldest ids
go first. Each id counts its parts' bytes and at least `ENTRY_OVERHEAD_BYTES` (the entry itself), so a flood
of empty parts under new ids is bounded too; the total is kept as parts are stored, so a store costs the same
however many ids wait. Under a flood, a visitor's parts may be gone when their job arrives; the job then has
no image and says so, and the server keeps its memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr
from fastapi import HTTPException

from sd2_app.byte_limits import MB

MAX_PENDING_BYTES = 256 * MB  # the parts of some edits of 2048x2048 images, sent and waiting for their jobs
MAX_PENDING_IDS = 4096  # ids waiting for their jobs: far more edits than a queue of jobs holds at once
ENTRY_OVERHEAD_BYTES = 1024  # what an id's entry holds besides its parts (Gradio's EditorDataBlobs, the keys)
MAX_PENDING_AGE_S = 600.0  # a job follows its parts within seconds
MAX_PART_ID_CHARS = 64  # the browser names an edit with Math.random().toString(36), about 11 characters
PART_KINDS = ("background", "layer", "composite")
MAX_LAYERS_SENT = 64  # layers 0 to 63 may be sent; a job takes at most `uploads.MAX_EDITOR_LAYERS` of them
LAYER_NUMBERS = frozenset(str(index) for index in range(MAX_LAYERS_SENT))  # as the browser writes them: "0", "1"

EditorT = TypeVar("EditorT", bound=gr.ImageEditor)


def _part_bytes(parts: Any) -> int:
    """The bytes of one id's parts (gradio's EditorDataBlobs: background, layers, composite)."""
    blobs = [getattr(parts, "background", None), getattr(parts, "composite", None), *getattr(parts, "layers", [])]
    return sum(len(blob) for blob in blobs if isinstance(blob, (bytes, bytearray)))


class PendingBlobs(dict):  # type: ignore[type-arg]  # ImageEditor.blob_storage: id -> EditorDataBlobs
    """A dict of the parts waiting for their jobs, trimmed on every store (module docstring)."""

    def __init__(self, max_bytes: int = MAX_PENDING_BYTES, max_age_s: float = MAX_PENDING_AGE_S,
                 max_ids: int = MAX_PENDING_IDS, entry_overhead: int = ENTRY_OVERHEAD_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_ids = max_ids
        self.entry_overhead = entry_overhead
        self._clock = clock
        # id -> (when its parts were last stored, what they count), oldest first. Gradio changes an id's parts in
        # place before storing them again, so what they counted when stored is kept here, not recomputed.
        self._stored: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._held = 0  # what the stored parts count in all
        self._lock = threading.Lock()  # parts arrive on several threads (gradio runs server functions so)

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            self._forget(key)  # stored again: it moves to the end, as the newest
            super().__setitem__(key, value)
            counted = self.entry_overhead + _part_bytes(value)
            self._stored[key] = (self._clock(), counted)
            self._held += counted
            self._trim()

    def __delitem__(self, key: str) -> None:
        self.pop(key)

    def pop(self, key: str, *default: Any) -> Any:
        with self._lock:
            if key not in self:
                return super().pop(key, *default)
            return self._forget(key)

    def clear(self) -> None:
        with self._lock:
            super().clear()
            self._stored.clear()
            self._held = 0

    def room_for(self, key: str, size: int) -> bool:
        """Whether `key`'s parts with `size` more bytes count at most `max_bytes`."""
        with self._lock:
            held = self._stored.get(key, (0.0, self.entry_overhead))[1]
        return held + size <= self.max_bytes

    def held_bytes(self) -> int:
        """What the stored parts count: their bytes and `entry_overhead` per id."""
        return self._held

    def _forget(self, key: str) -> Any:
        """Remove `key`'s parts (if any) and what they counted; returns them."""
        _, counted = self._stored.pop(key, (0.0, 0))
        self._held -= counted
        return super().pop(key, None)

    def _trim(self) -> None:
        """Drop the oldest ids while they are older than `max_age_s` or the store is over `max_bytes` or
        `max_ids`; the newest, just stored, stays."""
        now = self._clock()
        while len(self._stored) > 1:
            key, (stored, _) = next(iter(self._stored.items()))
            if now - stored <= self.max_age_s and self._held <= self.max_bytes and len(self) <= self.max_ids:
                break
            self._forget(key)


def _checked_part(data: Any) -> None:
    """Refuse a part other than the background, the composite or one of the first `MAX_LAYERS_SENT` layers, and
    an id that is not 1 to `MAX_PART_ID_CHARS` characters."""
    fields = getattr(data, "data", None)
    kind = fields.get("type") if isinstance(fields, dict) else None
    if kind not in PART_KINDS:
        raise HTTPException(422, "An editor part is the background, a layer or the composite.")
    part_id = fields.get("id")
    if not isinstance(part_id, str) or not 0 < len(part_id) <= MAX_PART_ID_CHARS:
        raise HTTPException(422, f"An editor part's id is 1 to {MAX_PART_ID_CHARS} characters.")
    if kind == "layer" and str(fields.get("index")) not in LAYER_NUMBERS:
        raise HTTPException(422, f"An editor layer is numbered 0 to {MAX_LAYERS_SENT - 1}.")


def guard_blobs(editor: EditorT) -> EditorT:
    """Check each part the browser sends `editor` before Gradio stores it, and bound what it stores."""
    gradio_accept = editor.accept_blobs
    store = PendingBlobs()

    def accept_blobs(data: Any) -> Any:
        _checked_part(data)
        files = getattr(data, "files", None) or [("blob", b"")]
        if not store.room_for(data.data["id"], len(files[0][1])):
            raise HTTPException(413, f"An edit's parts may be at most {store.max_bytes // MB} MB in all.")
        return gradio_accept(data)

    accept_blobs._is_server_fn = True  # type: ignore[attr-defined]  # callable through component_server
    editor.accept_blobs = accept_blobs  # type: ignore[method-assign]
    editor.blob_storage = store
    return editor
