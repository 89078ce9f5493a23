// Links from another factory (NCCL's, or the in-process stand-in) whose next send on one rank can
// be made to fail, as a device error would: the link is aborted and the send returns an error.
// For tests of what the workers do when a link's warm-up or a transfer fails.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "services/transport/nccl_link.h"

namespace deltaserve::testing {

class FailingLinks final : public services::NcclLinkFactory {
 public:
  explicit FailingLinks(services::NcclLinkFactory& links) : links_(links) {}

  // The next send on a link joined as `rank` (0 or 1) fails.
  void FailNextSend(int rank) { fail_[rank] = true; }

  absl::StatusOr<std::string> NewId() override { return links_.NewId(); }

  absl::StatusOr<std::unique_ptr<services::NcclLink>> Join(const std::string& id, int rank,
                                                          const services::NcclLinkOptions& options) override {
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
};

}  // namespace deltaserve::testing
