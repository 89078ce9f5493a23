// The stages' NCCL data plane (services/transport/nccl_link.h) as a stage worker uses it:
// NcclStageInput holds the link over which the previous stage's hidden rows arrive, and
// NcclStageOutput the one over which this stage's go to the next. A step holds each link it uses
// from the transfer until the rows are consumed, so each link carries one step at a time; a step
// that finds the output link busy or down, or whose rows exceed its buffer, sends them as bytes
// in the gRPC request instead. An output link that is down is made again in the background.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/worker.pb.h"
#include "kernels/tensor.h"
#include "services/transport/grpc_channels.h"
#include "services/transport/nccl_link.h"

namespace deltaserve::services {

class NcclStageInput {
 public:
  // Links take at most `max_capacity_bytes` (this stage's own buffer limit).
  NcclStageInput(int device, size_t max_capacity_bytes, std::chrono::milliseconds timeout)
      : device_(device), max_capacity_bytes_(max_capacity_bytes), timeout_(timeout) {}

  // StageWorker.ConnectNccl: joins the link as rank 1; once joined it replaces any earlier one.
  absl::Status Connect(const internal::v1::ConnectNcclRequest& request);

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
  std::mutex mutex_;  // held by a step from its transfer until its rows are consumed
  std::mutex joining_;  // one join at a time: each holds a buffer and a communicator
  std::unique_ptr<NcclLink> link_;
  uint64_t link_id_ = 0;
};

class NcclStageOutput {
 public:
  // Links to `next` (rank 0 here, StageWorker.ConnectNccl there) with a buffer of
  // `capacity_bytes` on each side. The first is made here (status() says how that went). While
  // there is none (that failed, or a link broke), one is tried again after `retry`, the wait
  // doubling up to 16 × retry while attempts fail, and only once the next stage answers; a
  // refusal that will not change (the next stage takes no links, or none this large) ends the
  // attempts. Zero `retry`: only Reconnect makes links.
  NcclStageOutput(std::shared_ptr<GrpcStageChannel> next, int device, size_t capacity_bytes,
                  std::chrono::milliseconds timeout, std::chrono::milliseconds retry);
  // May wait for a link being made, up to the timeout.
  ~NcclStageOutput();

  // Makes a new link, replacing the current one.
  absl::Status Reconnect();
  // How the first link, or the last attempt since, went.
  absl::Status status() const;

  // The link for one step where it is free, up and takes rows × hidden fp32 values (a lock that
  // owns nothing otherwise); while held: the link, its id and its buffer as those rows.
  std::unique_lock<std::mutex> TryHold(int64_t rows, int64_t hidden);
  NcclLink& link() { return *link_; }
  uint64_t id() const { return id_; }
  kernels::TensorView Rows(int64_t rows, int64_t hidden);
  // Steps whose rows went over a link (counted by the caller once a send is queued).
  void CountSent() { ++sent_steps_; }
  int64_t sent_steps() const { return sent_steps_; }

 private:
  absl::Status MakeLink();  // under mutex_
  void KeepUp(std::chrono::milliseconds retry);

  const std::shared_ptr<GrpcStageChannel> next_;
  const int device_;
  const size_t capacity_bytes_;
  const std::chrono::milliseconds timeout_;
  mutable std::mutex mutex_;  // held by a step from its copy into the buffer until the send's end
  std::unique_ptr<NcclLink> link_;
  uint64_t id_ = 0;
  absl::Status status_;  // guarded by mutex_
  std::atomic<int64_t> sent_steps_{0};
  std::mutex keeper_mutex_;
  std::condition_variable keeper_wake_;
  std::atomic<bool> stopping_{false};
  std::thread keeper_;
};

}  // namespace deltaserve::services
