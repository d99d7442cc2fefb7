"""`sd2_app.api.watched_folder.WatchedFolder` with stand-in libraries: when it looks at the folder, that a caller
never waits on another's read, and that `refresh` does."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sd2_app.api.watched_folder import WatchedFolder


@dataclass
class Library:
    """A folder's library that counts its looks; `changes` says whether the folder changed, `gate` holds a look."""

    version: int = 0
    changes: bool = False
    looks: list[int] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)

    def changed(self) -> bool:
        self.looks.append(self.version)
        self.gate.wait(30)
        return self.changes

    def rescanned(self) -> Library:
        return Library(self.version + 1, gate=self.gate)


def test_the_folder_is_looked_at_after_recheck_s_and_read_only_when_it_changed() -> None:
    first = Library()
    first.gate.set()
    watch = WatchedFolder(first)
    watch.recheck_s = 3600
    assert watch.library is first and first.looks == []  # looked at when made: not again within recheck_s
    watch.recheck_s = 0
    assert watch.library is first and first.looks == [0]  # looked at, unchanged: the same library
    first.changes = True
    assert watch.library.version == 1 and first.looks == [0, 0]


def test_a_caller_gets_the_library_as_it_was_while_another_reads_and_refresh_waits() -> None:
    first = Library(changes=True)
    watch = WatchedFolder(first)
    watch.recheck_s = 0
    got: dict[str, Library] = {}
    reader = threading.Thread(target=lambda: got.setdefault("reader", watch.library))
    reader.start()
    while not first.looks:  # the reader is looking (and holds the look until the gate opens)
        threading.Event().wait(0.001)
    assert watch.library is first  # no wait on the reader's look
    refresher = threading.Thread(target=lambda: got.setdefault("refresh", watch.refresh()))
    refresher.start()
    refresher.join(0.2)
    assert refresher.is_alive()  # refresh waits for the reader's look
    first.gate.set()
    reader.join(30)
    refresher.join(30)
    assert got["reader"].version == 1 and got["refresh"].version == 1 and watch.library.version == 1
