// Links from another factory (NCCL's, or the in-process stand-in) whose next join or send on one
// rank can be made to fail: a join at once, without joining (the peer's join is left waiting); a
// send as a device error would, the link aborted and the send returning an error. For tests of
// what the workers do when a link's join, warm-up or a transfer fails.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "services/transport/nccl_link.h"

namespace deltaserve::testing {

class FailingLinks final : public services::NcclLinkFactory {
 public:
  explicit FailingLinks(services::NcclLinkFactory& links) : links_(links) {}

  // The next send on a link joined as `rank` (0 or 1) fails.
  void FailNextSend(int rank) { fail_[rank] = true; }
  // The next join as `rank` runs `first` (may be null: to wait for the peer's side to start), then
  // fails.
  void FailNextJoin(int rank, std::function<void()> first = nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    fail_join_[rank] = true;
    before_failed_join_[rank] = std::move(first);
  }

  absl::StatusOr<std::string> NewId() override { return links_.NewId(); }

  absl::StatusOr<std::unique_ptr<services::NcclLink>> Join(const std::string& id, int rank,
                                                          const services::NcclLinkOptions& options) override {
    std::function<void()> first;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (fail_join_[rank]) {
        fail_join_[rank] = false;
        first = std::move(before_failed_join_[rank]);
        if (!first) first = [] {};
      }
    }
    if (first) {
      first();
      return absl::UnavailableError("injected: the join failed");
    }
    absl::StatusOr<std::unique_ptr<services::NcclLink>> link = links_.Join(id, rank, options);
    if (!link.ok()) return link.status();
    return std::unique_ptr<services::NcclLink>(new Link(std::move(*link), fail_[rank]));
  }

 private:
  class Link final : public services::NcclLink {
   public:
    Link(std::unique_ptr<services::NcclLink> link, std::atomic<bool>& fail) : link_(std::move(link)), fail_(fail) {}

    void* buffer() override { return link_->buffer(); }
    size_t capacity() const override { return link_->capacity(); }
    bool broken() const override { return link_->broken(); }
    absl::Status StartSend(size_t bytes) override {
      if (fail_.exchange(false)) {
        link_->Break();
        return absl::InternalError("injected: the send failed");
      }
      return link_->StartSend(bytes);
    }
    absl::Status FinishSend(const GiveUp& give_up) override { return link_->FinishSend(give_up); }
    void AbandonSend() override { link_->AbandonSend(); }
    absl::Status ReadBuffer(void* host, size_t bytes) override { return link_->ReadBuffer(host, bytes); }
    absl::Status Receive(size_t bytes, const GiveUp& give_up) override { return link_->Receive(bytes, give_up); }
    void Break() override { link_->Break(); }

   private:
    std::unique_ptr<services::NcclLink> link_;
    std::atomic<bool>& fail_;
  };

  services::NcclLinkFactory& links_;
  std::atomic<bool> fail_[2] = {false, false};
  std::mutex mutex_;
  bool fail_join_[2] = {false, false};
  std::function<void()> before_failed_join_[2];
};

}  // namespace deltaserve::testing
