"""`PendingBlobs`, the inpaint editor's bounded store of parts sent ahead of a job: by age and by bytes."""

from __future__ import annotations

from types import SimpleNamespace

from sd2_app.ui.editor_blobs import PendingBlobs


def _parts(size: int) -> SimpleNamespace:  # gradio's EditorDataBlobs
    return SimpleNamespace(background=b"b" * size, layers=[None, b"l" * size], composite=None)


def test_parts_go_by_age_then_oldest_first_over_the_byte_limit_and_the_newest_stays() -> None:
    now = [0.0]
    store = PendingBlobs(max_bytes=100, max_age_s=60, clock=lambda: now[0])
    store["a"] = _parts(10)  # 20 bytes
    now[0] = 30
    store["b"] = _parts(10)
    assert set(store) == {"a", "b"} and store.held_bytes() == 40
    now[0] = 61  # "a" is 61 s old: it goes at the next store
    store["c"] = _parts(10)
    assert set(store) == {"b", "c"}
    store["b"] = _parts(20)  # stored again: "b" is now the newest
    store["d"] = _parts(20)  # 40 + 20 + 40 = 100: fits
    assert list(store) == ["c", "b", "d"] and store.held_bytes() == 100
    store["e"] = _parts(5)  # over by 10: the oldest, "c", goes
    assert list(store) == ["b", "d", "e"] and store.held_bytes() == 90
    store["huge"] = _parts(500)  # alone over the limit: every other goes, it stays for its job
    assert list(store) == ["huge"]
    assert store.pop("huge").background == b"b" * 500 and store.pop("gone", None) is None and not store
