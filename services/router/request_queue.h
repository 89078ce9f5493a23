// Requests waiting for a slot: lowest priority value first, then arrival order (FCFS), with a
// hard bound so an overloaded router refuses work instead of queueing without limit.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <tuple>

namespace deltaserve::services {

class RequestQueue {
 public:
  explicit RequestQueue(int64_t capacity) : capacity_(capacity) {}

  // False (and nothing queued) when the queue is full.
  bool Push(uint64_t request_id, int32_t priority);
  // A request taken out of the running batch (preempted) goes back ahead of every request of its
  // priority that never ran, behind those requeued before it; never refused.
  void Requeue(uint64_t request_id, int32_t priority);
  // The request to serve next, removed from the queue.
  std::optional<uint64_t> Pop();
  std::optional<uint64_t> Peek() const;
  // Removes a waiting request (cancelled); false when it is not queued.
  bool Remove(uint64_t request_id);

  int64_t size() const { return static_cast<int64_t>(entries_.size()); }
  bool empty() const { return entries_.empty(); }
  int64_t capacity() const { return capacity_; }

 private:
  // (priority, order, request id): the set's order is the service order. Arrivals count up
  // from 0, requeued requests from the lowest int64_t.
  using Entry = std::tuple<int32_t, int64_t, uint64_t>;
  int64_t capacity_;
  int64_t arrivals_ = 0;
  int64_t requeued_ = std::numeric_limits<int64_t>::min();
  std::set<Entry> entries_;
};

}  // namespace deltaserve::services
