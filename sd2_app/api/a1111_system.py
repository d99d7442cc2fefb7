"""A1111's routes about the server's memory: GET /memory, POST /unload-checkpoint and /reload-checkpoint.

/memory answers A1111's shape (modules/api/api.py, `get_memory`; models.py, `MemoryResponse`): `ram` is this
process's resident memory (`used`) against the machine's (`total`), `cuda` the driver's view of the GPU
(`system`) and PyTorch's caching allocator's counts (torch.cuda.memory_stats), or `{"error": "unavailable"}`
where this process has not started CUDA (a CPU run; the front end of --serve, whose replicas hold the GPU;
ZeroGPU's main process, which must never start it). It never starts CUDA itself. Clients poll it to see that
the server is up, and to watch its memory.

/unload-checkpoint and /reload-checkpoint free the GPU for another program and take it back (A1111 sends its
model to the CPU and back): here every checkpoint is unloaded, as the Models tab's "Unload all models", and the
current one loaded again (`A1111Api.unload_all`, `A1111Api.reload`). Both answer `{}`, as A1111's do; where
visitors may not load checkpoints (`model_admin`) both answer 403.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from sd2_app.api.a1111_errors import errors_as_http
from sd2_app.host_memory import host_memory_bytes, resident_bytes

if TYPE_CHECKING:
    from sd2_app.api.a1111_routes import A1111Api

UNAVAILABLE = {"error": "unavailable"}  # A1111's `cuda` where there is no CUDA
# torch.cuda.memory_stats keys of A1111's `cuda` fields: field -> the counter's name before ".current"/".peak"
ALLOCATOR_COUNTS = {"active": "active_bytes.all", "allocated": "allocated_bytes.all",
                    "reserved": "reserved_bytes.all", "inactive": "inactive_split_bytes.all"}


def ram_report() -> dict[str, Any]:
    """This process's resident bytes (`used`) and the machine's RAM (`total`); an error where they cannot be
    read."""
    used = resident_bytes()
    if used is None:
        return {"error": "this process's memory cannot be read here"}
    total = host_memory_bytes()
    return {"free": max(total - used, 0), "used": used, "total": total}


def cuda_report() -> dict[str, Any]:
    """The GPU as this process sees it (module docstring). Neither imports torch (a --serve front end runs
    without it; on ZeroGPU `spaces` must come first) nor starts CUDA: a process that has not is `UNAVAILABLE`."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return dict(UNAVAILABLE)
    try:
        device = torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
    except RuntimeError as error:  # a driver that will not answer
        return {"error": f"{type(error).__name__}: the GPU's memory cannot be read here"}
    report: dict[str, Any] = {"system": {"free": free, "used": total - free, "total": total}}
    for field, counter in ALLOCATOR_COUNTS.items():
        report[field] = {"current": stats.get(f"{counter}.current", 0), "peak": stats.get(f"{counter}.peak", 0)}
    report["events"] = {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}
    return report


def system_routes(router: APIRouter, api: A1111Api) -> None:
    """/memory, /unload-checkpoint, /reload-checkpoint (module docstring)."""

    @router.get("/memory")
    def memory() -> dict[str, Any]:
        return {"ram": ram_report(), "cuda": cuda_report()}

    @router.post("/unload-checkpoint")
    def unload_checkpoint() -> dict[str, Any]:
        api.unload_all()
        return {}

    @router.post("/reload-checkpoint")
    def reload_checkpoint(client: Request) -> dict[str, Any]:
        errors_as_http(lambda: api.reload(client))
        return {}
