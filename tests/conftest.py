"""Shared pytest set-up: CPU, fp32, deterministic; GPU tests only on request."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The test models are tiny: one thread is fastest, and on a shared 2-core machine two OpenMP threads made a
# tiny UNet call 20x slower. Subprocesses (CLI tests) inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of `pytest -n N`'s processes: Gradio's file cache of its own
    import tempfile

    os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(
        tempfile.gettempdir(), f"gradio-{os.getuid()}-{os.environ['PYTEST_XDIST_WORKER']}"))


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
    if _shares_out_work(config) and not hasattr(config, "workerinput"):
        # `pytest -n N`'s first process, before its workers start: the tiny checkpoints are written once, here,
        # not by two workers into the same folder at once.
        from sd2_app.testing.tiny import ensure_tiny_repos
        from tests.pipeline_fixtures import tiny_dir

        ensure_tiny_repos(tiny_dir())


def _shares_out_work(config: pytest.Config) -> bool:
    """Run as `pytest -n N --dist loadgroup` (pytest-xdist): the tests are shared out among N processes."""
    return config.getoption("dist", "no") == "loadgroup" or bool(getattr(config.option, "loadgroup", False))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests skip without a GPU. Under `-n N --dist loadgroup`, the tests of a module that share one of its
    module-scoped fixtures stay in one process (a module's app, launched once, serves them all), while tests
    that share nothing go to whichever process is free; every browser test runs in one process, one after
    another: each drives a Chromium that takes most of a core, and two at once on a 2-core machine starved the
    apps they wait on. The browser tests come first, so their process (the longest) starts at once while the
    others share the rest."""
    _skip_gpu_tests_without_a_gpu(items)
    if not _shares_out_work(config):
        return
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.xdist_group("browser"))
        elif _uses_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: "browser" not in item.keywords)  # stable: each module's own order is kept


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture made once per module (or per package), which its module's other tests share."""
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else []
    return any(fixture.scope in ("module", "package") for chain in definitions for fixture in chain)


def _skip_gpu_tests_without_a_gpu(items: list[pytest.Item]) -> None:
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
