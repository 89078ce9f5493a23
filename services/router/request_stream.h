// The hand-off between a Generate call's handler thread and the engine loop: the engine pushes
// generated tokens and the final result; the handler waits for them and can cancel.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "deltaserve/v1/inference.pb.h"

namespace deltaserve::services {

struct RequestOutcome {
  absl::Status status;  // not OK: the call fails with it
  bool drained = false;  // ended by a drain (counted as outcome "draining", not "error")
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Usage usage;
  v1::Timings timings;
};

class RequestStream {
 public:
  // Engine side.
  void SetSessionId(const std::string& session_id);
  void PushToken(int32_t token);
  void Finish(RequestOutcome outcome);

  // Handler side. Waits until tokens, the end, or `until`; moves out what arrived. Returns true
  // once the stream has finished and everything was taken.
  struct Update {
    std::string session_id;  // set once, on the first update that carries it
    std::vector<int32_t> tokens;
    bool finished = false;
    RequestOutcome outcome;  // when finished
  };
  Update Wait(std::chrono::steady_clock::time_point until);

  // Either side: the client went away or the deadline passed. The engine frees the slot at its
  // next step.
  void Cancel();
  bool cancelled() const;

 private:
  mutable absl::Mutex mutex_;
  std::string session_id_ ABSL_GUARDED_BY(mutex_);
  bool session_id_sent_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<int32_t> tokens_ ABSL_GUARDED_BY(mutex_);
  bool finished_ ABSL_GUARDED_BY(mutex_) = false;
  RequestOutcome outcome_ ABSL_GUARDED_BY(mutex_);
  bool cancelled_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace deltaserve::services
