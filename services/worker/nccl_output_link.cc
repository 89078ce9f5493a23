#include "services/worker/nccl_output_link.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

// Refusals another attempt would meet again: the peer takes no NCCL links, or none this large (a
// smaller --nccl-max-rows there), or NCCL refuses the pair (both on one GPU).
bool Lasting(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnimplemented || status.code() == absl::StatusCode::kInvalidArgument ||
         status.code() == absl::StatusCode::kFailedPrecondition;
}

}  // namespace

NcclOutputLink::NcclOutputLink(std::shared_ptr<NcclPeer> peer, std::string peer_name, NcclOutputLinkOptions options)
    : peer_(std::move(peer)), peer_name_(std::move(peer_name)), options_(std::move(options)) {
  const absl::Status first = Reconnect();
  if (options_.retry.count() > 0 && !Lasting(first)) KeepUp(options_.retry);
}

NcclOutputLink::~NcclOutputLink() {
  {
    std::lock_guard<std::mutex> lock(keeper_mutex_);
    stopping_ = true;
  }
  keeper_wake_.notify_all();
  if (keeper_.joinable()) keeper_.join();
}

absl::Status NcclOutputLink::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

absl::Status NcclOutputLink::Reconnect() {
  std::lock_guard<std::mutex> lock(mutex_);
  link_.reset();
  status_ = absl::OkStatus();
  // Each NCCL id starts a bootstrap thread that waits for the peer to join: none is made while
  // the peer does not answer.
  if (absl::Status answer = peer_->Answer(); !answer.ok()) {
    status_ = absl::Status(answer.code(), absl::StrCat(peer_name_, ": ", answer.message()));
    return status_;
  }
  status_ = MakeLink();
  return status_;
}

absl::Status NcclOutputLink::MakeLink() {
  absl::StatusOr<std::string> nccl_id = options_.links->NewId();
  if (!nccl_id.ok()) return nccl_id.status();
  internal::v1::ConnectNcclRequest request;
  request.set_nccl_id(*nccl_id);
  std::random_device entropy;
  uint64_t id = 0;
  while (id == 0 || id == last_id_) id = (static_cast<uint64_t>(entropy()) << 32) ^ entropy();
  request.set_link(id);
  request.set_capacity_bytes(static_cast<int64_t>(options_.capacity_bytes));
  request.set_replaces(last_id_);
  request.set_owner(options_.owner);
  request.set_both_ways(options_.both_ways);
  // Users take the link with TryHold, so they send bytes while it is being made. The peer joins and
  // warms up inside its ConnectNccl while this side does here; a refusal there ends the waits
  // here, and a failure here ends the call, and with it the peer's waits. The call's deadline
  // leaves room for a join and each warm-up transfer near the timeout.
  std::atomic<bool> refused{false};
  absl::Status remote;
  ConnectCancel cancel;
  std::thread call([&] {
    const int waits = options_.both_ways ? 3 : 2;  // the join and each warm-up transfer
    remote = peer_->ConnectNccl(request, options_.timeout * waits + std::chrono::seconds(5), &cancel);
    if (!remote.ok()) refused = true;
  });
  NcclLinkOptions link_options;
  link_options.device = options_.device;
  link_options.capacity_bytes = options_.capacity_bytes;
  link_options.timeout = options_.timeout;
  // A refusal there, or shutting down here, ends the waits.
  const NcclLink::GiveUp give_up = [&] { return refused.load() || stopping_.load(); };
  link_options.give_up = give_up;
  absl::StatusOr<std::unique_ptr<NcclLink>> link = options_.links->Join(*nccl_id, 0, link_options);
  absl::Status warm_up;
  if (link.ok()) warm_up = WarmUpLink(**link, 0, options_.both_ways, give_up);
  if (!warm_up.ok()) warm_up = absl::Status(warm_up.code(), absl::StrCat("warm-up: ", warm_up.message()));
  const bool failed_here = !link.ok() || !warm_up.ok();
  if (failed_here && !refused.load()) cancel.Cancel();
  call.join();
  // The call's CANCELLED is this side's own doing; any other failure is the peer's answer.
  if (!remote.ok() && !(cancel.cancelled() && remote.code() == absl::StatusCode::kCancelled)) {
    return absl::Status(remote.code(), absl::StrCat(peer_name_, ": ", remote.message()));
  }
  last_id_ = id;  // the peer may hold it (also where the call ended early), whether or not this side joined
  if (!link.ok()) return link.status();
  if (!warm_up.ok()) return warm_up;
  link_ = std::move(*link);
  id_ = id;
  return absl::OkStatus();
}

void NcclOutputLink::KeepUp(std::chrono::milliseconds retry) {
  keeper_ = std::thread([this, retry] {
    std::chrono::milliseconds wait = retry;
    std::unique_lock<std::mutex> lock(keeper_mutex_);
    while (!keeper_wake_.wait_for(lock, wait, [this] { return stopping_.load(); })) {
      lock.unlock();
      bool down = false;
      {
        std::lock_guard<std::mutex> hold(mutex_);
        down = link_ == nullptr || link_->broken();
      }
      if (!down) {
        wait = retry;
      } else if (const absl::Status status = Reconnect(); status.ok()) {
        spdlog::info("NCCL link to {} made", peer_name_);
        wait = retry;
      } else if (Lasting(status)) {
        spdlog::warn("rows go to {} over gRPC: no NCCL link ({})", peer_name_, status.ToString());
        return;
      } else {
        spdlog::warn("NCCL link to {} still down: {}", peer_name_, status.ToString());
        wait = std::min(2 * wait, 16 * retry);
      }
      lock.lock();
    }
  });
}

std::unique_lock<std::mutex> NcclOutputLink::TryHold(int64_t rows, int64_t width) {
  std::unique_lock<std::mutex> hold(mutex_, std::try_to_lock);
  if (!hold.owns_lock()) return hold;
  if (link_ == nullptr || link_->broken() || rows <= 0 || rows > link_->RowsWithin(width)) hold.unlock();
  return hold;
}

kernels::TensorView NcclOutputLink::Rows(int64_t rows, int64_t width) {
  return kernels::MakeView(link_->buffer(), kernels::DType::kF32, rows, width);
}

}  // namespace deltaserve::services
