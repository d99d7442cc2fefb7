"""The host side of prompt editing (`sd2_app.pipelines.prompt_plan`, no torch): the phase of each UNet call in one
pass over the schedules, equal to the former search of every call over every entry, and the limits checked
before any model (the tiny checkpoint's tokenizer)."""

from __future__ import annotations

import pytest

from sd2_app.api.requests import HiresFix, Sampling
from sd2_app.errors import InvalidRequest
from sd2_app.pipelines.prompt_plan import (
    call_phases, hires_prompt_steps, plan_prompts, prompt_steps, PromptSteps, unet_calls,
)
from sd2_app.prompt_editing import Schedule, prompt_schedule
from sd2_app.prompt_syntax import subprompts


def _phases_by_search(schedules: list[Schedule], calls: int) -> tuple[list[tuple[str, ...]], tuple[int, ...]]:
    """The former `call_phases`: for every call, the first entry of each schedule whose last step is >= the call
    (else the last entry), and the phase's index found by a search of the phases so far."""
    def entry_at(schedule: Schedule, call: int) -> int:
        return next((i for i, (last, _) in enumerate(schedule) if call <= last), len(schedule) - 1)

    pairs: list[tuple[str, ...]] = []
    order = []
    for call in range(calls):
        pair = tuple(schedule[entry_at(schedule, call)][1] for schedule in schedules)
        if pair not in pairs:
            pairs.append(pair)
        order.append(pairs.index(pair))
    return pairs, tuple(order)


PROMPTS = [
    ("a cat", ""),
    ("a [cat:dog:3] on a hill", "blurry"),
    ("[a|b|c] [x:y:0.5]", "[ugly|bad]"),
    ("[red:blue:0.25] [big:[small:tiny:0.8]:0.5]", "[low:high:7]"),
    ("[p:q:1.5] [r|s]", "[n::4]"),
    ("[" + "|".join("abcdefg") + "] [u|v|w]", "[m:n:0.9]"),
    ("a [cat:dog:3] AND [x|y|z] hill:0.5 AND [p::0.4]", "[n:o:2]"),  # composable parts, each its own schedule
]
SAMPLINGS = [  # Euler one call a step; Heun and DPM2 two; img2img counts all its steps whatever the strength
    Sampling(sampler="Euler", steps=1), Sampling(sampler="Euler", steps=20), Sampling(sampler="Heun", steps=9),
    Sampling(sampler="DPM2", steps=150), Sampling(sampler="DPM++ 2M", steps=33),
]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=lambda s: f"{s.sampler}-{s.steps}")
@pytest.mark.parametrize("prompt, negative", PROMPTS)
def test_call_phases_equal_the_search_of_every_call(prompt: str, negative: str, sampling: Sampling) -> None:
    steps = [prompt_steps(sampling), hires_prompt_steps(sampling, HiresFix(steps=7, sampler="Heun")),
             hires_prompt_steps(sampling, HiresFix())]
    for run in steps:
        schedules = [prompt_schedule(text, run.calls, run.first_pass_calls)
                     for text in [*(part for part, _ in subprompts(prompt)), negative]]
        for calls in (run.calls, run.calls + 3):  # and past the schedules' end: their last entries
            assert call_phases(schedules, calls) == _phases_by_search(schedules, calls)


def test_two_calls_a_step_double_the_schedule() -> None:
    heun = Sampling(sampler="Heun", steps=4)
    assert unet_calls(heun) == 8 and prompt_steps(heun) == PromptSteps(8)
    schedule = prompt_schedule("[a:b:0.5]", 8)
    assert schedule == [(4, "a"), (8, "b")]
    assert call_phases([schedule, [(8, "")]], 8) == ([("a", ""), ("b", "")], (0, 0, 0, 0, 0, 1, 1, 1))


@pytest.fixture(scope="module")
def tokenizer():
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.loading.repo_attempts import load_tokenizer_only
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    return load_tokenizer_only(registry["sd21-base"], registry)


def test_the_plan_refuses_phases_times_chunks_over_the_limit(tokenizer) -> None:
    two_chunks = ", ".join(["a very detailed landscape"] * 4)
    prompt = "[" + "|".join(f"{two_chunks} w{i}" for i in range(33)) + "]"
    with pytest.raises(InvalidRequest) as refused:
        plan_prompts(tokenizer, prompt, "", use_cfg=True, steps=PromptSteps(40))
    assert str(refused.value) == ("The prompt editing and alternation make 33 different prompt pairs of 2 chunk(s) "
                                  "each; at most 64 pairs x chunks are allowed. Use fewer alternatives or shorter "
                                  "prompts.")
    # calls 0..32 read w0..w31: 32 pairs x 2 chunks = 64, allowed
    plan = plan_prompts(tokenizer, prompt, "", use_cfg=True, steps=PromptSteps(33))
    assert len(plan.pairs) == 32 and plan.chunks == 2 and len(plan.texts) == 33  # and the empty negative


def test_the_negative_prompt_is_read_only_with_guidance(tokenizer) -> None:
    too_long = " BREAK ".join(["cat"] * 9)
    plan = plan_prompts(tokenizer, "a cat", too_long, use_cfg=False, steps=PromptSteps(4))
    assert list(plan.texts) == ["a cat"]
    with pytest.raises(InvalidRequest, match="^The negative prompt is too long: it makes 9 chunks"):
        plan_prompts(tokenizer, "a cat", too_long, use_cfg=True, steps=PromptSteps(4))


def test_a_composable_prompt_plans_each_part_with_its_own_schedule(tokenizer) -> None:
    """A1111's AND: each part has its own schedule and weight; a phase is a text of each part and the negative
    prompt's, in that order; extra networks are taken out before the cut."""
    plan = plan_prompts(tokenizer, "a cat <lora:x:1> AND a [dog:fox:2] :0.7", "blurry", use_cfg=True,
                        steps=PromptSteps(4))
    assert plan.pairs == [("a cat", "a dog", "blurry"), ("a cat", "a fox", "blurry")]
    assert plan.order == (0, 0, 0, 1) and plan.weights == (1.0, 0.7)
    assert list(plan.texts) == ["a cat", "a dog", "blurry", "a fox"]
    assert plan.read(plan.pairs[1]) == [plan.texts[text] for text in ("a cat", "a fox", "blurry")]
    plain = plan_prompts(tokenizer, "a cat", "blurry", use_cfg=True, steps=PromptSteps(4))
    assert plain.pairs == [("a cat", "blurry")] and plain.weights == (1.0,)


@pytest.mark.parametrize(("prompt", "use_cfg", "message"), [
    (" AND ".join(f"p{i}" for i in range(9)), True,
     "The prompt has 9 different parts joined by AND; at most 8 are allowed."),
    ("a cat AND a dog", False,
     "The prompt's parts joined by AND need classifier-free guidance: set the CFG scale above 1."),
    ("a photo, 16:9", False, "The prompt's weight 9 (the number after its last colon) needs classifier-free "
                             "guidance: set the CFG scale above 1."),
    ("a clock at 10:30 AND a cat:-0.5", True, 'The prompt\'s part "a clock at 10" has weight 30 (the number after '
                                             "its last colon, as A1111 reads it); a part's weight is limited to ±10. "
                                             'End it with "," to keep the number as text.'),
    (" AND ".join(f"[a{i}|b{i}|c{i}]" for i in range(3)) + " [x|y|z|w|v|u|t|s]", True,
     "The prompt's 3 parts joined by AND, with its prompt editing and alternation, make 24 different steps of 1 "
     "chunk(s) per part; at most 64 steps x parts x chunks are allowed. Use fewer parts, fewer alternatives or "
     "shorter prompts."),
])
def test_composable_prompts_are_refused_past_their_limits(tokenizer, prompt: str, use_cfg: bool,
                                                           message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        plan_prompts(tokenizer, prompt, "", use_cfg=use_cfg, steps=PromptSteps(30))
    assert str(refused.value) == message
    assert len(plan_prompts(tokenizer, " AND ".join(f"p{i}" for i in range(8)), "", use_cfg=True,
                            steps=PromptSteps(30)).weights) == 8
    assert plan_prompts(tokenizer, "a:10 AND b:-10", "", use_cfg=True, steps=PromptSteps(3)).weights == (10, -10)
