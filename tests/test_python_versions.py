"""The code runs on Python 3.10, the version ZeroGPU Spaces run (README front matter, `python_version`).

The suite itself runs on a newer Python, so two checks stand in for a 3.10 interpreter: vermin's static
analysis of every module's syntax, standard-library names and evaluated annotations against 3.10, and the
one 3.11-only module the app uses (`tomllib`) made unimportable, as it is on 3.10.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from sd2_app.serve.config import load_config

ROOT = Path(__file__).resolve().parent.parent
OLDEST = "3.10"  # README's python_version for Spaces


def test_every_module_needs_at_most_python_3_10():
    checked = ["app.py", "sd2_app", "tests", "bench"]
    run = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", "--eval-annotations", f"-t={OLDEST}-", *checked],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Minimum required versions: {OLDEST}" in run.stdout, run.stdout


def test_the_app_starts_without_tomllib():
    """On 3.10 there is no tomllib: importing app.py and reading the default Serve settings must not need it."""
    code = ("import sys; sys.modules['tomllib'] = None\n"  # `import tomllib` now raises ModuleNotFoundError
            "import app\n"
            "from sd2_app.serve.config import load_config\n"
            "print(load_config(None).max_replicas)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(load_config(None).max_replicas)


def test_a_serve_config_file_is_read_with_tomli_on_3_10(tmp_path, monkeypatch):
    """Without tomllib the file is parsed by `tomli` (requirements-serve.txt installs it on 3.10)."""
    config = tmp_path / "serve.toml"
    config.write_bytes(b"[serve]\nmin_replicas = 2\nmax_replicas = 3\n")
    read: list[bytes] = []

    def load(handle):  # tomli.load's contract: a binary file in, the document's tables out
        read.append(handle.read())
        return {"serve": {"min_replicas": 2, "max_replicas": 3}}

    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises ModuleNotFoundError, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", types.SimpleNamespace(load=load))
    assert (load_config(config).min_replicas, load_config(config).max_replicas) == (2, 3)
    assert read[0] == config.read_bytes()
    monkeypatch.setitem(sys.modules, "tomli", None)  # and no tomli installed either: the error names it
    with pytest.raises(ModuleNotFoundError, match="tomli"):
        load_config(config)
