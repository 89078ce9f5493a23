// An in-process stand-in for the workers' NCCL links (services/transport/nccl_link.h) over host
// memory, with the semantics the workers rely on: both ranks join an id within the timeout; a send
// finishes once the peer has received it (as NCCL's sends of large messages do); a receive takes
// the next message, which must be of the size asked; every wait ends at the timeout or once its
// give-up says so; and a failure aborts this side only (as ncclCommAbort), so the peer's waits
// run on to their own timeout or give-up. With the CPU backend, whose tensors are host memory, it
// lets tests run the stage <-> stage and stage <-> expert shard protocols without GPUs.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "services/transport/nccl_link.h"

namespace deltaserve::testing {

class InProcessLinks final : public services::NcclLinkFactory {
 public:
  absl::StatusOr<std::string> NewId() override {
    std::lock_guard<std::mutex> lock(mutex_);
    return absl::StrCat("in-process link ", ++ids_);
  }

  absl::StatusOr<std::unique_ptr<services::NcclLink>> Join(const std::string& id, int rank,
                                                          const services::NcclLinkOptions& options) override {
    if (rank != 0 && rank != 1) return absl::InvalidArgumentError(absl::StrCat("rank ", rank));
    std::shared_ptr<Wire> wire;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      std::shared_ptr<Wire>& entry = wires_[id];
      if (entry == nullptr) entry = std::make_shared<Wire>();
      wire = entry;
    }
    std::unique_lock<std::mutex> lock(wire->mutex);
    ++wire->joined;
    wire->changed.notify_all();
    const absl::Status joined = Wait(lock, *wire, options.timeout, options.give_up, "join",
                                     [&] { return wire->joined == 2; });
    if (!joined.ok()) return joined;
    return std::unique_ptr<services::NcclLink>(new Link(wire, rank, options));
  }

 private:
  struct Wire {
    std::mutex mutex;
    std::condition_variable changed;
    int joined = 0;
    std::deque<std::string> inbox[2];  // messages on their way to rank r
    int64_t sent[2] = {0, 0};          // by rank r
    int64_t received[2] = {0, 0};      // by rank r
  };

  // Waits (polling the give-up every millisecond) until `done`, the give-up or the timeout.
  template <typename Done>
  static absl::Status Wait(std::unique_lock<std::mutex>& lock, Wire& wire, std::chrono::milliseconds timeout,
                           const std::function<bool()>& give_up, const char* what, Done done) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (give_up && give_up()) return absl::CancelledError(absl::StrCat("in-process link: ", what, ": given up"));
      if (std::chrono::steady_clock::now() > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("in-process link: ", what, " timed out"));
      }
      wire.changed.wait_for(lock, std::chrono::milliseconds(1));
    }
    return absl::OkStatus();
  }

  class Link final : public services::NcclLink {
   public:
    Link(std::shared_ptr<Wire> wire, int rank, const services::NcclLinkOptions& options)
        : wire_(std::move(wire)), rank_(rank), timeout_(options.timeout), buffer_(options.capacity_bytes) {}

    void* buffer() override { return buffer_.data(); }
    size_t capacity() const override { return buffer_.size(); }
    bool broken() const override { return broken_; }

    absl::Status StartSend(size_t bytes) override {
      if (absl::Status status = Usable(bytes); !status.ok()) return status;
      std::lock_guard<std::mutex> lock(wire_->mutex);
      wire_->inbox[1 - rank_].emplace_back(buffer_.data(), bytes);
      sending_ = ++wire_->sent[rank_];
      send_pending_ = true;
      wire_->changed.notify_all();
      return absl::OkStatus();
    }

    absl::Status FinishSend(const GiveUp& give_up) override {
      if (!send_pending_) return absl::FailedPreconditionError("in-process link: no send to finish");
      std::unique_lock<std::mutex> lock(wire_->mutex);
      const absl::Status status =
          Wait(lock, *wire_, timeout_, give_up, "send", [&] { return wire_->received[1 - rank_] >= sending_; });
      send_pending_ = false;
      return status.ok() ? status : Failed(status);
    }

    void AbandonSend() override {
      if (send_pending_) Abort();
    }

    absl::Status ReadBuffer(void* host, size_t bytes) override {
      if (bytes > buffer_.size()) return absl::InvalidArgumentError("in-process link: read past the buffer");
      std::memcpy(host, buffer_.data(), bytes);
      return absl::OkStatus();
    }

    absl::Status Receive(size_t bytes, const GiveUp& give_up) override {
      if (absl::Status status = Usable(bytes); !status.ok()) return status;
      std::unique_lock<std::mutex> lock(wire_->mutex);
      std::deque<std::string>& inbox = wire_->inbox[rank_];
      if (absl::Status status = Wait(lock, *wire_, timeout_, give_up, "receive", [&] { return !inbox.empty(); });
          !status.ok()) {
        return Failed(status);
      }
      if (inbox.front().size() != bytes) {
        return Failed(absl::InternalError(absl::StrCat("in-process link: a message of ", inbox.front().size(),
                                                       " bytes where ", bytes, " were asked")));
      }
      std::memcpy(buffer_.data(), inbox.front().data(), bytes);
      inbox.pop_front();
      ++wire_->received[rank_];
      wire_->changed.notify_all();
      return absl::OkStatus();
    }

    void Break() override { Abort(); }

   private:
    absl::Status Usable(size_t bytes) const {
      if (broken_) return absl::UnavailableError("in-process link: broken by an earlier failure");
      if (send_pending_) return absl::FailedPreconditionError("in-process link: a send is still queued");
      if (bytes == 0 || bytes > buffer_.size()) {
        return absl::InvalidArgumentError(absl::StrCat("in-process link: ", bytes, " bytes; it takes 1 to ",
                                                       buffer_.size()));
      }
      return absl::OkStatus();
    }
    // Aborts this side only: the peer's waits run on to their timeout or give-up.
    void Abort() {
      broken_ = true;
      send_pending_ = false;
    }
    absl::Status Failed(absl::Status status) {
      Abort();
      return status;
    }

    const std::shared_ptr<Wire> wire_;
    const int rank_;
    const std::chrono::milliseconds timeout_;
    std::vector<char> buffer_;
    bool broken_ = false;
    bool send_pending_ = false;
    int64_t sending_ = 0;  // the pending send's number among this side's
  };

  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Wire>> wires_;
  int ids_ = 0;
};

}  // namespace deltaserve::testing
