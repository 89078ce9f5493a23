// A link of the NCCL data plane (services/transport/nccl_link.h) that this worker makes to a peer
// and keeps up: a stage's to its next stage, or to each expert shard. Callers take it for one
// transfer and its answer at a time (TryHold) and send bytes over gRPC while it is busy or down.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "kernels/tensor.h"
#include "services/transport/nccl_link.h"
#include "services/transport/nccl_peer.h"

namespace deltaserve::services {

struct NcclOutputLinkOptions {
  int device = 0;             // the CUDA device of this side
  size_t capacity_bytes = 0;  // the buffer on each side
  std::chrono::milliseconds timeout{30000};
  std::chrono::milliseconds retry{0};  // see NcclOutputLink
  std::string owner;       // names this side to the peer (ConnectNcclRequest.owner; may be empty)
  bool both_ways = false;  // the peer sends back over the link too (an expert shard)
  NcclLinkFactory* links = &NcclLinkFactory::Nccl();  // not null
};

class NcclOutputLink {
 public:
  // Links to `peer` (rank 0 here, its ConnectNccl there); `peer_name` names it in errors and logs
  // ("the next stage"). The first link is made here (status() says how that went), warmed up
  // (WarmUpLink) before it is used. While there is none (that failed, or a link broke), one is
  // tried again after `retry`, the wait doubling up to 16 × retry while attempts fail, and only
  // once the peer answers; a refusal that will not change (the peer takes no links, or none this
  // large) ends the attempts. Zero `retry`: only Reconnect makes links.
  NcclOutputLink(std::shared_ptr<NcclPeer> peer, std::string peer_name, NcclOutputLinkOptions options);
  // May wait for a link being made.
  ~NcclOutputLink();

  // Makes a new link, replacing the current one (the peer is told to drop it).
  absl::Status Reconnect();
  // How the first link, or the last attempt since, went.
  absl::Status status() const;

  // The link for one use where it is free, up and takes `rows` rows of `width` fp32 values (a
  // lock that owns nothing otherwise); while held: the link, its id and its buffer as those rows.
  std::unique_lock<std::mutex> TryHold(int64_t rows, int64_t width);
  NcclLink& link() { return *link_; }
  uint64_t id() const { return id_; }
  kernels::TensorView Rows(int64_t rows, int64_t width);
  // Uses that went over the link (counted by the caller once a send is queued).
  void CountSent() { ++sent_; }
  int64_t sent() const { return sent_; }

 private:
  absl::Status MakeLink();  // under mutex_
  void KeepUp(std::chrono::milliseconds retry);

  const std::shared_ptr<NcclPeer> peer_;
  const std::string peer_name_;
  const NcclOutputLinkOptions options_;
  mutable std::mutex mutex_;  // held by a use from its copy into the buffer to its transfers' end
  std::unique_ptr<NcclLink> link_;
  uint64_t id_ = 0;
  uint64_t last_id_ = 0;  // the link the peer may still hold (also after a join that failed here)
  absl::Status status_;   // guarded by mutex_
  std::atomic<int64_t> sent_{0};
  std::mutex keeper_mutex_;
  std::condition_variable keeper_wake_;
  std::atomic<bool> stopping_{false};
  std::thread keeper_;
};

}  // namespace deltaserve::services
