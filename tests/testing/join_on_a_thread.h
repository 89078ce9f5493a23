// A link's maker side joined on a thread of its own: for tests whose maker joins and then goes
// silent, so that the other side's ConnectNccl call is left waiting for its warm-up.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "services/transport/nccl_link.h"

namespace deltaserve::testing {

// Joins link `id` as rank 0 (buffers of 1 KiB) through `links` on a new thread, which leaves
// the result in `joined`; the caller joins the thread before reading it.
inline std::thread JoinOnAThread(services::NcclLinkFactory& links, const std::string& id,
                                 std::chrono::milliseconds timeout,
                                 absl::StatusOr<std::unique_ptr<services::NcclLink>>& joined) {
  return std::thread([&links, id, timeout, &joined] {
    services::NcclLinkOptions options;
    options.capacity_bytes = 1024;
    options.timeout = timeout;
    joined = links.Join(id, 0, options);
  });
}

}  // namespace deltaserve::testing
