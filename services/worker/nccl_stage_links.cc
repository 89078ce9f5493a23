#include "services/worker/nccl_stage_links.h"

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

// How many rows of `hidden` fp32 values the link's buffer holds (0 for rows of no width).
int64_t RowsWithin(const NcclLink& link, int64_t hidden) {
  return hidden > 0 ? static_cast<int64_t>(link.capacity() / (static_cast<size_t>(hidden) * sizeof(float))) : 0;
}

}  // namespace

absl::Status NcclStageInput::Connect(const internal::v1::ConnectNcclRequest& request) {
  if (request.link() == 0 || request.capacity_bytes() <= 0 ||
      static_cast<uint64_t>(request.capacity_bytes()) > max_capacity_bytes_) {
    return absl::InvalidArgumentError(absl::StrCat("ConnectNccl needs a link id and a capacity of 1 to ",
                                                   max_capacity_bytes_, " bytes; it asked for ",
                                                   request.capacity_bytes()));
  }
  std::unique_lock<std::mutex> joining(joining_, std::try_to_lock);
  if (!joining.owns_lock()) return absl::UnavailableError("another NCCL link is being joined; try again");
  NcclLinkOptions options;
  options.device = device_;
  options.capacity_bytes = static_cast<size_t>(request.capacity_bytes());
  options.timeout = timeout_;
  // Joined before the lock: steps on the current link go on meanwhile.
  absl::StatusOr<std::unique_ptr<NcclLink>> link = NcclLink::Join(request.nccl_id(), 1, options);
  if (!link.ok()) return link.status();
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
  const int64_t most = RowsWithin(*link_, hidden);
  if (rows <= 0 || rows > most) {
    return absl::InvalidArgumentError(absl::StrCat(rows, " hidden rows announced; the link takes 1 to ", most));
  }
  const size_t bytes = static_cast<size_t>(rows) * static_cast<size_t>(hidden) * sizeof(float);
  if (absl::Status status = link_->Receive(bytes); !status.ok()) return status;
  held.view = kernels::MakeView(link_->buffer(), kernels::DType::kF32, rows, hidden);
  return held;
}

namespace {

// Refusals another attempt would meet again: the next stage takes no NCCL links, or none this
// large (a smaller --nccl-max-rows there), or NCCL refuses the pair (both on one GPU).
bool Lasting(const absl::Status& status) {
  return status.code() == absl::StatusCode::kUnimplemented || status.code() == absl::StatusCode::kInvalidArgument ||
         status.code() == absl::StatusCode::kFailedPrecondition;
}

}  // namespace

NcclStageOutput::NcclStageOutput(std::shared_ptr<GrpcStageChannel> next, int device, size_t capacity_bytes,
                                 std::chrono::milliseconds timeout, std::chrono::milliseconds retry)
    : next_(std::move(next)), device_(device), capacity_bytes_(capacity_bytes), timeout_(timeout) {
  const absl::Status first = Reconnect();
  if (retry.count() > 0 && !Lasting(first)) KeepUp(retry);
}

NcclStageOutput::~NcclStageOutput() {
  {
    std::lock_guard<std::mutex> lock(keeper_mutex_);
    stopping_ = true;
  }
  keeper_wake_.notify_all();
  if (keeper_.joinable()) keeper_.join();
}

absl::Status NcclStageOutput::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

absl::Status NcclStageOutput::Reconnect() {
  std::lock_guard<std::mutex> lock(mutex_);
  link_.reset();
  status_ = absl::OkStatus();
  // Each NCCL id starts a bootstrap thread that waits for the peer to join: none is made while
  // the next stage does not answer.
  if (absl::Status answer = next_->Describe().status(); !answer.ok()) {
    status_ = absl::Status(answer.code(), absl::StrCat("the next stage: ", answer.message()));
    return status_;
  }
  status_ = MakeLink();
  return status_;
}

absl::Status NcclStageOutput::MakeLink() {
  absl::StatusOr<std::string> nccl_id = NcclLink::NewId();
  if (!nccl_id.ok()) return nccl_id.status();
  internal::v1::ConnectNcclRequest request;
  request.set_nccl_id(*nccl_id);
  std::random_device entropy;
  uint64_t id = 0;
  while (id == 0) id = (static_cast<uint64_t>(entropy()) << 32) ^ entropy();
  request.set_link(id);
  request.set_capacity_bytes(static_cast<int64_t>(capacity_bytes_));
  // Steps take the link with TryHold, so they send bytes while it is being made. The next stage
  // joins inside its ConnectNccl while this side joins here; a refusal there ends the wait here.
  // The call's deadline leaves room for a join that ends near the timeout.
  std::atomic<bool> refused{false};
  absl::Status remote;
  std::thread call([&] {
    remote = next_->ConnectNccl(request, timeout_ + std::chrono::seconds(5));
    if (!remote.ok()) refused = true;
  });
  NcclLinkOptions options;
  options.device = device_;
  options.capacity_bytes = capacity_bytes_;
  options.timeout = timeout_;
  options.give_up = [&] { return refused.load() || stopping_.load(); };  // shutting down ends it
  absl::StatusOr<std::unique_ptr<NcclLink>> link = NcclLink::Join(*nccl_id, 0, options);
  call.join();
  if (!remote.ok()) return absl::Status(remote.code(), absl::StrCat("the next stage: ", remote.message()));
  if (!link.ok()) return link.status();
  link_ = std::move(*link);
  id_ = id;
  return absl::OkStatus();
}

void NcclStageOutput::KeepUp(std::chrono::milliseconds retry) {
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
        spdlog::info("NCCL link to the next stage made");
        wait = retry;
      } else if (Lasting(status)) {
        spdlog::warn("hidden rows go to the next stage over gRPC: no NCCL link ({})", status.ToString());
        return;
      } else {
        spdlog::warn("NCCL link to the next stage still down: {}", status.ToString());
        wait = std::min(2 * wait, 16 * retry);
      }
      lock.lock();
    }
  });
}

std::unique_lock<std::mutex> NcclStageOutput::TryHold(int64_t rows, int64_t hidden) {
  std::unique_lock<std::mutex> hold(mutex_, std::try_to_lock);
  if (!hold.owns_lock()) return hold;
  if (link_ == nullptr || link_->broken() || rows <= 0 || rows > RowsWithin(*link_, hidden)) hold.unlock();
  return hold;
}

kernels::TensorView NcclStageOutput::Rows(int64_t rows, int64_t hidden) {
  return kernels::MakeView(link_->buffer(), kernels::DType::kF32, rows, hidden);
}

}  // namespace deltaserve::services
