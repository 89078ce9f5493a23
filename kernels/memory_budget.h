// The memory a backend allocates for the steps' buffers and the sequences' states: counted
// against its limit (MemoryLimit) and split between the two (StepRoom), every refusal recorded as
// the calling thread's out-of-memory failure (FailureRecord) with what was held at the time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "kernels/backend.h"
#include "kernels/failure_record.h"
#include "kernels/memory_limit.h"
#include "kernels/step_room.h"

namespace deltaserve::kernels {

class MemoryBudget {
 public:
  // `unlimited_available` says how many bytes can still be allocated where no limit is set (-1:
  // unknown; null: always unknown, so only the allocation itself can refuse).
  MemoryBudget(int64_t limit_bytes, FailureRecord& failures,
               std::function<int64_t()> unlimited_available = nullptr);

  MemoryLimit& limit() { return limit_; }
  StepRoom& room() { return room_; }

  // Whether `bytes` may be allocated now, counted against the limit when they may: a state
  // (state) that, with leave_step_room, must leave the steps' buffers their room, or a step
  // buffer. False, the failure recorded (naming `what`), when they may not; then Settle is not
  // called.
  bool Admit(size_t bytes, bool state, bool leave_step_room, const char* what);
  // After a successful Admit: the allocation at `data` holds the bytes (null: it failed anyway).
  void Settle(void* data, size_t bytes, bool state);
  // The allocation at `data` is freed (null: nothing was allocated).
  void Release(void* data);
  // The caller took a thread's failure, or none (ok): StepRoom::Checked.
  void Checked(bool ok) { room_.Checked(ok); }
  MemoryUse Use() const;

  // Counts `bytes` against the limit, recording the failure (naming `what`) when they do not fit.
  bool Reserve(size_t bytes, const char* what);
  // Bytes that can still be allocated: under the limit where one is set; -1 when unknown.
  int64_t Available();
  // Whether `bytes` more kept from step to step (a state, a step graph's arena) leave the steps'
  // buffers their room.
  bool LeavesStepRoom(size_t bytes, int64_t* left = nullptr, int64_t* to_leave = nullptr);

 private:
  // LeavesStepRoom for a state, recording the failure if not.
  bool RoomForState(size_t bytes);
  void StepBufferRefused(size_t bytes) { room_.Refused(static_cast<int64_t>(bytes), Available()); }

  FailureRecord& failures_;
  const std::function<int64_t()> unlimited_available_;
  MemoryLimit limit_;
  StepRoom room_;
};

}  // namespace deltaserve::kernels
