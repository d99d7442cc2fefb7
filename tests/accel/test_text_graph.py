"""The text encoder's CUDA-graph wrapper: exact on CPU (eager), one capture per shape on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sd2_app.accel import AccelOptions, Accelerator, CudaGraphTextEncoder
from sd2_app.loading import load_text_encoder
from sd2_app.testing.tiny_transformers import write_text_encoder


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")  # the loader reads <repo>/text_encoder/
    write_text_encoder(repo / "text_encoder", seed=11)
    return repo


def _ids(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (batch, 77), generator=g)
    ids[:, 0] = 0  # BOS, as the tokenizer writes it
    return ids


def test_wrapper_on_cpu_returns_exactly_the_last_hidden_state(encoder_folder: Path) -> None:
    encoder = load_text_encoder(encoder_folder, torch.device("cpu"), torch.float32)
    wrapped = CudaGraphTextEncoder(encoder)
    ids = _ids(2, 0)
    with torch.inference_mode():
        expected = encoder(ids)[0]
        got = wrapped(ids)
        full = wrapped(ids, output_hidden_states=True)  # other arguments: the module's own output
    assert isinstance(got, tuple) and len(got) == 1
    assert got[0].shape == (2, 77, encoder.config.hidden_size)
    assert torch.equal(got[0], expected)
    assert len(full.hidden_states) == encoder.config.num_hidden_layers + 1
    assert wrapped.graph_count == 0 and wrapped.captures == 0
    assert wrapped.config is encoder.config


def test_accelerator_wraps_only_a_cuda_text_encoder_with_graphs_on(encoder_folder: Path) -> None:
    encoder = load_text_encoder(encoder_folder, torch.device("cpu"), torch.float32)
    assert Accelerator(AccelOptions()).text_encoder(encoder) is encoder  # on CPU: the module itself
    assert Accelerator(AccelOptions(cuda_graphs=False)).text_encoder(encoder) is encoder


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """The same kernels on the same inputs: equal up to fp16 rounding (a stale input would be off by O(1))."""
    assert got.shape == expected.shape
    assert (got.float() - expected.float()).abs().max().item() <= 2e-3 * expected.float().abs().max().item()


@pytest.mark.gpu
def test_text_encoder_graph_replays_new_prompts_like_eager(encoder_folder: Path) -> None:
    encoder = load_text_encoder(encoder_folder, torch.device("cuda"), torch.float16)
    accelerator = Accelerator(AccelOptions())
    wrapped = accelerator.text_encoder(encoder)
    assert isinstance(wrapped, CudaGraphTextEncoder) and accelerator.text_encoder(encoder) is wrapped
    with torch.inference_mode():
        for seed in (1, 2, 3):  # the first call captures, the next ones replay with new token ids
            ids = _ids(2, seed).cuda()
            got = wrapped(ids)[0]
            expected = encoder(ids)[0]
            _assert_close(got, expected)
        one = _ids(1, 4).cuda()  # a new shape: a second graph
        _assert_close(wrapped(one)[0], encoder(one)[0])
    assert wrapped.captures == 2 and wrapped.graph_count == 2
    assert accelerator.graphs(encoder) is wrapped
    encoder.float()  # weights move (as on an offload and back): the graphs go
    with torch.inference_mode():
        ids = _ids(2, 5).cuda()
        _assert_close(wrapped(ids)[0], encoder(ids)[0])
    assert wrapped.graph_count == 1 and wrapped.captures == 3
