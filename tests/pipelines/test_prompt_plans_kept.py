"""A Service's `PromptPlans` (sd2_app/pipelines/prompt_plan.py): a plan made once is given back for the very same
inputs, and only for them (prompt, negative prompt, guidance, schedule, hires pass, tokenizer source,
embeddings), within a bound. Plans computed are counted at `prompt_plan.tokenize_prompts` (one call per plan);
the tiny checkpoints' tokenizers, no model."""

from __future__ import annotations

import numpy as np
import pytest

from sd2_app.errors import InvalidRequest
from sd2_app.loading.embeddings import TextualInversion
from sd2_app.pipelines.prompt_plan import PlotTextRefused, PromptPlans, PromptSteps, ReadBudget, plan_prompts
from tests.pipeline_fixtures import count_plans


@pytest.fixture(scope="module")
def tokenizers():  # two checkpoints' tokenizers: the same tiny files, two folders
    from sd2_app.checkpoints.catalog import tiny_registry
    from sd2_app.loading.repo_attempts import load_tokenizer_only
    from sd2_app.testing.tiny import ensure_tiny_repos
    from tests.pipeline_fixtures import tiny_dir

    registry = tiny_registry(ensure_tiny_repos(tiny_dir()))
    return load_tokenizer_only(registry["sd21-base"], registry), load_tokenizer_only(registry["sd21"], registry)


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The texts of every plan computed from now on."""
    return count_plans(monkeypatch)


def _embedding(name: str) -> TextualInversion:
    return TextualInversion(name, np.zeros((1, 32), np.float32), "c" * 12)


def test_the_same_inputs_get_the_plan_made_first(tokenizers, planned) -> None:
    tokenizer, _ = tokenizers
    plans = PromptPlans()
    first = plans.plan(tokenizer, "a [cat|dog]", "blurry", use_cfg=True, steps=PromptSteps(4))
    again = plans.plan(tokenizer, "a [cat|dog]", "blurry", use_cfg=True, steps=PromptSteps(4))
    assert again is first and len(planned) == 1 and len(plans) == 1
    fresh = plan_prompts(tokenizer, "a [cat|dog]", "blurry", use_cfg=True, steps=PromptSteps(4))
    assert (first.pairs, first.order, list(first.texts)) == (fresh.pairs, fresh.order, list(fresh.texts))
    assert first.order == (0, 0, 1, 0)  # A1111: call 0 reads step 1's text


def test_any_other_input_is_planned_anew(tokenizers, planned) -> None:
    tokenizer, other_checkpoints = tokenizers
    plans = PromptPlans()
    base = {"use_cfg": True, "steps": PromptSteps(4)}
    made = [plans.plan(tokenizer, "[a:b:2]", "n", **base),
            plans.plan(tokenizer, "[a:c:2]", "n", **base),  # prompt
            plans.plan(tokenizer, "[a:b:2]", "m", **base),  # negative prompt
            plans.plan(tokenizer, "[a:b:2]", "n", use_cfg=False, steps=PromptSteps(4)),  # guidance
            plans.plan(tokenizer, "[a:b:2]", "n", use_cfg=True, steps=PromptSteps(6)),  # steps
            plans.plan(tokenizer, "[a:b:2]", "n", use_cfg=True, steps=PromptSteps(4, 4)),  # a hires second pass
            plans.plan(other_checkpoints, "[a:b:2]", "n", **base)]  # another checkpoint's tokenizer
    assert len(planned) == 7 and len(plans) == 7
    # A1111's pick: calls 0-2 read "a" (step 2's text); the hires pass counts on from the first pass's 4 calls
    assert [plan.order for plan in made] == [(0, 0, 0, 1)] * 4 + [(0, 0, 0, 1, 1, 1), (0, 0, 0, 0), (0, 0, 0, 1)]
    assert [list(plan.texts) for plan in made] == [["a", "n", "b"], ["a", "n", "c"], ["a", "m", "b"], ["a", "b"],
                                                   ["a", "n", "b"], ["b", "n"], ["a", "n", "b"]]


def test_a_plan_is_kept_for_the_very_embeddings_it_read(tokenizers, planned) -> None:
    tokenizer, _ = tokenizers
    plans = PromptPlans()
    style = _embedding("style")
    with_style = plans.plan(tokenizer, "a style hat", "", use_cfg=True, steps=PromptSteps(2),
                            embeddings={"style": style})
    assert plans.plan(tokenizer, "a style hat", "", use_cfg=True, steps=PromptSteps(2),
                      embeddings={"style": style}) is with_style
    assert [e.name for e in with_style.embeddings()] == ["style"]
    reread = plans.plan(tokenizer, "a style hat", "", use_cfg=True, steps=PromptSteps(2),
                        embeddings={"style": _embedding("style")})  # the library read again: new objects
    without = plans.plan(tokenizer, "a style hat", "", use_cfg=True, steps=PromptSteps(2))
    more = plans.plan(tokenizer, "a style hat", "", use_cfg=True, steps=PromptSteps(2),
                      embeddings={"style": style, "hat": _embedding("hat")})
    assert len(planned) == 4
    assert reread.embeddings()[0] is not style and without.embeddings() == []
    assert [e.name for e in more.embeddings()] == ["style", "hat"]


def test_the_plans_kept_are_bounded_in_chunks_least_recently_used_out_first(tokenizers, planned) -> None:
    tokenizer, _ = tokenizers
    plans = PromptPlans(max_chunks=6)  # guided one-chunk prompts with one negative: 2 chunks per plan
    for word in ("a", "b", "c"):
        plans.plan(tokenizer, word, "n", use_cfg=True, steps=PromptSteps(2))
    plans.plan(tokenizer, "a", "n", use_cfg=True, steps=PromptSteps(2))  # "a" used again: "b" is the oldest
    plans.plan(tokenizer, "d", "n", use_cfg=True, steps=PromptSteps(2))  # 8 chunks: "b" goes
    assert len(plans) == 3 and len(planned) == 4
    plans.plan(tokenizer, "a", "n", use_cfg=True, steps=PromptSteps(2))
    assert len(planned) == 4
    plans.plan(tokenizer, "b", "n", use_cfg=True, steps=PromptSteps(2))
    assert len(planned) == 5 and planned[-1] == ["b", "n"]


def test_a_refused_prompt_is_not_kept(tokenizers, planned) -> None:
    tokenizer, _ = tokenizers
    plans = PromptPlans()
    too_long = " BREAK ".join(["cat"] * 9)
    for _ in range(2):
        with pytest.raises(InvalidRequest, match="^The prompt is too long: it makes 9 chunks"):
            plans.plan(tokenizer, too_long, "", use_cfg=True, steps=PromptSteps(2))
    assert len(planned) == 2 and len(plans) == 0


def test_a_read_budget_counts_kept_plans_as_read_and_refuses_before_reading_past_it(tokenizers, planned) -> None:
    """A plot's `ReadBudget` counts each plan's distinct texts ("a cat" 5, "a dog" 5, "blurry" 6: 16 characters),
    a kept plan's as well, so a plot gets the same answer whatever was planned before; the plan that would pass
    the limit is refused before its texts are tokenized."""
    tokenizer, _ = tokenizers
    plans = PromptPlans()
    budget = ReadBudget(40)
    plans.plan(tokenizer, "a [cat|dog]", "blurry", use_cfg=True, steps=PromptSteps(4), budget=budget)
    plans.plan(tokenizer, "a [cat|dog]", "blurry", use_cfg=True, steps=PromptSteps(4), budget=budget)  # kept
    assert (budget.spent, len(planned)) == (32, 1)
    with pytest.raises(PlotTextRefused, match="more than 40 characters"):
        plans.plan(tokenizer, "a [cow|pig]", "blurry", use_cfg=True, steps=PromptSteps(4), budget=budget)
    assert (budget.spent, len(planned)) == (48, 1)  # counted, not tokenized
