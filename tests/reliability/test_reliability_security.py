"""Security: no pickle, no user-chosen repos unless allowed, capped uploads, generated file names, safe launch
settings, no secrets in logs."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sd2_app.errors import InvalidRequest, LoadError
from tests.reliability_report import reliability, track_module  # noqa: F401
from tests.reliability_support import app_launch_kwargs, make_service, one_thread, tiny, txt2img  # noqa: F401

AREA = "Security"
ROOT = Path(__file__).resolve().parents[2]
UNSAFE = re.compile(r"\btorch\.load\b|\bimport (c?pickle|dill|joblib)\b|\bpickle\.|allow_pickle\s*=\s*True|"
                    r"\bweights_only\s*=\s*False|\btorch\.hub\b")


def test_no_pickle_in_the_package_source(reliability) -> None:
    files = sorted((ROOT / "sd2_app").rglob("*.py")) + [ROOT / "app.py"]
    hits = [f"{path.relative_to(ROOT)}:{n}" for path in files
            for n, line in enumerate(path.read_text().splitlines(), 1) if UNSAFE.search(line.split("#")[0])]
    assert len(files) > 50 and hits == []
    # The pattern does find what it looks for (so an empty result means something).
    assert UNSAFE.search("state = torch.load(path)") and UNSAFE.search("import pickle")
    reliability(AREA, f"grep of {len(files)} package files for torch.load / pickle / allow_pickle / torch.hub",
                "no match")


@pytest.mark.parametrize("suffix", [".bin", ".ckpt", ".pt"])
def test_loaders_refuse_pickle_weights(reliability, tmp_path: Path, suffix: str) -> None:
    from sd2_app.loading import load_unet, load_vae, resolve_repo
    from tests.pipeline_fixtures import tiny_repo

    source = tiny_repo("sd2-base")
    shutil.copy(source / "model_index.json", tmp_path)
    for component in ("unet", "vae"):
        (tmp_path / component).mkdir()
        shutil.copy(source / component / "config.json", tmp_path / component)
        (tmp_path / component / f"diffusion_pytorch_model{suffix}").write_bytes(b"\x80\x04not really a pickle")
    expected = f"{tmp_path}: unet/diffusion_pytorch_model{suffix}: pickle checkpoints are not loaded; safetensors only"
    for load in (lambda: resolve_repo(tmp_path, ["unet"]), lambda: load_unet(tmp_path, torch.device("cpu"), torch.float32)):
        with pytest.raises(LoadError) as caught:
            load()
        assert str(caught.value) == expected
    with pytest.raises(LoadError, match="vae/diffusion_pytorch_model.* pickle checkpoints are not loaded"):
        load_vae(tmp_path, torch.device("cpu"), torch.float32)
    reliability(AREA, f"a repo whose weights are {suffix} files", f"LoadError: ...unet/diffusion_pytorch_model{suffix}: "
                "pickle checkpoints are not loaded; safetensors only")


def test_hub_download_patterns_never_fetch_pickles(reliability) -> None:
    from sd2_app.loading.hub import allow_patterns

    patterns = allow_patterns(["unet", "vae", "text_encoder", "tokenizer", "scheduler"])
    assert not [p for p in patterns if p.endswith(("*", ".bin", ".ckpt", ".pt", ".pth", ".pkl"))]
    assert "unet/*.safetensors" in patterns and not any(p.startswith("*") for p in patterns)
    reliability(AREA, "Hub download patterns", f"only json/txt/safetensors per subfolder ({len(patterns)} patterns)")


def test_custom_repos_are_off_by_default_and_allow_listed_by_the_operator(
    reliability, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sd2_app.api.service import Service

    monkeypatch.delenv("SD2APP_ALLOWED_REPOS", raising=False)
    closed = Service(None, outputs_dir=None)
    with pytest.raises(InvalidRequest) as caught:
        closed.validate(replace(txt2img(), checkpoint="someone/custom-sd2"))
    assert str(caught.value) == ("Custom model repos such as 'someone/custom-sd2' are not allowed on this server; the "
                                 "operator can allow some with SD2APP_ALLOWED_REPOS.")
    reliability(AREA, "user-supplied repo id, no allow-list (default)", f"refused: {caught.value}")

    monkeypatch.setenv("SD2APP_ALLOWED_REPOS", "someone/custom-sd2, ../../etc/passwd, /abs/folder, bad id/x")

    from sd2_app.checkpoints.catalog import REGISTRY
    from tests.ui_doubles import FakeManager

    manager = FakeManager()  # only the registry matters here
    manager.registry = dict(REGISTRY)
    opened = Service(manager, outputs_dir=None)
    checked, _ = opened.validate(replace(txt2img(), checkpoint="someone/custom-sd2"))
    assert checked.checkpoint == "someone/custom-sd2" and manager.registry["someone/custom-sd2"].repos == (
        "someone/custom-sd2",)
    assert ("someone/custom-sd2 (custom)", "someone/custom-sd2") in opened.checkpoints("txt2img")
    assert set(opened.registry) - set(REGISTRY) == {"someone/custom-sd2"}  # paths and bad ids were dropped
    with pytest.raises(InvalidRequest, match="Custom model repos such as 'someone/other' are not allowed"):
        opened.validate(replace(txt2img(), checkpoint="someone/other"))
    with pytest.raises(InvalidRequest, match="Custom model repos such as '../../etc/passwd' are not allowed"):
        opened.validate(replace(txt2img(), checkpoint="../../etc/passwd"))
    reliability(AREA, "SD2APP_ALLOWED_REPOS='someone/custom-sd2, ../../etc/passwd, /abs/folder, bad id/x'",
                "only someone/custom-sd2 becomes selectable (txt2img/img2img); other repo ids and every path refused")


def test_output_file_names_never_come_from_the_prompt(one_thread: None, reliability, tmp_path: Path) -> None:
    service, _ = make_service(outputs=tmp_path / "outputs")
    names: list[str] = []
    for prompt in ("../../../etc/passwd", "/tmp/evil.png", "con:aux\\..\\x", "a\nb\x00c"):
        result = service.run(txt2img(prompt))
        assert result.saved and all(p.resolve().is_relative_to((tmp_path / "outputs").resolve()) for p in result.saved)
        names += [p.name for p in result.saved]
    assert all(re.fullmatch(r"\d{5}-\d+-[a-z0-9]+(-mask|-depth)?\.png", name) for name in names), names
    assert sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.png")) == ["outputs"] * 4
    reliability(AREA, "prompts '../../../etc/passwd', '/tmp/evil.png', 'con:aux\\..\\x'",
                f"files stay in the outputs folder with generated names, e.g. {names[0]}")


def test_launch_settings_are_safe(reliability) -> None:
    kwargs = app_launch_kwargs(["--tiny"])
    assert kwargs["allowed_paths"] == [] and "blocked_paths" not in kwargs
    assert kwargs["show_error"] is False and kwargs["enable_monitoring"] is False
    assert kwargs["max_file_size"] == 25 * 2**20 and kwargs["share"] is False and kwargs["server_name"] == "127.0.0.1"
    assert kwargs["run_history"] is False and kwargs["auth"] is None
    reliability(AREA, "app.py launch settings", "allowed_paths=[], show_error=False (our gr.Error messages only), "
                "enable_monitoring=False, max_file_size=25 MiB, share=False, server_name='127.0.0.1' by default")


def test_host_follows_gradio_server_name_as_spaces_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hugging Face Spaces set GRADIO_SERVER_NAME=0.0.0.0; passing 127.0.0.1 explicitly would make the Space unreachable.
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert app_launch_kwargs(["--tiny"])["server_name"] == "0.0.0.0"
    assert app_launch_kwargs(["--tiny", "--host", "127.0.0.1"])["server_name"] == "127.0.0.1"


def test_the_upload_pixel_cap_is_set_before_any_upload(reliability, monkeypatch: pytest.MonkeyPatch) -> None:
    import app
    from PIL import Image

    from sd2_app import webapp

    built: list[object] = []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setattr("sd2_app.api.engine.ModelManager", lambda *a, **k: built.append(k) or type("M", (), {
        "registry": {}})())
    monkeypatch.setattr(webapp, "build_ui", lambda service, **k: type("Demo", (), {"queue": lambda self, **k: self})())
    webapp.build(app.parse_args(["--max-side", "768", "--no-api"]))  # the API needs the real app's queue limits
    assert Image.MAX_IMAGE_PIXELS == 2048 * 2048 and built
    reliability(AREA, "PIL pixel cap", f"webapp.build sets PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} (the upload "
                "limit): PIL refuses to open anything over twice that; validation refuses over it from the header")


def test_no_token_in_logs_or_messages(tiny, reliability, caplog: pytest.LogCaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    service, manager = tiny
    marker = "hf_SECRETMARKER0123456789abcdef"
    monkeypatch.setenv("HF_TOKEN", marker)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", marker)
    spec = manager.registry["sd2"]
    manager.registry["sd2"] = replace(spec, repos=("nobody/private-sd2", "/nonexistent/folder"), revision="main")
    messages: list[str] = []
    try:
        with caplog.at_level(logging.DEBUG):
            for name in ("huggingface_hub", "httpx", "urllib3", "sd2_app"):
                logging.getLogger(name).setLevel(logging.DEBUG)
            with pytest.raises(LoadError) as caught:
                service.run(replace(txt2img(), checkpoint="sd2"))
            messages.append(str(caught.value))
            result = service.run(txt2img())
            messages += [result.parameters, *result.warnings, str(service.status())]
    finally:
        manager.registry["sd2"] = spec
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 3 and "nobody/private-sd2" in logged  # the load was logged, in detail
    assert marker not in logged and not any(marker in m for m in messages) and marker not in caplog.text
    reliability(AREA, "HF_TOKEN set to a marker; a failed (offline) Hub load and a run, logs at DEBUG",
                f"marker absent from {len(caplog.records)} log records, the error and the result")
