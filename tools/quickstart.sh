#!/usr/bin/env bash
# The main job on the embedded default: builds deltaserve, creates a small random-weight model
# (CPU, ~210 MB) and generates from it.
set -euo pipefail
cd "$(dirname "$0")/.."

./tools/build.sh --target deltaserve
model_dir=${MODEL_DIR:-models/small}
if [ ! -f "$model_dir/config.json" ]; then
  ./build/cli/deltaserve init-model --preset small --seed 0 --out "$model_dir"
fi
./build/cli/deltaserve generate --model "$model_dir" --tokens 1,2,3,4,5 --max-new-tokens 32 \
  --temperature 0.8 --top-p 0.95 --seed 42
