// A session store client whose transfers of stage snapshots (parts named "layers-...", or those
// starting with a given prefix) in one direction, uploads or downloads, wait at a gate until the
// test opens it, so a test can hold a snapshot in transit while it checks what else keeps
// working; after DamageDownloads, every stage snapshot it hands out has one byte flipped (damage
// in transit). Everything else goes straight to an in-memory SnapshotStore.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/session_store/snapshot_store.h"
#include "services/session_store/store_client.h"

namespace deltaserve::testing {

class GatedStoreClient final : public services::StoreClient {
 public:
  enum class Hold { kUploads, kDownloads };
  explicit GatedStoreClient(Hold hold = Hold::kUploads, std::string part_prefix = "layers-")
      : hold_(hold),
        part_prefix_(std::move(part_prefix)),
        store_(services::SnapshotStore::Open({}).value()),
        local_(*store_) {}

  // Waits up to `timeout` for a stage snapshot's transfer to reach the gate.
  bool WaitForHeldTransfer(std::chrono::milliseconds timeout) {
    absl::MutexLock lock(&mutex_);
    const auto held = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return held_ > 0; };
    return mutex_.AwaitWithTimeout(absl::Condition(&held), absl::FromChrono(timeout));
  }
  // Lets every held and later transfer through.
  void Open() {
    absl::MutexLock lock(&mutex_);
    open_ = true;
  }
  void DamageDownloads() {
    absl::MutexLock lock(&mutex_);
    damage_ = true;
  }

  absl::StatusOr<services::SessionInfo> CreateSession(std::string_view tenant, std::string_view session_id,
                                                      bool must_be_new) override {
    return local_.CreateSession(tenant, session_id, must_be_new);
  }
  absl::StatusOr<services::PartInfo> PutPart(std::string_view tenant, std::string_view session_id,
                                             std::string_view part, services::PartKind kind,
                                             std::string payload) override {
    if (hold_ == Hold::kUploads) PassGate(part);
    return local_.PutPart(tenant, session_id, part, kind, std::move(payload));
  }
  absl::StatusOr<services::Part> GetPart(std::string_view tenant, std::string_view session_id,
                                         std::string_view part) override {
    if (hold_ == Hold::kDownloads) PassGate(part);
    absl::StatusOr<services::Part> got = local_.GetPart(tenant, session_id, part);
    absl::MutexLock lock(&mutex_);
    if (damage_ && got.ok() && IsStageSnapshot(part) && !got->payload.empty()) {
      got->payload[got->payload.size() / 2] ^= 0x10;
    }
    return got;
  }
  absl::StatusOr<services::SessionInfo> StatSession(std::string_view tenant,
                                                    std::string_view session_id) override {
    return local_.StatSession(tenant, session_id);
  }
  absl::StatusOr<services::SessionPage> ListSessions(std::string_view tenant, int page_size,
                                                     std::string_view page_token) override {
    return local_.ListSessions(tenant, page_size, page_token);
  }
  absl::Status DeleteSession(std::string_view tenant, std::string_view session_id) override {
    return local_.DeleteSession(tenant, session_id);
  }
  absl::StatusOr<services::SessionInfo> CopySession(std::string_view tenant, std::string_view session_id,
                                                    std::string_view new_session_id) override {
    return local_.CopySession(tenant, session_id, new_session_id);
  }

 private:
  bool IsStageSnapshot(std::string_view part) const { return part.substr(0, part_prefix_.size()) == part_prefix_; }
  void PassGate(std::string_view part) {
    if (!IsStageSnapshot(part)) return;
    absl::MutexLock lock(&mutex_);
    ++held_;
    const auto open = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) { return open_; };
    mutex_.Await(absl::Condition(&open));
    --held_;
  }

  const Hold hold_;
  const std::string part_prefix_;
  std::unique_ptr<services::SnapshotStore> store_;
  services::LocalStoreClient local_;
  absl::Mutex mutex_;
  int held_ ABSL_GUARDED_BY(mutex_) = 0;
  bool open_ ABSL_GUARDED_BY(mutex_) = false;
  bool damage_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace deltaserve::testing
