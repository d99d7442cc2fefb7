"""Modules derived from a loaded part (the seamless-tiling view of pipelines/seamless.py), kept by the model
manager so a job does not derive them again.

Each is made on first use for one part's module and one recipe (`make`), and dropped whenever the manager
moves or frees that module (`moved`): a view shares the part's tensors, but state it keeps besides them (the
fused twins' stacked projections, accel/fused/stacking.py) would be stale after a move. The cache is keyed
weakly, so a module the manager frees takes its derived modules with it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from sd2_app.fork_safety import renew_in_forked_child

ModuleT = TypeVar("ModuleT", bound=nn.Module)
MovedFn = Callable[[nn.Module], None]


class DerivedModules:
    """`make(module)` per (loaded module, recipe), until the manager moves or frees the module; `then` is told
    of each move after the derived modules are dropped (accel's hook)."""

    def __init__(self, then: MovedFn | None = None) -> None:
        self._then = then
        self._made: weakref.WeakKeyDictionary[nn.Module, dict[Callable, nn.Module]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        renew_in_forked_child(self, _lock=threading.Lock)  # ZeroGPU's GPU calls run in forked workers

    def get(self, module: ModuleT, make: Callable[[ModuleT], ModuleT]) -> ModuleT:
        """`make(module)`, made on the first call for this module and recipe."""
        with self._lock:
            made = self._made.setdefault(module, {})
            if make not in made:
                made[make] = make(module)
            return made[make]  # type: ignore[return-value]

    def moved(self, module: nn.Module) -> None:
        """The manager moved `module` between tiers or is about to free it: what was derived from it goes."""
        with self._lock:
            self._made.pop(module, None)
        if self._then is not None:
            self._then(module)
