// The stages' NCCL data plane (services/transport/nccl_link.h) as a stage worker uses it:
// NcclStageInput holds the links over which the previous stage's hidden rows arrive, and
// NcclOutputLinks (nccl_output_link.h) the ones over which this stage's go to the next, one per
// step this stage may have in flight below it (the router's --pipeline-steps). A step holds each
// link it uses from the transfer until the rows are consumed, so each link carries one step at a
// time; a step that finds every output link busy or down, or whose rows exceed the buffer, sends
// them as bytes in the gRPC request instead.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/worker.pb.h"
#include "kernels/tensor.h"
#include "services/transport/nccl_link.h"
#include "services/worker/nccl_link_table.h"

namespace deltaserve::services {

// In the status of a Step that failed after this stage had received its rows over the link
// (internal.v1.HiddenRowsReceived): the sender's link is still in step, and stays up.
inline constexpr char kHiddenRowsReceivedPayload[] = "type.googleapis.com/deltaserve.internal.v1.HiddenRowsReceived";

class NcclStageInput {
 public:
  // Links take at most `max_capacity_bytes` (this stage's own buffer limit); it holds up to
  // `max_links` (the previous stage's links: one per step it may have in flight).
  NcclStageInput(int device, size_t max_capacity_bytes, std::chrono::milliseconds timeout, int max_links = 16,
                 NcclLinkFactory& links = NcclLinkFactory::Nccl());

  // StageWorker.ConnectNccl (NcclLinkTable::Connect): links carry rows one way. At the limit any
  // link not carrying a step makes room: this stage's links come from one previous stage, whose
  // links of the same owner, or whose predecessor's, are the ones a new link replaces.
  absl::Status Connect(const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up = nullptr) {
    return links_.Connect(request, give_up);
  }
  int links() const { return links_.links(); }

  // A step's rows in its link's buffer, the link held until this is destroyed.
  struct Rows {
    NcclLinkTable::Held hold;
    kernels::TensorView view;  // fp32 [rows, hidden]
  };
  // Receives rows × hidden fp32 values over link `link`.
  absl::StatusOr<Rows> Receive(uint64_t link, int64_t rows, int64_t hidden);

 private:
  NcclLinkTable links_;
};

}  // namespace deltaserve::services
