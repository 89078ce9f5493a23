#include "services/router/request_stream.h"

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace deltaserve::services {

void RequestStream::SetSessionId(const std::string& session_id) {
  absl::MutexLock lock(&mutex_);
  session_id_ = session_id;
}

void RequestStream::PushToken(int32_t token) {
  absl::MutexLock lock(&mutex_);
  tokens_.push_back(token);
}

void RequestStream::Finish(RequestOutcome outcome) {
  absl::MutexLock lock(&mutex_);
  outcome_ = std::move(outcome);
  finished_ = true;
}

RequestStream::Update RequestStream::Wait(std::chrono::steady_clock::time_point until) {
  absl::MutexLock lock(&mutex_);
  const auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
    return !tokens_.empty() || finished_ || (!session_id_.empty() && !session_id_sent_);
  };
  const auto remaining = until - std::chrono::steady_clock::now();
  mutex_.AwaitWithTimeout(absl::Condition(&ready),
                          absl::FromChrono(std::chrono::duration_cast<std::chrono::nanoseconds>(remaining)));
  Update update;
  if (!session_id_sent_ && !session_id_.empty()) {
    update.session_id = session_id_;
    session_id_sent_ = true;
  }
  update.tokens.swap(tokens_);
  if (finished_) {
    update.finished = true;
    update.outcome = outcome_;
  }
  return update;
}

void RequestStream::Cancel() {
  absl::MutexLock lock(&mutex_);
  cancelled_ = true;
}

bool RequestStream::cancelled() const {
  absl::MutexLock lock(&mutex_);
  return cancelled_;
}

}  // namespace deltaserve::services
