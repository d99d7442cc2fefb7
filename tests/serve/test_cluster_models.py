"""The front end's ModelHost over Ray Serve (`ClusterModels`): what it asks the deployment, and how often."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray")

from sd2_app.api.model_host import ModelHost  # noqa: E402
from sd2_app.checkpoints.catalog import REGISTRY  # noqa: E402
from sd2_app.serve.backend import ClusterModels, remote_service  # noqa: E402
from sd2_app.serve.config import load_config  # noqa: E402

ANSWER = {"models": [{"key": "sd21-base", "location": "device"}], "memory": {"device": "cpu", "device_used": 7}}


class CountingHandle:
    """Stands in for a Serve deployment handle: `handle.status.remote().result(timeout_s=...)`, counted."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.status = self._Method(self, "status")

    class _Method:
        def __init__(self, handle: CountingHandle, name: str) -> None:
            self._handle, self._name = handle, name

        def remote(self) -> Any:
            self._handle.calls.append(self._name)
            return self

        def result(self, timeout_s: float | None = None) -> dict[str, Any]:
            assert timeout_s == 30
            return ANSWER


def test_cluster_models_is_a_model_host() -> None:
    assert isinstance(ClusterModels(CountingHandle(), REGISTRY), ModelHost)


def test_the_status_view_costs_one_round_trip() -> None:
    """Service.status (what the Models tab shows: checkpoints and memory together) asks the deployment once."""
    handle = CountingHandle()
    service = remote_service(handle, REGISTRY, load_config(None, tiny=True), outputs_dir=None, allowed_repos=())
    assert service.status() == {"models": ANSWER["models"], "memory": ANSWER["memory"]}
    assert handle.calls == ["status"]
