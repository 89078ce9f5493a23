// Shared by the envelope reader and the codec: reads the header, leaving `reader` at the tokens;
// checks the checksum where `verify_checksum`.
#pragma once

#include <string_view>

#include "absl/status/statusor.h"
#include "model/state/byte_io.h"
#include "model/state/state_envelope.h"

namespace deltaserve::model {

absl::StatusOr<StateEnvelope> ReadStateHeader(std::string_view bytes, ByteReader& reader,
                                              bool verify_checksum);

}  // namespace deltaserve::model
