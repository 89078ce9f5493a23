// The disk tier: one directory per session holding its metadata and one file per part, every
// write durable and atomic, every read verified; damaged files go to quarantine/.
//
// Layout under data_dir:
//   LOCK                         flock()ed while a store has the directory open
//   sessions/<id>/session.meta   tenant and times (part_format.h)
//   sessions/<id>/<part>.part    header + payload (part_format.h)
//   sessions/<id>/.tmp-*         writes in flight (removed on open)
//   staging/                     copies being assembled (emptied on open)
//   trash/                       deleted sessions being removed (emptied on open)
//   quarantine/                  damaged or unknown files, kept for inspection
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/session_store/part_format.h"

namespace deltaserve::services {

// Thread-safe for different sessions. Calls for one session must not overlap, except reads
// (ReadPart, QuarantinePart) with other reads; the store serialises them per session.
class DiskTier {
 public:
  struct ScannedSession {
    SessionMeta meta;
    std::vector<PartHeader> parts;
  };
  struct ScanResult {
    std::vector<ScannedSession> sessions;
    int64_t quarantined_files = 0;
  };

  // Creates `data_dir` and its folders if missing, locks it against a second store (that is
  // FAILED_PRECONDITION) and empties staging/ and trash/.
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(const std::string& data_dir);
  ~DiskTier();
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  // Reads every session's metadata and part headers (not payloads). Damaged, truncated or
  // unknown files are moved to quarantine/ with a logged reason; unfinished writes are removed.
  ScanResult Scan();

  // Makes the session's directory and writes its metadata.
  absl::Status CreateSession(const SessionMeta& meta);
  // Replaces the part file atomically. `header.payload_bytes` and `payload_crc32` must match.
  absl::Status WritePart(const PartHeader& header, std::string_view payload);
  // Reads a part and verifies it against `expected` (names, kind, length, checksum of header
  // and payload): DATA_LOSS when the file is damaged or disagrees, NOT_FOUND when missing.
  absl::StatusOr<std::string> ReadPart(const PartHeader& expected);
  // Writes a whole new session (metadata and parts) in staging/ and renames it into place, so a
  // crash leaves all of it or none.
  absl::Status WriteSession(const SessionMeta& meta,
                            const std::vector<std::pair<PartHeader, std::string_view>>& parts);
  // Removes the session's directory (atomically: renamed to trash/ first).
  absl::Status RemoveSession(std::string_view session_id);
  // Moves a part file to quarantine/; false when it was already gone.
  bool QuarantinePart(std::string_view session_id, std::string_view part, std::string_view reason);

  const std::string& data_dir() const { return data_dir_; }

 private:
  DiskTier(std::string data_dir, int lock_fd, std::string instance_tag);

  std::string SessionDir(std::string_view session_id) const;
  std::string PartFileName(std::string_view part) const;
  // Unique within this directory across restarts: the open's tag and a counter.
  std::string UniqueName(std::string_view stem);
  // Moves `path` (file or directory) to quarantine/; false when it was already gone.
  bool Quarantine(const std::string& path, std::string_view label, std::string_view reason);
  // Moves an existing directory out of the way of a new session of the same id.
  absl::Status ClearStaleSessionDir(const std::string& dir);
  absl::StatusOr<SessionMeta> ReadMeta(const std::string& dir, std::string_view session_id);
  // Checks one part file found by Scan.
  absl::StatusOr<PartHeader> ScanPart(const std::string& path, const SessionMeta& meta,
                                      std::string_view part);

  const std::string data_dir_;
  const int lock_fd_;
  const std::string instance_tag_;
  std::atomic<uint64_t> next_unique_{0};
};

}  // namespace deltaserve::services
