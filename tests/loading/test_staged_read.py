"""The chunked safetensors reader (loading/staged_read.py, used for CUDA loads): the same tensors as
safetensors' own reader, for every chunk size (tensors straddling chunks, empty and 0-d ones), each in its own
allocation; anything it cannot read raw is left to safetensors' reader (a cast, a damaged header, a short
file). Its chunking runs here on CPU; the pinned buffers and events only on a GPU (the gpu-marked test)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd2_app.errors import LoadError
from sd2_app.loading.checkpoint import read_safetensors
from sd2_app.loading import staged_read
from sd2_app.loading.staged_read import module_to_device, read_header, read_to_device, stageable


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 4, 3, 3, generator=g).half(), "ids": torch.arange(77),
            "norm.bias": torch.randn(5, generator=g).half(), "flag": torch.tensor(True),
            "empty": torch.zeros(0, 3).half(), "big": torch.randn(3000, generator=g).half()}


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("chunk_bytes", [1, 7, 100, 4096, 1 << 20])
def test_chunks_of_any_size_give_safetensors_tensors(tmp_path: Path, chunk_bytes: int) -> None:
    path = _write(tmp_path / "w.safetensors", _tensors())
    start, entries = read_header(path)
    assert stageable(entries, torch.float16, path.stat().st_size, start)
    got = read_to_device(path, entries, start, torch.device("cpu"), chunk_bytes=chunk_bytes)
    want = load_file(str(path))
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
        assert torch.equal(got[name], tensor), name
    storages = {t.untyped_storage().data_ptr() for t in got.values() if t.numel()}
    assert len(storages) == 5  # one allocation each: the accelerator may replace any of them alone


def test_what_needs_a_cast_or_is_damaged_is_left_to_safetensors(tmp_path: Path) -> None:
    path = _write(tmp_path / "w.safetensors", _tensors())
    start, entries = read_header(path)
    size = path.stat().st_size
    assert not stageable(entries, torch.float32, size, start)  # fp16 floats, fp32 wanted: a cast
    assert not stageable(entries, torch.float16, size + 1, start)  # bytes after the last tensor
    assert not stageable(entries, torch.float16, size - 1, start)  # the last tensor cut short
    header = json.loads(path.read_bytes()[8:start])
    begin, end = header["big"]["data_offsets"]
    header["big"]["data_offsets"] = [begin + 2, end]  # a gap, and a size that does not match the shape
    assert not _stageable(_rewrite(path, header, start))
    header["big"]["data_offsets"], header["big"]["dtype"] = [begin, end], "F8_E4M3"  # a dtype we do not map
    assert not _stageable(_rewrite(path, header, start))
    header["big"]["dtype"] = "F16"  # the same file rewritten unchanged: readable raw again
    assert _stageable(_rewrite(path, header, start))


def test_a_header_missing_fields_is_a_value_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "w.safetensors", _tensors())
    start, _ = read_header(path)
    header = json.loads(path.read_bytes()[8:start])
    del header["big"]["data_offsets"]
    with pytest.raises(ValueError, match="malformed safetensors header"):
        read_header(_rewrite(path, header, start))
    header = {"big": [1, 2]}
    with pytest.raises(ValueError, match="malformed safetensors header"):
        read_header(_rewrite(path, header, start))


def _rewrite(path: Path, header: dict, data_start: int) -> Path:
    """The file's data after `header` in place of its own."""
    raw = json.dumps(header).encode()
    out = path.with_name("edited.safetensors")
    out.write_bytes(struct.pack("<Q", len(raw)) + raw + path.read_bytes()[data_start:])
    return out


def _stageable(path: Path) -> bool:
    start, entries = read_header(path)
    return stageable(entries, torch.float16, path.stat().st_size, start)


def test_a_file_cut_short_after_its_header_was_read_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "w.safetensors", _tensors())
    start, entries = read_header(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="file ends inside its data section"):
        read_to_device(path, entries, start, torch.device("cpu"), chunk_bytes=64)
    with pytest.raises(LoadError, match="corrupt or truncated safetensors file"):  # safetensors names it
        read_safetensors(path, "cpu", torch.float16, repo="r", file="w.safetensors")


def test_read_safetensors_stages_only_uncast_loads_onto_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU loads keep safetensors' reader (its tensors map the file); so do casts. The CUDA decision is
    checked here with the reader stubbed (the GPU test below runs the real one)."""
    import sd2_app.loading.checkpoint as checkpoint

    tensors = _tensors()
    path = _write(tmp_path / "w.safetensors", tensors)
    staged: list[torch.device] = []
    monkeypatch.setattr(checkpoint, "read_to_device", lambda p, e, s, device: staged.append(device) or {"x": 1})
    raw = read_safetensors(path, "cpu", torch.float16, repo="r", file="w.safetensors")
    cast = read_safetensors(path, "cpu", torch.float32, repo="r", file="w.safetensors")
    assert not staged
    assert raw["big"].dtype == torch.float16 and torch.equal(raw["big"], tensors["big"])
    assert cast["big"].dtype == torch.float32 and torch.equal(cast["big"], tensors["big"].float())
    assert cast["ids"].dtype == torch.int64 and torch.equal(cast["ids"], tensors["ids"])
    assert read_safetensors(path, "cuda:0", torch.float16, repo="r", file="w.safetensors") == {"x": 1}
    assert staged == [torch.device("cuda:0")]


def test_a_chunked_read_that_fails_falls_back_to_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """e.g. page-locked memory refused: the load still works, tensor by tensor; out of memory is not hidden
    (the manager's retry needs it). Reader stubbed, device CPU for the fallback (no GPU needed)."""
    import sd2_app.loading.checkpoint as checkpoint

    tensors = _tensors()
    path = _write(tmp_path / "w.safetensors", tensors)

    def refuse(*args, **kwargs):
        raise RuntimeError("cudaHostAlloc failed")

    monkeypatch.setattr(checkpoint, "read_to_device", refuse)
    monkeypatch.setattr(checkpoint, "safe_open", _cpu_safe_open(checkpoint.safe_open))
    got = read_safetensors(path, "cuda", torch.float16, repo="r", file="w.safetensors")
    assert torch.equal(got["big"], tensors["big"]) and "chunked read failed" in caplog.text

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(checkpoint, "read_to_device", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        read_safetensors(path, "cuda", torch.float16, repo="r", file="w.safetensors")


def _cpu_safe_open(real):
    """safe_open with its device forced to the CPU (the fallback's reader, on a machine without CUDA)."""
    def opened(path, framework, device="cpu"):
        return real(path, framework=framework, device="cpu")
    return opened


class _Tied(torch.nn.Module):
    """Parameters of two dtypes, one shared by two names, a non-contiguous buffer and an empty one."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.embed = torch.nn.Embedding(50, 24).half()
        self.embed.weight.data.normal_(generator=g)
        self.head = torch.nn.Linear(24, 50, bias=False).half()
        self.head.weight = self.embed.weight  # tied
        self.scale = torch.nn.Parameter(torch.randn(7, generator=g, dtype=torch.float64))
        self.register_buffer("ids", torch.arange(40).view(8, 5).t())  # not contiguous
        self.register_buffer("nothing", torch.zeros(0))


@pytest.mark.parametrize("chunk_bytes", [3, 64, 1 << 20])
def test_a_module_moves_through_the_chunks_keeping_its_parameter_objects(chunk_bytes: int) -> None:
    module = _Tied()
    before = {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}
    parameters = dict(module.named_parameters())
    old_pointers = {name: t.data_ptr() for name, t in parameters.items()}
    module_to_device(module, torch.device("cpu"), chunk_bytes=chunk_bytes)  # the chunking, without a GPU
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert torch.equal(tensor, before[name]) and tensor.dtype == before[name].dtype, name
    assert all(module.get_parameter(name) is p for name, p in parameters.items())  # same objects
    assert all(p.data_ptr() != old_pointers[name] for name, p in parameters.items())  # new storage each
    assert module.head.weight is module.embed.weight


def test_a_failed_module_move_leaves_it_where_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _Tied()
    pointers = [t.data_ptr() for t in module.parameters()]

    def broken(*args, **kwargs):
        raise RuntimeError("cudaHostAlloc failed")

    monkeypatch.setattr(staged_read, "_transfer", broken)
    with pytest.raises(RuntimeError):
        module_to_device(module, torch.device("cpu"))
    assert [t.data_ptr() for t in module.parameters()] == pointers


@pytest.mark.gpu
def test_a_module_moves_to_the_gpu_intact() -> None:
    module = _Tied()
    before = {name: t.detach().clone() for name, t in [*module.named_parameters(), *module.named_buffers()]}
    module_to_device(module, torch.device("cuda"), chunk_bytes=256)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert tensor.is_cuda and torch.equal(tensor.cpu(), before[name]), name


@pytest.mark.gpu
def test_pinned_chunks_reach_the_gpu_intact(tmp_path: Path) -> None:
    """The double-buffered path: small chunks, so both pinned buffers are refilled many times."""
    path = _write(tmp_path / "w.safetensors", _tensors())
    start, entries = read_header(path)
    got = read_to_device(path, entries, start, torch.device("cuda"), chunk_bytes=256)
    for name, tensor in load_file(str(path)).items():
        assert got[name].is_cuda and torch.equal(got[name].cpu(), tensor), name
