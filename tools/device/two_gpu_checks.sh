#!/usr/bin/env bash
# On a host of two GPUs or more: what the NCCL data plane needs that one GPU cannot show. The
# two-GPU cases of the transport and worker tests (three times over, then under compute-sanitizer
# memcheck), the CUDA cluster with two pipelined steps (its tokens must equal serve's), and the
# hand-off benches (hidden rows between stages, expert calls), NCCL against gRPC bytes.
# Bundle first, here: tools/device/bundle.sh services_transport_test services_worker_test \
#   deltaserve cuda_stage_hop_bench cuda_expert_hop_bench
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
source tools/device/device_env.sh
nvidia-smi -L
status=0
cuda_cases='*NcclLink*:*NcclExperts*cuda:*NcclStages*cuda:*RemoteExpertRunner*cuda'
for run in 1 2 3; do
  echo "== tests, run $run"
  "$bundle"/services_transport_test --gtest_brief=1 || status=1
  "$bundle"/services_worker_test --gtest_brief=1 --gtest_filter="$cuda_cases" || status=1
done
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [[ -n $sanitizer ]]; then
  echo "== memcheck"
  "$sanitizer" --tool memcheck --error-exitcode 1 "$bundle"/services_worker_test --gtest_brief=1 \
    --gtest_filter="$cuda_cases" || status=1
else
  echo "== memcheck: no compute-sanitizer on this host"
fi
echo "== the CUDA cluster, two steps in flight"
PIPELINE_STEPS=2 tools/device/smoke_cuda_cluster.sh || status=1
echo "== hand-off benches"
"$bundle"/cuda_stage_hop_bench --iters 30 || status=1
"$bundle"/cuda_expert_hop_bench || status=1
exit $status
