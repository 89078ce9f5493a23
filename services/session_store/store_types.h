// Plain value types of the session store API (SnapshotStore, StoreClient): no protos, so that
// in-process users never touch the wire format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace deltaserve::services {

// Numbered as deltaserve.internal.v1.PartKind.
enum class PartKind : uint32_t {
  kState = 1,  // a sequence-state snapshot: its envelope is verified on put
  kBlob = 2,   // opaque bytes (the router's manifest)
};

// Numbered as deltaserve.internal.v1.Tier.
enum class Tier : uint32_t {
  kMemory = 1,  // held in memory (and on disk when the store has a disk tier)
  kDisk = 2,    // on disk only
};

const char* PartKindName(PartKind kind);

// Payload bytes per message of the SessionStore service's PutPart and GetPart streams: well
// under gRPC's default 4 MiB receive limit, so no channel needs raised limits, and a part may be
// larger than one message can be (2 GiB).
inline constexpr size_t kStoreChunkBytes = size_t{1} << 20;

struct PartInfo {
  std::string name;
  PartKind kind = PartKind::kBlob;
  int64_t bytes = 0;  // payload length
  // From the state envelope (kState only; 0 for blobs).
  int64_t num_tokens = 0;
  uint64_t model_fingerprint = 0;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  Tier tier = Tier::kMemory;
};

struct SessionInfo {
  std::string tenant;
  std::string session_id;
  std::vector<PartInfo> parts;  // ordered by name
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
};

struct Part {
  PartInfo info;
  std::string payload;
};

// A part whose payload is the store's own buffer (shared with its memory tier, never copied).
struct SharedPart {
  PartInfo info;
  std::shared_ptr<const std::string> payload;
};

struct SessionPage {
  std::vector<SessionInfo> sessions;  // ordered by session id
  std::string next_page_token;        // empty on the last page
};

// Counters and gauges for the service's metrics. Hits and misses count part reads: a memory
// miss goes to disk, where a disk miss is a damaged or vanished file.
struct StoreStats {
  int64_t sessions = 0;
  int64_t memory_parts = 0;
  int64_t memory_bytes = 0;
  int64_t disk_parts = 0;
  int64_t disk_bytes = 0;
  int64_t memory_hits_total = 0;
  int64_t memory_misses_total = 0;
  int64_t disk_hits_total = 0;
  int64_t disk_misses_total = 0;
  int64_t parts_written_total = 0;
  // Parts dropped from memory (still on disk) to stay under the memory limit.
  int64_t memory_evictions_total = 0;
  // Whole sessions dropped by a memory-only store to stay under the memory limit.
  int64_t session_evictions_total = 0;
  int64_t expirations_total = 0;
  int64_t checksum_failures_total = 0;
  // Files moved aside (damaged, unreadable or unknown) on open or on read.
  int64_t quarantined_files_total = 0;
};

}  // namespace deltaserve::services
