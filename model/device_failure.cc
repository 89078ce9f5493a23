#include "model/device_failure.h"

#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace deltaserve::model {

absl::Status TakeDeviceFailure(kernels::Backend& backend, std::string_view during) {
  const kernels::BackendFailure failure = backend.TakeFailure();
  if (!failure.failed()) return absl::OkStatus();
  if (failure.out_of_memory) {
    return DeviceMemoryError(absl::StrCat(std::string(backend.name()), " device memory ran out ",
                                          std::string(during), " (", failure.message, ")"));
  }
  return absl::InternalError(
      absl::StrCat(std::string(backend.name()), " device failed ", std::string(during), ": ", failure.message));
}

absl::Status DeviceMemoryError(std::string_view message) {
  absl::Status status = absl::ResourceExhaustedError(std::string(message));
  status.SetPayload(kDeviceMemoryPayload, absl::Cord());
  return status;
}

}  // namespace deltaserve::model
