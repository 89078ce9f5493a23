// The workers' data plane between GPUs: a two-rank NCCL communicator between this process's GPU
// and one peer's, with a device buffer of fixed capacity on each side for what crosses it (a
// stage's hidden rows to the next stage; a stage's tokens' rows to an expert shard and their
// slots' outputs back). The control stays on gRPC: the side that starts a link makes its id
// (NewId) and sends it to the peer (StageWorker.ConnectNccl, ExpertWorker.ConnectNccl), and both
// Join; afterwards each transfer is announced by the gRPC call that needs it.
//
// Every wait is bounded by the link's timeout. A transfer that does not finish in time (the peer
// went away, or never posted its side) aborts the communicator: the link is then broken for good
// and the callers go back to sending the rows through gRPC.
//
// Built without NCCL (no CUDA toolkit), Join fails with Unimplemented.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace deltaserve::services {

struct NcclLinkOptions {
  int device = 0;                            // the CUDA device of this side
  size_t capacity_bytes = 0;                 // the largest transfer
  std::chrono::milliseconds timeout{30000};  // for joining and for each transfer
  // Polled while joining: once it says so, Join gives up (the peer will not join). Not kept by the
  // link: it may watch a call that ends first.
  std::function<bool()> give_up = nullptr;
};

class NcclLink {
 public:
  // A fresh id for a link (NCCL's unique id, as bytes).
  static absl::StatusOr<std::string> NewId();
  // Joins the link named by `id` as `rank` (0 sends the first transfer, 1 receives it; either may
  // send later). Both sides must join within the timeout.
  static absl::StatusOr<std::unique_ptr<NcclLink>> Join(const std::string& id, int rank,
                                                        const NcclLinkOptions& options);
  virtual ~NcclLink() = default;

  // The device buffer (capacity_bytes) transfers go from and to.
  virtual void* buffer() = 0;
  virtual size_t capacity() const = 0;
  // How many rows of `width` fp32 values the buffer holds (0 for rows of no width).
  int64_t RowsWithin(int64_t width) const {
    return width > 0 ? static_cast<int64_t>(capacity() / (static_cast<size_t>(width) * sizeof(float))) : 0;
  }
  virtual bool broken() const = 0;
  // Polled while a transfer waits: once it says so, the wait ends, the link broken (the peer
  // said it will not take part, for instance by failing the call that announced the transfer).
  using GiveUp = std::function<bool()>;
  // Queues a transfer of the buffer's first `bytes` to the peer; FinishSend waits for it.
  virtual absl::Status StartSend(size_t bytes) = 0;
  virtual absl::Status FinishSend(const GiveUp& give_up = nullptr) = 0;
  // For a send the peer may not have received (the call that announced it failed): the link is
  // aborted (broken) at once. Even a finished send may sit unreceived in NCCL's buffers, where a
  // later receive would take it for its own.
  virtual void AbandonSend() = 0;
  // Copies the buffer's first `bytes` to host memory (a send that could not be queued goes as
  // bytes instead).
  virtual absl::Status ReadBuffer(void* host, size_t bytes) = 0;
  // Receives `bytes` from the peer into the buffer, waiting until they are there.
  virtual absl::Status Receive(size_t bytes, const GiveUp& give_up = nullptr) = 0;
  // Aborts the link (broken from now on): for a side that cannot finish what it announced.
  virtual void Break() = 0;
};

// A link's first transfers set up NCCL's connections, and may show that the two sides cannot
// reach each other: a few bytes exchanged as the link is made move that out of the first call.
// The maker (rank 0) sends first; with `both_ways` (the peer answers over the link too) the other
// side then sends back. Both sides call it alike.
inline constexpr size_t kNcclWarmUpBytes = 4;
inline absl::Status WarmUpLink(NcclLink& link, int rank, bool both_ways, const NcclLink::GiveUp& give_up = nullptr) {
  const auto send = [&] {
    absl::Status status = link.StartSend(kNcclWarmUpBytes);
    return status.ok() ? link.FinishSend(give_up) : status;
  };
  const auto receive = [&] { return link.Receive(kNcclWarmUpBytes, give_up); };
  absl::Status status = rank == 0 ? send() : receive();
  if (status.ok() && both_ways) status = rank == 0 ? receive() : send();
  return status;
}

// Where the workers' links come from: NCCL (Nccl(): NcclLink::NewId and NcclLink::Join), or, in
// tests without GPUs, a stand-in with the same semantics.
class NcclLinkFactory {
 public:
  virtual ~NcclLinkFactory() = default;
  virtual absl::StatusOr<std::string> NewId() = 0;
  virtual absl::StatusOr<std::unique_ptr<NcclLink>> Join(const std::string& id, int rank,
                                                         const NcclLinkOptions& options) = 0;
  static NcclLinkFactory& Nccl();
};

inline NcclLinkFactory& NcclLinkFactory::Nccl() {
  class Real final : public NcclLinkFactory {
    absl::StatusOr<std::string> NewId() override { return NcclLink::NewId(); }
    absl::StatusOr<std::unique_ptr<NcclLink>> Join(const std::string& id, int rank,
                                                   const NcclLinkOptions& options) override {
      return NcclLink::Join(id, rank, options);
    }
  };
  static Real real;
  return real;
}

}  // namespace deltaserve::services
