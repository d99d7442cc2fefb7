"""The Service's kept prompt plans (sd2_app/pipelines/prompt_plan.py, `PromptPlans`) reach the pipeline only for the
inputs they were made from: a request validated and then run is planned once, and a run whose embeddings
library or checkpoint tokenizer changed after its validation is planned again, giving exactly the image a
Service that always had the new one gives. On the tiny checkpoints (CPU); plans computed are counted at
`prompt_plan.tokenize_prompts` (one call each)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd2_app.api.checked import check
from sd2_app.loading.embeddings import EmbeddingLibrary, TextualInversion
from sd2_app.api.requests import Txt2ImgRequest
from tests.pipeline_fixtures import count_plans
from tests.reliability_support import fast, make_service, one_thread  # noqa: F401  # one_thread: fixture

PROMPT = "a style hat on a [cat:dog:0.5]"


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The texts of every plan computed from now on."""
    return count_plans(monkeypatch)


def _library(seed: int) -> EmbeddingLibrary:
    vectors = np.random.default_rng(seed).normal(0.0, 1.0, (2, 32)).astype(np.float32)
    return EmbeddingLibrary(None, {"style": TextualInversion("style", vectors, f"{seed:012d}")})


def _request() -> Txt2ImgRequest:
    return Txt2ImgRequest(PROMPT, checkpoint="sd21-base", width=64, height=64, sampling=fast(4, steps=4, cfg_scale=7.0))


def _pixels(result) -> bytes:
    return result.images[0].tobytes()


def test_a_validated_request_runs_on_the_plan_its_validation_made(one_thread, planned) -> None:
    service, _ = make_service(embeddings=_library(1))
    checked, _ = service.validate(_request())
    service.validate(_request())  # ZeroGPU's estimate validates the same request before the run does
    result = service.execute(checked)
    assert planned == [["a style hat on a cat", "", "a style hat on a dog"]]
    assert "TI hashes: \"style: 000000000001\"" in result.images[0].info["parameters"]


def test_embeddings_changed_after_validation_are_planned_again(one_thread, planned, tmp_path: Path) -> None:
    """The embeddings folder's file rewritten between the check and the run, and the folder read again (as a
    change is, `sd2_app.api.watched_folder`): the run plans again with the new vectors."""
    _save(tmp_path, 1)
    service, _ = make_service(embeddings=EmbeddingLibrary.scan(tmp_path))
    checked, _ = service.validate(_request())
    before = service.execute(checked)
    assert len(planned) == 1
    _save(tmp_path, 2)
    library = service.embedding_library(refresh=True)
    swapped = service.execute(checked)
    assert len(planned) == 2  # the run did not take the plan made with the old library
    always, _ = make_service(embeddings=EmbeddingLibrary.scan(tmp_path))
    assert _pixels(swapped) == _pixels(always.run(_request()))
    assert _pixels(swapped) != _pixels(before)
    shorthash = library.embeddings["style"].shorthash
    assert f"TI hashes: \"style: {shorthash}\"" in swapped.images[0].info["parameters"]


def _save(folder: Path, seed: int) -> None:
    """The embedding "style" of `_library(seed)` written as A1111's file into `folder`."""
    save_file({"emb_params": torch.from_numpy(_library(seed).embeddings["style"].vectors)},
              str(folder / "style.safetensors"))


def test_a_tokenizer_of_another_source_at_run_time_is_planned_again(one_thread, planned) -> None:
    """The checkpoint loaded from another folder between the check and the run (here: its tokenizer read from
    the tiny sd21 repo instead of sd2-base's; the same files, so the same image)."""
    from sd2_app.loading.tokenizer import load_tokenizer

    service, manager = make_service()
    checked, _ = service.validate(_request())
    use = manager.use
    other = load_tokenizer(manager.registry["sd21"].repos[0])

    @contextmanager
    def swapped_use(key, on_progress=None):
        with use(key, on_progress) as components:
            yield replace(components, tokenizer=other)

    manager.use = swapped_use  # type: ignore[method-assign]
    swapped = service.execute(checked)
    assert len(planned) == 2
    manager.use = use  # type: ignore[method-assign]
    assert _pixels(swapped) == _pixels(service.execute(checked))
    assert len(planned) == 2  # that run took the plan of the validation (same tokenizer source)


@pytest.mark.slow
def test_a_checked_request_run_in_another_process_takes_the_plans_it_carries(one_thread, planned) -> None:
    """ZeroGPU's worker may be one forked before the request came (a worker serves call after call), whose copy of
    the plans lacks the ones the app's validation made: the `Checked` request carries them as plain data (pickled
    into the worker's call) and the run there takes them: one plan in all (before: the worker planned again, 2).
    A Service made apart, with the same embeddings read again, stands in for that worker."""
    service, _ = make_service(embeddings=_library(1))
    worker, _ = make_service(embeddings=_library(1))
    checked = pickle.loads(pickle.dumps(check(service, _request())))
    result = worker.run(checked)
    assert planned == [["a style hat on a cat", "", "a style hat on a dog"]]
    assert _pixels(result) == _pixels(service.run(_request()))
    assert "TI hashes: \"style: 000000000001\"" in result.images[0].info["parameters"]


@pytest.mark.slow
def test_plans_carried_from_another_library_are_not_taken(one_thread, planned) -> None:
    """A worker whose embeddings differ from the ones the plans read (the library read again in between) plans
    anew, giving the image a Service that always had its library gives."""
    service, _ = make_service(embeddings=_library(1))
    worker, _ = make_service(embeddings=_library(2))
    checked = pickle.loads(pickle.dumps(check(service, _request())))
    result = worker.run(checked)
    assert len(planned) == 2
    always, _ = make_service(embeddings=_library(2))
    assert _pixels(result) == _pixels(always.run(_request()))
    assert "TI hashes: \"style: 000000000002\"" in result.images[0].info["parameters"]


@pytest.mark.slow
def test_a_zerogpu_worker_kept_for_the_next_call_does_not_plan_its_prompts_again(
        one_thread, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the forking `spaces` double whose worker serves the next call too (tests/zerogpu_double.py, `reuse`), as
    ZeroGPU's idle worker does: the second request was checked, and planned, after the worker was forked. Plans
    computed in either process are counted (a line each in a file): each request planned once, by the app's check
    (before, the worker planned the second request again)."""
    from sd2_app.api.gpu_call import GpuCall
    from sd2_app.pipelines import prompt_plan
    from tests.zerogpu_double import forking_spaces_gpu

    durations: list[int] = []
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=forking_spaces_gpu(durations, reuse=True)))
    planned = tmp_path / "planned.jsonl"
    tokenize = prompt_plan.tokenize_prompts

    def counted(tokenizer, texts, embeddings=None):
        with open(planned, "a", encoding="utf-8") as log:
            log.write(json.dumps([os.getpid(), list(texts)]) + "\n")
        return tokenize(tokenizer, texts, embeddings)

    monkeypatch.setattr(prompt_plan, "tokenize_prompts", counted)
    service, _ = make_service(embeddings=_library(1))
    call = GpuCall(service, service.run)
    for prompt in (PROMPT, "a style boot on a [cat|dog]"):
        call.run(check(service, replace(_request(), prompt=prompt)), owner="visitor")
    assert durations == [15, 15]
    lines = [json.loads(line) for line in planned.read_text(encoding="utf-8").splitlines()]
    assert lines == [[os.getpid(), ["a style hat on a cat", "", "a style hat on a dog"]],
                     [os.getpid(), ["a style boot on a cat", "", "a style boot on a dog"]]]
