#!/usr/bin/env bash
# Runs a bundled binary and its `_base` twin (bundle.sh --base) alternately on a GPU host, so
# that clock and thermal drift fall on both alike. Each run's output goes to
# OUTDIR/<binary>_<base|new>_<pass>.txt (OUTDIR: $OUT on the device tool's host, else the
# current folder); the lines with a time in them are echoed.
# Usage: tools/device/alternate.sh PASSES BINARY [ARGS...]
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
# shellcheck source=tools/device/device_env.sh
source tools/device/device_env.sh
passes=${1:?passes}
name=${2:?binary}
shift 2
out=${OUT:-.}
for binary in "$bundle/$name" "$bundle/${name}_base"; do
  [[ -x $binary ]] || { echo "no $binary: build it with tools/device/bundle.sh --base REV $name" >&2; exit 1; }
done
for ((pass = 1; pass <= passes; ++pass)); do
  for version in base new; do
    binary="$bundle/$name"
    [[ $version == base ]] && binary="$bundle/${name}_base"
    file="$out/${name}_${version}_${pass}.txt"
    "$binary" "$@" >"$file" 2>&1
    echo "== $version, pass $pass (exit $?)"
    grep -aoE '"[a-z_]*ms[a-z_]*": ?[0-9.]+' "$file" | tr '\n' ' '
    echo
  done
done
