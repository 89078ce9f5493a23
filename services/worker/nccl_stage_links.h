// The stages' NCCL data plane (services/transport/nccl_link.h) as a stage worker uses it:
// NcclStageInput holds the link over which the previous stage's hidden rows arrive, and an
// NcclOutputLink (nccl_output_link.h) the one over which this stage's go to the next. A step holds
// each link it uses from the transfer until the rows are consumed, so each link carries one step
// at a time; a step that finds the output link busy or down, or whose rows exceed its buffer,
// sends them as bytes in the gRPC request instead.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/worker.pb.h"
#include "kernels/tensor.h"
#include "services/transport/nccl_link.h"

namespace deltaserve::services {

// In the status of a Step that failed after this stage had received its rows over the link
// (internal.v1.HiddenRowsReceived): the sender's link is still in step, and stays up.
inline constexpr char kHiddenRowsReceivedPayload[] = "type.googleapis.com/deltaserve.internal.v1.HiddenRowsReceived";

class NcclStageInput {
 public:
  // Links take at most `max_capacity_bytes` (this stage's own buffer limit).
  NcclStageInput(int device, size_t max_capacity_bytes, std::chrono::milliseconds timeout,
                 NcclLinkFactory& links = NcclLinkFactory::Nccl())
      : device_(device), max_capacity_bytes_(max_capacity_bytes), timeout_(timeout), factory_(links) {}

  // StageWorker.ConnectNccl: joins the link as rank 1 (one way: both_ways is refused); once joined
  // and warmed up it replaces any earlier one. Its waits end early once `give_up` says so (the
  // maker's call has gone).
  absl::Status Connect(const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up = nullptr);

  // A step's rows in the link's buffer, held until this is destroyed.
  struct Rows {
    std::unique_lock<std::mutex> hold;
    kernels::TensorView view;  // fp32 [rows, hidden]
  };
  // Receives rows × hidden fp32 values over link `link` (the current one).
  absl::StatusOr<Rows> Receive(uint64_t link, int64_t rows, int64_t hidden);

 private:
  const int device_;
  const size_t max_capacity_bytes_;
  const std::chrono::milliseconds timeout_;
  NcclLinkFactory& factory_;
  std::mutex mutex_;  // held by a step from its transfer until its rows are consumed
  std::mutex joining_;  // one join at a time: each holds a buffer and a communicator
  std::unique_ptr<NcclLink> link_;
  uint64_t link_id_ = 0;
};

}  // namespace deltaserve::services
