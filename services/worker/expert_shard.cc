#include "services/worker/expert_shard.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/device_failure.h"

namespace deltaserve::services {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<std::unique_ptr<ExpertShard>> ExpertShard::Load(const std::string& dir,
                                                              kernels::Backend& backend,
                                                              int64_t expert_begin,
                                                              int64_t expert_end) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> checkpoint, model::Checkpoint::Open(dir));
  return Load(std::move(checkpoint), backend, expert_begin, expert_end);
}

absl::StatusOr<std::unique_ptr<ExpertShard>> ExpertShard::Load(std::unique_ptr<model::Checkpoint> checkpoint,
                                                              kernels::Backend& backend, int64_t expert_begin,
                                                              int64_t expert_end) {
  const model::KimiLinearConfig& config = checkpoint->config();
  if (expert_begin < 0 || expert_begin >= expert_end || expert_end > config.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("expert range ", expert_begin, "-", expert_end - 1,
                                                   " is not inside the model's ", config.num_experts,
                                                   " experts"));
  }
  model::WeightScope scope;
  scope.expert_begin = expert_begin;
  scope.expert_end = expert_end;
  scope.load_dense = false;
  DS_ASSIGN_OR_RETURN(model::ModelWeights weights, model::LoadModelWeights(*checkpoint, backend, scope));
  return std::unique_ptr<ExpertShard>(
      new ExpertShard(std::move(checkpoint), backend, std::move(weights), expert_begin, expert_end));
}

ExpertShard::ExpertShard(std::unique_ptr<model::Checkpoint> checkpoint, kernels::Backend& backend,
                         model::ModelWeights weights, int64_t expert_begin, int64_t expert_end)
    : checkpoint_(std::move(checkpoint)),
      backend_(backend),
      weights_(std::move(weights)),
      expert_begin_(expert_begin),
      expert_end_(expert_end),
      fingerprint_(checkpoint_->ModelFingerprint()) {}

absl::StatusOr<int64_t> ExpertShard::Check(const internal::v1::RunExpertsRequest& request) const {
  const model::KimiLinearConfig& c = config();
  if (request.has_model_fingerprint() && request.model_fingerprint() != fingerprint_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "expert shard serves model %016x, the stage expects %016x: restart the pipeline as a whole",
        fingerprint_, request.model_fingerprint()));
  }
  if ((request.has_expert_begin() && request.expert_begin() != expert_begin_) ||
      (request.has_expert_end() && request.expert_end() != expert_end_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "expert shard holds experts [", expert_begin_, ", ", expert_end_, "), the stage expects [",
        request.expert_begin(), ", ", request.expert_end(), "): restart the pipeline as a whole"));
  }
  const int64_t layer = request.layer();
  if (layer < 0 || layer >= c.num_layers || !c.IsMoe(layer)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", layer, " is not an MoE layer"));
  }
  const int64_t n = request.num_tokens();
  const int64_t k = request.top_k();
  const int64_t hidden_bytes = request.hidden_link() != 0 ? 0 : n * c.hidden_size * 4;
  if (k != c.num_experts_per_token || n < 0 ||
      static_cast<int64_t>(request.expert_ids_size()) != n * k ||
      static_cast<int64_t>(request.hidden().size()) != hidden_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert request for ", n, " tokens x top ", k, " carries ", request.expert_ids_size(),
        " expert ids and ", request.hidden().size(), " bytes of hidden state",
        request.hidden_link() != 0 ? " beside an NCCL link" : ""));
  }
  int64_t in_range = 0;
  for (int32_t id : request.expert_ids()) {
    if (id < 0 || id >= c.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert id ", id, " is outside the model's ",
                                                     c.num_experts, " experts"));
    }
    if (id >= expert_begin_ && id < expert_end_) ++in_range;
  }
  return in_range;
}

absl::Status ExpertShard::Compute(const internal::v1::RunExpertsRequest& request, kernels::TensorView x,
                                  kernels::TensorView out) {
  const model::KimiLinearConfig& c = config();
  const int64_t n = request.num_tokens();
  const int64_t k = request.top_k();
  Tensor ids = backend_.Allocate(n, k, DType::kI32);
  backend_.Upload(request.expert_ids().data(), ids.view());
  Tensor slots = backend_.Allocate(n * k, c.hidden_size, DType::kF32);
  const model::MoeWeights& moe = weights_.layer(request.layer()).moe;
  backend_.MoeExperts(x, ids.view(), moe.experts, moe.first_expert, slots.view());
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(out.rows));
  for (int64_t slot = 0; slot < n * k; ++slot) {
    const int32_t id = request.expert_ids(static_cast<int>(slot));
    if (id >= expert_begin_ && id < expert_end_) rows.push_back(slot);
  }
  backend_.GatherRows(slots.view(), rows, out);
  return model::TakeDeviceFailure(backend_, "while running the experts");
}

absl::Status ExpertShard::RunExperts(const internal::v1::RunExpertsRequest& request,
                                     internal::v1::RunExpertsResponse* response) {
  if (request.hidden_link() != 0) {
    return absl::FailedPreconditionError("this expert shard takes no NCCL links; send the rows as bytes");
  }
  DS_ASSIGN_OR_RETURN(const int64_t in_range, Check(request));
  response->clear_slot_outputs();
  if (in_range == 0) return absl::OkStatus();
  const int64_t hidden = config().hidden_size;
  Tensor x = backend_.Allocate(request.num_tokens(), hidden, DType::kF32);
  backend_.Upload(request.hidden().data(), x.view());
  Tensor picked = backend_.Allocate(in_range, hidden, DType::kF32);
  DS_RETURN_IF_ERROR(Compute(request, x.view(), picked.view()));
  std::string* out = response->mutable_slot_outputs();
  out->resize(static_cast<size_t>(in_range * hidden) * sizeof(float));
  backend_.Download(picked.view(), out->data());
  return model::TakeDeviceFailure(backend_, "while returning the experts' outputs");
}

}  // namespace deltaserve::services
