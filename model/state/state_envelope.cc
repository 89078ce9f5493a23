#include "model/state/state_envelope.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "model/state/byte_io.h"
#include "model/state/state_envelope_internal.h"

namespace deltaserve::model {

uint32_t StateChecksum(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths; feed large snapshots in pieces.
  constexpr size_t kPiece = 1u << 30;
  for (size_t offset = 0; offset < bytes.size(); offset += kPiece) {
    const size_t n = std::min(kPiece, bytes.size() - offset);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + offset), static_cast<uInt>(n));
  }
  return static_cast<uint32_t>(crc);
}

// Reads the header after verifying magic, version and (where asked) checksum; leaves `reader` at
// the tokens.
absl::StatusOr<StateEnvelope> ReadStateHeader(std::string_view bytes, ByteReader& reader,
                                              bool verify_checksum) {
  if (bytes.size() < kStateHeaderBytes + kStateTrailerBytes) {
    return absl::DataLossError(absl::StrCat("state snapshot of ", bytes.size(),
                                            " bytes is shorter than its fixed header"));
  }
  if (std::memcmp(bytes.data(), kStateMagic, sizeof(kStateMagic)) != 0) {
    return absl::DataLossError("not a deltaserve state snapshot (bad magic)");
  }
  StateEnvelope envelope;
  char magic[8];
  uint32_t flags, layer_begin, layer_end;
  uint64_t num_tokens;
  DS_RETURN_IF_ERROR(reader.GetBytes(magic, sizeof(magic), "magic"));
  DS_RETURN_IF_ERROR(reader.Get(&envelope.format_version, "version"));
  if (envelope.format_version != kStateFormatVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state snapshot has format version ", envelope.format_version, "; this build reads version ",
        kStateFormatVersion));
  }
  if (verify_checksum) {
    uint32_t stored_crc;
    std::memcpy(&stored_crc, bytes.data() + bytes.size() - kStateTrailerBytes, sizeof(stored_crc));
    const uint32_t actual_crc = StateChecksum(bytes.substr(0, bytes.size() - kStateTrailerBytes));
    if (stored_crc != actual_crc) {
      return absl::DataLossError(absl::StrFormat(
          "state snapshot is corrupt: checksum %08x, expected %08x", actual_crc, stored_crc));
    }
  }
  DS_RETURN_IF_ERROR(reader.Get(&flags, "flags"));
  DS_RETURN_IF_ERROR(reader.Get(&envelope.model_fingerprint, "fingerprint"));
  DS_RETURN_IF_ERROR(reader.Get(&layer_begin, "layer range"));
  DS_RETURN_IF_ERROR(reader.Get(&layer_end, "layer range"));
  DS_RETURN_IF_ERROR(reader.Get(&num_tokens, "token count"));
  if (flags != 0) return absl::DataLossError(absl::StrCat("state snapshot has unknown flags ", flags));
  envelope.layer_begin = layer_begin;
  envelope.layer_end = layer_end;
  if (num_tokens > (bytes.size() - kStateHeaderBytes) / sizeof(int32_t)) {
    return absl::DataLossError(absl::StrCat("state snapshot claims ", num_tokens,
                                            " tokens, more than its size can hold"));
  }
  envelope.num_tokens = static_cast<int64_t>(num_tokens);
  return envelope;
}

absl::StatusOr<StateEnvelope> ReadStateEnvelope(std::string_view bytes) {
  ByteReader reader(bytes);
  return ReadStateHeader(bytes, reader, /*verify_checksum=*/true);
}

}  // namespace deltaserve::model
