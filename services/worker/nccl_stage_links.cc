#include "services/worker/nccl_stage_links.h"

#include "absl/strings/str_cat.h"

namespace deltaserve::services {

absl::Status NcclStageInput::Connect(const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up) {
  if (request.link() == 0 || request.capacity_bytes() <= 0 ||
      static_cast<uint64_t>(request.capacity_bytes()) > max_capacity_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("ConnectNccl needs a link id and a capacity of 1 to ",
                                                   max_capacity_bytes_, " bytes; it asked for ",
                                                   request.capacity_bytes()));
  }
  if (request.both_ways()) {
    return absl::InvalidArgumentError("a stage's NCCL link from the previous stage carries rows one way only");
  }
  std::unique_lock<std::mutex> joining(joining_, std::try_to_lock);
  if (!joining.owns_lock()) return absl::UnavailableError("another NCCL link is being joined; try again");
  NcclLinkOptions options;
  options.device = device_;
  options.capacity_bytes = static_cast<size_t>(request.capacity_bytes());
  options.timeout = timeout_;
  options.give_up = give_up;
  // Joined before the lock: steps on the current link go on meanwhile.
  absl::StatusOr<std::unique_ptr<NcclLink>> link = factory_.Join(request.nccl_id(), 1, options);
  if (!link.ok()) return link.status();
  if (absl::Status warm_up = WarmUpLink(**link, 1, /*both_ways=*/false, give_up); !warm_up.ok()) {
    return absl::Status(warm_up.code(), absl::StrCat("warm-up: ", warm_up.message()));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  link_ = std::move(*link);
  link_id_ = request.link();
  return absl::OkStatus();
}

absl::StatusOr<NcclStageInput::Rows> NcclStageInput::Receive(uint64_t link, int64_t rows, int64_t hidden) {
  Rows held{std::unique_lock<std::mutex>(mutex_), {}};
  if (link_ == nullptr || link != link_id_) {
    return absl::FailedPreconditionError(absl::StrCat("hidden rows announced on NCCL link ", link,
                                                      ", which this stage does not hold"));
  }
  const int64_t most = link_->RowsWithin(hidden);
  if (rows <= 0 || rows > most) {
    return absl::InvalidArgumentError(absl::StrCat(rows, " hidden rows announced; the link takes 1 to ", most));
  }
  const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(hidden) * sizeof(float);
  if (absl::Status status = link_->Receive(bytes); !status.ok()) return status;
  held.view = kernels::MakeView(link_->buffer(), kernels::DType::kF32, rows, hidden);
  return held;
}

}  // namespace deltaserve::services
