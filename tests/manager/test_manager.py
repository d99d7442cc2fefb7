"""ModelManager on CPU with tiny checkpoints: lazy loads, LRU tiers, sharing by content, failures, the lock."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import sd2_app.loading as loading
from sd2_app.manager import CheckpointUnavailable, ModelManager, OutOfMemoryDuringLoad
from sd2_app.manager.identity import HashCache, component_identity
from sd2_app.manager import memory
from sd2_app.manager.memory import module_bytes
from sd2_app.nn.unet import UNet
from sd2_app.checkpoints.catalog import CheckpointSpec
from tests.pipeline_fixtures import tiny_repo

MODULES = ("text_encoder", "vae", "unet")


def _variant(source: Path, target: Path, changed: tuple[str, ...], delta: float) -> Path:
    """A copy of `source` whose weights in the `changed` subfolders are shifted by `delta` (new content)."""
    shutil.copytree(source, target)
    for name in changed:
        for file in (target / name).glob("*.safetensors"):
            state = load_file(file)
            save_file({k: v + delta if v.is_floating_point() else v for k, v in state.items()}, file)
    return target


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """a, b: same text encoder and VAE files, different UNets; c: a different VAE; x, y, z: nothing shared."""
    root = tmp_path_factory.mktemp("repos")
    base = tiny_repo("sd2-base")
    return {
        "a": base,
        "b": _variant(base, root / "b", ("unet",), 0.5),
        "c": _variant(base, root / "c", ("vae",), 0.25),
        "x": _variant(base, root / "x", MODULES, 1.0),
        "y": _variant(base, root / "y", MODULES, 2.0),
        "z": _variant(base, root / "z", MODULES, 3.0),
    }


def _spec(key: str, *repos: str | Path) -> CheckpointSpec:
    return CheckpointSpec(key, key.upper(), tuple(str(r) for r in repos), None, 512, ("txt2img",))


def _manager(repos: dict[str, Path], tmp_path: Path, **kwargs: Any) -> ModelManager:
    registry = {key: _spec(key, folder) for key, folder in repos.items()}
    registry.update(kwargs.pop("extra", {}))
    return ModelManager("cpu", torch.float32, registry=registry, cache_dir=tmp_path, **kwargs)


@pytest.fixture
def unet_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Records every UNet load from disk (the slow path)."""
    calls: list[Path] = []
    real = loading.load_unet

    def counting(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
        calls.append(Path(folder))
        return real(folder, device, dtype)

    monkeypatch.setattr(loading, "load_unet", counting)
    yield calls


def _where(manager: ModelManager) -> dict[str, str]:
    return {row.key: row.location for row in manager.status()}


def _key_in_use(manager: ModelManager, key: str) -> str:
    with manager.use(key) as components:
        return components.key


def _size(manager: ModelManager, key: str) -> int:
    return next(row.nbytes for row in manager.status() if row.key == key)


def test_nothing_loads_until_first_use(repos: dict[str, Path], tmp_path: Path, unet_loads: list[Path]) -> None:
    manager = _manager(repos, tmp_path)
    assert set(_where(manager).values()) == {"none"}
    assert manager.memory().device_used == 0 and unet_loads == []
    with manager.use("a") as components:
        assert components.key == "a" and components.repo == str(repos["a"])
        assert isinstance(components.unet, UNet) and components.unet.conv_in.weight.dtype == torch.float32
        expected = sum(module_bytes(m) for m in (components.unet, components.vae, components.text_encoder))
        assert components.tokenizer.pad_token_id == 0
        assert components.scheduler_config.prediction_type == "epsilon"
    assert unet_loads == [repos["a"]]
    row = next(r for r in manager.status() if r.key == "a")
    assert (row.location, row.device, row.repo, row.nbytes) == ("device", "cpu", str(repos["a"]), expected)
    assert manager.memory().device_used == expected
    with manager.use("a"):
        pass
    assert len(unet_loads) == 1  # second use: no load
    preloaded = _manager(repos, tmp_path, preload=["b"])
    assert _where(preloaded)["b"] == "device" and _where(preloaded)["a"] == "none"


def test_lru_offloads_then_drops_under_small_budgets(
    repos: dict[str, Path], tmp_path: Path, unet_loads: list[Path]
) -> None:
    manager = _manager(repos, tmp_path)
    manager.load("x")
    size = _size(manager, "x")  # x, y, z and a share nothing and have equal sizes
    manager.device_budget, manager.offload_budget = int(2.5 * size), int(1.5 * size)
    for key in ("y", "x", "z"):  # x used after y: y is the least recently used when z arrives
        manager.load(key)
    where = _where(manager)
    assert (where["x"], where["y"], where["z"]) == ("device", "offloaded", "device")
    assert manager.memory().device_used == 2 * size and manager.memory().offload_used == size
    manager.load("a")  # a shares nothing with x/z either: x (LRU on device) goes to host, y is dropped
    where = _where(manager)
    assert (where["x"], where["y"], where["z"], where["a"]) == ("offloaded", "none", "device", "device")
    assert manager.loaded_keys() == ["x", "z", "a"]
    loads_before = len(unet_loads)
    manager.load("x")  # fast path: back from host memory, no disk read; z is now the LRU on device
    assert len(unet_loads) == loads_before
    where = _where(manager)
    assert (where["x"], where["z"], where["a"]) == ("device", "offloaded", "device")
    assert manager.memory().device_used == 2 * size and manager.memory().offload_used == size
    manager.offload("a")
    manager.unload("z")
    assert _where(manager)["a"] == "offloaded" and _where(manager)["z"] == "none"
    assert manager.memory().device_used == size and manager.memory().offload_used == size
    assert manager.unload("a") is True and manager.unload("a") is False  # False: it was not loaded


def test_identical_files_are_loaded_once_and_refcounted(
    repos: dict[str, Path], tmp_path: Path, unet_loads: list[Path]
) -> None:
    manager = _manager(repos, tmp_path)
    with manager.use("a") as a:
        pass
    with manager.use("b") as b:
        pass
    with manager.use("c") as c:
        pass
    assert b.vae is a.vae and b.text_encoder is a.text_encoder and c.text_encoder is a.text_encoder
    assert b.unet is not a.unet and c.unet is a.unet  # c only changed its VAE
    assert c.vae is not a.vae
    assert not torch.equal(c.vae.decoder.conv_out.weight, a.vae.decoder.conv_out.weight)
    assert len(unet_loads) == 2  # a and b; c reused a's UNet
    unique = sum(module_bytes(m) for m in (a.text_encoder, a.vae, a.unet, b.unet, c.vae))
    assert manager.memory().device_used == unique
    assert next(r for r in manager.status() if r.key == "b").shared == ("text_encoder", "vae")
    manager.unload("a")  # b and c still use a's text encoder, VAE (b) and UNet (c)
    assert manager.memory().device_used == unique
    manager.unload("c")  # now a's UNet and c's VAE have no user left
    assert manager.memory().device_used == sum(module_bytes(m) for m in (b.text_encoder, b.vae, b.unet))
    with manager.use("a") as again:
        assert again.vae is b.vae and again.unet is not a.unet  # a's UNet was freed, so it is read again
    assert len(unet_loads) == 3
    manager.offload("a")  # b still uses the text encoder and VAE on the device: only a's UNet moves
    assert manager.memory().offload_used == module_bytes(again.unet)


def test_missing_repos_are_all_named_and_a_fallback_is_used(repos: dict[str, Path], tmp_path: Path) -> None:
    missing = _spec("m", tmp_path / "nowhere", "nobody/not-a-repo")
    fallback = _spec("f", tmp_path / "nowhere", repos["a"])
    manager = _manager({"a": repos["a"]}, tmp_path, extra={"m": missing, "f": fallback})
    with pytest.raises(CheckpointUnavailable) as info:
        manager.load("m")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "nobody/not-a-repo" in message
    assert [repo for repo, _ in info.value.attempts] == [str(tmp_path / "nowhere"), "nobody/not-a-repo"]
    assert all(reason for _, reason in info.value.attempts)
    row = next(r for r in manager.status() if r.key == "m")
    assert row.location == "none" and "nobody/not-a-repo" in (row.error or "")
    assert manager.memory().device_used == 0
    manager.load("f")
    row = next(r for r in manager.status() if r.key == "f")
    assert (row.location, row.repo, row.error) == ("device", str(repos["a"]), None)


def test_corrupt_weights_leave_the_manager_as_it_was(repos: dict[str, Path], tmp_path: Path) -> None:
    garbage = _variant(repos["a"], tmp_path / "garbage", (), 0.0)
    for file in (garbage / "unet").glob("*.safetensors"):
        file.write_bytes(b"\x00not safetensors at all" * 10)
    truncated = _variant(repos["a"], tmp_path / "truncated", ("vae",), 0.75)  # a new VAE, then a bad UNet
    for file in (truncated / "unet").glob("*.safetensors"):
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    extra = {"g": _spec("g", garbage), "t": _spec("t", truncated)}
    manager = _manager({"a": repos["a"]}, tmp_path, extra=extra)
    manager.load("a")
    used, parts = manager.memory().device_used, dict(manager._parts)
    for key in ("g", "t"):
        with pytest.raises(CheckpointUnavailable, match="unet/diffusion_pytorch_model"):
            manager.load(key)
        assert manager.memory().device_used == used  # the new VAE of t was freed again
        assert manager._parts == parts and all(p.users == {"a"} for p in parts.values())
        assert _where(manager)[key] == "none"
    with manager.use("a") as components:
        assert components.unet is parts[manager._entries["a"].parts["unet"]].module


def test_out_of_memory_while_loading_evicts_and_retries_once(
    repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = _manager(repos, tmp_path)
    manager.load("x")
    real = loading.load_unet
    failures = {"left": 1}

    def flaky(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(folder, device, dtype)

    monkeypatch.setattr(loading, "load_unet", flaky)
    manager.load("y")
    assert failures["left"] == 0
    assert (_where(manager)["x"], _where(manager)["y"]) == ("offloaded", "device")  # everything else moved off
    failures["left"] = 2
    with pytest.raises(OutOfMemoryDuringLoad, match="out of memory loading z"):
        manager.load("z")
    assert _where(manager)["z"] == "none" and not any("z" in p.users for p in manager._parts.values())
    assert sum(p.nbytes for p in manager._parts.values()) == _size(manager, "x") + _size(manager, "y")
    with manager.use("z") as components:  # usable afterwards: the fault is gone
        assert components.repo == str(repos["z"])


def test_free_memory_moves_every_other_checkpoint_off(repos: dict[str, Path], tmp_path: Path) -> None:
    """The fallback ladder's out-of-memory rung: inside use("y"), everything but y leaves the device."""
    manager = _manager(repos, tmp_path)
    manager.load("x")
    with manager.use("y"):
        before = _where(manager)
        manager.free_memory()
        after = _where(manager)
    assert before["x"] == "device" and after["x"] == "offloaded"
    assert before["y"] == after["y"] == "device"
    assert _key_in_use(manager, "x") == "x"  # still consistent and usable


def test_two_threads_are_served_one_after_the_other(repos: dict[str, Path], tmp_path: Path) -> None:
    manager = _manager(repos, tmp_path)
    events: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(key: str) -> None:
        start.wait()
        try:
            with manager.use(key) as components:
                events.append(("enter", components.key))
                time.sleep(0.05)
                events.append(("exit", components.key))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which fails the test
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(key,)) for key in ("a", "x")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(events) == 4
    first, second = events[0][1], events[2][1]
    assert {first, second} == {"a", "x"}
    assert events == [("enter", first), ("exit", first), ("enter", second), ("exit", second)]
    assert all(row.location == "device" for row in manager.status() if row.key in ("a", "x"))


def test_local_hashes_are_cached_by_path_size_and_mtime(repos: dict[str, Path], tmp_path: Path) -> None:
    files = ["vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]
    cache = HashCache(tmp_path / "hashes.json")
    first = component_identity(repos["a"], files, cache)
    assert cache.computed == 2
    assert component_identity(repos["b"], files, cache) == first  # same bytes, other folder
    assert component_identity(repos["c"], files, cache) != first
    reloaded = HashCache(tmp_path / "hashes.json")
    assert component_identity(repos["a"], files, reloaded) == first and reloaded.computed == 0
    # A Hub cache snapshot links to blobs named by sha256: no hashing needed, same identity.
    snapshot, blobs = tmp_path / "snap", tmp_path / "blobs"
    blobs.mkdir()
    for name in files:
        blob = blobs / cache.sha256(repos["a"] / name)
        shutil.copyfile(repos["a"] / name, blob)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(blob)
    fresh = HashCache(None)
    assert component_identity(snapshot, files, fresh) == first and fresh.computed == 0


def test_out_of_memory_bringing_a_model_back_evicts_then_restores_consistency(
    repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = _manager(repos, tmp_path)
    for key in ("x", "y"):
        manager.load(key)
    manager.offload("x")
    x_modules = {id(manager._parts[i].module) for i in manager._entries["x"].parts.values()}
    real = memory.move_module
    faults = {"left": 1}

    def faulty(module: torch.nn.Module, device: torch.device, *, pin: bool) -> None:
        coming_back = manager._entries.get("x") is not None and manager._entries["x"].tier == "device"
        if coming_back and id(module) in x_modules and faults["left"] > 0:
            faults["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        real(module, device, pin=pin)

    monkeypatch.setattr(memory, "move_module", faulty)
    manager.load("x")
    assert (_where(manager)["x"], _where(manager)["y"]) == ("device", "offloaded")
    manager.offload("x")
    faults["left"] = 10
    with pytest.raises(OutOfMemoryDuringLoad, match="even when alone"):
        manager.load("x")
    assert _where(manager)["x"] == "offloaded"
    assert {manager._parts[i].tier for i in manager._entries["x"].parts.values()} == {"offloaded"}
    faults["left"] = 0
    assert _key_in_use(manager, "x") == "x"


def test_hub_metadata_supplies_the_sha256_of_weight_files(
    repos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    files = ["vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]
    local = HashCache(None)
    expected = component_identity(repos["a"], files, local)
    asked: list[tuple[str, list[str], str | None]] = []

    class _Info:
        def __init__(self, path: str) -> None:
            self.path = path
            self.lfs = type("Lfs", (), {"sha256": local.sha256(repos["a"] / path)})()

    def get_paths_info(self: Any, repo: str, paths: list[str], *, revision: str | None = None) -> list[_Info]:
        asked.append((repo, list(paths), revision))
        return [_Info(p) for p in paths]

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", get_paths_info)
    cache = HashCache(None)
    assert component_identity(repos["a"], files, cache, repo="org/model", revision="abc") == expected
    assert asked == [("org/model", ["vae/diffusion_pytorch_model.fp16.safetensors"], "abc")]
    assert cache.computed == 1  # only the small config was hashed here
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: no Hub call, local hashing
    assert component_identity(repos["a"], files, HashCache(None), repo="org/model") == expected
    assert len(asked) == 1


def test_a_unet_leaving_the_device_drops_its_cuda_graphs(repos: dict[str, Path], tmp_path: Path) -> None:
    """Captured graphs keep a memory pool on the device and the weights' old addresses: both must go."""
    from sd2_app.accel import AccelOptions, Accelerator, CudaGraphUNet

    manager = _manager(repos, tmp_path)
    manager._accel = Accelerator(AccelOptions())  # as on CUDA (on CPU the wrapper runs eagerly)
    manager._on_moved = manager._accel.on_moved

    def use_and_fake_a_capture() -> CudaGraphUNet:
        with manager.use("a") as components:
            wrapper = components.unet
            assert isinstance(wrapper, CudaGraphUNet)
            wrapper._graphs[("fake",)] = object()  # stands for a captured graph
        return wrapper

    wrapper = use_and_fake_a_capture()
    manager.offload("a")
    assert wrapper.graph_count == 0
    assert use_and_fake_a_capture() is wrapper and wrapper.graph_count == 1
    with manager.use("a"):
        manager.free_memory()  # the out-of-memory rung frees the active UNet's other graphs too
    assert wrapper.graph_count == 0
    use_and_fake_a_capture()
    manager.unload("a")
    assert wrapper.graph_count == 0


def test_moves_keep_each_weights_strides() -> None:
    """A tensor-by-tensor move keeps channels_last weights channels_last (1x1 kernels too, whose two layouts
    differ only in strides): conv_in's weight decides the layout of every activation after it."""
    conv3, conv1 = torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 16, 1)
    for conv in (conv3, conv1):
        conv.to(memory_format=torch.channels_last)
    stacked_row = torch.zeros(6, 5)[2:4]  # a stacked projection's rows: a contiguous view
    for tensor in (conv3.weight, conv1.weight, conv3.bias, stacked_row):
        copy = memory.empty_in_layout(tensor, "cpu")
        assert (copy.shape, copy.stride(), copy.dtype) == (tensor.shape, tensor.stride(), tensor.dtype)
    assert memory.empty_in_layout(conv3.weight, "cpu").stride() == (36, 1, 12, 4)
    assert memory.empty_in_layout(conv1.weight, "cpu").stride() == (8, 1, 8, 8)
    transposed = torch.zeros(5, 6).t()
    assert memory.empty_in_layout(transposed, "cpu").stride() == (5, 1)


@pytest.mark.gpu
def test_offload_pins_host_memory_and_comes_back(repos: dict[str, Path], tmp_path: Path) -> None:
    manager = ModelManager(
        "cuda", torch.float16, registry={"a": _spec("a", repos["a"])}, cache_dir=tmp_path
    )
    with manager.use("a") as before:
        layout = before.unet.conv_in.weight.stride()  # channels_last: the accelerator set it
    assert layout != before.unet.conv_in.weight.contiguous().stride()
    manager.offload("a")
    assert before.unet.conv_in.weight.device.type == "cpu" and before.unet.conv_in.weight.is_pinned()
    assert before.unet.conv_in.weight.stride() == layout
    assert next(r for r in manager.status() if r.key == "a").device == "pinned cpu"
    with manager.use("a") as after:
        assert after.unet is before.unet and after.unet.conv_in.weight.device.type == "cuda"
        assert after.unet.conv_in.weight.dtype == torch.float16
        assert after.unet.conv_in.weight.stride() == layout  # else every job after a swap runs NCHW
    manager.offload("a")
    pinned_ptr = before.unet.conv_in.weight.data_ptr()
    with manager.use("a"):
        pass
    manager.offload("a")  # the second offload re-points at the kept pinned copy: no new host allocation
    assert before.unet.conv_in.weight.data_ptr() == pinned_ptr and before.unet.conv_in.weight.is_pinned()


def test_the_manager_and_the_service_double_implement_the_service_protocol(repos: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    from sd2_app.api.model_host import ModelHost
    from tests.ui_doubles import FakeManager

    manager = _manager(repos, tmp_path)
    assert isinstance(manager, ModelHost) and isinstance(FakeManager(), ModelHost)
    extra = CheckpointSpec("extra", "Extra", (str(repos["x"]),), None, 512, ("txt2img",))
    manager.add_checkpoints({"extra": extra, "x": extra})
    assert manager.registry["extra"] is extra and manager.registry["x"] is not extra  # known keys stay
