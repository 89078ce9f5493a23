// The fixed header and trailer of a state snapshot (see state_codec.h for the whole layout):
// what a session store verifies without decoding the payload or knowing the model.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"

namespace deltaserve::model {

inline constexpr uint32_t kStateFormatVersion = 1;
inline constexpr char kStateMagic[8] = {'D', 'S', 'S', 'T', 'A', 'T', 'E', '1'};
// magic, version, flags, fingerprint, layer begin, layer end, token count.
inline constexpr size_t kStateHeaderBytes = 8 + 4 + 4 + 8 + 4 + 4 + 8;
inline constexpr size_t kStateTrailerBytes = 4;  // CRC-32

struct StateEnvelope {
  uint32_t format_version = 0;
  uint64_t model_fingerprint = 0;
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  int64_t num_tokens = 0;
};

// Checks magic, format version and checksum, and reads the header. DATA_LOSS for damage,
// FAILED_PRECONDITION for another format version.
absl::StatusOr<StateEnvelope> ReadStateEnvelope(std::string_view bytes);

// CRC-32 (zlib) of `bytes`.
uint32_t StateChecksum(std::string_view bytes);

}  // namespace deltaserve::model
