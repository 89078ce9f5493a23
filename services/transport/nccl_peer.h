// The worker an NCCL link is made to (a next stage, or an expert shard), as the side that makes
// the link reaches it over gRPC.
#pragma once

#include <chrono>
#include <functional>
#include <mutex>

#include "absl/status/status.h"
#include "deltaserve/internal/v1/worker.pb.h"

namespace deltaserve::services {

// Ends a ConnectNccl call from another thread: the maker's own join or warm-up failed, so the
// peer, which gives up its waits with the call, need not wait them out. Cancel may come before
// the call starts (it then ends as soon as it does) or after it ended (nothing happens).
class ConnectCancel {
 public:
  void Cancel() {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled_ = true;
    if (cancel_) cancel_();
  }
  bool cancelled() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cancelled_;
  }

  // For NcclPeer implementations: how to end the call in flight, from Bind until Unbind (both on
  // the calling thread). Bind runs `cancel` at once where Cancel came first.
  void Bind(std::function<void()> cancel) {
    std::lock_guard<std::mutex> lock(mutex_);
    cancel_ = std::move(cancel);
    if (cancelled_) cancel_();
  }
  void Unbind() {
    std::lock_guard<std::mutex> lock(mutex_);
    cancel_ = nullptr;
  }

 private:
  mutable std::mutex mutex_;
  bool cancelled_ = false;
  std::function<void()> cancel_;
};

class NcclPeer {
 public:
  virtual ~NcclPeer() = default;
  // OK while the peer answers (its Describe call).
  virtual absl::Status Answer() = 0;
  // The peer's ConnectNccl, with the link's own timeout (joining may take longer than a call);
  // `cancel` (may be null) ends it early.
  virtual absl::Status ConnectNccl(const internal::v1::ConnectNcclRequest& request,
                                   std::chrono::milliseconds timeout, ConnectCancel* cancel) = 0;
};

}  // namespace deltaserve::services
