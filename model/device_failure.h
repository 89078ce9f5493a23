// A backend's held failure (kernels::Backend::TakeFailure) as the status a request sees.
#pragma once

#include <string_view>

#include "absl/status/status.h"
#include "kernels/backend.h"

namespace deltaserve::model {

// OK when the calling thread's operations on `backend` all ran; otherwise RESOURCE_EXHAUSTED
// (device memory ran out) or INTERNAL, naming `during` and the failed call. Takes the failure.
absl::Status TakeDeviceFailure(kernels::Backend& backend, std::string_view during);

}  // namespace deltaserve::model
