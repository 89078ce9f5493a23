#include "services/worker/nccl_expert_links.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deltaserve::services {

NcclExpertLinks::NcclExpertLinks(ExpertShard& shard, kernels::Backend& backend, NcclExpertLinkLimits limits,
                                 NcclLinkFactory& links, ExpertMetrics* metrics)
    : shard_(shard),
      backend_(backend),
      links_("this expert shard",
             NcclLinkTableLimits{.device = limits.device,
                                 .max_capacity_bytes = limits.max_capacity_bytes,
                                 .max_links = limits.max_links,
                                 .timeout = limits.timeout,
                                 .evict_after = limits.evict_after,
                                 .both_ways = true},
             links, [metrics](int held) {
               if (metrics != nullptr) metrics->HoldsLinks(held);
             }) {}

absl::Status NcclExpertLinks::RunExperts(const internal::v1::RunExpertsRequest& request,
                                         internal::v1::RunExpertsResponse* response) {
  if (request.hidden_link() == 0) return shard_.RunExperts(request, response);
  DS_ASSIGN_OR_RETURN(NcclLinkTable::Held held, links_.Take(request.hidden_link()));
  return RunOverLink(held.link(), request, response);
}

absl::Status NcclExpertLinks::RunOverLink(NcclLink& link, const internal::v1::RunExpertsRequest& request,
                                          internal::v1::RunExpertsResponse* response) {
  const int64_t hidden = shard_.config().hidden_size;
  const int64_t tokens = request.num_tokens();
  const int64_t most = link.RowsWithin(hidden);
  absl::StatusOr<int64_t> checked = shard_.Check(request);
  if (checked.ok() && (tokens <= 0 || tokens > most || *checked > most)) {
    checked = absl::InvalidArgumentError(absl::StrCat(tokens, " tokens (", *checked, " slots here) announced; the ",
                                                      "link takes 1 to ", most, " rows"));
  }
  if (!checked.ok()) {
    link.Break();  // the stage's send stays unmatched: the link is no use to it any more
    return checked.status();
  }
  const int64_t slots = *checked;
  const size_t row_bytes = static_cast<size_t>(hidden) * sizeof(float);
  DS_RETURN_IF_ERROR(link.Receive(static_cast<size_t>(tokens) * row_bytes));
  // The outputs overwrite the rows in the buffer: the backend's stream runs the experts first.
  const kernels::TensorView x = kernels::MakeView(link.buffer(), kernels::DType::kF32, tokens, hidden);
  const kernels::TensorView out = kernels::MakeView(link.buffer(), kernels::DType::kF32, slots, hidden);
  if (slots > 0) {
    if (absl::Status status = shard_.Compute(request, x, out); !status.ok()) {
      link.Break();  // the stage waits for outputs that will not come
      return status;
    }
    backend_.Synchronize();
    DS_RETURN_IF_ERROR(link.StartSend(static_cast<size_t>(slots) * row_bytes));
    DS_RETURN_IF_ERROR(link.FinishSend());
  }
  response->clear_slot_outputs();
  response->set_slot_rows(slots);
  return absl::OkStatus();
}

}  // namespace deltaserve::services
