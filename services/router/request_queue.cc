#include "services/router/request_queue.h"

#include <algorithm>

namespace deltaserve::services {

bool RequestQueue::Push(uint64_t request_id, int32_t priority) {
  if (size() >= capacity_) return false;
  entries_.emplace(priority, arrivals_++, request_id);
  return true;
}

void RequestQueue::Requeue(uint64_t request_id, int32_t priority) {
  entries_.emplace(priority, requeued_++, request_id);
}

std::optional<uint64_t> RequestQueue::Pop() {
  if (entries_.empty()) return std::nullopt;
  const uint64_t id = std::get<2>(*entries_.begin());
  entries_.erase(entries_.begin());
  return id;
}

std::optional<uint64_t> RequestQueue::Peek() const {
  if (entries_.empty()) return std::nullopt;
  return std::get<2>(*entries_.begin());
}

bool RequestQueue::Remove(uint64_t request_id) {
  const auto it = std::find_if(entries_.begin(), entries_.end(),
                               [&](const Entry& e) { return std::get<2>(e) == request_id; });
  if (it == entries_.end()) return false;
  entries_.erase(it);
  return true;
}

}  // namespace deltaserve::services
