#!/usr/bin/env bash
# One GPU lease, one command. Steps (STEPS, run in the order listed here, each only if named):
#   appstart  the cold start users see: `python app.py --preload sd21-base` in a fresh process (empty Triton
#             cache, weights in the page cache) to the first 512 image returned to a client, by phase
#             (bench/appstart.py; issue 24 section 6). Runs first, before anything fills Triton's cache.
#   request   the whole request (issue 24 section 3): `python app.py --preload sd21-base`, a warm-up and
#             REQUEST_N (default 10) txt2img 512 requests, 25 steps, through gradio_client, each split by phase
#             from the app's log line; app overhead vs pipeline (target <= 15 %), PNG encode costs
#             (bench/request.py: request.md); its warm-up request takes the kernel compiles and graph captures.
#   coldstart the cold first image in-process by phase, in fresh processes with empty Triton caches: the
#             default path and a checkpoint swap, the start-up check on one thread, cuDNN's benchmark off, the
#             default again with a warm Triton cache (bench/coldstart.py)
#   bench     every case, BENCH_VARIANTS vs diffusers eager, and the swaps (its first case is the cold "model
#             loaded -> first image", so it runs before the steps below fill Triton's kernel cache)
#   tests     the GPU tests (before the long compiles of `peers`, so they always run)
#   lora      a LoRA's merge into the full-size UNet for a job and its exact put-back (bench/lora.py: lora.md)
#   users     issue 24 section 4: BENCH_USERS (default 8) concurrent users x USERS_REQUESTS (default 3) txt2img
#             512 requests through one Service, batching across users off vs on: images/s, p50/p95 latency,
#             requests per batch, and the batched images against the same requests run alone (bench/users.py;
#             users.md, users.json); USERS_APP=1 also through the running app (python app.py [--batch-users] and
#             gradio_client users: gradio from the wheels, bench/README.md)
#   peers     issue 24 sections 1 and 2: txt2img 512 (sd2-base), 768 (sd2) and 768 (sd21, upcast_attention)
#             for our default path, diffusers eager and diffusers' speed-guide recipe (max-autotune compile:
#             minutes per size, so it comes last and is cut by the budget), with each side's load and warm-up
#             and the images compared (bench/run.py --variants ours,diffusers,diffusers-recipe)
#   micro     every switch combination, or MICRO_VARIANTS, on one UNet call and one VAE decode at MICRO_SIZES
#             (default 512,768; x4 adds the upscaler's UNet at 128x128 latents)
#   profile   phases and kernels of one default-path image (bench/profile.py)
#   compiled  txt2img COMPILED_SIZE b1 (default 512): our --speed compile path vs diffusers + torch.compile
# Every step is bounded by the budget (BENCH_BUDGET_S from the start of this script) so results land in $OUT
# before the lease's limit, and writes as it goes, so a step cut short still leaves its numbers.
# Issue 24's one run (under 10 minutes; the wheels of bench/device-wheels.txt installed first: bench/README.md):
#   BENCH_BUDGET_S=540 BENCH_KINDS="sd2-base sd2 sd21" STEPS="appstart tests peers" bash bench/gpu.sh
# The whole request (issue 24 section 3), about 2 minutes with the checkpoint written:
#   BENCH_BUDGET_S=200 BENCH_KINDS=sd2-base STEPS="request" bash bench/gpu.sh
# Batching across users (section 4), about 4 minutes with the checkpoint written and the app's two starts:
#   BENCH_BUDGET_S=420 BENCH_KINDS=sd2-base STEPS="users" USERS_APP=1 bash bench/gpu.sh
# Files in $OUT (the device tool returns at most 8): env.txt, log.txt (every step's log), appstart.md, request.md,
# users.md, micro.md, results.md, peers.md, profile.md, compiled.md, tests.txt; with more than 8 files the .json/.jsonl
# files end up in one raw-json.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
CKPT="${BENCH_CKPT:-/tmp/sd2-bench}"
STEPS="${STEPS:-micro bench tests}"
START=$(date +%s)
END=$((START + ${BENCH_BUDGET_S:-520}))
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
TINY="${BENCH_TINY:+--tiny --quick}"  # BENCH_TINY=1: tiny models, a CPU rehearsal of this script's flow
mkdir -p "$OUT"
left() { echo $((END - $(date +%s))); }
stamp() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$OUT/env.txt"; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
# seconds kept back for the steps after the current one
after() { local s=0; for step in "$@"; do has "$step" && s=$((s + ${RESERVE[$step]})); done; echo $s; }
declare -A RESERVE=([appstart]=90 [request]=100 [coldstart]=110 [bench]=130 [tests]=90 [lora]=40 [users]=240
                    [peers]=150 [micro]=60 [profile]=45 [compiled]=150)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, torch, transformers, safetensors, diffusers, triton; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'transformers', transformers.__version__, 'safetensors', safetensors.__version__, 'diffusers', diffusers.__version__, 'triton', triton.__version__)"
  nproc; free -g | head -2
} >> "$OUT/env.txt" 2>&1
stamp "steps: $STEPS"

if [ -z "$TINY" ]; then
  stamp "writing checkpoints"
  kinds=""; for kind in ${BENCH_KINDS:-}; do kinds+=" --kind $kind"; done  # default: every kind
  timeout "$(left)" python3 -m bench.write_checkpoints "$CKPT/full" $kinds >> "$OUT/env.txt" 2>&1
  stamp "checkpoints written (rc $?)"; du -sh "$CKPT/full" >> "$OUT/env.txt" 2>&1
fi

if has appstart; then
  keep=$(after request coldstart bench tests lora users peers micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.appstart ${BENCH_TINY:+--tiny --size 64 --steps 2} \
    --ckpt "$CKPT" --out "$OUT" >> "$OUT/log.txt" 2>&1
  stamp "appstart done (rc $?)"
fi

if has request; then
  keep=$(after coldstart bench tests lora users peers micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.request --n "${REQUEST_N:-10}" \
    ${BENCH_TINY:+--tiny --size 64 --steps 2 --n 3 --png-sizes 512} --ckpt "$CKPT" --out "$OUT" >> "$OUT/log.txt" 2>&1
  stamp "request done (rc $?)"
fi

if has coldstart; then
  keep=$(after bench tests lora users peers micro profile compiled)
  warm=$(mktemp -d)
  for run in "default|$warm|--swap" "serial-checks||--check-threads 1" "no-cudnn-benchmark||--no-cudnn-benchmark" \
             "warm-triton-cache|$warm|"; do
    IFS='|' read -r label cache flags <<< "$run"
    TRITON_CACHE_DIR="${cache:-$(mktemp -d)}" timeout $(( $(left) - keep )) python3 -m bench.coldstart \
      ${BENCH_TINY:+--tiny --steps 3} --ckpt "$CKPT" --out "$OUT" --label "$label" $flags >> "$OUT/log.txt" 2>&1
    stamp "coldstart $label done (rc $?)"
  done
fi

if has bench; then
  keep=$(after tests lora users peers micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.run $TINY --ckpt "$CKPT" --out "$OUT" \
    --variants "${BENCH_VARIANTS:-ours,diffusers}" ${BENCH_ONLY:+--only "$BENCH_ONLY" --no-swaps} \
    --deadline $((END - keep - 40)) >> "$OUT/log.txt" 2>&1
  stamp "bench done (rc $?)"
fi

if has tests; then
  keep=$(after lora users peers micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m pytest -q -m gpu -p no:cacheprovider tests/accel/test_accel_*.py \
    tests/nn/test_attention_precision.py tests/accel/test_gpu_numerics.py tests/manager/test_manager.py tests/reliability/test_reliability_faults.py tests/accel/test_text_graph.py \
    tests/accel/test_stacking.py tests/accel/test_vae_attention.py tests/accel/test_upsample.py tests/accel/test_lora_fused.py \
    tests/pipelines/test_pipelines_helpers.py tests/loading/test_staged_read.py > "$OUT/tests.txt" 2>&1
  stamp "gpu tests done (rc $?)"
fi

if has lora; then
  keep=$(after users peers micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.lora > "$OUT/lora.md" 2>> "$OUT/log.txt"
  stamp "lora done (rc $?)"
fi

if has users; then
  keep=$(after peers micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.users ${BENCH_TINY:+--tiny} ${USERS_APP:+--app} --ckpt "$CKPT" \
    --out "$OUT" --users "${BENCH_USERS:-8}" --requests "${USERS_REQUESTS:-3}" >> "$OUT/log.txt" 2>&1
  stamp "users done (rc $?)"
fi

if has peers; then
  keep=$(after micro profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.run $TINY --ckpt "$CKPT" --out /tmp/peers --no-swaps \
    --only "$([ -n "$TINY" ] && echo txt2img-64-b1,txt2img-96-b1,txt2img-96-sd21-b1 \
              || echo txt2img-512-b1,txt2img-768-b1,txt2img-768-sd21-b1)" \
    --variants "${PEERS_VARIANTS:-ours,diffusers,diffusers-recipe}" --deadline $((END - keep - 20)) \
    >> "$OUT/log.txt" 2>&1
  stamp "peers done (rc $?)"
  cp /tmp/peers/results.json "$OUT/peers.json" 2>/dev/null
  cp /tmp/peers/results.md "$OUT/peers.md" 2>/dev/null
fi

if has micro; then
  keep=$(after profile compiled)
  timeout $(( $(left) - keep )) python3 -m bench.micro ${BENCH_TINY:+--tiny} --ckpt "$CKPT" --out "$OUT" \
    ${MICRO_VARIANTS:+--variants "$MICRO_VARIANTS"} --sizes "${MICRO_SIZES:-512,768}" \
    --deadline $((END - keep - 30)) >> "$OUT/log.txt" 2>&1
  stamp "micro done (rc $?)"
fi

if has profile; then
  keep=$(after compiled)
  timeout $(( $(left) - keep )) python3 -m bench.profile ${BENCH_TINY:+--tiny} --ckpt "$CKPT" --out "$OUT" \
    >> "$OUT/log.txt" 2>&1
  stamp "profile done (rc $?)"
fi

if has compiled; then
  keep=0
  small=$([ -n "$TINY" ] && echo 64 || echo "${COMPILED_SIZE:-512}")
  timeout $(( $(left) - keep )) python3 -m bench.run $TINY --ckpt "$CKPT" --out /tmp/compiled --no-swaps \
    --only "txt2img-$small-b1" --variants "${COMPILED_VARIANTS:-ours-compiled,diffusers-compiled}" \
    --default-variant ours-compiled \
    >> "$OUT/log.txt" 2>&1
  stamp "compiled bench done (rc $?)"
  cp /tmp/compiled/results.json "$OUT/compiled.json" 2>/dev/null
  cp /tmp/compiled/results.md "$OUT/compiled.md" 2>/dev/null
fi

cat "$OUT/appstart.md" "$OUT/request.md" "$OUT/coldstart.md" "$OUT/lora.md" "$OUT/users.md" "$OUT/micro.md" "$OUT/results.md" \
  "$OUT/peers.md" \
  "$OUT/compiled.md" 2>/dev/null
sed -n '/phases/,/One unsynchronised/p' "$OUT/profile.md" 2>/dev/null
tail -3 "$OUT/tests.txt" 2>/dev/null
stamp "end"
# The device tool returns at most 8 files: with every step there are 10, so the raw JSON goes into one
# archive (the markdown reports carry the same tables).
if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then
  (cd "$OUT" && tar czf raw-json.tar.gz ./*.json ./*.jsonl 2>/dev/null; rm -f ./*.json ./*.jsonl)
fi
