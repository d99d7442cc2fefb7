"""Import is free: no diffusers, no network, no CUDA, no weights when sd2_app or app.py is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import importlib, importlib.util, pkgutil, socket, sys, time

def refuse(*args, **kwargs):
    raise OSError("network used at import time")

socket.socket.connect = refuse
socket.create_connection = refuse
start = time.perf_counter()
import sd2_app
names = [m.name for m in pkgutil.walk_packages(sd2_app.__path__, "sd2_app.") if not m.name.endswith("__main__")]
if importlib.util.find_spec("triton") is None:  # the Triton kernels are imported only where Triton exists
    names = [name for name in names if name.rsplit(".", 1)[-1] not in ("elementwise", "group_norm", "group_norm_nchw")]
if importlib.util.find_spec("ray") is None:  # Ray is optional (requirements-serve.txt): only its front needs it
    names = [n for n in names if not n.startswith("sd2_app.serve.") or n == "sd2_app.serve.config"]
for name in names:
    importlib.import_module(name)
import app
import torch
print(len(names), "diffusers" in sys.modules, torch.cuda.is_initialized(), round(time.perf_counter() - start, 1))
"""


@pytest.mark.slow
def test_importing_every_module_and_app_does_no_work() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, has_diffusers, cuda_initialised, _seconds = done.stdout.split()
    assert int(count) > 40  # every module of the package was imported
    assert has_diffusers == "False"  # the reference implementation is a test-only dependency
    assert cuda_initialised == "False"


def test_ui_modules_do_not_import_torch() -> None:
    """The UI talks to the service only; model code (torch) stays behind it."""
    for path in (ROOT / "sd2_app" / "ui").glob("*.py"):
        source = path.read_text()
        assert "import torch" not in source and "from torch" not in source, path.name


@pytest.mark.slow
def test_the_app_without_serve_does_not_import_ray() -> None:
    """Ray is optional: building the local app (tiny checkpoints) never imports it, even where it is installed."""
    probe = (
        "import sys, app\n"
        "app.build(app.parse_args(['--tiny', '--device', 'cpu', '--no-save']))\n"
        "print('ray' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False"


def test_the_server_log_has_no_per_file_loading_bars() -> None:
    """app.main's logging set-up turns transformers' "Loading weights" progress bars off (one log line per load)."""
    probe = (
        "import app, transformers.utils.logging as t\n"
        "before = t.is_progress_bar_enabled()\n"
        "app.configure_logging()\n"
        "print(before, t.is_progress_bar_enabled())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]
