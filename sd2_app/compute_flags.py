"""The command-line flags that say where and how the models compute: --device, --dtype and --speed.

app.py and the CLI (`python -m sd2_app`) define them here once. Nothing here imports torch: app.py adds the
flags before it imports `spaces`, which must come before torch on a ZeroGPU Space. The speed modes' switches
are `sd2_app.accel.options.options_for`; the dtype names are torch's (`getattr(torch, name)`).
"""

from __future__ import annotations

import argparse

SPEED_MODES = ("default", "compile", "eager")  # the --speed flag's choices (sd2_app.accel.options_for)
DTYPES = ("float16", "bfloat16", "float32")  # the --dtype flag's choices


def add_compute_arguments(parser: argparse.ArgumentParser, *, speed_note: str = "") -> None:
    """--device, --speed and --dtype; `speed_note` ends --speed's help (app.py: what it means on ZeroGPU)."""
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--speed", choices=SPEED_MODES, default="default",
                        help="GPU speed path: default (CUDA graphs, fused ops, channels_last), compile (+ "
                             "torch.compile of the UNet, about a minute of warm-up per size), eager" + speed_note)
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: float16 on CUDA, float32 on CPU")
