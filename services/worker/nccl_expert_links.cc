#include "services/worker/nccl_expert_links.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {

absl::Status NcclExpertLinks::Connect(const internal::v1::ConnectNcclRequest& request,
                                      const NcclLink::GiveUp& give_up) {
  if (request.link() == 0 || request.capacity_bytes() <= 0 ||
      static_cast<uint64_t>(request.capacity_bytes()) > limits_.max_capacity_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("ConnectNccl needs a link id and a capacity of 1 to ",
                                                   limits_.max_capacity_bytes, " bytes; it asked for ",
                                                   request.capacity_bytes()));
  }
  if (!request.both_ways()) {
    return absl::InvalidArgumentError("an expert shard's NCCL links carry outputs back: both ways");
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
    ShowLinks();
    while (static_cast<int>(links_.size()) + joining_ >= limits_.max_links) {
      // At the limit, the link unused longest goes if unused for evict_after (its stage, if still
      // up, links again later); links in use by live stages are not traded for one another.
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
        return absl::ResourceExhaustedError(absl::StrCat("this expert shard holds ", links_.size(),
                                                         " NCCL links in use and joins ", joining_,
                                                         ", its limit (--nccl-max-links)"));
      }
      spdlog::warn("NCCL link of {} dropped for {}: this expert shard holds its limit of {} links",
                   oldest->second->owner, request.owner(), limits_.max_links);
      dropped.push_back(oldest->second);
      links_.erase(oldest);
      ShowLinks();
    }
    ++joining_;  // stages join at once, each its own link
  }
  dropped.clear();
  NcclLinkOptions options;
  options.device = limits_.device;
  options.capacity_bytes = static_cast<size_t>(request.capacity_bytes());
  options.timeout = limits_.timeout;
  options.give_up = give_up;
  absl::StatusOr<std::unique_ptr<NcclLink>> link = factory_.Join(request.nccl_id(), 1, options);
  absl::Status warm_up;
  if (link.ok()) warm_up = WarmUpLink(**link, 1, /*both_ways=*/true, give_up);
  std::lock_guard<std::mutex> lock(mutex_);
  --joining_;
  if (!link.ok()) return link.status();
  if (!warm_up.ok()) return absl::Status(warm_up.code(), absl::StrCat("warm-up: ", warm_up.message()));
  auto entry = std::make_shared<Entry>();
  entry->link = std::move(*link);
  entry->owner = request.owner();
  entry->last_used = std::chrono::steady_clock::now();
  links_[request.link()] = std::move(entry);
  ShowLinks();
  return absl::OkStatus();
}

void NcclExpertLinks::ShowLinks() const {
  if (metrics_ != nullptr) metrics_->HoldsLinks(static_cast<int>(links_.size()));
}

int NcclExpertLinks::links() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(links_.size());
}

absl::Status NcclExpertLinks::RunExperts(const internal::v1::RunExpertsRequest& request,
                                         internal::v1::RunExpertsResponse* response) {
  if (request.hidden_link() == 0) return shard_.RunExperts(request, response);
  std::shared_ptr<Entry> entry;
  std::unique_lock<std::mutex> busy;  // taken under mutex_, so that no eviction picks a link in use
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = links_.find(request.hidden_link()); it != links_.end()) {
      entry = it->second;
      busy = std::unique_lock<std::mutex>(entry->busy, std::try_to_lock);
      if (busy.owns_lock()) entry->last_used = std::chrono::steady_clock::now();
    }
  }
  if (entry == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("hidden rows announced on NCCL link ", request.hidden_link(),
                                                      ", which this expert shard does not hold"));
  }
  if (!busy.owns_lock()) {
    return absl::FailedPreconditionError(
        absl::StrCat("NCCL link ", request.hidden_link(), " is carrying another call"));
  }
  return RunOverLink(*entry, request, response);
}

absl::Status NcclExpertLinks::RunOverLink(Entry& entry, const internal::v1::RunExpertsRequest& request,
                                          internal::v1::RunExpertsResponse* response) {
  NcclLink& link = *entry.link;
  const int64_t hidden = shard_.config().hidden_size;
  const int64_t tokens = request.num_tokens();
  const int64_t most = link.RowsWithin(hidden);
  absl::StatusOr<int64_t> checked = shard_.Check(request);
  if (checked.ok() && (tokens <= 0 || tokens > most || *checked > most)) {
    checked = absl::InvalidArgumentError(absl::StrCat(tokens, " tokens (", *checked, " slots here) announced; the ",
                                                      "link takes 1 to ", most, " rows"));
  }
  if (!checked.ok()) {
    link.Break();  // the stage's send stays unmatched: the link is no use to it any more
    return checked.status();
  }
  const int64_t slots = *checked;
  const size_t row_bytes = static_cast<size_t>(hidden) * sizeof(float);
  DS_RETURN_IF_ERROR(link.Receive(static_cast<size_t>(tokens) * row_bytes));
  // The outputs overwrite the rows in the buffer: the backend's stream runs the experts first.
  const kernels::TensorView x = kernels::MakeView(link.buffer(), kernels::DType::kF32, tokens, hidden);
  const kernels::TensorView out = kernels::MakeView(link.buffer(), kernels::DType::kF32, slots, hidden);
  if (slots > 0) {
    if (absl::Status status = shard_.Compute(request, x, out); !status.ok()) {
      link.Break();  // the stage waits for outputs that will not come
      return status;
    }
    backend_.Synchronize();
    DS_RETURN_IF_ERROR(link.StartSend(static_cast<size_t>(slots) * row_bytes));
    DS_RETURN_IF_ERROR(link.FinishSend());
  }
  response->clear_slot_outputs();
  response->set_slot_rows(slots);
  return absl::OkStatus();
}

}  // namespace deltaserve::services
