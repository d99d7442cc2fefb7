"""The A1111 API's /memory, /unload-checkpoint and /reload-checkpoint through the running app (`python app.py
--tiny --device cpu --api`, served in-process; loading by hand is on locally). Refused in a public mode:
tests/reliability/test_reliability_public_requests.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from sd2_app.host_memory import host_memory_bytes
from tests.hosting_support import API_FAST as FAST
from tests.reliability_support import one_thread, serve  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def app(one_thread: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    with serve(["--tiny", "--device", "cpu", "--no-save", "--api"], tmp_path_factory.mktemp("app-cache")) as (url, demo):
        yield url.rstrip("/") + "/sdapi/v1", demo


def _loaded(demo: object) -> list[str]:
    return [row.key for row in demo.service.status()["models"] if row.location != "none"]  # type: ignore[attr-defined]


def test_memory_answers_a1111s_shape_with_this_processs_ram_and_no_cuda_on_cpu(app) -> None:
    url, _ = app
    answer = httpx.get(f"{url}/memory", timeout=60)
    assert answer.status_code == 200, answer.text
    memory = answer.json()
    ram = memory["ram"]
    assert set(ram) == {"free", "used", "total"} and ram["total"] == host_memory_bytes()
    assert 100 * 2**20 < ram["used"] < ram["total"] and ram["free"] == ram["total"] - ram["used"]  # torch, Gradio
    assert memory["cuda"] == {"error": "unavailable"}  # a CPU run never starts CUDA


def test_unload_frees_every_checkpoint_and_reload_brings_the_current_one_back(app) -> None:
    url, demo = app
    made = httpx.post(f"{url}/txt2img", json={"prompt": "a hat", "seed": 3, **FAST}, timeout=300)
    assert made.status_code == 200, made.text
    current = httpx.get(f"{url}/options", timeout=60).json()["sd_model_checkpoint"]
    assert current in _loaded(demo)
    unloaded = httpx.post(f"{url}/unload-checkpoint", timeout=60)
    assert (unloaded.status_code, unloaded.json()) == (200, {}) and _loaded(demo) == []
    reloaded = httpx.post(f"{url}/reload-checkpoint", timeout=300)
    assert (reloaded.status_code, reloaded.json()) == (200, {}) and _loaded(demo) == [current]
    httpx.post(f"{url}/unload-checkpoint", timeout=60)
    again = httpx.post(f"{url}/txt2img", json={"prompt": "a hat", "seed": 3, **FAST}, timeout=300)
    assert again.status_code == 200 and again.json()["images"] == made.json()["images"]  # a job loads what it needs


def test_the_cuda_report_reads_a_started_gpu_and_never_imports_torch_or_starts_cuda(monkeypatch) -> None:
    import sys
    from types import SimpleNamespace

    from sd2_app.api.a1111_system import cuda_report

    monkeypatch.delitem(sys.modules, "torch")  # a --serve front end: torch never imported
    assert cuda_report() == {"error": "unavailable"} and "torch" not in sys.modules
    stats = {"allocated_bytes.all.current": 5, "allocated_bytes.all.peak": 9, "reserved_bytes.all.current": 16,
             "reserved_bytes.all.peak": 32, "active_bytes.all.current": 4, "active_bytes.all.peak": 8,
             "num_alloc_retries": 1, "num_ooms": 0}  # no inactive_split counts yet: 0, as a fresh allocator's
    started = SimpleNamespace(is_initialized=lambda: True, current_device=lambda: 0,
                              mem_get_info=lambda device: (60, 80), memory_stats=lambda device: stats)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=started))
    assert cuda_report() == {"system": {"free": 60, "used": 20, "total": 80},
                             "active": {"current": 4, "peak": 8}, "allocated": {"current": 5, "peak": 9},
                             "reserved": {"current": 16, "peak": 32}, "inactive": {"current": 0, "peak": 0},
                             "events": {"retries": 1, "oom": 0}}
    idle = SimpleNamespace(is_initialized=lambda: False, mem_get_info=lambda device: 1 / 0)  # must not be asked
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=idle))
    assert cuda_report() == {"error": "unavailable"}
