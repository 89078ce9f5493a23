// SnapshotStore: sessions of named parts (state snapshots, blobs) owned by tenants, in a
// byte-limited LRU memory tier over an optional durable disk tier that survives restarts.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "services/session_store/clock.h"
#include "services/session_store/disk_tier.h"
#include "services/session_store/memory_tier.h"
#include "services/session_store/session_io_lock.h"
#include "services/session_store/store_options.h"
#include "services/session_store/store_types.h"

namespace deltaserve::services {

// Thread-safe. Every call names the tenant; a session of another tenant is PERMISSION_DENIED
// and is never read or changed. Errors: bad tenant/id/part/kind or a STATE payload whose
// envelope fails -> INVALID_ARGUMENT; unknown (or expired) session or part -> NOT_FOUND;
// existing id -> ALREADY_EXISTS; part over max_part_bytes, or store full -> RESOURCE_EXHAUSTED;
// a part damaged on disk -> DATA_LOSS (the part is quarantined and dropped from the session;
// the store keeps serving); a disk write failure -> INTERNAL (RESOURCE_EXHAUSTED when full).
//
// Disk I/O runs outside the store's lock, under a per-session reader/writer lock: writes to
// one session are serialised, different sessions proceed in parallel.
class SnapshotStore {
 public:
  // Validates `options`; with a data_dir, creates or locks it and rebuilds the index of every
  // session and part found there (damaged files are quarantined, not fatal).
  static absl::StatusOr<std::unique_ptr<SnapshotStore>> Open(SnapshotStoreOptions options);
  ~SnapshotStore();
  SnapshotStore(const SnapshotStore&) = delete;
  SnapshotStore& operator=(const SnapshotStore&) = delete;

  // Creates a session; if `session_id` is already this tenant's, returns it unless
  // `must_be_new` (ALREADY_EXISTS). Another tenant's id is PERMISSION_DENIED.
  absl::StatusOr<SessionInfo> CreateSession(std::string_view tenant, std::string_view session_id,
                                            bool must_be_new);
  // Writes (or replaces) a part; durable on disk before it returns when there is a disk tier.
  absl::StatusOr<PartInfo> PutPart(std::string_view tenant, std::string_view session_id,
                                   std::string_view part, PartKind kind, std::string payload);
  // Reads a part (from memory, else from disk, verified, and promoted to memory).
  absl::StatusOr<Part> GetPart(std::string_view tenant, std::string_view session_id,
                               std::string_view part);
  // As GetPart, without a copy of the payload (the gRPC service streams a part from it).
  absl::StatusOr<SharedPart> GetPartShared(std::string_view tenant, std::string_view session_id,
                                           std::string_view part);
  // The session and its parts; does not count as a use for the TTL.
  absl::StatusOr<SessionInfo> StatSession(std::string_view tenant, std::string_view session_id);
  // The tenant's sessions with ids after `page_token` (empty: from the start), ordered by id.
  // page_size <= 0 means 100; at most 1000.
  absl::StatusOr<SessionPage> ListSessions(std::string_view tenant, int page_size,
                                           std::string_view page_token);
  absl::Status DeleteSession(std::string_view tenant, std::string_view session_id);
  // Copies every part of `session_id` to the new session `new_session_id` of the same tenant
  // (ALREADY_EXISTS if it exists). With a disk tier the copy appears on disk all at once.
  absl::StatusOr<SessionInfo> CopySession(std::string_view tenant, std::string_view session_id,
                                          std::string_view new_session_id);
  // Removes every session unused for ttl_seconds; returns how many. Expired sessions are
  // already invisible; this reclaims their space (also done lazily when one is accessed).
  int64_t SweepExpired();

  StoreStats Stats() const;
  const SnapshotStoreOptions& options() const { return options_; }

 private:
  struct PartEntry {
    PartKind kind = PartKind::kBlob;
    int64_t bytes = 0;
    uint32_t crc32 = 0;  // of the payload (disk tier only)
    int64_t written_unix_ms = 0;
    int64_t num_tokens = 0;
    uint64_t model_fingerprint = 0;
    int64_t layer_begin = 0;
    int64_t layer_end = 0;
  };
  struct SessionEntry {
    std::string tenant;
    int64_t created_unix_ms = 0;
    int64_t last_used_unix_ms = 0;
    // False while its creation (create or copy) is in flight: invisible to reads.
    bool ready = false;
    std::map<std::string, PartEntry, std::less<>> parts;
    // Held exclusively for writes and removal, shared for reads; shared_ptr so that a waiter
    // can tell that the session it waited for was removed.
    std::shared_ptr<SessionIo> io;
  };
  using SessionMap = std::map<std::string, SessionEntry, std::less<>>;

  SnapshotStore(SnapshotStoreOptions options, std::unique_ptr<DiskTier> disk);
  static PartHeader HeaderFor(std::string_view tenant, std::string_view session_id,
                              std::string_view part, const PartEntry& entry);
  void LoadFromDisk();
  int64_t NowMs() const { return clock_.NowUnixMs(); }
  bool IsExpired(const SessionEntry& entry, int64_t now_ms) const;

  // Finds a live session of `tenant`: NOT_FOUND (missing, expired, or not ready unless
  // `allow_not_ready`), PERMISSION_DENIED (another tenant's).
  absl::StatusOr<SessionMap::iterator> FindOwnedLocked(std::string_view tenant,
                                                       std::string_view session_id, int64_t now_ms,
                                                       bool allow_not_ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Finds the session and takes its I/O lock; on success it is live and owned by `tenant`.
  absl::StatusOr<SessionIoLock> LockSession(std::string_view tenant, std::string_view session_id,
                                            bool exclusive);
  // Inserts a new, not yet ready entry for `session_id` (which must be free) around `fresh`,
  // a new SessionIo the caller locked exclusively before taking mu_.
  absl::Status ReserveSessionLocked(std::string_view tenant, std::string_view session_id,
                                    int64_t now_ms, const SessionIoLock& fresh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsFullLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops a reserved entry whose creation failed.
  void DropReservation(std::string_view session_id, const SessionIoLock& lock);
  // With the session's I/O lock held exclusively: removes it from disk and index (for an
  // expiry, only if still expired). True when removed.
  absl::StatusOr<bool> RemoveSession(std::string_view session_id, const SessionIoLock& lock,
                                     bool expire);
  void EraseSessionLocked(SessionMap::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveIfExpired(std::string_view session_id);
  // Copies the parts of `session_id` into the reserved `new_session_id` (lock held).
  absl::StatusOr<SessionInfo> CopyIntoReserved(std::string_view tenant, std::string_view session_id,
                                               std::string_view new_session_id, int64_t now_ms,
                                               const SessionIoLock& new_session_lock);
  // Reads a part from disk, verified; quarantines and forgets a damaged one (DATA_LOSS).
  absl::StatusOr<std::string> ReadPartFromDisk(std::string_view tenant, std::string_view session_id,
                                               std::string_view part, const PartEntry& entry,
                                               const SessionIoLock& lock);
  // Brings the memory tier under its limit: drops parts from memory (disk tier) or whole
  // sessions other than `protected_session` (memory only).
  void EvictLocked(std::string_view protected_session) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes `payload` the part's in-memory copy if the memory tier can hold it.
  void CacheLocked(std::string_view session_id, std::string_view part, MemoryTier::Payload payload)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  PartInfo PartInfoLocked(std::string_view session_id, const std::string& part,
                          const PartEntry& entry) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  SessionInfo SessionInfoLocked(const std::string& session_id, const SessionEntry& entry) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SnapshotStoreOptions options_;
  const Clock& clock_;
  const std::unique_ptr<DiskTier> disk_;  // null for a memory-only store

  mutable absl::Mutex mu_;
  SessionMap sessions_ ABSL_GUARDED_BY(mu_);
  // Each tenant's session ids, ordered, for listing.
  std::map<std::string, std::set<std::string, std::less<>>, std::less<>> by_tenant_
      ABSL_GUARDED_BY(mu_);
  MemoryTier memory_ ABSL_GUARDED_BY(mu_);
  int64_t disk_parts_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t disk_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  // Bytes of disk writes in flight, counted against max_disk_bytes.
  int64_t disk_reserved_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  StoreStats counters_ ABSL_GUARDED_BY(mu_);  // the *_total fields
};

}  // namespace deltaserve::services
