"""Turn measurements into the JSON record, the issue's targets (met or not) and a markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.cases import Measurement


def _find(rows: list[Measurement], case_prefix: str, variant: str) -> Measurement | None:
    for row in rows:
        if row.case.startswith(case_prefix) and row.variant == variant and row.s_per_image is not None:
            return row
    return None


def speedups(rows: list[Measurement], baseline: str = "diffusers") -> list[dict[str, Any]]:
    """s/image of the baseline divided by each other variant's, per case (> 1: we are faster)."""
    out = []
    for row in rows:
        base = _find(rows, row.case, baseline)
        if row.variant == baseline or base is None or row.s_per_image is None:
            continue
        mem = None
        if row.peak_allocated_gib is not None and base.peak_allocated_gib:
            mem = row.peak_allocated_gib / base.peak_allocated_gib
        out.append({"case": row.case, "variant": row.variant, "baseline": baseline,
                    "speedup": base.s_per_image / row.s_per_image, "memory_ratio": mem})
    return out


def image_diff(a: list[Any], b: list[Any]) -> dict[str, float]:
    """Max and mean absolute difference of two lists of same-sized images, in 8-bit levels (0-255)."""
    left = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in a])
    right = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in b])
    diff = np.abs(left - right)
    return {"max": float(diff.max()), "mean": float(diff.mean())}


def image_diffs(rows: list[Measurement], references: dict[str, list[Any]], default: str) -> list[dict[str, Any]]:
    """For each case with images of `default`: its difference from each diffusers variant's images, and the
    diffusers fp16 image's difference from diffusers' fp32 one (`references`), the yardstick."""
    out = []
    for row in rows:
        if row.variant != default or row.images is None:
            continue
        for other in rows:
            if other.case == row.case and other.variant.startswith("diffusers") and other.images is not None:
                out.append({"case": row.case, "a": default, "b": other.variant, **image_diff(row.images, other.images)})
        theirs = next((r for r in rows if r.case == row.case and r.variant == "diffusers" and r.images is not None),
                      None)
        if theirs is not None and row.case in references:
            out.append({"case": row.case, "a": "diffusers", "b": "diffusers-fp32",
                        **image_diff(theirs.images, references[row.case])})
    return out


def targets(rows: list[Measurement], swaps: dict[str, Any], *, small: int, large: int,
            up_small: str, up_large: str, default: str = "ours") -> list[dict[str, Any]]:
    """The issue's acceptance numbers for the `default` variant (the app's default path); `value` None means
    not measured in this run."""

    def ratio(prefix: str, ours: str, theirs: str) -> float | None:
        a, b = _find(rows, prefix, ours), _find(rows, prefix, theirs)
        return None if a is None or b is None else b.s_per_image / a.s_per_image

    first = _find(rows, f"txt2img-{small}-b1", default)
    peak_ok = None
    pairs = [(r, _find(rows, r.case, "diffusers")) for r in rows if r.variant == default]
    pairs = [(a, b) for a, b in pairs if b is not None and a.peak_allocated_gib is not None]
    if pairs:
        peak_ok = max(a.peak_allocated_gib / b.peak_allocated_gib for a, b in pairs)
    big_up = _find(rows, up_large, default)
    sd21, sd2 = _find(rows, f"txt2img-{large}-sd21-b1", default), _find(rows, f"txt2img-{large}-b1", default)
    items = [
        ("txt2img 512 b1 vs diffusers eager", ratio(f"txt2img-{small}-b1", default, "diffusers"), ">=", 4.0),
        ("txt2img 768 b1 vs diffusers eager", ratio(f"txt2img-{large}-b1", default, "diffusers"), ">=", 1.25),
        ("loaded -> first image (s)", None if first is None else first.first_s, "<=", 15.0),
        ("compiled 512 vs diffusers+compile", ratio(f"txt2img-{small}-b1", "ours-compiled", "diffusers-compiled"),
         ">", 1.0),
        ("compiled 768 vs diffusers+compile", ratio(f"txt2img-{large}-b1", "ours-compiled", "diffusers-compiled"),
         ">", 1.0),
        ("SD 2.1-768 s/image / SD 2.0-768's", None if sd21 is None or sd2 is None else sd21.s_per_image / sd2.s_per_image,
         "<=", 1.05),
        ("txt2img 512 b1 vs diffusers speed-guide recipe", ratio(f"txt2img-{small}-b1", default, "diffusers-recipe"),
         ">=", 1.3),
        ("txt2img 768 b1 vs diffusers speed-guide recipe", ratio(f"txt2img-{large}-b1", default, "diffusers-recipe"),
         ">=", 1.3),
        ("txt2img 768 SD 2.1 b1 vs diffusers speed-guide recipe",
         ratio(f"txt2img-{large}-sd21-b1", default, "diffusers-recipe"), ">=", 1.3),
        ("peak memory ours / diffusers (worst case)", peak_ok, "<=", 1.0),
        ("x4 upscale 128->512 vs diffusers", ratio(up_small, default, "diffusers"), ">=", 3.0),
        ("x4 upscale 512->2048 peak reserved (GiB)", None if big_up is None else big_up.peak_reserved_gib, "<=",
         16.0),
        ("checkpoint swap pinned -> GPU (s)", swaps.get("pinned_swap_s"), "<=", 0.25),
        ("disk (page cache) -> GPU (GB/s)", swaps.get("disk_to_gpu_gb_per_s"), ">=", 3.0),
    ]
    result = []
    for name, value, op, goal in items:
        met = None
        if value is not None:
            met = {">=": value >= goal, "<=": value <= goal, ">": value > goal}[op]
        result.append({"target": name, "value": value, "goal": f"{op} {goal:g}", "met": met})
    return result


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(record: dict[str, Any]) -> str:
    meta = record["meta"]
    lines = [f"# Benchmark: {meta['device_name']}", "",
             f"torch {meta['torch']}, diffusers {meta['diffusers']}, {meta['dtype']}, {meta['steps']} steps "
             f"{meta['sampler']}, CFG on, seed {meta['seed']}{' (quick)' if meta['quick'] else ''}"
             f"{' (tiny models)' if meta['tiny'] else ''}", "",
             "| case | variant | s/image | steps/s | load (s) | first call (s) | warm-up (s) | peak alloc (GiB) "
             "| peak reserved (GiB) | speed-up vs diffusers |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    ups = {(u["case"], u["variant"]): u["speedup"] for u in record["speedups"]}
    for row in record["measurements"]:
        note = row["error"] or ""
        lines.append(
            f"| {row['case']} | {row['variant']} | {_fmt(row['s_per_image'])} | {_fmt(row['steps_per_s'], 2)} "
            f"| {_fmt(row.get('load_s'), 2)} | {_fmt(row['first_s'], 2)} | {_fmt(row.get('warmup_s'), 2)} "
            f"| {_fmt(row['peak_allocated_gib'], 2)} "
            f"| {_fmt(row['peak_reserved_gib'], 2)} | {_fmt(ups.get((row['case'], row['variant'])), 2)} |"
            + (f" {note}" if note else ""))
    if record.get("image_diffs"):
        lines += ["", "## Images (same seed; absolute difference in 8-bit levels)", "",
                  "| case | image | against | max | mean |", "| --- | --- | --- | --- | --- |"]
        for d in record["image_diffs"]:
            lines.append(f"| {d['case']} | {d['a']} | {d['b']} | {d['max']:.0f} | {d['mean']:.3f} |")
    lines += ["", "## Loads and swaps", "", "| measurement | value |", "| --- | --- |"]
    for key, value in record["swaps"].items():
        lines.append(f"| {key} | {_fmt(value) if isinstance(value, float) else value} |")
    lines += ["", f"## Targets (issue \"Speed on the GPU\"; default path = variant {meta.get('default', 'ours')})",
              "", "| target | value | goal | met |",
              "| --- | --- | --- | --- |"]
    for t in record["targets"]:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {_fmt(t['value'], 3)} | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n"


def write(out: Path, record: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    md_path.write_text(markdown(record))
    return json_path, md_path


def rerender(json_path: Path, default: str) -> Path:
    """Recompute the targets of a results.json for another default variant and rewrite its report."""
    record = json.loads(json_path.read_text())
    rows = [Measurement(**{k: v for k, v in m.items() if k in Measurement.__dataclass_fields__})
            for m in record["measurements"]]
    meta = record["meta"]
    small, large = (64, 96) if meta["tiny"] else (512, 768)
    up_small, up_large = ("upscale-16-", "upscale-32-") if meta["tiny"] else ("upscale-128-", "upscale-512-")
    record["meta"]["default"] = default
    record["targets"] = targets(rows, record["swaps"], small=small, large=large, up_small=up_small,
                                up_large=up_large, default=default)
    return write(json_path.parent, record)[1]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="re-render a results.json for another default variant")
    parser.add_argument("json", type=Path)
    parser.add_argument("--default", default="ours")
    cli = parser.parse_args()
    print(rerender(cli.json, cli.default))
