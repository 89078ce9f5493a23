// The disk tier's file formats (little-endian), encoded and decoded without any I/O.
//
// Part file "<part>.part": a header, then the payload.
//   char[8] "DSPART01" | u32 format_version (1) | u32 header_bytes (all of the header)
//   | u32 kind (1 STATE, 2 BLOB) | u32 flags (0) | u64 payload_bytes | u32 payload_crc32
//   | u32 reserved (0) | i64 written_unix_ms | i64 num_tokens | u64 model_fingerprint
//   | i64 layer_begin | i64 layer_end | u16 tenant_bytes | u16 session_id_bytes
//   | u16 part_name_bytes | u16 reserved (0) | tenant | session id | part name
//   | u32 header_crc32 (CRC-32 of every header byte before it) | payload
// Session file "session.meta":
//   char[8] "DSSESS01" | u32 format_version (1) | u32 flags (0) | i64 created_unix_ms
//   | i64 last_used_unix_ms | u16 tenant_bytes | u16 session_id_bytes | tenant | session id
//   | u32 crc32 (of every byte before it)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "services/session_store/store_names.h"
#include "services/session_store/store_types.h"

namespace deltaserve::services {

inline constexpr uint32_t kDiskFormatVersion = 1;
inline constexpr size_t kPartHeaderFixedBytes = 88;
inline constexpr size_t kMaxPartHeaderBytes =
    kPartHeaderFixedBytes + kMaxStoredTenantBytes + kMaxSessionIdBytes + kMaxPartNameBytes + 4;

struct PartHeader {
  std::string tenant;
  std::string session_id;
  std::string part;
  PartKind kind = PartKind::kBlob;
  uint64_t payload_bytes = 0;
  uint32_t payload_crc32 = 0;
  int64_t written_unix_ms = 0;
  int64_t num_tokens = 0;
  uint64_t model_fingerprint = 0;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
};

struct SessionMeta {
  std::string tenant;
  std::string session_id;
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
};

// CRC-32 (zlib) of `bytes`.
uint32_t Crc32(std::string_view bytes);

std::string EncodePartHeader(const PartHeader& header);
// Decodes the header at the start of `bytes` (which may go on with the payload) and sets
// `*header_bytes` to its length. DATA_LOSS for anything damaged or truncated.
absl::StatusOr<PartHeader> DecodePartHeader(std::string_view bytes, size_t* header_bytes);

std::string EncodeSessionMeta(const SessionMeta& meta);
// `bytes` must be exactly one encoded SessionMeta. DATA_LOSS for anything damaged.
absl::StatusOr<SessionMeta> DecodeSessionMeta(std::string_view bytes);

}  // namespace deltaserve::services
