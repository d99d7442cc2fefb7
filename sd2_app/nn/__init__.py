"""Networks only: UNet and AutoencoderKL built from config dataclasses; no I/O, no device policy."""
