// NcclLink in builds without NCCL: no link can be made.
#include "services/transport/nccl_link.h"

namespace deltaserve::services {

absl::StatusOr<std::string> NcclLink::NewId() {
  return absl::UnimplementedError("this build has no NCCL (no CUDA toolkit was found)");
}

absl::StatusOr<std::unique_ptr<NcclLink>> NcclLink::Join(const std::string&, int, const NcclLinkOptions&) {
  return absl::UnimplementedError("this build has no NCCL (no CUDA toolkit was found)");
}

}  // namespace deltaserve::services
