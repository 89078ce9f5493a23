#include "services/worker/expert_shard.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"

namespace deltaserve::services {

using kernels::DType;
using kernels::Tensor;

absl::StatusOr<std::unique_ptr<ExpertShard>> ExpertShard::Load(const std::string& dir,
                                                              kernels::Backend& backend,
                                                              int64_t expert_begin,
                                                              int64_t expert_end) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> checkpoint, model::Checkpoint::Open(dir));
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

absl::Status ExpertShard::RunExperts(const internal::v1::RunExpertsRequest& request,
                                     internal::v1::RunExpertsResponse* response) {
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
  if (k != c.num_experts_per_token || n < 0 ||
      static_cast<int64_t>(request.expert_ids_size()) != n * k ||
      static_cast<int64_t>(request.hidden().size()) != n * c.hidden_size * 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert request for ", n, " tokens x top ", k, " carries ", request.expert_ids_size(),
        " expert ids and ", request.hidden().size(), " bytes of hidden state"));
  }
  int64_t in_range = 0;
  for (int32_t id : request.expert_ids()) {
    if (id < 0 || id >= c.num_experts) {
      return absl::InvalidArgumentError(absl::StrCat("expert id ", id, " is outside the model's ",
                                                     c.num_experts, " experts"));
    }
    if (id >= expert_begin_ && id < expert_end_) ++in_range;
  }
  response->clear_slot_outputs();
  if (in_range == 0) return absl::OkStatus();

  Tensor x = backend_.Allocate(n, c.hidden_size, DType::kF32);
  backend_.Upload(request.hidden().data(), x.view());
  Tensor ids = backend_.Allocate(n, k, DType::kI32);
  backend_.Upload(request.expert_ids().data(), ids.view());
  Tensor slots = backend_.Allocate(n * k, c.hidden_size, DType::kF32);
  const model::MoeWeights& moe = weights_.layer(layer).moe;
  backend_.MoeExperts(x.view(), ids.view(), moe.experts, moe.first_expert, slots.view());

  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(in_range));
  for (int64_t slot = 0; slot < n * k; ++slot) {
    const int32_t id = request.expert_ids(static_cast<int>(slot));
    if (id >= expert_begin_ && id < expert_end_) rows.push_back(slot);
  }
  Tensor picked = backend_.Allocate(in_range, c.hidden_size, DType::kF32);
  backend_.GatherRows(slots.view(), rows, picked.view());
  std::string* out = response->mutable_slot_outputs();
  out->resize(static_cast<size_t>(in_range * c.hidden_size) * sizeof(float));
  backend_.Download(picked.view(), out->data());
  return absl::OkStatus();
}

}  // namespace deltaserve::services
