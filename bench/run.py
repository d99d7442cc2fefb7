"""Time our pipelines against diffusers' on the same weights, in one process, and write the report.

    python -m bench.run --ckpt /data/sd2-bench --out bench/results            # full run on a GPU
    python -m bench.run --ckpt /data/sd2-bench --out bench/results --compile  # + both compiled paths
    python -m bench.run --tiny --quick --out /tmp/bench                       # CPU smoke check, tiny models

Each checkpoint kind is loaded by one variant at a time and freed before the next, so peak memory is the
variant's own. See bench/README.md for the exact GPU command and docs/PERFORMANCE.md for the table layout.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from bench.cases import SEED, Case, Measurement, make_cases, measure, release, synchronize
from bench.ours import OursRunner
from bench.report import image_diffs, speedups, targets, write
from bench.theirs import DiffusersRunner
from bench.write_checkpoints import benchmark_repos
from sd2_app.accel import setup_backends

logger = logging.getLogger("bench")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="sd2-app vs diffusers speed benchmark")
    p.add_argument("--ckpt", type=Path, default=Path.home() / ".cache" / "sd2-app-bench",
                   help="full-size random checkpoints (written there on first use)")
    p.add_argument("--tiny", action="store_true", help="tiny random repos and tiny sizes (CPU check)")
    p.add_argument("--quick", action="store_true", help="few steps, one timed run per case")
    p.add_argument("--compile", action="store_true", help="add ours-compiled and diffusers-compiled")
    p.add_argument("--variants", default=None, help="comma list; default ours,diffusers (+compiled ones)")
    p.add_argument("--only", default=None, help="comma list of case-name prefixes, e.g. txt2img-512,upscale")
    p.add_argument("--steps", type=int, default=None, help="default 25 (quick: 4; tiny quick: 2)")
    p.add_argument("--no-swaps", action="store_true", help="skip the load/swap measurements")
    p.add_argument("--deadline", type=float, default=float("inf"),
                   help="epoch seconds: cases that would start later are recorded as skipped (GPU leases)")
    p.add_argument("--default-variant", default="ours", help="the variant the targets are judged on")
    p.add_argument("--no-images", action="store_true",
                   help="skip the image comparison (diffusers' fp32 reference images of the txt2img b1 cases)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    return p.parse_args(argv)


def compared(case: Case) -> bool:
    """The cases whose images are compared across variants (and with diffusers in fp32): one image each."""
    return case.task == "txt2img" and case.batch == 1


def reference_images(cases: list[Case], repos: dict[str, Path], device: torch.device, steps: int,
                     deadline: float = float("inf")) -> dict[str, list[Any]]:
    """diffusers' own images in fp32 for `cases` (the yardstick for how far fp16 may move an image)."""
    kinds = list(dict.fromkeys(case.kind for case in cases))
    found: dict[str, list[Any]] = {}
    for kind in kinds:
        if time.time() > deadline:
            break
        runner = DiffusersRunner(repos, device, torch.float32, "diffusers")
        try:
            for case in (c for c in cases if c.kind == kind):
                found[case.name] = runner.call(case, steps)()
        except Exception:  # noqa: BLE001 - a missing reference leaves its row out of the comparison
            logger.exception("diffusers fp32 reference for %s failed", kind)
        finally:
            runner.unload(kind)
            runner.close()
    return found


def _run_cases(cases: list[Case], variants: list[str], repos: dict[str, Path], device: torch.device,
               dtype: torch.dtype, steps: int, cache_dir: Path,
               on_progress: Callable[[list[Measurement]], None],
               deadline: float = float("inf"),
               after_variant: Callable[[str], None] | None = None) -> list[Measurement]:
    """Every case under every variant (that the case allows); `on_progress(rows so far)` after each case, so
    a run cut short by a time limit still leaves a report. Work that would start after `deadline` (epoch s)
    is recorded as skipped; so is a case whose checkpoint failed to load for that variant. Each row keeps its
    last call's images only while it is compared (`compared`). `after_variant(name)` runs once each
    variant's cases are done."""
    rows: list[Measurement] = []
    kinds = list(dict.fromkeys(case.kind for case in cases))
    # variant by variant (the default first): a slow variant at the end (a long compile) cannot starve the
    # others of a lease's time
    for variant in variants:
        for kind in kinds:
            kind_cases = [c for c in cases if c.kind == kind and (variant.startswith("ours") or not c.ours_only)]
            if not kind_cases:
                continue
            skipped = "skipped: device time budget" if time.time() > deadline else None
            runner: Any = None
            load_s = None
            if skipped is None:
                try:
                    runner = (OursRunner(repos, device, dtype, variant, cache_dir) if variant.startswith("ours")
                              else DiffusersRunner(repos, device, dtype, variant))
                    load_s = (runner.load(kind) if isinstance(runner, OursRunner)
                              else runner.load(kind_cases[0].task, kind, kind_cases[0].sampler))
                    logger.info("%s: %s loaded in %.2f s", variant, kind, load_s)
                except Exception as e:  # noqa: BLE001 - recorded per case below
                    logger.exception("%s: loading %s failed", variant, kind)
                    skipped = f"load failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            for case in kind_cases:
                if skipped is None and time.time() > deadline:
                    skipped = "skipped: device time budget"
                if skipped is not None:
                    row = Measurement(case.name, variant, case.task, case.size, case.batch, steps, error=skipped)
                else:
                    row = measure(case, variant, steps, device, runner.call(case, steps))
                    row.load_s = load_s
                    row.images = row.images if compared(case) else None
                logger.info("%s %s: %s s/image (first call %s s)%s", case.name, variant, row.s_per_image,
                            row.first_s, f" [{row.error}]" if row.error else "")
                rows.append(row)
                on_progress(rows)
            if runner is not None:
                try:
                    runner.unload(kind)
                finally:
                    runner.close()
        if after_variant is not None:
            after_variant(variant)
    return rows


def _file_bytes(folder: Path, parts: tuple[str, ...]) -> int:
    return sum(f.stat().st_size for part in parts for f in (folder / part).glob("*.safetensors")
               if "fp16" in f.name or not any("fp16" in g.name for g in (folder / part).glob("*.safetensors")))


def measure_swaps(repos: dict[str, Path], device: torch.device, dtype: torch.dtype, cache_dir: Path,
                  reps: int) -> dict[str, Any]:
    """Pinned -> device swap between two checkpoints, and a full load from the (warm) page cache."""
    from sd2_app.loading.parts import load_unet

    result: dict[str, Any] = {}
    a, b = "sd2-base", "sd2"
    if a not in repos or b not in repos:
        return result
    runner = OursRunner({a: repos[a], b: repos[b]}, device, dtype, "ours", cache_dir)
    manager = runner.manager
    runner.load(a)  # first loads also warm the page cache and the hash cache
    runner.load(b)
    manager.offload(b)
    times, offloads, loads = [], [], []
    for i in range(reps):
        src, dst = (a, b) if i % 2 == 0 else (b, a)
        synchronize(device)
        start = time.perf_counter()
        manager.offload(src)
        synchronize(device)
        middle = time.perf_counter()
        manager.load(dst)
        synchronize(device)
        end = time.perf_counter()
        times.append(end - start)
        offloads.append(middle - start)
        loads.append(end - middle)
    result["pinned_swap_s"] = sorted(times)[len(times) // 2]  # offload one + bring the other back
    result["swap_offload_part_s"] = sorted(offloads)[len(offloads) // 2]
    result["swap_pinned_to_gpu_part_s"] = sorted(loads)[len(loads) // 2]
    result["pinned_swap_runs_s"] = ", ".join(f"{t:.3f}" for t in times)
    runner.close()

    runner = OursRunner({a: repos[a]}, device, dtype, "ours", cache_dir)
    seconds = runner.load(a)
    moved = _file_bytes(repos[a], ("unet", "vae", "text_encoder"))
    result["disk_to_gpu_checkpoint_s"] = seconds
    result["disk_to_gpu_gb_per_s"] = moved / seconds / 1e9
    runner.close()

    unet_bytes = _file_bytes(repos[a], ("unet",))
    synchronize(device)
    start = time.perf_counter()
    unet = load_unet(repos[a], device, dtype)
    synchronize(device)
    result["disk_to_gpu_unet_gb_per_s"] = unet_bytes / (time.perf_counter() - start) / 1e9
    del unet
    release(device)
    try:
        import diffusers

        variant = "fp16" if dtype == torch.float16 else None
        start = time.perf_counter()
        ref = diffusers.UNet2DConditionModel.from_pretrained(str(repos[a]), subfolder="unet", torch_dtype=dtype,
                                                             variant=variant).to(device)
        synchronize(device)
        result["diffusers_disk_to_gpu_unet_gb_per_s"] = unet_bytes / (time.perf_counter() - start) / 1e9
        del ref
    except ImportError:
        pass
    release(device)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    steps = args.steps or (25 if not args.quick else (2 if args.tiny else 4))
    backends = setup_backends(device)
    variants = (args.variants.split(",") if args.variants else
                ["ours", "diffusers"] + (["ours-compiled", "diffusers-compiled"] if args.compile else []))
    cases = make_cases(tiny=args.tiny, quick=args.quick)
    if args.only:
        prefixes = args.only.split(",")
        cases = [c for c in cases if any(c.name.startswith(p) or c.task == p for p in prefixes)]
    kinds = list(dict.fromkeys([c.kind for c in cases] + ([] if args.no_swaps else ["sd2-base", "sd2"])))
    repos = benchmark_repos(args.ckpt, args.tiny, tuple(kinds), device)
    cache_dir = args.ckpt / "app-cache"

    import diffusers

    small, large = (64, 96) if args.tiny else (512, 768)
    up_small, up_large = ("upscale-16-", "upscale-32-") if args.tiny else ("upscale-128-", "upscale-512-")
    meta = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or "cpu", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "dtype": str(dtype).removeprefix("torch."), "steps": steps, "sampler": "DPM++ 2M", "seed": SEED,
            "quick": args.quick, "tiny": args.tiny, "variants": variants, "default": args.default_variant,
            "backends": backends.__dict__}

    references: dict[str, list[Any]] = {}

    def make_record(rows: list[Measurement], swaps: dict[str, Any], complete: bool) -> dict[str, Any]:
        return {"meta": {**meta, "complete": complete}, "measurements": [row.to_dict() for row in rows],
                "speedups": speedups(rows), "swaps": swaps,
                "image_diffs": image_diffs(rows, references, args.default_variant),
                "targets": targets(rows, swaps, small=small, large=large, up_small=up_small, up_large=up_large,
                                   default=args.default_variant)}

    # The text-to-image and upscale targets first, then the swaps, then the other tasks: a run cut short by
    # its lease loses the least important numbers.
    first_kinds = ("sd2-base", "sd2", "sd21", "x4-upscaler")
    done: list[Measurement] = []
    swaps: dict[str, Any] = {}

    def progress(partial: list[Measurement]) -> None:
        write(args.out, make_record(done + partial, swaps, complete=False))

    def add_references(variant: str) -> None:
        """diffusers' fp32 images, right after its eager fp16 ones (before any long compile of a later variant
        can use up the lease)."""
        wanted = [c for c in cases if compared(c) and c.name not in references]
        if variant == "diffusers" and not args.no_images and wanted:
            references.update(reference_images(wanted, repos, device, steps, args.deadline))

    done += _run_cases([c for c in cases if c.kind in first_kinds], variants, repos, device, dtype, steps,
                       cache_dir, progress, args.deadline, add_references)
    if not args.no_swaps:
        if time.time() > args.deadline:
            swaps = {"error": "skipped: device time budget"}
        else:
            try:
                swaps = measure_swaps(repos, device, dtype, cache_dir, reps=2 if args.quick else 4)
            except Exception as e:  # noqa: BLE001
                logger.exception("swaps failed")
                swaps = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
        progress([])
    done += _run_cases([c for c in cases if c.kind not in first_kinds], variants, repos, device, dtype, steps,
                       cache_dir, progress, args.deadline, add_references)
    if "diffusers" not in variants and any(v.startswith("diffusers") for v in variants):
        add_references("diffusers")  # (no eager diffusers variant ran: the references come last)
    rows = done
    record = make_record(rows, swaps, complete=True)
    json_path, md_path = write(args.out, record)
    logger.info("wrote %s and %s", json_path, md_path)
    return record


if __name__ == "__main__":
    main()
