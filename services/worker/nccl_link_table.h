// The links a worker joined at its peers' request (ConnectNccl), as the side that joins them: an
// expert shard's, one per stage process (nccl_expert_links.h), and a stage's from the previous
// stage, one per step that stage may have in flight (nccl_stage_links.h). A transfer takes one
// link at a time (Take); links come and go as the peers make them again, restart, or go away.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "deltaserve/internal/v1/worker.pb.h"
#include "services/transport/nccl_link.h"

namespace deltaserve::services {

struct NcclLinkTableLimits {
  int device = 0;
  size_t max_capacity_bytes = 0;  // a link's buffer
  int max_links = 16;             // links held (and being joined) at once
  std::chrono::milliseconds timeout{30000};
  // At the limit, a link unused for this long makes room for a new one.
  std::chrono::milliseconds evict_after{60000};
  bool both_ways = false;  // the links carry transfers back too (ConnectNcclRequest.both_ways)
};

class NcclLinkTable {
 public:
  // `holder` names this side in errors ("this expert shard"); `on_count` (may be null) hears the
  // links held whenever that changes.
  NcclLinkTable(std::string holder, NcclLinkTableLimits limits, NcclLinkFactory& links,
                std::function<void(int)> on_count = nullptr)
      : holder_(std::move(holder)), limits_(limits), factory_(links), on_count_(std::move(on_count)) {}

  // ConnectNccl: joins the link as rank 1 and warms it up (several at once; a link not made the way
  // these carry is refused). It drops the link the request replaces, any earlier link of the same
  // owner (its maker restarted) and any broken one; at the limit, the link unused longest if unused
  // for evict_after, or else it answers RESOURCE_EXHAUSTED. Its waits end early once `give_up`
  // says so (the maker's call has gone).
  absl::Status Connect(const internal::v1::ConnectNcclRequest& request, const NcclLink::GiveUp& give_up = nullptr);

  struct Entry;
  // A link taken for one transfer and its answer; it stays alive while held, even once dropped.
  class Held {
   public:
    Held() = default;
    Held(Held&&) = default;
    // Lets go of this one's link before it takes the other's: the entry it holds may go with it.
    Held& operator=(Held&& other) noexcept {
      if (this != &other) {
        busy_ = std::unique_lock<std::mutex>();
        entry_ = std::move(other.entry_);
        busy_ = std::move(other.busy_);
      }
      return *this;
    }
    NcclLink& link() const;

   private:
    friend class NcclLinkTable;
    std::shared_ptr<Entry> entry_;
    std::unique_lock<std::mutex> busy_;  // released before entry_
  };
  // Link `link` where it is held here and free; FAILED_PRECONDITION otherwise.
  absl::StatusOr<Held> Take(uint64_t link);
  int links() const;

 private:
  void Count() const;  // under mutex_

  const std::string holder_;
  const NcclLinkTableLimits limits_;
  NcclLinkFactory& factory_;
  const std::function<void(int)> on_count_;
  mutable std::mutex mutex_;  // guards links_, joining_ and every entry's last_used
  std::map<uint64_t, std::shared_ptr<Entry>> links_;
  int joining_ = 0;  // links being joined: each holds a buffer and a communicator, as a link does
};

}  // namespace deltaserve::services
