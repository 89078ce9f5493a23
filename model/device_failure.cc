#include "model/device_failure.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace deltaserve::model {

absl::Status TakeDeviceFailure(kernels::Backend& backend, std::string_view during) {
  const kernels::BackendFailure failure = backend.TakeFailure();
  if (!failure.failed()) return absl::OkStatus();
  if (failure.out_of_memory) {
    return absl::ResourceExhaustedError(
        absl::StrCat(std::string(backend.name()), " device memory ran out ", std::string(during), " (",
                     failure.message, ")"));
  }
  return absl::InternalError(
      absl::StrCat(std::string(backend.name()), " device failed ", std::string(during), ": ", failure.message));
}

}  // namespace deltaserve::model
