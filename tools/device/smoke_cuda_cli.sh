#!/usr/bin/env bash
# On a GPU host: `deltaserve generate --device cuda` beside the CPU, then
# `deltaserve serve --device cuda` answering a two-turn session.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source tools/device/device_env.sh
model=tests/data/kimi-tiny-public
prompt=5,17,200,2,99,7,64,1
for device in cpu cuda; do
  echo "== generate --device $device"
  "$ds" generate --model "$model" --device "$device" --tokens "$prompt" --max-new-tokens 12 \
    --temperature 0 --ignore-eos || exit 1
done
echo "== serve --device cuda"
"$ds" serve --model "$model" --device cuda --listen 127.0.0.1:50071 --log-level warn &
server=$!
trap 'kill $server 2>/dev/null' EXIT
wait_healthy 127.0.0.1:50071 || exit 1
"$ds" client generate --server 127.0.0.1:50071 --session smoke --new-session --tokens "$prompt" \
  --max-new-tokens 6 --temperature 0 || exit 1
"$ds" client generate --server 127.0.0.1:50071 --session smoke --tokens 3,4 \
  --max-new-tokens 6 --temperature 0 || exit 1
