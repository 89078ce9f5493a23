// SnapshotStore: the session index, tenancy, limits, expiry and session lifecycle (open,
// create, stat, list, delete, sweep). Part reads, writes and copies: snapshot_store_parts.cc.
#include "services/session_store/snapshot_store.h"

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "services/common/tenancy.h"
#include "services/session_store/store_messages.h"
#include "services/session_store/store_names.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {
namespace {

constexpr int kDefaultPageSize = 100;
constexpr int kMaxPageSize = 1000;
// Retries when a session is removed or replaced while a call waits for its lock.
constexpr int kMaxLockAttempts = 8;

}  // namespace

absl::StatusOr<std::unique_ptr<SnapshotStore>> SnapshotStore::Open(SnapshotStoreOptions options) {
  DS_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<DiskTier> disk;
  if (!options.data_dir.empty()) {
    DS_ASSIGN_OR_RETURN(disk, DiskTier::Open(options.data_dir));
  }
  std::unique_ptr<SnapshotStore> store(new SnapshotStore(std::move(options), std::move(disk)));
  if (store->disk_ != nullptr) store->LoadFromDisk();
  store->SweepExpired();
  return store;
}

SnapshotStore::SnapshotStore(SnapshotStoreOptions options, std::unique_ptr<DiskTier> disk)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? *options_.clock : SystemClock()),
      disk_(std::move(disk)) {}

SnapshotStore::~SnapshotStore() = default;

void SnapshotStore::LoadFromDisk() {
  DiskTier::ScanResult scan = disk_->Scan();
  absl::MutexLock lock(&mu_);
  for (DiskTier::ScannedSession& scanned : scan.sessions) {
    SessionEntry entry;
    entry.tenant = scanned.meta.tenant;
    entry.created_unix_ms = scanned.meta.created_unix_ms;
    // Reads are not persisted: a session's last use on disk is its last write (a turn always
    // ends with one).
    entry.last_used_unix_ms = scanned.meta.last_used_unix_ms;
    entry.ready = true;
    entry.io = std::make_shared<SessionIo>();
    for (const PartHeader& header : scanned.parts) {
      PartEntry part;
      part.kind = header.kind;
      part.bytes = static_cast<int64_t>(header.payload_bytes);
      part.crc32 = header.payload_crc32;
      part.written_unix_ms = header.written_unix_ms;
      part.num_tokens = header.num_tokens;
      part.model_fingerprint = header.model_fingerprint;
      part.layer_begin = header.layer_begin;
      part.layer_end = header.layer_end;
      entry.last_used_unix_ms = std::max(entry.last_used_unix_ms, header.written_unix_ms);
      disk_bytes_ += part.bytes;
      ++disk_parts_;
      entry.parts.emplace(header.part, part);
    }
    by_tenant_[entry.tenant].insert(scanned.meta.session_id);
    sessions_.emplace(scanned.meta.session_id, std::move(entry));
  }
  counters_.quarantined_files_total += scan.quarantined_files;
  spdlog::info("session store: opened '{}': {} sessions, {} parts, {} bytes; {} files quarantined",
               disk_->data_dir(), sessions_.size(), disk_parts_, disk_bytes_,
               scan.quarantined_files);
  if (options_.max_sessions > 0 && static_cast<int64_t>(sessions_.size()) > options_.max_sessions) {
    spdlog::warn(
        "session store: {} sessions on disk exceed max_sessions {}; creates will fail "
        "until some are removed",
        sessions_.size(), options_.max_sessions);
  }
}

bool SnapshotStore::IsExpired(const SessionEntry& entry, int64_t now_ms) const {
  return options_.ttl_seconds > 0 &&
         now_ms - entry.last_used_unix_ms >= options_.ttl_seconds * 1000;
}

bool SnapshotStore::IsFullLocked() const {
  return options_.max_sessions > 0 &&
         static_cast<int64_t>(sessions_.size()) >= options_.max_sessions;
}

absl::StatusOr<SnapshotStore::SessionMap::iterator> SnapshotStore::FindOwnedLocked(
    std::string_view tenant, std::string_view session_id, int64_t now_ms, bool allow_not_ready) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || (!allow_not_ready && !it->second.ready) ||
      IsExpired(it->second, now_ms)) {
    return absl::NotFoundError(absl::StrCat(SessionLabel(session_id), " not found"));
  }
  if (it->second.tenant != tenant) {
    return absl::PermissionDeniedError(
        absl::StrCat(SessionLabel(session_id), " belongs to another tenant"));
  }
  return it;
}

absl::StatusOr<SessionIoLock> SnapshotStore::LockSession(std::string_view tenant,
                                                         std::string_view session_id,
                                                         bool exclusive) {
  for (int attempt = 0; attempt < kMaxLockAttempts; ++attempt) {
    std::shared_ptr<SessionIo> io;
    {
      absl::MutexLock lock(&mu_);
      DS_ASSIGN_OR_RETURN(auto it,
                          FindOwnedLocked(tenant, session_id, NowMs(), /*allow_not_ready=*/true));
      io = it->second.io;
    }
    SessionIoLock io_lock(io, exclusive);
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it != sessions_.end() && it->second.io == io) {
      // A creator holds the lock until its session is ready or dropped.
      DS_CHECK(it->second.ready);
      if (IsExpired(it->second, NowMs())) {
        return absl::NotFoundError(absl::StrCat(SessionLabel(session_id), " not found"));
      }
      return io_lock;
    }
    // Removed (or removed and created again) while this call waited: look again.
  }
  return absl::AbortedError(
      absl::StrCat(SessionLabel(session_id), " kept changing while waiting for it; retry"));
}

absl::Status SnapshotStore::ReserveSessionLocked(std::string_view tenant,
                                                 std::string_view session_id, int64_t now_ms,
                                                 const SessionIoLock& fresh) {
  if (IsFullLocked()) {
    return absl::ResourceExhaustedError(absl::StrCat("session store is full (max_sessions ",
                                                     options_.max_sessions, "); cannot add ",
                                                     SessionLabel(session_id)));
  }
  SessionEntry entry;
  entry.tenant = std::string(tenant);
  entry.created_unix_ms = now_ms;
  entry.last_used_unix_ms = now_ms;
  entry.io = fresh.io();
  by_tenant_[entry.tenant].insert(std::string(session_id));
  sessions_.emplace(std::string(session_id), std::move(entry));
  return absl::OkStatus();
}

void SnapshotStore::DropReservation(std::string_view session_id, const SessionIoLock& lock) {
  absl::MutexLock mu_lock(&mu_);
  auto it = sessions_.find(session_id);
  if (it != sessions_.end() && it->second.io == lock.io()) EraseSessionLocked(it);
}

void SnapshotStore::EraseSessionLocked(SessionMap::iterator it) {
  memory_.EraseSession(it->first);
  if (disk_ != nullptr && it->second.ready) {
    for (const auto& [name, part] : it->second.parts) {
      disk_bytes_ -= part.bytes;
      --disk_parts_;
    }
  }
  auto tenant_it = by_tenant_.find(it->second.tenant);
  if (tenant_it != by_tenant_.end()) {
    tenant_it->second.erase(it->first);
    if (tenant_it->second.empty()) by_tenant_.erase(tenant_it);
  }
  sessions_.erase(it);
}

absl::StatusOr<bool> SnapshotStore::RemoveSession(std::string_view session_id,
                                                  const SessionIoLock& lock, bool expire) {
  {
    absl::MutexLock mu_lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end() || it->second.io != lock.io()) return false;
    if (expire && !IsExpired(it->second, NowMs())) return false;
  }
  // Nothing else changes this session while its lock is held exclusively.
  if (disk_ != nullptr) {
    absl::Status removed = disk_->RemoveSession(session_id);
    if (!removed.ok())
      return WithContext(removed, absl::StrCat("removing ", SessionLabel(session_id)));
  }
  absl::MutexLock mu_lock(&mu_);
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second.io != lock.io()) return false;
  if (expire) {
    ++counters_.expirations_total;
    spdlog::debug("session store: sess={} tenant={} expired", std::string(session_id),
                  it->second.tenant);
  }
  EraseSessionLocked(it);
  return true;
}

void SnapshotStore::RemoveIfExpired(std::string_view session_id) {
  if (options_.ttl_seconds == 0) return;
  std::shared_ptr<SessionIo> io;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end() || !it->second.ready || !IsExpired(it->second, NowMs())) return;
    io = it->second.io;
  }
  SessionIoLock io_lock(std::move(io), /*exclusive=*/true);
  absl::StatusOr<bool> removed = RemoveSession(session_id, io_lock, /*expire=*/true);
  if (!removed.ok()) {
    spdlog::error("session store: cannot remove expired {}: {}", SessionLabel(session_id),
                  removed.status().ToString());
  }
}

int64_t SnapshotStore::SweepExpired() {
  if (options_.ttl_seconds == 0) return 0;
  std::vector<std::pair<std::string, std::shared_ptr<SessionIo>>> expired;
  {
    absl::MutexLock lock(&mu_);
    const int64_t now_ms = NowMs();
    for (const auto& [id, entry] : sessions_) {
      if (entry.ready && IsExpired(entry, now_ms)) expired.emplace_back(id, entry.io);
    }
  }
  int64_t removed_count = 0;
  for (auto& [id, io] : expired) {
    SessionIoLock io_lock(std::move(io), /*exclusive=*/true);
    absl::StatusOr<bool> removed = RemoveSession(id, io_lock, /*expire=*/true);
    if (!removed.ok()) {
      spdlog::error("session store: cannot remove expired {}: {}", SessionLabel(id),
                    removed.status().ToString());
    } else if (*removed) {
      ++removed_count;
    }
  }
  return removed_count;
}

PartInfo SnapshotStore::PartInfoLocked(std::string_view session_id, const std::string& part,
                                       const PartEntry& entry) const {
  PartInfo info;
  info.name = part;
  info.kind = entry.kind;
  info.bytes = entry.bytes;
  info.num_tokens = entry.num_tokens;
  info.model_fingerprint = entry.model_fingerprint;
  info.layer_begin = entry.layer_begin;
  info.layer_end = entry.layer_end;
  info.tier = memory_.Contains(session_id, part) ? Tier::kMemory : Tier::kDisk;
  return info;
}

SessionInfo SnapshotStore::SessionInfoLocked(const std::string& session_id,
                                             const SessionEntry& entry) const {
  SessionInfo info;
  info.tenant = entry.tenant;
  info.session_id = session_id;
  info.created_unix_ms = entry.created_unix_ms;
  info.last_used_unix_ms = entry.last_used_unix_ms;
  info.parts.reserve(entry.parts.size());
  for (const auto& [name, part] : entry.parts) {
    info.parts.push_back(PartInfoLocked(session_id, name, part));
  }
  return info;
}

absl::StatusOr<SessionInfo> SnapshotStore::CreateSession(std::string_view tenant,
                                                         std::string_view session_id,
                                                         bool must_be_new) {
  DS_RETURN_IF_ERROR(ValidateIds(tenant, session_id));
  bool swept = false;
  for (int attempt = 0; attempt < kMaxLockAttempts; ++attempt) {
    RemoveIfExpired(session_id);
    std::shared_ptr<SessionIo> wait_for;
    // Locked before mu_, as every session I/O lock is (the lock order is I/O lock, then mu_).
    SessionIoLock creating(std::make_shared<SessionIo>(), /*exclusive=*/true);
    bool reserved = false;
    bool sweep = false;
    int64_t now_ms = 0;
    {
      absl::MutexLock lock(&mu_);
      now_ms = NowMs();
      auto it = sessions_.find(session_id);
      if (it != sessions_.end()) {
        const SessionEntry& entry = it->second;
        if (entry.ready && IsExpired(entry, now_ms)) continue;  // removed at the loop's top
        if (entry.tenant != tenant) {
          return absl::PermissionDeniedError(
              absl::StrCat(SessionLabel(session_id), " belongs to another tenant"));
        }
        if (must_be_new) {
          return absl::AlreadyExistsError(
              absl::StrCat(SessionLabel(session_id), " already exists"));
        }
        if (entry.ready) return SessionInfoLocked(it->first, entry);
        wait_for = entry.io;  // its creation is in flight
      } else {
        if (IsFullLocked() && options_.ttl_seconds > 0 && !swept) {
          sweep = true;  // expired sessions may make room
        } else {
          DS_RETURN_IF_ERROR(ReserveSessionLocked(tenant, session_id, now_ms, creating));
          reserved = true;
        }
      }
    }
    if (!reserved) creating = SessionIoLock();  // never hold it while waiting for another
    if (sweep) {
      SweepExpired();
      swept = true;
      continue;
    }
    if (wait_for != nullptr) {
      SessionIoLock wait(std::move(wait_for), /*exclusive=*/false);
      continue;
    }
    if (disk_ != nullptr) {
      SessionMeta meta{std::string(tenant), std::string(session_id), now_ms, now_ms};
      absl::Status written = disk_->CreateSession(meta);
      if (!written.ok()) {
        DropReservation(session_id, creating);
        return WithContext(written, absl::StrCat("creating ", SessionLabel(session_id)));
      }
    }
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    DS_CHECK(it != sessions_.end() && it->second.io == creating.io());
    it->second.ready = true;
    return SessionInfoLocked(it->first, it->second);
  }
  return absl::AbortedError(
      absl::StrCat(SessionLabel(session_id), " kept changing while creating it; retry"));
}

absl::StatusOr<SessionInfo> SnapshotStore::StatSession(std::string_view tenant,
                                                       std::string_view session_id) {
  DS_RETURN_IF_ERROR(ValidateIds(tenant, session_id));
  RemoveIfExpired(session_id);
  absl::MutexLock lock(&mu_);
  DS_ASSIGN_OR_RETURN(auto it, FindOwnedLocked(tenant, session_id, NowMs(), false));
  return SessionInfoLocked(it->first, it->second);
}

absl::StatusOr<SessionPage> SnapshotStore::ListSessions(std::string_view tenant, int page_size,
                                                        std::string_view page_token) {
  DS_RETURN_IF_ERROR(ValidateTenant(tenant));
  if (!page_token.empty()) {
    const absl::Status token_ok = ValidateSessionId(page_token);
    if (!token_ok.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad page token (a session id): ", token_ok.message()));
    }
  }
  const size_t limit =
      static_cast<size_t>(page_size <= 0 ? kDefaultPageSize : std::min(page_size, kMaxPageSize));
  SessionPage page;
  absl::MutexLock lock(&mu_);
  const int64_t now_ms = NowMs();
  auto tenant_it = by_tenant_.find(tenant);
  if (tenant_it == by_tenant_.end()) return page;
  const auto& ids = tenant_it->second;
  for (auto it = page_token.empty() ? ids.begin() : ids.upper_bound(page_token); it != ids.end();
       ++it) {
    const SessionEntry& entry = sessions_.find(*it)->second;
    if (!entry.ready || IsExpired(entry, now_ms)) continue;
    if (page.sessions.size() == limit) {
      page.next_page_token = page.sessions.back().session_id;
      break;
    }
    page.sessions.push_back(SessionInfoLocked(*it, entry));
  }
  return page;
}

absl::Status SnapshotStore::DeleteSession(std::string_view tenant, std::string_view session_id) {
  DS_RETURN_IF_ERROR(ValidateIds(tenant, session_id));
  RemoveIfExpired(session_id);
  DS_ASSIGN_OR_RETURN(SessionIoLock io_lock, LockSession(tenant, session_id, /*exclusive=*/true));
  DS_ASSIGN_OR_RETURN(const bool removed, RemoveSession(session_id, io_lock, /*expire=*/false));
  if (!removed) return absl::NotFoundError(absl::StrCat(SessionLabel(session_id), " not found"));
  return absl::OkStatus();
}

StoreStats SnapshotStore::Stats() const {
  absl::MutexLock lock(&mu_);
  StoreStats stats = counters_;
  stats.sessions = static_cast<int64_t>(sessions_.size());
  stats.memory_parts = memory_.parts();
  stats.memory_bytes = memory_.bytes();
  stats.disk_parts = disk_parts_;
  stats.disk_bytes = disk_bytes_;
  return stats;
}

}  // namespace deltaserve::services
