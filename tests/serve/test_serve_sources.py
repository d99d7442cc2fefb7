"""A Serve deployment's checkpoint sources (repos, revisions, tiny, allowed_repos) come from its settings only:
the front end (`app.py --serve`, which reads the tokenizers) and every replica (which loads the weights) build
their registries from one `ServeConfig`, and the front end refuses the flags that would set its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sd2_app.checkpoints.catalog import REGISTRY
from sd2_app.errors import InvalidRequest
from sd2_app.serve.config import load_config, process_sources
from tests.reliability_support import linked_tiny_cache

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ('[serve]\ndevice = "cpu"\ndtype = "float32"\nrepos = ["sd21-base=me/sd21-mirror,me/other"]\n'
           'revisions = ["sd21-base=0123abcd", "x4-upscaler=main"]\nallowed_repos = ["me/custom-sd2"]\n')


def refusal(path: Path, text: str) -> str:
    path.write_text("[serve]\n" + text + "\n")
    with pytest.raises(InvalidRequest) as refused:
        load_config(path)
    return str(refused.value)


def test_the_settings_read_revisions_and_refuse_malformed_ones(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(SOURCES)
    config = load_config(path)
    assert config.repos == ("sd21-base=me/sd21-mirror,me/other",)
    assert config.revisions == ("sd21-base=0123abcd", "x4-upscaler=main")
    assert config.allowed_repos == ("me/custom-sd2",)
    assert config.checkpoint_sources() == {"repos": config.repos, "revisions": config.revisions, "tiny": False,
                                           "allowed_repos": config.allowed_repos, "checkpoints_dir": "checkpoints"}
    assert load_config().revisions == () and load_config().allowed_repos == ()
    assert refusal(path, 'revisions = ["sd21-base"]') == "serve config: revisions: expected KEY=VALUE, got 'sd21-base'"
    assert refusal(path, 'revisions = ["sd21-base= "]') == (
        "serve config: revisions: expected KEY=VALUE, got 'sd21-base= '")
    assert refusal(path, 'revisions = ["sd3=abc"]') == (
        f"serve config: revisions: unknown checkpoint 'sd3'; known: {', '.join(REGISTRY)}")
    assert refusal(path, 'revisions = "sd21-base=abc"') == (
        "serve config: revisions must be a list of strings, not 'sd21-base=abc'")
    assert refusal(path, "revisions = [1]") == "serve config: revisions must be a list of strings, not [1]"
    assert refusal(path, 'repos = ["sd21-base"]') == "serve config: repos: expected KEY=VALUE, got 'sd21-base'"
    assert refusal(path, 'allowed_repos = ["../etc/x"]') == (
        "serve config: allowed_repos takes owner/name Hub repo ids, not '../etc/x'")


@pytest.mark.parametrize(("flags", "message"), [
    (["--repo", "sd21-base=me/mirror"], '--repo is refused with --serve: the replicas load the weights and this '
     'front end reads the tokenizers, both from the deployment\'s settings: set repos = ["KEY=REPO"] in '
     '--serve-config (deploy/serve.toml) instead'),
    (["--revision", "sd21-base=0123abcd"], '--revision is refused with --serve: the replicas load the weights and '
     'this front end reads the tokenizers, both from the deployment\'s settings: set revisions = ["KEY=REV"] in '
     '--serve-config (deploy/serve.toml) instead'),
], ids=["repo", "revision"])
def test_the_app_refuses_repo_and_revision_with_serve(flags: list[str], message: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from sd2_app.app_flags import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(["--serve", "auto", *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].split(": error: ", 1)[1] == message
    assert parse_args(flags).serve is None  # without --serve they set this process's own checkpoints


@pytest.mark.parametrize("name", ["SD2APP_ALLOWED_REPOS", "SD2APP_REPO_SD21_BASE", "SD2APP_REVISION_SD21_BASE"])
def test_the_front_end_and_the_replicas_refuse_source_variables(name: str, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """These variables choose checkpoints for the process that reads them only: with Serve the front end and
    each replica would disagree, so both refuse to start with them."""
    from sd2_app.app_flags import parse_args
    from sd2_app.serve.replica import engine_settings

    monkeypatch.setenv(name, "me/custom-sd2")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--serve", "auto"])
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].split(": error: ", 1)[1] == (
        f"setting {name} in the environment is refused with --serve: the replicas load the weights and this front "
        "end reads the tokenizers, both from the deployment's settings: set repos, revisions or allowed_repos in "
        "--serve-config (deploy/serve.toml) instead")
    with pytest.raises(InvalidRequest) as refused:
        engine_settings(load_config())
    assert str(refused.value) == (
        f"serve replica: {name} in its environment would choose checkpoints for this replica only (not the front "
        "end's tokenizers, not the other replicas): set repos, revisions or allowed_repos in the deployment's "
        "settings (deploy/serve.toml) instead")
    assert parse_args([]).serve is None  # without --serve they are this process's own
    monkeypatch.setenv(name, " ")
    if name == "SD2APP_REVISION_SD21_BASE":  # an empty revision still unpins (catalog.apply_overrides)
        assert process_sources() == [name]
    else:  # an empty repo or list changes nothing
        assert parse_args(["--serve", "auto"]).serve == "auto" and process_sources() == []


@pytest.mark.parametrize("tiny", [False, True])
def test_the_front_end_and_a_replica_build_one_registry(tiny: bool, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """The front end's Service (as `webapp.build` makes it with --serve, the Ray connection stood in for) and a
    replica's Service, each from the same settings file: the same CheckpointSpec for every key."""
    pytest.importorskip("ray.serve")
    import app
    from sd2_app import webapp
    from sd2_app.serve import backend
    from sd2_app.serve.replica import build_service

    linked_tiny_cache(monkeypatch, tmp_path)
    monkeypatch.setattr(backend, "connect", lambda address, config: object())
    path = tmp_path / "serve.toml"
    path.write_text(SOURCES)
    args = app.parse_args(["--serve", "auto", "--serve-config", str(path), "--no-save", *(["--tiny"] * tiny)])
    config = webapp.serve_config(args)
    front = webapp._serve_service(args.serve, config, webapp.engine_settings(args, config))
    replica = build_service(config)
    assert list(front.registry) == list(replica.registry) == [*REGISTRY, "me/custom-sd2"]
    assert front.registry == replica.registry and dict(front.manager.registry) == replica.manager.registry
    spec = front.registry["sd21-base"]
    if tiny:  # every checkpoint on its tiny repo, written under the cache both read
        assert Path(spec.repos[0]).parent == tmp_path / "tiny" and len(spec.repos) == 1 and spec.revision is None
    else:
        assert (spec.repos, spec.revision) == (("me/sd21-mirror", "me/other"), "0123abcd")
        assert front.registry["x4-upscaler"].revision == "main"
    assert front.registry["me/custom-sd2"].repos == ("me/custom-sd2",)


def test_the_shipped_file_documents_the_checkpoint_sources() -> None:
    text = (ROOT / "deploy" / "serve.toml").read_text()
    for name, flag in (("repos", "--repo"), ("revisions", "--revision"), ("allowed_repos", "SD2APP_ALLOWED_REPOS")):
        line = re.search(rf"^{name} = \[\] +# (.*)$", text, re.M)
        assert line is not None and f"{flag})" in line.group(1)  # its meaning, by what sets it without Serve
    config = load_config(ROOT / "deploy" / "serve.toml")
    assert (config.repos, config.revisions, config.allowed_repos) == ((), (), ())
