"""Spaces: the README's preload list matches what the loader reads, ZeroGPU durations follow each job's cost,
and ZeroGPU gets the per-call speed switches (no CUDA graphs, Triton or compile warm-up)."""

from __future__ import annotations

import inspect
import os
import sys
import types
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sd2_app.accel.options import AccelOptions, options_for
from sd2_app.accel.per_call import options_for_host, per_call_options
from sd2_app.api import gpu_time
from sd2_app.api.checks import Catalog
from sd2_app.api.cost import job_cost
from sd2_app.api.requests import Sampling, Txt2ImgRequest, UpscaleRequest

README = Path(__file__).resolve().parents[2] / "README.md"


def front_matter() -> dict:
    text = README.read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n")[1])


def test_preload_lists_exactly_the_files_the_loader_picks_for_the_default_checkpoint() -> None:
    """Hub docs (spaces-config-reference, preload_from_hub): "<repo> <file>,<file>..." per entry."""
    from sd2_app.api.tasks import TASKS
    from sd2_app.checkpoints.catalog import REGISTRY
    from sd2_app.loading.hub import select_files
    from sd2_app.manager.plan import subfolders

    spec = REGISTRY[TASKS["txt2img"].checkpoint]
    entries = dict(entry.split(" ", 1) for entry in front_matter()["preload_from_hub"])
    preloaded = entries[spec.repos[0]].split(",")
    # The repo also holds full-precision and pickle weights and a feature extractor: none of them is read.
    listing = preloaded + ["README.md", "feature_extractor/preprocessor_config.json",
                           "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin",
                           "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                           "text_encoder/pytorch_model.bin", "v2-1_512-ema-pruned.safetensors"]
    assert sorted(select_files(listing, subfolders(spec), spec.repos[0])) == sorted(preloaded)


def test_python_version_is_one_zerogpu_supports() -> None:
    # ZeroGPU's documented Python (hub-docs spaces-zerogpu.md, "Supported Versions"); see docs/DESIGN.md
    assert front_matter()["python_version"] == "3.10.13"
    assert front_matter()["sdk_version"].split(".")[0] == "6"


HEUN_TWO_CALLS = Catalog(samplers={}, resolutions={}, tasks={}, calls_per_step={"Heun": 2})


def test_gpu_seconds_grow_with_the_work_within_the_bounds() -> None:
    def t2i(side: int, steps: int, batch: int = 1, cfg: float = 7.5, sampler: str = "Euler") -> int:
        request = Txt2ImgRequest("x", width=side, height=side,
                                 sampling=Sampling(sampler=sampler, steps=steps, cfg_scale=cfg, batch_size=batch))
        return job_cost(request, HEUN_TWO_CALLS)

    assert t2i(512, 25) == 25 * 2 * 64 * 64  # steps x (cond + uncond) x latent pixels
    assert t2i(512, 25, cfg=1.0) == 25 * 64 * 64  # no guidance: one evaluation per step
    assert t2i(512, 25, sampler="Heun") == 2 * t2i(512, 25)
    assert gpu_time.gpu_seconds(t2i(512, 25)) == gpu_time.MIN_SECONDS  # a default image: 11 s, asked 15
    assert gpu_time.gpu_seconds(t2i(768, 50, batch=4)) == 29  # 10 + 3,686,400 x 5e-6 = 28.4
    from PIL import Image

    up = UpscaleRequest("x", image=Image.new("RGB", (256, 256)), sampling=Sampling(sampler="DDIM", steps=50, cfg_scale=9))
    assert job_cost(up, HEUN_TWO_CALLS) == 50 * 2 * 256 * 256  # the x4 model denoises at the input's size
    assert gpu_time.gpu_seconds(job_cost(up, HEUN_TWO_CALLS)) == 43
    assert gpu_time.gpu_seconds(t2i(1024, 150, batch=8)) == gpu_time.MAX_SECONDS


def test_zerogpu_is_detected_from_its_environment_variable() -> None:
    assert gpu_time.on_zerogpu({"SPACES_ZERO_GPU": "true"})
    assert not gpu_time.on_zerogpu({})


def test_speed_mode_on_zerogpu_is_the_per_call_set() -> None:
    per_call = per_call_options()
    assert (per_call.cuda_graphs, per_call.fused_ops, per_call.compile, per_call.cudnn_benchmark) == (False,) * 4
    assert per_call.channels_last and not per_call.vae_channels_last
    assert options_for_host("default", zerogpu=True) == per_call
    assert options_for_host("compile", zerogpu=True) == per_call  # ZeroGPU runs no torch.compile
    assert options_for_host("eager", zerogpu=True) == AccelOptions.eager()
    for mode in ("default", "compile", "eager"):
        assert options_for_host(mode, zerogpu=False) == options_for(mode)
    with pytest.raises(ValueError):
        options_for_host("fast", zerogpu=True)


@pytest.mark.slow
def test_app_picks_the_per_call_switches_on_zerogpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import app
    import sd2_app.api.engine as engine_module
    from sd2_app import webapp

    seen: list = []

    class Recorder(engine_module.ModelManager):
        def __init__(self, *args, **kwargs) -> None:
            seen.append(kwargs["accel"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine_module, "ModelManager", Recorder)  # the one place a manager is made
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # webapp.build lowers it; restored after
    from tests.reliability_support import linked_tiny_cache

    linked_tiny_cache(monkeypatch, tmp_path)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    webapp.build(app.parse_args(["--tiny", "--no-api"]))
    monkeypatch.delenv("SPACES_ZERO_GPU")
    webapp.build(app.parse_args(["--tiny", "--no-api"]))
    assert seen == [per_call_options(), options_for("default")]


def test_each_ui_call_asks_zerogpu_for_its_own_jobs_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the `spaces` package present, a Generate handler checks the request from the widget values, then calls
    a spaces.GPU function whose duration is a function of that checked request; a refused request asks for no GPU
    time at all (its message comes first)."""
    import gradio as gr

    asked: list[int] = []

    def fake_gpu(duration):  # records the duration asked; runs nothing on the "GPU"
        def wrap(fn):
            def on_gpu(*args, **kwargs):
                asked.append(duration(*args, **kwargs))
                return iter(())

            return on_gpu

        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu))
    from sd2_app.api.service import Service
    from sd2_app.ui import build_ui
    from tests.ui_doubles import FakeManager

    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    demo = build_ui(service)
    block_fn = next(block_fn for block_fn in demo.fns.values() if block_fn.api_name == "txt2img")
    names = list(inspect.signature(block_fn.fn).parameters)[1:-1]  # between the gr.Request and the progress
    defaults = dict(zip(names, (component.value for component in block_fn.inputs)))  # the tab's own defaults

    def run(side: int, steps: int, batch: int) -> None:
        values = {**defaults, "prompt": "x", "width": side, "height": side, "sampler": "Euler", "steps": steps,
                  "cfg_scale": 7.5, "seed": 1, "batch_size": batch}
        list(block_fn.fn(None, *(values[name] for name in names), None))

    run(512, 25, 1)
    run(768, 50, 4)
    with pytest.raises(gr.Error) as refused:
        run(512, 999, 1)
    assert refused.value.message == "Steps must be between 1 and 150, got 999."
    assert asked == [gpu_time.MIN_SECONDS, 29]


def test_a_batch_count_asks_zerogpu_for_all_its_batches() -> None:
    """A web run's batches run one after the other in its one GPU call (sd2_app/api/batch_count.py): a 768 image at
    50 steps asks the minimum alone, three batches of it ask for their three costs."""
    from sd2_app.api.service import Service
    from tests.ui_doubles import FakeManager

    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    sampling = Sampling(sampler="Euler", steps=50, cfg_scale=7.5, seed=1)
    request = Txt2ImgRequest("x", checkpoint="sd21-base", width=768, height=768, sampling=sampling)
    work = 50 * 2 * 96 * 96  # steps x 2 guided calls x latent pixels
    assert gpu_time.seconds_for(service, request) == gpu_time.MIN_SECONDS == gpu_time.gpu_seconds(work)
    tripled = Txt2ImgRequest("x", checkpoint="sd21-base", width=768, height=768,
                             sampling=Sampling(**{**vars(sampling), "batch_count": 3}))
    assert gpu_time.seconds_for(service, tripled) == gpu_time.gpu_seconds(3 * work) == 24


def test_a_plot_asks_zerogpu_for_all_its_cells() -> None:
    """An X/Y/Z plot's duration is the sum of its cells' work (the plot runs them one after the other)."""
    from sd2_app.api.requests import PlotAxis, XYZPlotRequest
    from sd2_app.api.service import Service
    from tests.ui_doubles import FakeManager

    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    base = Txt2ImgRequest("x", checkpoint="sd21-base", width=768, height=768,
                          sampling=Sampling(sampler="Euler", steps=20, cfg_scale=7.5, seed=1))
    plot = XYZPlotRequest(base=base, x=PlotAxis("steps", "50, 100"))
    work = (50 + 100) * 2 * 96 * 96  # steps x 2 guided calls x latent pixels of each cell
    assert gpu_time.gpu_seconds(work) == 24
    assert gpu_time.seconds_for(service, plot) == 24


def test_a_plots_duration_checks_each_cell_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`seconds_for` prices the cells that validating the plot planned: 64 cells are checked once each, and the
    duration is the sum of the cells' work."""
    from sd2_app.api.requests import PlotAxis, XYZPlotRequest
    from sd2_app.api.service import Service
    from tests.ui_doubles import FakeManager, spy_on_plot_checks

    checked = spy_on_plot_checks(monkeypatch)
    service = Service(FakeManager(), outputs_dir=None, allowed_repos=())
    base = Txt2ImgRequest("x", checkpoint="sd21-base", width=512, height=512,
                          sampling=Sampling(sampler="Euler", steps=20, cfg_scale=7.5, seed=1))
    plot = XYZPlotRequest(base=base, x=PlotAxis("steps", "1-8"), y=PlotAxis("seed", "1-8"))
    seconds = gpu_time.seconds_for(service, plot)
    assert len(checked) == 1 + 64  # the plot's base, then each cell
    work = 8 * sum(range(1, 9)) * 2 * 64 * 64  # 8 seeds x the steps of each X value x 2 guided calls x latent pixels
    assert seconds == gpu_time.gpu_seconds(work) == 22


@pytest.mark.slow
def test_the_local_app_imports_spaces_before_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeroGPU patches torch's CUDA calls when `spaces` is imported, so it must come before torch: building the
    local app (the one path that imports torch) with a stand-in `spaces` package installed. Gradio imports
    `spaces` itself when it is installed (gradio/block_function.py), and `webapp.local_service` imports it
    before torch too; this fails if anything imports torch before either."""
    import subprocess

    from tests.reliability_support import linked_tiny_cache

    (tmp_path / "spaces.py").write_text(
        "import sys\nTORCH_ALREADY = 'torch' in sys.modules\n"
        "def GPU(duration=None):\n    return lambda fn: fn\n")
    probe = ("import sys, app\nfrom sd2_app import webapp\n"
             "webapp.build(app.parse_args(['--tiny', '--device', 'cpu', '--no-save']))\n"
             "import spaces\nprint(spaces.TORCH_ALREADY, 'torch' in sys.modules)\n")
    root = Path(__file__).resolve().parents[2]
    linked_tiny_cache(monkeypatch, tmp_path / "cache")  # --tiny reads the shared tiny repos, writes none
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    env.pop("SPACE_ID", None)
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["False", "True"]
