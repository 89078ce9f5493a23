#include "services/worker/nccl_stage_links.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace deltaserve::services {

NcclStageInput::NcclStageInput(int device, size_t max_capacity_bytes, std::chrono::milliseconds timeout,
                               int max_links, NcclLinkFactory& links)
    : links_("this stage",
             NcclLinkTableLimits{.device = device,
                                 .max_capacity_bytes = max_capacity_bytes,
                                 .max_links = max_links,
                                 .timeout = timeout,
                                 .evict_after = std::chrono::milliseconds(0),
                                 .both_ways = false},
             links) {}

absl::StatusOr<NcclStageInput::Rows> NcclStageInput::Receive(uint64_t link, int64_t rows, int64_t hidden) {
  DS_ASSIGN_OR_RETURN(NcclLinkTable::Held held, links_.Take(link));
  NcclLink& taken = held.link();
  const int64_t most = taken.RowsWithin(hidden);
  if (rows <= 0 || rows > most) {
    return absl::InvalidArgumentError(absl::StrCat(rows, " hidden rows announced; the link takes 1 to ", most));
  }
  const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(hidden) * sizeof(float);
  if (absl::Status status = taken.Receive(bytes); !status.ok()) return status;
  const kernels::TensorView view = kernels::MakeView(taken.buffer(), kernels::DType::kF32, rows, hidden);
  return Rows{std::move(held), view};
}

}  // namespace deltaserve::services
