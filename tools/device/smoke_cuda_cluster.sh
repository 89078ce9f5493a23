#!/usr/bin/env bash
# On a GPU host: the split cluster with every worker on the GPU
# (`--device cuda:N`, N cycling over the visible GPUs): session store, two expert workers, two
# pipeline stages and the router (`--pipeline-steps $PIPELINE_STEPS`, default 2); a two-turn
# session through it, then the same prompt through `deltaserve serve --device cuda` for comparison.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source tools/device/device_env.sh
model=${MODEL:-tests/data/kimi-tiny-public}
gpus=$(nvidia-smi -L | wc -l)
gpu() { echo "cuda:$(($1 % gpus))"; }
prompt=5,17,200,2,99,7,64,1
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
start() { "$@" --log-level warn & pids+=($!); }

start "$ds" session-store --listen 127.0.0.1:51071
start "$ds" worker --role experts --experts 0-3 --model "$model" --device "$(gpu 0)" --listen 127.0.0.1:51081
start "$ds" worker --role experts --experts 4-7 --model "$model" --device "$(gpu 1)" --listen 127.0.0.1:51082
start "$ds" worker --role stage --layers 2-3 --model "$model" --device "$(gpu 2)" --listen 127.0.0.1:51062 \
  --expert-workers 127.0.0.1:51081,127.0.0.1:51082 --session-store 127.0.0.1:51071
start "$ds" worker --role stage --layers 0-1 --model "$model" --device "$(gpu 3)" --listen 127.0.0.1:51061 \
  --next 127.0.0.1:51062 --expert-workers 127.0.0.1:51081,127.0.0.1:51082 --session-store 127.0.0.1:51071
start "$ds" router --model "$model" --first-stage 127.0.0.1:51061 --session-store 127.0.0.1:51071 \
  --pipeline-steps "${PIPELINE_STEPS:-2}" --listen 127.0.0.1:51051
wait_healthy 127.0.0.1:51051 || exit 1
echo "== cluster on $gpus GPU(s)"
"$ds" client generate --server 127.0.0.1:51051 --session c --new-session --tokens "$prompt" \
  --max-new-tokens 8 --temperature 0 || exit 1
"$ds" client generate --server 127.0.0.1:51051 --session c --tokens 3,4 \
  --max-new-tokens 8 --temperature 0 || exit 1
echo "== serve"
start "$ds" serve --model "$model" --device cuda --listen 127.0.0.1:51052
wait_healthy 127.0.0.1:51052 || exit 1
"$ds" client generate --server 127.0.0.1:51052 --session s --new-session --tokens "$prompt" \
  --max-new-tokens 8 --temperature 0 || exit 1
"$ds" client generate --server 127.0.0.1:51052 --session s --tokens 3,4 \
  --max-new-tokens 8 --temperature 0 || exit 1
