"""What a single-file checkpoint costs on first use (sd2_app/loading/single_file.py): converting a full-size SD 2 file
into the Hub layout, with the yaml beside it and without (then A1111's v test runs the UNet once), each in a fresh
process for its own peak memory; then that the converted weights are the source's, tensor for tensor.

Writes a full-size random-weight sd2-base repo (bench/write_checkpoints.py, fp16) under `--ckpt`/full and its LDM
file (sd2_app/testing/ldm_file.py). CPU is enough. Run from the repository root:
`python -m bench.single_file --ckpt /tmp/ck [--out single_file.json]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _convert(file: Path, configs: Path, cache: Path) -> dict[str, Any]:
    """One conversion in this process: seconds, peak resident memory, the prediction type it chose."""
    from sd2_app.loading.single_file import prepare

    start = time.perf_counter()
    folder = prepare(file, lambda key: configs, cache)
    seconds = time.perf_counter() - start
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    return {"seconds": round(seconds, 2), "peak_rss_gib": round(peak_gib, 2), "folder": str(folder),
            "prediction": scheduler.get("prediction_type", "epsilon")}


def _in_fresh_process(file: Path, configs: Path, cache: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.single_file", "--one", str(file), str(configs), str(cache)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same_weights(source: Path, converted: Path) -> dict[str, int]:
    """Tensors of each converted file equal to the source repo's (fp16 variant), and how many there are."""
    import torch
    from safetensors.torch import load_file

    from sd2_app.loading.checkpoint import LEGACY_VAE_RENAMES, rename_keys

    counts = {}
    for component, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                            ("text_encoder", "model")):
        expected = rename_keys(load_file(str(source / component / f"{stem}.fp16.safetensors")), LEGACY_VAE_RENAMES)
        if component == "text_encoder":  # transformers 5 saves the tower without the Hub files' "text_model."
            expected = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in expected.items()}
        got = load_file(str(converted / component / f"{stem}.safetensors"))
        equal = sum(torch.equal(got[k], expected[k]) for k in expected if k in got)
        counts[component] = equal
        assert equal == len(expected) == len(got), f"{component}: {equal} of {len(expected)} tensors equal"
    return counts


def run(ckpt: Path) -> dict[str, Any]:
    from bench.write_checkpoints import ensure_checkpoints
    from sd2_app.testing.ldm_file import write_ldm_file

    source = ensure_checkpoints(ckpt / "full", ("sd2-base",))["sd2-base"]
    file = ckpt / "files" / "full-sd2-base.safetensors"
    if not file.is_file():
        start = time.perf_counter()
        write_ldm_file(source, file, variant="fp16")
        print(f"wrote {file} ({file.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    results: dict[str, Any] = {"file_gib": round(file.stat().st_size / 2**30, 2), "machine": platform.processor()
                               or platform.machine(), "cases": {}}
    yaml = file.with_suffix(".yaml")
    for case in ("with yaml", "A1111's v test"):
        if case == "with yaml":
            yaml.write_text("model:\n  params:\n    parameterization: eps\n")
        else:
            yaml.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory() as cache:
            result = _in_fresh_process(file, source, Path(cache))
            if case == "with yaml":
                results["tensors_equal"] = _same_weights(source, Path(result["folder"]))
        result.pop("folder")
        results["cases"][case] = result
        print(case, result)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=Path("/tmp/ck"))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", nargs=3, type=Path, metavar=("FILE", "CONFIGS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_convert(*args.one)))
        return
    results = run(args.ckpt)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
