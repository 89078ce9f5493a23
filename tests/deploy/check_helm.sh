#!/usr/bin/env bash
# Checks the Helm chart helm/deltaserve without a cluster:
#   1. `helm lint --strict` and `helm template` for every values file (values.yaml,
#      values-cpu-demo.yaml, values-gpu.yaml), once with Envoy turned off, and for variants that
#      reach the templates' other branches;
#   2. tests/deploy/validate_manifests.mjs on every render (Kubernetes schemas plus our own
#      assertions: selectors, ports, probes, GPUs, security contexts, network policies, Envoy);
#   3. values the chart must refuse (a gap in the topology, a schema violation, ...);
#   4. the validator's self-test (each known breakage of a render is caught);
#   5. with DELTASERVE_BINARY set (a built deltaserve), tests/deploy/run_rendered_cluster.mjs: the
#      CPU demo's pods run as local processes, serve a session and drain.
# Tools come from .deploy-tools/ (tools/deploy/install_tools.sh). Prints "N passed, N failed".
# Usage: [DELTASERVE_BINARY=build/cli/deltaserve] tests/deploy/check_helm.sh [CHART_DIR]
#        (CHART_DIR defaults to helm/deltaserve)
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="${DEPLOY_TOOLS:-${root}/.deploy-tools}"
chart="${1:-${root}/helm/deltaserve}"
helm="${tools}/bin/helm"
validator="${root}/tests/deploy/validate_manifests.mjs"

if [ ! -x "${helm}" ] || [ ! -d "${tools}/node_modules/kubernetes-models" ]; then
  echo "check_helm.sh: helm or kubernetes-models missing in ${tools}; run tools/deploy/install_tools.sh" >&2
  exit 2
fi
if ! command -v node >/dev/null 2>&1; then
  echo "check_helm.sh: node not found (Debian: apt-get install nodejs)" >&2
  exit 2
fi

# Helm writes caches and repository lists; keep them out of $HOME.
export HELM_CACHE_HOME="${tools}/helm/cache" HELM_CONFIG_HOME="${tools}/helm/config" \
  HELM_DATA_HOME="${tools}/helm/data"
mkdir -p "${HELM_CACHE_HOME}" "${HELM_CONFIG_HOME}" "${HELM_DATA_HOME}"

out="$(mktemp -d)"
trap 'rm -rf "${out}"' EXIT
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion): gRPC probes are GA there.
kube_version=1.27.0
release=deltaserve-ci
namespace=deltaserve-ci

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAILED: $1" >&2; }

# lint_render NAME VALIDATOR_FLAGS -- HELM_ARGS...: lint, render and validate one configuration.
lint_render() {
  local name="$1" flags="$2"
  shift 3
  local log="${out}/${name}.log"
  if "${helm}" lint --strict --kube-version "${kube_version}" "${chart}" "$@" >"${log}" 2>&1; then
    pass "${name}: helm lint --strict"
  else
    fail "${name}: helm lint --strict"
    sed 's/^/    /' "${log}" >&2
  fi
  if "${helm}" template "${release}" "${chart}" --namespace "${namespace}" --kube-version "${kube_version}" \
      "$@" >"${out}/${name}.yaml" 2>"${log}"; then
    pass "${name}: helm template"
  else
    fail "${name}: helm template"
    sed 's/^/    /' "${log}" >&2
    return
  fi
  # shellcheck disable=SC2086  # flags is a list of words
  if node "${validator}" ${flags} "${out}/${name}.yaml" >"${log}" 2>&1; then
    pass "${name}: manifests valid"
  else
    fail "${name}: manifests"
    sed 's/^/    /' "${log}" >&2
  fi
}

# must_refuse NAME EXPECTED_TEXT -- HELM_ARGS...: the chart must refuse these values, saying why.
must_refuse() {
  local name="$1" expected="$2"
  shift 3
  local log="${out}/refuse-${name//[^A-Za-z0-9]/-}.log"
  if "${helm}" template "${release}" "${chart}" --namespace "${namespace}" --kube-version "${kube_version}" \
      "$@" >/dev/null 2>"${log}"; then
    fail "refuses ${name}: helm template accepted it"
  elif grep -q -- "${expected}" "${log}"; then
    pass "refuses ${name}"
  else
    fail "refuses ${name}: the error does not mention '${expected}'"
    sed 's/^/    /' "${log}" >&2
  fi
}

values="${chart}/values.yaml"
demo="${chart}/values-cpu-demo.yaml"
gpu="${chart}/values-gpu.yaml"
for file in "${values}" "${demo}" "${gpu}"; do
  [ -f "${file}" ] || fail "${file} exists"
done

lint_render default "--expect-kind=NetworkPolicy" -- -f "${values}"
lint_render cpu-demo "--expect-kind=NetworkPolicy" -- -f "${demo}"
lint_render gpu "--gpu --expect-kind=ServiceMonitor --expect-kind=PrometheusRule" -- -f "${gpu}"
lint_render no-envoy "--envoy=off" -- -f "${values}" --set envoy.enabled=false
lint_render gpu-no-envoy "--envoy=off --gpu" -- -f "${gpu}" --set envoy.enabled=false
lint_render variants "--expect-kind=ServiceMonitor --expect-kind=HorizontalPodAutoscaler" -- -f "${values}" \
  --set networkPolicy.egress.enabled=true --set router.autoscaling.enabled=true \
  --set router.autoscaling.queueDepth.enabled=true \
  --set monitoring.serviceMonitor.enabled=true --set monitoring.grafanaDashboard.enabled=true \
  --set envoy.service.type=LoadBalancer --set 'envoy.service.loadBalancerSourceRanges={10.0.0.0/8}' \
  --set router.antiAffinity=hard --set stage.antiAffinity=none
lint_render no-experts "" -- -f "${values}" --set-json 'topology.expertShards=[]' --set router.autoscaling.enabled=false
lint_render gpu-nccl "--gpu" -- -f "${gpu}" --set stage.ncclMaxRows=8192 --set networkPolicy.enabled=true
lint_render gpu-nccl-links "--gpu" -- -f "${gpu}" --set stage.ncclMaxRows=8192 --set stage.ncclOutputLinks=5
lint_render no-store "" -- -f "${values}" --set sessionStore.enabled=false
# A release name near the longest Helm allows (53 characters): StatefulSet names must stay within 52.
release=a-release-name-of-the-longest-length-helm-allows-53 lint_render long-release "" -- -f "${values}"

# Without persistence the store keeps its tier on an emptyDir: lint and render only.
if "${helm}" lint --strict --kube-version "${kube_version}" "${chart}" -f "${values}" \
    --set sessionStore.persistence.enabled=false >"${out}/emptydir.log" 2>&1; then
  pass "store on an emptyDir: helm lint --strict"
else
  fail "store on an emptyDir: helm lint --strict"
  sed 's/^/    /' "${out}/emptydir.log" >&2
fi

must_refuse "a gap between stages" "must start at layer 4" -- \
  --set-json 'topology.stages=[{"layers":"0-3"},{"layers":"5-7"}]'
must_refuse "expert shards that do not start at 0" "must start at expert 0" -- \
  --set-json 'topology.expertShards=[{"experts":"1-15"},{"experts":"16-31"}]'
must_refuse "a malformed layer range" "layers" -- --set-json 'topology.stages=[{"layers":"0_7"}]'
must_refuse "an unknown value" "bogus" -- --set router.bogus=1
must_refuse "zero HTTP/2 streams at Envoy" "maxConcurrentStreams" -- --set envoy.limits.maxConcurrentStreams=0
must_refuse "cuda without GPUs" "stage.gpus" -- --set model.device=cuda
must_refuse "GPUs on the cpu device" "model.device" -- --set stage.gpus=1
must_refuse "a public router behind Envoy" "router.service.type" -- --set router.service.type=LoadBalancer
must_refuse "more minimum than maximum routers" "minReplicas" -- --set router.autoscaling.minReplicas=5
must_refuse "a relative model path" "model.source" -- --set model.source=models/small
must_refuse "more than 64 NCCL links from a stage" "ncclOutputLinks" -- --set stage.ncclOutputLinks=65

if [ -f "${out}/default.yaml" ]; then
  if node "${validator}" --self-test "${out}/default.yaml" >"${out}/self-test.log" 2>&1; then
    pass "validator self-test ($(tail -n 1 "${out}/self-test.log"))"
  else
    fail "validator self-test"
    sed 's/^/    /' "${out}/self-test.log" >&2
  fi
fi

if [ -n "${DELTASERVE_BINARY:-}" ] && [ -f "${out}/cpu-demo.yaml" ]; then
  if node "${root}/tests/deploy/run_rendered_cluster.mjs" "${DELTASERVE_BINARY}" "${out}/cpu-demo.yaml" \
      >"${out}/cluster.log" 2>&1; then
    pass "the CPU demo's pods run, serve a session and drain (run_rendered_cluster.mjs)"
  else
    fail "the CPU demo's pods as local processes (run_rendered_cluster.mjs)"
    sed 's/^/    /' "${out}/cluster.log" >&2
  fi
fi

echo "${passed} passed, ${failed} failed"
[ "${failed}" -eq 0 ]
