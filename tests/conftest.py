"""Shared pytest set-up: CPU, fp32, deterministic; GPU tests only on request."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test models are tiny: one thread is fastest, and on a shared 2-core machine two OpenMP threads made a
# tiny UNet call 20x slower. Subprocesses (CLI tests) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)
    # Third-party noise (diffusers' numpy conversions, gradio's pandas calls); our own warnings stay visible.
    for rule in ("ignore::DeprecationWarning:diffusers.*", "ignore::FutureWarning:diffusers.*",
                 "ignore::DeprecationWarning:numpy.*", "ignore:.*copy keyword is deprecated.*",
                 "ignore:.*no_silent_downcasting.*",
                 "ignore::DeprecationWarning:ray.*"):
        config.addinivalue_line("filterwarnings", rule)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped unless one is present)")
    config.addinivalue_line("markers", "browser: drives a real Chromium through Playwright")
    config.addinivalue_line("markers", "slow: over ~5 s on this CPU; the everyday run is `pytest -m \"not slow\"`")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def components():
    """Our side of the pipeline parity tests: each tiny checkpoint's Components, loaded once per session."""
    from tests.pipeline_fixtures import ComponentCache

    return ComponentCache()
