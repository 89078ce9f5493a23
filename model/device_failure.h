// A backend's held failure (kernels::Backend::TakeFailure) as the status a request sees.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace deltaserve::model {

// Set on a RESOURCE_EXHAUSTED that says device memory ran out (TakeDeviceFailure's; it crosses
// the gRPC edge between our processes).
inline constexpr char kDeviceMemoryPayload[] = "type.googleapis.com/deltaserve.model.DeviceMemoryRanOut";
// Also set where memory ran out before a step changed any sequence's state
// (KimiLinearModel::ForwardStage reserves the step's latent pages first): the sequences are as
// they were and may run again.
inline constexpr char kStatesUnchangedPayload[] = "type.googleapis.com/deltaserve.model.StatesUnchanged";

inline bool DeviceMemoryRanOut(const absl::Status& status) {
  return status.GetPayload(kDeviceMemoryPayload).has_value();
}
inline bool StatesUnchanged(const absl::Status& status) {
  return status.GetPayload(kStatesUnchangedPayload).has_value();
}

// OK when the calling thread's operations on `backend` all ran; otherwise RESOURCE_EXHAUSTED
// (device memory ran out; with kDeviceMemoryPayload) or INTERNAL, naming `during` and the failed
// call. Takes the failure.
absl::Status TakeDeviceFailure(kernels::Backend& backend, std::string_view during);

// RESOURCE_EXHAUSTED with kDeviceMemoryPayload.
absl::Status DeviceMemoryError(std::string_view message);

}  // namespace deltaserve::model
