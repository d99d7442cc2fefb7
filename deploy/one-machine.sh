#!/usr/bin/env bash
# One machine with N GPUs: start Ray, deploy the workers (one replica per GPU, see deploy/serve.toml), then the
# web app in front of them. Usage: deploy/one-machine.sh [app.py flags...], e.g. --host 0.0.0.0.
# Stop with Ctrl+C, then `ray stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${SD2_SERVE_CONFIG:-deploy/serve.toml}"
GPUS="$(nvidia-smi -L 2>/dev/null | wc -l || true)"
ray start --head --num-gpus="${GPUS:-0}" --disable-usage-stats
python -m sd2_app.serve --config "$CONFIG" --address auto
exec python app.py --serve auto --serve-config "$CONFIG" "$@"
