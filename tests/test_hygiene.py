"""Import is free: no diffusers, no network, no CUDA, no weights, no thread when sd2_app or app.py is imported;
and the package keeps no process-wide mutable state besides the model manager (docs/DESIGN.md "The app's life")."""

from __future__ import annotations

import ast
import os
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
import threading
import torch
print(len(names), "diffusers" in sys.modules, torch.cuda.is_initialized(), threading.active_count(),
      round(time.perf_counter() - start, 1))
"""


@pytest.mark.slow
def test_importing_every_module_and_app_does_no_work() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, has_diffusers, cuda_initialised, threads, _seconds = done.stdout.split()
    assert int(count) > 40  # every module of the package was imported
    assert has_diffusers == "False"  # the reference implementation is a test-only dependency
    assert cuda_initialised == "False"
    assert threads == "1"  # no module starts a thread (a pool, a writer, a timer) when it is imported


# Process-wide memos the package may keep: each holds values nobody can change, so no job sees another's.
IMMUTABLE_MEMOS = {
    "samplers/schedules.py:_train_tables",  # read-only arrays and a tuple of floats per frozen SchedulerConfig
    "accel/fused/ops.py:triton_available",  # one bool
    "accel/kernels/checks.py:kernels_agree",  # one bool per device, dtype and layout
}
# Module-level objects that are not plain data, each with its reason.
MODULE_LEVEL_OBJECTS = {
    # serialises the temporary class-wide patch of nn.Module.register_parameter while one thread builds a model
    "loading/checkpoint.py:_BUILD_LOCK",
}
_STATEFUL_TYPES = {"ThreadPoolExecutor", "ProcessPoolExecutor", "Thread", "Timer", "Queue", "SimpleQueue", "local",
                   "Lock", "RLock", "Event", "Condition", "Semaphore", "BoundedSemaphore", "WeakKeyDictionary",
                   "WeakValueDictionary", "WeakSet", "defaultdict", "OrderedDict", "Counter", "deque"}
_MUTATORS = {"append", "extend", "insert", "add", "update", "setdefault", "pop", "popitem", "clear", "remove",
             "discard", "__setitem__"}


def _package_modules() -> dict[str, ast.Module]:
    package = ROOT / "sd2_app"
    return {str(path.relative_to(package)): ast.parse(path.read_text()) for path in sorted(package.rglob("*.py"))}


def _module_level_containers(tree: ast.Module) -> set[str]:
    """Names bound at module level to a list, dict or set display (or comprehension)."""
    names = set()
    for statement in tree.body:
        value = statement.value if isinstance(statement, (ast.Assign, ast.AnnAssign)) else None
        targets = statement.targets if isinstance(statement, ast.Assign) else [getattr(statement, "target", None)]
        if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)):
            names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


def _mutated_names(tree: ast.Module) -> set[str]:
    """Names (or attributes) that the module changes in place: `X[k] = v`, `X[k] += v`, `del X[k]`, `X.update()`."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            base = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
            base = node.func.value
        else:
            continue
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def test_the_package_keeps_no_process_wide_mutable_state() -> None:
    """No thread-local state, no executor or other live object at module level, no memo of changeable values and
    no module-level container that code changes; the model manager is an object the app makes, not a global."""
    modules = _package_modules()
    memos, objects, thread_locals, changed = set(), set(), [], []
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any("cache" in ast.unparse(decorator) for decorator in node.decorator_list):
                    memos.add(f"{name}:{node.name}")
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("threading.local", "local"):
                thread_locals.append(name)
        for statement in tree.body:
            if isinstance(statement, (ast.Assign, ast.AnnAssign)) and isinstance(statement.value, ast.Call):
                called = ast.unparse(statement.value.func).rsplit(".", 1)[-1]
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                if called in _STATEFUL_TYPES:
                    objects.update(f"{name}:{ast.unparse(target)}" for target in targets)
        containers = _module_level_containers(tree)
        changed += [f"{name}:{container}" for container in containers if container in _mutated_names(tree)]
    every_container = {container for tree in modules.values() for container in _module_level_containers(tree)}
    changed += [f"{name}: {container}" for name, tree in modules.items()
                for container in every_container & _mutated_names(tree) if container.isupper()]
    assert thread_locals == []
    assert memos == IMMUTABLE_MEMOS
    assert objects == MODULE_LEVEL_OBJECTS
    assert changed == []


def test_the_state_check_finds_what_it_looks_for() -> None:
    tree = ast.parse("POOL = {}\nNAMES: list = []\ndef f():\n    POOL['a'] = 1\n    NAMES.append(2)\n")
    assert _module_level_containers(tree) == {"POOL", "NAMES"} and {"POOL", "NAMES"} <= _mutated_names(tree)


def test_ui_modules_do_not_import_torch() -> None:
    """The UI talks to the service only; model code (torch) stays behind it."""
    for path in (ROOT / "sd2_app" / "ui").glob("*.py"):
        source = path.read_text()
        assert "import torch" not in source and "from torch" not in source, path.name


@pytest.mark.slow
def test_the_app_without_serve_does_not_import_ray(tmp_path: Path) -> None:
    """Ray is optional: building the local app (tiny checkpoints) never imports it, even where it is installed."""
    from tests.reliability_support import link_tiny_cache

    probe = (
        "import sys, app\n"
        "from sd2_app import webapp\n"
        "webapp.build(app.parse_args(['--tiny', '--device', 'cpu', '--no-save']))\n"
        "print('ray' in sys.modules)\n"
    )
    env = {**os.environ, "SD2APP_CACHE": str(link_tiny_cache(tmp_path / "cache"))}  # not the user's ~/.cache
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False"


def test_the_server_log_has_no_per_file_loading_bars() -> None:
    """app.main's logging set-up turns transformers' "Loading weights" progress bars off (one log line per load)."""
    probe = (
        "import transformers.utils.logging as t\n"
        "from sd2_app import webapp\n"
        "before = t.is_progress_bar_enabled()\n"
        "webapp.configure_logging()\n"
        "print(before, t.is_progress_bar_enabled())\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "False"]


_WITHOUT_TORCH = r"""
import importlib, runpy, sys
target = sys.argv[1]
if target.startswith("-m "):  # run a module's command line with --help
    sys.argv = [target[3:], "--help"]
    try:
        runpy.run_module(target[3:], run_name="__main__")
    except SystemExit as done:
        assert done.code == 0, done.code
else:
    importlib.import_module(target)
print("torch" in sys.modules)
"""


@pytest.mark.parametrize("target", ["-m sd2_app", "sd2_app.serve.backend", "sd2_app.serve.deployment",
                                    "-m sd2_app.serve"])
def test_paths_that_need_no_model_do_not_import_torch(target: str) -> None:
    """The CLI's --help, the Serve front end that only forwards requests (and the deployment it names), and the
    deploy command's --help answer without importing torch (seconds of start-up on a small machine)."""
    if "serve" in target:
        pytest.importorskip("ray")
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, target], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False", done.stdout[-2000:]


_APP_FLAGS_ONLY = r"""
import sys
import app
try:
    app.main(sys.argv[1:])
except SystemExit as done:
    print("exit", done.code)
print(" ".join(sorted(name for name in ("gradio", "torch", "transformers", "fastapi") if name in sys.modules)) or "-")
"""


@pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), (["--max-sessions", "0"], 2), (["--no-such-flag"], 2)])
def test_app_flags_answer_without_importing_gradio_or_torch(argv: list[str], code: int) -> None:
    """`python app.py --help` and a flag error answer from the flags alone (sd2_app/app_flags.py): the web app,
    with Gradio and torch, is imported only once the flags are parsed."""
    done = subprocess.run([sys.executable, "-c", _APP_FLAGS_ONLY, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-3:] == [f"exit {code}", "-", ""], done.stdout[-2000:]
    if code == 0:
        assert "--max-jobs-per-address" in done.stdout and "(default 6 in public modes" in " ".join(done.stdout.split())
    else:
        assert "usage: " in done.stderr


def test_python_app_py_help_exits_0_with_its_flags() -> None:
    done = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.startswith("usage: app.py") and "--max-sessions" in done.stdout
