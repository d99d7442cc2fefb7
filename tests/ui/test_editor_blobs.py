"""`PendingBlobs`, the inpaint editor's bounded store of parts sent ahead of a job: by age, bytes and ids."""

from __future__ import annotations

from types import SimpleNamespace

from sd2_app.ui.editor_blobs import PendingBlobs


def _parts(size: int) -> SimpleNamespace:  # gradio's EditorDataBlobs
    return SimpleNamespace(background=b"b" * size, layers=[None, b"l" * size], composite=None)


def test_parts_go_by_age_then_oldest_first_over_the_byte_limit_and_the_newest_stays() -> None:
    now = [0.0]
    store = PendingBlobs(max_bytes=120, max_age_s=60, entry_overhead=5, clock=lambda: now[0])
    store["a"] = _parts(10)  # 20 bytes and 5 for the entry
    now[0] = 30
    store["b"] = _parts(10)
    assert set(store) == {"a", "b"} and store.held_bytes() == 50
    now[0] = 61  # "a" is 61 s old: it goes at the next store
    store["c"] = _parts(10)
    assert set(store) == {"b", "c"}
    store["b"] = _parts(20)  # stored again: "b" is now the newest
    store["d"] = _parts(20)  # 25 + 45 + 45 = 115: fits
    assert list(store) == ["c", "b", "d"] and store.held_bytes() == 115
    store["e"] = _parts(5)  # 130: over by 10, the oldest, "c", goes
    assert list(store) == ["b", "d", "e"] and store.held_bytes() == 105
    store["huge"] = _parts(500)  # alone over the limit: every other goes, it stays for its job
    assert list(store) == ["huge"] and store.held_bytes() == 1005
    assert store.pop("huge").background == b"b" * 500 and store.pop("gone", None) is None and not store
    assert store.held_bytes() == 0


def test_empty_parts_count_their_entry_and_the_ids_are_capped_oldest_first() -> None:
    store = PendingBlobs(max_bytes=10**9, max_age_s=600, max_ids=3, entry_overhead=100, clock=lambda: 0.0)
    for name in "abcde":
        store[name] = _parts(0)
    assert list(store) == ["c", "d", "e"] and store.held_bytes() == 300
    small = PendingBlobs(max_bytes=250, max_age_s=600, entry_overhead=100, clock=lambda: 0.0)
    for name in "abc":
        small[name] = _parts(0)  # no bytes at all, yet each entry counts
    assert list(small) == ["b", "c"] and small.held_bytes() == 200


def test_parts_changed_in_place_count_what_they_held_when_stored() -> None:
    """Gradio takes an id's parts from the store, adds a part to them and stores them again (accept_blobs)."""
    store = PendingBlobs(max_bytes=10**9, entry_overhead=1, clock=lambda: 0.0)
    parts = SimpleNamespace(background=b"b" * 10, layers=[], composite=None)
    store["x"] = parts
    parts.layers.append(b"l" * 30)
    store["x"] = parts
    assert store.held_bytes() == 41
    del store["x"]
    assert store.held_bytes() == 0 and not store


def test_room_for_counts_what_an_id_holds_and_its_entry() -> None:
    store = PendingBlobs(max_bytes=100, entry_overhead=10, clock=lambda: 0.0)
    assert store.room_for("new", 90) and not store.room_for("new", 91)
    store["x"] = SimpleNamespace(background=b"b" * 50, layers=[], composite=None)  # counts 60
    assert store.room_for("x", 40) and not store.room_for("x", 41)


def test_clear_forgets_what_was_counted() -> None:
    store = PendingBlobs(max_bytes=100, max_ids=2, entry_overhead=10, clock=lambda: 0.0)
    store["a"] = _parts(5)
    store.clear()
    assert not store and store.held_bytes() == 0
    store["b"], store["c"] = _parts(0), _parts(0)
    assert list(store) == ["b", "c"]  # nothing of "a" is counted, so both fit
