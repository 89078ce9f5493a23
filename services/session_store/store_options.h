// Configuration of a SnapshotStore: where it keeps parts, how much memory and disk it may use,
// and when idle sessions expire.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "services/session_store/clock.h"

namespace deltaserve::services {

// A sanity bound on max_part_bytes (1 TiB): parts travel in chunks, so gRPC's 2 GiB message limit
// does not apply; the store holds a part whole in memory while it receives or sends it.
inline constexpr int64_t kMaxPartBytesLimit = int64_t{1} << 40;

struct SnapshotStoreOptions {
  // Directory of the disk tier (created if missing). Empty: a memory-only store, whose sessions
  // die with the process and which evicts whole sessions when memory is full.
  std::string data_dir;
  // Byte limit of the memory tier (payload bytes). Over it, least recently used parts leave
  // memory (disk tier) or least recently used sessions are dropped (memory only).
  int64_t memory_limit_bytes = int64_t{1} << 30;
  // Largest payload one part may have. A memory-only store needs it <= memory_limit_bytes.
  int64_t max_part_bytes = int64_t{512} << 20;
  // Byte limit of the disk tier (payload bytes); 0 = only the file system's own limit.
  int64_t max_disk_bytes = 0;
  // Most sessions the store holds; 0 = unbounded.
  int64_t max_sessions = 0;
  // Sessions not used (written or read) for this long expire; 0 = never.
  int64_t ttl_seconds = 0;
  // Source of time; null means SystemClock(). Not owned; must outlive the store.
  const Clock* clock = nullptr;

  absl::Status Validate() const;
};

}  // namespace deltaserve::services
