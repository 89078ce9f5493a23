#include "kernels/memory_budget.h"

#include <algorithm>
#include <string>
#include <utility>

namespace deltaserve::kernels {

MemoryBudget::MemoryBudget(int64_t limit_bytes, FailureRecord& failures,
                           std::function<int64_t()> unlimited_available)
    : failures_(failures), unlimited_available_(std::move(unlimited_available)), limit_(limit_bytes) {}

bool MemoryBudget::Admit(size_t bytes, bool state, bool leave_step_room, const char* what) {
  if (state && leave_step_room && !RoomForState(bytes)) return false;
  if (Reserve(bytes, what)) return true;
  if (!state) StepBufferRefused(bytes);
  return false;
}

void MemoryBudget::Settle(void* data, size_t bytes, bool state) {
  limit_.Settle(data, bytes);
  if (data != nullptr) {
    room_.Allocated(data, static_cast<int64_t>(bytes), state);
  } else if (!state) {
    StepBufferRefused(bytes);
  }
}

void MemoryBudget::Release(void* data) {
  if (data == nullptr) return;
  limit_.Release(data);
  room_.Freed(data);
}

MemoryUse MemoryBudget::Use() const {
  return {.known = true,
          .state_bytes = room_.state_bytes(),
          .step_bytes = room_.step_bytes(),
          .step_room_bytes = room_.need(),
          .limit_bytes = limit_.limit(),
          .counted_bytes = limit_.held()};
}

bool MemoryBudget::Reserve(size_t bytes, const char* what) {
  int64_t held = 0;
  if (limit_.Reserve(bytes, &held)) return true;
  failures_.Record(true, std::string(what) + ": " + std::to_string(bytes) +
                             " bytes more would pass the memory limit of " + std::to_string(limit_.limit()) +
                             " bytes (" + std::to_string(held) + " held; states " +
                             std::to_string(room_.state_bytes()) + ", steps' buffers " +
                             std::to_string(room_.step_bytes()) + " of the " + std::to_string(room_.need()) +
                             " they have held at once)");
  return false;
}

int64_t MemoryBudget::Available() {
  if (limit_.limit() > 0) return limit_.limit() - limit_.held();
  return unlimited_available_ != nullptr ? unlimited_available_() : -1;
}

bool MemoryBudget::LeavesStepRoom(size_t bytes, int64_t* left, int64_t* to_leave) {
  const int64_t needed = room_.ToLeave();
  if (to_leave != nullptr) *to_leave = needed;
  if (needed == 0) return true;
  const int64_t available = Available();
  if (available < 0) return true;  // unknown: the allocation itself decides
  const int64_t remaining = available - static_cast<int64_t>(bytes);
  if (left != nullptr) *left = remaining;
  return remaining >= needed;
}

bool MemoryBudget::RoomForState(size_t bytes) {
  int64_t left = 0, to_leave = 0;
  if (LeavesStepRoom(bytes, &left, &to_leave)) return true;
  failures_.Record(true, "state: " + std::to_string(bytes) + " bytes would leave " +
                             std::to_string(std::max<int64_t>(0, left)) + " bytes free of the " +
                             std::to_string(to_leave) + " more that the steps' buffers have held at once");
  return false;
}

}  // namespace deltaserve::kernels
