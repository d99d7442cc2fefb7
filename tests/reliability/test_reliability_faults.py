"""Numerical and resource faults on the tiny checkpoints: NaN/inf, out of memory, failed loads, Stop, memory.

Faults are injected with forward hooks on the real modules the manager loaded (UNet, VAE decoder), so the
whole path runs: pipeline, the fallback ladder, the manager's free_memory, service messages. After every fault
the next request must give the same pixels as a clean run with the same seed.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from sd2_app.errors import Cancelled, InvalidRequest, LoadError
from sd2_app.nn.attention import Attention
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import make_service, one_thread, pixels, tiny, txt2img  # noqa: F401

NUMERIC = "Numerical faults"
RESOURCE = "Resource faults"


@pytest.fixture(scope="module")
def baseline(tiny) -> np.ndarray:
    service, _ = tiny
    return pixels(service.run(txt2img(seed=5)).images[0])


class Hooks:
    """The loaded sd21-base UNet and VAE, and the fault hooks put on them (all removed by `clear`)."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module) -> None:
        self.unet, self.vae = unet, vae
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def forward(self, module: torch.nn.Module, hook: object) -> None:
        self.handles.append(module.register_forward_hook(hook))  # type: ignore[arg-type]

    def pre(self, module: torch.nn.Module, hook: object) -> None:
        self.handles.append(module.register_forward_pre_hook(hook))  # type: ignore[arg-type]

    def clear(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@pytest.fixture()
def models(tiny) -> Iterator[Hooks]:
    _, manager = tiny
    with manager.use("sd21-base") as components:
        hooks = Hooks(components.unet, components.vae)
    yield hooks
    hooks.clear()


def _poison(value: float, calls: int) -> tuple[list[int], object]:
    """A forward hook that replaces the output by `value` for its first `calls` calls (all when -1)."""
    seen: list[int] = []

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        seen.append(1)
        return torch.full_like(output, value) if calls < 0 or len(seen) <= calls else output

    return seen, hook


def test_nan_latents_rerun_with_fp32_attention(tiny, models, baseline, reliability) -> None:
    service, _ = tiny
    unet = models.unet
    seen, hook = _poison(float("nan"), calls=2)  # both UNet calls of the first sampling (2 steps) give NaN
    models.forward(unet, hook)
    upcast_during: list[bool] = []  # the per-call switch each UNet call passed to its attentions
    attention = next(m for m in unet.modules() if isinstance(m, Attention))
    models.handles.append(attention.register_forward_pre_hook(
        lambda module, args, kwargs: upcast_during.append(kwargs.get("fp32_attention", False)), with_kwargs=True))
    result = service.run(txt2img(seed=5))
    assert result.warnings == [
        "The sampler produced NaN/inf latents (numerical overflow); the run was repeated with fp32 attention."]
    assert len(seen) == 4 and upcast_during == [False, False, True, True]  # the rerun upcast the attention
    assert attention.upcast is False  # and no module setting was touched
    assert np.abs(pixels(result.images[0]) - baseline).max() == 0
    reliability(NUMERIC, "NaN from the UNet in the first sampling", f"rerun with fp32 attention, same image as a clean "
                f"run (max diff 0); warning: {result.warnings[0]}")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_decode_is_redone_in_fp32(tiny, models, baseline, reliability, value: float) -> None:
    service, _ = tiny
    seen, hook = _poison(value, calls=1)
    models.forward(models.vae.decoder, hook)
    result = service.run(txt2img(seed=5))
    assert len(seen) == 2 and result.warnings == ["The VAE decode gave NaN/inf values; the run was repeated with a "
                                                  "float32 decode."]
    assert np.abs(pixels(result.images[0]) - baseline).max() == 0
    reliability(NUMERIC, f"{'NaN' if value != value else 'inf'} from the VAE decoder in the first decode",
                f"run again with an fp32 decode (max diff to a clean run 0); warning: {result.warnings[0]}")


@pytest.mark.parametrize("where", ["unet", "vae"])
def test_persistent_nan_gives_a_clear_error_never_an_image(tiny, models, baseline, reliability, where: str) -> None:
    service, _ = tiny
    _, hook = _poison(float("nan"), calls=-1)
    models.forward(models.unet if where == "unet" else models.vae.decoder, hook)
    history = len(service.history())
    with pytest.raises(InvalidRequest) as caught:
        service.run(txt2img(seed=5))
    stage = "latents" if where == "unet" else "image"
    assert str(caught.value) == (
        f"The model produced NaN/inf values in the {stage} even when rerun in float32, so no image was returned; "
        "try another seed or sampler, or a lower guidance scale.")
    assert len(service.history()) == history  # nothing kept, nothing saved
    models.clear()
    assert np.abs(pixels(service.run(txt2img(seed=5)).images[0]) - baseline).max() == 0
    reliability(NUMERIC, f"NaN from the {'UNet' if where == 'unet' else 'VAE decoder'} on every call", f"no image; error: {caught.value} "
                "The next request gives the clean image.")


def test_out_of_memory_retries_once_with_other_models_off_and_a_tiled_decode(tiny, models, baseline, reliability) -> None:
    service, manager = tiny
    manager.load("sd2-base")  # another checkpoint on the "device": the retry must move it off
    decoder_inputs: list[tuple[int, int]] = []

    def too_big(module: torch.nn.Module, inputs: tuple) -> None:
        decoder_inputs.append(tuple(inputs[0].shape[-2:]))
        if max(inputs[0].shape[-2:]) > 4:  # an 8x8 latent does not "fit"; 4x4 tiles do
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    models.pre(models.vae.decoder, too_big)
    result = service.run(txt2img(seed=5))
    assert result.warnings == ["Out of memory: other models were moved off the GPU and the run was repeated with a "
                               "tiled VAE decode."]
    assert decoder_inputs[0] == (8, 8) and set(decoder_inputs[1:]) == {(4, 4)} and len(decoder_inputs) == 10
    assert "sd2-base" in manager.loaded_keys("offloaded") and "sd21-base" in manager.loaded_keys("device")
    difference = np.abs(pixels(result.images[0]) - baseline)
    assert result.images[0].size == (64, 64) and difference.std() > 0  # a real (tiled) image, not a copy
    reliability(RESOURCE, "out of memory in the VAE decode (injected, once)",
                f"other models offloaded, rerun with a 3x3-tile decode; image returned; warning: {result.warnings[0]}")


def test_out_of_memory_twice_is_a_clear_error_and_the_next_job_runs(tiny, models, baseline, reliability) -> None:
    service, _ = tiny

    def always(module: torch.nn.Module, inputs: tuple) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    models.pre(models.unet, always)
    with pytest.raises(InvalidRequest) as caught:
        service.run(txt2img(seed=5))
    assert str(caught.value) == (
        "The GPU ran out of memory; try a smaller size, fewer images per prompt or fewer loaded models.")
    models.clear()
    assert np.abs(pixels(service.run(txt2img(seed=5)).images[0]) - baseline).max() == 0
    reliability(RESOURCE, "out of memory on every UNet call", f"error: {caught.value} The next request runs normally.")


def _broken_service(tiny_service, repos: tuple[str, ...]):
    service, manager = tiny_service
    spec = manager.registry["sd2"]
    manager.registry["sd2"] = replace(spec, repos=repos, revision=None)
    return service, manager, spec


@pytest.mark.parametrize(
    ("case", "repos", "failure", "reason"),
    [
        ("missing local folder", ("/nonexistent/sd2-folder",), None, "/nonexistent/sd2-folder (not found (not a folder))"),
        ("offline, repo not in the cache", ("nobody/missing-sd2",), None,
         "nobody/missing-sd2 (offline or Hub unreachable, and not in the local cache)"),
        ("download fails (connection reset)", ("nobody/flaky-sd2",), ConnectionResetError(104, "Connection reset by peer"),
         "nobody/flaky-sd2 (ConnectionResetError: [Errno 104] Connection reset by peer)"),
    ],
)
def test_failed_loads_give_a_clear_error_and_the_next_request_works(
    tiny, baseline, reliability, monkeypatch: pytest.MonkeyPatch, case: str, repos: tuple, failure, reason: str
) -> None:
    service, manager, spec = _broken_service(tiny, repos)
    if failure is not None:
        import huggingface_hub

        def fail(*args: object, **kwargs: object) -> None:
            raise failure

        monkeypatch.setattr("sd2_app.loading.hub._is_offline", lambda: False)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    try:
        for _ in range(2):  # the failure is not sticky, and not a different error the second time
            with pytest.raises(LoadError) as caught:
                service.run(replace(txt2img(seed=5), checkpoint="sd2"))
            assert str(caught.value) == f"sd2: could not be loaded; tried {reason}"
        assert np.abs(pixels(service.run(txt2img(seed=5)).images[0]) - baseline).max() == 0
        status = {row.key: row for row in manager.status()}
        assert status["sd2"].error == str(caught.value)
    finally:
        manager.registry["sd2"] = spec
    reliability(RESOURCE, f"load: {case}", f"error (UI: 'The model could not be loaded: ...'): {caught.value}; "
                "the next request runs")


def _lock_is_free(manager: object) -> bool:
    """Whether another thread can take the manager's GPU lock (it is reentrant, so ask from a second thread)."""
    free: list[bool] = []

    def probe() -> None:
        with manager.use("sd21-base"):  # type: ignore[attr-defined]
            free.append(True)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join(timeout=10)
    return free == [True]


def test_stop_mid_run_then_the_next_job_is_normal(tiny, baseline, reliability) -> None:
    service, manager = tiny
    steps: list[int] = []
    request = replace(txt2img(seed=5), sampling=replace(txt2img().sampling, seed=5, steps=6))
    with pytest.raises(Cancelled):
        service.run(request, on_progress=lambda done, total, preview: steps.append(done),
                    should_stop=lambda: len(steps) >= 2)
    assert steps == [1, 2]
    assert _lock_is_free(manager)
    assert np.abs(pixels(service.run(txt2img(seed=5)).images[0]) - baseline).max() == 0
    reliability(RESOURCE, "Stop after step 2 of 6", "Cancelled raised (UI: 'Stopped.'), lock released; the next job "
                "gives the clean image (max diff 0)")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


RSS_BOUND_MIB = 16.0


@pytest.mark.slow  # 100 runs
def test_memory_stays_flat_over_100_runs(one_thread: None, tmp_path: Path, reliability) -> None:
    service, _ = make_service(outputs=tmp_path)  # saving included: files, history (bounded at 50)
    for seed in range(10):  # warm-up: allocator pools, lazy imports, the history filling
        service.run(txt2img(seed=seed))
    gc.collect()
    before = _rss_mib()
    started = time.perf_counter()
    for seed in range(100):
        result = service.run(txt2img(seed=1000 + seed))
        assert result.images[0].size == (64, 64)
    gc.collect()
    growth = _rss_mib() - before
    seconds = time.perf_counter() - started
    assert len(list(tmp_path.glob("*/*.png"))) == 110 and len(service.history()) == 50
    assert growth < RSS_BOUND_MIB, f"RSS grew {growth:.1f} MiB over 100 runs"
    reliability(RESOURCE, "100 consecutive txt2img runs (64x64, 2 steps, saved)",
                f"RSS {before:.0f} MiB after warm-up, growth {growth:+.1f} MiB (bound {RSS_BOUND_MIB:.0f} MiB); "
                f"{seconds:.1f} s. GPU memory: not measured (no GPU here)")


GPU_BOUND_MIB = 1.0


@pytest.mark.gpu
def test_gpu_memory_stays_flat_over_100_runs(reliability) -> None:
    service, _ = make_service(device="cuda")  # fp16 on the GPU
    for seed in range(10):
        service.run(txt2img(seed=seed))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    for seed in range(100):
        service.run(txt2img(seed=1000 + seed))
    torch.cuda.synchronize()
    growth = (torch.cuda.memory_allocated() - before) / 2**20
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    assert growth < GPU_BOUND_MIB, f"GPU memory grew {growth:.2f} MiB over 100 runs"
    reliability(RESOURCE, "100 consecutive txt2img runs on CUDA (fp16, tiny)",
                f"allocated {before / 2**20:.1f} MiB after warm-up, growth {growth:+.2f} MiB (bound {GPU_BOUND_MIB} MiB), "
                f"peak {peak:.1f} MiB above it")
