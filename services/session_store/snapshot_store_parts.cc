// SnapshotStore's part operations: put, get (memory, else disk with verification and
// promotion), copy, and the memory tier's eviction policy.
#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "model/state/state_envelope.h"
#include "services/session_store/part_format.h"
#include "services/session_store/snapshot_store.h"
#include "services/session_store/store_messages.h"
#include "services/session_store/store_names.h"
#include "spdlog/spdlog.h"

namespace deltaserve::services {

PartHeader SnapshotStore::HeaderFor(std::string_view tenant, std::string_view session_id,
                                    std::string_view part, const PartEntry& entry) {
  PartHeader header;
  header.tenant = std::string(tenant);
  header.session_id = std::string(session_id);
  header.part = std::string(part);
  header.kind = entry.kind;
  header.payload_bytes = static_cast<uint64_t>(entry.bytes);
  header.payload_crc32 = entry.crc32;
  header.written_unix_ms = entry.written_unix_ms;
  header.num_tokens = entry.num_tokens;
  header.model_fingerprint = entry.model_fingerprint;
  header.layer_begin = entry.layer_begin;
  header.layer_end = entry.layer_end;
  return header;
}

void SnapshotStore::CacheLocked(std::string_view session_id, std::string_view part,
                                MemoryTier::Payload payload) {
  if (static_cast<int64_t>(payload->size()) > options_.memory_limit_bytes) return;
  memory_.Put(session_id, part, std::move(payload));
  EvictLocked(disk_ != nullptr ? std::string_view() : session_id);
}

void SnapshotStore::EvictLocked(std::string_view protected_session) {
  while (memory_.bytes() > options_.memory_limit_bytes) {
    std::optional<MemoryTier::Victim> victim = memory_.LeastRecentlyUsed(protected_session);
    if (!victim.has_value()) return;  // callers check that the protected session fits
    if (disk_ != nullptr) {
      memory_.Erase(victim->session_id, victim->part);
      ++counters_.memory_evictions_total;
      continue;
    }
    auto it = sessions_.find(victim->session_id);
    DS_CHECK(it != sessions_.end());
    spdlog::info("session store: sess={} tenant={} evicted (memory-only store is full)",
                 victim->session_id, it->second.tenant);
    EraseSessionLocked(it);
    ++counters_.session_evictions_total;
  }
}

absl::StatusOr<PartInfo> SnapshotStore::PutPart(std::string_view tenant,
                                                std::string_view session_id, std::string_view part,
                                                PartKind kind, std::string payload) {
  DS_RETURN_IF_ERROR(ValidateIds(tenant, session_id));
  DS_RETURN_IF_ERROR(ValidatePartName(part));
  const std::string where = PartLabel(session_id, part);
  if (kind != PartKind::kState && kind != PartKind::kBlob) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unknown part kind ", static_cast<uint32_t>(kind)));
  }
  const auto bytes = static_cast<int64_t>(payload.size());
  DS_RETURN_IF_ERROR(CheckPartSize(where, bytes, options_.max_part_bytes));
  PartEntry entry;
  entry.kind = kind;
  entry.bytes = bytes;
  if (kind == PartKind::kState) {
    absl::StatusOr<model::StateEnvelope> envelope =
        model::ReadStateEnvelope(std::string_view(payload.data(), payload.size()));
    if (!envelope.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " is not a valid state snapshot: ", envelope.status().message()));
    }
    entry.num_tokens = envelope->num_tokens;
    entry.model_fingerprint = envelope->model_fingerprint;
    entry.layer_begin = envelope->layer_begin;
    entry.layer_end = envelope->layer_end;
  }
  if (disk_ != nullptr) entry.crc32 = Crc32(payload);  // before any lock: it reads every byte

  RemoveIfExpired(session_id);
  DS_ASSIGN_OR_RETURN(SessionIoLock io_lock, LockSession(tenant, session_id, /*exclusive=*/true));
  auto shared = std::make_shared<const std::string>(std::move(payload));
  if (disk_ != nullptr) {
    {
      absl::MutexLock lock(&mu_);
      entry.written_unix_ms = NowMs();
      // In a store with a disk tier only holders of the exclusive lock remove a session.
      const SessionEntry& session = sessions_.find(session_id)->second;
      auto old = session.parts.find(part);
      const int64_t old_bytes = old == session.parts.end() ? 0 : old->second.bytes;
      if (options_.max_disk_bytes > 0 &&
          disk_bytes_ + disk_reserved_bytes_ - old_bytes + bytes > options_.max_disk_bytes) {
        return absl::ResourceExhaustedError(
            absl::StrCat("session store disk tier is full (", disk_bytes_ + disk_reserved_bytes_,
                         " bytes of max_disk_bytes ", options_.max_disk_bytes, "); cannot write ",
                         where, " of ", bytes, " bytes"));
      }
      disk_reserved_bytes_ += bytes;
    }
    const absl::Status written =
        disk_->WritePart(HeaderFor(tenant, session_id, part, entry), *shared);
    absl::MutexLock lock(&mu_);
    disk_reserved_bytes_ -= bytes;
    if (!written.ok()) return WithContext(written, absl::StrCat("writing ", where));
  }

  absl::MutexLock lock(&mu_);
  const int64_t now_ms = NowMs();
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second.io != io_lock.io()) {
    return absl::NotFoundError(
        absl::StrFormat("session '%s' was evicted while writing part '%s'", session_id, part));
  }
  SessionEntry& session = it->second;
  auto old = session.parts.find(part);
  if (disk_ == nullptr) {
    const int64_t others =
        memory_.SessionBytes(session_id) - (old == session.parts.end() ? 0 : old->second.bytes);
    if (others + bytes > options_.memory_limit_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "memory-only session store is full: ", SessionLabel(session_id), " would hold ",
          others + bytes, " bytes, more than memory_limit_bytes ", options_.memory_limit_bytes));
    }
    entry.written_unix_ms = now_ms;
  } else {
    if (old == session.parts.end()) {
      ++disk_parts_;
    } else {
      disk_bytes_ -= old->second.bytes;
    }
    disk_bytes_ += bytes;
  }
  const std::string part_name(part);
  session.parts.insert_or_assign(part_name, entry);
  session.last_used_unix_ms = std::max(session.last_used_unix_ms, now_ms);
  memory_.Erase(session_id, part);
  CacheLocked(session_id, part, std::move(shared));
  ++counters_.parts_written_total;
  return PartInfoLocked(session_id, part_name, entry);
}

absl::StatusOr<std::string> SnapshotStore::ReadPartFromDisk(std::string_view tenant,
                                                            std::string_view session_id,
                                                            std::string_view part,
                                                            const PartEntry& entry,
                                                            const SessionIoLock& lock) {
  DS_CHECK(disk_ != nullptr);
  absl::StatusOr<std::string> payload = disk_->ReadPart(HeaderFor(tenant, session_id, part, entry));
  if (payload.ok()) {
    absl::MutexLock mu_lock(&mu_);
    ++counters_.disk_hits_total;
    return payload;
  }
  const bool damaged = absl::IsDataLoss(payload.status());
  // A damaged part stays damaged: move it aside and forget it, so the caller recomputes.
  const bool quarantined =
      damaged && disk_->QuarantinePart(session_id, part, std::string(payload.status().message()));
  absl::MutexLock mu_lock(&mu_);
  ++counters_.disk_misses_total;
  if (!damaged) return payload.status();
  ++counters_.checksum_failures_total;
  if (quarantined) ++counters_.quarantined_files_total;
  spdlog::error("session store: sess={} tenant={} part={}: {}; part dropped",
                std::string(session_id), std::string(tenant), std::string(part),
                std::string(payload.status().message()));
  auto it = sessions_.find(session_id);
  if (it != sessions_.end() && it->second.io == lock.io()) {
    auto part_it = it->second.parts.find(part);
    // Concurrent readers of the same damaged part drop it once.
    if (part_it != it->second.parts.end() && part_it->second.crc32 == entry.crc32 &&
        part_it->second.written_unix_ms == entry.written_unix_ms) {
      disk_bytes_ -= part_it->second.bytes;
      --disk_parts_;
      memory_.Erase(session_id, part);
      it->second.parts.erase(part_it);
    }
  }
  return payload.status();
}

absl::StatusOr<Part> SnapshotStore::GetPart(std::string_view tenant, std::string_view session_id,
                                            std::string_view part) {
  DS_ASSIGN_OR_RETURN(SharedPart shared, GetPartShared(tenant, session_id, part));
  return Part{std::move(shared.info), *shared.payload};
}

absl::StatusOr<SharedPart> SnapshotStore::GetPartShared(std::string_view tenant, std::string_view session_id,
                                                        std::string_view part) {
  DS_RETURN_IF_ERROR(ValidateIds(tenant, session_id));
  DS_RETURN_IF_ERROR(ValidatePartName(part));
  RemoveIfExpired(session_id);
  DS_ASSIGN_OR_RETURN(SessionIoLock io_lock, LockSession(tenant, session_id, /*exclusive=*/false));
  SharedPart result;
  MemoryTier::Payload payload;
  PartEntry entry;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end() || it->second.io != io_lock.io()) {  // evicted (memory only)
      return absl::NotFoundError(absl::StrCat(SessionLabel(session_id), " not found"));
    }
    auto part_it = it->second.parts.find(part);
    if (part_it == it->second.parts.end()) {
      return absl::NotFoundError(absl::StrCat(PartLabel(session_id, part), " not found"));
    }
    it->second.last_used_unix_ms = std::max(it->second.last_used_unix_ms, NowMs());
    payload = memory_.Get(session_id, part);
    entry = part_it->second;
    result.info = PartInfoLocked(session_id, part_it->first, entry);
    if (payload != nullptr) {
      ++counters_.memory_hits_total;
    } else {
      ++counters_.memory_misses_total;
    }
  }
  if (payload != nullptr) {
    result.payload = std::move(payload);
    return result;
  }
  DS_ASSIGN_OR_RETURN(std::string read, ReadPartFromDisk(tenant, session_id, part, entry, io_lock));
  result.payload = std::make_shared<const std::string>(std::move(read));
  if (entry.bytes <= options_.memory_limit_bytes) {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it != sessions_.end() && it->second.io == io_lock.io() && it->second.parts.contains(part) &&
        !memory_.Contains(session_id, part)) {
      CacheLocked(session_id, part, result.payload);
    }
  }
  return result;
}

absl::StatusOr<SessionInfo> SnapshotStore::CopySession(std::string_view tenant,
                                                       std::string_view session_id,
                                                       std::string_view new_session_id) {
  DS_RETURN_IF_ERROR(ValidateIds(tenant, session_id));
  DS_RETURN_IF_ERROR(ValidateSessionId(new_session_id));
  RemoveIfExpired(session_id);
  RemoveIfExpired(new_session_id);
  // Locked before mu_, as every session I/O lock is (the lock order is I/O lock, then mu_).
  SessionIoLock new_session_lock(std::make_shared<SessionIo>(), /*exclusive=*/true);
  int64_t now_ms = 0;
  for (bool swept = false;; swept = true) {
    bool sweep = false;
    {
      absl::MutexLock lock(&mu_);
      now_ms = NowMs();
      DS_RETURN_IF_ERROR(FindOwnedLocked(tenant, session_id, now_ms, false).status());
      auto existing = sessions_.find(new_session_id);
      if (existing != sessions_.end()) {
        if (existing->second.tenant != tenant) {
          return absl::PermissionDeniedError(
              absl::StrCat(SessionLabel(new_session_id), " belongs to another tenant"));
        }
        return absl::AlreadyExistsError(
            absl::StrCat(SessionLabel(new_session_id), " already exists"));
      }
      if (IsFullLocked() && options_.ttl_seconds > 0 && !swept) {
        sweep = true;
      } else {
        DS_RETURN_IF_ERROR(ReserveSessionLocked(tenant, new_session_id, now_ms, new_session_lock));
      }
    }
    if (!sweep) break;
    SweepExpired();
  }
  absl::StatusOr<SessionInfo> copied =
      CopyIntoReserved(tenant, session_id, new_session_id, now_ms, new_session_lock);
  if (!copied.ok()) DropReservation(new_session_id, new_session_lock);
  return copied;
}

absl::StatusOr<SessionInfo> SnapshotStore::CopyIntoReserved(std::string_view tenant,
                                                            std::string_view session_id,
                                                            std::string_view new_session_id,
                                                            int64_t now_ms,
                                                            const SessionIoLock& new_session_lock) {
  DS_ASSIGN_OR_RETURN(SessionIoLock source_lock,
                      LockSession(tenant, session_id, /*exclusive=*/false));
  struct Item {
    std::string name;
    PartEntry entry;
    MemoryTier::Payload payload;
    bool was_in_memory = false;
  };
  std::vector<Item> items;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end() || it->second.io != source_lock.io()) {
      return absl::NotFoundError(absl::StrCat(SessionLabel(session_id), " not found"));
    }
    it->second.last_used_unix_ms = std::max(it->second.last_used_unix_ms, NowMs());
    for (const auto& [name, entry] : it->second.parts) {
      MemoryTier::Payload payload = memory_.Get(session_id, name);
      const bool in_memory = payload != nullptr;
      if (in_memory) {
        ++counters_.memory_hits_total;
      } else {
        ++counters_.memory_misses_total;
      }
      items.push_back(Item{name, entry, std::move(payload), in_memory});
    }
  }
  int64_t total_bytes = 0;
  for (Item& item : items) {
    total_bytes += item.entry.bytes;
    if (item.payload != nullptr) continue;
    DS_ASSIGN_OR_RETURN(std::string bytes,
                        ReadPartFromDisk(tenant, session_id, item.name, item.entry, source_lock));
    item.payload = std::make_shared<const std::string>(std::move(bytes));
  }
  if (disk_ != nullptr) {
    {
      absl::MutexLock lock(&mu_);
      if (options_.max_disk_bytes > 0 &&
          disk_bytes_ + disk_reserved_bytes_ + total_bytes > options_.max_disk_bytes) {
        return absl::ResourceExhaustedError(
            absl::StrCat("session store disk tier is full (", disk_bytes_ + disk_reserved_bytes_,
                         " bytes of max_disk_bytes ", options_.max_disk_bytes, "); cannot copy ",
                         SessionLabel(session_id), " (", total_bytes, " bytes)"));
      }
      disk_reserved_bytes_ += total_bytes;
    }
    std::vector<std::pair<PartHeader, std::string_view>> files;
    files.reserve(items.size());
    for (Item& item : items) {
      item.entry.written_unix_ms = now_ms;
      files.emplace_back(HeaderFor(tenant, new_session_id, item.name, item.entry), *item.payload);
    }
    const absl::Status written = disk_->WriteSession(
        SessionMeta{std::string(tenant), std::string(new_session_id), now_ms, now_ms}, files);
    absl::MutexLock lock(&mu_);
    disk_reserved_bytes_ -= total_bytes;
    if (!written.ok()) {
      return WithContext(written, absl::StrCat("copying ", SessionLabel(session_id), " to ",
                                               SessionLabel(new_session_id)));
    }
  }
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(new_session_id);
  DS_CHECK(it != sessions_.end() && it->second.io == new_session_lock.io());
  SessionEntry& copy = it->second;
  for (Item& item : items) {
    copy.parts.emplace(item.name, item.entry);
    if (disk_ != nullptr) {
      disk_bytes_ += item.entry.bytes;
      ++disk_parts_;
    }
    ++counters_.parts_written_total;
  }
  copy.ready = true;
  // The copy shares the source's immutable payloads; the memory tier counts them twice.
  for (Item& item : items) {
    if (disk_ == nullptr || item.was_in_memory) {
      CacheLocked(new_session_id, item.name, std::move(item.payload));
    }
  }
  return SessionInfoLocked(it->first, copy);
}

}  // namespace deltaserve::services
