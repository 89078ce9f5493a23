// The byte format of a sequence state (the session snapshot): versioned, tagged with the model
// fingerprint and token count, checksummed. Decoding refuses another model's snapshot, another
// format version, and any damaged byte.
//
// Layout (little-endian):
//   magic "DSSTATE1" | u32 format_version | u32 flags (0) | u64 model_fingerprint
//   | u32 layer_begin | u32 layer_end | u64 num_tokens | num_tokens x i32 tokens
//   | per layer: KDA: H*d*d f32 recurrent, 3*(W-1)*H*d f32 conv tails
//                MLA: u64 rows, rows*(R+dr) f32 latent
//   | u32 CRC-32 of every byte before it
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/state/sequence_state.h"
#include "model/state/state_envelope.h"

namespace deltaserve::model {

std::string EncodeState(const SequenceState& state);
// EncodeState in two parts, so that a caller can hold a lock over the state's reads alone:
// EncodeStateUnsealed reads the state (device downloads) and writes every byte but the checksum
// trailer; SealState appends the checksum (the CPU over the bytes: any thread, no state).
std::string EncodeStateUnsealed(const SequenceState& state);
void SealState(std::string& unsealed);

// Decodes `bytes` into a new state for `config` / `backend`, provided the snapshot carries
// `expected_fingerprint` and the layer range [layer_begin, layer_end). With `checksum_verified`
// the caller has checked the bytes with ReadStateEnvelope already (outside a lock, say), and the
// checksum is not computed again.
absl::StatusOr<std::unique_ptr<SequenceState>> DecodeState(std::string_view bytes,
                                                          const KimiLinearConfig& config,
                                                          kernels::Backend& backend,
                                                          uint64_t expected_fingerprint,
                                                          int64_t layer_begin, int64_t layer_end,
                                                          bool checksum_verified = false);

}  // namespace deltaserve::model
