#include "services/worker/nccl_link_table.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {

struct NcclLinkTable::Entry {
  std::mutex busy;  // held by a transfer and its answer
  std::unique_ptr<NcclLink> link;
  std::string owner;  // the side that made it (ConnectNcclRequest.owner)
  std::chrono::steady_clock::time_point last_used;
};

NcclLink& NcclLinkTable::Held::link() const { return *entry_->link; }

absl::Status NcclLinkTable::Connect(const internal::v1::ConnectNcclRequest& request,
                                    const NcclLink::GiveUp& give_up) {
  if (request.link() == 0 || request.capacity_bytes() <= 0 ||
      static_cast<uint64_t>(request.capacity_bytes()) > limits_.max_capacity_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("ConnectNccl needs a link id and a capacity of 1 to ",
                                                   limits_.max_capacity_bytes, " bytes; it asked for ",
                                                   request.capacity_bytes()));
  }
  if (request.both_ways() != limits_.both_ways) {
    return absl::InvalidArgumentError(absl::StrCat(holder_, "'s NCCL links carry rows ",
                                                   limits_.both_ways ? "both ways" : "one way only"));
  }
  // Links dropped here go once the lock is released: aborting one may wait for the device.
  std::vector<std::shared_ptr<Entry>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = links_.begin(); it != links_.end();) {
      std::unique_lock<std::mutex> idle(it->second->busy, std::try_to_lock);
      const bool drop = it->first == request.replaces() || it->first == request.link() ||
                        (!request.owner().empty() && it->second->owner == request.owner()) ||
                        (idle.owns_lock() && it->second->link->broken());
      if (idle.owns_lock()) idle.unlock();
      if (drop) dropped.push_back(it->second);
      it = drop ? links_.erase(it) : std::next(it);
    }
    Count();
    while (static_cast<int>(links_.size()) + joining_ >= limits_.max_links) {
      // At the limit, the link unused longest goes if unused for evict_after (its maker, if still
      // up, links again later); links in use are not traded for one another.
      const auto unused_since = std::chrono::steady_clock::now() - limits_.evict_after;
      auto oldest = links_.end();
      for (auto it = links_.begin(); it != links_.end(); ++it) {
        std::unique_lock<std::mutex> idle(it->second->busy, std::try_to_lock);
        if (idle.owns_lock() && it->second->last_used <= unused_since &&
            (oldest == links_.end() || it->second->last_used < oldest->second->last_used)) {
          oldest = it;
        }
      }
      if (oldest == links_.end()) {
        return absl::ResourceExhaustedError(absl::StrCat(holder_, " holds ", links_.size(),
                                                         " NCCL links in use and joins ", joining_,
                                                         ", its limit (--nccl-max-links)"));
      }
      spdlog::warn("NCCL link of {} dropped for {}: {} holds its limit of {} links", oldest->second->owner,
                   request.owner(), holder_, limits_.max_links);
      dropped.push_back(oldest->second);
      links_.erase(oldest);
      Count();
    }
    ++joining_;  // peers join at once, each its own link
  }
  dropped.clear();
  NcclLinkOptions options;
  options.device = limits_.device;
  options.capacity_bytes = static_cast<size_t>(request.capacity_bytes());
  options.timeout = limits_.timeout;
  options.give_up = give_up;
  absl::StatusOr<std::unique_ptr<NcclLink>> link = factory_.Join(request.nccl_id(), 1, options);
  absl::Status warm_up;
  if (link.ok()) warm_up = WarmUpLink(**link, 1, limits_.both_ways, give_up);
  std::lock_guard<std::mutex> lock(mutex_);
  --joining_;
  if (!link.ok()) return link.status();
  if (!warm_up.ok()) return absl::Status(warm_up.code(), absl::StrCat("warm-up: ", warm_up.message()));
  auto entry = std::make_shared<Entry>();
  entry->link = std::move(*link);
  entry->owner = request.owner();
  entry->last_used = std::chrono::steady_clock::now();
  links_[request.link()] = std::move(entry);
  Count();
  return absl::OkStatus();
}

absl::StatusOr<NcclLinkTable::Held> NcclLinkTable::Take(uint64_t link) {
  Held held;
  {
    // Taken under mutex_, so that no eviction picks a link in use.
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = links_.find(link); it != links_.end()) {
      held.entry_ = it->second;
      held.busy_ = std::unique_lock<std::mutex>(held.entry_->busy, std::try_to_lock);
      if (held.busy_.owns_lock()) held.entry_->last_used = std::chrono::steady_clock::now();
    }
  }
  if (held.entry_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("hidden rows announced on NCCL link ", link, ", which ", holder_, " does not hold"));
  }
  if (!held.busy_.owns_lock()) {
    return absl::FailedPreconditionError(absl::StrCat("NCCL link ", link, " is carrying another transfer"));
  }
  return held;
}

int NcclLinkTable::links() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(links_.size());
}

void NcclLinkTable::Count() const {
  if (on_count_) on_count_(static_cast<int>(links_.size()));
}

}  // namespace deltaserve::services
