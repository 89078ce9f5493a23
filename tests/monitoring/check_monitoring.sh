#!/usr/bin/env bash
# Checks the Prometheus rules: `promtool check rules` (syntax, templates, duplicate names) on
# helm/deltaserve/files/prometheus-rules.yaml, then the unit tests in rules_test.yaml.
# Usage: tests/monitoring/check_monitoring.sh [PROMTOOL]   (default: promtool on PATH; Debian
# package `prometheus`). Metric names are checked by check_metric_names.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rules="$here/../../helm/deltaserve/files/prometheus-rules.yaml"
promtool="${1:-$(command -v promtool || true)}"
if [[ -z "$promtool" || ! -x "$promtool" ]]; then
  echo "promtool not found: install Debian's prometheus package or pass its path" >&2
  exit 1
fi

"$promtool" check rules "$rules"
# promtool resolves rule_files relative to the test file's directory.
"$promtool" test rules "$here/rules_test.yaml"
